//! Fault tests: real `skiff store` processes, real SIGKILL, real `etcdctl`.
//!
//! Every wait is bounded; no test asserts on speed.
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, etcdctl, etcdctl_ok, skiff_bin};
use etcd_client::{Client, ConnectOptions, GetOptions};

/// One acknowledged put: key `{prefix}{n}` = `v{n}` at `revision`.
#[derive(Clone, Copy, Debug)]
struct Ack {
    n: u64,
    revision: i64,
}

/// A background task streaming puts of distinct keys, one client per member, round robin.
struct Writer {
    acked: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    /// Members the writer no longer sends to (like a client dropping a removed member).
    retired: Arc<Mutex<Vec<usize>>>,
    handle: tokio::task::JoinHandle<u64>,
}

impl Writer {
    fn spawn(rt: &tokio::runtime::Runtime, endpoints: Vec<String>, prefix: &str) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let retired = Arc::new(Mutex::new(Vec::new()));
        let handle = rt.spawn(write_loop(
            endpoints,
            prefix.to_string(),
            acked.clone(),
            stop.clone(),
            retired.clone(),
        ));
        Writer {
            acked,
            stop,
            retired,
            handle,
        }
    }

    /// Stop sending to member `i` (by its index in the endpoints given to `spawn`).
    fn retire(&self, i: usize) {
        self.retired.lock().unwrap().push(i);
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Block until at least `count` puts are acknowledged in total.
    fn wait_acked(&self, count: usize, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.acked_count() < count {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {count} puts acknowledged within {timeout:?}",
                self.acked_count()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop writing; returns every acknowledged put and the number of attempts.
    fn stop(self, rt: &tokio::runtime::Runtime) -> (Vec<Ack>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let attempts = rt.block_on(self.handle).expect("writer task");
        let acked = self.acked.lock().unwrap().clone();
        (acked, attempts)
    }
}

async fn connect(endpoint: &str) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(5));
    // Connecting is lazy (a balanced channel), so this succeeds even for a dead member.
    Client::connect([format!("http://{endpoint}")], Some(options))
        .await
        .expect("connect etcd-client")
}

async fn write_loop(
    endpoints: Vec<String>,
    prefix: String,
    acked: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    retired: Arc<Mutex<Vec<usize>>>,
) -> u64 {
    let mut clients = Vec::new();
    for endpoint in &endpoints {
        clients.push(connect(endpoint).await);
    }
    // Rotate over the members on every put so that most writes are forwarded to the
    // leader; a member that failed is skipped for a second.
    let mut skip_until = vec![tokio::time::Instant::now(); endpoints.len()];
    let mut n: u64 = 0;
    let mut member = 0;
    while !stop.load(Ordering::SeqCst) {
        let now = tokio::time::Instant::now();
        let candidates: Vec<usize> = {
            let retired = retired.lock().unwrap();
            (1..=endpoints.len())
                .map(|step| (member + step) % endpoints.len())
                .filter(|m| !retired.contains(m))
                .collect()
        };
        member = candidates
            .iter()
            .copied()
            .find(|m| skip_until[*m] <= now)
            .unwrap_or(candidates[0]);
        let key = format!("{prefix}{n}");
        let value = format!("v{n}");
        let result = tokio::time::timeout(
            Duration::from_secs(6),
            clients[member].put(key, value, None),
        )
        .await;
        match result {
            Ok(Ok(response)) => {
                let revision = response.header().map(|h| h.revision()).unwrap_or(0);
                acked.lock().unwrap().push(Ack { n, revision });
            }
            // Failed or timed out: indeterminate (the key may or may not exist).
            _ => {
                skip_until[member] = tokio::time::Instant::now() + Duration::from_secs(1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        n += 1;
    }
    n
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// All logs of a cluster, for failure messages.
fn all_logs(cluster: &Cluster) -> String {
    cluster
        .members
        .iter()
        .map(|m| format!("--- {} ---\n{}", m.name, cluster.log_tail(&m.name)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `endpoint status -w json` of one endpoint.
fn status(endpoint: &str) -> Option<serde_json::Value> {
    let out = etcdctl(endpoint, &["endpoint", "status", "-w", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0]["Status"].clone())
}

/// `member list` (simple format) as (hex id, status, name) triples.
fn member_list(endpoint: &str) -> Vec<(String, String, String)> {
    etcdctl_ok(endpoint, &["member", "list"])
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(", ").collect();
            (
                fields[0].to_string(),
                fields[1].to_string(),
                fields[2].to_string(),
            )
        })
        .collect()
}

/// A linearizable read of every key under `prefix`: (header revision, key -> (value,
/// mod_revision)). Retries failures (members may still be starting) for up to 20 s.
async fn read_prefix(endpoints: &str, prefix: &str) -> (i64, BTreeMap<String, (String, i64)>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut client = common::client(endpoints).await;
    loop {
        match client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(response) => {
                let found = response
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            kv.key_str().unwrap().to_string(),
                            (kv.value_str().unwrap().to_string(), kv.mod_revision()),
                        )
                    })
                    .collect();
                return (response.header().unwrap().revision(), found);
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "linearizable get of {prefix}* through {endpoints} kept failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every acknowledged put is in `read` (from [`read_prefix`]) with its value and
/// revision, the acknowledged revisions were increasing, and the read's revision is not
/// behind any of them.
fn check_acked(read: &(i64, BTreeMap<String, (String, i64)>), prefix: &str, acked: &[Ack]) {
    let (header_revision, found) = read;
    for pair in acked.windows(2) {
        assert!(
            pair[1].revision > pair[0].revision,
            "acknowledged revisions went backwards: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    for ack in acked {
        let key = format!("{prefix}{}", ack.n);
        match found.get(&key) {
            Some((value, mod_revision)) => {
                assert_eq!(value, &format!("v{}", ack.n), "value of {key}");
                assert_eq!(*mod_revision, ack.revision, "mod_revision of {key}");
            }
            None => panic!(
                "acknowledged key {key} (revision {}) missing from a linearizable read at revision {header_revision}",
                ack.revision
            ),
        }
    }
    if let Some(last) = acked.last() {
        assert!(
            *header_revision >= last.revision,
            "read revision {header_revision} is behind an acknowledged revision {}",
            last.revision
        );
    }
}

/// 1. SIGKILL the leader while a client streams writes; then SIGKILL everything.
#[test]
fn kill_leader_during_writes() {
    let rt = runtime();
    let mut cluster = Cluster::start(3);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let writer = Writer::spawn(&rt, endpoints, "k");
    writer.wait_acked(20, Duration::from_secs(20), "before the kill");
    std::thread::sleep(Duration::from_millis(1500));

    let old_leader = cluster.wait_leader(Duration::from_secs(10));
    let old_status = status(&cluster.members[old_leader].endpoint()).expect("leader status");
    cluster.members[old_leader].kill9();
    let at_kill = writer.acked_count();

    // A different leader is elected (in a later term) and writes keep being accepted.
    let new_leader = cluster.wait_leader(Duration::from_secs(20));
    let new_status = status(&cluster.members[new_leader].endpoint()).expect("leader status");
    assert_ne!(new_leader, old_leader, "the killed member still leads");
    assert_ne!(new_status["leader"], old_status["leader"]);
    assert!(
        new_status["raftTerm"].as_u64() > old_status["raftTerm"].as_u64(),
        "no new term: {old_status} then {new_status}"
    );
    writer.wait_acked(
        at_kill + 50,
        Duration::from_secs(30),
        &format!("after killing the leader\n{}", all_logs(&cluster)),
    );

    // The killed member comes back and catches up while writes continue.
    cluster.restart(old_leader);
    cluster.wait_healthy(Duration::from_secs(30));
    let at_restart = writer.acked_count();
    writer.wait_acked(
        at_restart + 20,
        Duration::from_secs(30),
        "after restarting the old leader",
    );
    let (acked, attempts) = writer.stop(&rt);
    eprintln!(
        "kill_leader_during_writes: {} of {attempts} puts acknowledged",
        acked.len()
    );
    let all = cluster.endpoints();
    let last_leader = cluster.wait_leader(Duration::from_secs(10));
    let revisions_before: Vec<i64> = cluster
        .members
        .iter()
        .map(|m| {
            let status = status(&m.endpoint()).expect("status before the crash");
            status["header"]["revision"].as_i64().unwrap()
        })
        .collect();

    // Everything dies at once, then everything restarts from its data dir. The last
    // leader comes back first and is asked for a linearizable read at once: it must not
    // answer from before the crash even though its followers are still down.
    for member in &mut cluster.members {
        member.kill9();
    }
    cluster.restart(last_leader);
    let leader_ep = cluster.members[last_leader].endpoint();
    let early_read = rt.spawn(async move { read_prefix(&leader_ep, "k").await });
    std::thread::sleep(Duration::from_millis(1000));
    for i in 0..cluster.members.len() {
        if i != last_leader {
            cluster.restart(i);
        }
    }
    let early = rt.block_on(early_read).expect("early read task");
    check_acked(&early, "k", &acked);
    cluster.wait_healthy(Duration::from_secs(30));
    check_acked(&rt.block_on(read_prefix(&all, "k")), "k", &acked);
    // No member's revision went back across the crash, not even for serializable reads.
    for (member, before) in cluster.members.iter().zip(revisions_before) {
        let after = status(&member.endpoint()).expect("status after restart");
        let after = after["header"]["revision"].as_i64().unwrap();
        assert!(
            after >= before,
            "{}: revision went back from {before} to {after} across the restart",
            member.name
        );
    }
}

/// 2. A single member keeps keys, revisions and its compaction across kill -9.
#[test]
fn restart_recovers_from_data_dir() {
    let mut cluster = Cluster::start(1);
    let ep = cluster.members[0].endpoint();
    for i in 0..20 {
        etcdctl_ok(&ep, &["put", &format!("r{}", i % 5), &format!("val{i}")]);
    }
    let get_json = |ep: &str| -> serde_json::Value {
        serde_json::from_str(&etcdctl_ok(ep, &["get", "r", "--prefix", "-w", "json"]))
            .expect("get json")
    };
    let before = get_json(&ep);
    let header_rev = before["header"]["revision"].as_i64().unwrap();
    let compact_rev = header_rev - 5;
    let out = etcdctl_ok(&ep, &["compaction", &compact_rev.to_string()]);
    assert!(
        out.contains(&format!("compacted revision {compact_rev}")),
        "{out}"
    );
    // One more write after the compaction, also acknowledged before the crash.
    etcdctl_ok(&ep, &["put", "after", "compaction"]);
    let before = get_json(&ep);
    let below = (compact_rev - 2).to_string();
    let compacted = etcdctl(&ep, &["get", "r0", "--rev", &below]);
    assert!(!compacted.status.success());

    cluster.members[0].kill9();
    cluster.restart(0);
    cluster.wait_healthy(Duration::from_secs(30));

    let after = get_json(&ep);
    assert_eq!(after["kvs"], before["kvs"], "keys, values and revisions");
    assert_eq!(after["count"], before["count"]);
    assert_eq!(
        after["header"]["revision"], before["header"]["revision"],
        "header revision"
    );
    assert_eq!(
        etcdctl_ok(&ep, &["get", "after"]),
        "after\ncompaction\n",
        "the write after the compaction"
    );
    let out = etcdctl(&ep, &["get", "r0", "--rev", &below]);
    assert!(!out.status.success(), "read below the compaction succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("required revision has been compacted"),
        "{stderr}"
    );
    // At the compact revision itself reads still work.
    etcdctl_ok(&ep, &["get", "r0", "--rev", &compact_rev.to_string()]);
    // Revisions continue from where they were.
    let out: serde_json::Value =
        serde_json::from_str(&etcdctl_ok(&ep, &["put", "next", "x", "-w", "json"])).unwrap();
    assert_eq!(
        out["header"]["revision"].as_i64().unwrap(),
        before["header"]["revision"].as_i64().unwrap() + 1
    );
}

/// 3. Replace a follower under load; the new member catches up by snapshot.
#[test]
fn member_replace_under_load_catches_up_by_snapshot() {
    let rt = runtime();
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-count",
            "200",
            "--snapshot-catchup-entries",
            "50",
        ],
    );
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let writer = Writer::spawn(&rt, endpoints, "load");
    // Well past snapshot-count + catchup entries: the leader's log no longer starts at 1,
    // so a brand-new member can only be brought up to date by a snapshot.
    writer.wait_acked(300, Duration::from_secs(60), "initial load");

    let leader = cluster.wait_leader(Duration::from_secs(10));
    let leader_ep = cluster.members[leader].endpoint();
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_name = cluster.members[victim].name.clone();
    let members = member_list(&leader_ep);
    let removed_id = members
        .iter()
        .find(|(_, _, name)| *name == victim_name)
        .map(|(id, _, _)| id.clone())
        .unwrap_or_else(|| panic!("{victim_name} not in {members:?}"));
    // The writer stops using the member first: left running, a removed member has no
    // leader and holds writes until the request timeout.
    writer.retire(victim);
    let out = etcdctl_ok(&leader_ep, &["member", "remove", &removed_id]);
    // etcdctl pads the ID to 16 columns here (`Member %16x removed`).
    assert!(
        out.contains(&format!("{removed_id} removed from cluster")),
        "{out}"
    );
    // The removed member learns it (from its configuration or from peers refusing its
    // votes) and stops, as etcd's does.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exited = cluster.members[victim]
            .child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_some());
        if exited {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed member is still running:\n{}",
            cluster.log_tail(&victim_name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        cluster
            .log_tail(&victim_name)
            .contains("the member has been permanently removed from the cluster"),
        "{}",
        cluster.log_tail(&victim_name)
    );

    let new = cluster.prepare_member("m3");
    let peer_url = cluster.members[new].peer_url.clone();
    let out = etcdctl_ok(
        &leader_ep,
        &["member", "add", "m3", &format!("--peer-urls={peer_url}")],
    );
    let new_id = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("member add output: {out}"))
        .to_string();
    assert_ne!(new_id, removed_id, "a removed member ID was reused");
    let at_join = writer.acked_count();
    // openraft's own log lines are the evidence that the snapshot path was taken.
    cluster.members[new].extra_args = vec!["--log-level".into(), "info,openraft=info".into()];
    cluster.start_joining(new);
    writer.wait_acked(
        at_join + 550,
        Duration::from_secs(90),
        &format!("after the join\n{}", all_logs(&cluster)),
    );
    let (acked, _) = writer.stop(&rt);
    let last = acked.last().expect("acknowledged puts");
    let new_ep = cluster.members[new].endpoint();

    // Serializable read of the newest key on the new member.
    let key = format!("load{}", last.n);
    let want = format!("{key}\nv{}\n", last.n);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&new_ep, &["get", &key, "--consistency=s"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new member never served {key}: {} {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            all_logs(&cluster)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // It is listed as started, under its name; the removed member is gone for good.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = member_list(&leader_ep);
        let started = members
            .iter()
            .any(|(id, status, name)| *id == new_id && status == "started" && name == "m3");
        if started {
            assert_eq!(members.len(), 3, "{members:?}");
            assert!(
                members.iter().all(|(id, _, _)| *id != removed_id),
                "{members:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m3 never listed as started: {members:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Its applied index converges to the leader's.
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let leader_ep = cluster.members[leader].endpoint();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = |ep: &str| status(ep).and_then(|s| s["raftAppliedIndex"].as_u64());
        let (ours, theirs) = (applied(&new_ep), applied(&leader_ep));
        if ours.is_some() && ours == theirs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied index of m3 {ours:?} never reached the leader's {theirs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every acknowledged write is there, read through the new member.
    check_acked(&rt.block_on(read_prefix(&new_ep, "load")), "load", &acked);
    let log = std::fs::read_to_string(&cluster.members[new].log_path).unwrap_or_default();
    assert!(
        log.contains("install_full_snapshot"),
        "m3 caught up without installing a snapshot:\n{}",
        cluster.log_tail("m3")
    );

    // The new member survives kill -9 right after catching up by snapshot.
    cluster.members[new].kill9();
    cluster.start_joining(new);
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcdctl(&new_ep, &["get", &key, "--consistency=s"]).stdout != want.as_bytes() {
        assert!(
            Instant::now() < deadline,
            "m3 lost {key} across a restart\n{}",
            cluster.log_tail("m3")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_acked(&rt.block_on(read_prefix(&new_ep, "load")), "load", &acked);

    // The removed ID stays removed (etcd's v3rpc maps ErrIDRemoved to "member not found").
    let out = etcdctl(&leader_ep, &["member", "remove", &removed_id]);
    assert!(!out.status.success(), "removing a removed member succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("member not found") || stderr.contains("ID removed"),
        "{stderr}"
    );
}

/// 4. Losing a minority keeps the cluster serving; losing a majority fails fast.
#[test]
fn minority_loss_keeps_serving() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    cluster.members[followers[0]].kill9();
    let eps = cluster.endpoints();
    etcdctl_ok(&eps, &["put", "minority", "one"]);
    for member in cluster.members.iter().filter(|m| m.is_running()) {
        assert_eq!(
            etcdctl_ok(&member.endpoint(), &["get", "minority"]),
            "minority\none\n"
        );
    }

    cluster.members[followers[1]].kill9();
    let ep = cluster.members[leader].endpoint();
    let started = Instant::now();
    let out = etcdctl(&ep, &["put", "majority", "lost"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a write without quorum succeeded");
    assert!(
        elapsed < Duration::from_secs(15),
        "the write hung for {elapsed:?}"
    );
    assert!(
        stderr.contains("request timed out")
            || stderr.contains("no leader")
            || stderr.contains("DeadlineExceeded")
            || stderr.contains("deadline exceeded")
            || stderr.contains("Unavailable"),
        "{stderr}"
    );
    let started = Instant::now();
    let out = etcdctl(&ep, &["get", "minority"]);
    assert!(
        !out.status.success(),
        "a linearizable read without quorum succeeded"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    cluster.restart(followers[0]);
    cluster.restart(followers[1]);
    cluster.wait_healthy(Duration::from_secs(30));
    let eps = cluster.endpoints();
    etcdctl_ok(&eps, &["put", "minority", "two"]);
    for member in &cluster.members {
        assert_eq!(
            etcdctl_ok(&member.endpoint(), &["get", "minority"]),
            "minority\ntwo\n"
        );
    }
}

/// 5. Bad flags: exit code 2 and exactly one line on stderr.
#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 3] = [
        &["store", "--bogus"],
        &["store", "--initial-cluster-state", "maybe"],
        &[
            "store",
            "--name",
            "a",
            "--initial-cluster",
            "b=http://127.0.0.1:1",
        ],
    ];
    for args in cases {
        let out = Command::new(skiff_bin())
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run skiff");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(!stderr.trim().is_empty(), "{args:?}");
    }
}

/// Clears the immutable attribute it set (so the temporary directory can be removed).
struct Immutable(std::path::PathBuf);

impl Immutable {
    /// `chattr +i path`, or None where that is not possible (no chattr, a file system
    /// without the attribute, no CAP_LINUX_IMMUTABLE).
    fn set(path: &std::path::Path) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .is_ok_and(|out| out.status.success());
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

/// 6. A data dir the member cannot write in: exit code 2 and one line naming the path.
///
/// Tests run as root, whom permission bits do not stop: the dirs are under a file, in
/// /proc, or made immutable.
#[test]
fn unusable_data_dir_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let mut cases: Vec<(std::path::PathBuf, String)> = vec![
        (
            file.join("data"),
            format!(
                "skiff: cannot access data directory: mkdir {}: Not a directory (os error 20)",
                file.join("data").display()
            ),
        ),
        (
            "/proc/skiff-no-such-dir/data".into(),
            "skiff: cannot access data directory: mkdir /proc/skiff-no-such-dir/data: No such file or directory (os error 2)".into(),
        ),
    ];
    // An existing data dir that became read-only: refused before anything is opened.
    let read_only = dir.path().join("read-only");
    std::fs::create_dir_all(read_only.join("member")).unwrap();
    let mut guards = Vec::new();
    let member = read_only.join("member");
    std::fs::set_permissions(
        &read_only,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(&member, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // A data file that cannot be opened for writing.
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(locked.join("member")).unwrap();
    let redb = locked.join("member").join("store.redb");
    std::fs::write(&redb, b"").unwrap();
    match (Immutable::set(&member), Immutable::set(&redb)) {
        (Some(a), Some(b)) => {
            guards.push(a);
            guards.push(b);
            cases.push((
                read_only.clone(),
                format!(
                    "skiff: cannot access data directory: open {}: Operation not permitted (os error 1)",
                    member.join(".touch").display()
                ),
            ));
            // The engine's error text sits between the prefix and the OS error.
            cases.push((
                locked.clone(),
                format!(
                    "skiff: open data dir: … {}: … Operation not permitted (os error 1)",
                    redb.display()
                ),
            ));
        }
        _ => eprintln!("chattr +i is not available here: immutable data dir cases skipped"),
    }
    for (data_dir, expected) in cases {
        let peer = format!("http://127.0.0.1:{}", common::free_port());
        let client = format!("http://127.0.0.1:{}", common::free_port());
        let out = Command::new(skiff_bin())
            .args(["store", "--name", "a"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("a={peer}")])
            .current_dir(dir.path())
            .output()
            .expect("run skiff");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{data_dir:?}: {stderr}");
        assert!(
            in_order(stderr.trim_end(), &expected),
            "{data_dir:?}: {stderr:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "{data_dir:?}: {stderr:?}");
    }
    drop(guards);
}

/// Whether `text` is `pattern`, where each "… " in the pattern stands for any text.
fn in_order(text: &str, pattern: &str) -> bool {
    let mut parts = pattern.split("… ");
    let Some(first) = parts.next() else {
        return true;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty() || pattern.ends_with("… ")
}

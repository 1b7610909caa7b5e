//! Lease tests: real `skiff store` processes, real `etcdctl`, the `etcd-client` crate, and
//! real etcd (Debian's etcd-server) as the reference for every output and error.
//!
//! Every wait is bounded; the only time bound asserted is the acceptance bound
//! (keys vanish within TTL + one election timeout after keep-alives stop).
mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, RealEtcd, etcdctl};
use etcd_client::{Client, ConnectOptions, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions};

/// skiff's and etcd's default election timeout.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Lease IDs differ between servers: outputs name them L1, L2, ... in order of grant.
#[derive(Default)]
struct Ids {
    names: Vec<(String, String)>,
}

impl Ids {
    fn add(&mut self, hex: &str) -> String {
        let name = format!("L{}", self.names.len() + 1);
        self.names.push((hex.to_string(), name.clone()));
        name
    }

    fn hex(&self, name: &str) -> String {
        self.names
            .iter()
            .find(|(_, n)| n == name)
            .map(|(hex, _)| hex.clone())
            .unwrap_or_else(|| panic!("no lease {name}"))
    }

    /// Replace IDs by names, check and blank the remaining TTL, and sort the attached
    /// keys and listed leases (etcd's order is Go map order, or by expiry).
    fn normalize(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (hex, name) in &self.names {
            text = text.replace(hex, name);
        }
        let mut lines: Vec<String> = text.lines().map(normalize_line).collect();
        if lines.first().is_some_and(|l| l.starts_with("found ")) {
            lines[1..].sort();
        }
        lines.join("\n")
    }
}

fn normalize_line(line: &str) -> String {
    let mut line = line.to_string();
    if let (Some(granted), Some(start)) = (between(&line, "TTL(", "s)"), line.find("remaining(")) {
        let end = start + line[start..].find("s)").expect("remaining(...s)");
        let remaining: i64 = line[start + "remaining(".len()..end]
            .parse()
            .expect("remaining seconds");
        let granted: i64 = granted.parse().expect("granted seconds");
        assert!(
            (0..=granted).contains(&remaining),
            "remaining {remaining} outside 0..={granted}: {line}"
        );
        line.replace_range(start..end + 2, "remaining(_)");
    }
    if let Some(keys) = between(&line, "attached keys([", "])") {
        let mut sorted: Vec<&str> = keys.split(' ').collect();
        sorted.sort();
        line = line.replace(keys, &sorted.join(" "));
    }
    line
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = start + text[start..].find(close)?;
    Some(&text[start..end])
}

/// What one etcdctl call showed: exit status, normalized stdout, and the `Error:` line.
fn shown(ids: &Ids, args: &[&str], out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    format!(
        "$ etcdctl {}\nexit {:?}\n{}\n{}",
        ids.normalize(&args.join(" ")),
        out.status.code(),
        ids.normalize(&String::from_utf8_lossy(&out.stdout)),
        error.join("\n")
    )
}

fn revision(endpoint: &str) -> i64 {
    let out = etcdctl(endpoint, &["get", "nothing", "-w", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["header"]["revision"].as_i64().expect("revision")
}

fn count(endpoint: &str, args: &[&str]) -> i64 {
    let mut all = vec!["get", "-w", "json"];
    all.extend(args);
    let out = etcdctl(endpoint, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["count"].as_i64().unwrap_or(0)
}

/// The etcdctl lease session the issue names, on one endpoint. Returns what etcdctl
/// showed at each step plus revision facts, normalized so servers compare equal.
fn etcdctl_session(endpoint: &str) -> Vec<String> {
    let mut ids = Ids::default();
    let mut log = Vec::new();
    let mut run = |ids: &mut Ids, args: &[&str]| -> String {
        let out = etcdctl(endpoint, args);
        if args[..2] == ["lease", "grant"] && out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let hex = stdout.split(' ').nth(1).expect("lease ID").to_string();
            ids.add(&hex);
        }
        log.push(shown(ids, args, &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&mut ids, &["lease", "grant", "5"]);
    let l1 = ids.hex("L1");
    // Below the minimum (2 s with a 1 s election timeout): raised.
    run(&mut ids, &["lease", "grant", "1"]);
    let l2 = ids.hex("L2");
    run(&mut ids, &["lease", "grant", "9000000001"]);
    for key in ["k1", "k2", "k3"] {
        run(&mut ids, &["put", "--lease", &l1, key, "v"]);
    }
    run(&mut ids, &["lease", "timetolive", "--keys", &l1]);
    // Moving a key to another lease detaches it from the first.
    run(&mut ids, &["put", "--lease", &l2, "k3", "w"]);
    run(&mut ids, &["lease", "timetolive", "--keys", &l1]);
    run(&mut ids, &["lease", "timetolive", "--keys", &l2]);
    run(&mut ids, &["lease", "timetolive", &l1]);
    run(&mut ids, &["lease", "list"]);
    run(&mut ids, &["lease", "keep-alive", "--once", &l1]);
    let before = revision(endpoint);
    run(&mut ids, &["lease", "revoke", &l1]);
    let after = revision(endpoint);
    log.push(format!("revoke bumped the revision by {}", after - before));
    log.push(format!(
        "live k1,k2 after revoke: {}; at the revision before: {}",
        count(endpoint, &["k1", "k3"]),
        count(endpoint, &["k1", "k3", &format!("--rev={before}")]),
    ));
    log.push(format!(
        "k3 (moved to L2) after revoke: {}",
        count(endpoint, &["k3"])
    ));
    let mut run = |ids: &mut Ids, args: &[&str]| {
        let out = etcdctl(endpoint, args);
        log.push(shown(ids, args, &out));
    };
    run(&mut ids, &["lease", "revoke", &l1]);
    run(&mut ids, &["lease", "timetolive", "--keys", &l1]);
    run(&mut ids, &["lease", "keep-alive", "--once", &l1]);
    run(&mut ids, &["put", "--lease", &l1, "k4", "v"]);
    run(&mut ids, &["lease", "revoke", &l2]);
    run(&mut ids, &["lease", "list"]);
    log
}

/// Send `n` keep-alives for `id` on one raw KeepAlive stream and return the answers.
async fn raw_keep_alives(
    endpoint: &str,
    id: i64,
    n: usize,
) -> Vec<skiff_proto::etcdserverpb::LeaseKeepAliveResponse> {
    use skiff_proto::etcdserverpb::LeaseKeepAliveRequest;
    use skiff_proto::etcdserverpb::lease_client::LeaseClient;
    let mut client = LeaseClient::connect(format!("http://{endpoint}"))
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(n);
    // grpc-go sends response headers with the first answer: ask before opening.
    tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
    let mut answers = client
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("keepalive stream")
        .into_inner();
    let mut out = Vec::new();
    for i in 0..n {
        if i > 0 {
            tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
        }
        out.push(
            answers
                .message()
                .await
                .expect("keepalive answer")
                .expect("one answer"),
        );
    }
    out
}

fn status_of<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(etcd_client::Error::GRpcStatus(status)) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        Err(other) => panic!("unexpected client error: {other}"),
    }
}

/// Lease calls through the etcd-client crate: answers and errors, normalized.
async fn client_session(endpoint: &str) -> Vec<String> {
    let mut client = common::client(endpoint).await;
    let mut log = Vec::new();
    let granted = client.lease_grant(10, None).await.expect("grant");
    let id = granted.id();
    assert!(id > 0, "server-chosen IDs are positive");
    log.push(format!("grant 10: ttl {}", granted.ttl()));
    log.push(format!(
        "grant existing ID: {}",
        status_of(
            client
                .lease_grant(10, Some(LeaseGrantOptions::new().with_id(id)))
                .await
        )
    ));
    // A chosen ID is kept; TTLs at or below the minimum are raised to it.
    let unknown = 0x7ead_beef_0000_0001;
    let chosen = client
        .lease_grant(0, Some(LeaseGrantOptions::new().with_id(unknown - 1)))
        .await
        .expect("grant with ID");
    log.push(format!(
        "grant ttl 0 with ID: id matches {}, ttl {}",
        chosen.id() == unknown - 1,
        chosen.ttl()
    ));
    log.push(format!(
        "grant -5: ttl {}",
        client.lease_grant(-5, None).await.expect("grant").ttl()
    ));
    log.push(format!(
        "grant too large: {}",
        status_of(client.lease_grant(9_000_000_001, None).await)
    ));
    log.push(format!(
        "revoke unknown: {}",
        status_of(client.lease_revoke(unknown).await)
    ));
    let ttl = client
        .lease_time_to_live(unknown, None)
        .await
        .expect("timetolive of an unknown lease is not an error");
    log.push(format!(
        "timetolive unknown: id {} ttl {} granted {} keys {:?}",
        ttl.id() == unknown,
        ttl.ttl(),
        ttl.granted_ttl(),
        ttl.keys()
    ));
    // The etcd-client crate refuses a first answer with TTL 0: use the raw stream.
    for answer in raw_keep_alives(endpoint, unknown, 2).await {
        log.push(format!(
            "keepalive unknown: id {} ttl {} revision set {}",
            answer.id == unknown,
            answer.ttl,
            answer.header.is_some_and(|h| h.revision > 0)
        ));
    }
    let put = client
        .put(
            "leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(unknown)),
        )
        .await;
    log.push(format!("put with unknown lease: {}", status_of(put)));
    let put = client
        .put(
            "leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(id)),
        )
        .await;
    log.push(format!("put with lease: {}", status_of(put)));
    let kv = client.get("leased", None).await.expect("get");
    log.push(format!("key's lease matches {}", kv.kvs()[0].lease() == id));
    let ttl = client
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("timetolive");
    log.push(format!(
        "timetolive: granted {} keys {:?} ttl in range {}",
        ttl.granted_ttl(),
        ttl.keys(),
        (0..=10).contains(&ttl.ttl())
    ));
    let (mut keeper, mut stream) = client.lease_keep_alive(id).await.expect("keepalive");
    keeper.keep_alive().await.expect("send keepalive");
    let answer = stream.message().await.expect("answer").expect("one answer");
    log.push(format!("keepalive: ttl {}", answer.ttl()));
    let leases = client.leases().await.expect("leases");
    let mut listed: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    listed.sort();
    log.push(format!(
        "leases: {} listed, granted ones included {}",
        listed.len(),
        listed.contains(&id) && listed.contains(&(unknown - 1))
    ));
    for lease in listed {
        client.lease_revoke(lease).await.expect("revoke");
    }
    log.push(format!(
        "leased key after revoke: {}",
        client.get("leased", None).await.expect("get").kvs().len()
    ));
    log
}

#[test]
fn lease_commands_match_real_etcd() {
    let reference = RealEtcd::start();
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    // Through a follower: grants, revokes and puts are forwarded to the leader,
    // keep-alives and TimeToLive to the primary lessor.
    let follower = (leader + 1) % cluster.members.len();
    let skiff_endpoint = cluster.members[follower].endpoint();

    let expected = etcdctl_session(&reference.endpoint);
    let actual = etcdctl_session(&skiff_endpoint);
    for (want, got) in expected.iter().zip(&actual) {
        assert_eq!(got, want, "etcdctl output differs from real etcd");
    }
    assert_eq!(actual.len(), expected.len());
    assert!(
        expected
            .iter()
            .any(|l| l == "revoke bumped the revision by 1"),
        "{expected:#?}"
    );

    let rt = runtime();
    let expected = rt.block_on(client_session(&reference.endpoint));
    let actual = rt.block_on(client_session(&skiff_endpoint));
    assert_eq!(
        actual, expected,
        "etcd-client answers differ from real etcd"
    );
    // And through the leader.
    let actual = rt.block_on(client_session(&cluster.members[leader].endpoint()));
    assert_eq!(
        actual, expected,
        "etcd-client answers differ from real etcd"
    );
}

/// Poll until `key` is gone (bounded by `within`); returns how long that took.
async fn wait_gone(client: &mut Client, key: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = client.get(key, None).await;
        if matches!(&got, Ok(resp) if resp.kvs().is_empty()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() <= within,
            "{key} still there after {within:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keep a lease alive from a background task, one member at a time (moving to the next
/// on any error), every `period`. Counts answers with TTL > 0 and remembers the last TTL.
struct KeepAliveTask {
    stop: Arc<AtomicBool>,
    answers: Arc<AtomicU64>,
    last_ttl: Arc<AtomicI64>,
    handle: tokio::task::JoinHandle<()>,
}

impl KeepAliveTask {
    fn spawn(
        rt: &tokio::runtime::Runtime,
        endpoints: Vec<String>,
        id: i64,
        period: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(AtomicU64::new(0));
        let last_ttl = Arc::new(AtomicI64::new(-1));
        let handle = rt.spawn(keep_alive_loop(
            endpoints,
            id,
            period,
            stop.clone(),
            answers.clone(),
            last_ttl.clone(),
        ));
        KeepAliveTask {
            stop,
            answers,
            last_ttl,
            handle,
        }
    }

    fn answers(&self) -> u64 {
        self.answers.load(Ordering::SeqCst)
    }

    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::SeqCst);
        rt.block_on(self.handle).expect("keepalive task");
    }
}

async fn keep_alive_loop(
    endpoints: Vec<String>,
    id: i64,
    period: Duration,
    stop: Arc<AtomicBool>,
    answers: Arc<AtomicU64>,
    last_ttl: Arc<AtomicI64>,
) {
    let step = Duration::from_secs(3);
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        let endpoint = format!("http://{}", endpoints[next % endpoints.len()]);
        next += 1;
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        let Ok(Ok(mut client)) =
            tokio::time::timeout(step, Client::connect([endpoint], Some(options))).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(step, client.lease_keep_alive(id)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(step, stream.message()).await {
                Ok(Ok(Some(answer))) => {
                    last_ttl.store(answer.ttl(), Ordering::SeqCst);
                    if answer.ttl() > 0 {
                        answers.fetch_add(1, Ordering::SeqCst);
                    }
                }
                _ => break,
            }
            tokio::time::sleep(period).await;
        }
    }
}

#[test]
fn leases_expire_after_keepalives_stop_and_survive_a_leader_kill() {
    let mut cluster = Cluster::start(3);
    let rt = runtime();
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let all = endpoints.join(",");
    let ttl: i64 = 5;
    let ttl_d = Duration::from_secs(ttl as u64);

    // 1. Without keep-alives, the keys vanish within TTL + one election timeout of the
    //    last refresh (here a keep-alive right after the put).
    let mut client = rt.block_on(common::client(&all));
    let lease = rt
        .block_on(client.lease_grant(ttl, None))
        .expect("grant")
        .id();
    for key in ["short/a", "short/b"] {
        rt.block_on(client.put(
            key,
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        ))
        .expect("put with lease");
    }
    let (mut keeper, mut stream) = rt
        .block_on(client.lease_keep_alive(lease))
        .expect("keepalive");
    rt.block_on(keeper.keep_alive()).expect("send keepalive");
    let answer = rt
        .block_on(stream.message())
        .expect("answer")
        .expect("one answer");
    let refreshed = Instant::now();
    assert_eq!(answer.ttl(), ttl);
    drop((keeper, stream));
    rt.block_on(wait_gone(&mut client, "short/a", ttl_d + ELECTION_TIMEOUT));
    assert!(
        refreshed.elapsed() <= ttl_d + ELECTION_TIMEOUT,
        "keys outlived TTL + election timeout"
    );
    let prefix = rt
        .block_on(client.get("short/", Some(GetOptions::new().with_prefix())))
        .expect("get");
    assert!(
        prefix.kvs().is_empty(),
        "both keys go in the same revocation"
    );
    let ttl_now = rt
        .block_on(client.lease_time_to_live(lease, None))
        .expect("timetolive");
    assert_eq!(ttl_now.ttl(), -1, "an expired lease is gone");

    // 2. A lease kept alive survives a SIGKILL of the leader.
    let lease = rt
        .block_on(client.lease_grant(ttl, None))
        .expect("grant")
        .id();
    rt.block_on(client.put(
        "survivor",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    ))
    .expect("put with lease");
    let keepalive = KeepAliveTask::spawn(&rt, endpoints.clone(), lease, Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(20);
    while keepalive.answers() < 2 {
        assert!(Instant::now() < deadline, "no keep-alive answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let leader = cluster.wait_leader(Duration::from_secs(30));
    cluster.members[leader].kill9();
    let new_leader = cluster.wait_leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);
    // Keep-alives continue for three TTLs after the failover.
    let answered = keepalive.answers();
    std::thread::sleep(ttl_d * 3);
    assert!(
        keepalive.answers() > answered,
        "keep-alives stopped being answered after the failover"
    );
    let survivors: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.endpoint())
        .collect();
    let mut client = rt.block_on(common::client(&survivors.join(",")));
    let got = rt.block_on(client.get("survivor", None)).expect("get");
    assert_eq!(got.kvs().len(), 1, "the kept-alive lease's key survived");
    let remaining = rt
        .block_on(client.lease_time_to_live(lease, None))
        .expect("timetolive");
    assert!(remaining.ttl() > 0, "lease alive: {remaining:?}");
    assert_eq!(remaining.granted_ttl(), ttl);
    assert!(keepalive.last_ttl.load(Ordering::SeqCst) == ttl);

    // 3. Once keep-alives stop, the new leader expires it.
    keepalive.stop(&rt);
    let stopped = Instant::now();
    rt.block_on(wait_gone(&mut client, "survivor", ttl_d + ELECTION_TIMEOUT));
    assert!(stopped.elapsed() <= ttl_d + ELECTION_TIMEOUT);
    let leases = rt.block_on(client.leases()).expect("leases");
    assert!(leases.leases().iter().all(|l| l.id() != lease));

    // The killed member comes back and agrees.
    cluster.restart(leader);
    cluster.wait_healthy(Duration::from_secs(30));
    let mut client = rt.block_on(common::client(&cluster.members[leader].endpoint()));
    let got = rt
        .block_on(client.get("", Some(GetOptions::new().with_all_keys())))
        .expect("get");
    let keys: BTreeMap<String, i64> = got
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap_or_default().to_string(), kv.lease()))
        .collect();
    assert!(keys.is_empty(), "no leased key left: {keys:?}");
}

/// SIGCONTs a paused member even when the test fails.
struct Paused(u32);

impl Paused {
    fn stop(pid: u32) -> Paused {
        signal(pid, "-STOP");
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// A leader paused past a lease's TTL wakes up with that lease expired on its own clock,
/// while the new leader has kept it alive. The paused member must not revoke it: an
/// expired lease is revoked only by a leader that confirms its leadership and proposes
/// in its own term (etcd's `ensureLeadership`), never forwarded to whoever leads now.
#[test]
fn a_resumed_deposed_leader_does_not_revoke_a_lease_kept_alive_meanwhile() {
    let cluster = Cluster::start(3);
    let rt = runtime();
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let followers: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.members[i].endpoint())
        .collect();
    let ttl: i64 = 3;
    let mut client = rt.block_on(common::client(&followers.join(",")));
    let mut leases = Vec::new();
    for n in 0..8 {
        let lease = rt
            .block_on(client.lease_grant(ttl, None))
            .expect("grant")
            .id();
        rt.block_on(client.put(
            format!("kept/{n}"),
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        ))
        .expect("put with lease");
        leases.push(lease);
    }
    // Keep-alives go to the followers only, so they reach whichever member leads.
    let keepers: Vec<KeepAliveTask> = leases
        .iter()
        .map(|&id| KeepAliveTask::spawn(&rt, followers.clone(), id, Duration::from_millis(300)))
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // Paused well past the TTL: a new leader is elected and keeps the leases alive.
    let pid = cluster.members[leader]
        .child
        .as_ref()
        .expect("leader runs")
        .id();
    let paused = Paused::stop(pid);
    std::thread::sleep(Duration::from_secs(ttl as u64 * 3));
    let new_leader = cluster.leader();
    assert!(
        new_leader.is_some_and(|l| l != leader),
        "a follower took over: {new_leader:?}"
    );
    let before: Vec<u64> = keepers.iter().map(|k| k.answers()).collect();
    drop(paused);

    // The old leader wakes up with every lease past its expiry on its own clock.
    let watch_until = Instant::now() + Duration::from_secs(ttl as u64 + 2);
    while Instant::now() < watch_until {
        let got = rt
            .block_on(client.get("kept/", Some(GetOptions::new().with_prefix())))
            .expect("get");
        assert_eq!(
            got.kvs().len(),
            leases.len(),
            "a lease kept alive by the new leader was revoked after the old leader resumed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (keeper, before) in keepers.iter().zip(&before) {
        assert!(
            keeper.answers() > *before,
            "keep-alives kept being answered"
        );
    }
    for keeper in keepers {
        keeper.stop(&rt);
    }
    let log = cluster.log_tail(&cluster.members[leader].name);
    assert!(
        !log.contains("panicked"),
        "the resumed member panicked:\n{log}"
    );
}

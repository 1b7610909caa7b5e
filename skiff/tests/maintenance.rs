//! Maintenance and restore, end to end: real `skiff store` processes driven by real
//! `etcdctl` (3.4) and the `etcd-client` crate — `endpoint status`, `endpoint hashkv`,
//! `defrag`, the NOSPACE alarm with `--quota-backend-bytes`, `move-leader`, `snapshot
//! save`, and `skiff store snapshot status/restore` into a new cluster.
//!
//! The round trip loads 100,000 keys by default (the bar);
//! `SKIFF_SNAPSHOT_KEYS=N` changes that.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Cluster, etcdctl, etcdctl_ok, etcdctl_stdin, skiff_bin};
use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use serde_json::Value;

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// `endpoint status -w json` of one member: the `Status` object.
fn status(endpoint: &str) -> Value {
    let out = etcdctl_ok(endpoint, &["endpoint", "status", "-w", "json"]);
    let v: Value = serde_json::from_str(&out).expect("status json");
    v[0]["Status"].clone()
}

fn member_id(endpoint: &str) -> u64 {
    status(endpoint)["header"]["member_id"]
        .as_u64()
        .expect("member_id")
}

/// `endpoint hashkv --rev REV -w json` of one member: (hash, compact_revision, revision).
fn hashkv(endpoint: &str, rev: i64) -> (u64, i64, i64) {
    let out = etcdctl_ok(
        endpoint,
        &[
            "endpoint",
            "hashkv",
            "--rev",
            &rev.to_string(),
            "-w",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("hashkv json");
    let h = &v[0]["HashKV"];
    (
        h["hash"].as_u64().expect("hash"),
        h["compact_revision"].as_i64().expect("compact_revision"),
        h["header"]["revision"].as_i64().expect("revision"),
    )
}

/// A linearizable read through `endpoint`: once it answers, the member has applied every
/// write committed before; returns the revision it reports.
fn sync_revision(endpoint: &str) -> i64 {
    let out = etcdctl_ok(endpoint, &["get", "sync-probe", "-w", "json"]);
    let v: Value = serde_json::from_str(&out).expect("get json");
    v["header"]["revision"].as_i64().expect("revision")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn engine_file(cluster: &Cluster, i: usize) -> PathBuf {
    cluster.members[i]
        .data_dir
        .join("member")
        .join("store.redb")
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

fn skiff_store(args: &[&str]) -> Output {
    Command::new(skiff_bin())
        .arg("store")
        .args(args)
        .output()
        .expect("run skiff store")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn status_fields_and_hashkv_agree_on_every_member() {
    let cluster = Cluster::start(3);
    let eps: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    for i in 0..20 {
        etcdctl_ok(
            &eps[i % 3],
            &["put", &format!("key{}", i % 7), &format!("v{i}")],
        );
    }
    etcdctl_ok(&eps[1], &["del", "key3"]);
    let compact_at = sync_revision(&eps[0]) - 5;
    etcdctl_ok(&eps[2], &["compact", &compact_at.to_string()]);
    etcdctl_ok(&eps[0], &["put", "last", "x"]);
    let revision = eps.iter().map(|e| sync_revision(e)).max().unwrap();

    // endpoint status: every field etcdctl shows.
    let leader = member_id(&eps[cluster.wait_leader(Duration::from_secs(10))]);
    for ep in &eps {
        let s = status(ep);
        assert_eq!(s["version"], "3.5.21", "{s}");
        let db_size = s["dbSize"].as_i64().expect("dbSize");
        let in_use = s["dbSizeInUse"].as_i64().expect("dbSizeInUse");
        assert!(db_size > 0 && in_use > 0 && in_use <= db_size, "{s}");
        assert_eq!(s["leader"].as_u64(), Some(leader), "{s}");
        let applied = s["raftAppliedIndex"].as_u64().expect("raftAppliedIndex");
        let index = s["raftIndex"].as_u64().expect("raftIndex");
        assert!(applied > 0 && applied <= index, "{s}");
        assert!(s["raftTerm"].as_u64().unwrap_or(0) >= 1, "{s}");
        // etcdctl omits false and empty fields: no learner flag, no errors.
        assert!(
            s.get("isLearner").is_none() || s["isLearner"] == false,
            "{s}"
        );
        assert!(s.get("errors").is_none(), "{s}");
        assert_eq!(s["header"]["revision"].as_i64(), Some(revision), "{s}");
    }

    // endpoint hashkv: the same on all three members, at the current revision and before.
    for rev in [0, revision, revision - 1, compact_at + 1] {
        let hashes: Vec<(u64, i64, i64)> = eps.iter().map(|e| hashkv(e, rev)).collect();
        assert!(
            hashes
                .iter()
                .all(|h| h.0 == hashes[0].0 && h.1 == compact_at),
            "hashkv --rev {rev} differs: {hashes:?}"
        );
    }
    assert_ne!(hashkv(&eps[0], revision).0, hashkv(&eps[0], revision - 1).0);
    // The plain form lists one line per endpoint.
    let all = etcdctl_ok(&eps.join(","), &["endpoint", "hashkv"]);
    assert_eq!(all.lines().count(), 3, "{all}");

    // Compacted and future revisions: etcd's errors.
    let out = etcdctl(
        &eps[1],
        &["endpoint", "hashkv", "--rev", &compact_at.to_string()],
    );
    assert!(
        stderr(&out).contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        stderr(&out)
    );
    let out = etcdctl(
        &eps[1],
        &["endpoint", "hashkv", "--rev", &(revision + 100).to_string()],
    );
    assert!(
        stderr(&out).contains("etcdserver: mvcc: required revision is a future revision"),
        "{}",
        stderr(&out)
    );

    // move-leader: etcd's checks (to itself is a no-op success, an unknown member is refused).
    let leader_ep = eps
        .iter()
        .find(|e| member_id(e) == leader)
        .expect("leader endpoint");
    let out = etcdctl_ok(leader_ep, &["move-leader", &format!("{leader:x}")]);
    assert!(out.contains("Leadership transferred"), "{out}");
    let out = etcdctl(leader_ep, &["move-leader", "1234"]);
    assert!(
        stderr(&out).contains("etcdserver: bad leader transferee"),
        "{}",
        stderr(&out)
    );
    // A real transfer is covered by tests/move_leader.rs.
    let follower = eps.iter().find(|e| member_id(e) != leader).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut client = common::client(follower).await;
        let err = client.move_leader(leader).await.unwrap_err();
        assert!(err.to_string().contains("etcdserver: not leader"), "{err}");
        // Hash of the whole state: equal on members that applied the same log.
        let mut hashes = Vec::new();
        for ep in &eps {
            let mut client = common::client(ep).await;
            hashes.push(client.hash().await.expect("hash").hash());
        }
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    });
}

#[test]
fn defrag_shrinks_the_file_and_keeps_the_data() {
    let cluster = Cluster::start(3);
    let eps: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let big = "x".repeat(4000);
    let rt = runtime();
    rt.block_on(async {
        let mut client = common::client(&eps.join(",")).await;
        for i in 0..400 {
            client
                .put(format!("k{}", i % 10), format!("{i}-{big}"), None)
                .await
                .expect("put");
        }
    });
    let revision = sync_revision(&eps[0]);
    etcdctl_ok(&eps[0], &["compact", &revision.to_string()]);
    let before_data = etcdctl_ok(&eps[0], &["get", "k", "--prefix"]);
    let before_hash = hashkv(&eps[0], 0).0;
    let before: Vec<u64> = (0..3)
        .map(|i| file_size(&engine_file(&cluster, i)))
        .collect();

    let out = etcdctl_ok(&eps.join(","), &["defrag"]);
    assert_eq!(
        out.matches("Finished defragmenting etcd member").count(),
        3,
        "{out}"
    );
    for i in 0..3 {
        let after = file_size(&engine_file(&cluster, i));
        assert!(after <= before[i], "member {i}: {after} > {}", before[i]);
        let s = status(&eps[i]);
        assert_eq!(s["dbSize"].as_u64(), Some(after), "{s}");
    }
    let total_before: u64 = before.iter().sum();
    let total_after: u64 = (0..3).map(|i| file_size(&engine_file(&cluster, i))).sum();
    assert!(
        total_after < total_before,
        "defrag freed nothing after a compaction: {total_after} >= {total_before}"
    );
    println!("defrag: data files {before:?} -> {total_after} bytes in total");
    for ep in &eps {
        assert_eq!(etcdctl_ok(ep, &["get", "k", "--prefix"]), before_data);
        assert_eq!(hashkv(ep, 0).0, before_hash);
    }
    // Writes go on after a defrag.
    etcdctl_ok(&eps[1], &["put", "after-defrag", "1"]);
    assert_eq!(
        etcdctl_ok(&eps[2], &["get", "after-defrag", "--print-value-only"]),
        "1\n"
    );
}

/// VmRSS of a running member, in bytes (from /proc/<pid>/status).
fn rss_bytes(cluster: &Cluster, i: usize) -> u64 {
    let pid = cluster.members[i].child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kib * 1024
}

/// A compaction drops every old value from the in-memory index and a defrag rebuilds the
/// file; both return what they free to the OS, so the member's RSS falls back (a functional
/// property, not a performance bound: the margins are several times the noise).
#[test]
fn compaction_and_defrag_give_memory_back() {
    const MIB: u64 = 1024 * 1024;
    let cluster = Cluster::start(1);
    let ep = cluster.members[0].endpoint();
    let start = rss_bytes(&cluster, 0);
    // 40,000 revisions of history, 2 KiB values over 1,000 keys: ~80 MiB of old values.
    let out = Command::new(skiff_bin())
        .args([
            "bench",
            "--endpoints",
            &ep,
            "--clients",
            "16",
            "--conns",
            "2",
        ])
        .args([
            "--total",
            "40000",
            "--val-size",
            "2048",
            "--key-space-size",
            "1000",
        ])
        .arg("put")
        .output()
        .expect("run skiff bench");
    assert!(out.status.success(), "bench: {}", stderr(&out));
    let revision = sync_revision(&ep);
    assert!(revision > 40_000, "{revision}");
    let history = rss_bytes(&cluster, 0);
    assert!(
        history > start + 64 * MIB,
        "writing the history did not grow RSS ({start} -> {history} bytes): nothing to measure"
    );

    etcdctl_ok(&ep, &["compact", &revision.to_string(), "--physical"]);
    // The trim runs right after the compaction is applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut compacted = rss_bytes(&cluster, 0);
    while compacted >= history && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        compacted = rss_bytes(&cluster, 0);
    }
    assert!(
        compacted < history,
        "RSS did not fall after the compaction: {history} -> {compacted} bytes"
    );

    etcdctl_ok(&ep, &["defrag"]);
    let defragged = rss_bytes(&cluster, 0);
    println!(
        "RSS: start {} MiB, after history {} MiB, after compact {} MiB, after defrag {} MiB",
        start / MIB,
        history / MIB,
        compacted / MIB,
        defragged / MIB
    );
    assert!(
        defragged < history / 3 * 2,
        "RSS after compact + defrag is not a third below the history's: {history} -> {defragged} bytes"
    );
    // Still serving: the latest version of each of the bench's 1,000 keys.
    let out = etcdctl_ok(
        &ep,
        &[
            "get",
            "",
            "--prefix",
            "--keys-only",
            "--limit",
            "1",
            "-w",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("get json");
    assert_eq!(v["count"].as_u64(), Some(1000), "{out}");
}

#[test]
fn quota_raises_nospace_until_disarmed() {
    let quota = 2_000_000u64;
    let quota_flag = quota.to_string();
    // Frequent Raft snapshots purge the log (which shares the data file) quickly.
    let cluster = Cluster::start_with(
        3,
        &[
            "--quota-backend-bytes",
            &quota_flag,
            "--snapshot-count",
            "20",
            "--snapshot-catchup-entries",
            "5",
        ],
    );
    let eps: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let rt = runtime();
    let puts = rt.block_on(async {
        let mut client = common::client(&eps[0]).await;
        // etcdctl 3.4 does not show the quota; etcd 3.5 clients do.
        let s = client.status().await.expect("status");
        assert_eq!(s.db_size_quota(), quota as i64);
        let value = "v".repeat(8000);
        for i in 0..1000 {
            match client.put(format!("k{}", i % 5), value.clone(), None).await {
                Ok(_) => {}
                Err(etcd_client::Error::GRpcStatus(status)) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                    assert_eq!(status.message(), NOSPACE);
                    return i;
                }
                Err(err) => panic!("put {i}: {err}"),
            }
        }
        panic!("the quota was never hit");
    });
    println!("quota of {quota} bytes hit after {puts} puts of 8 kB");
    let out = etcdctl(&eps[0], &["put", "k0", "v"]);
    assert!(
        stderr(&out).contains(&format!("Error: {NOSPACE}")),
        "{}",
        stderr(&out)
    );

    // The alarm is replicated: every member lists it and shows it in its status.
    let id0 = member_id(&eps[0]);
    let alarm_line = format!("memberID:{id0} alarm:NOSPACE");
    for ep in &eps {
        let list = etcdctl_ok(ep, &["alarm", "list"]);
        assert!(list.contains(&alarm_line), "{ep}: {list}");
        let s = status(ep);
        let errors: Vec<&str> = s["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(errors.contains(&format!("{alarm_line} ").as_str()), "{s}");
    }
    // Writes that grow the store are refused through every member, with etcd's error.
    for ep in &eps {
        let out = etcdctl(ep, &["put", "new-key", "v"]);
        assert!(stderr(&out).contains(NOSPACE), "{ep}: {}", stderr(&out));
    }
    let txn = "\nput txn-key v\n\n\n";
    let out = etcdctl_stdin(&eps[1], &["txn"], Some(txn));
    assert!(stderr(&out).contains(NOSPACE), "{}", stderr(&out));
    // Reads, deletes and compaction still work.
    assert_eq!(
        etcdctl_ok(&eps[2], &["get", "k0", "--print-value-only"]).len(),
        8001
    );
    assert_eq!(etcdctl_ok(&eps[1], &["del", "k1"]), "1\n");
    let revision = sync_revision(&eps[0]);
    etcdctl_ok(&eps[0], &["compact", &revision.to_string()]);

    // Defragment until the file is back under the quota (the Raft log shrinks as
    // snapshots purge it), then disarm.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        etcdctl_ok(&eps.join(","), &["defrag"]);
        let size = status(&eps[0])["dbSize"].as_u64().unwrap();
        if size + 64 * 1024 < quota {
            break;
        }
        assert!(Instant::now() < deadline, "data file still {size} bytes");
        std::thread::sleep(Duration::from_millis(500));
    }
    let disarmed = etcdctl_ok(&eps[2], &["alarm", "disarm"]);
    assert!(disarmed.contains(&alarm_line), "{disarmed}");
    for ep in &eps {
        assert_eq!(etcdctl_ok(ep, &["alarm", "list"]), "");
        assert!(status(ep).get("errors").is_none());
    }
    etcdctl_ok(&eps[0], &["put", "new-key", "v"]);
    assert_eq!(
        etcdctl_ok(&eps[1], &["get", "new-key", "--print-value-only"]),
        "v\n"
    );
}

/// Load `n` keys `key/NNNNNNN` = `value-NNNNNNN` with concurrent txns of 100 puts.
async fn load_keys(endpoints: &str, n: usize) {
    const PER_TXN: usize = 100;
    const WRITERS: usize = 12;
    let client = common::client(endpoints).await;
    let chunks: Vec<usize> = (0..n).step_by(PER_TXN).collect();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = client.clone();
        let mine: Vec<usize> = chunks.iter().copied().skip(w).step_by(WRITERS).collect();
        tasks.push(tokio::spawn(async move {
            for start in mine {
                let ops: Vec<TxnOp> = (start..(start + PER_TXN).min(n))
                    .map(|i| TxnOp::put(key(i), value(i), None))
                    .collect();
                let mut attempt = 0;
                loop {
                    match client.txn(Txn::new().and_then(ops.clone())).await {
                        Ok(_) => break,
                        Err(err) if attempt < 5 => {
                            attempt += 1;
                            eprintln!("txn at {start} failed ({err}); retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(err) => panic!("txn at {start}: {err}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

fn key(i: usize) -> String {
    format!("key/{i:07}")
}

fn value(i: usize) -> String {
    format!("value-{i:07}")
}

/// Every key in `[key(0), key(n))` through `endpoint`, in pages, checked against the
/// expected values; returns how many were found.
async fn check_every_key(endpoint: &str, n: usize, deleted: &[usize], updated: &[usize]) -> usize {
    let mut client = common::client(endpoint).await;
    let end = key(n);
    let mut from = key(0);
    let mut found = Vec::new();
    loop {
        let resp = client
            .get(
                from.clone(),
                Some(
                    GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(10_000)
                        .with_sort(SortTarget::Key, SortOrder::Ascend),
                ),
            )
            .await
            .expect("get page");
        for kv in resp.kvs() {
            found.push((
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            ));
        }
        if !resp.more() {
            break;
        }
        from = format!("{}\0", found.last().unwrap().0);
    }
    let mut expected = Vec::new();
    for i in 0..n {
        if deleted.contains(&i) {
            continue;
        }
        let v = if updated.contains(&i) {
            format!("updated-{i}")
        } else {
            value(i)
        };
        expected.push((key(i), v));
    }
    assert_eq!(found.len(), expected.len(), "number of keys via {endpoint}");
    assert!(found == expected, "keys or values differ via {endpoint}");
    found.len()
}

#[test]
fn snapshot_save_status_and_restore_into_a_new_cluster() {
    let n: usize = std::env::var("SKIFF_SNAPSHOT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let started = Instant::now();
    let source = Cluster::start(3);
    let eps: Vec<String> = source.members.iter().map(|m| m.endpoint()).collect();
    let rt = runtime();
    rt.block_on(load_keys(&eps.join(","), n));
    let loaded = started.elapsed();
    // Some history on top: updates, deletes, a compaction, and a txn.
    let deleted = [3usize, 5, n - 1];
    let updated = [0usize, 7, n / 2];
    let compacted = rt.block_on(async {
        let mut client = common::client(&eps.join(",")).await;
        for i in updated {
            client
                .put(key(i), format!("updated-{i}"), None)
                .await
                .unwrap();
        }
        for i in deleted {
            client.delete(key(i), None).await.unwrap();
        }
        let rev = client
            .get("x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client.compact(rev - 2, None).await.unwrap();
        client
            .txn(
                Txn::new()
                    .when([Compare::version(key(1), CompareOp::Greater, 0)])
                    .and_then([TxnOp::put(key(1), value(1), None)]),
            )
            .await
            .unwrap();
        rev - 2
    });
    let revision = eps.iter().map(|e| sync_revision(e)).max().unwrap();

    // Save from a follower with the real etcdctl.
    let leader = source.wait_leader(Duration::from_secs(10));
    let follower = &eps[(leader + 1) % 3];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let file_str = file.to_str().unwrap();
    let save_started = Instant::now();
    let out = etcdctl_ok(follower, &["snapshot", "save", file_str]);
    let saved_in = save_started.elapsed();
    assert!(out.contains("Snapshot saved at"), "{out}");
    let size = file_size(&file);
    assert_eq!(
        size % 512,
        32,
        "etcd's layout: 512-byte aligned content + SHA-256"
    );

    // skiff store snapshot status: the revision and the HashKV of every source member.
    let out = skiff_store(&["snapshot", "status", file_str, "-w", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(st["revision"].as_i64(), Some(revision), "{st}");
    assert_eq!(st["totalSize"].as_u64(), Some(size - 32), "{st}");
    assert!(st["totalKey"].as_u64().unwrap() as usize >= n, "{st}");
    let hash = st["hash"].as_u64().unwrap();
    for ep in &eps {
        assert_eq!(hashkv(ep, revision).0, hash, "source member {ep}");
    }
    let table = skiff_store(&["snapshot", "status", file_str, "-w", "table"]);
    let table = String::from_utf8_lossy(&table.stdout);
    // Columns are as wide as their widest cell (a hash may print with 7 hex digits).
    let header: Vec<&str> = table
        .lines()
        .find(|line| line.contains("HASH"))
        .unwrap_or_default()
        .split('|')
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect();
    assert_eq!(
        header,
        ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
        "{table}"
    );
    assert!(table.contains(&format!("{hash:x}")), "{table}");

    // A damaged copy is refused, and restore leaves nothing behind.
    let bad = dir.path().join("bad.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&bad, &bytes).unwrap();
    let out = skiff_store(&["snapshot", "status", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let bad_dir = dir.path().join("bad.skiff");
    let out = skiff_store(&[
        "snapshot",
        "restore",
        bad.to_str().unwrap(),
        "--data-dir",
        bad_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("SHA-256 mismatch") || stderr(&out).contains("corrupt"),
        "{}",
        stderr(&out)
    );
    assert!(!bad_dir.exists());
    drop(source);

    // Restore into a NEW three-member cluster.
    let restore_started = Instant::now();
    let mut restored = Cluster::start_from_snapshot(3, &file, &[]);
    let restored_in = restore_started.elapsed();
    let new_eps: Vec<String> = restored.members.iter().map(|m| m.endpoint()).collect();
    let members = etcdctl_ok(&new_eps[0], &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for m in &restored.members {
        assert!(members.contains(&m.peer_url), "{members}");
    }
    for ep in &new_eps {
        assert_eq!(sync_revision(ep), revision, "revision carried over on {ep}");
        let (h, compact, _) = hashkv(ep, revision);
        assert_eq!(h, hash, "restored member {ep}");
        assert_eq!(compact, compacted, "compact revision on {ep}");
        assert!(etcdctl_ok(ep, &["alarm", "list"]).is_empty());
    }
    let found = rt.block_on(async {
        let mut total = 0;
        for ep in &new_eps {
            total = check_every_key(ep, n, &deleted, &updated).await;
        }
        total
    });
    assert_eq!(found, n - deleted.len());
    // The new cluster takes writes and carries the revisions on.
    let out = etcdctl_ok(&new_eps[1], &["put", "after-restore", "1", "-w", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["header"]["revision"].as_i64(), Some(revision + 1));

    // A member added to the restored cluster gets the restored state too: it is not in
    // the Raft log, so the new member must be sent a Raft snapshot.
    let i = restored.prepare_member("r3");
    let peer = restored.members[i].peer_url.clone();
    etcdctl_ok(&new_eps[0], &["member", "add", "r3", "--peer-urls", &peer]);
    restored.start_joining(i);
    let joined = restored.members[i].endpoint();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = etcdctl(
            &joined,
            &[
                "get",
                "key/",
                "--prefix",
                "--limit",
                "1",
                "--consistency=s",
                "-w",
                "json",
            ],
        );
        let count = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["count"].as_u64());
        if count == Some((n - deleted.len()) as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the added member has {count:?} keys: {} {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out),
            restored.log_tail("r3")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(hashkv(&joined, revision).0, hash, "the added member");
    println!(
        "snapshot round trip: {n} keys loaded in {loaded:?}, saved ({size} bytes) in {saved_in:?}, restored and started in {restored_in:?}; total {:?}",
        started.elapsed()
    );
}

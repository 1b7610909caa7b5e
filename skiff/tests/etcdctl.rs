//! Real `etcdctl` 3.4 against a real three-member skiff cluster, asserting the exact output
//! (or error) that etcd 3.4.23 printed for the same commands. Expected texts were recorded
//! by running each command against a real etcd; only IDs and revisions legitimately differ,
//! and those are taken from the cluster under test.
//!
//! One cluster serves the whole file. Tests use their own key prefixes; the two tests that
//! change what others could observe (compaction, membership) hold the lock exclusively.
mod common;

use std::process::{Child, Command, Output, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use common::{Cluster, etcdctl, etcdctl_ok, etcdctl_stdin, free_port};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Shared fixture
// ---------------------------------------------------------------------------------------

struct Shared {
    cluster: Cluster,
    lock: RwLock<()>,
    /// The watchdog outlives this process on purpose; kept so it is owned somewhere.
    _reaper: Child,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = Cluster::start(3);
        let reaper = reap_on_exit(&cluster);
        wait_all_published(&cluster);
        Shared {
            cluster,
            lock: RwLock::new(()),
            _reaper: reaper,
        }
    })
}

/// A static is never dropped, so the members would outlive the test binary: a watchdog
/// shell kills them (by PID) and removes the data directory once this process is gone.
fn reap_on_exit(cluster: &Cluster) -> Child {
    let pids: Vec<String> = cluster
        .members
        .iter()
        .filter_map(|m| m.child.as_ref().map(|c| c.id().to_string()))
        .collect();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.2; done; kill -9 {pids} 2>/dev/null; rm -rf '{dir}'",
        me = std::process::id(),
        pids = pids.join(" "),
        dir = cluster.dir.path().display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the member reaper")
}

/// Readiness, not an assertion: members publish their client URLs through Raft after they
/// start serving (etcd too); wait until every member lists every member's.
fn wait_all_published(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for member in &cluster.members {
        let endpoint = member.endpoint();
        loop {
            let out = etcdctl(&endpoint, &["member", "list", "-w", "json"]);
            let list = text(&out.stdout);
            let published = serde_json::from_str::<serde_json::Value>(&list)
                .ok()
                .and_then(|v| v["members"].as_array().cloned())
                .is_some_and(|members| {
                    members.len() == 3
                        && members.iter().all(|m| {
                            m["clientURLs"]
                                .as_array()
                                .is_some_and(|urls| !urls.is_empty())
                        })
                });
            if out.status.success() && published {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "members did not publish their attributes: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn shared_lock() -> RwLockReadGuard<'static, ()> {
    shared().lock.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_lock() -> RwLockWriteGuard<'static, ()> {
    shared().lock.write().unwrap_or_else(|e| e.into_inner())
}

fn cluster() -> &'static Cluster {
    &shared().cluster
}

/// The endpoint of member `i`.
fn ep(i: usize) -> String {
    cluster().members[i].endpoint()
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Assert that etcdctl failed the way etcd makes it fail: exit status 1, nothing on stdout,
/// the gRPC code and message in clientv3's retry warning, and `Error: <message>` last.
fn assert_fails(out: Output, code: &str, message: &str) {
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "", "stderr: {stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(format!("Error: {message}").as_str()),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("rpc error: code = {code} desc = {message}")),
        "expected gRPC code {code}: {stderr}"
    );
}

fn fails(endpoint: &str, args: &[&str], code: &str, message: &str) {
    assert_fails(etcdctl(endpoint, args), code, message);
}

fn json_of(endpoint: &str, args: &[&str]) -> Value {
    let out = etcdctl_ok(endpoint, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}: {out}"))
}

/// Split etcdctl's JSON into its response header and the rest.
fn split_header(mut v: Value) -> (Value, Value) {
    let header = v
        .as_object_mut()
        .and_then(|o| o.remove("header"))
        .unwrap_or_else(|| panic!("no header in {v}"));
    (header, v)
}

/// A KV response header as etcd fills it: exactly these four fields, all set.
fn check_kv_header(header: &Value) -> i64 {
    let mut keys: Vec<&str> = header
        .as_object()
        .expect("header object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["cluster_id", "member_id", "raft_term", "revision"],
        "{header}"
    );
    assert!(header["cluster_id"].as_u64().unwrap() > 0, "{header}");
    assert!(header["member_id"].as_u64().unwrap() > 0, "{header}");
    assert!(header["raft_term"].as_u64().unwrap() > 0, "{header}");
    header["revision"].as_i64().unwrap()
}

fn b64(data: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = data.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A key-value as etcdctl's JSON shows it.
fn kv_json(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Value {
    json!({
        "key": b64(key),
        "create_revision": create,
        "mod_revision": modified,
        "version": version,
        "value": b64(value),
    })
}

/// Revision at which `put` wrote (from `put -w json`).
fn put_rev(endpoint: &str, key: &str, value: &str) -> i64 {
    let (header, rest) = split_header(json_of(endpoint, &["put", key, value, "-w", "json"]));
    assert_eq!(rest, json!({}));
    check_kv_header(&header)
}

fn txn(endpoint: &str, input: &str, args: &[&str]) -> Output {
    let mut all = vec!["txn"];
    all.extend_from_slice(args);
    etcdctl_stdin(endpoint, &all, Some(input))
}

fn txn_ok(endpoint: &str, input: &str, args: &[&str]) -> String {
    let out = txn(endpoint, input, args);
    assert!(
        out.status.success(),
        "txn failed: {}\ninput:\n{input}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

// ---------------------------------------------------------------------------------------
// KV: put / get / del
// ---------------------------------------------------------------------------------------

#[test]
fn put_get_and_json_fields_match_etcd() {
    let _lock = shared_lock();
    let e = ep(0);

    assert_eq!(etcdctl_ok(&e, &["put", "kv/foo", "bar"]), "OK\n");
    assert_eq!(etcdctl_ok(&e, &["get", "kv/foo"]), "kv/foo\nbar\n");
    let (header, rest) = split_header(json_of(&e, &["get", "kv/foo", "-w", "json"]));
    let r1 = rest["kvs"][0]["create_revision"].as_i64().unwrap();
    assert!(check_kv_header(&header) >= r1);
    assert_eq!(
        rest,
        json!({"kvs": [kv_json("kv/foo", "bar", r1, r1, 1)], "count": 1})
    );

    // put --prev-kv, plain and JSON.
    assert_eq!(
        etcdctl_ok(&e, &["put", "kv/foo", "bar2", "--prev-kv"]),
        "OK\nkv/foo\nbar\n"
    );
    let (header, rest) = split_header(json_of(
        &e,
        &["put", "kv/foo", "bar3", "--prev-kv", "-w", "json"],
    ));
    let r3 = check_kv_header(&header);
    let r2 = rest["prev_kv"]["mod_revision"].as_i64().unwrap();
    assert!(r1 < r2 && r2 < r3, "{r1} {r2} {r3}");
    assert_eq!(
        rest,
        json!({"prev_kv": kv_json("kv/foo", "bar2", r1, r2, 2)})
    );
    let (header, rest) = split_header(json_of(&e, &["get", "kv/foo", "-w", "json"]));
    assert!(check_kv_header(&header) >= r3);
    assert_eq!(
        rest,
        json!({"kvs": [kv_json("kv/foo", "bar3", r1, r3, 3)], "count": 1})
    );

    // Missing key: nothing printed; JSON is the header alone.
    assert_eq!(etcdctl_ok(&e, &["get", "kv/nothing"]), "");
    let (header, rest) = split_header(json_of(&e, &["get", "kv/nothing", "-w", "json"]));
    check_kv_header(&header);
    assert_eq!(rest, json!({}));

    // --rev reads history; --consistency=s reads the local member.
    assert_eq!(
        etcdctl_ok(&e, &["get", "kv/foo", "--rev", &r1.to_string()]),
        "kv/foo\nbar\n"
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "kv/foo", "--rev", &r2.to_string()]),
        "kv/foo\nbar2\n"
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "kv/foo", "--rev", &(r1 - 1).to_string()]),
        ""
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "kv/foo", "--consistency=s"]),
        "kv/foo\nbar3\n"
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "kv/foo", "--print-value-only"]),
        "bar3\n"
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "kv/foo", "--hex"]),
        "\\x6b\\x76\\x2f\\x66\\x6f\\x6f\n\\x62\\x61\\x72\\x33\n"
    );

    // put --ignore-value keeps the value, bumps version and mod revision.
    assert_eq!(etcdctl_ok(&e, &["put", "kv/foo", "--ignore-value"]), "OK\n");
    let (_, rest) = split_header(json_of(&e, &["get", "kv/foo", "-w", "json"]));
    let r4 = rest["kvs"][0]["mod_revision"].as_i64().unwrap();
    assert!(r4 > r3);
    assert_eq!(
        rest,
        json!({"kvs": [kv_json("kv/foo", "bar3", r1, r4, 4)], "count": 1})
    );
    fails(
        &e,
        &["put", "kv/missing", "--ignore-value"],
        "InvalidArgument",
        "etcdserver: key not found",
    );
    assert_eq!(etcdctl_ok(&e, &["get", "kv/missing"]), "");

    // Leases do not exist yet in skiff, and in etcd an unknown lease is refused alike.
    fails(
        &e,
        &["put", "kv/leased", "v", "--lease=1234"],
        "NotFound",
        "etcdserver: requested lease not found",
    );
    // Empty keys.
    fails(
        &e,
        &["put", "", "v"],
        "InvalidArgument",
        "etcdserver: key is not provided",
    );
    fails(
        &e,
        &["get", ""],
        "InvalidArgument",
        "etcdserver: key is not provided",
    );
    fails(
        &e,
        &["del", ""],
        "InvalidArgument",
        "etcdserver: key is not provided",
    );
}

#[test]
fn ranges_limits_and_sorting_match_etcd() {
    let _lock = shared_lock();
    let e = ep(0);
    for k in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            etcdctl_ok(&e, &["put", &format!("rg/p/{k}"), &format!("v{k}")]),
            "OK\n"
        );
    }
    assert_eq!(
        etcdctl_ok(&e, &["get", "rg/p/", "--prefix"]),
        "rg/p/a\nva\nrg/p/b\nvb\nrg/p/c\nvc\nrg/p/d\nvd\nrg/p/e\nve\n"
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "rg/p/", "--prefix", "--limit", "2"]),
        "rg/p/a\nva\nrg/p/b\nvb\n"
    );
    let (header, rest) = split_header(json_of(
        &e,
        &["get", "rg/p/", "--prefix", "--limit", "2", "-w", "json"],
    ));
    check_kv_header(&header);
    let ra = rest["kvs"][0]["create_revision"].as_i64().unwrap();
    let rb = rest["kvs"][1]["create_revision"].as_i64().unwrap();
    assert_eq!(
        rest,
        json!({
            "kvs": [kv_json("rg/p/a", "va", ra, ra, 1), kv_json("rg/p/b", "vb", rb, rb, 1)],
            "more": true,
            "count": 5,
        })
    );
    // A limit that is not reached: no "more".
    let (_, rest) = split_header(json_of(
        &e,
        &["get", "rg/p/", "--prefix", "--limit", "5", "-w", "json"],
    ));
    assert_eq!(rest["count"], json!(5));
    assert_eq!(rest.get("more"), None, "{rest}");
    // An explicit range [start, end).
    assert_eq!(
        etcdctl_ok(&e, &["get", "rg/p/a", "rg/p/c"]),
        "rg/p/a\nva\nrg/p/b\nvb\n"
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "rg/p/", "--prefix", "--print-value-only"]),
        "va\nvb\nvc\nvd\nve\n"
    );
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/p/",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--keys-only"
            ]
        ),
        "rg/p/e\n\nrg/p/d\n\nrg/p/c\n\nrg/p/b\n\nrg/p/a\n\n"
    );
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/p/b",
                "--prefix",
                "--keys-only",
                "--consistency=s"
            ]
        ),
        "rg/p/b\n\n"
    );

    // Sorting: values run opposite to keys.
    for (k, v) in [("a", "4"), ("b", "3"), ("c", "2"), ("d", "1")] {
        etcdctl_ok(&e, &["put", &format!("rg/s/{k}"), v]);
    }
    // etcd: a sort target without an order sorts only the first limit+1 keys.
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/s/",
                "--prefix",
                "--sort-by=VALUE",
                "--limit",
                "2"
            ]
        ),
        "rg/s/c\n2\nrg/s/b\n3\n"
    );
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/s/",
                "--prefix",
                "--sort-by=VALUE",
                "--order=ASCEND",
                "--limit",
                "2",
                "--print-value-only"
            ]
        ),
        "1\n2\n"
    );
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/s/",
                "--prefix",
                "--sort-by=KEY",
                "--order=DESCEND",
                "--limit",
                "2",
                "--print-value-only"
            ]
        ),
        "1\n2\n"
    );
    // Ties (every version is 1) keep key order, descending too.
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/s/",
                "--prefix",
                "--sort-by=VERSION",
                "--order=DESCEND",
                "--keys-only"
            ]
        ),
        "rg/s/a\n\nrg/s/b\n\nrg/s/c\n\nrg/s/d\n\n"
    );
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/s/",
                "--prefix",
                "--sort-by=CREATE",
                "--order=DESCEND",
                "--keys-only"
            ]
        ),
        "rg/s/d\n\nrg/s/c\n\nrg/s/b\n\nrg/s/a\n\n"
    );
    assert_eq!(
        etcdctl_ok(
            &e,
            &[
                "get",
                "rg/s/",
                "--prefix",
                "--sort-by=VERSION",
                "--limit",
                "3",
                "--print-value-only"
            ]
        ),
        "4\n3\n2\n"
    );

    // del: count printed; --prefix; --prev-kv plain and JSON.
    assert_eq!(etcdctl_ok(&e, &["del", "rg/p/a"]), "1\n");
    assert_eq!(etcdctl_ok(&e, &["del", "rg/nonexistent"]), "0\n");
    assert_eq!(
        etcdctl_ok(&e, &["del", "rg/p/", "--prefix", "--prev-kv"]),
        "4\nrg/p/b\nvb\nrg/p/c\nvc\nrg/p/d\nvd\nrg/p/e\nve\n"
    );
    assert_eq!(etcdctl_ok(&e, &["get", "rg/p/", "--prefix"]), "");
    let (_, rest) = split_header(json_of(&e, &["get", "rg/s/d", "-w", "json"]));
    let rd = rest["kvs"][0]["create_revision"].as_i64().unwrap();
    let (header, rest) = split_header(json_of(&e, &["del", "rg/s/d", "--prev-kv", "-w", "json"]));
    assert!(check_kv_header(&header) > rd);
    assert_eq!(
        rest,
        json!({"deleted": 1, "prev_kvs": [kv_json("rg/s/d", "1", rd, rd, 1)]})
    );
    assert_eq!(etcdctl_ok(&e, &["del", "rg/s/", "--prefix"]), "3\n");
}

/// `--from-key` reads to the end of the keyspace, so this test owns the last prefix:
/// every other key written by this file sorts before "zz/".
#[test]
fn from_key_matches_etcd() {
    let _lock = shared_lock();
    let e = ep(0);
    for k in ["a", "b", "c", "d", "e"] {
        etcdctl_ok(&e, &["put", &format!("zz/{k}"), &format!("v{k}")]);
    }
    assert_eq!(
        etcdctl_ok(&e, &["get", "zz/c", "--from-key", "--keys-only"]),
        "zz/c\n\nzz/d\n\nzz/e\n\n"
    );
    let (_, rest) = split_header(json_of(
        &e,
        &["get", "zz/c", "--from-key", "--limit", "1", "-w", "json"],
    ));
    let rc = rest["kvs"][0]["create_revision"].as_i64().unwrap();
    assert_eq!(
        rest,
        json!({"kvs": [kv_json("zz/c", "vc", rc, rc, 1)], "more": true, "count": 3})
    );
    assert_eq!(etcdctl_ok(&e, &["del", "zz/d", "--from-key"]), "2\n");
    assert_eq!(
        etcdctl_ok(&e, &["get", "zz/", "--from-key", "--print-value-only"]),
        "va\nvb\nvc\n"
    );
}

// ---------------------------------------------------------------------------------------
// txn
// ---------------------------------------------------------------------------------------

#[test]
fn txn_from_stdin_matches_etcd() {
    let _lock = shared_lock();
    let e = ep(0);
    let first = put_rev(&e, "tx/k", "v");

    // value compare holds: success branch runs in order, reads see the branch's own put.
    assert_eq!(
        txn_ok(
            &e,
            "value(\"tx/k\") = \"v\"\n\nput tx/k v2\nget tx/k\n\nput tx/k other\n\n",
            &[]
        ),
        "SUCCESS\n\nOK\n\ntx/k\nv2\n"
    );
    // ver > 1 holds, create = 0 does not: the failure branch runs.
    assert_eq!(
        txn_ok(
            &e,
            "ver(\"tx/k\") > \"1\"\ncreate(\"tx/k\") = \"0\"\n\nput tx/t1 a\n\nput tx/t2 b\nget tx/k\ndel tx/nothing\n\n",
            &[]
        ),
        "FAILURE\n\nOK\n\ntx/k\nv2\n\n0\n"
    );
    assert_eq!(etcdctl_ok(&e, &["get", "tx/t1"]), "");
    assert_eq!(etcdctl_ok(&e, &["get", "tx/t2"]), "tx/t2\nb\n");

    let (_, rest) = split_header(json_of(&e, &["get", "tx/k", "-w", "json"]));
    let k_mod = rest["kvs"][0]["mod_revision"].as_i64().unwrap();
    let mod_below = format!("mod(\"tx/k\") < \"{}\"", k_mod + 1);

    // A key deleted and put in one branch is refused before anything runs.
    assert_fails(
        txn(
            &e,
            &format!(
                "{mod_below}\ncreate(\"tx/nothere\") = \"0\"\n\ndel tx/k --prev-kv\nput tx/k v3 --prev-kv\n\nget tx/k\n\n"
            ),
            &[],
        ),
        "InvalidArgument",
        "etcdserver: duplicate key given in txn request",
    );
    assert_eq!(etcdctl_ok(&e, &["get", "tx/k"]), "tx/k\nv2\n");

    // del/put with --prev-kv and a keys-only prefix read.
    etcdctl_ok(&e, &["put", "tx/t1", "x"]);
    assert_eq!(
        txn_ok(
            &e,
            &format!(
                "{mod_below}\ncreate(\"tx/nothere\") = \"0\"\n\ndel tx/t1 --prev-kv\nput tx/t2 v3 --prev-kv\nget tx/t --prefix --keys-only\n\n\n"
            ),
            &[]
        ),
        "SUCCESS\n\n1\ntx/t1\nx\n\nOK\ntx/t2\nb\n\ntx/t2\n\n"
    );
    // Failure with an empty failure branch; success with empty branches.
    assert_eq!(
        txn_ok(
            &e,
            "mod(\"tx/k\") > \"1000000000\"\n\nput tx/a 1\n\n\n",
            &[]
        ),
        "FAILURE\n"
    );
    assert_eq!(etcdctl_ok(&e, &["get", "tx/a"]), "");
    assert_eq!(
        txn_ok(&e, "value(\"tx/k\") = \"v2\"\n\n\n\n", &[]),
        "SUCCESS\n"
    );
    // Inside a txn, get ignores --print-value-only; empty reads print nothing.
    assert_eq!(
        txn_ok(
            &e,
            "create(\"tx/k\") > \"0\"\n\nget tx/k --print-value-only\n\n\n",
            &[]
        ),
        "SUCCESS\n\ntx/k\nv2\n"
    );
    assert_eq!(
        txn_ok(
            &e,
            "create(\"tx/k\") > \"0\"\n\nget tx/nothing\ndel tx/nothing\n\n\n",
            &[]
        ),
        "SUCCESS\n\n\n0\n"
    );

    // JSON: a failed compare has no "succeeded"; nested headers carry only the revision.
    let out = txn_ok(
        &e,
        &format!("value(\"tx/zz\") = \"v\"\n\nput tx/a 1\n\nget tx/k --rev {first}\n\n"),
        &["-w", "json"],
    );
    let (header, rest) = split_header(serde_json::from_str(&out).unwrap());
    let rev = check_kv_header(&header);
    assert_eq!(
        rest,
        json!({"responses": [{"Response": {"ResponseRange": {
            "header": {"revision": rev},
            "kvs": [kv_json("tx/k", "v", first, first, 1)],
            "count": 1,
        }}}]})
    );
    let out = txn_ok(
        &e,
        "value(\"tx/k\") != \"v3\"\n\nput tx/a 1\n\nget tx/k\n\n",
        &["-w", "json"],
    );
    let (header, rest) = split_header(serde_json::from_str(&out).unwrap());
    let rev = check_kv_header(&header);
    assert_eq!(
        rest,
        json!({"succeeded": true, "responses": [{"Response": {"ResponsePut": {
            "header": {"revision": rev},
        }}}]})
    );
    let (_, a) = split_header(json_of(&e, &["get", "tx/a", "-w", "json"]));
    assert_eq!(a["kvs"][0]["mod_revision"], json!(rev));
    let out = txn_ok(
        &e,
        "create(\"tx/k\") > \"0\"\n\nget tx/k\n\n\n",
        &["-w", "json"],
    );
    let (header, rest) = split_header(serde_json::from_str(&out).unwrap());
    let rev = check_kv_header(&header);
    assert_eq!(
        rest,
        json!({"succeeded": true, "responses": [{"Response": {"ResponseRange": {
            "header": {"revision": rev},
            "kvs": [kv_json("tx/k", "v2", first, k_mod, 2)],
            "count": 1,
        }}}]})
    );
}

// ---------------------------------------------------------------------------------------
// compaction
// ---------------------------------------------------------------------------------------

#[test]
fn compaction_matches_etcd() {
    let _lock = exclusive_lock();
    let e = ep(0);
    let r1 = put_rev(&e, "cp/k", "v1");
    let r2 = put_rev(&e, "cp/k", "v2");
    let r3 = put_rev(&e, "cp/k", "v3");

    // Nothing written, nothing to bump: a delete of a missing key keeps the revision.
    let (header, rest) = split_header(json_of(&e, &["del", "cp/none", "-w", "json"]));
    assert_eq!(check_kv_header(&header), r3);
    assert_eq!(rest, json!({}));

    assert_eq!(
        etcdctl_ok(&e, &["compaction", &r2.to_string()]),
        format!("compacted revision {r2}\n")
    );
    fails(
        &e,
        &["get", "cp/k", "--rev", &r1.to_string()],
        "OutOfRange",
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_eq!(
        etcdctl_ok(&e, &["get", "cp/k", "--rev", &r2.to_string()]),
        "cp/k\nv2\n"
    );
    fails(
        &e,
        &["get", "cp/k", "--rev", &(r3 + 1000).to_string()],
        "OutOfRange",
        "etcdserver: mvcc: required revision is a future revision",
    );
    for again in [r2, r1] {
        fails(
            &e,
            &["compaction", &again.to_string()],
            "OutOfRange",
            "etcdserver: mvcc: required revision has been compacted",
        );
    }
    fails(
        &e,
        &["compaction", &(r3 + 1000).to_string()],
        "OutOfRange",
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_eq!(
        etcdctl_ok(&e, &["compaction", &r3.to_string(), "--physical"]),
        format!("compacted revision {r3}\n")
    );
    // The compaction is replicated: every member refuses the compacted revision.
    for i in 0..3 {
        fails(
            &ep(i),
            &["get", "cp/k", "--rev", &r2.to_string()],
            "OutOfRange",
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_eq!(
            etcdctl_ok(&ep(i), &["get", "cp/k", "--rev", &r3.to_string()]),
            "cp/k\nv3\n"
        );
    }
}

// ---------------------------------------------------------------------------------------
// membership
// ---------------------------------------------------------------------------------------

/// Removes members a test added, even if it fails half-way.
struct RemoveOnDrop(Vec<u64>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = etcdctl(&ep(0), &["member", "remove", &format!("{id:x}")]);
        }
    }
}

/// The header and the members of `member list -w json`.
fn member_list(endpoint: &str) -> (Value, Vec<Value>) {
    let (header, rest) = split_header(json_of(endpoint, &["member", "list", "-w", "json"]));
    let members = rest["members"].as_array().expect("members").clone();
    (header, members)
}

fn cluster_header_ok(header: &Value) -> u64 {
    // etcd's Cluster service fills no revision.
    let mut keys: Vec<&str> = header
        .as_object()
        .expect("header")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["cluster_id", "member_id", "raft_term"], "{header}");
    header["cluster_id"].as_u64().unwrap()
}

/// etcdctl's ETCD_INITIAL_CLUSTER line: the response's members in order, the new one named.
fn initial_cluster(members: &[(u64, String, String)]) -> String {
    members
        .iter()
        .map(|(_, name, url)| format!("{name}={url}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn membership_matches_etcd() {
    let _lock = exclusive_lock();
    let c = cluster();
    let e = ep(0);

    // member list: one line per member, sorted by ID, all started.
    let (header, members) = member_list(&e);
    let cid = cluster_header_ok(&header);
    assert_eq!(members.len(), 3, "{members:?}");
    let mut ids = Vec::new();
    let mut started = Vec::new();
    for m in &members {
        let id = m["ID"].as_u64().unwrap();
        let name = m["name"].as_str().unwrap();
        let member = c
            .members
            .iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("unknown member {m}"));
        assert_eq!(
            *m,
            json!({
                "ID": id,
                "name": member.name,
                "peerURLs": [member.peer_url],
                "clientURLs": [member.client_url],
            })
        );
        ids.push(id);
        started.push((id, member.name.clone(), member.peer_url.clone()));
        assert_eq!(
            header["member_id"].as_u64().unwrap() == id,
            member.name == c.members[0].name
        );
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "members are listed by ID");
    let listing: String = members
        .iter()
        .map(|m| {
            format!(
                "{:x}, started, {}, {}, {}, false\n",
                m["ID"].as_u64().unwrap(),
                m["name"].as_str().unwrap(),
                m["peerURLs"][0].as_str().unwrap(),
                m["clientURLs"][0].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(etcdctl_ok(&e, &["member", "list"]), listing);
    // Every member lists the same.
    for i in 1..3 {
        assert_eq!(etcdctl_ok(&ep(i), &["member", "list"]), listing);
    }

    let mut cleanup = RemoveOnDrop(Vec::new());

    // member add --learner (never started).
    let learner_url = format!("http://127.0.0.1:{}", free_port());
    let out = etcdctl_ok(
        &e,
        &[
            "member",
            "add",
            "lrn",
            "--learner",
            "--peer-urls",
            &learner_url,
        ],
    );
    let first = out.lines().next().unwrap_or_default();
    let learner_id = first
        .strip_prefix("Member ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("unexpected member add output: {out}"));
    cleanup.0.push(learner_id);
    let mut with_learner = started.clone();
    with_learner.push((learner_id, "lrn".to_string(), learner_url.clone()));
    with_learner.sort();
    assert_eq!(
        out,
        format!(
            "Member {learner_id:16x} added to cluster {cid:16x}\n\n\
             ETCD_NAME=\"lrn\"\n\
             ETCD_INITIAL_CLUSTER=\"{}\"\n\
             ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{learner_url}\"\n\
             ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n",
            initial_cluster(&with_learner)
        )
    );
    let (_, members) = member_list(&e);
    assert_eq!(members.len(), 4);
    let learner = members
        .iter()
        .find(|m| m["ID"].as_u64() == Some(learner_id))
        .expect("learner listed");
    assert_eq!(
        *learner,
        json!({"ID": learner_id, "peerURLs": [learner_url], "isLearner": true})
    );
    let list = etcdctl_ok(&e, &["member", "list"]);
    assert!(
        list.lines()
            .any(|l| l == format!("{learner_id:x}, unstarted, , {learner_url}, , true")),
        "{list}"
    );

    // Refusals, exactly as etcd words them.
    fails(
        &e,
        &[
            "member",
            "add",
            "lrn2",
            "--learner",
            "--peer-urls",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        "FailedPrecondition",
        "etcdserver: too many learner members in cluster",
    );
    fails(
        &e,
        &[
            "member",
            "add",
            "dup",
            "--peer-urls",
            &c.members[1].peer_url,
        ],
        "FailedPrecondition",
        "etcdserver: Peer URLs already exists",
    );
    fails(
        &e,
        &["member", "promote", &format!("{:x}", ids[0])],
        "FailedPrecondition",
        "etcdserver: can only promote a learner member",
    );
    fails(
        &e,
        &["member", "promote", &format!("{learner_id:x}")],
        "FailedPrecondition",
        "etcdserver: can only promote a learner member which is in sync with leader",
    );

    // member add of a voter that never starts: 4 voters, quorum 3, still writable.
    let voter_url = format!("http://127.0.0.1:{}", free_port());
    let out = etcdctl_ok(&e, &["member", "add", "newbie", "--peer-urls", &voter_url]);
    let voter_id = out
        .strip_prefix("Member ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("unexpected member add output: {out}"));
    cleanup.0.push(voter_id);
    // The unstarted learner has no name yet: etcdctl prints "=<url>" for it.
    let mut all = started.clone();
    all.push((learner_id, String::new(), learner_url.clone()));
    all.push((voter_id, "newbie".to_string(), voter_url.clone()));
    all.sort();
    assert_eq!(
        out,
        format!(
            "Member {voter_id:16x} added to cluster {cid:16x}\n\n\
             ETCD_NAME=\"newbie\"\n\
             ETCD_INITIAL_CLUSTER=\"{}\"\n\
             ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{voter_url}\"\n\
             ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n",
            initial_cluster(&all)
        )
    );
    let list = etcdctl_ok(&e, &["member", "list"]);
    assert_eq!(list.lines().count(), 5, "{list}");
    assert!(
        list.lines()
            .any(|l| l == format!("{voter_id:x}, unstarted, , {voter_url}, , false")),
        "{list}"
    );
    assert_eq!(etcdctl_ok(&e, &["put", "mb/k", "4 voters"]), "OK\n");

    // member remove: plain and JSON (the response lists who is left).
    assert_eq!(
        etcdctl_ok(&e, &["member", "remove", &format!("{voter_id:x}")]),
        format!("Member {voter_id:16x} removed from cluster {cid:16x}\n")
    );
    let (header, rest) = split_header(json_of(
        &e,
        &["member", "remove", &format!("{learner_id:x}"), "-w", "json"],
    ));
    assert_eq!(cluster_header_ok(&header), cid);
    assert_eq!(rest["members"].as_array().map(Vec::len), Some(3), "{rest}");
    for m in rest["members"].as_array().unwrap() {
        assert!(ids.contains(&m["ID"].as_u64().unwrap()), "{m}");
    }
    // Removed and unknown IDs alike: "member not found".
    for id in [learner_id, voter_id, 0x1234abcd] {
        fails(
            &e,
            &["member", "remove", &format!("{id:x}")],
            "NotFound",
            "etcdserver: member not found",
        );
    }
    fails(
        &e,
        &["member", "promote", "1234abcd"],
        "NotFound",
        "etcdserver: member not found",
    );

    // Back to the three started members, healthy everywhere.
    assert_eq!(etcdctl_ok(&e, &["member", "list"]), listing);
    c.wait_healthy(std::time::Duration::from_secs(30));
    assert_eq!(etcdctl_ok(&ep(2), &["put", "mb/k", "3 voters"]), "OK\n");
}

// ---------------------------------------------------------------------------------------
// endpoint status / health, forwarding
// ---------------------------------------------------------------------------------------

fn semver(v: &str) -> (u64, u64, u64) {
    let parts: Vec<u64> = v
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("not semver: {v}")))
        .collect();
    assert_eq!(parts.len(), 3, "not semver: {v}");
    (parts[0], parts[1], parts[2])
}

/// Check `endpoint status -w json` entries; returns the leader's ID.
fn check_status_entries(entries: &[Value], endpoints: &[String]) -> u64 {
    assert_eq!(entries.len(), endpoints.len(), "{entries:?}");
    let leader = entries[0]["Status"]["leader"].as_u64().unwrap();
    let cluster_id = entries[0]["Status"]["header"]["cluster_id"]
        .as_u64()
        .unwrap();
    let mut leaders_seen = 0;
    let mut member_ids = Vec::new();
    for (entry, endpoint) in entries.iter().zip(endpoints) {
        let status = &entry["Status"];
        assert_eq!(entry["Endpoint"], json!(endpoint), "{entry}");
        let version = status["version"].as_str().unwrap();
        assert!(semver(version) >= (3, 5, 13), "{version}");
        assert!(status["dbSize"].as_i64().unwrap() > 0, "{status}");
        assert!(status["raftTerm"].as_u64().unwrap() > 0, "{status}");
        assert!(status["raftIndex"].as_u64().unwrap() > 0, "{status}");
        assert!(status["raftAppliedIndex"].as_u64().unwrap() > 0, "{status}");
        assert_eq!(status.get("isLearner"), None, "{status}");
        assert_eq!(status["leader"].as_u64(), Some(leader), "{status}");
        let header = &status["header"];
        assert!(check_kv_header(header) > 0);
        assert_eq!(header["cluster_id"].as_u64(), Some(cluster_id));
        let id = header["member_id"].as_u64().unwrap();
        if id == leader {
            leaders_seen += 1;
        }
        member_ids.push(id);
    }
    member_ids.sort();
    member_ids.dedup();
    assert_eq!(member_ids.len(), endpoints.len(), "{entries:?}");
    assert_eq!(leaders_seen, 1, "exactly one member leads: {entries:?}");
    leader
}

#[test]
fn endpoint_status_and_health_match_etcd() {
    let _lock = shared_lock();
    let c = cluster();
    let endpoints: Vec<String> = (0..3).map(ep).collect();
    let all = endpoints.join(",");

    let status = json_of(&all, &["endpoint", "status", "-w", "json"]);
    let entries = status.as_array().expect("array").clone();
    let leader = check_status_entries(&entries, &endpoints);
    // The leader agrees with member list.
    let (_, members) = member_list(&all);
    assert!(members.iter().any(|m| m["ID"].as_u64() == Some(leader)));

    // Table-less simple format: "ep, id, version, size, leader?, learner?, term, index,
    // applied, errors".
    let simple = etcdctl_ok(&all, &["endpoint", "status"]);
    let lines: Vec<&str> = simple.lines().collect();
    assert_eq!(lines.len(), 3, "{simple}");
    for (line, entry) in lines.iter().zip(&entries) {
        let fields: Vec<&str> = line.split(", ").collect();
        assert_eq!(fields.len(), 10, "{line}");
        let id = entry["Status"]["header"]["member_id"].as_u64().unwrap();
        assert_eq!(fields[0], entry["Endpoint"].as_str().unwrap());
        assert_eq!(fields[1], format!("{id:x}"));
        assert_eq!(fields[2], entry["Status"]["version"].as_str().unwrap());
        assert!(fields[3].ends_with('B'), "{line}");
        assert_eq!(
            fields[4],
            if id == leader { "true" } else { "false" },
            "{line}"
        );
        assert_eq!(fields[5], "false", "{line}");
        for n in &fields[6..9] {
            assert!(n.parse::<u64>().unwrap() > 0, "{line}");
        }
        assert_eq!(fields[9], "", "{line}");
    }

    // endpoint health prints to stderr, one line per endpoint (in completion order).
    let out = etcdctl(&all, &["endpoint", "health"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    let mut healthy: Vec<&str> = stderr
        .lines()
        .map(|l| {
            l.split_once(" is healthy: successfully committed proposal: took = ")
                .unwrap_or_else(|| panic!("unexpected health line: {l}"))
                .0
        })
        .collect();
    healthy.sort();
    let mut expected: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(healthy, expected, "{stderr}");

    // --cluster checks every member's advertised client URL.
    let out = etcdctl(&ep(1), &["endpoint", "health", "--cluster"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let mut healthy: Vec<String> = stderr
        .lines()
        .map(|l| {
            l.split_once(" is healthy: successfully committed proposal: took = ")
                .unwrap_or_else(|| panic!("unexpected health line: {l}"))
                .0
                .to_string()
        })
        .collect();
    healthy.sort();
    let mut urls: Vec<String> = c.members.iter().map(|m| m.client_url.clone()).collect();
    urls.sort();
    assert_eq!(healthy, urls, "{stderr}");

    let health = json_of(&ep(2), &["endpoint", "health", "-w", "json"]);
    let entry = &health[0];
    assert_eq!(health.as_array().map(Vec::len), Some(1), "{health}");
    assert_eq!(entry["endpoint"], json!(ep(2)));
    assert_eq!(entry["health"], json!(true));
    assert!(
        entry["took"].as_str().is_some_and(|t| t.ends_with('s')),
        "{entry}"
    );
    assert_eq!(entry.get("error"), None, "{entry}");
}

#[test]
fn follower_writes_are_forwarded_and_reads_see_them() {
    let _lock = shared_lock();
    let c = cluster();
    let leader = c.wait_leader(std::time::Duration::from_secs(10));
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    assert_eq!(followers.len(), 2);
    let (a, b) = (ep(followers[0]), ep(followers[1]));

    // A write served by a follower succeeds, and the header names the follower.
    let (header, _) = split_header(json_of(&a, &["put", "fw/k", "from-a", "-w", "json"]));
    check_kv_header(&header);
    let (_, members) = member_list(&a);
    let a_id = members
        .iter()
        .find(|m| m["clientURLs"][0] == json!(c.members[followers[0]].client_url))
        .and_then(|m| m["ID"].as_u64())
        .unwrap();
    assert_eq!(header["member_id"].as_u64(), Some(a_id));
    for i in 0..3 {
        assert_eq!(etcdctl_ok(&ep(i), &["get", "fw/k"]), "fw/k\nfrom-a\n");
    }
    assert_eq!(
        etcdctl_ok(&b, &["del", "fw/k", "--prev-kv"]),
        "1\nfw/k\nfrom-a\n"
    );
    assert_eq!(
        txn_ok(&b, "create(\"fw/k\") = \"0\"\n\nput fw/k from-b\n\n\n", &[]),
        "SUCCESS\n\nOK\n"
    );

    // Linearizable reads on one follower right after a write on the other.
    for round in 0..8 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let value = format!("round-{round}");
        assert_eq!(etcdctl_ok(writer, &["put", "fw/lin", &value]), "OK\n");
        assert_eq!(
            etcdctl_ok(reader, &["get", "fw/lin", "--print-value-only"]),
            format!("{value}\n"),
            "round {round}"
        );
        // And the member that served the write reads it back even serializably.
        assert_eq!(
            etcdctl_ok(
                writer,
                &["get", "fw/lin", "--print-value-only", "--consistency=s"]
            ),
            format!("{value}\n"),
            "round {round}"
        );
    }
}

//! The `etcd-client` crate against a real three-member skiff cluster: request options,
//! transactions, and every refusal with the exact gRPC code and message etcd answers. The
//! expected codes and messages were recorded from a real etcd 3.4.23 given the same calls.
//!
//! One cluster serves the whole file. Tests use their own key prefixes; the compaction test
//! holds the lock exclusively because it makes old revisions unreadable.
mod common;

use std::fmt::Debug;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::{Cluster, client};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, Error, GetOptions, GetResponse,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

// ---------------------------------------------------------------------------------------
// Shared fixture
// ---------------------------------------------------------------------------------------

/// The cluster and the watchdog that outlives this process on purpose (see [`reap_on_exit`]).
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<(Cluster, Child)> = OnceLock::new();
    &CLUSTER
        .get_or_init(|| {
            let cluster = Cluster::start(3);
            let reaper = reap_on_exit(&cluster);
            wait_all_published(&cluster);
            (cluster, reaper)
        })
        .0
}

/// Readiness, not an assertion: members publish their client URLs through Raft after they
/// start serving (etcd too); wait until every member lists every member's.
fn wait_all_published(cluster: &Cluster) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for member in &cluster.members {
        let endpoint = member.endpoint();
        loop {
            let out = common::etcdctl(&endpoint, &["member", "list", "-w", "json"]);
            let list = String::from_utf8_lossy(&out.stdout);
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

static LOCK: RwLock<()> = RwLock::const_new(());

async fn shared_lock() -> RwLockReadGuard<'static, ()> {
    cluster();
    LOCK.read().await
}

async fn exclusive_lock() -> RwLockWriteGuard<'static, ()> {
    cluster();
    LOCK.write().await
}

fn ep(i: usize) -> String {
    cluster().members[i].endpoint()
}

async fn member_client(i: usize) -> Client {
    client(&ep(i)).await
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The gRPC code (by name) and message of a failed call.
fn grpc_error<T: Debug>(result: Result<T, Error>) -> (String, String) {
    match result {
        Err(Error::GRpcStatus(status)) => {
            (format!("{:?}", status.code()), status.message().to_string())
        }
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

#[track_caller]
fn assert_grpc<T: Debug>(result: Result<T, Error>, code: &str, message: &str) {
    assert_eq!(grpc_error(result), (code.to_string(), message.to_string()));
}

fn keys(response: &GetResponse) -> Vec<String> {
    response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Keys, count and `more` of a range response.
fn summary(response: &GetResponse) -> (Vec<String>, i64, bool) {
    (keys(response), response.count(), response.more())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn put_rev(c: &mut Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision()
}

fn prefix() -> GetOptions {
    GetOptions::new().with_prefix()
}

// ---------------------------------------------------------------------------------------
// Range options
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn get_options_match_etcd() {
    let _lock = shared_lock().await;
    let mut c = member_client(0).await;
    let ra = put_rev(&mut c, "go/a", "1").await;
    let rb = put_rev(&mut c, "go/b", "2").await;
    let rc = put_rev(&mut c, "go/c", "3").await;
    let rd = put_rev(&mut c, "go/d", "4").await;
    let rb2 = put_rev(&mut c, "go/b", "22").await;
    assert!(ra < rb && rb < rc && rc < rd && rd < rb2);

    let r = c.get("go/b", None).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!(
        (
            kv.key(),
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (&b"go/b"[..], &b"22"[..], rb, rb2, 2, 0)
    );
    assert_eq!((r.count(), r.more()), (1, false));
    let header = r.header().unwrap();
    assert!(header.revision() >= rb2);
    assert!(header.cluster_id() > 0 && header.member_id() > 0 && header.raft_term() > 0);

    // Mod/create revision filters apply after the range; count is the range's.
    let all = strings(&["go/a", "go/b", "go/c", "go/d"]);
    let cases = [
        (prefix().with_min_mod_revision(rb2), vec!["go/b"], false),
        (
            prefix().with_max_mod_revision(rb2 - 1),
            vec!["go/a", "go/c", "go/d"],
            false,
        ),
        (
            prefix().with_min_create_revision(rc),
            vec!["go/c", "go/d"],
            false,
        ),
        (
            prefix().with_max_create_revision(rb),
            vec!["go/a", "go/b"],
            false,
        ),
        (
            prefix().with_max_create_revision(rb).with_limit(1),
            vec!["go/a"],
            true,
        ),
        (
            prefix().with_min_mod_revision(rb).with_limit(1),
            vec!["go/b"],
            true,
        ),
        (
            prefix().with_min_mod_revision(rc).with_max_mod_revision(rd),
            vec!["go/c", "go/d"],
            false,
        ),
        (
            prefix()
                .with_min_mod_revision(rb2)
                .with_max_create_revision(ra),
            vec![],
            false,
        ),
    ];
    for (i, (options, expected, more)) in cases.into_iter().enumerate() {
        let r = c.get("go/", Some(options)).await.unwrap();
        assert_eq!(
            summary(&r),
            (strings(&expected), 4, more),
            "filter case {i}"
        );
    }

    // count_only, keys_only, limit, serializable.
    let r = c
        .get("go/", Some(prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(summary(&r), (vec![], 4, false));
    let r = c
        .get("go/", Some(prefix().with_count_only().with_limit(1)))
        .await
        .unwrap();
    assert_eq!(summary(&r), (vec![], 4, false));
    let r = c
        .get("go/", Some(prefix().with_keys_only().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(summary(&r), (strings(&["go/a", "go/b"]), 4, true));
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(
        (
            r.kvs()[1].create_revision(),
            r.kvs()[1].mod_revision(),
            r.kvs()[1].version()
        ),
        (rb, rb2, 2)
    );
    let r = c.get("go/", Some(prefix().with_limit(4))).await.unwrap();
    assert_eq!(summary(&r), (all.clone(), 4, false));
    let r = c
        .get("go/", Some(prefix().with_serializable()))
        .await
        .unwrap();
    assert_eq!(summary(&r), (all.clone(), 4, false));
    let r = c
        .get("go/a", Some(GetOptions::new().with_range("go/c")))
        .await
        .unwrap();
    assert_eq!(summary(&r), (strings(&["go/a", "go/b"]), 2, false));

    // History.
    let r = c
        .get("go/b", Some(GetOptions::new().with_revision(rb)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"2");
    assert_eq!((r.kvs()[0].mod_revision(), r.kvs()[0].version()), (rb, 1));
    let r = c
        .get("go/", Some(prefix().with_revision(rb)))
        .await
        .unwrap();
    assert_eq!(summary(&r), (strings(&["go/a", "go/b"]), 2, false));

    // delete --prefix --prev-kv.
    let r = c
        .delete(
            "go/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 4);
    let prev: Vec<(String, String)> = r
        .prev_kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        prev,
        [("go/a", "1"), ("go/b", "22"), ("go/c", "3"), ("go/d", "4")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let r = c.get("go/", Some(prefix())).await.unwrap();
    assert_eq!(summary(&r), (vec![], 0, false));
}

/// `from_key` reads to the end of the keyspace: this test owns the last prefix, "zz/".
#[tokio::test]
async fn from_key_matches_etcd() {
    let _lock = shared_lock().await;
    let mut c = member_client(1).await;
    for k in ["zz/a", "zz/b", "zz/c"] {
        c.put(k, "v", None).await.unwrap();
    }
    let r = c
        .get("zz/b", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(summary(&r), (strings(&["zz/b", "zz/c"]), 2, false));
    let r = c
        .get("zz/", Some(GetOptions::new().with_from_key().with_limit(1)))
        .await
        .unwrap();
    assert_eq!(summary(&r), (strings(&["zz/a"]), 3, true));
}

#[tokio::test]
async fn sorting_matches_etcd() {
    let _lock = shared_lock().await;
    let mut c = member_client(2).await;
    // Values run opposite to keys; every version is 1.
    for (k, v) in [("so/a", "4"), ("so/b", "3"), ("so/c", "2"), ("so/d", "1")] {
        c.put(k, v, None).await.unwrap();
    }
    let cases = [
        // etcd: a target without an order sorts only the first limit+1 keys.
        (
            (SortTarget::Value, SortOrder::None),
            2,
            vec!["so/c", "so/b"],
            true,
        ),
        (
            (SortTarget::Value, SortOrder::Ascend),
            2,
            vec!["so/d", "so/c"],
            true,
        ),
        (
            (SortTarget::Value, SortOrder::Descend),
            0,
            vec!["so/a", "so/b", "so/c", "so/d"],
            false,
        ),
        (
            (SortTarget::Mod, SortOrder::Descend),
            2,
            vec!["so/d", "so/c"],
            true,
        ),
        (
            (SortTarget::Create, SortOrder::Ascend),
            0,
            vec!["so/a", "so/b", "so/c", "so/d"],
            false,
        ),
        ((SortTarget::Key, SortOrder::Descend), 1, vec!["so/d"], true),
        (
            (SortTarget::Key, SortOrder::Ascend),
            3,
            vec!["so/a", "so/b", "so/c"],
            true,
        ),
        // Ties keep key order in both directions.
        (
            (SortTarget::Version, SortOrder::Descend),
            0,
            vec!["so/a", "so/b", "so/c", "so/d"],
            false,
        ),
        (
            (SortTarget::Version, SortOrder::Ascend),
            3,
            vec!["so/a", "so/b", "so/c"],
            true,
        ),
    ];
    for (i, ((target, order), limit, expected, more)) in cases.into_iter().enumerate() {
        let r = c
            .get(
                "so/",
                Some(prefix().with_sort(target, order).with_limit(limit)),
            )
            .await
            .unwrap();
        assert_eq!(summary(&r), (strings(&expected), 4, more), "sort case {i}");
    }
}

// ---------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn txn_compares_and_branches_match_etcd() {
    let _lock = shared_lock().await;
    let mut c = member_client(0).await;
    let rk = put_rev(&mut c, "tc/k", "v").await;

    // All four targets hold: the success branch runs in order and sees its own writes.
    let nested = Txn::new()
        .when([Compare::version("tc/k", CompareOp::Equal, 2)])
        .and_then([TxnOp::put("tc/nested", "then", None)])
        .or_else([TxnOp::put("tc/nested", "else", None)]);
    let txn = Txn::new()
        .when([
            Compare::value("tc/k", CompareOp::Equal, "v"),
            Compare::version("tc/k", CompareOp::Greater, 0),
            Compare::create_revision("tc/k", CompareOp::Equal, rk),
            Compare::mod_revision("tc/k", CompareOp::Less, rk + 1),
        ])
        .and_then([
            TxnOp::put("tc/k", "v2", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("tc/k", None),
            TxnOp::delete("tc/none", None),
            TxnOp::txn(nested),
        ])
        .or_else([TxnOp::put("tc/k", "never", None)]);
    let r = c.txn(txn).await.unwrap();
    assert!(r.succeeded());
    let rev = r.header().unwrap().revision();
    assert!(rev > rk);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[0] {
        TxnOpResponse::Put(p) => {
            let prev = p.prev_key().expect("prev kv");
            assert_eq!((prev.value(), prev.version()), (&b"v"[..], 1));
            assert_eq!(p.header().unwrap().revision(), rev);
        }
        other => panic!("expected a put response, got {other:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Get(g) => {
            assert_eq!(g.kvs()[0].value(), b"v2");
            assert_eq!(
                (g.kvs()[0].mod_revision(), g.kvs()[0].version(), g.count()),
                (rev, 2, 1)
            );
            assert_eq!(g.header().unwrap().revision(), rev);
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 0),
        other => panic!("expected a delete response, got {other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Txn(t) => {
            // etcd evaluates every compare, nested ones too, before running any op: the
            // nested compare sees version 1, not the put before it.
            assert!(
                !t.succeeded(),
                "the nested compare sees the state before the txn"
            );
            assert_eq!(t.op_responses().len(), 1);
        }
        other => panic!("expected a txn response, got {other:?}"),
    }
    let r = c.get("tc/nested", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"else");
    assert_eq!(
        r.kvs()[0].mod_revision(),
        rev,
        "one revision for the whole txn"
    );

    // A failing compare runs the failure branch.
    let r = c
        .txn(
            Txn::new()
                .when([Compare::value("tc/k", CompareOp::Equal, "v")])
                .and_then([TxnOp::put("tc/k", "never", None)])
                .or_else([TxnOp::get("tc/k", None)]),
        )
        .await
        .unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => {
            assert_eq!(g.kvs()[0].value(), b"v2");
            assert_eq!(
                g.kvs()[0].mod_revision(),
                rev,
                "the success branch did not run"
            );
        }
        other => panic!("expected a range response, got {other:?}"),
    }

    // Compares on a missing key: a value compare is false even for "!="; the key's
    // version, create and mod revisions and lease compare as 0.
    let holds = |cmps: Vec<Compare>| async move {
        member_client(0)
            .await
            .txn(Txn::new().when(cmps))
            .await
            .unwrap()
            .succeeded()
    };
    assert!(!holds(vec![Compare::value("tc/missing", CompareOp::NotEqual, "x")]).await);
    assert!(
        holds(vec![
            Compare::version("tc/missing", CompareOp::Equal, 0),
            Compare::create_revision("tc/missing", CompareOp::Equal, 0),
            Compare::mod_revision("tc/missing", CompareOp::Less, 1),
            Compare::lease("tc/missing", CompareOp::Equal, 0),
        ])
        .await
    );
    assert!(!holds(vec![Compare::version("tc/k", CompareOp::Greater, 2)]).await);
    assert!(holds(vec![Compare::mod_revision("tc/k", CompareOp::Equal, rev)]).await);
    // Range compares must hold for every key in the range.
    c.put("tc/r/1", "a", None).await.unwrap();
    c.put("tc/r/2", "b", None).await.unwrap();
    assert!(
        holds(vec![
            Compare::value("tc/r/", CompareOp::Greater, "0").with_prefix()
        ])
        .await
    );
    assert!(
        !holds(vec![
            Compare::value("tc/r/", CompareOp::Equal, "a").with_prefix()
        ])
        .await
    );
    assert!(
        holds(vec![
            Compare::version("tc/r/", CompareOp::Equal, 0).with_range("tc/r/0")
        ])
        .await
    );
}

#[tokio::test]
async fn txn_and_put_refusals_match_etcd() {
    let _lock = shared_lock().await;
    let mut c = member_client(1).await;
    c.put("tr/k", "v", None).await.unwrap();

    // At most 128 operations per branch (and compares).
    let puts = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("tr/many/{i}"), "v", None))
            .collect()
    };
    assert_grpc(
        c.txn(Txn::new().and_then(puts(129))).await,
        "InvalidArgument",
        "etcdserver: too many operations in txn request",
    );
    assert_grpc(
        c.txn(Txn::new().or_else(puts(129))).await,
        "InvalidArgument",
        "etcdserver: too many operations in txn request",
    );
    let compares: Vec<Compare> = (0..129)
        .map(|i| Compare::version(format!("tr/many/{i}"), CompareOp::Greater, 0))
        .collect();
    assert_grpc(
        c.txn(Txn::new().when(compares)).await,
        "InvalidArgument",
        "etcdserver: too many operations in txn request",
    );
    let r = c
        .get("tr/many/", Some(prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(r.count(), 0, "a refused txn writes nothing");
    assert!(
        c.txn(Txn::new().and_then(puts(128)))
            .await
            .unwrap()
            .succeeded()
    );
    let r = c
        .get("tr/many/", Some(prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!(r.count(), 128);

    // A key may not be written twice in one branch, nested txns included.
    let dup = "etcdserver: duplicate key given in txn request";
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("tr/d", "1", None), TxnOp::put("tr/d", "2", None)]))
            .await,
        "InvalidArgument",
        dup,
    );
    assert_grpc(
        c.txn(Txn::new().or_else([
            TxnOp::put("tr/d", "1", None),
            TxnOp::delete("tr/c", Some(DeleteOptions::new().with_range("tr/e"))),
        ]))
        .await,
        "InvalidArgument",
        dup,
    );
    assert_grpc(
        c.txn(Txn::new().and_then([
            TxnOp::put("tr/d", "1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("tr/d", "2", None)])),
        ]))
        .await,
        "InvalidArgument",
        dup,
    );
    // The same key in then and else of a nested txn is fine.
    let nested = Txn::new()
        .and_then([TxnOp::put("tr/n2", "then", None)])
        .or_else([TxnOp::put("tr/n2", "else", None)]);
    assert!(
        c.txn(Txn::new().and_then([TxnOp::put("tr/n1", "1", None), TxnOp::txn(nested)]))
            .await
            .unwrap()
            .succeeded()
    );

    // Empty keys.
    let no_key = "etcdserver: key is not provided";
    assert_grpc(c.put("", "v", None).await, "InvalidArgument", no_key);
    assert_grpc(c.get("", None).await, "InvalidArgument", no_key);
    assert_grpc(c.delete("", None).await, "InvalidArgument", no_key);
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
            .await,
        "InvalidArgument",
        no_key,
    );
    assert_grpc(
        c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
            .await,
        "InvalidArgument",
        no_key,
    );

    // ignore_value / ignore_lease and leases.
    assert_grpc(
        c.put(
            "tr/k",
            "",
            Some(PutOptions::new().with_lease(123).with_ignore_lease()),
        )
        .await,
        "InvalidArgument",
        "etcdserver: lease is provided",
    );
    assert_grpc(
        c.put("tr/k", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        "InvalidArgument",
        "etcdserver: value is provided",
    );
    assert_grpc(
        c.put("tr/k", "v", Some(PutOptions::new().with_lease(0x1234)))
            .await,
        "NotFound",
        "etcdserver: requested lease not found",
    );
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put(
            "tr/k",
            "v",
            Some(PutOptions::new().with_lease(77)),
        )]))
        .await,
        "NotFound",
        "etcdserver: requested lease not found",
    );
    for options in [
        PutOptions::new().with_ignore_value(),
        PutOptions::new().with_ignore_lease(),
    ] {
        assert_grpc(
            c.put("tr/nokey", "", Some(options.clone())).await,
            "InvalidArgument",
            "etcdserver: key not found",
        );
        assert_grpc(
            c.txn(Txn::new().and_then([TxnOp::put("tr/nokey", "", Some(options))]))
                .await,
            "InvalidArgument",
            "etcdserver: key not found",
        );
    }
    // ignore_lease on an existing key keeps the value given.
    c.put("tr/k", "new", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let r = c.get("tr/k", None).await.unwrap();
    assert_eq!((r.kvs()[0].value(), r.kvs()[0].lease()), (&b"new"[..], 0));

    // A read at a future revision, alone or in a txn.
    let future = "etcdserver: mvcc: required revision is a future revision";
    let far = r.header().unwrap().revision() + 100_000;
    assert_grpc(
        c.get("tr/k", Some(GetOptions::new().with_revision(far)))
            .await,
        "OutOfRange",
        future,
    );
    assert_grpc(
        c.txn(Txn::new().and_then([
            TxnOp::put("tr/x", "1", None),
            TxnOp::get("tr/k", Some(GetOptions::new().with_revision(far))),
        ]))
        .await,
        "OutOfRange",
        future,
    );
    assert_eq!(c.get("tr/x", None).await.unwrap().count(), 0);
}

#[tokio::test]
async fn request_size_limits_match_etcd() {
    let _lock = shared_lock().await;
    let mut c = member_client(2).await;
    // etcd's default --max-request-bytes is 1.5 MiB; the gRPC limit is that plus 512 KiB.
    c.put("sz/ok", vec![b'x'; 1_500_000], None).await.unwrap();
    assert_eq!(
        c.get("sz/ok", None).await.unwrap().kvs()[0].value().len(),
        1_500_000
    );
    for size in [1_572_864, 2_000_000] {
        assert_grpc(
            c.put("sz/big", vec![b'x'; size], None).await,
            "InvalidArgument",
            "etcdserver: request is too large",
        );
    }
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("sz/big", vec![b'x'; 2_000_000], None)]))
            .await,
        "InvalidArgument",
        "etcdserver: request is too large",
    );
    // Over the gRPC limit the transport refuses the message before etcd sees it. The
    // encoded PutRequest: tag + length + "sz/big", tag + 4-byte length + the value.
    assert_grpc(
        c.put("sz/big", vec![b'x'; 3_000_000], None).await,
        "ResourceExhausted",
        "grpc: received message larger than max (3000013 vs. 2097152)",
    );
    assert_eq!(c.get("sz/big", None).await.unwrap().count(), 0);
    // The connection is still usable.
    c.put("sz/after", "v", None).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn compaction_matches_etcd() {
    let _lock = exclusive_lock().await;
    let mut c = member_client(0).await;
    let r1 = put_rev(&mut c, "cc/k", "v1").await;
    let r2 = put_rev(&mut c, "cc/k", "v2").await;
    let r3 = put_rev(&mut c, "cc/k", "v3").await;
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    let future = "etcdserver: mvcc: required revision is a future revision";

    let r = c.compact(r2, None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), r3);
    assert_grpc(
        c.get("cc/k", Some(GetOptions::new().with_revision(r1)))
            .await,
        "OutOfRange",
        compacted,
    );
    let r = c
        .get("cc/k", Some(GetOptions::new().with_revision(r2)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"v2");
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::get(
            "cc/k",
            Some(GetOptions::new().with_revision(r1)),
        )]))
        .await,
        "OutOfRange",
        compacted,
    );
    assert_grpc(c.compact(r2, None).await, "OutOfRange", compacted);
    assert_grpc(c.compact(r1, None).await, "OutOfRange", compacted);
    assert_grpc(c.compact(r3 + 1000, None).await, "OutOfRange", future);

    c.compact(r3, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    for i in 0..3 {
        let mut m = member_client(i).await;
        assert_grpc(
            m.get("cc/k", Some(GetOptions::new().with_revision(r2)))
                .await,
            "OutOfRange",
            compacted,
        );
        let r = m
            .get("cc/k", Some(GetOptions::new().with_revision(r3)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"v3");
    }
}

// ---------------------------------------------------------------------------------------
// Cluster and Maintenance
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cluster_api_matches_etcd() {
    let _lock = shared_lock().await;
    let c = cluster();
    let mut m = member_client(1).await;

    let list = m.member_list().await.unwrap();
    let header = list.header().unwrap();
    assert_eq!(
        header.revision(),
        0,
        "etcd's Cluster service fills no revision"
    );
    assert!(header.cluster_id() > 0 && header.raft_term() > 0);
    let members = list.members();
    assert_eq!(members.len(), 3);
    let ids: Vec<u64> = members.iter().map(|m| m.id()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "members are listed by ID");
    for member in members {
        let started = c
            .members
            .iter()
            .find(|x| x.name == member.name())
            .unwrap_or_else(|| panic!("unknown member {member:?}"));
        assert_eq!(member.peer_urls(), std::slice::from_ref(&started.peer_url));
        assert_eq!(
            member.client_urls(),
            std::slice::from_ref(&started.client_url)
        );
        assert!(!member.is_learner());
    }
    assert!(ids.contains(&header.member_id()));

    let unknown = 0x1234_abcd;
    let not_found = "etcdserver: member not found";
    assert_grpc(m.member_remove(unknown).await, "NotFound", not_found);
    assert_grpc(m.member_promote(unknown).await, "NotFound", not_found);
    assert_grpc(
        m.member_update(unknown, vec!["http://127.0.0.1:1".to_string()])
            .await,
        "NotFound",
        not_found,
    );
    assert_grpc(
        m.member_promote(ids[0]).await,
        "FailedPrecondition",
        "etcdserver: can only promote a learner member",
    );
    assert_grpc(
        m.member_add([c.members[2].peer_url.as_str()], None).await,
        "FailedPrecondition",
        "etcdserver: Peer URLs already exists",
    );
    assert_grpc(
        m.member_add(["notaurl"], None).await,
        "InvalidArgument",
        "etcdserver: given member URLs are invalid",
    );
    // Nothing changed.
    assert_eq!(m.member_list().await.unwrap().members().len(), 3);
}

fn semver(v: &str) -> (u64, u64, u64) {
    let parts: Vec<u64> = v
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("not semver: {v}")))
        .collect();
    assert_eq!(parts.len(), 3, "not semver: {v}");
    (parts[0], parts[1], parts[2])
}

#[tokio::test]
async fn status_and_alarms_match_etcd() {
    let _lock = shared_lock().await;
    let mut leaders = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut m = member_client(i).await;
        let status = m.status().await.unwrap();
        assert!(
            semver(status.version()) >= (3, 5, 13),
            "{}",
            status.version()
        );
        assert!(status.db_size() > 0);
        assert!(status.raft_used_db_size() > 0);
        assert!(status.raft_used_db_size() <= status.db_size());
        assert!(status.raft_term() > 0);
        assert!(status.raft_index() > 0);
        assert!(status.raft_applied_index() > 0);
        assert!(!status.is_learner());
        assert!(status.errors().is_empty());
        let header = status.header().unwrap();
        assert!(header.revision() > 0);
        ids.push(header.member_id());
        leaders.push(status.leader());

        let alarms = m
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await
            .unwrap();
        assert!(alarms.alarms().is_empty());
    }
    assert!(leaders.iter().all(|&l| l == leaders[0]), "{leaders:?}");
    assert!(
        ids.contains(&leaders[0]),
        "the leader is a member: {leaders:?} {ids:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Forwarding and read consistency
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn follower_writes_are_forwarded_and_reads_see_them() {
    let _lock = shared_lock().await;
    let mut by_member = Vec::new();
    let mut leader = None;
    for i in 0..3 {
        let mut m = member_client(i).await;
        let status = m.status().await.unwrap();
        let id = status.header().unwrap().member_id();
        if status.leader() == id {
            leader = Some(i);
        }
        by_member.push((m, id));
    }
    let leader = leader.expect("a member leads");
    let mut followers: Vec<(Client, u64)> = by_member
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m)
        .collect();
    let (mut b, b_id) = followers.pop().unwrap();
    let (mut a, a_id) = followers.pop().unwrap();

    for round in 0..100 {
        let (writer, writer_id, reader) = if round % 2 == 0 {
            (&mut a, a_id, &mut b)
        } else {
            (&mut b, b_id, &mut a)
        };
        let value = format!("round-{round}");
        let put = writer.put("fl/k", value.as_str(), None).await.unwrap();
        let header = put.header().unwrap();
        assert_eq!(header.member_id(), writer_id, "the serving member answers");
        // Linearizable read on the other follower right after.
        let r = reader.get("fl/k", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), value.as_bytes(), "round {round}");
        assert_eq!(r.kvs()[0].mod_revision(), header.revision());
        // The member that served the write has applied it: even a serializable read there
        // sees it (etcd replies to a write only after the serving member applied it).
        let r = writer
            .get("fl/k", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), value.as_bytes(), "round {round}");
    }
    // Deletes and txns through followers too.
    let r = a
        .delete("fl/k", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 1);
    assert_eq!(r.prev_kvs()[0].value(), b"round-99");
    let r = b
        .txn(
            Txn::new()
                .when([Compare::create_revision("fl/k", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("fl/k", "again", None)]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(
        a.get("fl/k", None).await.unwrap().kvs()[0].value(),
        b"again"
    );
}

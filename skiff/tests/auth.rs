//! etcd authentication end to end: real `skiff store` processes driven by the real
//! `etcdctl` (users, roles, prefix permissions, `auth enable/disable`), the state
//! surviving a restart of every member and a snapshot restore, `AuthStatus` and both
//! token metadata keys over gRPC, and etcdctl's output compared with a real etcd's.

mod common;

use std::time::Duration;

use common::{Cluster, RealEtcd, etcdctl, etcdctl_ok};
use skiff_proto::etcdserverpb::auth_client::AuthClient;
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::watch_client::WatchClient;
use skiff_proto::etcdserverpb::watch_request::RequestUnion;
use skiff_proto::etcdserverpb::{AuthStatusRequest, AuthenticateRequest, RangeRequest};
use skiff_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcdctl must fail with `message` on stderr.
fn refused(endpoints: &str, args: &[&str], message: &str) {
    let out = etcdctl(endpoints, args);
    assert!(
        !out.status.success(),
        "etcdctl {args:?} succeeded: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains(message),
        "etcdctl {args:?}: expected {message:?}, got {}",
        stderr(&out)
    );
}

/// The setup every scenario starts from: root, a `reader` role with read on `/app/`,
/// alice holding it, `/app/x` written, auth on.
fn set_up_auth(eps: &str) {
    assert!(etcdctl_ok(eps, &["user", "add", "root:rootpw"]).contains("User root created"));
    assert!(etcdctl_ok(eps, &["role", "add", "reader"]).contains("Role reader created"));
    let out = etcdctl_ok(
        eps,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "/app/",
            "--prefix",
        ],
    );
    assert!(out.contains("Role reader updated"), "{out}");
    assert!(etcdctl_ok(eps, &["user", "add", "alice:alicepw"]).contains("User alice created"));
    let out = etcdctl_ok(eps, &["user", "grant-role", "alice", "reader"]);
    assert!(
        out.contains("Role reader is granted to user alice"),
        "{out}"
    );
    etcdctl_ok(eps, &["user", "grant-role", "root", "root"]);
    etcdctl_ok(eps, &["put", "/app/x", "v1"]);
    etcdctl_ok(eps, &["put", "/other", "o"]);
    let out = etcdctl_ok(eps, &["auth", "enable"]);
    assert!(out.contains("Authentication Enabled"), "{out}");
}

/// What must hold while auth is on (also after restarts and restores).
fn check_enforced(eps: &str) {
    let out = etcdctl_ok(eps, &[ALICE, "get", "/app/x", "--print-value-only"]);
    assert_eq!(out.trim(), "v1");
    let out = etcdctl_ok(eps, &[ALICE, "get", "/app/", "--prefix", "--keys-only"]);
    assert!(out.contains("/app/x"), "{out}");
    refused(
        eps,
        &[ALICE, "put", "/app/x", "v2"],
        "etcdserver: permission denied",
    );
    refused(
        eps,
        &[ALICE, "get", "/other"],
        "etcdserver: permission denied",
    );
    refused(
        eps,
        &[ALICE, "get", "", "--prefix"],
        "etcdserver: permission denied",
    );
    refused(
        eps,
        &["--user=alice:wrong", "get", "/app/x"],
        "etcdserver: authentication failed, invalid user ID or password",
    );
    refused(
        eps,
        &["--user=mallory:pw", "get", "/app/x"],
        "etcdserver: authentication failed, invalid user ID or password",
    );
    refused(eps, &["get", "/app/x"], "etcdserver: user name is empty");
    refused(
        eps,
        &["put", "/app/x", "v2"],
        "etcdserver: user name is empty",
    );
    // Admin-only operations.
    refused(
        eps,
        &[ALICE, "user", "add", "eve:pw"],
        "etcdserver: permission denied",
    );
    refused(eps, &[ALICE, "defrag"], "etcdserver: permission denied");
    // Root may do everything.
    let out = etcdctl_ok(eps, &[ROOT, "get", "/other", "--print-value-only"]);
    assert_eq!(out.trim(), "o");
    let out = etcdctl_ok(eps, &[ROOT, "user", "list"]);
    assert!(out.contains("alice") && out.contains("root"), "{out}");
    let out = etcdctl_ok(eps, &[ROOT, "role", "get", "reader"]);
    assert!(out.contains("[/app/, /app0) (prefix /app/)"), "{out}");
    let out = etcdctl_ok(eps, &[ROOT, "user", "get", "alice"]);
    assert!(out.contains("Roles: reader"), "{out}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// AuthStatus and the two token metadata keys, over gRPC.
async fn grpc_checks(endpoint: &str) {
    let url = format!("http://{endpoint}");
    let mut auth = AuthClient::connect(url.clone()).await.unwrap();
    let token = auth
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let (prefix, index) = token
        .split_once('.')
        .expect("simple token <prefix>.<index>");
    assert_eq!(prefix.len(), 16, "{token}");
    assert!(prefix.chars().all(|c| c.is_ascii_alphabetic()), "{token}");
    assert!(index.parse::<u64>().is_ok(), "{token}");

    let mut request = tonic::Request::new(AuthStatusRequest {});
    request
        .metadata_mut()
        .insert("token", token.parse().unwrap());
    let status = auth.auth_status(request).await.unwrap().into_inner();
    assert!(status.enabled);
    assert!(status.auth_revision > 1, "{status:?}");

    // Newer etcd also takes `authorization` (as the gRPC gateway sends it).
    let mut kv = KvClient::connect(url).await.unwrap();
    let mut request = tonic::Request::new(RangeRequest {
        key: b"/other".to_vec(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let range = kv.range(request).await.unwrap().into_inner();
    assert_eq!(range.kvs.len(), 1);

    // A token this cluster never issued.
    let mut request = tonic::Request::new(RangeRequest {
        key: b"/other".to_vec(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("token", "abcdefghijklmnop.1".parse().unwrap());
    let err = kv.range(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), "etcdserver: invalid auth token");

    // A watch on a range alice may not read is created canceled, with etcd's reason.
    let alice = auth
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut watch = WatchClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap();
    let create = |key: &[u8]| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(create(b"/other")).await.unwrap();
    tx.send(create(b"/app/x")).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("token", alice.parse().unwrap());
    let mut responses = watch.watch(request).await.unwrap().into_inner();
    let denied = responses.message().await.unwrap().unwrap();
    assert!(denied.created && denied.canceled, "{denied:?}");
    assert_eq!(denied.cancel_reason, "etcdserver: permission denied");
    let allowed = responses.message().await.unwrap().unwrap();
    assert!(allowed.created && !allowed.canceled, "{allowed:?}");
    drop(tx);

    // Without a token: AuthStatus is for root only.
    let err = auth.auth_status(AuthStatusRequest {}).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: user name is empty");
}

#[test]
fn users_roles_and_permissions_survive_restart_and_restore() {
    let mut cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    set_up_auth(&eps);
    check_enforced(&eps);
    // Every member enforces, whoever issued the token.
    for member in &cluster.members {
        let ep = member.endpoint();
        refused(
            &ep,
            &[ALICE, "put", "/app/y", "v"],
            "etcdserver: permission denied",
        );
        let out = etcdctl_ok(&ep, &[ALICE, "get", "/app/x", "--print-value-only"]);
        assert_eq!(out.trim(), "v1");
    }
    runtime().block_on(grpc_checks(&cluster.members[0].endpoint()));

    // A write permission granted later applies at once; revoked, it is gone at once.
    etcdctl_ok(
        &eps,
        &[
            ROOT,
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "/app/w",
        ],
    );
    etcdctl_ok(&eps, &[ALICE, "put", "/app/w", "ok"]);
    etcdctl_ok(
        &eps,
        &[ROOT, "role", "revoke-permission", "reader", "/app/w"],
    );
    refused(
        &eps,
        &[ALICE, "put", "/app/w", "no"],
        "etcdserver: permission denied",
    );

    // Restart every member: the auth state is in the data dirs.
    for i in 0..cluster.members.len() {
        cluster.members[i].kill9();
    }
    for i in 0..cluster.members.len() {
        cluster.restart(i);
    }
    cluster.wait_leader(Duration::from_secs(20));
    let eps = cluster.endpoints();
    wait_for_auth(&eps);
    check_enforced(&eps);

    // A snapshot (root only) restored into a new cluster carries users and roles.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.db");
    let file_str = file.to_str().unwrap();
    refused(
        &cluster.members[0].endpoint(),
        &[ALICE, "snapshot", "save", file_str],
        "etcdserver: permission denied",
    );
    let out = etcdctl_ok(
        &cluster.members[0].endpoint(),
        &[ROOT, "snapshot", "save", file_str],
    );
    assert!(out.contains("Snapshot saved at"), "{out}");
    let restored = restore_one(&file);
    let restored_eps = restored.endpoints();
    wait_for_auth(&restored_eps);
    check_enforced(&restored_eps);

    // auth disable: anyone may write again; users and roles remain.
    refused(
        &eps,
        &[ALICE, "auth", "disable"],
        "etcdserver: permission denied",
    );
    let out = etcdctl_ok(&eps, &[ROOT, "auth", "disable"]);
    assert!(out.contains("Authentication Disabled"), "{out}");
    etcdctl_ok(&eps, &["put", "/app/x", "v3"]);
    let out = etcdctl_ok(&eps, &["role", "list"]);
    assert!(out.contains("reader"), "{out}");
}

/// A one-member cluster restored from `snapshot` by `skiff store snapshot restore`
/// (`Cluster::start_from_snapshot` waits for `endpoint health`, which, as with etcd,
/// fails without credentials once auth is on).
fn restore_one(snapshot: &std::path::Path) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let member = common::Member {
        name: "r0".into(),
        client_url: format!("http://127.0.0.1:{}", common::free_port()),
        peer_url: format!("http://127.0.0.1:{}", common::free_port()),
        data_dir: dir.path().join("r0.skiff"),
        log_path: dir.path().join("r0.log"),
        child: None,
        extra_args: Vec::new(),
    };
    let initial_cluster = format!("r0={}", member.peer_url);
    let out = std::process::Command::new(common::skiff_bin())
        .args(["store", "snapshot", "restore"])
        .arg(snapshot)
        .args(["--name", "r0", "--data-dir"])
        .arg(&member.data_dir)
        .args(["--initial-cluster", &initial_cluster])
        .args(["--initial-cluster-token", "skiff-test"])
        .args(["--initial-advertise-peer-urls", &member.peer_url])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let mut cluster = Cluster {
        dir,
        members: vec![member],
        initial_cluster,
    };
    cluster.restart(0);
    cluster
}

/// Wait until members serve authenticated reads (after a restart).
fn wait_for_auth(eps: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(eps, &[ROOT, "get", "/other"]);
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "members never served root: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// etcdctl's stderr without clientv3's JSON retry log lines (their timestamps and
/// connection IDs differ run to run).
fn error_lines(out: &std::process::Output) -> String {
    stderr(out)
        .lines()
        .filter(|line| !line.starts_with("{\"level\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The same etcdctl commands against a real etcd and a skiff member: identical stdout,
/// error lines and exit status.
#[test]
fn etcdctl_auth_output_matches_etcd() {
    let etcd = RealEtcd::start();
    let skiff = Cluster::start(1);
    let skiff_ep = skiff.endpoints();
    let commands: Vec<Vec<&str>> = vec![
        vec!["auth", "enable"],
        vec!["user", "add", "root:rootpw"],
        vec!["user", "add", "root:other"],
        vec!["auth", "enable"],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "grant-role", "root", "nosuchrole"],
        vec!["user", "grant-role", "nobody", "root"],
        vec!["role", "add", "reader"],
        vec!["role", "add", "reader"],
        vec![
            "role",
            "grant-permission",
            "reader",
            "read",
            "/app/",
            "--prefix",
        ],
        vec!["role", "grant-permission", "nosuch", "read", "/k"],
        vec!["role", "revoke-permission", "reader", "/nothere"],
        vec!["user", "add", "alice:alicepw"],
        vec!["user", "grant-role", "alice", "reader"],
        vec!["user", "revoke-role", "alice", "root"],
        vec!["user", "get", "nobody"],
        vec!["role", "get", "nosuch"],
        vec!["put", "/app/x", "v1"],
        vec!["auth", "enable"],
        vec!["get", "/app/x"],
        vec!["put", "/app/x", "v2"],
        vec![ALICE, "get", "/app/x", "--print-value-only"],
        vec![ALICE, "put", "/app/x", "v2"],
        vec![ALICE, "get", "/b"],
        vec!["--user=alice:bad", "get", "/app/x"],
        vec![ALICE, "role", "list"],
        vec![ROOT, "role", "list"],
        vec![ROOT, "user", "list"],
        vec![ROOT, "role", "get", "reader"],
        // Not `role get root`: etcd 3.4 lists no permissions, 3.5 (skiff's API) lists
        // the root permission on every key.
        vec![ROOT, "user", "get", "alice"],
        vec![ROOT, "user", "delete", "root"],
        vec![ROOT, "role", "delete", "root"],
        vec![ROOT, "user", "revoke-role", "root", "root"],
        vec![ROOT, "auth", "disable"],
        vec!["auth", "disable"],
    ];
    for args in commands {
        let theirs = etcdctl(&etcd.endpoint, &args);
        let ours = etcdctl(&skiff_ep, &args);
        assert_eq!(
            (ours.status.success(), stdout(&ours), error_lines(&ours)),
            (
                theirs.status.success(),
                stdout(&theirs),
                error_lines(&theirs)
            ),
            "etcdctl {args:?}"
        );
    }
}

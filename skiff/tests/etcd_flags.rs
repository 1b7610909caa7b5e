//! etcd's flags as operators and kubeadm pass them: `ETCD_*` environment variables (a
//! flag wins over its variable), kubeadm's `--flag=true` booleans and static-pod set,
//! `--log-outputs`/`--logger`/`--log-level`, refused flags, and the periodic
//! auto-compactor. Also the Defragment/MoveLeader answers, shaped as real etcd's.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, RealEtcd, etcdctl, etcdctl_ok, free_port, skiff_bin};

fn wait_serving(endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(endpoint, &["put", "ready", "1"]).status.success() {
        assert!(Instant::now() < deadline, "member never served a put");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn etcd_env_vars_and_kubeadm_flags_are_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let data_dir = dir.path().join("from-env.etcd");
    let log_file = dir.path().join("member.log");
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
    let mut child = Command::new(skiff_bin())
        .arg("store")
        .env("ETCD_NAME", "env-name")
        .env("ETCD_DATA_DIR", &data_dir)
        .env("ETCD_LISTEN_CLIENT_URLS", &client)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &client)
        .env("ETCD_LISTEN_PEER_URLS", &peer)
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer)
        .env("ETCD_INITIAL_CLUSTER", format!("flag-name={peer}"))
        .env("ETCD_INITIAL_CLUSTER_STATE", "new")
        .env("ETCD_SNAPSHOT_COUNT", "not-a-number-but-overridden")
        .env("ETCD_CLIENT_CERT_AUTH", "false")
        // The flag wins over ETCD_NAME and ETCD_SNAPSHOT_COUNT.
        .args(["--name", "flag-name", "--snapshot-count=10000"])
        // kubeadm's static-pod style.
        .args([
            "--experimental-initial-corrupt-check=true",
            "--experimental-watch-progress-notify-interval=5s",
            "--peer-client-cert-auth=false",
            "--logger=zap",
            "--log-level=info",
        ])
        .arg(format!("--log-outputs=stderr,{}", log_file.display()))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn skiff store");
    let endpoint = client.trim_start_matches("http://").to_string();
    wait_serving(&endpoint);
    let members = etcdctl_ok(&endpoint, &["member", "list"]);
    assert!(members.contains("flag-name"), "member list: {members}");
    assert!(data_dir.join("").is_dir(), "ETCD_DATA_DIR not used");
    let _ = child.kill();
    let _ = child.wait();

    // Both outputs got the log, without colour codes (neither is a terminal).
    let file_log = std::fs::read_to_string(&log_file).expect("log file");
    let stderr_log = std::fs::read_to_string(dir.path().join("stderr.log")).expect("stderr");
    assert!(
        file_log.contains("ready to serve client requests"),
        "{file_log}"
    );
    assert!(stderr_log.contains("ready to serve client requests"));
    assert!(!file_log.contains('\u{1b}') && !stderr_log.contains('\u{1b}'));
}

#[test]
fn meaningless_or_bad_flags_are_refused_with_one_line() {
    for (args, needle) in [
        (vec!["--enable-v2=true"], "--enable-v2"),
        (vec!["--auto-tls"], "--auto-tls"),
        (vec!["--peer-auto-tls=true"], "--peer-auto-tls"),
        (
            vec!["--auto-compaction-mode=daily"],
            "--auto-compaction-mode",
        ),
        (
            vec![
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=1h",
            ],
            "--auto-compaction-retention",
        ),
        (vec!["--client-cert-auth=maybe"], "--client-cert-auth"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(skiff_bin())
            .arg("store")
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(&args)
            .output()
            .expect("run skiff store");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn periodic_auto_compaction_compacts_old_revisions() {
    let cluster = Cluster::start_with(
        1,
        &[
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=2s",
        ],
    );
    let ep = cluster.members[0].endpoint();
    etcdctl_ok(&ep, &["put", "k", "v1"]);
    let first: i64 = {
        let out = etcdctl_ok(&ep, &["get", "k", "-w", "fields"]);
        out.lines()
            .find_map(|l| l.strip_prefix("\"ModRevision\" : "))
            .and_then(|v| v.trim().parse().ok())
            .expect("mod revision")
    };
    for i in 2..=5 {
        etcdctl_ok(&ep, &["put", "k", &format!("v{i}")]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = etcdctl(&ep, &["get", "k", &format!("--rev={first}")]);
        if String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revision {first} never compacted; log:\n{}",
            cluster.log_tail("m0")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        etcdctl_ok(&ep, &["get", "k", "--print-value-only"]).trim(),
        "v5"
    );
}

/// Defragment and MoveLeader answer as etcd does: no header; etcdctl prints the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_and_move_leader_answers_match_real_etcd() {
    use skiff_proto::etcdserverpb::{
        DefragmentRequest, MemberListRequest, MoveLeaderRequest, cluster_client::ClusterClient,
        maintenance_client::MaintenanceClient,
    };
    let etcd = RealEtcd::start();
    let cluster = Cluster::start(1);
    let skiff = cluster.members[0].endpoint();
    let mut answers = Vec::new();
    for endpoint in [&etcd.endpoint, &skiff] {
        let channel = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut maintenance = MaintenanceClient::new(channel.clone());
        let defrag = maintenance
            .defragment(DefragmentRequest {})
            .await
            .expect("defragment")
            .into_inner();
        let me = ClusterClient::new(channel)
            .member_list(MemberListRequest::default())
            .await
            .expect("member list")
            .into_inner()
            .members[0]
            .id;
        let moved = maintenance
            .move_leader(MoveLeaderRequest { target_id: me })
            .await
            .expect("move leader to itself")
            .into_inner();
        answers.push((defrag, moved));
    }
    assert_eq!(answers[0], answers[1], "etcd vs skiff");
    let printed: Vec<String> = [&etcd.endpoint, &skiff]
        .iter()
        .map(|ep| etcdctl_ok(ep, &["defrag"]).replace(ep.as_str(), "EP"))
        .collect();
    assert_eq!(printed[0], printed[1]);
    assert!(printed[1].starts_with("Finished defragmenting etcd member[EP]"));
}

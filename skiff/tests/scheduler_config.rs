//! `skiff scheduler --config FILE` as a real process: a KubeSchedulerConfiguration naming the
//! kubeconfig, leader election and a profile `tenant-scheduler` makes it schedule exactly the
//! pods that ask for that scheduler (and hold the Lease named in the file); a file with an
//! unknown field or a bad duration is refused with one line and exit status 2.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiHome, Backend};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

fn pod(name: &str, scheduler_name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "schedulerName": scheduler_name,
            "containers": [{ "name": "c", "image": "busybox" }],
        },
    }))
    .expect("pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_the_profile_and_the_lease() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let client = Client::try_from(
        Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("kube config"),
    )
    .expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": { "name": "n1", "labels": { "kubernetes.io/hostname": "n1" } },
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node");
    let resources = json!({ "cpu": "8", "memory": "16Gi", "pods": "110" });
    let status = json!({ "status": { "capacity": resources, "allocatable": resources } });
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");

    let config = home.path().join("scheduler.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
             clientConnection:\n  kubeconfig: {}\n\
             leaderElection:\n  leaderElect: true\n  resourceName: tenant-scheduler\n  \
             resourceNamespace: kube-system\n  leaseDuration: 10s\n  renewDeadline: 5s\n  retryPeriod: 1s\n\
             profiles:\n- schedulerName: tenant-scheduler\n",
            kubeconfig.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(home.path().join("scheduler.log")).expect("log");
    let mut scheduler = Command::new(common::skiff_bin())
        .args(["scheduler", "--secure-port", "0", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn skiff scheduler");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("mine", "tenant-scheduler"))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("theirs", "default-scheduler"))
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_secs(30);
    let node_of = async |name: &str| pods.get(name).await.ok()?.spec?.node_name;
    while node_of("mine").await.is_none() {
        let log = std::fs::read_to_string(home.path().join("scheduler.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the profile's pod was not bound: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A pod for another scheduler is left alone; the Lease is the file's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node_of("theirs").await, None);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases
        .get("tenant-scheduler")
        .await
        .expect("the file's Lease");
    let spec = lease.spec.expect("lease spec");
    assert!(spec.holder_identity.is_some_and(|h| !h.is_empty()));
    assert_eq!(spec.lease_duration_seconds, Some(10));
    assert!(leases.get("kube-scheduler").await.is_err());
    let _ = scheduler.kill();
    let _ = scheduler.wait();
}

#[test]
fn a_bad_config_file_is_one_line_and_exit_status_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nplugins: {}\n",
            "unknown field `plugins`",
        ),
        (
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
             leaderElection:\n  leaseDuration: -5s\n",
            "leaderElection.leaseDuration: Invalid value: \"-5s\"",
        ),
        (
            "apiVersion: kubescheduler.config.k8s.io/v1beta3\nkind: KubeSchedulerConfiguration\n",
            "kubescheduler.config.k8s.io/v1beta3",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&path, text).expect("write");
        let out = Command::new(common::skiff_bin())
            .args(["scheduler", "--config"])
            .arg(&path)
            .output()
            .expect("run skiff scheduler");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert!(stderr.starts_with("skiff: --config "), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

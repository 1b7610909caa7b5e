//! `skiff scheduler`'s cluster-wide scores as a real process against `skiff apiserver` on a
//! `skiff store`: where the resource scores alone would pick another node (or tie), a
//! preferred pod affinity pulls a pod to its peer's node and a preferred anti-affinity pushes
//! it away, a ScheduleAnyway zone spread constraint picks the emptier zone, and a node that
//! already holds a pod's large image wins.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiHome, Backend};
use control_plane::kube_client;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// A `skiff scheduler` process (no leader election, no metrics port), killed on drop.
struct Scheduler(Child);

impl Scheduler {
    fn start(dir: &Path, kubeconfig: &Path) -> Scheduler {
        let log = std::fs::File::create(dir.join("scheduler.log")).expect("log");
        let child = Command::new(common::skiff_bin())
            .args(["scheduler", "--leader-elect=false", "--secure-port", "0"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn skiff scheduler");
        Scheduler(child)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fixture {
    client: Client,
    home: ApiHome,
    _store: Backend,
    _api: apiserver::ApiServer,
}

async fn fixture() -> Fixture {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    Fixture {
        client: kube_client(&kubeconfig).await,
        home,
        _store: store,
        _api: api,
    }
}

impl Fixture {
    fn start_scheduler(&self) -> Scheduler {
        Scheduler::start(self.home.path(), &self.home.path().join("kubeconfig"))
    }

    /// A Ready node with `cpu` CPUs, labels, and optionally images it holds.
    async fn node(&self, name: &str, cpu: &str, labels: Value, images: Value) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut all_labels = json!({ "kubernetes.io/hostname": name });
        for (k, v) in labels.as_object().expect("labels") {
            all_labels[k] = v.clone();
        }
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": all_labels },
        }))
        .expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let resources = json!({ "cpu": cpu, "memory": "64Gi", "pods": "110" });
        let status = json!({ "status": {
            "capacity": resources, "allocatable": resources, "images": images,
            "conditions": [{ "type": "Ready", "status": "True" }],
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node status");
    }

    /// Creates a pod from `spec` with labels; `node` binds it there directly.
    async fn pod(&self, name: &str, labels: Value, mut spec: Value, node: Option<&str>) {
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{ "name": "c", "image": "busybox" }]);
        }
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "spec": spec,
        }))
        .expect("pod");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }

    async fn node_of(&self, name: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(node) = pods.get(name).await.ok().and_then(|p| p.spec?.node_name) {
                return node;
            }
            assert!(Instant::now() < deadline, "pod {name} was not bound");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn pod_term(app: &str, topology_key: &str) -> Value {
    json!({
        "weight": 100,
        "podAffinityTerm": {
            "labelSelector": { "matchLabels": { "app": app } },
            "topologyKey": topology_key,
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_pod_affinity_pulls_and_anti_affinity_pushes() {
    let f = fixture().await;
    // Same size: the node already running db is fuller, so the resource scores alone
    // prefer b for both pods below.
    f.node("a", "64", json!({}), json!([])).await;
    f.node("b", "64", json!({}), json!([])).await;
    f.pod(
        "db",
        json!({ "app": "db" }),
        json!({ "containers": [{ "name": "c", "image": "busybox",
            "resources": { "requests": { "cpu": "4", "memory": "8Gi" } } }] }),
        Some("a"),
    )
    .await;
    // A small pod on b: b stays the emptier node by far.
    f.pod("noisy", json!({ "app": "noisy" }), json!({}), Some("b"))
        .await;
    let _scheduler = f.start_scheduler();
    let hostname = "kubernetes.io/hostname";
    f.pod(
        "near",
        json!({ "app": "cache" }),
        json!({ "affinity": { "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [pod_term("db", hostname)] } } }),
        None,
    )
    .await;
    f.pod(
        "far",
        json!({ "app": "other" }),
        json!({ "affinity": { "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [pod_term("noisy", hostname)] } } }),
        None,
    )
    .await;
    assert_eq!(
        f.node_of("near").await,
        "a",
        "preferred affinity to db's node"
    );
    assert_eq!(
        f.node_of("far").await,
        "a",
        "preferred anti-affinity away from the noisy pod, onto the fuller node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_anyway_spread_constraint_picks_the_emptier_zone() {
    let f = fixture().await;
    let zone = "topology.kubernetes.io/zone";
    // z1 has two big nodes, each running a web pod; z2 one smaller node, so the resource
    // scores alone prefer z1.
    f.node("a1", "64", json!({ zone: "z1" }), json!([])).await;
    f.node("a2", "64", json!({ zone: "z1" }), json!([])).await;
    f.node("b1", "8", json!({ zone: "z2" }), json!([])).await;
    f.pod("web-0", json!({ "app": "web" }), json!({}), Some("a1"))
        .await;
    f.pod("web-1", json!({ "app": "web" }), json!({}), Some("a2"))
        .await;
    let _scheduler = f.start_scheduler();
    f.pod(
        "web-2",
        json!({ "app": "web" }),
        json!({ "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": zone, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": { "matchLabels": { "app": "web" } } }] }),
        None,
    )
    .await;
    assert_eq!(f.node_of("web-2").await, "b1");
    // Without the constraint the same pod goes to z1: the constraint made the difference.
    f.pod("plain", json!({ "app": "plain" }), json!({}), None)
        .await;
    assert!(f.node_of("plain").await.starts_with('a'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_holding_a_large_image_wins() {
    let f = fixture().await;
    f.node("plain", "64", json!({}), json!([])).await;
    f.node(
        "cached",
        "64",
        json!({}),
        json!([{ "names": ["docker.io/library/bigapp:1", "bigapp@sha256:00"],
                 "sizeBytes": 800u64 * 1024 * 1024 }]),
    )
    .await;
    let _scheduler = f.start_scheduler();
    for i in 0..3 {
        f.pod(
            &format!("app-{i}"),
            json!({ "app": "big" }),
            json!({ "containers": [{ "name": "c", "image": "bigapp:1" }] }),
            None,
        )
        .await;
        assert_eq!(f.node_of(&format!("app-{i}")).await, "cached");
    }
}

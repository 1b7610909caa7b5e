//! `skiff scheduler` as a real process against `skiff apiserver` on a `skiff store`: pods land
//! where kube-scheduler would put them (resource fit, nodeSelector, taints, required pod
//! anti-affinity, topology spread), an unschedulable pod gets kube-scheduler's FailedScheduling
//! message and PodScheduled=False, `skiff why-pending` prints per-node numbers, with two
//! schedulers exactly one holds the Lease, a kill -9 of the leader hands over within lease
//! duration + retry and every pod is bound exactly once, a leader cut off from the API
//! server stops within the renew deadline, and a high-priority pod preempts the fewest
//! low-priority pods on a full simulated node (unless its `preemptionPolicy` is `Never`).

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::{ApiHome, ApiServer, Backend};
use control_plane::{kube_client, wait_for};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Affinity, Container, Event, Node, NodeSpec, NodeStatus, Pod, PodAffinityTerm, PodAntiAffinity,
    PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use node_sim::NodeSim;

/// A `skiff scheduler` process, killed on drop.
struct SchedulerProc {
    child: Child,
    log_path: std::path::PathBuf,
    metrics_port: u16,
}

impl SchedulerProc {
    fn start(dir: &Path, kubeconfig: &Path, name: &str) -> SchedulerProc {
        let metrics_port = common::free_port();
        let log_path = dir.join(format!("scheduler-{name}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(common::skiff_bin())
            .arg("scheduler")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &metrics_port.to_string()])
            .env("SKIFF_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn skiff scheduler");
        SchedulerProc {
            child,
            log_path,
            metrics_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The holder identity this process logged when it acquired the Lease, if it did.
    fn leader_identity(&self) -> Option<String> {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("successfully acquired lease"))?;
        let at = line.find("identity=")? + "identity=".len();
        Some(
            line[at..]
                .split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SchedulerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `curl -k URL` (the scheduler's certificate is self-signed): (HTTP status or 0, body).
fn curl(url: &str) -> (u16, String) {
    let args = ["-sk", "--max-time", "10", "-w", "\n%{http_code}", url];
    let out = Command::new("curl").args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn client(api: &ApiServer, path: &Path) -> Client {
    api.write_kubeconfig(path);
    kube_client(path).await
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

/// Creates a Node and writes its allocatable through the status subresource.
async fn create_node(
    client: &Client,
    name: &str,
    cpu: &str,
    mem: &str,
    labels: &[(&str, &str)],
    taint: Option<(&str, &str, &str)>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut all_labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]);
    for (k, v) in labels {
        all_labels.insert(k.to_string(), v.to_string());
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(all_labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: taint.map(|(k, v, e)| {
                vec![Taint {
                    key: k.into(),
                    value: Some(v.into()),
                    effect: e.into(),
                    time_added: None,
                }]
            }),
            ..Default::default()
        }),
        status: None,
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let resources = quantities(&[("cpu", cpu), ("memory", mem), ("pods", "110")]);
    let status = NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        ..Default::default()
    };
    let patch = serde_json::json!({"status": status});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("node status");
}

fn pod(name: &str, cpu: &str, selector: &[(&str, &str)], tolerate: Option<(&str, &str)>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("busybox".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&[("cpu", cpu)])).filter(|_| !cpu.is_empty()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector: Some(
                selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .filter(|m: &BTreeMap<String, String>| !m.is_empty()),
            tolerations: tolerate.map(|(k, v)| {
                vec![Toleration {
                    key: Some(k.into()),
                    operator: Some("Equal".into()),
                    value: Some(v.into()),
                    effect: Some("NoSchedule".into()),
                    toleration_seconds: None,
                }]
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// A pod labelled `app=spread` that refuses to share a node with another one.
fn spread_pod(name: &str) -> Pod {
    let mut p = pod(name, "", &[], None);
    p.metadata.labels = Some(BTreeMap::from([("app".to_string(), "spread".to_string())]));
    p.spec.as_mut().unwrap().affinity = Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".to_string(), "spread".to_string())])),
                    match_expressions: None,
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    p
}

async fn node_of(pods: &Api<Pod>, name: &str, timeout: Duration) -> String {
    wait_for(&format!("pod {name} to be bound"), timeout, async || {
        pods.get(name).await.ok()?.spec?.node_name
    })
    .await
}

async fn failed_scheduling_message(client: &Client, pod: &str) -> Option<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.ok()?;
    list.items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .filter_map(|e| e.message)
        .next_back()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_places_pods_like_kube_scheduler_and_explains_pending_ones() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    let client = client(&api, &kubeconfig).await;

    tracing_phase("three nodes: small, big, and a tainted gpu node");
    create_node(&client, "n-small", "2", "4Gi", &[], None).await;
    create_node(&client, "n-big", "8", "16Gi", &[], None).await;
    create_node(
        &client,
        "n-gpu",
        "8",
        "16Gi",
        &[("accel", "gpu")],
        Some(("dedicated", "gpu", "NoSchedule")),
    )
    .await;
    let scheduler = SchedulerProc::start(home.path(), &kubeconfig, "a");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let wait = Duration::from_secs(30);

    tracing_phase("least-allocated picks the big node; the tainted one needs a toleration");
    pods.create(&PostParams::default(), &pod("a", "1", &[], None))
        .await
        .unwrap();
    assert_eq!(
        node_of(&pods, "a", wait).await,
        "n-big",
        "{}",
        scheduler.log()
    );
    pods.create(
        &PostParams::default(),
        &pod("b", "1", &[("accel", "gpu")], Some(("dedicated", "gpu"))),
    )
    .await
    .unwrap();
    assert_eq!(node_of(&pods, "b", wait).await, "n-gpu");

    tracing_phase(
        "resources are accounted at once: 7 cpus fill the big node, the next pod goes small",
    );
    pods.create(&PostParams::default(), &pod("e", "7", &[], None))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("f", "1500m", &[], None))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "e", wait).await, "n-big");
    assert_eq!(node_of(&pods, "f", wait).await, "n-small");

    tracing_phase("unschedulable pods: kube-scheduler's message, event and condition");
    pods.create(
        &PostParams::default(),
        &pod("c", "", &[("accel", "gpu")], None),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &pod("d", "100", &[], None))
        .await
        .unwrap();
    let want_c = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";
    let want_d = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";
    for (name, want) in [("c", want_c), ("d", want_d)] {
        let got = wait_for(&format!("FailedScheduling for {name}"), wait, async || {
            failed_scheduling_message(&client, name).await
        })
        .await;
        assert_eq!(got, want);
        let cond = wait_for(
            &format!("PodScheduled condition on {name}"),
            wait,
            async || {
                let p = pods.get(name).await.ok()?;
                p.status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled")
            },
        )
        .await;
        assert_eq!(cond.status, "False");
        assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(cond.message.as_deref(), Some(want));
        assert!(
            pods.get(name)
                .await
                .unwrap()
                .spec
                .unwrap()
                .node_name
                .is_none()
        );
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let scheduled: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        scheduled.contains(&"Successfully assigned default/a to n-big".to_string()),
        "{scheduled:?}"
    );

    tracing_phase("required anti-affinity on the hostname: one per node, the third waits");
    for name in ["s0", "s1", "s2"] {
        pods.create(&PostParams::default(), &spread_pod(name))
            .await
            .unwrap();
    }
    let s0 = node_of(&pods, "s0", wait).await;
    let s1 = node_of(&pods, "s1", wait).await;
    let mut placed = [s0.as_str(), s1.as_str()];
    placed.sort();
    assert_eq!(placed, ["n-big", "n-small"], "one per untainted node");
    let want_s2 = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.";
    let got = wait_for("FailedScheduling for s2", wait, async || {
        failed_scheduling_message(&client, "s2").await
    })
    .await;
    assert_eq!(got, want_s2);

    tracing_phase("why-pending prints every node's verdict with numbers");
    let out = Command::new(common::skiff_bin())
        .args(["why-pending", "d", "-n", "default", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .expect("run why-pending");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("n-small: Insufficient cpu: requests 100, allocatable 2, in use 1500m"),
        "{text}"
    );
    assert!(
        text.contains("n-big: Insufficient cpu: requests 100, allocatable 8, in use 8"),
        "{text}"
    );
    assert!(
        text.contains("n-gpu: untolerated taint dedicated=gpu:NoSchedule"),
        "{text}"
    );

    tracing_phase("a new node that fits wakes the parked pod");
    create_node(&client, "n-huge", "128", "64Gi", &[], None).await;
    assert_eq!(node_of(&pods, "d", wait).await, "n-huge");
    assert_eq!(node_of(&pods, "s2", wait).await, "n-huge");

    tracing_phase("metrics");
    let scheduled =
        "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"} 8\n";
    let metrics = wait_for("8 scheduled in the metrics", wait, async || {
        let (_, m) = curl(&format!(
            "https://127.0.0.1:{}/metrics",
            scheduler.metrics_port
        ));
        m.contains(scheduled).then_some(m)
    })
    .await;
    assert!(metrics.contains("scheduler_schedule_attempts_total{result=\"unschedulable\",profile=\"default-scheduler\"}"), "{metrics}");
    assert!(
        metrics.contains("scheduler_pending_pods{queue=\"unschedulable\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scheduler_pod_scheduling_duration_seconds_count"),
        "{metrics}"
    );
}

fn tracing_phase(what: &str) {
    eprintln!("--- {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_one_leader_failover_binds_every_pod_once() {
    // Issue 14's shape: a 3-member store, two API servers, one scheduler on each.
    let store = Backend::Skiff(common::Cluster::start(3));
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let api2 = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    let kubeconfig2 = home.path().join("kubeconfig2");
    api2.write_kubeconfig(&kubeconfig2);
    let client = client(&api, &kubeconfig).await;
    for i in 0..5 {
        create_node(&client, &format!("n{i}"), "100", "100Gi", &[], None).await;
    }

    tracing_phase("every nodeName change of every pod, as the watch sees it");
    let bindings: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let recorder = {
        let bindings = bindings.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        tokio::spawn(async move {
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = stream.next().await {
                let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event else {
                    continue;
                };
                let Some(node) = p.spec.and_then(|s| s.node_name) else {
                    continue;
                };
                let mut b = bindings.lock().unwrap();
                let seen = b.entry(p.metadata.name.unwrap_or_default()).or_default();
                if seen.last() != Some(&node) {
                    seen.push(node);
                }
            }
        })
    };

    tracing_phase("two schedulers: exactly one takes the Lease");
    let mut procs = [
        SchedulerProc::start(home.path(), &kubeconfig, "one"),
        SchedulerProc::start(home.path(), &kubeconfig2, "two"),
    ];
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = wait_for("a lease holder", Duration::from_secs(30), async || {
        leases
            .get("kube-scheduler")
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    })
    .await;
    let ids: Vec<Option<String>> = wait_for(
        "the leader's log line",
        Duration::from_secs(10),
        async || {
            let ids: Vec<Option<String>> = procs.iter().map(|p| p.leader_identity()).collect();
            ids.iter().any(|i| i.is_some()).then_some(ids)
        },
    )
    .await;
    assert_eq!(
        ids.iter().filter(|i| i.is_some()).count(),
        1,
        "exactly one leader: {ids:?}"
    );
    let leader = ids
        .iter()
        .position(|i| i.as_deref() == Some(holder.as_str()))
        .expect("holder is one of ours");

    tracing_phase("create pods, kill -9 the leader midway");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let total = 500;
    for i in 0..total / 2 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), "100m", &[], None),
        )
        .await
        .unwrap();
    }
    procs[leader].kill9();
    let killed_at = Instant::now();
    // The lease is polled while the second half is created, so the handover measured is
    // the scheduler's, not how long the creates took on a busy machine.
    let takeover = {
        let leases = leases.clone();
        let holder = holder.clone();
        tokio::spawn(async move {
            while killed_at.elapsed() < Duration::from_secs(60) {
                if let Ok(lease) = leases.get("kube-scheduler").await
                    && let Some(h) = lease.spec.and_then(|spec| spec.holder_identity)
                    && h != holder
                    && !h.is_empty()
                {
                    return Some((h, killed_at.elapsed()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        })
    };
    for i in total / 2..total {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), "100m", &[], None),
        )
        .await
        .unwrap();
    }
    let (new_holder, handover) = takeover
        .await
        .expect("lease poller")
        .expect("a new lease holder within 60 s of the kill");
    eprintln!("handover after {handover:?} to {new_holder}");
    // The survivor takes over within lease duration (15 s) + one retry (2 s, jittered up to
    // 2.4 s) of the last renewal *it saw*; it sees a renewal up to one retry after it was
    // written, and the kill may come right after one: at most 15 + 2.4 + 2.4 s after the kill
    // (client-go counts on the candidate's clock too), plus polling slack.
    assert!(
        handover <= Duration::from_millis(15_000 + 2 * 2_400 + 600),
        "handover took {handover:?}"
    );
    assert_eq!(
        Some(new_holder.as_str()),
        procs[1 - leader].leader_identity().as_deref()
    );

    tracing_phase("every pod ends bound, exactly once");
    wait_for("all pods bound", Duration::from_secs(60), async || {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        (bound == total).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    recorder.abort();
    {
        let b = bindings.lock().unwrap();
        assert_eq!(b.len(), total);
        for (name, nodes) in b.iter() {
            assert_eq!(nodes.len(), 1, "pod {name} moved between nodes: {nodes:?}");
        }
    }
    let survivor = procs[1 - leader].log();
    assert!(!survivor.contains("panicked"), "{survivor}");

    tracing_phase("SIGTERM: the leader releases the Lease and exits 0");
    let pid = procs[1 - leader].child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for(
        "the survivor to exit",
        Duration::from_secs(10),
        async || procs[1 - leader].child.try_wait().ok().flatten(),
    )
    .await;
    assert!(status.success(), "{status:?}: {}", procs[1 - leader].log());
    let spec = leases.get("kube-scheduler").await.unwrap().spec.unwrap();
    assert_eq!(
        spec.holder_identity.as_deref().unwrap_or(""),
        "",
        "released: {spec:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_within_the_renew_deadline() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let mut api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    let client = client(&api, &kubeconfig).await;
    let mut scheduler = SchedulerProc::start(home.path(), &kubeconfig, "alone");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    wait_for("the lease", Duration::from_secs(30), async || {
        leases
            .get("kube-scheduler")
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    })
    .await;
    // The secure port speaks HTTPS only, and /healthz needs no credentials.
    let port = scheduler.metrics_port;
    let healthz = curl(&format!("https://127.0.0.1:{port}/healthz"));
    assert_eq!(healthz, (200, "ok".to_string()));
    let plain = curl(&format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(
        plain.0, 0,
        "plain HTTP on the secure port answered: {plain:?}"
    );

    tracing_phase("the API server goes away: renewals fail, the leader must stop by itself");
    api.kill9();
    let killed_at = Instant::now();
    let status = loop {
        if let Some(status) = scheduler.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "still running: {}",
            scheduler.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stopped_after = killed_at.elapsed();
    eprintln!("leader stopped {stopped_after:?} after its API server died");
    assert!(!status.success());
    // Renew deadline 10 s (counted from the last renewal, at most one retry period before the
    // kill) plus slack.
    assert!(
        stopped_after <= Duration::from_millis(10_000 + 1_000),
        "took {stopped_after:?}"
    );
    assert!(
        scheduler.log().contains("leader election lost"),
        "{}",
        scheduler.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_keeps_zones_even() {
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    let client = client(&api, &kubeconfig).await;
    // Two nodes in z1, one in z2: least-allocated alone would put 2 of 3 pods in z1.
    for (name, zone) in [("a1", "z1"), ("a2", "z1"), ("b1", "z2")] {
        create_node(
            &client,
            name,
            "8",
            "16Gi",
            &[("topology.kubernetes.io/zone", zone)],
            None,
        )
        .await;
    }
    let _scheduler = SchedulerProc::start(home.path(), &kubeconfig, "spread");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..6 {
        let mut p = pod(&format!("w{i}"), "100m", &[], None);
        p.metadata.labels = Some(BTreeMap::from([("app".to_string(), "web".to_string())]));
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![k8s_openapi::api::core::v1::TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "topology.kubernetes.io/zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                    match_expressions: None,
                }),
                ..Default::default()
            }]);
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let mut per_zone = BTreeMap::new();
    for i in 0..6 {
        let node = node_of(&pods, &format!("w{i}"), Duration::from_secs(30)).await;
        let zone = if node.starts_with('a') { "z1" } else { "z2" };
        *per_zone.entry(zone).or_insert(0) += 1;
    }
    assert_eq!(per_zone, BTreeMap::from([("z1", 3), ("z2", 3)]));
}

async fn create_priority_class(client: &Client, name: &str, value: i32, policy: &str) {
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let class = PriorityClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        value,
        preemption_policy: Some(policy.into()),
        ..Default::default()
    };
    classes
        .create(&PostParams::default(), &class)
        .await
        .expect("create priority class");
}

fn pod_of_class(name: &str, cpu: &str, class: Option<&str>) -> Pod {
    let mut p = pod(name, cpu, &[], None);
    p.spec.as_mut().unwrap().priority_class_name = class.map(str::to_string);
    p
}

async fn phase_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok()?.status?.phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_the_fewest_low_priority_pods() {
    let began = Instant::now();
    let store = Backend::skiff();
    let home = ApiHome::new();
    let api = home.start(&store.endpoints(), &[]);
    let kubeconfig = home.path().join("kubeconfig");
    let client = client(&api, &kubeconfig).await;
    let sim = NodeSim::start(
        home.path(),
        &kubeconfig,
        &[
            OsStr::new("--nodes"),
            OsStr::new("1"),
            OsStr::new("--cpu"),
            OsStr::new("4"),
            OsStr::new("--memory"),
            OsStr::new("8Gi"),
        ],
    );
    let scheduler = SchedulerProc::start(home.path(), &kubeconfig, "preempt");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let wait = Duration::from_secs(30);
    let node = "sim-node-0";

    tracing_phase("four 1-cpu pods of priority 0 fill the 4-cpu simulated node");
    let low: Vec<String> = (0..4).map(|i| format!("low-{i}")).collect();
    for name in &low {
        pods.create(&PostParams::default(), &pod_of_class(name, "1", None))
            .await
            .unwrap();
    }
    for name in &low {
        let bound = node_of(&pods, name, wait).await;
        assert_eq!(bound, node, "{}", scheduler.log());
    }
    for name in &low {
        wait_for(&format!("{name} Running"), wait, async || {
            (phase_of(&pods, name).await.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }

    tracing_phase("a 1500m pod of PriorityClass high (1000) preempts exactly two of them");
    create_priority_class(&client, "high", 1000, "PreemptLowerPriority").await;
    pods.create(
        &PostParams::default(),
        &pod_of_class("high", "1500m", Some("high")),
    )
    .await
    .unwrap();
    let nominated = wait_for("high's nominatedNodeName", wait, async || {
        pods.get("high").await.ok()?.status?.nominated_node_name
    })
    .await;
    assert_eq!(nominated, node);
    assert_eq!(
        node_of(&pods, "high", wait).await,
        node,
        "{}",
        scheduler.log()
    );
    wait_for("high Running", wait, async || {
        (phase_of(&pods, "high").await.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let high = pods.get("high").await.unwrap();
    assert_eq!(high.spec.as_ref().unwrap().priority, Some(1000));
    let left: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with("low-"))
        .collect();
    assert_eq!(left.len(), 2, "two victims are enough, no more: {left:?}");
    let uid = high.metadata.uid.clone().unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let preempted = wait_for("two Preempted events", wait, async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        let found: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Preempted"))
            .collect();
        (found.len() == 2).then_some(found)
    })
    .await;
    for event in &preempted {
        let victim = event.involved_object.name.clone().unwrap_or_default();
        assert!(low.contains(&victim) && !left.contains(&victim), "{victim}");
        assert_eq!(
            event.message.as_deref(),
            Some(format!("Preempted by pod {uid} on node {node}").as_str())
        );
    }

    tracing_phase("preemptionPolicy: Never stays Pending with upstream's message");
    create_priority_class(&client, "high-never", 1000, "Never").await;
    pods.create(
        &PostParams::default(),
        &pod_of_class("never", "1", Some("high-never")),
    )
    .await
    .unwrap();
    let want = "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.";
    let got = wait_for("FailedScheduling for never", wait, async || {
        failed_scheduling_message(&client, "never").await
    })
    .await;
    assert_eq!(got, want);
    let never = pods.get("never").await.unwrap();
    assert!(never.spec.unwrap().node_name.is_none());
    assert_eq!(never.status.and_then(|s| s.nominated_node_name), None);
    let still = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with("low-"))
        .count();
    assert_eq!(still, 2, "nothing more was evicted");

    tracing_phase("metrics");
    let (status, metrics) = curl(&format!(
        "https://127.0.0.1:{}/metrics",
        scheduler.metrics_port
    ));
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("scheduler_preemption_victims_sum 2\n")
            && metrics.contains("scheduler_preemption_victims_count 1\n"),
        "{metrics}"
    );
    let attempts: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("scheduler_preemption_attempts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(attempts >= 2.0, "{metrics}");
    assert!(!sim.log().contains("panicked"), "{}", sim.log());
    eprintln!("preemption test took {:?}", began.elapsed());
}

//! The node lifecycle controller and PodGC as real processes: `skiff controller-manager`
//! (nodelifecycle, podgc, deployment, replicaset) with `skiff apiserver` on a `skiff store`,
//! `skiff scheduler` and three simulated nodes (`skiff node-sim`). A node named in the
//! simulator's stop file falls silent: it goes `Ready=Unknown` (`NodeNotReady` Event), gets the
//! `unreachable` NoSchedule and NoExecute taints, its Deployment pods (tolerating `unreachable`
//! for 5 s) are evicted after those 5 s (`TaintManagerEviction`), a bare pod tolerating it for
//! 0 s at once, one tolerating it forever stays, the Deployment is whole again elsewhere, and
//! once the Node object is deleted PodGC force-deletes every pod still bound to it.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use control_plane::{Cluster, Proc, poll_until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

/// The grace period the manager runs with. node-sim renews Leases every 10 s, so the grace
/// must exceed that with room for a late renewal (upstream asks for several renewals).
const GRACE: Duration = Duration::from_secs(20);
/// How long the Deployment's pods tolerate `unreachable`.
const TOLERATION_SECONDS: i64 = 5;
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// How often [`wait_for`] checks.
const POLL: Duration = Duration::from_millis(250);

/// Store, API server, `nodes` simulated nodes that stop renewing those named in the returned
/// stop file, and a scheduler.
async fn start_cluster(nodes: usize) -> (Cluster, PathBuf) {
    let mut cluster = Cluster::api_only(&[]).await;
    let stop_file = cluster.home.path().join("stopped-nodes");
    std::fs::write(&stop_file, "").expect("stop file");
    cluster.start_nodes(
        nodes,
        &[OsStr::new("--stop-renewing-file"), stop_file.as_os_str()],
    );
    cluster.start_scheduler();
    (cluster, stop_file)
}

/// [`poll_until`] every [`POLL`], failing with `diagnostics`.
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    diagnostics: impl Fn() -> String,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    poll_until(what, timeout, POLL, diagnostics, check).await
}

fn ready_status(node: &Node) -> Option<(String, Option<String>)> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

async fn pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn events(client: &Client, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_its_pods_evicted_and_collected_once_the_node_is_gone() {
    let (cluster, stop_file) = start_cluster(3).await;
    let grace = format!("--node-monitor-grace-period={}s", GRACE.as_secs());
    let manager = Proc::manager(
        cluster.home.path(),
        &cluster.kubeconfig,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--controllers=nodelifecycle,podgc,deployment,replicaset",
            &grace,
            "--node-monitor-period=1s",
        ],
    );
    let client = cluster.client.clone();
    let diag = || {
        format!(
            "--- controller-manager log (tail) ---\n{}\n--- node-sim log (tail) ---\n{}",
            tail(&manager.log(), 60),
            tail(&cluster.node_sim().log(), 20)
        )
    };
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("3 Ready nodes", Duration::from_secs(60), diag, async || {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| ready_status(n).is_some_and(|(s, _)| s == "True"))
            .count();
        (ready == 3).then_some(())
    })
    .await;

    // A Deployment of 6 whose pods tolerate `unreachable` for 5 s.
    cluster.kubectl_ok_with(
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox",
            "--replicas=6",
        ],
        diag,
    );
    let toleration = serde_json::json!({"spec": {"template": {"spec": {"tolerations": [{
        "key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
        "tolerationSeconds": TOLERATION_SECONDS,
    }]}}}})
    .to_string();
    cluster.kubectl_ok_with(
        &["patch", "deployment/web", "--type=merge", "-p", &toleration],
        diag,
    );
    cluster.kubectl_ok_with(
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        diag,
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let live_web = async |client: &Client| -> Vec<Pod> {
        pods(client)
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get("app").map(String::as_str) == Some("web"))
            })
            .collect()
    };
    let before = wait_for(
        "6 tolerating web pods bound",
        Duration::from_secs(60),
        diag,
        async || {
            let pods = live_web(&client).await;
            let tolerating = pods.iter().all(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.tolerations.as_ref())
                    .is_some_and(|t| {
                        t.iter().any(|t| {
                            t.key.as_deref() == Some(UNREACHABLE)
                                && t.toleration_seconds == Some(TOLERATION_SECONDS)
                        })
                    })
            });
            (pods.len() == 6 && tolerating && pods.iter().all(|p| node_of(p).is_some()))
                .then_some(pods)
        },
    )
    .await;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for pod in &before {
        *per_node
            .entry(node_of(pod).unwrap().to_string())
            .or_default() += 1;
    }
    eprintln!("web pods per node: {per_node:?}");
    assert!(per_node.len() >= 2, "spread over nodes: {per_node:?}");
    let (victim, victim_pods) = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, c)| (n.clone(), *c))
        .unwrap();
    let victim_pod_names: Vec<String> = before
        .iter()
        .filter(|p| node_of(p) == Some(victim.as_str()))
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(victim_pod_names.len(), victim_pods);

    // The node falls silent.
    std::fs::write(&stop_file, format!("{victim}\n")).unwrap();
    let stopped_at = Instant::now();
    wait_for(
        "the silent node to go Ready=Unknown",
        GRACE + Duration::from_secs(30),
        diag,
        async || {
            let node = nodes.get(&victim).await.ok()?;
            let (status, reason) = ready_status(&node)?;
            (status == "Unknown" && reason.as_deref() == Some("NodeStatusUnknown")).then_some(())
        },
    )
    .await;
    eprintln!("Ready=Unknown after {:?}", stopped_at.elapsed());
    let node = nodes.get(&victim).await.unwrap();
    for c in node.status.as_ref().unwrap().conditions.as_ref().unwrap() {
        if ["MemoryPressure", "DiskPressure", "PIDPressure"].contains(&c.type_.as_str()) {
            assert_eq!(c.status, "Unknown", "{c:?}");
            assert_eq!(
                c.message.as_deref(),
                Some("Kubelet stopped posting node status.")
            );
        }
    }
    let taints = wait_for(
        "unreachable NoSchedule and NoExecute taints",
        Duration::from_secs(15),
        diag,
        async || {
            let node = nodes.get(&victim).await.ok()?;
            let taints = node.spec?.taints?;
            let has = |effect: &str| {
                taints
                    .iter()
                    .any(|t| t.key == UNREACHABLE && t.effect == effect)
            };
            (has("NoSchedule") && has("NoExecute")).then_some(taints)
        },
    )
    .await;
    let no_execute = taints
        .iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
        .unwrap();
    assert!(no_execute.time_added.is_some(), "{no_execute:?}");
    wait_for(
        "a NodeNotReady Event",
        Duration::from_secs(15),
        diag,
        async || {
            events(&client, "NodeNotReady")
                .await
                .into_iter()
                .find(|e| {
                    e.involved_object.kind.as_deref() == Some("Node")
                        && e.involved_object.name.as_deref() == Some(victim.as_str())
                })
                .map(|e| {
                    assert_eq!(
                        e.message.as_deref(),
                        Some(format!("Node {victim} status is now: NodeNotReady").as_str())
                    )
                })
        },
    )
    .await;

    // A bare pod bound to the node, tolerating `unreachable` for 0 s: evicted at once.
    let bare: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare", "namespace": "default"},
        "spec": {
            "nodeName": victim,
            "containers": [{"name": "c", "image": "busybox"}],
            "tolerations": [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 0}],
        },
    }))
    .unwrap();
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    pod_api.create(&PostParams::default(), &bare).await.unwrap();
    wait_for(
        "the bare pod to be evicted at once",
        Duration::from_secs(10),
        diag,
        async || match pod_api.get("bare").await {
            Ok(pod) => pod.metadata.deletion_timestamp.map(drop),
            Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
            Err(_) => None,
        },
    )
    .await;

    // A pod tolerating both NoExecute taints forever stays (until its node is deleted).
    let forever: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "forever", "namespace": "default"},
        "spec": {
            "nodeName": victim,
            "containers": [{"name": "c", "image": "busybox"}],
            "tolerations": [
                {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
            ],
        },
    }))
    .unwrap();
    pod_api
        .create(&PostParams::default(), &forever)
        .await
        .unwrap();

    // The Deployment's pods go once their 5 s run out.
    wait_for(
        "the silent node's web pods to be evicted",
        Duration::from_secs(30),
        diag,
        async || {
            let all = pods(&client).await;
            victim_pod_names
                .iter()
                .all(|name| {
                    all.iter()
                        .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
                        .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                })
                .then_some(())
        },
    )
    .await;
    let evicted_after = stopped_at.elapsed();
    let taint_time = no_execute.time_added.as_ref().unwrap().0;
    let evictions = events(&client, "TaintManagerEviction").await;
    for name in &victim_pod_names {
        let message = format!("Marking for deletion Pod default/{name}");
        assert!(
            evictions
                .iter()
                .any(|e| e.message.as_deref() == Some(message.as_str())),
            "no {message:?} among {:?}",
            evictions.iter().map(|e| &e.message).collect::<Vec<_>>()
        );
    }
    // Not before the toleration ran out (the Event is written when the deletion starts).
    for e in &evictions {
        if e.involved_object.name.as_deref() == Some("bare") {
            continue;
        }
        if let Some(first) = e.first_timestamp.as_ref() {
            let waited = first.0.duration_since(taint_time);
            assert!(
                waited >= k8s_openapi::jiff::SignedDuration::from_secs(TOLERATION_SECONDS - 1),
                "evicted {waited:?} after the taint: {e:?}"
            );
        }
    }
    // Evicted pods that still exist (their kubelet is gone) carry the DisruptionTarget.
    for pod in pods(&client).await {
        if victim_pod_names.contains(pod.metadata.name.as_ref().unwrap()) {
            let target = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget").cloned());
            assert_eq!(
                target.and_then(|c| c.reason).as_deref(),
                Some("DeletionByTaintManager"),
                "{}",
                pod.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
    eprintln!("pods evicted after {evicted_after:?}");

    // The Deployment is whole again, nowhere on the silent node.
    wait_for(
        "web 6/6 available off the silent node",
        Duration::from_secs(60),
        diag,
        async || {
            let d = deployments.get("web").await.ok()?;
            let s = d.status?;
            let pods = live_web(&client).await;
            let off = pods.iter().all(|p| node_of(p) != Some(victim.as_str()));
            (s.available_replicas == Some(6) && pods.len() == 6 && off).then_some(())
        },
    )
    .await;

    let kept = pod_api
        .get("forever")
        .await
        .expect("the forever-tolerating pod stays");
    assert!(kept.metadata.deletion_timestamp.is_none(), "{kept:?}");

    // The Node object goes: PodGC force-deletes whatever is still bound to it (after its
    // 40 s quarantine and a 20 s period at most).
    nodes
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "PodGC to remove the deleted node's pods",
        Duration::from_secs(120),
        diag,
        async || {
            let left: Vec<String> = pods(&client)
                .await
                .into_iter()
                .filter(|p| node_of(p) == Some(victim.as_str()))
                .filter_map(|p| p.metadata.name)
                .collect();
            left.is_empty().then_some(())
        },
    )
    .await;
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.status.unwrap().available_replicas, Some(6));
    let log = manager.log();
    assert!(log.contains("podgc"), "{}", tail(&log, 40));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

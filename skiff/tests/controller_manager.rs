//! `skiff controller-manager` as a real process, with `skiff apiserver` on a `skiff store`,
//! `skiff scheduler` and simulated nodes (`skiff node-sim`), driven with kubectl:
//! `kubectl create deployment` becomes N/N available, `kubectl set image` rolls out within
//! maxSurge and maxUnavailable (sampled all along), `kubectl rollout status/history/undo/
//! pause/resume/restart` and a scale mid-rollout work unchanged; a ReplicaSet under a churn of
//! pod deletions never runs more pods than it wants; with two managers (on two API servers
//! over a three-member store) exactly one acts, and a kill -9 of it mid-rollout hands over
//! and the rollout completes within maxSurge.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control_plane::{Cluster, Proc, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn owned_by(meta: &kube::api::ObjectMeta, uids: &[String]) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| uids.contains(&r.uid))
}

/// Extremes seen by a [`Sampler`] while a rollout runs.
#[derive(Debug, Default, Clone)]
struct Extremes {
    samples: usize,
    /// Most `spec.replicas` summed over the Deployment's ReplicaSets.
    max_replica_set_replicas: i32,
    /// Most pods of the Deployment not being deleted.
    max_pods: usize,
    /// Fewest ready pods of the Deployment.
    min_ready: usize,
}

/// Samples a Deployment's ReplicaSets and pods every 50 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    extremes: Arc<Mutex<Extremes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(client: &Client, deployment: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let extremes = Arc::new(Mutex::new(Extremes {
            min_ready: usize::MAX,
            ..Extremes::default()
        }));
        let (client, name) = (client.clone(), deployment.to_string());
        let (stop_in, extremes_in) = (stop.clone(), extremes.clone());
        let task = tokio::spawn(async move {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
            let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
            let pods: Api<Pod> = Api::namespaced(client, "default");
            while !stop_in.load(Ordering::SeqCst) {
                let (Ok(d), Ok(rss), Ok(pods)) = (
                    deployments.get(&name).await,
                    replica_sets.list(&ListParams::default()).await,
                    pods.list(&ListParams::default()).await,
                ) else {
                    continue;
                };
                let d_uid = vec![d.metadata.uid.clone().unwrap_or_default()];
                let ours: Vec<&ReplicaSet> = rss
                    .items
                    .iter()
                    .filter(|rs| owned_by(&rs.metadata, &d_uid))
                    .collect();
                let rs_uids: Vec<String> = ours
                    .iter()
                    .filter_map(|rs| rs.metadata.uid.clone())
                    .collect();
                let replicas: i32 = ours
                    .iter()
                    .map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                    .sum();
                let live: Vec<&Pod> = pods
                    .items
                    .iter()
                    .filter(|p| owned_by(&p.metadata, &rs_uids))
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                let ready = live.iter().filter(|p| is_ready(p)).count();
                {
                    let mut e = extremes_in.lock().unwrap();
                    e.samples += 1;
                    e.max_replica_set_replicas = e.max_replica_set_replicas.max(replicas);
                    e.max_pods = e.max_pods.max(live.len());
                    e.min_ready = e.min_ready.min(ready);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Sampler {
            stop,
            extremes,
            task,
        }
    }

    async fn finish(self) -> Extremes {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.extremes.lock().unwrap().clone()
    }
}

/// `kubectl rollout status` until it reports success (it fails on ProgressDeadlineExceeded).
fn rollout_status(cluster: &Cluster, name: &str) -> String {
    cluster.kubectl_ok(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=90s",
    ])
}

async fn deployment(client: &Client, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), "default")
        .get(name)
        .await
        .expect("get deployment")
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// The images of the Deployment's live pods, sorted.
async fn pod_images(client: &Client, selector: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods");
    let mut images: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap_or_default()
        })
        .collect();
    images.sort();
    images
}

fn assert_within_bounds(what: &str, e: &Extremes, replicas: i32, surge: i32, unavailable: i32) {
    eprintln!("{what}: {e:?}");
    assert!(e.samples > 5, "{what}: too few samples: {e:?}");
    assert!(
        e.max_replica_set_replicas <= replicas + surge,
        "{what}: ReplicaSets wanted more than replicas + maxSurge: {e:?}"
    );
    assert!(
        e.min_ready as i32 >= replicas - unavailable,
        "{what}: fewer than replicas - maxUnavailable pods ready: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_roll_back_pause_resume_restart_and_scale() {
    let cluster = Cluster::start(3).await;
    let manager = cluster.manager("one", &["--leader-elect=false"]);
    let client = cluster.client.clone();

    // Create: 5/5 available.
    cluster.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=5",
    ]);
    let status = rollout_status(&cluster, "web");
    assert!(
        status.contains("successfully rolled out"),
        "{status}\n{}",
        manager.log()
    );
    let d = deployment(&client, "web").await;
    let s = d.status.clone().unwrap();
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.ready_replicas,
            s.available_replicas
        ),
        (Some(5), Some(5), Some(5), Some(5)),
        "{s:?}"
    );
    let revision = |d: &Deployment| {
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
    };
    assert_eq!(revision(&d).as_deref(), Some("1"));

    // A rolling update: 25% of 5 → maxSurge 2, maxUnavailable 1.
    let sampler = Sampler::start(&client, "web");
    cluster.kubectl_ok(&["set", "image", "deployment/web", "busybox=busybox:1.36"]);
    rollout_status(&cluster, "web");
    let e = sampler.finish().await;
    assert_within_bounds("set image", &e, 5, 2, 1);
    assert_eq!(
        pod_images(&client, "app=web").await,
        vec!["busybox:1.36"; 5]
    );
    let history = cluster.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );

    // Undo: back to the first template, as revision 3.
    let sampler = Sampler::start(&client, "web");
    cluster.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    rollout_status(&cluster, "web");
    assert_within_bounds("undo", &sampler.finish().await, 5, 2, 1);
    let d = deployment(&client, "web").await;
    assert_eq!(image_of(&d), "busybox");
    assert_eq!(revision(&d).as_deref(), Some("3"));
    assert_eq!(pod_images(&client, "app=web").await, vec!["busybox"; 5]);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        replica_sets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2,
        "undo reuses the first ReplicaSet"
    );

    // Pause: a template change makes no new ReplicaSet; resume rolls it out.
    cluster.kubectl_ok(&["rollout", "pause", "deployment/web"]);
    cluster.kubectl_ok(&["set", "image", "deployment/web", "busybox=busybox:1.35"]);
    wait_for(
        "the Paused condition",
        Duration::from_secs(20),
        async || {
            let d = deployment(&client, "web").await;
            let conditions = d.status?.conditions?;
            conditions
                .iter()
                .any(|c| {
                    c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused")
                })
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replica_sets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2,
        "a paused Deployment made a ReplicaSet"
    );
    cluster.kubectl_ok(&["rollout", "resume", "deployment/web"]);
    rollout_status(&cluster, "web");
    assert_eq!(
        pod_images(&client, "app=web").await,
        vec!["busybox:1.35"; 5]
    );

    // Scale mid-rollout: the rollout ends with the new count, all updated.
    cluster.kubectl_ok(&["set", "image", "deployment/web", "busybox=busybox:1.34"]);
    cluster.kubectl_ok(&["scale", "deployment/web", "--replicas=8"]);
    rollout_status(&cluster, "web");
    assert_eq!(
        pod_images(&client, "app=web").await,
        vec!["busybox:1.34"; 8]
    );

    // Restart: a new ReplicaSet with the same image.
    let before = replica_sets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    cluster.kubectl_ok(&["rollout", "restart", "deployment/web"]);
    rollout_status(&cluster, "web");
    let after = replica_sets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(after, before + 1, "restart makes one new ReplicaSet");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let restarted = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))
        })
        .count();
    assert_eq!(restarted, 8);

    // What kubectl describe shows: the controller's events.
    let describe = cluster.kubectl_ok(&["describe", "deployment", "web"]);
    assert!(describe.contains("ScalingReplicaSet"), "{describe}");
    assert!(describe.contains("NewReplicaSetAvailable"), "{describe}");

    // Orphan: the Deployment goes, its ReplicaSets and pods stay without their owner.
    cluster.kubectl_ok(&["delete", "deployment", "web", "--cascade=orphan"]);
    let orphans = wait_for(
        "orphaned ReplicaSets",
        Duration::from_secs(30),
        async || {
            let list = replica_sets.list(&ListParams::default()).await.ok()?;
            let gone = Api::<Deployment>::namespaced(client.clone(), "default")
                .get_opt("web")
                .await
                .ok()?
                .is_none();
            let orphaned = list.items.iter().all(|rs| {
                rs.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(|r| r.is_empty())
            });
            (gone && orphaned && !list.items.is_empty()).then_some(list.items.len())
        },
    )
    .await;
    assert_eq!(orphans, after, "every ReplicaSet stays");
    assert_eq!(
        pod_images(&client, "app=web").await.len(),
        8,
        "the pods stay"
    );
    // Background (kubectl's default) on the ReplicaSets: the garbage collector takes the pods.
    cluster.kubectl_ok(&["delete", "replicasets", "--all"]);
    wait_for(
        "the pods to be collected",
        Duration::from_secs(30),
        async || {
            pod_images(&client, "app=web")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    drop(manager);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_under_pod_churn_never_overshoots() {
    let cluster = Cluster::start(2).await;
    let manager = cluster.manager("one", &["--leader-elect=false", "--controllers=replicaset"]);
    let client = cluster.client.clone();
    let manifest = r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"churn"},
      "spec":{"replicas":10,"selector":{"matchLabels":{"app":"churn"}},
      "template":{"metadata":{"labels":{"app":"churn"}},
      "spec":{"containers":[{"name":"c","image":"busybox"}]}}}}"#;
    let file = cluster.home.path().join("churn.json");
    std::fs::write(&file, manifest).unwrap();
    cluster.kubectl_ok(&["create", "-f", file.to_str().unwrap()]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let live = async || {
        pods.list(&ListParams::default().labels("app=churn"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    wait_for("10 pods", Duration::from_secs(30), async || {
        (live().await.len() == 10).then_some(())
    })
    .await;

    // Every pod the ReplicaSet ever makes, by uid: exactly one replacement per deletion
    // means no create was ever doubled (a doubled one would be deleted again as surplus and
    // might never show in a count sample).
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let seen_in = seen.clone();
    let watch_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let watching = tokio::spawn(async move {
        use futures::StreamExt;
        let config = kube::runtime::watcher::Config::default().labels("app=churn");
        let mut events = kube::runtime::watcher(watch_pods, config).boxed();
        while let Some(event) = events.next().await {
            if let Ok(
                kube::runtime::watcher::Event::Apply(pod)
                | kube::runtime::watcher::Event::InitApply(pod)
                | kube::runtime::watcher::Event::Delete(pod),
            ) = event
            {
                seen_in
                    .lock()
                    .unwrap()
                    .insert(pod.metadata.uid.unwrap_or_default());
            }
        }
    });
    // 200 deletions, each of a live pod, while the count is sampled.
    let mut deletes = 0;
    let mut max_seen = 0;
    let churn_deadline = Instant::now() + Duration::from_secs(120);
    while deletes < 200 {
        let now = live().await;
        max_seen = max_seen.max(now.len());
        assert!(
            now.len() <= 10,
            "{} pods of a 10-replica ReplicaSet\n{}",
            now.len(),
            manager.log()
        );
        match now.get(deletes % now.len().max(1)) {
            Some(victim) => {
                let name = victim.metadata.name.clone().unwrap();
                if pods.delete(&name, &DeleteParams::default()).await.is_ok() {
                    deletes += 1;
                }
            }
            None => {
                assert!(
                    Instant::now() < churn_deadline,
                    "no pods to delete for too long\n{}",
                    manager.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // It settles back at exactly 10, and stays there.
    wait_for("10 pods again", Duration::from_secs(30), async || {
        (live().await.len() == 10).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(live().await.len(), 10);
    let log = manager.log();
    assert!(max_seen <= 10, "{max_seen}\n{log}");
    assert_eq!(
        seen.lock().unwrap().len(),
        10 + deletes,
        "pods made for {deletes} deletions\n{log}"
    );

    // A jump to 300: hundreds of creates in flight while their watch events lag behind.
    cluster.kubectl_ok(&["scale", "replicaset/churn", "--replicas=300"]);
    wait_for("300 pods", Duration::from_secs(60), async || {
        (live().await.len() == 300).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = manager.log();
    assert_eq!(live().await.len(), 300, "{log}");
    watching.abort();
    let made = seen.lock().unwrap().len();
    assert_eq!(
        made,
        300 + deletes,
        "pods made for 300 replicas and {deletes} deletions\n{log}"
    );
    let rs: ReplicaSet = Api::namespaced(client, "default")
        .get("churn")
        .await
        .unwrap();
    assert_eq!(rs.status.unwrap().replicas, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_managers_one_acts_and_a_kill_mid_rollout_hands_over() {
    // The HA shape: a three-member store, two API servers, each manager on its own.
    let three_members = apiserver::Backend::Skiff(common::Cluster::start(3));
    let mut cluster = Cluster::api_only_on(three_members, &[]).await;
    cluster.start_nodes(3, &[]);
    cluster.start_scheduler();
    let (_second_api, second_kubeconfig) = cluster.another_api_server();
    let le = [
        "--leader-elect-lease-duration=4s",
        "--leader-elect-renew-deadline=3s",
        "--leader-elect-retry-period=500ms",
    ];
    let mut a = cluster.manager("a", &le);
    let mut b = Proc::manager(
        cluster.home.path(),
        &second_kubeconfig,
        "controller-manager-b",
        &le,
    );
    let client = cluster.client.clone();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = wait_for("a Lease holder", Duration::from_secs(20), async || {
        leases
            .get("kube-controller-manager")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    let acquired = |m: &Proc| m.log().contains("successfully acquired lease");
    assert!(
        acquired(&a) != acquired(&b),
        "exactly one manager holds the Lease: {holder}"
    );

    cluster.kubectl_ok(&[
        "create",
        "deployment",
        "ha",
        "--image=busybox",
        "--replicas=8",
    ]);
    rollout_status(&cluster, "ha");
    // 25% of 8: maxSurge 2, maxUnavailable 2.
    let sampler = Sampler::start(&client, "ha");
    cluster.kubectl_ok(&["set", "image", "deployment/ha", "busybox=busybox:2"]);
    // Kill the acting manager once the rollout is under way.
    wait_for(
        "the rollout to start",
        Duration::from_secs(20),
        async || {
            let d = deployment(&client, "ha").await;
            let updated = d.status?.updated_replicas.unwrap_or(0);
            (updated > 0).then_some(())
        },
    )
    .await;
    let (killed, survivor) = if acquired(&a) {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    killed.kill9();
    rollout_status(&cluster, "ha");
    let e = sampler.finish().await;
    assert_within_bounds("failover", &e, 8, 2, 2);
    assert!(
        acquired(survivor),
        "the survivor took over:\n{}",
        survivor.log()
    );
    assert_eq!(pod_images(&client, "app=ha").await, vec!["busybox:2"; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_gives_each_node_a_free_pod_cidr() {
    // Two simulated nodes hold 10.42.0.0/24 and 10.42.1.0/24 already.
    let cluster = Cluster::start(2).await;
    let refused = Command::new(common::skiff_bin())
        .args(["controller-manager", "--allocate-node-cidrs"])
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "skiff: --allocate-node-cidrs requires --cluster-cidr\n"
    );
    let manager = cluster.manager(
        "ipam",
        &[
            "--leader-elect=false",
            "--controllers=nodeipam",
            "--allocate-node-cidrs",
            "--cluster-cidr=10.42.0.0/16",
        ],
    );
    for name in ["plain-0", "plain-1", "plain-2"] {
        let manifest =
            format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#);
        let file = cluster.home.path().join(format!("{name}.json"));
        std::fs::write(&file, manifest).unwrap();
        cluster.kubectl_ok(&["create", "-f", file.to_str().unwrap()]);
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
    let cidrs = wait_for(
        "every node to have a pod CIDR",
        Duration::from_secs(20),
        async || {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            let cidrs: Vec<String> = list
                .items
                .iter()
                .map(|n| n.spec.as_ref()?.pod_cidr.clone())
                .collect::<Option<_>>()?;
            (cidrs.len() == 5).then_some(cidrs)
        },
    )
    .await;
    let mut unique = cidrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        5,
        "a pod CIDR was given twice: {cidrs:?}\n{}",
        manager.log()
    );
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("10.42.") && c.ends_with(".0/24")),
        "{cidrs:?}"
    );
    let node = nodes.get("plain-0").await.unwrap();
    let spec = node.spec.unwrap();
    assert_eq!(spec.pod_cidrs, Some(vec![spec.pod_cidr.clone().unwrap()]));
}

//! `skiff controller-manager`'s `serviceaccount` and `resourcequota` controllers as real
//! processes, with `skiff apiserver` (quota admission on) on a `skiff store`, `skiff
//! scheduler` and simulated nodes, driven with kubectl: a new namespace gets its `default`
//! ServiceAccount, again after it is deleted, and can still be deleted itself; under a
//! `pods=2` quota the third pod is refused with upstream's message, deleting a pod gives its
//! usage back (the controller's recount) so a new one is admitted, and a Deployment of 3 stays
//! at 2 pods with its ReplicaSet reporting the quota refusal.

#[path = "common/apiserver.rs"]
mod apiserver;
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;
#[path = "common/node_sim.rs"]
mod node_sim;

use std::time::{Duration, Instant};

use control_plane::Cluster;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod, ResourceQuota, ServiceAccount};
use kube::api::ListParams;
use kube::{Api, Client};

/// How long a controller may take to act on a change.
const ACT_TIMEOUT: Duration = Duration::from_secs(30);

/// A control plane for one test: store, API server with quota admission, simulated nodes,
/// scheduler and the controller manager under test.
async fn start_cluster(nodes: usize) -> Cluster {
    let mut cluster = Cluster::api_only(&["--enable-admission-plugins=ResourceQuota"]).await;
    cluster.start_nodes(nodes, &[]);
    cluster.start_scheduler();
    cluster.start_manager(&[
        "--leader-elect=false",
        "--controllers=resourcequota,serviceaccount,replicaset,deployment",
    ]);
    cluster
}

impl Cluster {
    /// `status.used[resource]` of quota `name` in `namespace`, if set.
    async fn quota_used(&self, namespace: &str, name: &str, resource: &str) -> Option<String> {
        let quota = Api::<ResourceQuota>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .ok()?;
        quota.status?.used?.get(resource).map(|q| q.0.clone())
    }

    /// Waits until quota `name`'s `status.used[resource]` is `want`.
    async fn wait_quota_used(&self, namespace: &str, name: &str, resource: &str, want: &str) {
        self.wait_for(
            &format!("{namespace}/{name} status.used.{resource} = {want}"),
            ACT_TIMEOUT,
            async || {
                (self.quota_used(namespace, name, resource).await.as_deref() == Some(want))
                    .then_some(())
            },
        )
        .await;
    }

    /// The pods of `namespace` not being deleted.
    async fn live_pods(&self, namespace: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }
}

/// The uid of ServiceAccount `default` in `namespace`, if it exists.
async fn default_account_uid(client: &Client, namespace: &str) -> Option<String> {
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get("default")
        .await
        .ok()?
        .metadata
        .uid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_service_accounts_and_quota_usage_are_kept() {
    let cluster = start_cluster(2).await;
    let client = cluster.client.clone();

    // (a) A new namespace gets `default`; deleted, it comes back.
    cluster.kubectl_ok(&["create", "namespace", "team"]);
    let first_uid = cluster
        .wait_for("serviceaccount team/default", ACT_TIMEOUT, async || {
            default_account_uid(&client, "team").await
        })
        .await;
    let shown = cluster.kubectl_ok(&["get", "sa", "default", "-n", "team"]);
    assert!(shown.contains("default"), "{shown}");
    cluster.kubectl_ok(&["delete", "sa", "default", "-n", "team"]);
    cluster
        .wait_for(
            "serviceaccount team/default recreated",
            ACT_TIMEOUT,
            async || {
                default_account_uid(&client, "team")
                    .await
                    .filter(|uid| *uid != first_uid)
            },
        )
        .await;

    // (b) A quota of two pods: the controller fills in its status.
    cluster.kubectl_ok(&["create", "quota", "q", "--hard=pods=2", "-n", "team"]);
    cluster.wait_quota_used("team", "q", "pods", "0").await;
    let run = |name: &str| {
        cluster.kubectl(&[
            "run",
            name,
            "--image=busybox",
            "--restart=Never",
            "-n",
            "team",
        ])
    };
    for name in ["p1", "p2"] {
        let out = run(name);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refused = run("p3");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "p3 admitted past the quota");
    assert!(
        stderr.contains(
            "pods \"p3\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        ),
        "{stderr}"
    );
    assert_eq!(
        cluster.quota_used("team", "q", "pods").await.as_deref(),
        Some("2")
    );

    // Deleting a pod gives its usage back (the controller's recount), and a new pod fits.
    cluster.kubectl_ok(&["delete", "pod", "p1", "-n", "team", "--timeout=60s"]);
    cluster.wait_quota_used("team", "q", "pods", "1").await;
    let out = run("p4");
    assert!(
        out.status.success(),
        "p4 after a delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cluster.quota_used("team", "q", "pods").await.as_deref(),
        Some("2")
    );

    // A Deployment of 3 under the quota gets 2 pods; its ReplicaSet reports the refusal.
    cluster.kubectl_ok(&["delete", "pod", "p2", "p4", "-n", "team", "--timeout=60s"]);
    cluster.wait_quota_used("team", "q", "pods", "0").await;
    cluster.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
        "-n",
        "team",
    ]);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "team");
    let events: Api<Event> = Api::namespaced(client.clone(), "team");
    let failure = cluster
        .wait_for("the ReplicaSet's quota refusal", ACT_TIMEOUT, async || {
            let condition = replica_sets
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .flat_map(|rs| {
                    rs.status
                        .iter()
                        .flat_map(|s| s.conditions.iter().flatten())
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .and_then(|c| c.message.filter(|m| m.contains("exceeded quota")));
            let event = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedCreate"))
                .and_then(|e| e.message.filter(|m| m.contains("exceeded quota")));
            condition.or(event)
        })
        .await;
    assert!(
        failure.contains(
            "is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
        ),
        "{failure}"
    );
    // The API server's message, as upstream shows it — not a client library's dump.
    assert!(
        !failure.contains("ApiError") && !failure.contains("Status {"),
        "{failure}"
    );
    cluster
        .wait_for("two pods of the Deployment", ACT_TIMEOUT, async || {
            (cluster.live_pods("team").await.len() == 2).then_some(())
        })
        .await;
    // It stays there while the ReplicaSet keeps trying.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let pods = cluster.live_pods("team").await.len();
        assert!(pods <= 2, "{pods} pods under a pods=2 quota");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster.quota_used("team", "q", "pods").await.as_deref(),
        Some("2")
    );

    // A terminating namespace gets no new account (refused creates are not retried): its
    // deletion completes.
    cluster.kubectl_ok(&["delete", "namespace", "team", "--timeout=90s"]);
}

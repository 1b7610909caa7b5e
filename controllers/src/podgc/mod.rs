//! PodGC (kube-controller-manager's `podgc`): every [`GC_CHECK_PERIOD`] it force-deletes pods
//! nobody else will — terminated pods beyond `--terminated-pod-gc-threshold`, terminating pods
//! on out-of-service nodes that are not ready, pods bound to nodes that no longer exist (after
//! a [`plan::QUARANTINE`] and a live GET of the node, so a lagging cache never orphans a pod),
//! and terminating pods that were never scheduled. Each is first marked `Failed` (orphans with
//! a `DisruptionTarget` condition) and then deleted with grace period 0.
//!
//! `plan` is the pure part; this file is the IO shell (pod and node informers, the periodic
//! pass, bounded concurrent deletions).

pub mod plan;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use self::plan::{GcPod, Quarantine};
use crate::Error;
use crate::shell::api_code;

/// How often PodGC looks (upstream `gcCheckPeriod`).
pub const GC_CHECK_PERIOD: Duration = Duration::from_secs(20);
/// Pod deletions in flight at once.
pub const GC_DELETES_IN_FLIGHT: usize = 16;
/// Pods one pass deletes at most (the rest wait for the next pass).
pub const GC_DELETES_PER_PASS_MAX: usize = 5_000;

struct Gc {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    terminated_threshold: u32,
}

/// Runs PodGC until `shutdown`; `terminated_pod_gc_threshold` 0 turns the collection of
/// terminated pods off.
pub async fn run(
    client: kube::Client,
    terminated_pod_gc_threshold: u32,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (pod_store, mut pod_events, pod_task) = skiff_client::informer::reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
    );
    let (node_store, mut node_events, node_task) = skiff_client::informer::reflect(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
    );
    let gc = Gc {
        client,
        pods: pod_store.clone(),
        nodes: node_store.clone(),
        terminated_threshold: terminated_pod_gc_threshold,
    };
    // The caches are read on each pass; the events only have to be drained.
    let pod_drain = async move { while pod_events.recv().await.is_some() {} };
    let node_drain = async move { while node_events.recv().await.is_some() {} };
    let passes = async {
        let _ = pod_store.wait_until_ready().await;
        let _ = node_store.wait_until_ready().await;
        tracing::info!("podgc: caches synced, starting");
        let mut quarantine = Quarantine::default();
        let mut tick = tokio::time::interval(GC_CHECK_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            gc.pass(&mut quarantine).await;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = pod_drain => tracing::warn!("podgc: pod informer ended"),
        _ = node_drain => tracing::warn!("podgc: node informer ended"),
        _ = passes => {}
    }
    pod_task.abort();
    node_task.abort();
    Ok(())
}

impl Gc {
    /// Upstream's `gc`: terminated, terminating out-of-service, orphaned, unscheduled
    /// terminating.
    async fn pass(&self, quarantine: &mut Quarantine) {
        let pods = self.pods.state();
        let nodes = self.nodes.state();
        let by_name: BTreeMap<String, &Node> =
            nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
        let gc = plan::plan(
            pods.iter().map(|p| p.as_ref()),
            &by_name,
            self.terminated_threshold,
        );
        if !gc.terminated.is_empty() {
            tracing::info!(
                pods = gc.terminated.len(),
                "podgc: collecting terminated pods"
            );
        }
        self.delete_all(gc.terminated).await;
        self.delete_all(gc.terminating_out_of_service).await;
        let now = Instant::now();
        for node in &gc.missing_nodes {
            quarantine.add(node, now);
        }
        let mut gone = HashSet::new();
        for node in quarantine.take_due(now) {
            if self.nodes.get(&ObjectRef::new(&node)).is_some() {
                continue;
            }
            match Api::<Node>::all(self.client.clone()).get(&node).await {
                Err(err) if api_code(&err) == Some(404) => {
                    gone.insert(node);
                }
                Err(err) => {
                    // Quarantined again on a later pass if still missing.
                    tracing::warn!(node = %node, error = %err, "podgc: cannot get node");
                }
                Ok(_) => {}
            }
        }
        if !gone.is_empty() {
            let orphans = plan::orphans(pods.iter().map(|p| p.as_ref()), &gone);
            tracing::info!(pods = orphans.len(), nodes = ?gone, "podgc: deleting pods of deleted nodes");
            self.delete_all(orphans).await;
        }
        self.delete_all(gc.unscheduled_terminating).await;
    }

    async fn delete_all(&self, pods: Vec<GcPod>) {
        let deletions: Vec<_> = pods
            .into_iter()
            .take(GC_DELETES_PER_PASS_MAX)
            .map(|pod| async move {
                if let Err(err) = self.mark_failed_and_delete(&pod).await {
                    tracing::warn!(pod = %pod.key, reason = ?pod.reason, error = %err, "podgc: cannot delete pod");
                }
            })
            .collect();
        futures::stream::iter(deletions)
            .buffer_unordered(GC_DELETES_IN_FLIGHT)
            .collect::<Vec<()>>()
            .await;
    }

    /// Upstream's `markFailedAndDeletePodWithCondition`: the Failed status (written against
    /// the resourceVersion it was computed from; on a conflict once more from a fresh read),
    /// then a deletion with grace period 0 and the pod's uid as precondition.
    async fn mark_failed_and_delete(&self, target: &GcPod) -> Result<(), Error> {
        tracing::info!(pod = %target.key, reason = ?target.reason, "podgc: force deleting pod");
        let api = Api::<Pod>::namespaced(self.client.clone(), &target.key.namespace);
        let mut pod: Option<Arc<Pod>> = self
            .pods
            .get(&ObjectRef::new(&target.key.name).within(&target.key.namespace));
        for attempt in 0..2 {
            let current = match pod.take() {
                Some(pod) if attempt == 0 => pod,
                _ => match api.get(&target.key.name).await {
                    Ok(pod) => Arc::new(pod),
                    Err(err) if api_code(&err) == Some(404) => return Ok(()),
                    Err(err) => return Err(err.into()),
                },
            };
            if current.uid().as_deref() != Some(target.uid.as_str()) {
                return Ok(());
            }
            let Some(status) =
                plan::failed_status(&current, target.reason, skiff_client::now_timestamp())
            else {
                break;
            };
            let mut patch = json!({
                "metadata": {"resourceVersion": current.resource_version()},
                "status": {"phase": status.phase},
            });
            if target.reason == plan::GcReason::Orphaned {
                patch["status"]["conditions"] = json!(status.conditions);
            }
            match api
                .patch_status(
                    &target.key.name,
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => break,
                Err(err) if api_code(&err) == Some(404) => return Ok(()),
                Err(err) if api_code(&err) == Some(409) && attempt == 0 => {}
                Err(err) => return Err(err.into()),
            }
        }
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(target.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&target.key.name, &params).await {
            Ok(_) => Ok(()),
            Err(err) if matches!(api_code(&err), Some(404 | 409)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

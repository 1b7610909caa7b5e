//! The pod side of the simulator: one watch over all bound pods (`spec.nodeName!=`, filtered
//! to the simulated nodes here), a bounded queue of pods to act on (one entry per pod however
//! often it changes), and a worker pool of `--max-concurrent-writes` workers writing statuses
//! and deletions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::POD_QUEUE_MAX;
use crate::plan::{self, PodAction};
use crate::{Error, Sim, api_code, lock};

/// Pods waiting for a worker, by UID: the latest version seen. A UID is in the channel at most
/// once, so the map holds at most `POD_QUEUE_MAX` + workers entries.
#[derive(Default)]
struct Pending(Mutex<BTreeMap<String, Pod>>);

impl Sim {
    /// Watches the pods and acts on those of simulated nodes; returns only if the watch ends.
    pub(crate) async fn pod_loop(&self) {
        let (tx, rx) = mpsc::channel::<String>(POD_QUEUE_MAX);
        let pending = Pending::default();
        let workers =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|uid| (uid, rx)) },
            )
            .for_each_concurrent(self.config.max_concurrent_writes, |uid| {
                let pod = lock(&pending.0).remove(&uid);
                async move {
                    if let Some(pod) = pod {
                        self.act(pod).await;
                    }
                }
            });
        tokio::select! {
            () = self.watch_pods(&tx, &pending) => {}
            () = workers => {}
        }
    }

    async fn watch_pods(&self, tx: &mpsc::Sender<String>, pending: &Pending) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields("spec.nodeName!=");
        let mut events = watcher(pods, config).default_backoff().boxed();
        // UIDs seen during a (re)list, to free the addresses of pods that went meanwhile.
        let mut listed: BTreeSet<String> = BTreeSet::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listed.clear(),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let Some(uid) = &pod.metadata.uid {
                        listed.insert(uid.clone());
                    }
                    self.observe(pod, tx, pending).await;
                }
                Ok(watcher::Event::InitDone) => {
                    for ips in lock(&self.ips).iter_mut() {
                        ips.retain(|uid| listed.contains(uid));
                    }
                    listed.clear();
                }
                Ok(watcher::Event::Apply(pod)) => self.observe(pod, tx, pending).await,
                Ok(watcher::Event::Delete(pod)) => self.forget(&pod),
                Err(err) => tracing::warn!(error = %err, "pod watch failed; retrying"),
            }
        }
    }

    /// Notes the address a pod on a simulated node reports, and queues it if there is
    /// something to do; waits while the queue is full.
    async fn observe(&self, pod: Pod, tx: &mpsc::Sender<String>, pending: &Pending) {
        let Some(node) = plan::node_name(&pod).and_then(|n| self.index.get(n).copied()) else {
            return;
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(ip) = plan::reported_ip(&pod)
            && pod.metadata.deletion_timestamp.is_none()
        {
            // Reserve it (e.g. pods running before a restart) so no other pod gets it.
            lock(&self.ips)[node].assign(&uid, Some(ip));
        }
        if self.plan(&pod) == PodAction::Ignore {
            return;
        }
        let fresh = lock(&pending.0).insert(uid.clone(), pod).is_none();
        if fresh && tx.send(uid).await.is_err() {
            tracing::warn!("pod workers gone");
        }
    }

    /// A pod was deleted: its address is free.
    fn forget(&self, pod: &Pod) {
        let node = plan::node_name(pod).and_then(|n| self.index.get(n).copied());
        if let (Some(node), Some(uid)) = (node, &pod.metadata.uid) {
            lock(&self.ips)[node].release(uid);
        }
    }

    fn plan(&self, pod: &Pod) -> PodAction {
        plan::plan(
            pod,
            |node| self.index.contains_key(node),
            |node| self.is_stopped(node),
        )
    }

    /// Carries out the plan for `pod` (as last seen); failures are logged.
    async fn act(&self, pod: Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let res = match self.plan(&pod) {
            PodAction::Ignore => Ok(()),
            PodAction::Start => self.start(&pod, &namespace, &name).await,
            PodAction::Terminate { write_status } => {
                self.terminate(&pod, &namespace, &name, write_status).await
            }
        };
        match res {
            // Deleted meanwhile: the watch tells.
            Err(err) if api_code(&err) == Some(404) => {}
            Err(err) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %err, "pod update failed")
            }
            Ok(()) => {}
        }
    }

    /// Writes the Running status with an address from the node's subnet.
    async fn start(&self, pod: &Pod, namespace: &str, name: &str) -> Result<(), Error> {
        let Some(node) = plan::node_name(pod).and_then(|n| self.index.get(n).copied()) else {
            return Ok(());
        };
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        let Some(pod_ip) = lock(&self.ips)[node].assign(uid, plan::reported_ip(pod)) else {
            tracing::warn!(pod = %format!("{namespace}/{name}"), node = %self.nodes[node].name,
                           "pod subnet full; pod stays Pending");
            return Ok(());
        };
        let status = crate::objects::running_status(
            pod,
            self.nodes[node].internal_ip,
            pod_ip,
            Timestamp::now(),
        );
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({ "status": status });
        let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
        self.write(
            || format!("pod {namespace}/{name} status"),
            || pods.patch_status(name, &params, &merge),
        )
        .await
        .map(drop)
    }

    /// Stops the containers (status), then deletes the pod with grace period 0, as kubelet
    /// does once a deleted pod's containers are gone.
    async fn terminate(
        &self,
        pod: &Pod,
        namespace: &str,
        name: &str,
        write_status: bool,
    ) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        if write_status {
            let status = crate::objects::terminated_status(pod, Timestamp::now());
            let patch = json!({ "status": status });
            let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
            self.write(
                || format!("pod {namespace}/{name} status"),
                || pods.patch_status(name, &params, &merge),
            )
            .await?;
        }
        let delete = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        self.write(
            || format!("delete pod {namespace}/{name}"),
            || pods.delete(name, &delete),
        )
        .await?;
        self.forget(pod);
        Ok(())
    }
}

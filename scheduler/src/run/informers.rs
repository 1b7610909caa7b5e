//! The watches the loop reads and what their events do: Pods (bound ones into the cache,
//! pending ones of this scheduler into the queue), Nodes, Namespaces (labels for affinity
//! terms), and the objects the system default spread constraints read (`DefaultSelector`):
//! Services, ReplicationControllers, ReplicaSets and StatefulSets, whose selectors the cache
//! keeps. Each watch is a `skiff_client::informer` with a bounded channel. Scheduling waits
//! for the Pod and Node lists only: the selectors feed a score, and a kind the API server does
//! not serve is left unwatched (the default spread then ignores it). VolumeBinding reads
//! PersistentVolumeClaims, PersistentVolumes and StorageClasses from reflector caches; any
//! change to them wakes the pods it refused.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Resource};
use skiff_client::informer::INFORMER_QUEUE_MAX;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Scheduler;
use crate::cache::{is_terminal, key_of};

/// Plugins whose verdict a newly bound pod or a namespace label change can flip.
const POD_EVENT_PLUGINS: &[&str] = &["InterPodAffinity", "PodTopologySpread"];

/// An event of one of the kinds `DefaultSelector` reads (they share one channel).
#[derive(Debug)]
pub(super) enum SelectorEvent {
    Service(Box<watcher::Event<Service>>),
    ReplicationController(Box<watcher::Event<ReplicationController>>),
    ReplicaSet(Box<watcher::Event<ReplicaSet>>),
    StatefulSet(Box<watcher::Event<StatefulSet>>),
}

/// The watches' receivers.
pub(super) struct Watches {
    pub(super) pods: mpsc::Receiver<watcher::Event<Pod>>,
    pub(super) nodes: mpsc::Receiver<watcher::Event<Node>>,
    pub(super) namespaces: mpsc::Receiver<watcher::Event<Namespace>>,
    pub(super) selectors: mpsc::Receiver<SelectorEvent>,
    /// A claim, volume or class changed (coalesced: one signal may stand for many).
    pub(super) volume_changes: mpsc::Receiver<()>,
    /// What VolumeBinding reads.
    pub(super) volume_stores: VolumeStores,
}

/// The caches VolumeBinding reads.
#[derive(Clone)]
pub(super) struct VolumeStores {
    pub(super) claims: Store<PersistentVolumeClaim>,
    pub(super) volumes: Store<PersistentVolume>,
    pub(super) classes: Store<StorageClass>,
}

/// Reflects one kind VolumeBinding reads; each event becomes a (coalesced) change signal.
fn reflect_volumes<K>(
    api: Api<K>,
    changes: mpsc::Sender<()>,
) -> (Store<K>, JoinHandle<()>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + DeserializeOwned + 'static,
{
    let (store, mut rx, task) = skiff_client::informer::reflect(api, watcher::Config::default());
    let forward = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Full: a signal is already waiting, which covers this one.
            let _ = changes.try_send(());
        }
    });
    (store, task, forward)
}

/// The watch tasks; dropping this stops them.
pub(super) struct WatchTasks(Vec<JoinHandle<()>>);

impl Drop for WatchTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts every watch.
pub(super) fn start_watches(client: &kube::Client) -> (Watches, WatchTasks) {
    let (pods, pods_task) =
        skiff_client::informer::watch(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let (nodes, nodes_task) =
        skiff_client::informer::watch(Api::<Node>::all(client.clone()), watcher::Config::default());
    let (namespaces, namespaces_task) = skiff_client::informer::watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    let (tx, selectors) = mpsc::channel(INFORMER_QUEUE_MAX);
    let (changes, volume_changes) = mpsc::channel(1);
    let (claims, claims_task, claims_forward) = reflect_volumes(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        changes.clone(),
    );
    let (volumes, volumes_task, volumes_forward) = reflect_volumes(
        Api::<PersistentVolume>::all(client.clone()),
        changes.clone(),
    );
    let (classes, classes_task, classes_forward) =
        reflect_volumes(Api::<StorageClass>::all(client.clone()), changes);
    let tasks = vec![
        claims_task,
        claims_forward,
        volumes_task,
        volumes_forward,
        classes_task,
        classes_forward,
        namespaces_task,
        pods_task,
        nodes_task,
        watch_selectors(Api::all(client.clone()), tx.clone(), SelectorEvent::Service),
        watch_selectors(
            Api::all(client.clone()),
            tx.clone(),
            SelectorEvent::ReplicationController,
        ),
        watch_selectors(
            Api::all(client.clone()),
            tx.clone(),
            SelectorEvent::ReplicaSet,
        ),
        watch_selectors(Api::all(client.clone()), tx, SelectorEvent::StatefulSet),
    ];
    let watches = Watches {
        pods,
        nodes,
        namespaces,
        selectors,
        volume_changes,
        volume_stores: VolumeStores {
            claims,
            volumes,
            classes,
        },
    };
    (watches, WatchTasks(tasks))
}

/// Watches one kind `DefaultSelector` reads into the shared channel, each event wrapped by
/// `wrap`. A kind the API server does not serve (404 on a first one-item list) is said once
/// and left unwatched.
fn watch_selectors<K>(
    api: Api<K>,
    tx: mpsc::Sender<SelectorEvent>,
    wrap: fn(Box<watcher::Event<K>>) -> SelectorEvent,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + DeserializeOwned + 'static,
{
    tokio::spawn(async move {
        if let Err(kube::Error::Api(status)) = api.list(&ListParams::default().limit(1)).await
            && status.code == 404
        {
            tracing::info!(
                kind = %K::kind(&()),
                "not served by the API server; the default spread constraints ignore it"
            );
            return;
        }
        let (mut rx, task) = skiff_client::informer::watch(api, watcher::Config::default());
        let _stop = WatchTasks(vec![task]);
        while let Some(event) = rx.recv().await {
            if tx.send(wrap(Box::new(event))).await.is_err() {
                return;
            }
        }
    })
}

impl Scheduler {
    fn ours(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("");
        name.is_empty() || name == self.config.scheduler_name
    }

    pub(super) fn on_pod_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.pods_seen = Some(BTreeSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(seen) = self.pods_seen.as_mut() {
                    seen.insert(key_of(&pod.metadata));
                }
                self.apply_pod(pod);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.pods_seen.take() {
                    self.cache.retain_pods(|k| seen.contains(k));
                    self.queue.retain(|k| seen.contains(k));
                    self.nominator.retain(|k| seen.contains(k));
                    self.evicting.retain(|k| seen.contains(k));
                    let vanished: Vec<String> = self
                        .preemptor_of
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for victim in vanished {
                        self.victim_gone(&victim);
                    }
                }
                self.pods_synced = true;
                self.queue.move_all_to_active_or_backoff(Instant::now());
            }
            watcher::Event::Apply(pod) => self.apply_pod(pod),
            watcher::Event::Delete(pod) => {
                let key = key_of(&pod.metadata);
                self.queue.remove(&key);
                self.evicting.remove(&key);
                self.victim_gone(&key);
                let was_nominated = self.nominator.remove(&key).is_some();
                if self.cache.placement(&key).is_some() {
                    self.cache.remove_pod(&key);
                    // Capacity freed: parked pods may fit now (AssignedPodDelete).
                    self.queue.move_all_to_active_or_backoff(Instant::now());
                } else if was_nominated {
                    // The room it reserved is free again.
                    self.queue.move_all_to_active_or_backoff(Instant::now());
                }
            }
        }
    }

    fn apply_pod(&mut self, pod: Pod) {
        let key = key_of(&pod.metadata);
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if bound {
            self.queue.remove(&key);
            self.nominator.remove(&key);
            let was = self.cache.placement(&key).map(|(_, assumed)| assumed);
            self.cache.upsert_bound_pod(&pod);
            if was.is_some() && is_terminal(&pod) {
                self.queue.move_all_to_active_or_backoff(Instant::now());
            } else if was != Some(false) && !is_terminal(&pod) {
                // Newly bound (AssignedPodAdd): only affinity-refused pods can gain.
                self.queue
                    .move_rejected_by(POD_EVENT_PLUGINS, Instant::now());
            }
            return;
        }
        if !self.ours(&pod) || is_terminal(&pod) || pod.metadata.deletion_timestamp.is_some() {
            self.queue.remove(&key);
            self.nominator.remove(&key);
            return;
        }
        if self.cache.placement(&key).is_some() {
            // Assumed by us and being bound: the watch has not caught up.
            return;
        }
        self.nominator
            .update_from_watch(&key, self.queue.pod(&key), &pod);
        if !self.queue.add_or_update(&key, pod, Instant::now()) {
            tracing::warn!(pod = %key, "scheduling queue full; pod left for its next update");
        }
    }

    pub(super) fn on_namespace_event(&mut self, event: watcher::Event<Namespace>) {
        match event {
            watcher::Event::Init => self.cache.namespaces.clear(),
            watcher::Event::InitApply(ns) | watcher::Event::Apply(ns) => {
                let name = ns.metadata.name.unwrap_or_default();
                let labels = ns.metadata.labels.unwrap_or_default();
                if self.cache.namespaces.insert(name, labels.clone()).as_ref() != Some(&labels) {
                    self.queue
                        .move_rejected_by(POD_EVENT_PLUGINS, Instant::now());
                }
            }
            watcher::Event::InitDone => {}
            watcher::Event::Delete(ns) => {
                self.cache
                    .namespaces
                    .remove(ns.metadata.name.as_deref().unwrap_or(""));
            }
        }
    }

    pub(super) fn on_node_event(&mut self, event: watcher::Event<Node>) {
        let now = Instant::now();
        match event {
            watcher::Event::Init => self.nodes_seen = Some(BTreeSet::new()),
            watcher::Event::InitApply(node) => {
                if let Some(seen) = self.nodes_seen.as_mut() {
                    seen.insert(node.metadata.name.clone().unwrap_or_default());
                }
                self.cache.upsert_node(node);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.nodes_seen.take() {
                    let gone: Vec<String> = self
                        .cache
                        .nodes()
                        .iter()
                        .map(|n| n.name().to_string())
                        .filter(|n| !seen.contains(n))
                        .collect();
                    for name in gone {
                        self.cache.remove_node(&name);
                    }
                }
                self.nodes_synced = true;
                self.queue.move_all_to_active_or_backoff(now);
            }
            watcher::Event::Apply(node) => {
                self.cache.upsert_node(node);
                self.queue.move_all_to_active_or_backoff(now);
            }
            watcher::Event::Delete(node) => {
                self.cache
                    .remove_node(node.metadata.name.as_deref().unwrap_or(""));
            }
        }
    }

    /// A claim, volume or class changed: pods VolumeBinding refused may fit now.
    pub(super) fn on_volume_change(&mut self) {
        self.queue
            .move_rejected_by(&[crate::volume_binding::PLUGIN], Instant::now());
    }

    /// A Service or controller changed: only the selectors change (they feed a score; no pod
    /// is requeued, as upstream).
    pub(super) fn on_selector_event(&mut self, event: SelectorEvent) {
        let selectors = &mut self.cache.selectors;
        match event {
            SelectorEvent::Service(e) => selectors.on_service(*e),
            SelectorEvent::ReplicationController(e) => selectors.on_replication_controller(*e),
            SelectorEvent::ReplicaSet(e) => selectors.on_replica_set(*e),
            SelectorEvent::StatefulSet(e) => selectors.on_stateful_set(*e),
        }
    }
}

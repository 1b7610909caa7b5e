//! The node lifecycle controller (kube-controller-manager's `nodelifecycle`, with the taint
//! eviction controller it runs inside): nodes whose kubelet stopped renewing its Lease and
//! posting status go `Unknown`, get the `unreachable`/`not-ready` taints, and the pods that do
//! not tolerate those taints (long enough) are evicted.
//!
//! Pure parts: `plan` (health checks, condition and taint changes), `zones` (zone states and
//! the rate-limited tainting queues), `eviction` (which pods go when, and their timers). This
//! file (with `taint_eviction`) is the IO shell: informers on Nodes, node Leases and pods,
//! and four loops —
//! - the *monitor* (every `--node-monitor-period`): checks every node's health signal, writes
//!   `Unknown` conditions, records `NodeNotReady`, marks the pods of a node that stopped being
//!   ready not ready, queues nodes for their NoExecute taint, judges zones;
//! - the *tainter* (every [`NODE_EVICTION_PERIOD`]): pops queued nodes at each zone's rate and
//!   adds their NoExecute taint;
//! - the NoSchedule workers: a node work queue fed by node events and every monitor pass keeps
//!   the NoSchedule taints in step with the conditions;
//! - the *evictor* (`taint_eviction`): on node and pod events, on its next timer and every
//!   monitor period, recomputes every timer of a pod on a NoExecute-tainted node and deletes
//!   the pods due.
//!
//! Every taint write is a merge patch of the whole taint list carrying the resourceVersion it
//! was computed from, so a concurrent change of another taint is never lost (a conflict
//! re-reads the node).

pub mod eviction;
pub mod plan;
mod taint_eviction;
pub mod zones;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use skiff_client::events::{EventRecorder, EventType, NewEvent};
use skiff_client::workqueue::WorkQueue;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::eviction::EvictionTimers;
use self::plan::{GracePeriods, NoExecuteAction, NodeHealth, TaintChange};
use self::taint_eviction::pod_reference;
use self::zones::{DisruptionChange, ZoneSettings, Zones};
use crate::Error;
use crate::shell::{Key, QUEUE_MAX, SyncOutcome, api_code, run_workers};

/// The namespace of the kubelets' Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often the tainter pops nodes from the zone queues (upstream `NodeEvictionPeriod`).
pub const NODE_EVICTION_PERIOD: Duration = Duration::from_millis(100);
/// Workers keeping NoSchedule taints in step (upstream `nodeUpdateWorkerSize`).
pub const NO_SCHEDULE_WORKERS: usize = 8;
/// Nodes whose health is updated at once in a monitor pass (upstream `nodeUpdateWorkerSize`).
pub const HEALTH_UPDATES_IN_FLIGHT: usize = 8;
/// Tries of one taint write that keeps conflicting (upstream `UpdateTaintBackoff` steps).
pub const TAINT_UPDATE_ATTEMPTS: usize = 5;
/// Pods deleted at once by one eviction pass (more are taken by the next pass, at once).
pub const EVICTIONS_IN_FLIGHT_MAX: usize = 32;
/// Tries of one eviction (upstream `retries` of the taint manager's delete handler).
pub const EVICTION_ATTEMPTS: usize = 5;
/// When an eviction failed every try, it is due again after this long.
pub const EVICTION_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Shortest time between two eviction passes (events are coalesced meanwhile).
pub const EVICTION_PASS_MIN_INTERVAL: Duration = Duration::from_millis(200);
/// When a queued node cannot be tainted (no Ready condition, a failed write), it is tried
/// again after this long.
pub const TAINT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The reason of the DisruptionTarget condition of a pod the taint manager deletes.
pub const REASON_DELETION_BY_TAINT_MANAGER: &str = "DeletionByTaintManager";

/// The node lifecycle controller's flags, upstream's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLifecycleSettings {
    /// A node whose health signal is older than this goes `Unknown`
    /// (`--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace_period: Duration,
    /// The same for a node that never posted a Ready condition
    /// (`--node-startup-grace-period`, 60 s).
    pub node_startup_grace_period: Duration,
    /// How often node health is checked (`--node-monitor-period`, 5 s).
    pub node_monitor_period: Duration,
    /// NoExecute taints added per second per zone (`--node-eviction-rate`, 0.1).
    pub node_eviction_rate: f64,
    /// The rate in a large zone that is partially disrupted
    /// (`--secondary-node-eviction-rate`, 0.01).
    pub secondary_node_eviction_rate: f64,
    /// A zone with more nodes is large (`--large-cluster-size-threshold`, 50).
    pub large_cluster_size_threshold: u32,
    /// The fraction of unhealthy nodes (of more than two) that makes a zone partially
    /// disrupted (`--unhealthy-zone-threshold`, 0.55).
    pub unhealthy_zone_threshold: f64,
}

impl Default for NodeLifecycleSettings {
    fn default() -> Self {
        NodeLifecycleSettings {
            node_monitor_grace_period: Duration::from_secs(40),
            node_startup_grace_period: Duration::from_secs(60),
            node_monitor_period: Duration::from_secs(5),
            node_eviction_rate: 0.1,
            secondary_node_eviction_rate: 0.01,
            large_cluster_size_threshold: 50,
            unhealthy_zone_threshold: 0.55,
        }
    }
}

impl NodeLifecycleSettings {
    fn grace(&self) -> GracePeriods {
        GracePeriods {
            monitor: self.node_monitor_grace_period,
            startup: self.node_startup_grace_period,
        }
    }

    fn zones(&self) -> ZoneSettings {
        ZoneSettings {
            eviction_rate: self.node_eviction_rate,
            secondary_eviction_rate: self.secondary_node_eviction_rate,
            large_cluster_threshold: self.large_cluster_size_threshold,
            unhealthy_zone_threshold: self.unhealthy_zone_threshold,
        }
    }
}

/// What the loops share under one lock (never held across an await).
struct State {
    /// Per node, the health signal as last seen.
    health: HashMap<String, NodeHealth>,
    /// Nodes seen by the monitor (for RegisteredNode / RemovingNode).
    known: HashSet<String>,
    /// Nodes whose pods could not all be marked not ready (upstream `nodesToRetry`).
    mark_not_ready_retry: HashSet<String>,
    zones: Zones,
    timers: EvictionTimers,
}

struct Shell {
    client: kube::Client,
    settings: NodeLifecycleSettings,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    recorder: EventRecorder,
    state: Mutex<State>,
    /// Wakes the evictor.
    evict_wake: Notify,
    /// The NoSchedule work queue (node keys, empty namespace).
    no_schedule: WorkQueue<Key>,
}

/// Runs the node lifecycle controller and its taint eviction until `shutdown`.
pub async fn run(
    client: kube::Client,
    settings: NodeLifecycleSettings,
    recorder: EventRecorder,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    if settings.node_monitor_period.is_zero() {
        return Err(Error::Invalid(
            "--node-monitor-period must be positive".into(),
        ));
    }
    let (node_store, mut node_events, node_task) = skiff_client::informer::reflect(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
    );
    let (lease_store, mut lease_events, lease_task) = skiff_client::informer::reflect(
        Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        watcher::Config::default(),
    );
    let (pod_store, mut pod_events, pod_task) = skiff_client::informer::reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
    );
    let queue: WorkQueue<Key> = WorkQueue::new(QUEUE_MAX);
    let shell = Arc::new(Shell {
        client,
        nodes: node_store.clone(),
        leases: lease_store.clone(),
        pods: pod_store.clone(),
        recorder,
        state: Mutex::new(State {
            health: HashMap::new(),
            known: HashSet::new(),
            mark_not_ready_retry: HashSet::new(),
            zones: Zones::new(settings.zones()),
            timers: EvictionTimers::default(),
        }),
        settings,
        evict_wake: Notify::new(),
        no_schedule: queue.clone(),
    });
    let node_shell = shell.clone();
    let node_router = async move {
        while let Some(event) = node_events.recv().await {
            for node in crate::replicaset::controller::applied(event) {
                node_shell.no_schedule.add(Key::new("", &node.name_any()));
                node_shell.evict_wake.notify_one();
            }
        }
    };
    // Leases are read from the cache; the events only have to be drained.
    let lease_router = async move { while lease_events.recv().await.is_some() {} };
    let pod_shell = shell.clone();
    let pod_router = async move {
        while let Some(event) = pod_events.recv().await {
            let bound = crate::replicaset::controller::applied(event)
                .iter()
                .any(|pod| pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()));
            if bound {
                pod_shell.evict_wake.notify_one();
            }
        }
    };
    let loops = async {
        // Upstream's WaitForCacheSync: no decision on a partial view.
        let _ = node_store.wait_until_ready().await;
        let _ = lease_store.wait_until_ready().await;
        let _ = pod_store.wait_until_ready().await;
        tracing::info!("node lifecycle controller: caches synced, starting");
        let worker_shell = shell.clone();
        let workers = run_workers(queue.clone(), NO_SCHEDULE_WORKERS, move |key| {
            let shell = worker_shell.clone();
            async move { shell.no_schedule_pass(&key.name).await }
        });
        tokio::join!(
            workers,
            shell.monitor_loop(),
            shell.tainter_loop(),
            shell.evictor_loop()
        );
    };
    tokio::select! {
        _ = shutdown => {}
        _ = node_router => tracing::warn!("node informer ended"),
        _ = lease_router => tracing::warn!("lease informer ended"),
        _ = pod_router => tracing::warn!("pod informer ended"),
        _ = loops => {}
    }
    queue.shut_down();
    node_task.abort();
    lease_task.abort();
    pod_task.abort();
    Ok(())
}

/// A reference to a Node for Events (cluster-scoped: no namespace).
fn node_reference(node: &Node) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: node.metadata.name.clone(),
        uid: node.metadata.uid.clone(),
        ..Default::default()
    }
}

impl Shell {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, object: ObjectReference, type_: EventType, reason: &str, message: String) {
        self.recorder.record(NewEvent {
            object,
            type_,
            reason: reason.to_string(),
            message,
            action: String::new(),
        });
    }

    fn cached_node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&ObjectRef::new(name))
    }

    // ---- the monitor ----

    async fn monitor_loop(&self) {
        let mut tick = tokio::time::interval(self.settings.node_monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.monitor_node_health().await;
            // Level-triggered healing of missed events.
            self.evict_wake.notify_one();
        }
    }

    /// Upstream's `monitorNodeHealth`.
    async fn monitor_node_health(&self) {
        let nodes = self.nodes.state();
        let now = Instant::now();
        {
            let mut state = self.lock();
            let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
            for node in &nodes {
                let name = node.name_any();
                state.zones.ensure_zone(&plan::zone_key(node), now);
                if state.known.insert(name.clone()) {
                    tracing::info!(node = %name, "node lifecycle: observed a new node");
                    self.event(
                        node_reference(node),
                        EventType::Normal,
                        "RegisteredNode",
                        format!("Registered Node {name} in Controller"),
                    );
                }
                self.no_schedule.add(Key::new("", &name));
            }
            let deleted: Vec<String> = state
                .known
                .iter()
                .filter(|n| !names.contains(*n))
                .cloned()
                .collect();
            for name in deleted {
                tracing::info!(node = %name, "node lifecycle: observed a node deletion");
                self.event(
                    ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Node".into()),
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    EventType::Normal,
                    "RemovingNode",
                    format!("Removing Node {name} from Controller"),
                );
                state.known.remove(&name);
            }
            // Whatever a node deleted mid-pass left behind goes too.
            state.health.retain(|name, _| names.contains(name));
            state
                .mark_not_ready_retry
                .retain(|name| names.contains(name));
        }
        // The futures are built before the stream (no closure held across an await: the
        // whole future stays provably Send).
        let updates: Vec<_> = nodes
            .iter()
            .map(|node| self.update_node_health(node))
            .collect();
        let results: Vec<Option<(String, Option<String>)>> = futures::stream::iter(updates)
            .buffer_unordered(HEALTH_UPDATES_IN_FLIGHT)
            .collect()
            .await;
        let mut zone_ready: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        for (zone, ready) in results.into_iter().flatten() {
            zone_ready.entry(zone).or_default().push(ready);
        }
        let borrowed: BTreeMap<String, Vec<Option<&str>>> = zone_ready
            .iter()
            .map(|(zone, ready)| (zone.clone(), ready.iter().map(|r| r.as_deref()).collect()))
            .collect();
        let change = self
            .lock()
            .zones
            .handle_disruption(&borrowed, Instant::now());
        match change {
            DisruptionChange::None => {}
            DisruptionChange::EnteredFullDisruption => {
                tracing::warn!(
                    "node lifecycle: every node is not ready; entering master disruption mode \
                     (no taints, no evictions)"
                );
                for node in &nodes {
                    self.mark_reachable(node).await;
                }
            }
            DisruptionChange::LeftFullDisruption => {
                tracing::info!(
                    "node lifecycle: some nodes are ready; leaving master disruption mode"
                );
                let now = Instant::now();
                let mut state = self.lock();
                for health in state.health.values_mut() {
                    health.probe = now;
                    health.ready_transition = now;
                }
            }
        }
    }

    /// One node's health check and its consequences; the node's zone and Ready status after
    /// it (`None` if the node is excluded from disruption checks or could not be updated).
    async fn update_node_health(&self, node: &Arc<Node>) -> Option<(String, Option<String>)> {
        let name = node.name_any();
        let lease_renew = self
            .leases
            .get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE))
            .and_then(|lease| lease.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let check = {
            let mut state = self.lock();
            let check = plan::check_health(
                state.health.get(&name),
                node,
                lease_renew,
                self.settings.grace(),
                Instant::now(),
                skiff_client::now_timestamp(),
            );
            state.health.insert(name.clone(), check.health.clone());
            check
        };
        let mut node = node.clone();
        if let Some(conditions) = &check.new_conditions {
            tracing::info!(node = %name, "node lifecycle: node stopped posting status; marking it Unknown");
            let patch = json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "status": {"conditions": conditions},
            });
            match Api::<Node>::all(self.client.clone())
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(updated) => node = Arc::new(updated),
                Err(err) => {
                    // The next pass tries again: the remembered status still differs.
                    tracing::warn!(node = %name, error = %err, "cannot update node status");
                    return None;
                }
            }
        }
        let zone = (!plan::excluded_from_disruption(&node))
            .then(|| (plan::zone_key(&node), check.current_ready.clone()));
        if check.current_ready.is_none() {
            // Never posted a Ready condition: counted in its zone, nothing to taint yet.
            return zone;
        }
        self.process_taint_based_eviction(&node, &check.observed_ready)
            .await;
        let needs_retry = self.lock().mark_not_ready_retry.contains(&name);
        if plan::became_not_ready(&check) || (needs_retry && check.observed_ready != "True") {
            if plan::became_not_ready(&check) {
                self.event(
                    node_reference(&node),
                    EventType::Normal,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                );
            }
            let marked = self.mark_pods_not_ready(&name).await;
            let mut state = self.lock();
            if marked {
                state.mark_not_ready_retry.remove(&name);
            } else {
                state.mark_not_ready_retry.insert(name);
            }
        } else {
            self.lock().mark_not_ready_retry.remove(&name);
        }
        zone
    }

    /// Upstream's `processTaintBaseEviction`.
    async fn process_taint_based_eviction(&self, node: &Node, observed_ready: &str) {
        let name = node.name_any();
        match plan::no_execute_action(plan::taints_of(node), observed_ready) {
            NoExecuteAction::Nothing => {}
            NoExecuteAction::SwapNow(change) => {
                if let Err(err) = self.update_taints(&name, Some(node), &change).await {
                    tracing::warn!(node = %name, error = %err, "cannot swap NoExecute taints; next pass retries");
                }
            }
            NoExecuteAction::Queue => {
                let zone = plan::zone_key(node);
                let mut state = self.lock();
                let now = Instant::now();
                state.zones.ensure_zone(&zone, now);
                if let Some(tainter) = state.zones.tainter(&zone)
                    && tainter.add(&name, now)
                {
                    tracing::info!(node = %name, ready = observed_ready, "node lifecycle: queued for a NoExecute taint");
                }
            }
            NoExecuteAction::MarkReachable => self.mark_reachable(node).await,
        }
    }

    /// Upstream's `markNodeAsReachable`: both NoExecute taints removed, the node dropped from
    /// its zone's queue.
    async fn mark_reachable(&self, node: &Node) {
        let name = node.name_any();
        let change = plan::mark_reachable_change();
        if plan::apply_taint_change(plan::taints_of(node), &change, Timestamp::UNIX_EPOCH).is_some()
        {
            match self.update_taints(&name, Some(node), &change).await {
                Ok(_) => {
                    tracing::info!(node = %name, "node lifecycle: node is reachable; NoExecute taints removed")
                }
                Err(err) => {
                    tracing::warn!(node = %name, error = %err, "cannot remove NoExecute taints");
                    return;
                }
            }
        }
        let zone = plan::zone_key(node);
        if let Some(tainter) = self.lock().zones.tainter(&zone) {
            tainter.remove(&name);
        }
    }

    /// Upstream's `MarkPodsNotReady`: every pod on the node gets `Ready=False`; whether all
    /// were updated.
    async fn mark_pods_not_ready(&self, node_name: &str) -> bool {
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name))
            .collect();
        let mut all = true;
        for pod in pods {
            let conditions = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default();
            let Some(updated) =
                plan::pod_conditions_not_ready(conditions, skiff_client::now_timestamp())
            else {
                continue;
            };
            let key = Key::of(pod.as_ref());
            let patch = json!({
                "metadata": {"resourceVersion": pod.resource_version()},
                "status": {"conditions": updated},
            });
            match Api::<Pod>::namespaced(self.client.clone(), &key.namespace)
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => self.event(
                    pod_reference(&key, pod.uid()),
                    EventType::Warning,
                    "NodeNotReady",
                    "Node is not ready".into(),
                ),
                Err(err) if api_code(&err) == Some(404) => {}
                Err(err) => {
                    tracing::warn!(pod = %key, error = %err, "cannot mark pod not ready");
                    all = false;
                }
            }
        }
        all
    }

    /// Applies a taint change to a node: computed on `cached` first, then on fresh reads after
    /// conflicts, written with the resourceVersion it was computed from. `Ok(true)` if written,
    /// `Ok(false)` if there was nothing to do or the node is gone.
    async fn update_taints(
        &self,
        name: &str,
        cached: Option<&Node>,
        change: &TaintChange,
    ) -> Result<bool, Error> {
        let api = Api::<Node>::all(self.client.clone());
        let mut node = cached.cloned();
        let mut last_err = None;
        for _ in 0..TAINT_UPDATE_ATTEMPTS {
            let current = match node.take() {
                Some(node) => node,
                None => match api.get(name).await {
                    Ok(node) => node,
                    Err(err) if api_code(&err) == Some(404) => return Ok(false),
                    Err(err) => return Err(err.into()),
                },
            };
            let Some(taints) = plan::apply_taint_change(
                plan::taints_of(&current),
                change,
                skiff_client::now_timestamp(),
            ) else {
                return Ok(false);
            };
            let patch = json!({
                "metadata": {"resourceVersion": current.resource_version()},
                "spec": {"taints": taints},
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => return Ok(true),
                Err(err) if api_code(&err) == Some(409) => last_err = Some(err),
                Err(err) if api_code(&err) == Some(404) => return Ok(false),
                Err(err) => return Err(err.into()),
            }
        }
        Err(last_err.map_or_else(
            || Error::Invalid(format!("node {name}: taint update kept conflicting")),
            Error::from,
        ))
    }

    // ---- the NoSchedule workers ----

    /// Upstream's node processing pass for one node: `reconcileNodeLabels` (beta OS and arch
    /// labels) and `doNoScheduleTaintingPass`.
    async fn no_schedule_pass(&self, name: &str) -> Result<SyncOutcome, Error> {
        let Some(node) = self.cached_node(name) else {
            return Ok(SyncOutcome::Done);
        };
        let labels = plan::labels_to_reconcile(&node);
        if !labels.is_empty() {
            let patch = json!({"metadata": {"labels": labels}});
            match Api::<Node>::all(self.client.clone())
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(err) if api_code(&err) == Some(404) => return Ok(SyncOutcome::Done),
                Err(err) => return Err(err.into()),
            }
        }
        let change = plan::no_schedule_change(&node);
        if !change.is_empty()
            && self
                .update_taints(name, Some(node.as_ref()), &change)
                .await?
        {
            tracing::info!(node = %name, add = ?change.add.iter().map(|t| &t.key).collect::<Vec<_>>(),
                remove = ?change.remove.iter().map(|t| &t.key).collect::<Vec<_>>(),
                "node lifecycle: NoSchedule taints updated");
        }
        Ok(SyncOutcome::Done)
    }

    // ---- the tainter ----

    async fn tainter_loop(&self) {
        let mut tick = tokio::time::interval(NODE_EVICTION_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.no_execute_tainting_pass().await;
        }
    }

    /// Upstream's `doNoExecuteTaintingPass`: each zone's due nodes, at its rate, get the
    /// NoExecute taint of their Ready status (the opposite one removed).
    async fn no_execute_tainting_pass(&self) {
        let popped: Vec<(String, String)> = {
            let mut state = self.lock();
            let now = Instant::now();
            let mut popped = Vec::new();
            for (zone, tainter) in state.zones.tainters() {
                while let Some(node) = tainter.pop(now) {
                    popped.push((zone.clone(), node));
                }
            }
            popped
        };
        for (zone, name) in popped {
            let Some(node) = self.cached_node(&name) else {
                continue;
            };
            let Some(ready) = plan::ready_status(&node) else {
                self.retry_taint(&zone, &name);
                continue;
            };
            // Ready again meanwhile: nothing to taint.
            let Some((wanted, opposite)) = plan::no_execute_taints_for(ready) else {
                continue;
            };
            let change = TaintChange {
                add: vec![wanted],
                remove: vec![opposite],
            };
            match self
                .update_taints(&name, Some(node.as_ref()), &change)
                .await
            {
                Ok(written) => {
                    if written {
                        tracing::info!(node = %name, ready, "node lifecycle: NoExecute taint added");
                    }
                }
                Err(err) => {
                    tracing::warn!(node = %name, error = %err, "cannot add NoExecute taint; retrying");
                    self.retry_taint(&zone, &name);
                }
            }
        }
    }

    fn retry_taint(&self, zone: &str, name: &str) {
        if let Some(tainter) = self.lock().zones.tainter(zone) {
            tainter.retry(name, Instant::now(), TAINT_RETRY_DELAY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams() {
        let s = NodeLifecycleSettings::default();
        assert_eq!(s.node_monitor_grace_period, Duration::from_secs(40));
        assert_eq!(s.node_startup_grace_period, Duration::from_secs(60));
        assert_eq!(s.node_monitor_period, Duration::from_secs(5));
        assert_eq!(s.node_eviction_rate, 0.1);
        assert_eq!(s.secondary_node_eviction_rate, 0.01);
        assert_eq!(s.large_cluster_size_threshold, 50);
        assert_eq!(s.unhealthy_zone_threshold, 0.55);
    }
}

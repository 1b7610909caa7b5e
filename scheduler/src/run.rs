//! The scheduling loop. One task owns the cache and the queue; watch events, bind results
//! and timers arrive through bounded channels. Each cycle pops a pod, filters every node,
//! scores the feasible ones, *assumes* the winner (its resources count at once) and hands the
//! `pods/binding` call to a task — at most `BIND_CONCURRENCY_MAX` at a time. A binding refused
//! with 409 means another scheduler bound the pod: the assumption is dropped and the pod
//! forgotten, never retried. Only the Lease holder pops pods; losing the Lease ends `run`
//! with an error (kube-scheduler exits too), so a deposed leader binds nothing more.
//! A pod no node fits goes through preemption (`preemption::post_filter`): when it names
//! victims the pod is nominated to their node at once (its room reserved there), its
//! `status.nominatedNodeName` is written, and a task evicts the victims (at most
//! `PREEMPTIONS_IN_FLIGHT_MAX` preemptions at a time); their deletions wake the pod.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use rand::{Rng, SeedableRng};
use skiff_client::events::{EventRecorder, EventType, NewEvent};
use skiff_client::leader::{LeaderElectionConfig, LeaderElector};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::Error;
use crate::cache::{Cache, is_terminal, key_of};
use crate::explain::fit_error_message;
use crate::filters::Unfit;
use crate::metrics::SchedulerMetrics;
use crate::node_info::{REASON_PREEMPTION_BY_SCHEDULER, pod_priority};
use crate::nominator::{Nominator, nominated_node_name};
use crate::pod_filters::PodFilters;
use crate::preemption::{self, Candidate, Decision, PreemptionInput};
use crate::queue::{QUEUE_PODS_MAX, SchedulingQueue};
use crate::scores::{ScoreContext, score_nodes, select_host};

/// Bindings in flight at once.
pub const BIND_CONCURRENCY_MAX: usize = 64;
/// Pods scheduled per loop turn before watch events are looked at again.
const CYCLES_PER_TURN: usize = 128;
/// Status patches waiting to be written; more are skipped (the next attempt rewrites).
const STATUS_QUEUE_MAX: usize = 1024;
/// How long a bind request may take.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Preemptions (victim evictions) in flight at once; a pod that would start one more backs off.
pub const PREEMPTIONS_IN_FLIGHT_MAX: usize = 16;
/// How long one victim's status patch or DELETE may take.
const EVICT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the scheduler serves and how it is elected.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Pods with this `spec.schedulerName` (or none) are ours: `default-scheduler`.
    pub scheduler_name: String,
    /// Leader election (`--leader-elect`); `None` schedules at once, alone.
    pub leader_election: Option<LeaderElectionConfig>,
    /// `reportingInstance` of Events.
    pub identity: String,
}

impl SchedulerConfig {
    /// Checks the leader election durations.
    pub fn validate(&self) -> Result<(), Error> {
        if self.scheduler_name.is_empty() {
            return Err(Error::Invalid("scheduler name must not be empty".into()));
        }
        if let Some(le) = &self.leader_election {
            le.validate()?;
        }
        Ok(())
    }
}

/// What a binding task reports.
#[derive(Debug)]
enum BindOutcome {
    Bound,
    /// 409: someone else bound it. 404: it is gone. Either way: forget it.
    Gone(String),
    /// Retry after backoff.
    Failed(String),
}

#[derive(Debug)]
struct BindResult {
    key: String,
    node: String,
    pod_ref: ObjectReference,
    attempts: u32,
    first_seen: Instant,
    started: Instant,
    outcome: BindOutcome,
}

/// What happens to a pod's `status.nominatedNodeName` with its Unschedulable condition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Nomination {
    Keep,
    Set(String),
    Clear,
}

/// A status write, done in order by `write_statuses`.
#[derive(Debug)]
enum StatusWrite {
    /// `PodScheduled=False/Unschedulable` with the message, and the nomination change.
    Unschedulable {
        pod: Box<Pod>,
        message: String,
        nomination: Nomination,
    },
    /// A lower-priority pod's nomination to a node a preemptor took (`namespace/name`).
    ClearNomination { key: String },
}

/// A preemption's evictions to carry out.
#[derive(Debug)]
struct Eviction {
    preemptor_key: String,
    preemptor_uid: String,
    node: String,
    victims: Vec<preemption::Victim>,
}

/// How one victim's eviction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EvictionOutcome {
    /// Deleted (it goes when the watch says so).
    Deleted,
    /// Already gone, or replaced by a pod of the same name.
    Gone,
    /// The API refused or timed out.
    Failed,
}

/// What an eviction task reports, per victim.
#[derive(Debug)]
struct EvictionDone {
    preemptor_key: String,
    victims: Vec<(String, EvictionOutcome)>,
}

/// What the loop listens to, besides timers, leadership and the elector.
struct LoopInputs {
    pods: mpsc::Receiver<watcher::Event<Pod>>,
    nodes: mpsc::Receiver<watcher::Event<Node>>,
    namespaces: mpsc::Receiver<watcher::Event<Namespace>>,
    binds: mpsc::Receiver<BindResult>,
    evictions: mpsc::Receiver<EvictionDone>,
}

struct Scheduler {
    config: SchedulerConfig,
    client: kube::Client,
    cache: Cache,
    queue: SchedulingQueue,
    nominator: Nominator,
    /// Victims whose eviction this scheduler started and has not yet seen go.
    evicting: BTreeSet<String>,
    metrics: SchedulerMetrics,
    events: EventRecorder,
    status_tx: mpsc::Sender<StatusWrite>,
    bind_tx: mpsc::Sender<BindResult>,
    binds: Arc<Semaphore>,
    evict_tx: mpsc::Sender<EvictionDone>,
    preemptions: Arc<Semaphore>,
    is_leader: watch::Receiver<bool>,
    rng: rand::rngs::StdRng,
    /// Where the next cycle starts filtering (upstream's `nextStartNodeIndex`), so a cycle
    /// that stops early does not always favour the same nodes.
    next_start_node: usize,
    pods_seen: Option<BTreeSet<String>>,
    nodes_seen: Option<BTreeSet<String>>,
    pods_synced: bool,
    nodes_synced: bool,
}

fn object_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Runs the scheduler until `shutdown` resolves (`Ok`) or the Lease is lost (`Err`).
pub async fn run(
    client: kube::Client,
    config: SchedulerConfig,
    metrics: SchedulerMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let shutdown = shutdown.shared();
    let (leader_tx, leader_rx) = watch::channel(config.leader_election.is_none());
    let mut elector = match config.leader_election.clone() {
        Some(le) => {
            let elector = LeaderElector::new(client.clone(), le)?;
            let stop = shutdown.clone();
            Some(tokio::spawn(elector.run(leader_tx, stop)))
        }
        None => None,
    };
    let (pods_rx, pods_task) =
        skiff_client::informer::watch(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let (nodes_rx, nodes_task) =
        skiff_client::informer::watch(Api::<Node>::all(client.clone()), watcher::Config::default());
    let (namespaces_rx, namespaces_task) = skiff_client::informer::watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    let (bind_tx, bind_rx) = mpsc::channel(BIND_CONCURRENCY_MAX);
    let (status_tx, status_rx) = mpsc::channel(STATUS_QUEUE_MAX);
    let (evict_tx, evict_rx) = mpsc::channel(PREEMPTIONS_IN_FLIGHT_MAX);
    tokio::spawn(write_statuses(client.clone(), status_rx));
    let events = EventRecorder::start(client.clone(), &config.scheduler_name, &config.identity);
    let mut scheduler = Scheduler {
        cache: Cache::default(),
        queue: SchedulingQueue::new(QUEUE_PODS_MAX),
        nominator: Nominator::default(),
        evicting: BTreeSet::new(),
        metrics,
        events,
        status_tx,
        bind_tx,
        binds: Arc::new(Semaphore::new(BIND_CONCURRENCY_MAX)),
        evict_tx,
        preemptions: Arc::new(Semaphore::new(PREEMPTIONS_IN_FLIGHT_MAX)),
        is_leader: leader_rx,
        rng: rand::rngs::StdRng::from_os_rng(),
        next_start_node: 0,
        pods_seen: None,
        nodes_seen: None,
        pods_synced: false,
        nodes_synced: false,
        client,
        config,
    };
    let result = scheduler
        .run_loop(
            LoopInputs {
                pods: pods_rx,
                nodes: nodes_rx,
                namespaces: namespaces_rx,
                binds: bind_rx,
                evictions: evict_rx,
            },
            &mut elector,
            shutdown,
        )
        .await;
    namespaces_task.abort();
    pods_task.abort();
    nodes_task.abort();
    if let Some(e) = elector {
        // On shutdown the elector releases the Lease; give it a moment.
        let _ = tokio::time::timeout(Duration::from_secs(2), e).await;
    }
    result
}

impl Scheduler {
    async fn run_loop(
        &mut self,
        mut inputs: LoopInputs,
        elector: &mut Option<tokio::task::JoinHandle<Result<(), skiff_client::Error>>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        tokio::pin!(shutdown);
        loop {
            if *self.is_leader.borrow() && self.pods_synced && self.nodes_synced {
                for _ in 0..CYCLES_PER_TURN {
                    if self.binds.available_permits() == 0 {
                        break;
                    }
                    let Some(popped) = self.queue.pop(Instant::now()) else {
                        break;
                    };
                    self.schedule_one(popped);
                }
            }
            self.publish_queue_lengths();
            let now = Instant::now();
            let (active, ..) = self.queue.lengths();
            let wake =
                if active > 0 && self.binds.available_permits() > 0 && *self.is_leader.borrow() {
                    now
                } else {
                    self.queue
                        .next_backoff()
                        .unwrap_or(now + Duration::from_secs(1))
                        .min(now + Duration::from_secs(1))
                };
            let elector_done = async {
                match elector.as_mut() {
                    Some(handle) => handle.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                res = elector_done => {
                    *elector = None;
                    return match res {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(err)) => Err(err.into()),
                        Err(join) => Err(Error::Invalid(format!("leader election task: {join}"))),
                    };
                }
                _ = self.is_leader.changed() => {}
                Some(event) = inputs.pods.recv() => self.on_pod_event(event),
                Some(event) = inputs.nodes.recv() => self.on_node_event(event),
                Some(event) = inputs.namespaces.recv() => self.on_namespace_event(event),
                Some(result) = inputs.binds.recv() => self.on_bind_result(result),
                Some(done) = inputs.evictions.recv() => self.on_eviction_done(done),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn publish_queue_lengths(&self) {
        let (active, backoff, parked, _) = self.queue.lengths();
        self.metrics.pending.set(&["active"], active as f64);
        self.metrics.pending.set(&["backoff"], backoff as f64);
        self.metrics.pending.set(&["unschedulable"], parked as f64);
    }

    fn ours(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("");
        name.is_empty() || name == self.config.scheduler_name
    }

    fn on_pod_event(&mut self, event: watcher::Event<Pod>) {
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
                }
                self.pods_synced = true;
                self.queue.move_all_to_active_or_backoff(Instant::now());
            }
            watcher::Event::Apply(pod) => self.apply_pod(pod),
            watcher::Event::Delete(pod) => {
                let key = key_of(&pod.metadata);
                self.queue.remove(&key);
                self.evicting.remove(&key);
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

    fn on_namespace_event(&mut self, event: watcher::Event<Namespace>) {
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

    fn on_node_event(&mut self, event: watcher::Event<Node>) {
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

    fn schedule_one(&mut self, popped: crate::queue::Popped) {
        let started = Instant::now();
        let pod = popped.pod;
        let key = popped.key;
        let priority = pod_priority(&pod);
        let nodes = self.cache.nodes();
        let total = nodes.len();
        let wanted = num_feasible_nodes_to_find(total);
        let start = if total == 0 {
            0
        } else {
            self.next_start_node % total
        };
        let filters = PodFilters::new(&pod, &nodes, &self.cache.namespaces);
        // Nodes are seen with the pods nominated there of at least this pod's priority.
        let check = |node: &crate::node_info::NodeInfo| {
            filters.check(&self.nominator.with_nominated(node, &key, priority))
        };
        let mut feasible = Vec::new();
        let mut statuses: std::collections::BTreeMap<String, Unfit> = Default::default();
        // A nominated pod tries its node first (upstream's `evaluateNominatedNode`).
        let nominated = self
            .nominator
            .node_of(&key)
            .or_else(|| nominated_node_name(&pod));
        if let Some(node) = nominated.and_then(|n| nodes.iter().find(|i| i.name() == n))
            && check(node).is_ok()
        {
            feasible.push(*node);
        }
        if feasible.is_empty() {
            let mut processed = 0;
            for i in 0..total {
                let node = nodes[(start + i) % total];
                processed += 1;
                match check(node) {
                    Ok(()) => feasible.push(node),
                    Err(u) => {
                        statuses.insert(node.name().to_string(), u);
                    }
                }
                if feasible.len() >= wanted {
                    break;
                }
            }
            if total > 0 {
                self.next_start_node = (start + processed) % total;
            }
        }
        if feasible.is_empty() {
            let decision = (total > 0).then(|| {
                self.metrics.preemption_attempts.add(&[], 1.0);
                preemption::post_filter(&PreemptionInput {
                    key: &key,
                    filters: &filters,
                    nodes: &nodes,
                    statuses: &statuses,
                    nominator: &self.nominator,
                    evicting: &self.evicting,
                    offset: self.rng.random_range(0..total),
                    now: skiff_client::now_timestamp(),
                })
            });
            let unfit: Vec<Unfit> = statuses.into_values().collect();
            self.unschedulable(key, pod, total, unfit, decision, started);
            return;
        }
        let usage = filters.usage().clone();
        // No DefaultSelector: Services and controllers are not watched (see scores_spread).
        let cx = ScoreContext {
            all_nodes: &nodes,
            namespaces: &self.cache.namespaces,
            default_spread_selector: None,
        };
        let scores = score_nodes(&pod, &usage, &feasible, &cx);
        let Some(best) = select_host(&scores, &mut self.rng) else {
            return;
        };
        let node = feasible[best].name().to_string();
        self.nominator.remove(&key);
        self.cache.assume(&key, &pod, &node);
        let Ok(permit) = self.binds.clone().try_acquire_owned() else {
            // Checked before popping; cannot happen, but never bind without a permit.
            self.cache.forget(&key);
            self.queue.error(&key, Instant::now());
            return;
        };
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let tx = self.bind_tx.clone();
        let is_leader = self.is_leader.clone();
        let pod_ref = object_ref(&pod);
        let (attempts, first_seen) = (popped.attempts, popped.first_seen);
        tokio::spawn(async move {
            let outcome = if !*is_leader.borrow() {
                BindOutcome::Failed("not the leader".into())
            } else {
                bind(&api, &pod, &node).await
            };
            drop(permit);
            let _ = tx
                .send(BindResult {
                    key,
                    node,
                    pod_ref,
                    attempts,
                    first_seen,
                    started,
                    outcome,
                })
                .await;
        });
    }

    /// The pod fits nowhere: act on the PostFilter's decision, record FailedScheduling, park
    /// the pod (or back it off) and write its condition and nomination.
    fn unschedulable(
        &mut self,
        key: String,
        pod: Pod,
        total: usize,
        unfit: Vec<Unfit>,
        decision: Option<Decision>,
        started: Instant,
    ) {
        let profile = self.config.scheduler_name.clone();
        let mut post_filter = None;
        let mut nomination = Nomination::Keep;
        let mut retry_soon = false;
        match decision {
            Some(Decision::Preempt(candidate)) => {
                let node = candidate.node.clone();
                if self.start_preemption(&key, &pod, candidate) {
                    nomination = Nomination::Set(node);
                } else {
                    retry_soon = true;
                }
            }
            Some(Decision::Fail {
                message,
                clear_nomination,
            }) => {
                let had = clear_nomination && self.nominator.remove(&key).is_some();
                if clear_nomination && (had || nominated_node_name(&pod).is_some()) {
                    nomination = Nomination::Clear;
                }
                post_filter = Some(message);
            }
            None => {}
        }
        let message = fit_error_message(total, &unfit, post_filter.as_deref());
        self.metrics.attempts.add(&["unschedulable", &profile], 1.0);
        self.metrics.attempt_duration.observe(
            &["unschedulable", &profile],
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(pod = %key, %message, "unable to schedule pod");
        if retry_soon {
            self.queue.error(&key, Instant::now());
        } else {
            let rejected_by = unfit.iter().map(|u| u.plugin).collect();
            self.queue.unschedulable(&key, Instant::now(), rejected_by);
        }
        self.events.record(NewEvent {
            object: object_ref(&pod),
            type_: EventType::Warning,
            reason: "FailedScheduling".into(),
            message: message.clone(),
            action: "Scheduling".into(),
        });
        if needs_status_update(&pod, &message, &nomination) {
            let _ = self.status_tx.try_send(StatusWrite::Unschedulable {
                pod: Box::new(pod),
                message,
                nomination,
            });
        }
    }

    /// Nominates the preemptor to the candidate's node, drops the nominations of
    /// lower-priority pods there, and hands the victims to an eviction task. `false` when
    /// too many preemptions are in flight (the pod backs off and tries again).
    fn start_preemption(&mut self, key: &str, pod: &Pod, candidate: Candidate) -> bool {
        let Ok(permit) = self.preemptions.clone().try_acquire_owned() else {
            tracing::warn!(pod = %key, "too many preemptions in flight; backing off");
            return false;
        };
        let priority = pod_priority(pod);
        tracing::info!(
            pod = %key,
            node = %candidate.node,
            victims = ?candidate.victims.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(),
            "preempting lower-priority pods"
        );
        self.metrics
            .preemption_victims
            .observe(&[], candidate.victims.len() as f64);
        self.nominator.nominate(key, pod, &candidate.node);
        let lower: Vec<String> = self
            .nominator
            .pods_on(&candidate.node)
            .filter(|(_, n)| n.usage.priority < priority)
            .map(|(k, _)| k.to_string())
            .collect();
        for other in lower {
            self.nominator.remove(&other);
            self.queue.activate(&other, Instant::now());
            let _ = self
                .status_tx
                .try_send(StatusWrite::ClearNomination { key: other });
        }
        for victim in &candidate.victims {
            self.evicting.insert(victim.key.clone());
        }
        let eviction = Eviction {
            preemptor_key: key.to_string(),
            preemptor_uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: candidate.node,
            victims: candidate.victims,
        };
        let client = self.client.clone();
        let events = self.events.clone();
        let tx = self.evict_tx.clone();
        let scheduler_name = self.config.scheduler_name.clone();
        tokio::spawn(async move {
            let done = evict(&client, &events, &scheduler_name, eviction).await;
            drop(permit);
            let _ = tx.send(done).await;
        });
        true
    }

    fn on_eviction_done(&mut self, done: EvictionDone) {
        let mut failed = Vec::new();
        for (key, outcome) in done.victims {
            match outcome {
                // Stays "terminating" until the watch shows it gone.
                EvictionOutcome::Deleted => {}
                EvictionOutcome::Gone => {
                    self.evicting.remove(&key);
                }
                EvictionOutcome::Failed => {
                    self.evicting.remove(&key);
                    failed.push(key);
                }
            }
        }
        if !failed.is_empty() {
            tracing::warn!(pod = %done.preemptor_key, ?failed, "could not evict every victim");
            // As upstream: the preemptor must not wait for deletions that will not come.
            self.queue.activate(&done.preemptor_key, Instant::now());
        }
    }

    fn on_bind_result(&mut self, result: BindResult) {
        let profile = self.config.scheduler_name.clone();
        let elapsed = result.started.elapsed().as_secs_f64();
        match result.outcome {
            BindOutcome::Bound => {
                self.queue.remove(&result.key);
                self.metrics.attempts.add(&["scheduled", &profile], 1.0);
                self.metrics
                    .attempt_duration
                    .observe(&["scheduled", &profile], elapsed);
                let attempts = result.attempts.min(15).to_string();
                self.metrics
                    .pod_scheduling_duration
                    .observe(&[&attempts], result.first_seen.elapsed().as_secs_f64());
                let (ns, name) = result.key.split_once('/').unwrap_or(("", &result.key));
                self.events.record(NewEvent {
                    object: result.pod_ref,
                    type_: EventType::Normal,
                    reason: "Scheduled".into(),
                    message: format!("Successfully assigned {ns}/{name} to {}", result.node),
                    action: "Binding".into(),
                });
            }
            BindOutcome::Gone(why) => {
                tracing::info!(pod = %result.key, %why, "pod bound elsewhere or gone; forgetting it");
                self.cache.forget(&result.key);
                self.queue.remove(&result.key);
                self.metrics.attempts.add(&["error", &profile], 1.0);
            }
            BindOutcome::Failed(why) => {
                tracing::warn!(pod = %result.key, %why, "binding failed; retrying after backoff");
                self.cache.forget(&result.key);
                self.queue.error(&result.key, Instant::now());
                self.metrics.attempts.add(&["error", &profile], 1.0);
                self.metrics
                    .attempt_duration
                    .observe(&["error", &profile], elapsed);
            }
        }
    }
}

/// Plugins whose verdict a newly bound pod or a namespace label change can flip.
const POD_EVENT_PLUGINS: &[&str] = &["InterPodAffinity", "PodTopologySpread"];

/// Upstream's `minFeasibleNodesToFind`.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// Upstream's `minFeasibleNodesPercentageToFind`.
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;
/// Upstream's `DefaultPercentageOfNodesToScore` base for the adaptive percentage.
const BASE_PERCENTAGE_OF_NODES_TO_SCORE: usize = 50;

/// `numFeasibleNodesToFind` with the default (adaptive) `percentageOfNodesToScore`: every node
/// below 100 nodes, else 50% - nodes/125 (at least 5%), at least 100 nodes.
pub fn num_feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = BASE_PERCENTAGE_OF_NODES_TO_SCORE
        .saturating_sub(all / 125)
        .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Whether the pod's PodScheduled condition differs from `False/Unschedulable/message`.
fn needs_condition_update(pod: &Pod, message: &str) -> bool {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    !current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    })
}

/// Whether the condition or the nomination would change.
fn needs_status_update(pod: &Pod, message: &str, nomination: &Nomination) -> bool {
    let nomination_changes = match nomination {
        Nomination::Keep => false,
        Nomination::Set(node) => nominated_node_name(pod) != Some(node.as_str()),
        Nomination::Clear => nominated_node_name(pod).is_some(),
    };
    nomination_changes || needs_condition_update(pod, message)
}

async fn bind(api: &Api<Pod>, pod: &Pod, node: &str) -> BindOutcome {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..Default::default()
        },
    };
    let params = PostParams::default();
    let request =
        api.create_subresource::<Binding, serde_json::Value>("binding", &name, &params, &binding);
    match tokio::time::timeout(BIND_TIMEOUT, request).await {
        Ok(Ok(_)) => BindOutcome::Bound,
        Ok(Err(kube::Error::Api(status))) if status.code == 409 || status.code == 404 => {
            BindOutcome::Gone(status.message)
        }
        Ok(Err(err)) => BindOutcome::Failed(err.to_string()),
        Err(_) => BindOutcome::Failed("binding timed out".into()),
    }
}

/// The status patch of an unschedulable pod: its condition, and its nomination if it changes.
fn unschedulable_patch(message: &str, nomination: &Nomination) -> serde_json::Value {
    let mut status = serde_json::json!({
        "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": Time(skiff_client::now_timestamp()),
            "lastProbeTime": null,
        }]
    });
    match nomination {
        Nomination::Keep => {}
        Nomination::Set(node) => status["nominatedNodeName"] = serde_json::json!(node),
        Nomination::Clear => status["nominatedNodeName"] = serde_json::Value::Null,
    }
    serde_json::json!({ "status": status })
}

/// Writes pods' statuses (conditions, nominations), one at a time.
async fn write_statuses(client: kube::Client, mut rx: mpsc::Receiver<StatusWrite>) {
    while let Some(write) = rx.recv().await {
        let (key, patch) = match &write {
            StatusWrite::Unschedulable {
                pod,
                message,
                nomination,
            } => (
                key_of(&pod.metadata),
                unschedulable_patch(message, nomination),
            ),
            StatusWrite::ClearNomination { key } => (
                key.clone(),
                serde_json::json!({"status": {"nominatedNodeName": null}}),
            ),
        };
        let (namespace, name) = key.split_once('/').unwrap_or(("default", &key));
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        if let Err(err) = api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::warn!(pod = %key, error = %err, "cannot update pod status");
        }
    }
}

/// Evicts a preemption's victims (in parallel): marks each `DisruptionTarget` (reason
/// `PreemptionByScheduler`), deletes it with its uid as precondition, and records the
/// `Preempted` event upstream records. A victim already gone counts as evicted.
async fn evict(
    client: &kube::Client,
    events: &EventRecorder,
    scheduler_name: &str,
    eviction: Eviction,
) -> EvictionDone {
    let Eviction {
        preemptor_key,
        preemptor_uid,
        node,
        victims,
    } = eviction;
    let results = futures::future::join_all(victims.iter().map(|victim| async {
        let (namespace, name) = victim.key.split_once('/').unwrap_or(("default", &victim.key));
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let condition = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": REASON_PREEMPTION_BY_SCHEDULER,
            "message": format!("{scheduler_name}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": Time(skiff_client::now_timestamp()),
        }]}});
        let marked = tokio::time::timeout(
            EVICT_TIMEOUT,
            api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&condition)),
        )
        .await;
        match marked {
            Ok(Ok(_)) => {}
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => return EvictionOutcome::Gone,
            Ok(Err(err)) => {
                tracing::warn!(victim = %victim.key, error = %err, "cannot mark victim DisruptionTarget");
                return EvictionOutcome::Failed;
            }
            Err(_) => return EvictionOutcome::Failed,
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(victim.uid.clone()).filter(|u| !u.is_empty()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match tokio::time::timeout(EVICT_TIMEOUT, api.delete(name, &params)).await {
            Ok(Ok(_)) => {
                events.record(NewEvent {
                    object: ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(namespace.to_string()),
                        name: Some(name.to_string()),
                        uid: Some(victim.uid.clone()).filter(|u| !u.is_empty()),
                        ..Default::default()
                    },
                    type_: EventType::Normal,
                    reason: "Preempted".into(),
                    message: format!("Preempted by pod {preemptor_uid} on node {node}"),
                    action: "Preempting".into(),
                });
                EvictionOutcome::Deleted
            }
            // Gone already, or replaced by a pod of the same name (uid precondition).
            Ok(Err(kube::Error::Api(status))) if status.code == 404 || status.code == 409 => {
                EvictionOutcome::Gone
            }
            Ok(Err(err)) => {
                tracing::warn!(victim = %victim.key, error = %err, "cannot delete victim");
                EvictionOutcome::Failed
            }
            Err(_) => EvictionOutcome::Failed,
        }
    }))
    .await;
    EvictionDone {
        preemptor_key,
        victims: victims.into_iter().map(|v| v.key).zip(results).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status with the `PodScheduled=False/Unschedulable` condition saying `message`.
    fn unschedulable_status(message: &str) -> k8s_openapi::api::core::v1::PodStatus {
        k8s_openapi::api::core::v1::PodStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(message.into()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn feasible_nodes_to_find_matches_upstream() {
        assert_eq!(num_feasible_nodes_to_find(3), 3);
        assert_eq!(num_feasible_nodes_to_find(99), 99);
        assert_eq!(num_feasible_nodes_to_find(100), 100);
        assert_eq!(num_feasible_nodes_to_find(1000), 420);
        assert_eq!(num_feasible_nodes_to_find(5000), 500);
        assert_eq!(num_feasible_nodes_to_find(6000), 300);
    }

    #[test]
    fn nominations_ride_on_the_unschedulable_patch() {
        let set = unschedulable_patch("m", &Nomination::Set("n1".into()));
        assert_eq!(set["status"]["nominatedNodeName"], "n1");
        assert_eq!(set["status"]["conditions"][0]["reason"], "Unschedulable");
        let clear = unschedulable_patch("m", &Nomination::Clear);
        assert!(clear["status"]["nominatedNodeName"].is_null());
        assert!(
            clear["status"].get("nominatedNodeName").is_some(),
            "null deletes it"
        );
        let keep = unschedulable_patch("m", &Nomination::Keep);
        assert!(keep["status"].get("nominatedNodeName").is_none());
        let pod = Pod {
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                nominated_node_name: Some("n1".into()),
                ..unschedulable_status("m")
            }),
            ..Default::default()
        };
        assert!(!needs_status_update(
            &pod,
            "m",
            &Nomination::Set("n1".into())
        ));
        assert!(needs_status_update(
            &pod,
            "m",
            &Nomination::Set("n2".into())
        ));
        assert!(needs_status_update(&pod, "m", &Nomination::Clear));
        assert!(!needs_status_update(&pod, "m", &Nomination::Keep));
    }

    #[test]
    fn condition_is_rewritten_only_when_it_changes() {
        let mut pod = Pod::default();
        assert!(needs_condition_update(&pod, "m"));
        pod.status = Some(unschedulable_status("m"));
        assert!(!needs_condition_update(&pod, "m"));
        assert!(needs_condition_update(&pod, "other"));
    }
}

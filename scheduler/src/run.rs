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
//!
//! The loop's parts: `informers` (the watches and their events), `cycle` (one pod's
//! scheduling attempt), `binding`, `preempt` (nominations and evictions) and `status` (pod
//! status writes).

mod binding;
mod cycle;
mod informers;
mod preempt;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rand::SeedableRng;
use skiff_client::events::EventRecorder;
use skiff_client::leader::{LeaderElectionConfig, LeaderElector};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::Error;
use crate::cache::Cache;
use crate::metrics::SchedulerMetrics;
use crate::nominator::Nominator;
use crate::queue::{QUEUE_PODS_MAX, SchedulingQueue};
use binding::BindResult;
use preempt::EvictionDone;
use status::{StatusWrite, write_statuses};

pub use cycle::num_feasible_nodes_to_find;

/// Bindings in flight at once.
pub const BIND_CONCURRENCY_MAX: usize = 64;
/// Pods scheduled per loop turn before watch events are looked at again.
const CYCLES_PER_TURN: usize = 128;
/// Status patches waiting to be written; more are skipped (the next attempt rewrites).
const STATUS_QUEUE_MAX: usize = 1024;
/// Preemptions (victim evictions) in flight at once; a pod that would start one more backs off.
pub const PREEMPTIONS_IN_FLIGHT_MAX: usize = 16;

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

/// What the loop listens to, besides timers, leadership and the elector.
struct LoopInputs {
    watches: informers::Watches,
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
    /// Victim → the preemptor waiting for it (`SchedulingQueue::await_victims`).
    preemptor_of: BTreeMap<String, String>,
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
    /// What VolumeBinding reads.
    volume_stores: informers::VolumeStores,
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
    let (watches, watch_tasks) = informers::start_watches(&client);
    let volume_stores = watches.volume_stores.clone();
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
        preemptor_of: BTreeMap::new(),
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
        volume_stores,
        client,
        config,
    };
    let result = scheduler
        .run_loop(
            LoopInputs {
                watches,
                binds: bind_rx,
                evictions: evict_rx,
            },
            &mut elector,
            shutdown,
        )
        .await;
    drop(watch_tasks);
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
                Some(event) = inputs.watches.pods.recv() => self.on_pod_event(event),
                Some(event) = inputs.watches.nodes.recv() => self.on_node_event(event),
                Some(event) = inputs.watches.namespaces.recv() => self.on_namespace_event(event),
                Some(event) = inputs.watches.selectors.recv() => self.on_selector_event(event),
                Some(()) = inputs.watches.volume_changes.recv() => self.on_volume_change(),
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
}

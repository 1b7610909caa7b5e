//! The scheduling queue, shaped like kube-scheduler's `PriorityQueue`: `active` (highest
//! `spec.priority` first, then oldest), `backoff` (1 s doubling to 10 s per failed attempt),
//! and `unschedulable` (pods no node fits, parked until a cluster event — a node added or
//! changed, a pod deleted — might help, or for at most 5 minutes). A pod that failed while
//! such an event happened during its attempt goes to backoff rather than being parked, so
//! the event is not missed. A pod that preempted waits for its own victims only
//! (`await_victims`, `victims_gone`). Pure: time comes in as an argument. Bounded by `max_pods`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

/// `podInitialBackoffDuration`.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// `podMaxBackoffDuration`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// `podMaxInUnschedulablePodsDuration`.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(5 * 60);
/// Pods the queue holds at most (a pod past this is refused and retried on its next update).
pub const QUEUE_PODS_MAX: usize = 100_000;

/// Where a queued pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Ready to be tried.
    Active,
    /// Waiting out its backoff.
    Backoff,
    /// Waiting for a cluster event.
    Unschedulable,
    /// Popped, being scheduled.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Pod,
    priority: i32,
    seq: u64,
    attempts: u32,
    place: Place,
    backoff_until: Instant,
    parked_at: Instant,
    pop_cycle: u64,
    first_seen: Instant,
    /// Plugins that refused the pod on its last attempt.
    rejected_by: BTreeSet<&'static str>,
    /// Parked by [`SchedulingQueue::await_victims`]: only its victims' deletion (or an update
    /// of its spec, or the 5-minute limit) moves it, not every cluster event.
    awaiting_victims: bool,
}

/// A pod handed out by `pop`.
#[derive(Debug, Clone)]
pub struct Popped {
    /// `namespace/name`.
    pub key: String,
    /// The pod as last seen.
    pub pod: Pod,
    /// Attempts including this one.
    pub attempts: u32,
    /// When the queue first saw the pod (for the scheduling-duration metric).
    pub first_seen: Instant,
}

/// The queue.
#[derive(Debug)]
pub struct SchedulingQueue {
    entries: BTreeMap<String, Entry>,
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    backoff: BTreeSet<(Instant, u64, String)>,
    next_seq: u64,
    cycle: u64,
    move_request_cycle: u64,
    max_pods: usize,
}

/// Backoff after `attempts` failures: 1 s, 2 s, 4 s, 8 s, then 10 s.
pub fn backoff_for(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1u32 << shift)
        .min(MAX_BACKOFF)
}

impl SchedulingQueue {
    /// An empty queue holding at most `max_pods`.
    pub fn new(max_pods: usize) -> SchedulingQueue {
        SchedulingQueue {
            entries: BTreeMap::new(),
            active: BTreeSet::new(),
            backoff: BTreeSet::new(),
            next_seq: 0,
            cycle: 0,
            move_request_cycle: 0,
            max_pods,
        }
    }

    fn unlink(&mut self, key: &str) {
        if let Some(e) = self.entries.get(key) {
            match e.place {
                Place::Active => {
                    self.active
                        .remove(&(Reverse(e.priority), e.seq, key.to_string()));
                }
                Place::Backoff => {
                    self.backoff
                        .remove(&(e.backoff_until, e.seq, key.to_string()));
                }
                Place::Unschedulable | Place::InFlight => {}
            }
        }
    }

    fn place(&mut self, key: &str, place: Place) {
        self.unlink(key);
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.place = place;
        match place {
            Place::Active => {
                self.active
                    .insert((Reverse(e.priority), e.seq, key.to_string()));
            }
            Place::Backoff => {
                self.backoff
                    .insert((e.backoff_until, e.seq, key.to_string()));
            }
            Place::Unschedulable | Place::InFlight => {}
        }
    }

    /// Adds a pending pod, or updates the queued copy. An update to a parked pod may make it
    /// schedulable: it moves on (to backoff if still backing off). `false` when full.
    pub fn add_or_update(&mut self, key: &str, pod: Pod, now: Instant) -> bool {
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        if let Some(e) = self.entries.get_mut(key) {
            let changed_spec =
                e.pod.spec != pod.spec || e.pod.metadata.labels != pod.metadata.labels;
            e.pod = pod;
            if e.place == Place::Unschedulable && changed_spec {
                e.awaiting_victims = false;
                let next = if e.backoff_until > now {
                    Place::Backoff
                } else {
                    Place::Active
                };
                self.place(key, next);
            }
            return true;
        }
        if self.entries.len() >= self.max_pods {
            return false;
        }
        self.next_seq += 1;
        self.entries.insert(
            key.to_string(),
            Entry {
                pod,
                priority,
                seq: self.next_seq,
                attempts: 0,
                place: Place::InFlight,
                backoff_until: now,
                parked_at: now,
                pop_cycle: 0,
                first_seen: now,
                rejected_by: BTreeSet::new(),
                awaiting_victims: false,
            },
        );
        self.place(key, Place::Active);
        true
    }

    /// Forgets a pod (deleted, or bound by anyone).
    pub fn remove(&mut self, key: &str) {
        self.unlink(key);
        self.entries.remove(key);
    }

    /// Drops pods whose key fails `keep` (after a relist).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.entries.keys().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// Whether the queue knows this pod.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Moves due backoff pods and long-parked pods to active.
    pub fn flush(&mut self, now: Instant) {
        while let Some((until, _, key)) = self.backoff.first().cloned() {
            if until > now {
                break;
            }
            self.place(&key, Place::Active);
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.place == Place::Unschedulable && now >= e.parked_at + MAX_UNSCHEDULABLE
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.place(&key, Place::Active);
        }
    }

    /// The next pod to schedule, if any is active (after `flush`).
    pub fn pop(&mut self, now: Instant) -> Option<Popped> {
        self.flush(now);
        let (_, _, key) = self.active.pop_first()?;
        self.cycle += 1;
        let cycle = self.cycle;
        let e = self.entries.get_mut(&key)?;
        e.place = Place::InFlight;
        e.awaiting_victims = false;
        e.attempts += 1;
        e.pop_cycle = cycle;
        Some(Popped {
            key,
            pod: e.pod.clone(),
            attempts: e.attempts,
            first_seen: e.first_seen,
        })
    }

    /// The pod fit no node (`rejected_by` said so): park it, or back it off if a move
    /// request came in meanwhile.
    pub fn unschedulable(&mut self, key: &str, now: Instant, rejected_by: BTreeSet<&'static str>) {
        let move_cycle = self.move_request_cycle;
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.rejected_by = rejected_by;
        e.backoff_until = now + backoff_for(e.attempts);
        e.parked_at = now;
        let next = if move_cycle >= e.pop_cycle {
            Place::Backoff
        } else {
            Place::Unschedulable
        };
        self.place(key, next);
    }

    /// The pod preempted and waits for its victims to go: parked with no backoff, out of
    /// reach of the cluster events that move other parked pods (each of which would be one
    /// more failed attempt and a longer backoff), until [`SchedulingQueue::victims_gone`].
    /// Upstream gets the same from its queueing hints.
    pub fn await_victims(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.rejected_by = BTreeSet::new();
        e.backoff_until = now;
        e.parked_at = now;
        e.awaiting_victims = true;
        self.place(key, Place::Unschedulable);
    }

    /// The victims of a pod parked by [`SchedulingQueue::await_victims`] are gone: it is
    /// tried again at once.
    pub fn victims_gone(&mut self, key: &str) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if !std::mem::take(&mut e.awaiting_victims) {
            return;
        }
        if e.place == Place::Unschedulable {
            self.place(key, Place::Active);
        }
    }

    /// The attempt failed for another reason (an API error): back off.
    pub fn error(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.backoff_until = now + backoff_for(e.attempts);
        self.place(key, Place::Backoff);
    }

    /// A cluster event that may help parked pods: they move to backoff or active.
    pub fn move_all_to_active_or_backoff(&mut self, now: Instant) {
        self.move_request_cycle = self.cycle;
        let parked: Vec<(String, Instant)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Unschedulable && !e.awaiting_victims)
            .map(|(k, e)| (k.clone(), e.backoff_until))
            .collect();
        for (key, until) in parked {
            let next = if until > now {
                Place::Backoff
            } else {
                Place::Active
            };
            self.place(&key, next);
        }
    }

    /// A pod was bound somewhere: parked pods refused by one of `plugins` (InterPodAffinity,
    /// PodTopologySpread) may fit now (upstream's AssignedPodAdd hint); the others stay parked.
    pub fn move_rejected_by(&mut self, plugins: &[&str], now: Instant) {
        let parked: Vec<(String, Instant)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.place == Place::Unschedulable
                    && !e.awaiting_victims
                    && plugins.iter().any(|p| e.rejected_by.contains(p))
            })
            .map(|(k, e)| (k.clone(), e.backoff_until))
            .collect();
        for (key, until) in parked {
            let next = if until > now {
                Place::Backoff
            } else {
                Place::Active
            };
            self.place(&key, next);
        }
    }

    /// When the earliest backoff ends (for the caller's timer).
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.first().map(|(t, _, _)| *t)
    }

    /// Pods per place: (active, backoff, unschedulable, in flight).
    pub fn lengths(&self) -> (usize, usize, usize, usize) {
        let parked = self
            .entries
            .values()
            .filter(|e| e.place == Place::Unschedulable)
            .count();
        let in_flight = self
            .entries
            .values()
            .filter(|e| e.place == Place::InFlight)
            .count();
        (self.active.len(), self.backoff.len(), parked, in_flight)
    }

    /// The queued copy of a pod.
    pub fn pod(&self, key: &str) -> Option<&Pod> {
        self.entries.get(key).map(|e| &e.pod)
    }

    /// A parked pod should be tried again (its nomination was dropped, or its preemption
    /// failed): to active, or to backoff while it is still backing off.
    pub fn activate(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get(key) else {
            return;
        };
        if e.place != Place::Unschedulable {
            return;
        }
        let next = if e.backoff_until > now {
            Place::Backoff
        } else {
            Place::Active
        };
        self.place(key, next);
    }

    /// Where a pod is.
    pub fn place_of(&self, key: &str) -> Option<Place> {
        self.entries.get(key).map(|e| e.place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(priority: i32) -> Pod {
        Pod {
            spec: Some(PodSpec {
                priority: Some(priority),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff_for(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let now = Instant::now();
        let mut q = SchedulingQueue::new(10);
        q.add_or_update("a", pod(0), now);
        q.add_or_update("b", pod(10), now);
        q.add_or_update("c", pod(0), now);
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|p| p.key)).collect();
        assert_eq!(order, vec!["b", "a", "c"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_an_event_then_back_off() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(10);
        q.add_or_update("a", pod(0), t0);
        let p = q.pop(t0).unwrap();
        assert_eq!(p.attempts, 1);
        q.unschedulable("a", t0, BTreeSet::new());
        assert_eq!(q.place_of("a"), Some(Place::Unschedulable));
        assert!(
            q.pop(t0 + Duration::from_secs(60)).is_none(),
            "parked until an event"
        );
        q.move_all_to_active_or_backoff(t0 + Duration::from_millis(500));
        assert_eq!(q.place_of("a"), Some(Place::Backoff));
        assert!(q.pop(t0 + Duration::from_millis(900)).is_none());
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).unwrap().attempts, 2);
    }

    #[test]
    fn a_preemptor_waits_for_its_victims_not_for_other_events() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(10);
        q.add_or_update("p", pod(100), t0);
        // Several failed attempts: its backoff would be 8 s by now.
        for _ in 0..4 {
            q.pop(t0).unwrap();
            q.error("p", t0);
            q.flush(t0 + Duration::from_secs(60));
        }
        let attempts = q.pop(t0).unwrap().attempts;
        q.await_victims("p", t0);
        // Other pods' deletions and bindings do not move it...
        q.move_all_to_active_or_backoff(t0);
        q.move_rejected_by(&["InterPodAffinity"], t0);
        assert_eq!(q.place_of("p"), Some(Place::Unschedulable));
        assert!(q.pop(t0 + Duration::from_secs(60)).is_none());
        // ...nor does a status-only update; its victims going does, with no backoff.
        q.add_or_update("p", pod(100), t0);
        assert_eq!(q.place_of("p"), Some(Place::Unschedulable));
        q.victims_gone("p");
        let again = q.pop(t0).expect("tried again at once");
        assert_eq!(again.attempts, attempts + 1);
        // A second call is a no-op once it was woken.
        q.unschedulable("p", t0, BTreeSet::new());
        q.victims_gone("p");
        assert_eq!(q.place_of("p"), Some(Place::Unschedulable));
    }

    #[test]
    fn a_bound_pod_wakes_only_pods_refused_by_inter_pod_affinity() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(10);
        q.add_or_update("fit", pod(0), t0);
        q.add_or_update("aff", pod(0), t0);
        q.pop(t0).unwrap();
        q.pop(t0).unwrap();
        q.unschedulable("fit", t0, BTreeSet::from(["NodeResourcesFit"]));
        q.unschedulable("aff", t0, BTreeSet::from(["InterPodAffinity"]));
        q.move_rejected_by(&["InterPodAffinity"], t0 + Duration::from_secs(2));
        assert_eq!(q.place_of("fit"), Some(Place::Unschedulable));
        assert_eq!(q.place_of("aff"), Some(Place::Active));
    }

    #[test]
    fn an_event_during_the_attempt_is_not_lost() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(10);
        q.add_or_update("a", pod(0), t0);
        q.pop(t0).unwrap();
        q.move_all_to_active_or_backoff(t0); // a node appeared while "a" was being tried
        q.unschedulable("a", t0, BTreeSet::new());
        assert_eq!(q.place_of("a"), Some(Place::Backoff));
    }

    #[test]
    fn parked_pods_retry_after_five_minutes_and_queue_is_bounded() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new(1);
        assert!(q.add_or_update("a", pod(0), t0));
        assert!(!q.add_or_update("b", pod(0), t0), "full");
        q.pop(t0).unwrap();
        q.unschedulable("a", t0, BTreeSet::new());
        assert!(
            q.pop(t0 + MAX_UNSCHEDULABLE - Duration::from_secs(1))
                .is_none()
        );
        assert!(q.pop(t0 + MAX_UNSCHEDULABLE).is_some());
        q.remove("a");
        assert_eq!(q.lengths(), (0, 0, 0, 0));
    }
}

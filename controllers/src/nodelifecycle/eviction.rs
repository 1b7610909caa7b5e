//! Taint-based eviction (upstream's NoExecuteTaintManager, `pkg/controller/tainteviction`)
//! without any IO: which pods on a node with NoExecute taints must go and when, and the timers
//! that wait for the tolerated ones.
//!
//! A pod that does not tolerate every NoExecute taint of its node is evicted at once; one that
//! tolerates them all, some for a limited `tolerationSeconds`, is evicted when the first of
//! those runs out — each counted from its taint's `timeAdded` (from when the controller first
//! scheduled the pod if the taint has none); one that tolerates them all forever stays. A
//! timer is cancelled when the taints go, the pod leaves, or its tolerations change to cover
//! them for good. The controller recomputes every pod's timer on each pass, so a lost event
//! only delays a decision until the next pass.

use std::collections::{BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::shell::Key;

/// Eviction timers held at most (one per pod on a tainted node); a pod beyond it is scheduled
/// on a later pass.
pub const EVICTION_TIMERS_MAX: usize = 100_000;

/// Whether `toleration` tolerates `taint` (upstream `Toleration.ToleratesTaint`): the effect
/// matches (or is empty: every effect), and the key and value match under the operator
/// (`Exists` with an empty key tolerates everything; `Equal`, the default, compares values).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The NoExecute taints of a taint list.
pub fn no_execute(taints: &[Taint]) -> Vec<Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .cloned()
        .collect()
}

/// What to do with one pod on a node with NoExecute taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionDecision {
    /// No NoExecute taints, or all tolerated forever: no eviction (cancel any timer).
    Keep,
    /// Some taint is not tolerated: evict now.
    EvictNow,
    /// Every taint is tolerated, some only for a while: evict at this time.
    EvictAt(Timestamp),
}

/// Decides for a pod with `tolerations` on a node with `taints` (NoExecute ones; others are
/// ignored). For each taint the first toleration that tolerates it is the one used (upstream
/// `GetMatchingTolerations`); a used toleration's `tolerationSeconds` (negative counts as 0)
/// runs from the taint's `timeAdded`, or from `start` for a taint without one.
pub fn decide(tolerations: &[Toleration], taints: &[Taint], start: Timestamp) -> EvictionDecision {
    let mut deadline: Option<Timestamp> = None;
    let mut any = false;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        any = true;
        let Some(used) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return EvictionDecision::EvictNow;
        };
        if let Some(seconds) = used.toleration_seconds {
            let from = taint.time_added.as_ref().map_or(start, |t| t.0);
            let at = from
                .saturating_add(SignedDuration::from_secs(seconds.max(0)))
                .unwrap_or(Timestamp::MAX);
            deadline = Some(deadline.map_or(at, |d: Timestamp| d.min(at)));
        }
    }
    match deadline {
        Some(at) if any => EvictionDecision::EvictAt(at),
        _ => EvictionDecision::Keep,
    }
}

/// One pod as an eviction pass sees it: bound to a node with NoExecute taints, not being
/// deleted.
#[derive(Debug, Clone)]
pub struct PodOnTaintedNode<'a> {
    /// The pod's key.
    pub key: Key,
    /// The pod's uid.
    pub uid: String,
    /// The pod's tolerations.
    pub tolerations: &'a [Toleration],
    /// Its node's NoExecute taints.
    pub taints: &'a [Taint],
}

#[derive(Debug, Clone, PartialEq)]
struct Timer {
    uid: String,
    /// When the pod is due.
    at: Timestamp,
    /// When the timer was first set (the start of taints without `timeAdded`).
    created: Timestamp,
    /// Handed out for deletion; kept until the pod is gone or being deleted, so a lagging
    /// cache does not evict it twice.
    fired: bool,
}

/// The eviction timers of every pod on a tainted node: due times in order, at most
/// [`EVICTION_TIMERS_MAX`].
#[derive(Debug, Default)]
pub struct EvictionTimers {
    timers: HashMap<Key, Timer>,
    order: BTreeSet<(Timestamp, Key)>,
}

/// What a pass changed, for Events.
#[derive(Debug, Default, PartialEq)]
pub struct PassOutcome {
    /// Pods whose scheduled eviction was cancelled (upstream records "Cancelling deletion").
    pub cancelled: Vec<Key>,
    /// Pods that could not get a timer because the map is full.
    pub dropped: usize,
}

impl EvictionTimers {
    /// Timers held (fired ones included).
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// Whether no timer is held.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    fn unschedule(&mut self, key: &Key) -> Option<Timer> {
        let timer = self.timers.remove(key)?;
        if !timer.fired {
            self.order.remove(&(timer.at, key.clone()));
        }
        Some(timer)
    }

    /// One level-triggered pass over every pod on a tainted node (`pods`): timers are set,
    /// moved or cancelled to match [`decide`]; timers of pods not in `pods` (gone, being
    /// deleted, or their node no longer tainted) are dropped, and cancelled if they had not
    /// fired.
    pub fn sync<'a>(
        &mut self,
        pods: impl IntoIterator<Item = PodOnTaintedNode<'a>>,
        now: Timestamp,
    ) -> PassOutcome {
        let mut outcome = PassOutcome::default();
        let mut seen = std::collections::HashSet::new();
        for pod in pods {
            seen.insert(pod.key.clone());
            let existing = self
                .timers
                .get(&pod.key)
                .filter(|t| t.uid == pod.uid)
                .cloned();
            if existing.as_ref().is_some_and(|t| t.fired) {
                continue;
            }
            let start = existing.as_ref().map_or(now, |t| t.created);
            let at = match decide(pod.tolerations, pod.taints, start) {
                EvictionDecision::Keep => {
                    if self.unschedule(&pod.key).is_some_and(|t| !t.fired) {
                        outcome.cancelled.push(pod.key.clone());
                    }
                    continue;
                }
                EvictionDecision::EvictNow => now,
                EvictionDecision::EvictAt(at) => at,
            };
            if existing.as_ref().is_some_and(|t| t.at == at) {
                continue;
            }
            let replaced = self.unschedule(&pod.key);
            if replaced.is_none() && self.timers.len() >= EVICTION_TIMERS_MAX {
                outcome.dropped += 1;
                continue;
            }
            let created = replaced
                .filter(|t| t.uid == pod.uid)
                .map_or(now, |t| t.created);
            self.order.insert((at, pod.key.clone()));
            self.timers.insert(
                pod.key,
                Timer {
                    uid: pod.uid,
                    at,
                    created,
                    fired: false,
                },
            );
        }
        let gone: Vec<Key> = self
            .timers
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if self.unschedule(&key).is_some_and(|t| !t.fired) {
                outcome.cancelled.push(key);
            }
        }
        outcome.cancelled.sort();
        outcome
    }

    /// The pods due at `now` (at most `limit`), earliest first, with their uids; they are
    /// marked fired.
    pub fn take_due(&mut self, now: Timestamp, limit: usize) -> Vec<(Key, String)> {
        let mut due = Vec::new();
        while due.len() < limit {
            let Some((at, key)) = self.order.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.order.remove(&(at, key.clone()));
            if let Some(timer) = self.timers.get_mut(&key) {
                timer.fired = true;
                due.push((key, timer.uid.clone()));
            }
        }
        due
    }

    /// A fired pod whose deletion failed: due again at `at`.
    pub fn retry(&mut self, key: &Key, at: Timestamp) {
        if let Some(timer) = self.timers.get_mut(key)
            && timer.fired
        {
            timer.fired = false;
            timer.at = at;
            self.order.insert((at, key.clone()));
        }
    }

    /// When the next timer is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.order.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    fn taint(key: &str, added: Option<Timestamp>) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: added.map(Time),
        }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
    const NOT_READY: &str = "node.kubernetes.io/not-ready";

    #[test]
    fn toleration_matching_as_upstream() {
        let t = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoExecute".into(),
            time_added: None,
        };
        let equal = Toleration {
            key: Some("k".into()),
            value: Some("v".into()),
            ..Default::default()
        };
        assert!(tolerates(&equal, &t));
        let wrong_value = Toleration {
            value: Some("w".into()),
            ..equal.clone()
        };
        assert!(!tolerates(&wrong_value, &t));
        let wildcard = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&wildcard, &t));
        let other_effect = Toleration {
            effect: Some("NoSchedule".into()),
            ..equal
        };
        assert!(!tolerates(&other_effect, &t));
    }

    #[test]
    fn untolerated_now_limited_at_the_earliest_deadline_forever_kept() {
        let taints = [
            taint(UNREACHABLE, Some(t0())),
            taint(NOT_READY, Some(t0() + secs(100))),
        ];
        assert_eq!(decide(&[], &taints, t0()), EvictionDecision::EvictNow);
        assert_eq!(
            decide(&[toleration(UNREACHABLE, Some(5))], &taints, t0()),
            EvictionDecision::EvictNow,
            "not-ready is not tolerated"
        );
        let both = [
            toleration(UNREACHABLE, Some(300)),
            toleration(NOT_READY, Some(5)),
        ];
        assert_eq!(
            decide(&both, &taints, t0()),
            EvictionDecision::EvictAt(t0() + secs(105))
        );
        let forever = [toleration(UNREACHABLE, None), toleration(NOT_READY, None)];
        assert_eq!(decide(&forever, &taints, t0()), EvictionDecision::Keep);
        let mixed = [
            toleration(UNREACHABLE, None),
            toleration(NOT_READY, Some(0)),
        ];
        assert_eq!(
            decide(&mixed, &taints, t0()),
            EvictionDecision::EvictAt(t0() + secs(100))
        );
        // No timeAdded: counted from the given start.
        let untimed = [taint(UNREACHABLE, None)];
        assert_eq!(
            decide(
                &[toleration(UNREACHABLE, Some(-3))],
                &untimed,
                t0() + secs(9)
            ),
            EvictionDecision::EvictAt(t0() + secs(9))
        );
        assert_eq!(decide(&[], &[], t0()), EvictionDecision::Keep);
    }

    fn pod<'a>(
        name: &str,
        tolerations: &'a [Toleration],
        taints: &'a [Taint],
    ) -> PodOnTaintedNode<'a> {
        PodOnTaintedNode {
            key: Key::new("default", name),
            uid: format!("uid-{name}"),
            tolerations,
            taints,
        }
    }

    #[test]
    fn timers_fire_once_move_and_cancel_when_taints_go() {
        let mut timers = EvictionTimers::default();
        let taints = [taint(UNREACHABLE, Some(t0()))];
        let five = [toleration(UNREACHABLE, Some(5))];
        let none: [Toleration; 0] = [];
        let outcome = timers.sync([pod("a", &five, &taints), pod("b", &none, &taints)], t0());
        assert_eq!(outcome, PassOutcome::default());
        assert_eq!(timers.next_due(), Some(t0()));
        assert_eq!(
            timers.take_due(t0(), 10),
            vec![(Key::new("default", "b"), "uid-b".to_string())]
        );
        assert_eq!(timers.next_due(), Some(t0() + secs(5)));
        // The cache still shows b: it is not handed out twice.
        timers.sync(
            [pod("a", &five, &taints), pod("b", &none, &taints)],
            t0() + secs(1),
        );
        assert!(timers.take_due(t0() + secs(4), 10).is_empty());
        // b's deletion failed: retried.
        timers.retry(&Key::new("default", "b"), t0() + secs(2));
        assert_eq!(timers.take_due(t0() + secs(2), 10).len(), 1);
        // The taint goes: a's timer is cancelled, b (fired) is dropped quietly.
        let outcome = timers.sync(Vec::new(), t0() + secs(3));
        assert_eq!(outcome.cancelled, vec![Key::new("default", "a")]);
        assert!(timers.is_empty());
        assert_eq!(timers.next_due(), None);
    }

    #[test]
    fn a_pod_that_comes_to_tolerate_forever_is_cancelled_and_a_tighter_toleration_moves_the_timer()
    {
        let mut timers = EvictionTimers::default();
        let taints = [taint(UNREACHABLE, Some(t0()))];
        let long = [toleration(UNREACHABLE, Some(300))];
        let short = [toleration(UNREACHABLE, Some(5))];
        let forever = [toleration(UNREACHABLE, None)];
        timers.sync([pod("a", &long, &taints)], t0());
        assert_eq!(timers.next_due(), Some(t0() + secs(300)));
        timers.sync([pod("a", &short, &taints)], t0() + secs(1));
        assert_eq!(timers.next_due(), Some(t0() + secs(5)));
        let outcome = timers.sync([pod("a", &forever, &taints)], t0() + secs(2));
        assert_eq!(outcome.cancelled, vec![Key::new("default", "a")]);
        assert!(timers.take_due(t0() + secs(1000), 10).is_empty());
    }

    #[test]
    fn untimed_taints_count_from_the_first_pass_that_saw_the_pod() {
        let mut timers = EvictionTimers::default();
        let taints = [taint(UNREACHABLE, None)];
        let five = [toleration(UNREACHABLE, Some(5))];
        timers.sync([pod("a", &five, &taints)], t0());
        timers.sync([pod("a", &five, &taints)], t0() + secs(3));
        assert_eq!(timers.next_due(), Some(t0() + secs(5)));
        assert!(timers.take_due(t0() + secs(4), 10).is_empty());
        assert_eq!(timers.take_due(t0() + secs(5), 10).len(), 1);
    }
}

//! Zones and the rate at which NoExecute taints are added, as upstream's node lifecycle
//! controller keeps them (`handleDisruption`, `ComputeZoneState`, `ReducedQPSFunc`, and the
//! `RateLimitedTimedQueue` of `nodelifecycle/scheduler`), without any IO. Each zone has a
//! queue of nodes waiting for their NoExecute taint, drained through a token bucket
//! (`--node-eviction-rate` per second, burst 1); a zone where most nodes are unhealthy slows
//! down (`--secondary-node-eviction-rate` in large zones, none in small ones), and when every
//! zone is fully disrupted — more likely the control plane's network than every node — the
//! controller stops tainting altogether and removes the NoExecute taints.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Nodes one zone's tainter queue holds at most (a node beyond it is queued on a later pass).
pub const TAINT_QUEUE_MAX: usize = 50_000;
/// Zones tracked at most (a node in a zone beyond it is neither counted nor tainted).
pub const ZONES_MAX: usize = 1_000;
/// Tokens a zone's bucket holds at most (upstream `EvictionRateLimiterBurst`).
pub const EVICTION_RATE_LIMITER_BURST: f64 = 1.0;

/// A zone's health (upstream `ZoneState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    /// Seen, not judged yet.
    Initial,
    /// Few unhealthy nodes: taint at `--node-eviction-rate`.
    Normal,
    /// At least `--unhealthy-zone-threshold` of more than two nodes unhealthy.
    PartialDisruption,
    /// No node ready.
    FullDisruption,
}

/// The rates and thresholds zones are judged with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZoneSettings {
    /// Taints per second in a normal zone (`--node-eviction-rate`).
    pub eviction_rate: f64,
    /// Taints per second in a large partially disrupted zone (`--secondary-node-eviction-rate`).
    pub secondary_eviction_rate: f64,
    /// A zone with more nodes than this is large (`--large-cluster-size-threshold`).
    pub large_cluster_threshold: u32,
    /// Fraction of unhealthy nodes that makes a zone partially disrupted
    /// (`--unhealthy-zone-threshold`).
    pub unhealthy_zone_threshold: f64,
}

/// Upstream's `ComputeZoneState`: the number of nodes not ready (a missing Ready condition
/// counts as not ready) and the zone's state, from the Ready statuses of its nodes.
pub fn compute_zone_state(ready: &[Option<&str>], unhealthy_threshold: f64) -> (usize, ZoneState) {
    let ready_nodes = ready.iter().filter(|r| **r == Some("True")).count();
    let not_ready = ready.len() - ready_nodes;
    let state = if ready_nodes == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / ready.len() as f64 >= unhealthy_threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    };
    (not_ready, state)
}

/// The tainting rate of a zone of `zone_size` nodes in `state` (`None` for `Initial`: keep
/// the current one). Upstream: normal and fully disrupted zones use the normal rate (a fully
/// disrupted zone among healthy ones is probably really down), partially disrupted ones the
/// secondary rate if large, else nothing (`ReducedQPSFunc`).
pub fn zone_rate(settings: &ZoneSettings, zone_size: usize, state: ZoneState) -> Option<f64> {
    match state {
        ZoneState::Initial => None,
        ZoneState::Normal | ZoneState::FullDisruption => Some(settings.eviction_rate),
        ZoneState::PartialDisruption => {
            if zone_size > settings.large_cluster_threshold as usize {
                Some(settings.secondary_eviction_rate)
            } else {
                Some(0.0)
            }
        }
    }
}

/// A token bucket (client-go's `flowcontrol.NewTokenBucketRateLimiter`): starts full, refills
/// at `qps` up to [`EVICTION_RATE_LIMITER_BURST`]; a rate of zero never accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    qps: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `qps`.
    pub fn new(qps: f64, now: Instant) -> TokenBucket {
        let qps = if qps.is_finite() && qps > 0.0 {
            qps
        } else {
            0.0
        };
        TokenBucket {
            qps,
            tokens: if qps > 0.0 {
                EVICTION_RATE_LIMITER_BURST
            } else {
                0.0
            },
            last: now,
        }
    }

    /// The rate.
    pub fn qps(&self) -> f64 {
        self.qps
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(EVICTION_RATE_LIMITER_BURST);
        self.last = self.last.max(now);
    }

    /// Takes a token if one is there.
    pub fn try_accept(&mut self, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return false;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is there, without taking it.
    fn has_token(&mut self, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return false;
        }
        self.refill(now);
        self.tokens >= 1.0
    }
}

/// One zone's queue of nodes waiting for a NoExecute taint (upstream
/// `RateLimitedTimedQueue`): first in, first out, a node at most once, each popped only when
/// due and when the zone's bucket has a token.
#[derive(Debug, Clone)]
pub struct ZoneTainter {
    queue: VecDeque<(String, Instant)>,
    queued: HashSet<String>,
    limiter: TokenBucket,
}

impl ZoneTainter {
    /// An empty queue tainting at `qps`.
    pub fn new(qps: f64, now: Instant) -> ZoneTainter {
        ZoneTainter {
            queue: VecDeque::new(),
            queued: HashSet::new(),
            limiter: TokenBucket::new(qps, now),
        }
    }

    /// Queues `node`, due at `now`; `false` if it is queued already or the queue is full.
    pub fn add(&mut self, node: &str, now: Instant) -> bool {
        if self.queued.contains(node) || self.queue.len() >= TAINT_QUEUE_MAX {
            return false;
        }
        self.queued.insert(node.to_string());
        self.queue.push_back((node.to_string(), now));
        true
    }

    /// Drops `node` from the queue; whether it was there.
    pub fn remove(&mut self, node: &str) -> bool {
        if !self.queued.remove(node) {
            return false;
        }
        self.queue.retain(|(n, _)| n != node);
        true
    }

    /// Whether `node` waits.
    pub fn contains(&self, node: &str) -> bool {
        self.queued.contains(node)
    }

    /// Nodes waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no node waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next node to taint, taking a token: the first due node, if the bucket allows.
    /// It leaves the queue; [`ZoneTainter::retry`] puts it back if tainting failed.
    pub fn pop(&mut self, now: Instant) -> Option<String> {
        let (_, due) = self.queue.front()?;
        if *due > now || !self.limiter.try_accept(now) {
            return None;
        }
        let (node, _) = self.queue.pop_front()?;
        self.queued.remove(&node);
        Some(node)
    }

    /// Queues `node` again, due after `delay` (a failed taint).
    pub fn retry(&mut self, node: &str, now: Instant, delay: Duration) {
        if self.queued.contains(node) || self.queue.len() >= TAINT_QUEUE_MAX {
            return;
        }
        self.queued.insert(node.to_string());
        self.queue.push_back((node.to_string(), now + delay));
    }

    /// The rate.
    pub fn qps(&self) -> f64 {
        self.limiter.qps()
    }

    /// Changes the rate (upstream `SwapLimiter`): a new bucket, drained if the old one had
    /// no token (burst 1: no free taint from a rate change).
    pub fn set_rate(&mut self, qps: f64, now: Instant) {
        if (self.limiter.qps() - qps).abs() < f64::EPSILON {
            return;
        }
        let had_token = self.limiter.has_token(now);
        let mut bucket = TokenBucket::new(qps, now);
        if !had_token {
            bucket.tokens = 0.0;
        }
        self.limiter = bucket;
    }
}

/// What the shell must do after a disruption pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisruptionChange {
    /// Nothing beyond the rates already set here.
    None,
    /// Every zone just became fully disrupted: remove the NoExecute taints of every node
    /// (tainting is stopped).
    EnteredFullDisruption,
    /// Some zone recovered from a full disruption everywhere: every node's probe time is
    /// reset to now, so none is judged on a stale signal from the outage.
    LeftFullDisruption,
}

/// Every zone's state and tainter.
#[derive(Debug, Clone)]
pub struct Zones {
    settings: ZoneSettings,
    states: BTreeMap<String, ZoneState>,
    tainters: BTreeMap<String, ZoneTainter>,
}

impl Zones {
    /// No zones yet.
    pub fn new(settings: ZoneSettings) -> Zones {
        Zones {
            settings,
            states: BTreeMap::new(),
            tainters: BTreeMap::new(),
        }
    }

    /// Starts tracking `zone` (upstream `addPodEvictorForNewZone`); `false` if the zone limit
    /// is reached.
    pub fn ensure_zone(&mut self, zone: &str, now: Instant) -> bool {
        if self.tainters.contains_key(zone) {
            self.states
                .entry(zone.to_string())
                .or_insert(ZoneState::Initial);
            return true;
        }
        if self.tainters.len() >= ZONES_MAX {
            return false;
        }
        self.states.insert(zone.to_string(), ZoneState::Initial);
        self.tainters.insert(
            zone.to_string(),
            ZoneTainter::new(self.settings.eviction_rate, now),
        );
        true
    }

    /// The tainter of `zone`, if tracked.
    pub fn tainter(&mut self, zone: &str) -> Option<&mut ZoneTainter> {
        self.tainters.get_mut(zone)
    }

    /// Every zone with its tainter.
    pub fn tainters(&mut self) -> impl Iterator<Item = (&String, &mut ZoneTainter)> {
        self.tainters.iter_mut()
    }

    /// The state of `zone`.
    pub fn state(&self, zone: &str) -> Option<ZoneState> {
        self.states.get(zone).copied()
    }

    /// Upstream's `handleDisruption`: judges every zone from the Ready statuses of its nodes
    /// (those not excluded from disruption checks) and sets the tainting rates.
    pub fn handle_disruption(
        &mut self,
        zone_ready: &BTreeMap<String, Vec<Option<&str>>>,
        now: Instant,
    ) -> DisruptionChange {
        let mut new_states = BTreeMap::new();
        let mut all_are_fully_disrupted = true;
        for (zone, ready) in zone_ready {
            let (_, state) = compute_zone_state(ready, self.settings.unhealthy_zone_threshold);
            if state != ZoneState::FullDisruption {
                all_are_fully_disrupted = false;
            }
            new_states.insert(zone.clone(), state);
            if !self.states.contains_key(zone) && self.tainters.contains_key(zone) {
                self.states.insert(zone.clone(), ZoneState::Initial);
            }
        }
        // Zones without nodes are forgotten (their tainters stay, as upstream's).
        self.states.retain(|zone, _| zone_ready.contains_key(zone));
        let all_were_fully_disrupted = self
            .states
            .values()
            .all(|s| *s == ZoneState::FullDisruption);
        if all_are_fully_disrupted && all_were_fully_disrupted {
            return DisruptionChange::None;
        }
        let size = |zone: &str| zone_ready.get(zone).map_or(0, Vec::len);
        if all_are_fully_disrupted {
            for tainter in self.tainters.values_mut() {
                tainter.set_rate(0.0, now);
            }
            for state in self.states.values_mut() {
                *state = ZoneState::FullDisruption;
            }
            return DisruptionChange::EnteredFullDisruption;
        }
        let zones: Vec<String> = self.states.keys().cloned().collect();
        let mut change = DisruptionChange::None;
        if all_were_fully_disrupted {
            change = DisruptionChange::LeftFullDisruption;
        }
        for zone in zones {
            let Some(new_state) = new_states.get(&zone).copied() else {
                continue;
            };
            if change == DisruptionChange::None && self.states.get(&zone) == Some(&new_state) {
                continue;
            }
            if let (Some(rate), Some(tainter)) = (
                zone_rate(&self.settings, size(&zone), new_state),
                self.tainters.get_mut(&zone),
            ) {
                tainter.set_rate(rate, now);
            }
            self.states.insert(zone, new_state);
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: ZoneSettings = ZoneSettings {
        eviction_rate: 0.1,
        secondary_eviction_rate: 0.01,
        large_cluster_threshold: 50,
        unhealthy_zone_threshold: 0.55,
    };

    #[test]
    fn zone_states_as_upstream() {
        let t = Some("True");
        let u = Some("Unknown");
        assert_eq!(compute_zone_state(&[t, t, u], 0.55), (1, ZoneState::Normal));
        assert_eq!(
            compute_zone_state(&[u, u], 0.55),
            (2, ZoneState::FullDisruption)
        );
        assert_eq!(
            compute_zone_state(&[None], 0.55),
            (1, ZoneState::FullDisruption)
        );
        // Two unhealthy of three is 66 % but not more than two nodes: still normal.
        assert_eq!(compute_zone_state(&[t, u, u], 0.55), (2, ZoneState::Normal));
        assert_eq!(
            compute_zone_state(&[t, u, u, u], 0.55),
            (3, ZoneState::PartialDisruption)
        );
        assert_eq!(
            compute_zone_state(&[t, t, t, u, u, u], 0.55),
            (3, ZoneState::Normal)
        );
        assert_eq!(compute_zone_state(&[], 0.55), (0, ZoneState::Normal));
    }

    #[test]
    fn rates_per_state_and_size() {
        assert_eq!(zone_rate(&SETTINGS, 10, ZoneState::Normal), Some(0.1));
        assert_eq!(
            zone_rate(&SETTINGS, 10, ZoneState::FullDisruption),
            Some(0.1)
        );
        assert_eq!(
            zone_rate(&SETTINGS, 50, ZoneState::PartialDisruption),
            Some(0.0)
        );
        assert_eq!(
            zone_rate(&SETTINGS, 51, ZoneState::PartialDisruption),
            Some(0.01)
        );
        assert_eq!(zone_rate(&SETTINGS, 51, ZoneState::Initial), None);
    }

    #[test]
    fn the_bucket_allows_one_then_one_per_interval() {
        let now = Instant::now();
        let mut tainter = ZoneTainter::new(0.1, now);
        for node in ["a", "b", "c"] {
            assert!(tainter.add(node, now));
        }
        assert!(!tainter.add("a", now), "queued once");
        assert_eq!(tainter.pop(now).as_deref(), Some("a"));
        assert_eq!(tainter.pop(now), None);
        assert_eq!(tainter.pop(now + Duration::from_millis(9_900)), None);
        assert_eq!(
            tainter.pop(now + Duration::from_secs(10)).as_deref(),
            Some("b")
        );
        // A failed taint is retried after its delay, behind the others.
        tainter.retry("b", now + Duration::from_secs(10), Duration::from_secs(1));
        assert!(tainter.remove("c"));
        assert_eq!(
            tainter.pop(now + Duration::from_secs(20)).as_deref(),
            Some("b")
        );
        assert!(tainter.is_empty());
        // Rate zero never pops; changing the rate does not hand out a free token.
        let mut stopped = ZoneTainter::new(0.0, now);
        stopped.add("x", now);
        assert_eq!(stopped.pop(now + Duration::from_secs(1000)), None);
        let mut drained = ZoneTainter::new(0.1, now);
        drained.add("x", now);
        drained.add("y", now);
        assert!(drained.pop(now).is_some());
        drained.set_rate(1.0, now);
        assert_eq!(drained.pop(now), None);
        assert!(drained.pop(now + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn full_disruption_everywhere_stops_tainting_and_recovery_resumes_it() {
        let now = Instant::now();
        let mut zones = Zones::new(SETTINGS);
        zones.ensure_zone("a", now);
        zones.ensure_zone("b", now);
        let healthy = BTreeMap::from([
            ("a".to_string(), vec![Some("True")]),
            ("b".to_string(), vec![Some("True")]),
        ]);
        assert_eq!(
            zones.handle_disruption(&healthy, now),
            DisruptionChange::None
        );
        assert_eq!(zones.state("a"), Some(ZoneState::Normal));
        // One zone down, the other up: that zone keeps the normal rate.
        let one_down = BTreeMap::from([
            ("a".to_string(), vec![Some("Unknown")]),
            ("b".to_string(), vec![Some("True")]),
        ]);
        assert_eq!(
            zones.handle_disruption(&one_down, now),
            DisruptionChange::None
        );
        assert_eq!(zones.state("a"), Some(ZoneState::FullDisruption));
        assert_eq!(zones.tainter("a").unwrap().qps(), 0.1);
        // Everything down: stop.
        let all_down = BTreeMap::from([
            ("a".to_string(), vec![Some("Unknown")]),
            ("b".to_string(), vec![Some("False")]),
        ]);
        assert_eq!(
            zones.handle_disruption(&all_down, now),
            DisruptionChange::EnteredFullDisruption
        );
        assert_eq!(zones.tainter("a").unwrap().qps(), 0.0);
        assert_eq!(zones.tainter("b").unwrap().qps(), 0.0);
        assert_eq!(
            zones.handle_disruption(&all_down, now),
            DisruptionChange::None
        );
        // Back: rates per state again.
        assert_eq!(
            zones.handle_disruption(&one_down, now),
            DisruptionChange::LeftFullDisruption
        );
        assert_eq!(zones.tainter("a").unwrap().qps(), 0.1);
        assert_eq!(zones.state("b"), Some(ZoneState::Normal));
    }

    #[test]
    fn a_small_partially_disrupted_zone_stops_a_large_one_slows() {
        let now = Instant::now();
        let mut zones = Zones::new(SETTINGS);
        zones.ensure_zone("small", now);
        zones.ensure_zone("large", now);
        let mut large = vec![Some("True"); 20];
        large.extend(vec![Some("Unknown"); 40]);
        let zone_ready = BTreeMap::from([
            ("small".to_string(), vec![Some("True"), None, None, None]),
            ("large".to_string(), large),
        ]);
        zones.handle_disruption(&zone_ready, now);
        assert_eq!(zones.state("small"), Some(ZoneState::PartialDisruption));
        assert_eq!(zones.tainter("small").unwrap().qps(), 0.0);
        assert_eq!(zones.tainter("large").unwrap().qps(), 0.01);
    }
}

//! The node lifecycle controller's decisions, as kube-controller-manager's
//! `pkg/controller/nodelifecycle` makes them, without any IO: whether a node's health signal
//! (its Lease in `kube-node-lease` and its Ready condition heartbeat) is fresh
//! (`tryUpdateNodeHealth`), the conditions to write when it is not, which NoSchedule taints
//! its conditions call for (`doNoScheduleTaintingPass`), what to do about the NoExecute
//! `not-ready`/`unreachable` taints (`processTaintBaseEviction`) and how a taint list changes
//! when taints are swapped (`SwapNodeControllerTaint`).
//!
//! Times: freshness is judged on this process's monotonic clock (`Instant`), as upstream uses
//! the time it *observed* a change rather than the time the kubelet wrote, so clock skew
//! between machines cannot make a node look dead; wall-clock `Timestamp`s are only written.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::time::Instant;

/// The NoExecute/NoSchedule taint of a node whose Ready condition is `False`.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The NoExecute/NoSchedule taint of a node whose Ready condition is `Unknown`.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The NoSchedule taint of a node with `spec.unschedulable`.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The NoSchedule taint of a node under memory pressure.
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
/// The NoSchedule taint of a node under disk pressure.
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
/// The NoSchedule taint of a node under PID pressure.
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
/// The NoSchedule taint of a node whose network is unavailable.
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
/// The taint an administrator puts on a node that is out of service (PodGC then removes its
/// terminating pods).
pub const TAINT_OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
/// `NoExecute`: pods that do not tolerate the taint are evicted.
pub const EFFECT_NO_EXECUTE: &str = "NoExecute";
/// `NoSchedule`: new pods that do not tolerate the taint are not scheduled.
pub const EFFECT_NO_SCHEDULE: &str = "NoSchedule";
/// The node conditions that go `Unknown` when the kubelet stops posting status (upstream
/// leaves `NetworkUnavailable` alone: the control plane manages it).
pub const CONDITIONS_SET_UNKNOWN: [&str; 4] =
    ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// Reason of a condition the controller set `Unknown`.
pub const REASON_STATUS_UNKNOWN: &str = "NodeStatusUnknown";
/// Message of a condition the controller set `Unknown`.
pub const MESSAGE_STATUS_UNKNOWN: &str = "Kubelet stopped posting node status.";
/// Reason of a condition the kubelet never posted.
pub const REASON_STATUS_NEVER_UPDATED: &str = "NodeStatusNeverUpdated";
/// Message of a condition the kubelet never posted.
pub const MESSAGE_STATUS_NEVER_UPDATED: &str = "Kubelet never posted node status.";
/// The label that keeps a node out of the zone disruption counts.
pub const LABEL_EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";
/// The zone label.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The region label.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";

/// The grace periods a node's health signal gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracePeriods {
    /// For a node that has posted a Ready condition (`--node-monitor-grace-period`).
    pub monitor: Duration,
    /// For a node that never posted one (`--node-startup-grace-period`).
    pub startup: Duration,
}

/// What the controller remembers of a node's health signal between passes (upstream's
/// `nodeHealthData`): when it last saw it change, and what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealth {
    /// When a fresh heartbeat or Lease renewal was last observed.
    pub probe: Instant,
    /// When the Ready condition was last observed to transition.
    pub ready_transition: Instant,
    /// The Ready condition's (lastHeartbeatTime, lastTransitionTime) as last seen; `None` if
    /// the node had no Ready condition.
    pub saved_ready: Option<(Option<Timestamp>, Option<Timestamp>)>,
    /// The Lease's renewTime as last seen.
    pub lease_renew: Option<Timestamp>,
}

/// The outcome of one health check of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// What to remember for the next pass.
    pub health: NodeHealth,
    /// The grace period the node was judged with.
    pub grace_period: Duration,
    /// The Ready status in the node as observed (`Unknown` if it has none).
    pub observed_ready: String,
    /// The Ready status after this check (what the node will say once `new_conditions` is
    /// written); `None` if it has none.
    pub current_ready: Option<String>,
    /// The node's conditions to write through `nodes/status`, when the signal is stale and
    /// the Ready condition changes.
    pub new_conditions: Option<Vec<NodeCondition>>,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The node's Ready status (`True`, `False`, `Unknown`), `None` if it has no Ready condition.
pub fn ready_status(node: &Node) -> Option<&str> {
    ready_condition(node).map(|c| c.status.as_str())
}

fn heartbeat_and_transition(c: &NodeCondition) -> (Option<Timestamp>, Option<Timestamp>) {
    (
        c.last_heartbeat_time.as_ref().map(|t| t.0),
        c.last_transition_time.as_ref().map(|t| t.0),
    )
}

/// An instant `age` before `now` (or `now` itself if the clock does not reach that far back).
fn instant_before(now: Instant, age: Duration) -> Instant {
    now.checked_sub(age).unwrap_or(now)
}

/// Upstream's `tryUpdateNodeHealth`: judges the node's health signal. A change of the Ready
/// condition's heartbeat or of the Lease's renewTime since the last pass counts as a probe at
/// `now`; when the last probe is older than the grace period, every condition of
/// [`CONDITIONS_SET_UNKNOWN`] becomes `Unknown` (`NodeStatusUnknown`, or `NodeStatusNeverUpdated`
/// for one the kubelet never posted) and, if the Ready condition changed, `new_conditions`
/// holds what to write. `wall` stamps transition times.
pub fn check_health(
    saved: Option<&NodeHealth>,
    node: &Node,
    lease_renew: Option<Timestamp>,
    grace: GracePeriods,
    now: Instant,
    wall: Timestamp,
) -> HealthCheck {
    let current = ready_condition(node);
    let creation = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let age_of = |t: Option<Timestamp>| -> Duration {
        t.map_or(Duration::ZERO, |t| {
            Duration::try_from(wall.duration_since(t)).unwrap_or(Duration::ZERO)
        })
    };
    let (observed_ready, grace_period) = match current {
        Some(c) => (c.status.clone(), grace.monitor),
        None => ("Unknown".to_string(), grace.startup),
    };
    let fresh = |probe: Instant, transition: Instant| NodeHealth {
        probe,
        ready_transition: transition,
        saved_ready: current.map(heartbeat_and_transition),
        lease_renew: None,
    };
    let mut health = match (saved, current) {
        // Never seen, never posted: the node's age counts against the startup grace.
        (None, None) => {
            let created = instant_before(now, age_of(creation));
            fresh(created, created)
        }
        // Still (or no longer) without a Ready condition: the last probe stands.
        (Some(saved), None) => NodeHealth {
            saved_ready: None,
            ..saved.clone()
        },
        // First seen with a Ready condition (a restart of this controller, or the kubelet's
        // first post): start counting now.
        (None, Some(_)) => fresh(now, now),
        (Some(saved), Some(c)) => match saved.saved_ready {
            None => fresh(now, now),
            Some((heartbeat, transition)) => {
                let (new_heartbeat, new_transition) = heartbeat_and_transition(c);
                if heartbeat != new_heartbeat {
                    let ready_transition = if transition != new_transition {
                        now
                    } else {
                        saved.ready_transition
                    };
                    NodeHealth {
                        probe: now,
                        ready_transition,
                        saved_ready: Some((new_heartbeat, new_transition)),
                        lease_renew: saved.lease_renew,
                    }
                } else {
                    saved.clone()
                }
            }
        },
    };
    // A Lease renewed since the last pass is a probe, whatever the status says.
    if let Some(renew) = lease_renew
        && health.lease_renew.is_none_or(|seen| seen < renew)
    {
        health.lease_renew = Some(renew);
        health.probe = now;
    }
    let mut check = HealthCheck {
        health,
        grace_period,
        observed_ready: observed_ready.clone(),
        current_ready: current.map(|c| c.status.clone()),
        new_conditions: None,
    };
    if now.saturating_duration_since(check.health.probe) <= grace_period {
        return check;
    }
    let mut conditions: Vec<NodeCondition> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for type_ in CONDITIONS_SET_UNKNOWN {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != "Unknown" {
                    c.status = "Unknown".into();
                    c.reason = Some(REASON_STATUS_UNKNOWN.into());
                    c.message = Some(MESSAGE_STATUS_UNKNOWN.into());
                    c.last_transition_time = Some(Time(wall));
                }
            }
            None => conditions.push(NodeCondition {
                type_: type_.into(),
                status: "Unknown".into(),
                reason: Some(REASON_STATUS_NEVER_UPDATED.into()),
                message: Some(MESSAGE_STATUS_NEVER_UPDATED.into()),
                last_heartbeat_time: creation.map(Time),
                last_transition_time: Some(Time(wall)),
            }),
        }
    }
    let new_ready = conditions.iter().find(|c| c.type_ == "Ready").cloned();
    if new_ready.as_ref() != current {
        check.current_ready = new_ready.as_ref().map(|c| c.status.clone());
        check.health.saved_ready = new_ready.as_ref().map(heartbeat_and_transition);
        check.health.ready_transition = now;
        check.new_conditions = Some(conditions);
    }
    check
}

/// Whether the node's Ready status flipped from `True` to something else in this check: the
/// moment upstream records `NodeNotReady` and marks the node's pods not ready.
pub fn became_not_ready(check: &HealthCheck) -> bool {
    check.observed_ready == "True" && check.current_ready.as_deref() != Some("True")
}

/// A taint with this key and effect (no value, no time).
pub fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        value: None,
        time_added: None,
    }
}

/// Whether `taints` hold one with the key and effect of `wanted` (upstream `Taint.MatchTaint`).
pub fn has_taint(taints: &[Taint], wanted: &Taint) -> bool {
    taints
        .iter()
        .any(|t| t.key == wanted.key && t.effect == wanted.effect)
}

/// The node's taints (empty if none).
pub fn taints_of(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// The NoSchedule taint each condition calls for (upstream
/// `nodeConditionToTaintKeyStatusMap`).
fn condition_taint_key(type_: &str, status: &str) -> Option<&'static str> {
    match (type_, status) {
        ("Ready", "False") => Some(TAINT_NOT_READY),
        ("Ready", "Unknown") => Some(TAINT_UNREACHABLE),
        ("MemoryPressure", "True") => Some(TAINT_MEMORY_PRESSURE),
        ("DiskPressure", "True") => Some(TAINT_DISK_PRESSURE),
        ("NetworkUnavailable", "True") => Some(TAINT_NETWORK_UNAVAILABLE),
        ("PIDPressure", "True") => Some(TAINT_PID_PRESSURE),
        _ => None,
    }
}

/// Whether a taint key is one the controller derives from conditions (or unschedulable).
fn is_condition_taint_key(key: &str) -> bool {
    matches!(
        key,
        TAINT_NOT_READY
            | TAINT_UNREACHABLE
            | TAINT_MEMORY_PRESSURE
            | TAINT_DISK_PRESSURE
            | TAINT_NETWORK_UNAVAILABLE
            | TAINT_PID_PRESSURE
            | TAINT_UNSCHEDULABLE
    )
}

/// Taints to add and to remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaintChange {
    /// Taints the node should get.
    pub add: Vec<Taint>,
    /// Taints (by key and effect) the node should lose.
    pub remove: Vec<Taint>,
}

impl TaintChange {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Upstream's `doNoScheduleTaintingPass`: the NoSchedule taints the node's conditions (and
/// `spec.unschedulable`) call for, against the condition NoSchedule taints it has.
pub fn no_schedule_change(node: &Node) -> TaintChange {
    let mut wanted: Vec<Taint> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| condition_taint_key(&c.type_, &c.status))
        .map(|key| taint(key, EFFECT_NO_SCHEDULE))
        .collect();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        wanted.push(taint(TAINT_UNSCHEDULABLE, EFFECT_NO_SCHEDULE));
    }
    let have: Vec<&Taint> = taints_of(node)
        .iter()
        .filter(|t| t.effect == EFFECT_NO_SCHEDULE && is_condition_taint_key(&t.key))
        .collect();
    let add = wanted
        .iter()
        .filter(|w| !have.iter().any(|h| h.key == w.key && h.effect == w.effect))
        .cloned()
        .collect();
    let remove = have
        .iter()
        .filter(|h| {
            !wanted
                .iter()
                .any(|w| w.key == h.key && w.effect == h.effect)
        })
        .map(|h| (*h).clone())
        .collect();
    TaintChange { add, remove }
}

/// What the NoExecute tainting should do about a node, from its observed Ready status
/// (upstream `processTaintBaseEviction`).
#[derive(Debug, Clone, PartialEq)]
pub enum NoExecuteAction {
    /// Nothing (the right taint is there, or the status is not one of the three).
    Nothing,
    /// Swap now, without the rate limiter: the node has the opposite taint already.
    SwapNow(TaintChange),
    /// Queue the node in its zone's rate-limited tainter.
    Queue,
    /// The node is Ready: remove both NoExecute taints and drop it from the tainter's queue.
    MarkReachable,
}

/// The NoExecute taint for a Ready status (`False` → not-ready, `Unknown` → unreachable), and
/// the opposite one.
pub fn no_execute_taints_for(ready: &str) -> Option<(Taint, Taint)> {
    let not_ready = taint(TAINT_NOT_READY, EFFECT_NO_EXECUTE);
    let unreachable = taint(TAINT_UNREACHABLE, EFFECT_NO_EXECUTE);
    match ready {
        "False" => Some((not_ready, unreachable)),
        "Unknown" => Some((unreachable, not_ready)),
        _ => None,
    }
}

/// Upstream's `processTaintBaseEviction`. Unlike upstream, a node that already has the right
/// taint is not queued again (upstream re-queues it every pass and the swap is a no-op).
pub fn no_execute_action(taints: &[Taint], observed_ready: &str) -> NoExecuteAction {
    if observed_ready == "True" {
        return NoExecuteAction::MarkReachable;
    }
    let Some((wanted, opposite)) = no_execute_taints_for(observed_ready) else {
        return NoExecuteAction::Nothing;
    };
    if has_taint(taints, &opposite) {
        return NoExecuteAction::SwapNow(TaintChange {
            add: vec![wanted],
            remove: vec![opposite],
        });
    }
    if has_taint(taints, &wanted) {
        NoExecuteAction::Nothing
    } else {
        NoExecuteAction::Queue
    }
}

/// The removal of both NoExecute node-controller taints (upstream `markNodeAsReachable`).
pub fn mark_reachable_change() -> TaintChange {
    TaintChange {
        add: Vec::new(),
        remove: vec![
            taint(TAINT_UNREACHABLE, EFFECT_NO_EXECUTE),
            taint(TAINT_NOT_READY, EFFECT_NO_EXECUTE),
        ],
    }
}

/// `taints` after `change` (upstream `SwapNodeControllerTaint`): removed ones go (matched by
/// key and effect), added ones come in unless a taint with their key and effect is there
/// already; an added NoExecute taint gets `timeAdded = now`. Other taints are kept as they
/// are, in order. `None` if nothing changes.
pub fn apply_taint_change(
    taints: &[Taint],
    change: &TaintChange,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let mut result: Vec<Taint> = taints
        .iter()
        .filter(|t| !has_taint(&change.remove, t))
        .cloned()
        .collect();
    for add in &change.add {
        if !has_taint(&result, add) {
            let mut taint = add.clone();
            if taint.effect == EFFECT_NO_EXECUTE && taint.time_added.is_none() {
                taint.time_added = Some(Time(now));
            }
            result.push(taint);
        }
    }
    (result.as_slice() != taints).then_some(result)
}

/// The node's zone key, as upstream's `GetZoneKey`: `region:\0:zone` from the topology
/// labels (empty when it has neither).
pub fn zone_key(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |key: &str| labels.and_then(|l| l.get(key)).cloned().unwrap_or_default();
    let (region, zone) = (get(LABEL_REGION), get(LABEL_ZONE));
    if region.is_empty() && zone.is_empty() {
        return String::new();
    }
    format!("{region}:\x00:{zone}")
}

/// Whether the node is left out of the zone disruption counts.
pub fn excluded_from_disruption(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_EXCLUDE_DISRUPTION))
}

/// The node labels kept in step (upstream `labelReconcileInfo`): the beta OS and arch labels
/// follow the stable ones.
pub const RECONCILED_LABELS: [(&str, &str); 2] = [
    ("kubernetes.io/os", "beta.kubernetes.io/os"),
    ("kubernetes.io/arch", "beta.kubernetes.io/arch"),
];

/// Upstream's `reconcileNodeLabels`: the secondary (beta) labels to set so they match the
/// primary (stable) ones; empty when they do (or the primary is missing).
pub fn labels_to_reconcile(node: &Node) -> std::collections::BTreeMap<String, String> {
    let mut update = std::collections::BTreeMap::new();
    let Some(labels) = node.metadata.labels.as_ref() else {
        return update;
    };
    for (primary, secondary) in RECONCILED_LABELS {
        if let Some(value) = labels.get(primary)
            && labels.get(secondary) != Some(value)
        {
            update.insert(secondary.to_string(), value.clone());
        }
    }
    update
}

/// The pod's conditions with `condition` set (upstream `UpdatePodCondition`): added if
/// missing; if present, replaced, its `lastTransitionTime` moving to `now` only when the status
/// changes. `None` if nothing would change.
pub fn with_pod_condition(
    conditions: &[PodCondition],
    mut condition: PodCondition,
    now: Timestamp,
) -> Option<Vec<PodCondition>> {
    let mut result = conditions.to_vec();
    match result.iter_mut().find(|c| c.type_ == condition.type_) {
        None => {
            condition.last_transition_time = Some(Time(now));
            result.push(condition);
        }
        Some(existing) => {
            condition.last_transition_time = if existing.status == condition.status {
                existing.last_transition_time.clone()
            } else {
                Some(Time(now))
            };
            if condition.last_probe_time.is_none() {
                condition.last_probe_time = existing.last_probe_time.clone();
            }
            if *existing == condition {
                return None;
            }
            *existing = condition;
        }
    }
    Some(result)
}

/// A pod's conditions with `Ready` turned `False`, when it has a Ready condition that is not
/// `False` already (upstream `MarkPodsNotReady`, used when its node stops being ready).
pub fn pod_conditions_not_ready(
    conditions: &[PodCondition],
    now: Timestamp,
) -> Option<Vec<PodCondition>> {
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    if ready.status == "False" {
        return None;
    }
    let condition = PodCondition {
        status: "False".into(),
        ..ready.clone()
    };
    with_pod_condition(conditions, condition, now)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const GRACE: GracePeriods = GracePeriods {
        monitor: Duration::from_secs(40),
        startup: Duration::from_secs(60),
    };

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn secs(s: i64) -> jiff::SignedDuration {
        jiff::SignedDuration::from_secs(s)
    }

    fn node_with_ready(status: &str, heartbeat: Timestamp) -> Node {
        let condition = |type_: &str, status: &str| NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some("Kubelet".into()),
            message: Some("kubelet says".into()),
            last_heartbeat_time: Some(Time(heartbeat)),
            last_transition_time: Some(Time(t0())),
        };
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time(t0())),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![
                    condition("MemoryPressure", "False"),
                    condition("Ready", status),
                ]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_node_first_seen_gets_a_full_grace_period() {
        let now = Instant::now();
        let node = node_with_ready("True", t0());
        let check = check_health(None, &node, None, GRACE, now, t0() + secs(1000));
        assert_eq!(check.health.probe, now);
        assert_eq!(check.new_conditions, None);
        assert_eq!(check.observed_ready, "True");
        let later = now + Duration::from_secs(40);
        let check = check_health(Some(&check.health), &node, None, GRACE, later, t0());
        assert_eq!(
            check.new_conditions, None,
            "exactly the grace period is still fresh"
        );
    }

    #[test]
    fn a_stale_node_goes_unknown_with_upstream_reason_and_message() {
        let now = Instant::now();
        let node = node_with_ready("True", t0());
        let first = check_health(None, &node, Some(t0()), GRACE, now, t0());
        let later = now + Duration::from_secs(41);
        let wall = t0() + secs(41);
        let check = check_health(Some(&first.health), &node, Some(t0()), GRACE, later, wall);
        let conditions = check.new_conditions.clone().expect("status write");
        for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let c = conditions.iter().find(|c| c.type_ == type_).unwrap();
            assert_eq!(c.status, "Unknown", "{type_}");
        }
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some(REASON_STATUS_UNKNOWN));
        assert_eq!(ready.message.as_deref(), Some(MESSAGE_STATUS_UNKNOWN));
        assert_eq!(ready.last_transition_time, Some(Time(wall)));
        assert_eq!(
            ready.last_heartbeat_time,
            Some(Time(t0())),
            "heartbeat untouched"
        );
        let disk = conditions
            .iter()
            .find(|c| c.type_ == "DiskPressure")
            .unwrap();
        assert_eq!(disk.reason.as_deref(), Some(REASON_STATUS_NEVER_UPDATED));
        assert!(became_not_ready(&check));
        assert_eq!(check.current_ready.as_deref(), Some("Unknown"));
        // Once written, the next pass sees Unknown and writes nothing more.
        let mut written = node.clone();
        written.status.as_mut().unwrap().conditions = Some(conditions);
        let again = check_health(
            Some(&check.health),
            &written,
            Some(t0()),
            GRACE,
            later + Duration::from_secs(5),
            wall + secs(5),
        );
        assert_eq!(again.new_conditions, None);
        assert_eq!(again.observed_ready, "Unknown");
        assert!(!became_not_ready(&again));
    }

    #[test]
    fn a_renewed_lease_or_a_new_heartbeat_keeps_a_node_fresh() {
        let now = Instant::now();
        let node = node_with_ready("True", t0());
        let first = check_health(None, &node, Some(t0()), GRACE, now, t0());
        // The Lease renews at 30 s; at 60 s the node is still within 40 s of that probe.
        let renewed = check_health(
            Some(&first.health),
            &node,
            Some(t0() + secs(30)),
            GRACE,
            now + Duration::from_secs(30),
            t0(),
        );
        assert_eq!(renewed.health.probe, now + Duration::from_secs(30));
        let check = check_health(
            Some(&renewed.health),
            &node,
            Some(t0() + secs(30)),
            GRACE,
            now + Duration::from_secs(60),
            t0(),
        );
        assert_eq!(check.new_conditions, None);
        // A new heartbeat (without a Lease) counts the same.
        let beat = node_with_ready("True", t0() + secs(50));
        let check = check_health(
            Some(&check.health),
            &beat,
            Some(t0() + secs(30)),
            GRACE,
            now + Duration::from_secs(75),
            t0(),
        );
        assert_eq!(check.health.probe, now + Duration::from_secs(75));
        // Going back in time does not count.
        let check = check_health(
            Some(&check.health),
            &beat,
            Some(t0() + secs(10)),
            GRACE,
            now + Duration::from_secs(116),
            t0(),
        );
        assert!(check.new_conditions.is_some());
    }

    #[test]
    fn a_node_that_never_posted_status_gets_the_startup_grace_from_its_creation() {
        let now = Instant::now() + Duration::from_secs(1000);
        let mut node = node_with_ready("True", t0());
        node.status = None;
        // Created 59 s ago: fresh.
        let check = check_health(None, &node, None, GRACE, now, t0() + secs(59));
        assert_eq!(check.grace_period, GRACE.startup);
        assert_eq!(check.new_conditions, None);
        // Created 61 s ago: every condition appears as never updated.
        let check = check_health(None, &node, None, GRACE, now, t0() + secs(61));
        let conditions = check.new_conditions.clone().expect("status write");
        assert_eq!(conditions.len(), 4);
        assert!(
            conditions.iter().all(|c| c.status == "Unknown"
                && c.reason.as_deref() == Some(REASON_STATUS_NEVER_UPDATED))
        );
        assert!(!became_not_ready(&check), "it never was ready");
    }

    #[test]
    fn no_schedule_taints_follow_conditions_and_keep_other_taints() {
        let mut node = node_with_ready("Unknown", t0());
        node.spec = Some(NodeSpec {
            unschedulable: Some(true),
            taints: Some(vec![
                taint("dedicated", EFFECT_NO_SCHEDULE),
                taint(TAINT_NOT_READY, EFFECT_NO_SCHEDULE),
                taint(TAINT_UNREACHABLE, EFFECT_NO_EXECUTE),
            ]),
            ..Default::default()
        });
        let change = no_schedule_change(&node);
        assert_eq!(
            change.add,
            vec![
                taint(TAINT_UNREACHABLE, EFFECT_NO_SCHEDULE),
                taint(TAINT_UNSCHEDULABLE, EFFECT_NO_SCHEDULE)
            ]
        );
        assert_eq!(
            change.remove,
            vec![taint(TAINT_NOT_READY, EFFECT_NO_SCHEDULE)]
        );
        let now = t0();
        let taints = apply_taint_change(taints_of(&node), &change, now).unwrap();
        let keys: Vec<(&str, &str)> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("dedicated", EFFECT_NO_SCHEDULE),
                (TAINT_UNREACHABLE, EFFECT_NO_EXECUTE),
                (TAINT_UNREACHABLE, EFFECT_NO_SCHEDULE),
                (TAINT_UNSCHEDULABLE, EFFECT_NO_SCHEDULE),
            ]
        );
        assert!(
            taints
                .iter()
                .all(|t| t.effect != EFFECT_NO_SCHEDULE || t.time_added.is_none())
        );
        node.spec.as_mut().unwrap().taints = Some(taints);
        assert!(no_schedule_change(&node).is_empty());
    }

    #[test]
    fn no_execute_taints_swap_queue_and_clear() {
        let unreachable = taint(TAINT_UNREACHABLE, EFFECT_NO_EXECUTE);
        let not_ready = taint(TAINT_NOT_READY, EFFECT_NO_EXECUTE);
        assert_eq!(no_execute_action(&[], "Unknown"), NoExecuteAction::Queue);
        assert_eq!(no_execute_action(&[], "False"), NoExecuteAction::Queue);
        assert_eq!(
            no_execute_action(std::slice::from_ref(&unreachable), "Unknown"),
            NoExecuteAction::Nothing
        );
        assert_eq!(
            no_execute_action(std::slice::from_ref(&unreachable), "False"),
            NoExecuteAction::SwapNow(TaintChange {
                add: vec![not_ready.clone()],
                remove: vec![unreachable.clone()]
            })
        );
        assert_eq!(
            no_execute_action(&[], "True"),
            NoExecuteAction::MarkReachable
        );
        let now = t0() + secs(7);
        let added = apply_taint_change(
            &[taint("other", EFFECT_NO_EXECUTE)],
            &TaintChange {
                add: vec![unreachable.clone()],
                remove: vec![not_ready.clone()],
            },
            now,
        )
        .unwrap();
        assert_eq!(added[1].time_added, Some(Time(now)));
        assert_eq!(added[0].time_added, None, "other taints untouched");
        // Already there: no write; clearing removes both, keeps the rest.
        assert_eq!(
            apply_taint_change(
                &added,
                &TaintChange {
                    add: vec![unreachable.clone()],
                    remove: vec![]
                },
                now
            ),
            None
        );
        let cleared = apply_taint_change(&added, &mark_reachable_change(), now).unwrap();
        assert_eq!(cleared, vec![taint("other", EFFECT_NO_EXECUTE)]);
    }

    #[test]
    fn zone_keys_as_upstream() {
        let mut node = node_with_ready("True", t0());
        assert_eq!(zone_key(&node), "");
        node.metadata.labels = Some(BTreeMap::from([(LABEL_ZONE.to_string(), "z1".to_string())]));
        assert_eq!(zone_key(&node), ":\x00:z1");
        assert!(!excluded_from_disruption(&node));
    }

    #[test]
    fn pod_conditions_change_only_when_they_differ() {
        let now = t0() + secs(5);
        let ready = PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(t0())),
            ..Default::default()
        };
        let marked = pod_conditions_not_ready(std::slice::from_ref(&ready), now).unwrap();
        assert_eq!(marked[0].status, "False");
        assert_eq!(marked[0].last_transition_time, Some(Time(now)));
        assert_eq!(pod_conditions_not_ready(&marked, now + secs(1)), None);
        assert_eq!(pod_conditions_not_ready(&[], now), None);
        let target = PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByTaintManager".into()),
            ..Default::default()
        };
        let added = with_pod_condition(&marked, target.clone(), now).unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(added[1].last_transition_time, Some(Time(now)));
        assert_eq!(with_pod_condition(&added, target, now + secs(9)), None);
    }

    #[test]
    fn beta_os_and_arch_labels_follow_the_stable_ones() {
        let mut node = node_with_ready("True", t0());
        assert!(labels_to_reconcile(&node).is_empty());
        node.metadata.labels = Some(BTreeMap::from([
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            ("beta.kubernetes.io/arch".to_string(), "arm64".to_string()),
        ]));
        assert_eq!(
            labels_to_reconcile(&node),
            BTreeMap::from([
                ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
                ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            ])
        );
    }
}

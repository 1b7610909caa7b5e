//! PodGC's decisions, as kube-controller-manager's `pkg/controller/podgc` makes them, without
//! any IO: which terminated pods exceed `--terminated-pod-gc-threshold` (evicted ones first,
//! then oldest), which terminating pods sit on out-of-service nodes that are not ready, which
//! pods are bound to nodes the cache does not hold (candidates for the orphan quarantine),
//! which are terminating without ever being scheduled, and the status a pod gets before it is
//! force-deleted (phase `Failed`, plus a DisruptionTarget condition for orphans).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodStatus};
use tokio::time::Instant;

use crate::nodelifecycle::plan::{
    TAINT_OUT_OF_SERVICE, ready_status, taints_of, with_pod_condition,
};
use crate::shell::Key;

/// How long a node missing from the cache is given to show up before the API server is
/// asked whether it exists (upstream `quarantineTime`).
pub const QUARANTINE: Duration = Duration::from_secs(40);
/// Node names held in quarantine at most (more wait for a later pass).
pub const QUARANTINE_MAX: usize = 10_000;
/// The DisruptionTarget reason of an orphaned pod PodGC deletes.
pub const REASON_DELETION_BY_POD_GC: &str = "DeletionByPodGC";
/// Its message.
pub const MESSAGE_NODE_GONE: &str = "PodGC: node no longer exists";

/// Why PodGC deletes a pod (upstream's metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GcReason {
    /// Terminated pods beyond the threshold.
    Terminated,
    /// Terminating on a not-ready node with the out-of-service taint.
    TerminatingOutOfService,
    /// Bound to a node that no longer exists.
    Orphaned,
    /// Terminating and never scheduled.
    TerminatingUnscheduled,
}

/// A pod to force-delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPod {
    /// The pod's key.
    pub key: Key,
    /// Its uid (the deletion's precondition).
    pub uid: String,
    /// Why.
    pub reason: GcReason,
}

/// What one PodGC pass found in the cache (orphans come from [`orphans`] once the quarantine
/// has confirmed their nodes gone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcPlan {
    /// Terminated pods over the threshold, evicted first, then oldest.
    pub terminated: Vec<GcPod>,
    /// Terminating pods on out-of-service, not-ready nodes.
    pub terminating_out_of_service: Vec<GcPod>,
    /// Terminating pods without a node.
    pub unscheduled_terminating: Vec<GcPod>,
    /// Nodes pods are bound to that the cache does not hold.
    pub missing_nodes: BTreeSet<String>,
}

/// Upstream `isPodTerminated`: a phase other than Pending, Running and Unknown (an empty
/// phase counts as terminated, as upstream's).
pub fn is_terminated(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    !matches!(phase, "Pending" | "Running" | "Unknown")
}

/// Upstream `eviction.PodIsEvicted`: Failed with reason `Evicted`.
fn is_evicted(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some("Evicted")
    })
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn gc_pod(pod: &Pod, reason: GcReason) -> GcPod {
    GcPod {
        key: Key::new(
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
        ),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        reason,
    }
}

/// Upstream's order `byEvictionAndCreationTimestamp`: evicted pods first, then by creation
/// time, then by name.
fn gc_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    is_evicted(b)
        .cmp(&is_evicted(a))
        .then_with(|| created(a).cmp(&created(b)))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// One pass over the cache: `pods` and `nodes` as the informers hold them,
/// `terminated_threshold` 0 turning the terminated-pod collection off.
pub fn plan<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    nodes: &BTreeMap<String, &Node>,
    terminated_threshold: u32,
) -> GcPlan {
    let mut gc = GcPlan::default();
    let mut terminated: Vec<&Pod> = Vec::new();
    for pod in pods {
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if is_terminated(pod) {
            terminated.push(pod);
        }
        match node_name(pod) {
            None => {
                if terminating {
                    gc.unscheduled_terminating
                        .push(gc_pod(pod, GcReason::TerminatingUnscheduled));
                }
            }
            Some(name) => match nodes.get(name) {
                None => {
                    gc.missing_nodes.insert(name.to_string());
                }
                Some(node) => {
                    let out_of_service = taints_of(node)
                        .iter()
                        .any(|t| t.key == TAINT_OUT_OF_SERVICE);
                    if terminating && out_of_service && ready_status(node) != Some("True") {
                        gc.terminating_out_of_service
                            .push(gc_pod(pod, GcReason::TerminatingOutOfService));
                    }
                }
            },
        }
    }
    let threshold = terminated_threshold as usize;
    if threshold > 0 && terminated.len() > threshold {
        let excess = terminated.len() - threshold;
        terminated.sort_by(|a, b| gc_order(a, b));
        gc.terminated = terminated
            .into_iter()
            .take(excess)
            .map(|pod| gc_pod(pod, GcReason::Terminated))
            .collect();
    }
    gc.terminating_out_of_service
        .sort_by(|a, b| a.key.cmp(&b.key));
    gc
}

/// The pods bound to nodes confirmed gone.
pub fn orphans<'a>(pods: impl IntoIterator<Item = &'a Pod>, gone: &HashSet<String>) -> Vec<GcPod> {
    pods.into_iter()
        .filter(|pod| node_name(pod).is_some_and(|n| gone.contains(n)))
        .map(|pod| gc_pod(pod, GcReason::Orphaned))
        .collect()
}

/// The status a pod gets before it is force-deleted (upstream
/// `markFailedAndDeletePodWithCondition`): phase `Failed` (and, for orphans, the
/// DisruptionTarget condition `DeletionByPodGC`). `None` if it is terminal already: it is
/// deleted as it is.
pub fn failed_status(pod: &Pod, reason: GcReason, now: Timestamp) -> Option<PodStatus> {
    let status = pod.status.clone().unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut status = status;
    status.phase = Some("Failed".into());
    if reason == GcReason::Orphaned {
        let condition = PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some(REASON_DELETION_BY_POD_GC.into()),
            message: Some(MESSAGE_NODE_GONE.into()),
            ..Default::default()
        };
        let conditions = status.conditions.clone().unwrap_or_default();
        if let Some(updated) = with_pod_condition(&conditions, condition, now) {
            status.conditions = Some(updated);
        }
    }
    Some(status)
}

/// Nodes missing from the cache waiting out their quarantine (upstream's delaying
/// `nodeQueue`): a node is due [`QUARANTINE`] after it was first found missing.
#[derive(Debug, Default)]
pub struct Quarantine {
    due: BTreeMap<String, Instant>,
}

impl Quarantine {
    /// Puts `node` in quarantine until `now + QUARANTINE` (an earlier time stands); ignored
    /// beyond [`QUARANTINE_MAX`] nodes.
    pub fn add(&mut self, node: &str, now: Instant) {
        if self.due.contains_key(node) || self.due.len() >= QUARANTINE_MAX {
            return;
        }
        self.due.insert(node.to_string(), now + QUARANTINE);
    }

    /// The nodes whose quarantine is over; they leave it.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(node, _)| node.clone())
            .collect();
        for node in &due {
            self.due.remove(node);
        }
        due
    }

    /// Nodes in quarantine.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, PodSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn t0() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn pod(name: &str, node: Option<&str>, phase: &str, created_s: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(t0() + jiff::SignedDuration::from_secs(created_s))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn node(name: &str, ready: &str, taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn names(pods: &[GcPod]) -> Vec<&str> {
        pods.iter().map(|p| p.key.name.as_str()).collect()
    }

    #[test]
    fn terminated_pods_beyond_the_threshold_go_evicted_first_then_oldest() {
        let mut evicted = pod("evicted", Some("n1"), "Failed", 50);
        evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
        let pods = [
            pod("running", Some("n1"), "Running", 0),
            pod("old", Some("n1"), "Succeeded", 1),
            pod("older", Some("n1"), "Failed", 0),
            pod("new", Some("n1"), "Succeeded", 9),
            evicted,
        ];
        let n1 = node("n1", "True", vec![]);
        let nodes = BTreeMap::from([("n1".to_string(), &n1)]);
        let gc = plan(pods.iter(), &nodes, 2);
        assert_eq!(names(&gc.terminated), vec!["evicted", "older"]);
        assert!(
            gc.terminated
                .iter()
                .all(|p| p.reason == GcReason::Terminated)
        );
        assert!(
            plan(pods.iter(), &nodes, 0).terminated.is_empty(),
            "0 = off"
        );
        assert!(plan(pods.iter(), &nodes, 4).terminated.is_empty());
    }

    #[test]
    fn missing_nodes_unscheduled_terminating_and_out_of_service() {
        let mut terminating_unscheduled = pod("floating", None, "Pending", 0);
        terminating_unscheduled.metadata.deletion_timestamp = Some(Time(t0()));
        let mut stuck = pod("stuck", Some("oos"), "Running", 0);
        stuck.metadata.deletion_timestamp = Some(Time(t0()));
        let mut stuck_on_ready = pod("stuck-ready", Some("n1"), "Running", 0);
        stuck_on_ready.metadata.deletion_timestamp = Some(Time(t0()));
        let pods = [
            terminating_unscheduled,
            pod("pending", None, "Pending", 0),
            pod("orphan", Some("gone"), "Running", 0),
            stuck,
            stuck_on_ready,
        ];
        let oos_taint = Taint {
            key: TAINT_OUT_OF_SERVICE.into(),
            effect: "NoExecute".into(),
            value: Some("nodeshutdown".into()),
            time_added: None,
        };
        let oos = node("oos", "Unknown", vec![oos_taint.clone()]);
        let n1 = node("n1", "True", vec![oos_taint]);
        let nodes = BTreeMap::from([("oos".to_string(), &oos), ("n1".to_string(), &n1)]);
        let gc = plan(pods.iter(), &nodes, 0);
        assert_eq!(names(&gc.unscheduled_terminating), vec!["floating"]);
        assert_eq!(names(&gc.terminating_out_of_service), vec!["stuck"]);
        assert_eq!(gc.missing_nodes, BTreeSet::from(["gone".to_string()]));
        let gone = HashSet::from(["gone".to_string()]);
        let orphaned = orphans(pods.iter(), &gone);
        assert_eq!(names(&orphaned), vec!["orphan"]);
        assert_eq!(orphaned[0].uid, "uid-orphan");
    }

    #[test]
    fn orphans_are_marked_failed_with_a_disruption_target_terminal_pods_as_they_are() {
        let running = pod("orphan", Some("gone"), "Running", 0);
        let status = failed_status(&running, GcReason::Orphaned, t0()).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let condition = &status.conditions.unwrap()[0];
        assert_eq!(condition.type_, "DisruptionTarget");
        assert_eq!(condition.reason.as_deref(), Some(REASON_DELETION_BY_POD_GC));
        assert_eq!(condition.message.as_deref(), Some(MESSAGE_NODE_GONE));
        let unscheduled = failed_status(&running, GcReason::TerminatingUnscheduled, t0()).unwrap();
        assert_eq!(unscheduled.conditions, None);
        let done = pod("done", Some("gone"), "Succeeded", 0);
        assert_eq!(failed_status(&done, GcReason::Orphaned, t0()), None);
    }

    #[test]
    fn quarantine_waits_forty_seconds_from_the_first_sighting() {
        let now = Instant::now();
        let mut quarantine = Quarantine::default();
        quarantine.add("gone", now);
        quarantine.add("gone", now + Duration::from_secs(20));
        assert!(
            quarantine
                .take_due(now + Duration::from_secs(39))
                .is_empty()
        );
        assert_eq!(
            quarantine.take_due(now + QUARANTINE),
            vec!["gone".to_string()]
        );
        assert!(quarantine.is_empty());
    }
}

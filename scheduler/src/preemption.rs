//! DefaultPreemption's PostFilter, as kube-scheduler does it (`framework/preemption` and
//! `plugins/defaultpreemption`), for a pod every node refused:
//!
//! 1. Eligibility: not with `preemptionPolicy: Never`; not while a lower-priority pod on the
//!    pod's nominated node is still terminating because of an earlier preemption (unless that
//!    node is now unresolvable for the pod).
//! 2. Candidates: every node refused for a *resolvable* reason (not NodeUnschedulable, NodeName,
//!    untolerated taints, node affinity, a request above allocatable, ...). On a copy of the
//!    node (with the pods nominated there of at least the pod's priority), remove every pod of
//!    LOWER priority; if the pod then passes the filters, add them back most important first
//!    (priority, then earliest start) while it still fits ("reprieve"). The rest are the
//!    victims — a minimal set; a pod of equal or higher priority is never one.
//! 3. Choice (`pickOneNodeForPreemption`): fewest PDB violations (PDBs are not served: all
//!    zero), then the lowest highest-victim priority, the smallest sum of priorities, the fewest
//!    victims, the latest start among the highest-priority victims, then the first.
//!
//! Pure: nodes, statuses, nominations and the clock come in; a [`Decision`] goes out. The
//! caller nominates the pod, deletes the victims and records the events.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::explain::{NO_VICTIMS, NOT_HELPFUL, nodes_unavailable};
use crate::filters::Unfit;
use crate::node_info::{NodeInfo, PodUsage, pod_priority};
use crate::nominator::Nominator;
use crate::pod_filters::PodFilters;

/// `PodEligibleToPreemptOthers`' message for `preemptionPolicy: Never`.
pub const NOT_ELIGIBLE_NEVER: &str = "not eligible due to preemptionPolicy=Never.";
/// Its message while earlier victims are still terminating on the nominated node.
pub const NOT_ELIGIBLE_TERMINATING: &str =
    "not eligible due to a terminating pod on the nominated node.";
/// DefaultPreemption's `MinCandidateNodesPercentage`.
pub const MIN_CANDIDATE_NODES_PERCENTAGE: usize = 10;
/// DefaultPreemption's `MinCandidateNodesAbsolute`.
pub const MIN_CANDIDATE_NODES_ABSOLUTE: usize = 100;

/// A pod to evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// `namespace/name`.
    pub key: String,
    /// `metadata.uid` (the DELETE's precondition).
    pub uid: String,
    /// `spec.priority`.
    pub priority: i32,
    /// `status.startTime`.
    pub start_time: Option<Timestamp>,
}

/// A node the pod fits on once `victims` (most important first) are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// The minimal set of lower-priority pods to evict, most important first.
    pub victims: Vec<Victim>,
}

/// What the PostFilter decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nominate the pod to `candidate.node` and evict the victims.
    Preempt(Candidate),
    /// Preemption cannot help now. `message` is the PostFilter's (`preemption: ...`), appended
    /// to the FailedScheduling message; `clear_nomination` says to drop the pod's
    /// `nominatedNodeName` (no candidate anywhere).
    Fail {
        message: String,
        clear_nomination: bool,
    },
}

/// Everything the PostFilter looks at.
#[derive(Debug)]
pub struct PreemptionInput<'a> {
    /// The pod's `namespace/name`.
    pub key: &'a str,
    /// The pod's filters, their pre-pass done over `nodes`.
    pub filters: &'a PodFilters<'a>,
    /// Every node, in the cycle's order.
    pub nodes: &'a [&'a NodeInfo],
    /// Why each node refused the pod, by node name.
    pub statuses: &'a BTreeMap<String, Unfit>,
    /// Nominated pods (reserved on their nodes).
    pub nominator: &'a Nominator,
    /// Victims this scheduler is deleting right now (terminating, as far as it knows).
    pub evicting: &'a BTreeSet<String>,
    /// Where the dry run starts among the potential nodes (upstream picks it at random).
    pub offset: usize,
    /// "Now", for victims that have not started.
    pub now: Timestamp,
}

fn preemption_policy_never(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        == Some("Never")
}

/// `PodEligibleToPreemptOthers`: `Err(message)` when the pod may not preempt now.
pub fn eligible(input: &PreemptionInput<'_>) -> Result<(), &'static str> {
    let pod = input.filters.pod();
    if preemption_policy_never(pod) {
        return Err(NOT_ELIGIBLE_NEVER);
    }
    let Some(nominated) = input.nominator.node_of(input.key) else {
        return Ok(());
    };
    if input
        .statuses
        .get(nominated)
        .is_some_and(|u| u.unresolvable)
    {
        return Ok(());
    }
    let priority = pod_priority(pod);
    let terminating = input
        .nodes
        .iter()
        .filter(|n| n.name() == nominated)
        .flat_map(|n| n.pods.iter())
        .any(|(k, p)| {
            p.priority < priority && (p.terminating_by_preemption() || input.evicting.contains(k))
        });
    if terminating {
        return Err(NOT_ELIGIBLE_TERMINATING);
    }
    Ok(())
}

/// `MoreImportantPod`: higher priority, then the earlier start (not started = `now`).
fn more_important(a: &PodUsage, b: &PodUsage, now: Timestamp) -> Ordering {
    b.priority.cmp(&a.priority).then_with(|| {
        a.start_time
            .unwrap_or(now)
            .cmp(&b.start_time.unwrap_or(now))
    })
}

/// `SelectVictimsOnNode`: the minimal set of lower-priority pods whose removal lets the pod
/// pass the filters on `node`, most important first; `Err(reasons)` when there is none.
pub fn select_victims_on_node(
    filters: &PodFilters<'_>,
    node: &NodeInfo,
    now: Timestamp,
) -> Result<Vec<Victim>, Vec<String>> {
    let priority = pod_priority(filters.pod());
    let mut potential: Vec<(String, PodUsage)> = node
        .pods
        .iter()
        .filter(|(_, p)| p.priority < priority)
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    if potential.is_empty() {
        return Err(vec![NO_VICTIMS.to_string()]);
    }
    // Copies only now: most nodes of a cluster without priorities stop above.
    let mut node = node.clone();
    let mut state = filters.clone();
    for (key, usage) in &potential {
        node.remove_pod(key);
        state.remove_pod(usage, &node);
    }
    if let Err(unfit) = state.check(&node) {
        return Err(unfit.reasons);
    }
    potential.sort_by(|(_, a), (_, b)| more_important(a, b, now));
    let mut victims = Vec::new();
    for (key, usage) in potential {
        node.add_pod(&key, usage.clone());
        state.add_pod(&usage, &node);
        if state.check(&node).is_err() {
            node.remove_pod(&key);
            state.remove_pod(&usage, &node);
            victims.push(Victim {
                key,
                uid: usage.uid.clone(),
                priority: usage.priority,
                start_time: usage.start_time,
            });
        }
    }
    Ok(victims)
}

/// DefaultPreemption's `calculateNumCandidates`.
pub fn num_candidates(potential_nodes: usize) -> usize {
    (potential_nodes * MIN_CANDIDATE_NODES_PERCENTAGE / 100)
        .max(MIN_CANDIDATE_NODES_ABSOLUTE)
        .min(potential_nodes)
}

/// `GetEarliestPodStartTime`: the earliest start among the highest-priority victims.
fn earliest_start_of_most_important(victims: &[Victim], now: Timestamp) -> Timestamp {
    let top = victims.iter().map(|v| v.priority).max().unwrap_or(0);
    victims
        .iter()
        .filter(|v| v.priority == top)
        .map(|v| v.start_time.unwrap_or(now))
        .min()
        .unwrap_or(now)
}

/// `pickOneNodeForPreemption`: the index of the chosen candidate.
pub fn pick_one_node(candidates: &[Candidate], now: Timestamp) -> Option<usize> {
    type Score<'a> = Box<dyn Fn(&Candidate) -> i128 + 'a>;
    let scores: [Score<'_>; 4] = [
        // Fewest PDB violations: PDBs are not served, every candidate scores 0.
        // The lowest highest-victim priority.
        Box::new(|c| -i128::from(c.victims.first().map_or(0, |v| v.priority))),
        // The smallest sum of priorities (each shifted to be non-negative).
        Box::new(|c| {
            -c.victims
                .iter()
                .map(|v| i128::from(v.priority) + i128::from(i32::MAX) + 1)
                .sum::<i128>()
        }),
        // The fewest victims.
        Box::new(|c| -i128::try_from(c.victims.len()).unwrap_or(i128::MAX)),
        // The latest start among the highest-priority victims.
        Box::new(move |c| earliest_start_of_most_important(&c.victims, now).as_nanosecond()),
    ];
    let mut left: Vec<usize> = (0..candidates.len()).collect();
    for score in &scores {
        let best = left.iter().map(|&i| score(&candidates[i])).max()?;
        left.retain(|&i| score(&candidates[i]) == best);
        if left.len() == 1 {
            break;
        }
    }
    left.first().copied()
}

/// The whole PostFilter: eligibility, the dry run over the potential nodes, the choice.
pub fn post_filter(input: &PreemptionInput<'_>) -> Decision {
    if let Err(message) = eligible(input) {
        return Decision::Fail {
            message: format!("preemption: {message}"),
            clear_nomination: false,
        };
    }
    let total = input.nodes.len();
    let priority = pod_priority(input.filters.pod());
    let potential: Vec<&NodeInfo> = input
        .nodes
        .iter()
        .copied()
        .filter(|n| {
            input
                .statuses
                .get(n.name())
                .is_some_and(|u| !u.unresolvable)
        })
        .collect();
    let wanted = num_candidates(potential.len());
    let mut candidates = Vec::new();
    // Node name → why preemption cannot help there; absent nodes are "not helpful".
    let mut refusals: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..potential.len() {
        if candidates.len() >= wanted {
            break;
        }
        let node = potential[(input.offset + i) % potential.len()];
        let view = input.nominator.with_nominated(node, input.key, priority);
        match select_victims_on_node(input.filters, &view, input.now) {
            Ok(victims) if !victims.is_empty() => candidates.push(Candidate {
                node: node.name().to_string(),
                victims,
            }),
            // Fits without evicting anything (e.g. a nominated pod's room): not a candidate.
            Ok(_) => {
                refusals.insert(node.name(), vec![NO_VICTIMS.to_string()]);
            }
            Err(reasons) => {
                refusals.insert(node.name(), reasons);
            }
        }
    }
    match pick_one_node(&candidates, input.now) {
        Some(best) => Decision::Preempt(candidates.swap_remove(best)),
        None => {
            let absent = total - refusals.len();
            let reasons = refusals
                .values()
                .flatten()
                .map(String::as_str)
                .chain(std::iter::repeat_n(NOT_HELPFUL, absent));
            Decision::Fail {
                message: format!("preemption: {}", nodes_unavailable(total, reasons)),
                clear_nomination: true,
            }
        }
    }
}

#[cfg(test)]
#[path = "preemption_tests.rs"]
mod tests;

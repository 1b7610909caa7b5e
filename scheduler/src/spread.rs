//! PodTopologySpread's filter (`whenUnsatisfiable: DoNotSchedule` constraints), as upstream:
//! a per-pod pre-pass counts, for every eligible node (it has every constraint's topology key,
//! it passes the pod's node affinity when `nodeAffinityPolicy` is Honor — the default — and
//! tolerates its taints when `nodeTaintsPolicy` is Honor), the pods of the pod's namespace that
//! match each constraint's selector (`matchLabelKeys` merged in), per topology value; a node
//! then passes when `count(its domain) + (pod matches itself) - min(count over domains)` is at
//! most `maxSkew`, the minimum being 0 while fewer than `minDomains` domains exist.
//! `ScheduleAnyway` constraints and the cluster's default constraints only score: see
//! `scores_spread`, which shares the constraints and the counting here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

use crate::filters::{Unfit, node_affinity};
use crate::interpod::Selector;
use crate::node_info::{NodeInfo, PodUsage};

/// Reason when the skew would grow past `maxSkew`.
pub const REASON_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
/// Reason when the node lacks a constraint's topology key.
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// One topology spread constraint, its selector merged with `matchLabelKeys`.
#[derive(Debug, Clone)]
pub(crate) struct Constraint {
    pub(crate) max_skew: i64,
    pub(crate) topology_key: String,
    pub(crate) selector: Selector,
    pub(crate) min_domains: i64,
    pub(crate) honor_affinity: bool,
    pub(crate) honor_taints: bool,
}

impl Constraint {
    /// `matchNodeInclusionPolicies`: whether `node` counts for this constraint of `pod`.
    pub(crate) fn includes(&self, pod: &Pod, node: &NodeInfo) -> bool {
        !(self.honor_affinity && node_affinity(pod, node).is_err()
            || self.honor_taints && !untainted_for(pod, node))
    }
}

/// Whether `existing` counts for a constraint of a pod of namespace `ns` (same namespace, not
/// being deleted, selected).
pub(crate) fn counts_for(ns: &str, selector: &Selector, existing: &PodUsage) -> bool {
    existing.namespace == ns && !existing.terminating && selector.matches(Some(&existing.labels))
}

/// The pre-pass for one incoming pod.
#[derive(Debug, Default, Clone)]
pub struct SpreadState {
    constraints: Vec<Constraint>,
    /// (constraint index, topology value) → matching pods.
    counts: BTreeMap<(usize, String), i64>,
    self_match: Vec<bool>,
}

pub(crate) fn constraint_of(pod: &Pod, c: &TopologySpreadConstraint) -> Constraint {
    let mut selector = c.label_selector.clone();
    let labels = pod.metadata.labels.as_ref();
    if let Some(sel) = selector.as_mut() {
        for key in c.match_label_keys.iter().flatten() {
            if let Some(value) = labels.and_then(|l| l.get(key)) {
                sel.match_expressions
                    .get_or_insert_with(Vec::new)
                    .push(LabelSelectorRequirement {
                        key: key.clone(),
                        operator: "In".into(),
                        values: Some(vec![value.clone()]),
                    });
            }
        }
    }
    Constraint {
        max_skew: i64::from(c.max_skew),
        topology_key: c.topology_key.clone(),
        selector: Selector::new(selector),
        min_domains: i64::from(c.min_domains.unwrap_or(1).max(1)),
        honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
        honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
    }
}

fn untainted_for(pod: &Pod, node: &NodeInfo) -> bool {
    crate::filters::untolerated_hard_taints(pod, node)
        .next()
        .is_none()
}

/// Upstream's PreFilter over every node.
pub fn prefilter(pod: &Pod, nodes: &[&NodeInfo]) -> SpreadState {
    let hard: Vec<Constraint> = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
        .map(|c| constraint_of(pod, c))
        .collect();
    let mut state = SpreadState {
        self_match: hard
            .iter()
            .map(|c| c.selector.matches(pod.metadata.labels.as_ref()))
            .collect(),
        constraints: hard,
        counts: BTreeMap::new(),
    };
    if state.constraints.is_empty() {
        return state;
    }
    for node in nodes {
        for i in 0..state.constraints.len() {
            let Some(value) = state.domain_of(pod, i, node) else {
                continue;
            };
            let n = node
                .pods
                .values()
                .filter(|p| state.counts_pod(pod, i, p))
                .count();
            *state.counts.entry((i, value)).or_insert(0) += i64::try_from(n).unwrap_or(0);
        }
    }
    state
}

impl SpreadState {
    /// The node's value for constraint `i`'s topology key, if the node counts for it: it has
    /// every constraint's key and passes the pod's node affinity / taints as the policies say.
    fn domain_of(&self, pod: &Pod, i: usize, node: &NodeInfo) -> Option<String> {
        let labels = node.node.metadata.labels.as_ref()?;
        if !self
            .constraints
            .iter()
            .all(|c| labels.contains_key(&c.topology_key))
        {
            return None;
        }
        let c = &self.constraints[i];
        if !c.includes(pod, node) {
            return None;
        }
        labels.get(&c.topology_key).cloned()
    }

    /// Whether an existing pod counts for constraint `i` of the incoming `pod`.
    fn counts_pod(&self, pod: &Pod, i: usize, existing: &PodUsage) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        counts_for(ns, &self.constraints[i].selector, existing)
    }

    /// Upstream's PreFilterExtensions AddPod (`delta` 1) / RemovePod (`delta` -1): `existing`
    /// joins or leaves `node` (preemption's what-if).
    pub fn update_with_pod(&mut self, pod: &Pod, existing: &PodUsage, node: &NodeInfo, delta: i64) {
        for i in 0..self.constraints.len() {
            if !self.counts_pod(pod, i, existing) {
                continue;
            }
            if let Some(value) = self.domain_of(pod, i, node) {
                *self.counts.entry((i, value)).or_insert(0) += delta;
            }
        }
    }

    fn min_match(&self, i: usize) -> i64 {
        let domains: BTreeSet<&String> = self
            .counts
            .keys()
            .filter(|(c, _)| *c == i)
            .map(|(_, v)| v)
            .collect();
        if i64::try_from(domains.len()).unwrap_or(0) < self.constraints[i].min_domains {
            return 0;
        }
        self.counts
            .iter()
            .filter(|((c, _), _)| *c == i)
            .map(|(_, n)| *n)
            .min()
            .unwrap_or(0)
    }
}

/// Upstream's Filter.
pub fn filter(state: &SpreadState, node: &NodeInfo) -> Result<(), Unfit> {
    let labels = node.node.metadata.labels.as_ref();
    for (i, c) in state.constraints.iter().enumerate() {
        let Some(value) = labels.and_then(|l| l.get(&c.topology_key)) else {
            return Err(Unfit {
                plugin: "PodTopologySpread",
                reasons: vec![REASON_MISSING_LABEL.into()],
                unresolvable: true,
                details: vec![format!("node has no {} label", c.topology_key)],
            });
        };
        let here = state.counts.get(&(i, value.clone())).copied().unwrap_or(0);
        let min = state.min_match(i);
        let skew = here + i64::from(state.self_match[i]) - min;
        if skew > c.max_skew {
            return Err(Unfit {
                plugin: "PodTopologySpread",
                reasons: vec![REASON_CONSTRAINTS.into()],
                unresolvable: false,
                details: vec![format!(
                    "{}={value} has {here} matching pods, the least loaded domain {min}: skew {skew} > maxSkew {}",
                    c.topology_key, c.max_skew
                )],
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn spread_pod(name: &str, max_skew: i32, min_domains: Option<i32>) -> Pod {
        let mut p = pod_req(name, "", "");
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![TopologySpreadConstraint {
                max_skew,
                topology_key: "zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    match_expressions: None,
                }),
                min_domains,
                ..Default::default()
            }]);
        p
    }

    fn zoned(name: &str, zone: &str, web_pods: usize) -> NodeInfo {
        let mut n = info(with_labels(node(name, "4", "4Gi", 10), &[("zone", zone)]));
        for i in 0..web_pods {
            let mut p = pod_req(&format!("{name}-w{i}"), "", "");
            p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
            n.add_pod(&format!("default/{name}-w{i}"), PodUsage::of(&p));
        }
        n
    }

    fn verdicts(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<Option<String>> {
        let state = prefilter(pod, nodes);
        nodes
            .iter()
            .map(|n| filter(&state, n).err().map(|u| u.reasons[0].clone()))
            .collect()
    }

    #[test]
    fn skew_is_counted_per_zone() {
        // Upstream's "spread across zones": zone1 has 2, zone2 has 1; maxSkew 1.
        let a = zoned("a", "z1", 2);
        let b = zoned("b", "z2", 1);
        let c = zoned("c", "z2", 0);
        let p = spread_pod("p", 1, None);
        assert_eq!(
            verdicts(&p, &[&a, &b, &c]),
            vec![Some(REASON_CONSTRAINTS.into()), None, None]
        );
        let unlabeled = info(node("x", "4", "4Gi", 10));
        assert_eq!(
            verdicts(&p, &[&a, &unlabeled])[1],
            Some(REASON_MISSING_LABEL.into())
        );
    }

    #[test]
    fn min_domains_treats_the_global_minimum_as_zero() {
        let a = zoned("a", "z1", 1);
        let b = zoned("b", "z2", 1);
        // Two domains, both at 1: fine with maxSkew 1 ...
        assert_eq!(
            verdicts(&spread_pod("p", 1, None), &[&a, &b]),
            vec![None, None]
        );
        // ... but minDomains 3 makes the minimum 0, so 1 + 1 - 0 > 1 everywhere.
        assert_eq!(
            verdicts(&spread_pod("p", 1, Some(3)), &[&a, &b]),
            vec![
                Some(REASON_CONSTRAINTS.into()),
                Some(REASON_CONSTRAINTS.into())
            ]
        );
    }

    #[test]
    fn nodes_failing_node_affinity_do_not_count_by_default() {
        let a = info(with_labels(
            node("a", "4", "4Gi", 10),
            &[("zone", "z1"), ("pool", "x")],
        ));
        let mut b = zoned("b", "z2", 0);
        b = {
            let mut n = info(with_labels(b.node.clone(), &[("pool", "y")]));
            for i in 0..3 {
                let mut p = pod_req(&format!("w{i}"), "", "");
                p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
                n.add_pod(&format!("default/w{i}"), PodUsage::of(&p));
            }
            n
        };
        let mut p = spread_pod("p", 1, None);
        p.spec.as_mut().unwrap().node_selector =
            Some([("pool".to_string(), "x".to_string())].into());
        // z2 (3 pods) is ignored: only z1 counts, min is 0, skew 1.
        assert_eq!(verdicts(&p, &[&a, &b])[0], None);
    }
}

//! InterPodAffinity's filter, as upstream computes it: a per-pod pre-pass over every placed
//! pod counts, per (topologyKey, value), the existing pods matching *all* of the incoming pod's
//! required affinity terms, those matching each of its anti-affinity terms, and the existing
//! pods whose own required anti-affinity terms match the incoming pod; the per-node check then
//! looks the node's topology values up. Terms select pods by label selector within
//! `namespaces` (default: the pod's own) or `namespaceSelector` (namespace labels).
//! A pod whose affinity no existing pod satisfies may still go anywhere its topology keys
//! exist if it matches its own terms (the first of a group). Preferred terms (and existing
//! pods' required affinity) score in `scores_interpod`, with the same term matching.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::filters::Unfit;
use crate::node_info::{NodeInfo, PodUsage};

/// Reason when the pod's required affinity is not met.
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// Reason when the pod's required anti-affinity is violated.
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// Reason when an existing pod's required anti-affinity would be violated.
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

type Labels = BTreeMap<String, String>;

/// A label selector; `None` selects nothing, an empty one everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector(Option<LabelSelector>);

impl Selector {
    /// `None` selects nothing, an empty selector everything.
    pub fn new(selector: Option<LabelSelector>) -> Selector {
        Selector(selector)
    }

    /// Whether it is a selector without requirements (upstream's `Selector.Empty()`; `None`,
    /// which selects nothing, is not empty).
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(|l| l.is_empty())
                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        })
    }

    /// Whether `labels` are selected.
    pub fn matches(&self, labels: Option<&Labels>) -> bool {
        let Some(sel) = &self.0 else { return false };
        let get = |k: &str| labels.and_then(|l| l.get(k));
        for (k, v) in sel.match_labels.iter().flatten() {
            if get(k) != Some(v) {
                return false;
            }
        }
        for req in sel.match_expressions.iter().flatten() {
            let values = req.values.as_deref().unwrap_or(&[]);
            let value = get(&req.key);
            let ok = match req.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => !value.is_some_and(|v| values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// One required (anti-)affinity term, resolved against its pod's namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityTerm {
    namespaces: Vec<String>,
    namespace_selector: Selector,
    selector: Selector,
    topology_key: String,
}

impl AffinityTerm {
    /// The term's topology key.
    pub fn topology_key(&self) -> &str {
        &self.topology_key
    }

    fn of(owner_namespace: &str, term: &PodAffinityTerm) -> AffinityTerm {
        let listed = term.namespaces.clone().unwrap_or_default();
        let namespaces = if listed.is_empty() && term.namespace_selector.is_none() {
            vec![owner_namespace.to_string()]
        } else {
            listed
        };
        AffinityTerm {
            namespaces,
            namespace_selector: Selector(term.namespace_selector.clone()),
            selector: Selector(term.label_selector.clone()),
            topology_key: term.topology_key.clone(),
        }
    }

    /// `AffinityTerm.Matches`.
    pub fn matches(
        &self,
        namespace: &str,
        labels: Option<&Labels>,
        ns_labels: Option<&Labels>,
    ) -> bool {
        (self.namespaces.iter().any(|n| n == namespace)
            || self.namespace_selector.matches(ns_labels))
            && self.selector.matches(labels)
    }
}

/// The pod's `podAffinity` (`anti = false`) or `podAntiAffinity` terms: (required, preferred).
fn pod_terms(pod: &Pod, anti: bool) -> (&[PodAffinityTerm], &[WeightedPodAffinityTerm]) {
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let (required, preferred) = if anti {
        let a = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        (
            a.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            }),
            a.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            }),
        )
    } else {
        let a = affinity.and_then(|a| a.pod_affinity.as_ref());
        (
            a.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            }),
            a.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            }),
        )
    };
    (required.unwrap_or(&[]), preferred.unwrap_or(&[]))
}

/// The pod's required affinity (`anti = false`) or anti-affinity terms.
pub fn required_terms(pod: &Pod, anti: bool) -> Vec<AffinityTerm> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    pod_terms(pod, anti)
        .0
        .iter()
        .map(|t| AffinityTerm::of(ns, t))
        .collect()
}

/// One preferred (anti-)affinity term with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedTerm {
    /// `weight` (1..100 when validated).
    pub weight: i64,
    /// The term, resolved against its pod's namespace.
    pub term: AffinityTerm,
}

/// The pod's preferred affinity (`anti = false`) or anti-affinity terms.
pub fn preferred_terms(pod: &Pod, anti: bool) -> Vec<WeightedTerm> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    pod_terms(pod, anti)
        .1
        .iter()
        .map(|t| WeightedTerm {
            weight: i64::from(t.weight),
            term: AffinityTerm::of(ns, &t.pod_affinity_term),
        })
        .collect()
}

type Counts = BTreeMap<(String, String), i64>;

/// The pre-pass for one incoming pod.
#[derive(Debug, Default, Clone)]
pub struct InterPodState {
    affinity: Vec<AffinityTerm>,
    anti: Vec<AffinityTerm>,
    affinity_counts: Counts,
    anti_counts: Counts,
    existing_anti_counts: Counts,
    matches_own_affinity: bool,
}

fn bump(counts: &mut Counts, node: &NodeInfo, key: &str, delta: i64) {
    if let Some(v) = node.node.metadata.labels.as_ref().and_then(|l| l.get(key)) {
        let pair = (key.to_string(), v.clone());
        let n = counts.entry(pair.clone()).or_insert(0);
        *n += delta;
        // Upstream drops a pair whose count falls to zero (it may go negative in between).
        if *n == 0 {
            counts.remove(&pair);
        }
    }
}

/// Upstream's PreFilter: counts over every placed pod of `nodes`.
pub fn prefilter(
    pod: &Pod,
    nodes: &[&NodeInfo],
    namespaces: &BTreeMap<String, Labels>,
) -> InterPodState {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let labels = pod.metadata.labels.as_ref();
    let mut state = InterPodState {
        affinity: required_terms(pod, false),
        anti: required_terms(pod, true),
        ..Default::default()
    };
    state.matches_own_affinity =
        !state.affinity.is_empty() && state.affinity.iter().all(|t| t.matches(ns, labels, None));
    for node in nodes {
        if state.affinity.is_empty() && state.anti.is_empty() && node.anti_affinity_pods == 0 {
            continue;
        }
        for existing in node.pods.values() {
            state.update_with_pod(pod, existing, node, namespaces, 1);
        }
    }
    state
}

impl InterPodState {
    /// Upstream's PreFilterExtensions AddPod (`delta` 1) / RemovePod (`delta` -1): `existing`
    /// joins or leaves `node` (preemption's what-if).
    pub fn update_with_pod(
        &mut self,
        pod: &Pod,
        existing: &PodUsage,
        node: &NodeInfo,
        namespaces: &BTreeMap<String, Labels>,
        delta: i64,
    ) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let labels = pod.metadata.labels.as_ref();
        let own_ns_labels = namespaces.get(ns);
        for term in &existing.anti_affinity {
            if term.matches(ns, labels, own_ns_labels) {
                bump(
                    &mut self.existing_anti_counts,
                    node,
                    &term.topology_key,
                    delta,
                );
            }
        }
        if self.affinity.is_empty() && self.anti.is_empty() {
            return;
        }
        let their_ns_labels = namespaces.get(&existing.namespace);
        let theirs = Some(&existing.labels);
        if !self.affinity.is_empty()
            && self
                .affinity
                .iter()
                .all(|t| t.matches(&existing.namespace, theirs, their_ns_labels))
        {
            for term in &self.affinity {
                bump(&mut self.affinity_counts, node, &term.topology_key, delta);
            }
        }
        for term in &self.anti {
            if term.matches(&existing.namespace, theirs, their_ns_labels) {
                bump(&mut self.anti_counts, node, &term.topology_key, delta);
            }
        }
    }
}

fn unfit(reason: &str, unresolvable: bool, detail: String) -> Unfit {
    Unfit {
        plugin: "InterPodAffinity",
        reasons: vec![reason.to_string()],
        unresolvable,
        details: vec![detail],
    }
}

/// Upstream's Filter: affinity, then anti-affinity, then existing pods' anti-affinity.
pub fn filter(state: &InterPodState, node: &NodeInfo) -> Result<(), Unfit> {
    let labels = node.node.metadata.labels.as_ref();
    let value = |key: &str| labels.and_then(|l| l.get(key));
    let mut pods_exist = true;
    for term in &state.affinity {
        let Some(v) = value(&term.topology_key) else {
            return Err(unfit(
                REASON_AFFINITY,
                true,
                format!(
                    "node has no {} label (pod affinity topology key)",
                    term.topology_key
                ),
            ));
        };
        if state
            .affinity_counts
            .get(&(term.topology_key.clone(), v.clone()))
            .copied()
            .unwrap_or(0)
            <= 0
        {
            pods_exist = false;
        }
    }
    // The first pod of a self-affine group may go where the topology keys exist.
    let first_of_group = state.affinity_counts.is_empty() && state.matches_own_affinity;
    if !pods_exist && !first_of_group {
        return Err(unfit(
            REASON_AFFINITY,
            true,
            "no pod matching the pod's affinity runs in this node's topology domain".into(),
        ));
    }
    for term in &state.anti {
        if let Some(v) = value(&term.topology_key)
            && state
                .anti_counts
                .get(&(term.topology_key.clone(), v.clone()))
                .copied()
                .unwrap_or(0)
                > 0
        {
            return Err(unfit(
                REASON_ANTI_AFFINITY,
                false,
                format!(
                    "a pod the pod's anti-affinity excludes runs in {}={v}",
                    term.topology_key
                ),
            ));
        }
    }
    if !state.existing_anti_counts.is_empty() {
        for (k, v) in labels.into_iter().flatten() {
            if state
                .existing_anti_counts
                .get(&(k.clone(), v.clone()))
                .copied()
                .unwrap_or(0)
                > 0
            {
                return Err(unfit(
                    REASON_EXISTING_ANTI_AFFINITY,
                    false,
                    format!("an existing pod's anti-affinity excludes this pod from {k}={v}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use k8s_openapi::api::core::v1::{Affinity, PodAffinity, PodAntiAffinity};

    fn term(key: &str, value: &str, topology: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some([(key.to_string(), value.to_string())].into()),
                match_expressions: None,
            }),
            topology_key: topology.into(),
            ..Default::default()
        }
    }

    fn labelled(name: &str, app: &str) -> Pod {
        let mut p = pod_req(name, "", "");
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p
    }

    fn with_affinity(
        mut p: Pod,
        affinity: Vec<PodAffinityTerm>,
        anti: Vec<PodAffinityTerm>,
    ) -> Pod {
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(affinity),
                ..Default::default()
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(anti),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    fn zoned(name: &str, zone: &str) -> NodeInfo {
        info(with_labels(node(name, "4", "4Gi", 10), &[("zone", zone)]))
    }

    fn put(node: &mut NodeInfo, pod: &Pod) {
        let key = format!("default/{}", pod.metadata.name.as_deref().unwrap());
        node.add_pod(&key, PodUsage::of(pod));
    }

    fn verdicts(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<Option<String>> {
        let state = prefilter(pod, nodes, &BTreeMap::new());
        nodes
            .iter()
            .map(|n| filter(&state, n).err().map(|u| u.reasons[0].clone()))
            .collect()
    }

    #[test]
    fn affinity_follows_matching_pods_by_topology() {
        let mut a = zoned("a", "z1");
        let b = zoned("b", "z1");
        let c = zoned("c", "z2");
        put(&mut a, &labelled("db", "db"));
        let web = with_affinity(
            labelled("web", "web"),
            vec![term("app", "db", "zone")],
            vec![],
        );
        assert_eq!(
            verdicts(&web, &[&a, &b, &c]),
            vec![None, None, Some(REASON_AFFINITY.into())]
        );
        let by_host = with_affinity(
            labelled("web", "web"),
            vec![term("app", "db", "kubernetes.io/hostname")],
            vec![],
        );
        assert_eq!(
            verdicts(&by_host, &[&a, &b]),
            vec![None, Some(REASON_AFFINITY.into())]
        );
    }

    #[test]
    fn first_pod_of_a_self_affine_group_goes_anywhere_with_the_key() {
        let a = zoned("a", "z1");
        let no_key = info(node("x", "4", "4Gi", 10));
        let first = with_affinity(
            labelled("w0", "web"),
            vec![term("app", "web", "zone")],
            vec![],
        );
        assert_eq!(
            verdicts(&first, &[&a, &no_key]),
            vec![None, Some(REASON_AFFINITY.into())]
        );
        let other = with_affinity(
            labelled("w0", "api"),
            vec![term("app", "web", "zone")],
            vec![],
        );
        assert_eq!(verdicts(&other, &[&a]), vec![Some(REASON_AFFINITY.into())]);
    }

    #[test]
    fn anti_affinity_both_ways() {
        let mut a = zoned("a", "z1");
        let b = zoned("b", "z2");
        put(&mut a, &labelled("w0", "web"));
        let spread = with_affinity(
            labelled("w1", "web"),
            vec![],
            vec![term("app", "web", "zone")],
        );
        assert_eq!(
            verdicts(&spread, &[&a, &b]),
            vec![Some(REASON_ANTI_AFFINITY.into()), None]
        );
        // An existing pod that refuses "web" neighbours keeps a plain web pod out of its zone.
        let mut c = zoned("c", "z3");
        put(
            &mut c,
            &with_affinity(
                labelled("loner", "x"),
                vec![],
                vec![term("app", "web", "zone")],
            ),
        );
        let plain = labelled("w2", "web");
        assert_eq!(
            verdicts(&plain, &[&b, &c]),
            vec![None, Some(REASON_EXISTING_ANTI_AFFINITY.into())]
        );
    }

    #[test]
    fn namespaces_default_to_the_owner_and_selectors_widen_them() {
        let mut a = zoned("a", "z1");
        let mut other_ns = labelled("db", "db");
        other_ns.metadata.namespace = Some("other".into());
        put(&mut a, &other_ns);
        let web = with_affinity(
            labelled("web", "web"),
            vec![term("app", "db", "zone")],
            vec![],
        );
        assert_eq!(
            verdicts(&web, &[&a]),
            vec![Some(REASON_AFFINITY.into())],
            "db is in another namespace"
        );
        let mut wide = term("app", "db", "zone");
        wide.namespace_selector = Some(LabelSelector::default());
        let web = with_affinity(labelled("web", "web"), vec![wide], vec![]);
        assert_eq!(
            verdicts(&web, &[&a]),
            vec![None],
            "an empty namespaceSelector is every namespace"
        );
    }
}

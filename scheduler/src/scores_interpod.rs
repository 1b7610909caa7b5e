//! kube-scheduler's InterPodAffinity Score plugin (weight 2 in the default profile). A pre-pass
//! over every placed pod of every node sums weights per topology domain (key, value of the
//! existing pod's node):
//!
//! - the incoming pod's preferred affinity terms the existing pod matches: `+weight`;
//! - its preferred anti-affinity terms the existing pod matches: `-weight`;
//! - the existing pod's *required* affinity terms the incoming pod matches:
//!   `+hardPodAffinityWeight` (1);
//! - the existing pod's preferred affinity / anti-affinity terms the incoming pod matches:
//!   `+weight` / `-weight`.
//!
//! A node's raw score is the sum over the domains it belongs to; NormalizeScore maps the raw
//! scores min-max onto 0..100 (all 0 when they are equal). Without preferred terms of its own
//! the pod only looks at placed pods that have affinity terms, as upstream does. Terms match
//! as in the filter (`interpod::AffinityTerm::matches`: namespaces, namespaceSelector, label
//! selector).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::interpod::{AffinityTerm, WeightedTerm, preferred_terms};
use crate::node_info::NodeInfo;
use crate::pod_filters::NamespaceLabels;
use crate::scores::MAX_NODE_SCORE;

/// Upstream's default `hardPodAffinityWeight`.
pub const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// (topology key, value) → summed weight.
type TopologyScore = BTreeMap<(String, String), i64>;

fn add(scores: &mut TopologyScore, node: &NodeInfo, term: &AffinityTerm, weight: i64) {
    let value = node
        .node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(term.topology_key()));
    if let Some(value) = value {
        let entry = scores
            .entry((term.topology_key().to_string(), value.clone()))
            .or_insert(0);
        *entry = entry.saturating_add(weight);
    }
}

/// Upstream's PreScore: the per-domain sums over every placed pod of `all`.
fn topology_score(pod: &Pod, all: &[&NodeInfo], namespaces: &NamespaceLabels) -> TopologyScore {
    let affinity = preferred_terms(pod, false);
    let anti = preferred_terms(pod, true);
    let has_constraints = !affinity.is_empty() || !anti.is_empty();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let labels = pod.metadata.labels.as_ref();
    let own_ns_labels = namespaces.get(ns);
    let incoming_matches = |t: &AffinityTerm| t.matches(ns, labels, own_ns_labels);
    let mut scores = TopologyScore::new();
    for node in all {
        if !has_constraints && node.affinity_pods == 0 {
            continue;
        }
        if node
            .node
            .metadata
            .labels
            .as_ref()
            .is_none_or(|l| l.is_empty())
        {
            continue;
        }
        for existing in node.pods.values() {
            if !has_constraints && !existing.has_affinity() {
                continue;
            }
            let theirs = Some(&existing.labels);
            let their_ns_labels = namespaces.get(&existing.namespace);
            let existing_matches =
                |t: &AffinityTerm| t.matches(&existing.namespace, theirs, their_ns_labels);
            let mut own = |terms: &[WeightedTerm], sign: i64| {
                for w in terms.iter().filter(|w| existing_matches(&w.term)) {
                    add(&mut scores, node, &w.term, sign * w.weight);
                }
            };
            own(&affinity, 1);
            own(&anti, -1);
            for term in existing.affinity.iter().filter(|t| incoming_matches(t)) {
                add(&mut scores, node, term, HARD_POD_AFFINITY_WEIGHT);
            }
            for w in existing
                .preferred_affinity
                .iter()
                .filter(|w| incoming_matches(&w.term))
            {
                add(&mut scores, node, &w.term, w.weight);
            }
            for w in existing
                .preferred_anti_affinity
                .iter()
                .filter(|w| incoming_matches(&w.term))
            {
                add(&mut scores, node, &w.term, -w.weight);
            }
        }
    }
    scores
}

/// InterPodAffinity for each of `nodes` (the feasible ones), normalised to 0..100; `all` is
/// every node (whose placed pods count).
pub fn inter_pod_affinity_scores(
    pod: &Pod,
    nodes: &[&NodeInfo],
    all: &[&NodeInfo],
    namespaces: &NamespaceLabels,
) -> Vec<i64> {
    let domains = topology_score(pod, all, namespaces);
    if domains.is_empty() {
        return vec![0; nodes.len()];
    }
    let mut raw: Vec<i64> = nodes
        .iter()
        .map(|node| {
            let labels = node.node.metadata.labels.as_ref();
            domains
                .iter()
                .filter(|((key, value), _)| labels.and_then(|l| l.get(key)) == Some(value))
                .map(|(_, w)| *w)
                .fold(0i64, i64::saturating_add)
        })
        .collect();
    normalize_min_max(&mut raw);
    raw
}

/// InterPodAffinity's NormalizeScore: `MaxNodeScore * (s - min) / (max - min)`, 0 when all
/// scores are equal.
pub fn normalize_min_max(scores: &mut [i64]) {
    let (Some(min), Some(max)) = (scores.iter().min().copied(), scores.iter().max().copied())
    else {
        return;
    };
    let diff = max as f64 - min as f64;
    for s in scores.iter_mut() {
        *s = if diff > 0.0 {
            (MAX_NODE_SCORE as f64 * ((*s as f64 - min as f64) / diff)) as i64
        } else {
            0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_info::PodUsage;
    use crate::testing::*;
    use k8s_openapi::api::core::v1::{
        Affinity, PodAffinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn term(app: &str, topology: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), app.to_string())].into()),
                match_expressions: None,
            }),
            topology_key: topology.into(),
            ..Default::default()
        }
    }

    fn weighted(weight: i32, app: &str, topology: &str) -> WeightedPodAffinityTerm {
        WeightedPodAffinityTerm {
            weight,
            pod_affinity_term: term(app, topology),
        }
    }

    fn labelled(name: &str, app: &str) -> Pod {
        let mut p = pod_req(name, "", "");
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p
    }

    fn preferring(
        mut p: Pod,
        affinity: Vec<WeightedPodAffinityTerm>,
        anti: Vec<WeightedPodAffinityTerm>,
    ) -> Pod {
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(PodAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(affinity),
                ..Default::default()
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(anti),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    fn zoned(name: &str, zone: &str, pods: &[&Pod]) -> NodeInfo {
        let mut n = info(with_labels(node(name, "4", "4Gi", 10), &[("zone", zone)]));
        for p in pods {
            let key = format!("default/{}", p.metadata.name.as_deref().unwrap_or(""));
            n.add_pod(&key, PodUsage::of(p));
        }
        n
    }

    fn scores(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        inter_pod_affinity_scores(pod, nodes, nodes, &NamespaceLabels::new())
    }

    #[test]
    fn preferred_anti_affinity_favours_the_node_without_the_matching_pod() {
        let web = labelled("w0", "web");
        let a = zoned("a", "z1", &[&web]);
        let b = zoned("b", "z2", &[]);
        let p = preferring(
            labelled("w1", "web"),
            vec![],
            vec![weighted(10, "web", "kubernetes.io/hostname")],
        );
        assert_eq!(scores(&p, &[&a, &b]), vec![0, 100]);
    }

    #[test]
    fn preferred_affinity_weights_sum_per_topology_domain() {
        let db = labelled("db", "db");
        let cache = labelled("cache", "cache");
        let a = zoned("a", "z1", &[&db]);
        let b = zoned("b", "z1", &[]);
        let c = zoned("c", "z2", &[&cache]);
        let d = zoned("d", "z3", &[]);
        // db's zone: +8; cache's zone: +2; z3: 0 → min-max: 100, 100, 25, 0.
        let p = preferring(
            labelled("web", "web"),
            vec![weighted(8, "db", "zone"), weighted(2, "cache", "zone")],
            vec![],
        );
        assert_eq!(scores(&p, &[&a, &b, &c, &d]), vec![100, 100, 25, 0]);
        // Only feasible nodes are scored, but pods on every node count.
        assert_eq!(
            inter_pod_affinity_scores(&p, &[&b, &d], &[&a, &b, &c, &d], &NamespaceLabels::new()),
            vec![100, 0]
        );
        // No terms anywhere: all 0.
        assert_eq!(scores(&labelled("x", "x"), &[&a, &d]), vec![0, 0]);
    }

    #[test]
    fn existing_pods_terms_attract_and_repel_the_incoming_pod() {
        // An existing pod that requires "web" in its zone pulls web pods with weight 1,
        // one that prefers web away pushes them off its node.
        let mut needs_web = labelled("api", "api");
        needs_web.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![term(
                    "web", "zone",
                )]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let shy = preferring(
            labelled("shy", "shy"),
            vec![],
            vec![weighted(5, "web", "kubernetes.io/hostname")],
        );
        let a = zoned("a", "z1", &[&needs_web]);
        let b = zoned("b", "z2", &[]);
        let c = zoned("c", "z2", &[&shy]);
        let web = labelled("w", "web");
        // Raw: a +1, b 0, c -5 → 100 * (s + 5) / 6.
        assert_eq!(scores(&web, &[&a, &b, &c]), vec![100, 83, 0]);
        // A pod the terms do not select is not affected.
        assert_eq!(
            scores(&labelled("o", "other"), &[&a, &b, &c]),
            vec![0, 0, 0]
        );
    }

    #[test]
    fn min_max_normalisation_matches_upstream() {
        let mut s = vec![-3, 0, 7];
        normalize_min_max(&mut s);
        assert_eq!(s, vec![0, 30, 100]);
        let mut equal = vec![4, 4];
        normalize_min_max(&mut equal);
        assert_eq!(equal, vec![0, 0]);
        let mut empty: Vec<i64> = vec![];
        normalize_min_max(&mut empty);
        assert!(empty.is_empty());
    }
}

//! kube-scheduler's default Score plugins, with upstream's weights and normalisation:
//! NodeResourcesFit (LeastAllocated, cpu and memory weight 1 each; weight 1),
//! NodeResourcesBalancedAllocation (weight 1), NodeAffinity preferred terms (weight 2,
//! normalised to 0..100), TaintToleration PreferNoSchedule (weight 3, normalised and
//! reversed), InterPodAffinity (weight 2, `scores_interpod`), PodTopologySpread (weight 2,
//! `scores_spread`) and ImageLocality (weight 1, `image_locality`). Ties are broken at random
//! by the caller's RNG, as `selectHost` does.

use k8s_openapi::api::core::v1::Pod;
use rand::Rng;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::filters::{term_matches, tolerates};
use crate::image_locality::image_locality_scores;
use crate::node_info::{NodeInfo, PodUsage};
use crate::pod_filters::NamespaceLabels;
use crate::scores_interpod::inter_pod_affinity_scores;
use crate::scores_spread::pod_topology_spread_scores;

/// `framework.MaxNodeScore`.
pub const MAX_NODE_SCORE: i64 = 100;
/// Upstream plugin weights (the default profile).
pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
/// NodeAffinity's weight.
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
/// NodeResourcesFit's weight.
pub const WEIGHT_RESOURCES_FIT: i64 = 1;
/// NodeResourcesBalancedAllocation's weight.
pub const WEIGHT_BALANCED: i64 = 1;
/// InterPodAffinity's weight.
pub const WEIGHT_INTER_POD_AFFINITY: i64 = 2;
/// PodTopologySpread's weight.
pub const WEIGHT_POD_TOPOLOGY_SPREAD: i64 = 2;
/// ImageLocality's weight.
pub const WEIGHT_IMAGE_LOCALITY: i64 = 1;

/// What the cluster-wide scores look at besides the feasible nodes.
#[derive(Debug, Clone, Copy)]
pub struct ScoreContext<'a> {
    /// Every node of the snapshot (their pods count for InterPodAffinity and
    /// PodTopologySpread; their images for ImageLocality's spread factor).
    pub all_nodes: &'a [&'a NodeInfo],
    /// Namespace labels (affinity terms' `namespaceSelector`).
    pub namespaces: &'a NamespaceLabels,
    /// `DefaultSelector` of the pod for the system default spread constraints; `None` when
    /// it cannot be built (the defaults are then skipped).
    pub default_spread_selector: Option<&'a LabelSelector>,
}

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

/// NodeResourcesFit LeastAllocated over cpu and memory (non-zero requests).
pub fn least_allocated(usage: &PodUsage, node: &NodeInfo) -> i64 {
    let pairs = [
        (
            node.non_zero_requested.milli_cpu + usage.non_zero.milli_cpu,
            node.allocatable.milli_cpu,
        ),
        (
            node.non_zero_requested.memory + usage.non_zero.memory,
            node.allocatable.memory,
        ),
    ];
    let (mut score, mut weights) = (0, 0);
    for (requested, allocatable) in pairs {
        if allocatable == 0 {
            continue;
        }
        score += least_requested(requested, allocatable);
        weights += 1;
    }
    if weights == 0 { 0 } else { score / weights }
}

/// NodeResourcesBalancedAllocation over cpu and memory (actual requests).
pub fn balanced_allocation(usage: &PodUsage, node: &NodeInfo) -> i64 {
    let pairs = [
        (
            node.requested.milli_cpu + usage.requests.milli_cpu,
            node.allocatable.milli_cpu,
        ),
        (
            node.requested.memory + usage.requests.memory,
            node.allocatable.memory,
        ),
    ];
    let fractions: Vec<f64> = pairs
        .iter()
        .filter(|(_, a)| *a != 0)
        .map(|(r, a)| (*r as f64 / *a as f64).min(1.0))
        .collect();
    let std = match fractions.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// NodeAffinity (score, raw): the sum of the weights of preferred terms the node matches.
pub fn node_affinity_raw(pod: &Pod, node: &NodeInfo) -> i64 {
    let preferred = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[]);
    preferred
        .iter()
        .filter(|t| t.weight != 0 && term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// TaintToleration (score, raw): PreferNoSchedule taints the pod does not tolerate.
pub fn taint_toleration_raw(pod: &Pod, node: &NodeInfo) -> i64 {
    let tolerations: Vec<_> = crate::filters::tolerations(pod)
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .collect();
    let n = crate::filters::taints(node)
        .iter()
        .filter(|taint| taint.effect == "PreferNoSchedule")
        .filter(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `helper.DefaultNormalizeScore`.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX_NODE_SCORE * *s / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

/// Weighted totals for `nodes` (all feasible), in the same order.
pub fn score_nodes(
    pod: &Pod,
    usage: &PodUsage,
    nodes: &[&NodeInfo],
    cx: &ScoreContext<'_>,
) -> Vec<i64> {
    let mut affinity: Vec<i64> = nodes.iter().map(|n| node_affinity_raw(pod, n)).collect();
    normalize(&mut affinity, false);
    let mut taints: Vec<i64> = nodes.iter().map(|n| taint_toleration_raw(pod, n)).collect();
    normalize(&mut taints, true);
    let inter_pod = inter_pod_affinity_scores(pod, nodes, cx.all_nodes, cx.namespaces);
    let spread = pod_topology_spread_scores(pod, nodes, cx.all_nodes, cx.default_spread_selector);
    let images = image_locality_scores(pod, nodes, cx.all_nodes);
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            least_allocated(usage, n) * WEIGHT_RESOURCES_FIT
                + balanced_allocation(usage, n) * WEIGHT_BALANCED
                + affinity[i] * WEIGHT_NODE_AFFINITY
                + taints[i] * WEIGHT_TAINT_TOLERATION
                + inter_pod[i] * WEIGHT_INTER_POD_AFFINITY
                + spread[i] * WEIGHT_POD_TOPOLOGY_SPREAD
                + images[i] * WEIGHT_IMAGE_LOCALITY
        })
        .collect()
}

/// `selectHost`: the index of a highest score, uniformly at random among ties.
pub fn select_host(scores: &[i64], rng: &mut impl Rng) -> Option<usize> {
    let max = *scores.iter().max()?;
    let best: Vec<usize> = (0..scores.len()).filter(|i| scores[*i] == max).collect();
    best.get(rng.random_range(0..best.len())).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, PreferredSchedulingTerm};

    #[test]
    fn least_allocated_matches_upstream_example() {
        // Upstream "nothing scheduled, resources requested, differently sized nodes":
        // pod 3000m/5000 on nodes 4000m/10000 and 6000m/10000 → 25*... scores 32 and 50.
        let n1 = info(node("n1", "4", "10000", 10));
        let n2 = info(node("n2", "6", "10000", 10));
        let pod = pod_req("p", "3", "5000");
        let usage = PodUsage::of(&pod);
        assert_eq!(least_allocated(&usage, &n1), (25 + 50) / 2);
        assert_eq!(least_allocated(&usage, &n2), (50 + 50) / 2);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        // cpu 3/4 = 0.75, mem 5000/10000 = 0.5 → std 0.125 → 87.
        let n1 = info(node("n1", "4", "10000", 10));
        let usage = PodUsage::of(&pod_req("p", "3", "5000"));
        assert_eq!(balanced_allocation(&usage, &n1), 87);
        let n2 = info(node("n2", "6", "10000", 10));
        assert_eq!(balanced_allocation(&usage, &n2), 100);
    }

    #[test]
    fn taint_and_affinity_normalisation() {
        let plain = info(node("a", "4", "4Gi", 10));
        let soft = info(with_taint(
            node("b", "4", "4Gi", 10),
            "k",
            "v",
            "PreferNoSchedule",
        ));
        let pod = pod_req("p", "", "");
        let mut raw = vec![
            taint_toleration_raw(&pod, &plain),
            taint_toleration_raw(&pod, &soft),
        ];
        normalize(&mut raw, true);
        assert_eq!(raw, vec![100, 0]);
        let mut none = vec![0, 0];
        normalize(&mut none, true);
        assert_eq!(none, vec![100, 100]);

        let zoned = info(with_labels(node("z", "4", "4Gi", 10), &[("zone", "a")]));
        let mut p = pod_req("p", "", "");
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 5,
                        preference: k8s_openapi::api::core::v1::NodeSelectorTerm {
                            match_expressions: Some(vec![
                                k8s_openapi::api::core::v1::NodeSelectorRequirement {
                                    key: "zone".into(),
                                    operator: "In".into(),
                                    values: Some(vec!["a".into()]),
                                },
                            ]),
                            match_fields: None,
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let usage = PodUsage::of(&p);
        let nodes = [&plain, &zoned];
        let namespaces = NamespaceLabels::new();
        let cx = ScoreContext {
            all_nodes: &nodes,
            namespaces: &namespaces,
            default_spread_selector: None,
        };
        let totals = score_nodes(&p, &usage, &nodes, &cx);
        assert_eq!(totals[1] - totals[0], 100 * WEIGHT_NODE_AFFINITY);
    }

    #[test]
    fn cluster_wide_scores_are_weighted_into_the_total() {
        use k8s_openapi::api::core::v1::{
            ContainerImage, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm,
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let a = info(with_labels(node("a", "4", "4Gi", 10), &[("zone", "z1")]));
        let mut b_node = with_labels(node("b", "4", "4Gi", 10), &[("zone", "z2")]);
        b_node.status.as_mut().unwrap().images = Some(vec![ContainerImage {
            names: Some(vec!["docker.io/library/app:1".into()]),
            size_bytes: Some(500 * 1024 * 1024),
        }]);
        let b = info(b_node);
        // An infeasible node of z1 runs a web pod.
        let mut c = info(with_labels(node("c", "4", "4Gi", 10), &[("zone", "z1")]));
        let mut web = pod_req("w", "", "");
        web.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        place(&mut c, &web);
        let mut p = pod_req("p", "", "");
        let spec = p.spec.as_mut().unwrap();
        spec.containers[0].image = Some("app:1".into());
        spec.affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 1,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                                match_expressions: None,
                            }),
                            topology_key: "zone".into(),
                            ..Default::default()
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let all = [&a, &b, &c];
        let namespaces = NamespaceLabels::new();
        let cx = ScoreContext {
            all_nodes: &all,
            namespaces: &namespaces,
            default_spread_selector: None,
        };
        let totals = score_nodes(&p, &PodUsage::of(&p), &[&a, &b], &cx);
        // InterPodAffinity 0 vs 100 (× 2); ImageLocality: 500 MiB on 1 of 3 nodes → 166 MiB
        // → 100 * (166.7 - 23) / 977 = 14 (× 1).
        assert_eq!(
            totals[1] - totals[0],
            100 * WEIGHT_INTER_POD_AFFINITY + 14 * WEIGHT_IMAGE_LOCALITY
        );
    }

    #[test]
    fn select_host_breaks_ties_among_the_best_only() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = [0; 3];
        for _ in 0..200 {
            seen[select_host(&[5, 9, 9], &mut rng).unwrap()] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 50 && seen[2] > 50, "{seen:?}");
        assert_eq!(select_host(&[], &mut rng), None);
    }
}

//! kube-scheduler's PodTopologySpread Score plugin (weight 2 in the default profile): the
//! pod's `whenUnsatisfiable: ScheduleAnyway` constraints — or, when it has no constraints at
//! all, the system defaults (`kubernetes.io/hostname` maxSkew 3, `topology.kubernetes.io/zone`
//! maxSkew 5) — score nodes so that fewer matching pods in a node's domains score higher.
//!
//! As upstream: domains come from the feasible nodes (with pods counted on every node that
//! passes the constraint's node inclusion policies); each constraint adds
//! `count * ln(domains + 2) + maxSkew - 1` (`scoreForCount`; for hostname the domains are the
//! feasible nodes and the count is the node's own); the sum is rounded, then NormalizeScore
//! gives `100 * (max + min - s) / max` (100 everywhere when max is 0). Nodes lacking one of the
//! pod's own constraints' topology keys score 0; with the system defaults a node lacking the
//! zone label is still scored by hostname. A selector without requirements counts nothing
//! (upstream's `countPodsMatchSelector`).
//!
//! The system defaults need a selector built from the Services selecting the pod and its
//! controlling ReplicationController, ReplicaSet or StatefulSet (`helper.DefaultSelector`,
//! here `default_selector`); the caller passes it. When none can be built the defaults are
//! skipped, which is what upstream does for a pod nothing selects. The running scheduler
//! watches Services, ReplicationControllers, ReplicaSets and StatefulSets and keeps their
//! selectors in its cache (`Cache::default_spread_selector`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use k8s_openapi::api::core::v1::{Pod, Service, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, OwnerReference,
};

use crate::interpod::Selector;
use crate::node_info::NodeInfo;
use crate::scores::MAX_NODE_SCORE;
use crate::spread::{Constraint, constraint_of, counts_for};

/// `v1.LabelHostname`.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// `v1.LabelTopologyZone`.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The system default constraints: (topology key, maxSkew).
pub const SYSTEM_DEFAULT_CONSTRAINTS: [(&str, i32); 2] = [(LABEL_HOSTNAME, 3), (LABEL_ZONE, 5)];

fn soft(topology_key: &str, max_skew: i32, selector: &LabelSelector) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew,
        topology_key: topology_key.into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(selector.clone()),
        ..Default::default()
    }
}

/// The constraints that score, and whether they are the system defaults.
fn scoring_constraints(
    pod: &Pod,
    default_selector: Option<&LabelSelector>,
) -> (Vec<Constraint>, bool) {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or(&[]);
    if !own.is_empty() {
        let constraints = own
            .iter()
            .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
            .map(|c| constraint_of(pod, c))
            .collect();
        return (constraints, false);
    }
    let Some(selector) = default_selector.filter(|s| !Selector::new(Some((*s).clone())).is_empty())
    else {
        return (Vec::new(), true);
    };
    let constraints = SYSTEM_DEFAULT_CONSTRAINTS
        .iter()
        .map(|(key, skew)| constraint_of(pod, &soft(key, *skew, selector)))
        .collect();
    (constraints, true)
}

fn label<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a String> {
    node.node.metadata.labels.as_ref().and_then(|l| l.get(key))
}

fn has_all_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    constraints
        .iter()
        .all(|c| label(node, &c.topology_key).is_some())
}

/// `countPodsMatchSelector` over one node.
fn matching_pods(ns: &str, selector: &Selector, node: &NodeInfo) -> i64 {
    if selector.is_empty() {
        return 0;
    }
    let n = node
        .pods
        .values()
        .filter(|p| counts_for(ns, selector, p))
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// PodTopologySpread for each of `nodes` (the feasible ones), normalised to 0..100; `all` is
/// every node (whose pods count). `default_selector` is `DefaultSelector(pod)`, used only
/// when the pod has no constraints of its own.
pub fn pod_topology_spread_scores(
    pod: &Pod,
    nodes: &[&NodeInfo],
    all: &[&NodeInfo],
    default_selector: Option<&LabelSelector>,
) -> Vec<i64> {
    let (constraints, system_defaulted) = scoring_constraints(pod, default_selector);
    if constraints.is_empty() || nodes.is_empty() || all.is_empty() {
        return vec![0; nodes.len()];
    }
    // Only the pod's own constraints require every topology key on a node.
    let require_all = !system_defaulted;
    let value = |node: &NodeInfo, key: &str| label(node, key).cloned().unwrap_or_default();

    // PreScore: the domains of the feasible nodes, and their sizes per constraint.
    let ignored: Vec<bool> = nodes
        .iter()
        .map(|n| require_all && !has_all_keys(n, &constraints))
        .collect();
    // (constraint index, topology value) → matching pods.
    let mut counts: BTreeMap<(usize, String), i64> = BTreeMap::new();
    let mut domains = vec![0usize; constraints.len()];
    for (node, _) in nodes.iter().zip(&ignored).filter(|(_, ig)| !**ig) {
        for (i, c) in constraints.iter().enumerate() {
            if c.topology_key == LABEL_HOSTNAME {
                continue;
            }
            if let Entry::Vacant(e) = counts.entry((i, value(node, &c.topology_key))) {
                e.insert(0);
                domains[i] += 1;
            }
        }
    }
    let scored = ignored.iter().filter(|ig| !**ig).count();
    let weights: Vec<f64> = constraints
        .iter()
        .zip(&domains)
        .map(|(c, d)| {
            let size = if c.topology_key == LABEL_HOSTNAME {
                scored
            } else {
                *d
            };
            topology_normalizing_weight(size)
        })
        .collect();

    // Matching pods per domain, over every node.
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    for node in all {
        if require_all && !has_all_keys(node, &constraints) {
            continue;
        }
        for (i, c) in constraints.iter().enumerate() {
            if !c.includes(pod, node) {
                continue;
            }
            if let Some(count) = counts.get_mut(&(i, value(node, &c.topology_key))) {
                *count = count.saturating_add(matching_pods(ns, &c.selector, node));
            }
        }
    }

    // Score.
    let raw: Vec<Option<i64>> = nodes
        .iter()
        .zip(&ignored)
        .map(|(node, ignored)| {
            if *ignored {
                return None;
            }
            let mut score = 0.0;
            for (i, (c, weight)) in constraints.iter().zip(&weights).enumerate() {
                let Some(v) = label(node, &c.topology_key) else {
                    continue;
                };
                let count = if c.topology_key == LABEL_HOSTNAME {
                    matching_pods(ns, &c.selector, node)
                } else {
                    counts.get(&(i, v.clone())).copied().unwrap_or(0)
                };
                score += score_for_count(count, c.max_skew, *weight);
            }
            Some(score.round() as i64)
        })
        .collect();
    normalize_spread(&raw)
}

/// `topologyNormalizingWeight`: `ln(domains + 2)`.
pub fn topology_normalizing_weight(domains: usize) -> f64 {
    (domains as f64 + 2.0).ln()
}

/// `scoreForCount`: `count * weight + maxSkew - 1`.
pub fn score_for_count(count: i64, max_skew: i64, weight: f64) -> f64 {
    count as f64 * weight + (max_skew - 1) as f64
}

/// PodTopologySpread's NormalizeScore: ignored nodes (`None`) get 0, the others
/// `100 * (max + min - s) / max`, or 100 when max is 0.
pub fn normalize_spread(raw: &[Option<i64>]) -> Vec<i64> {
    let present = raw.iter().flatten().copied();
    let min = present.clone().min().unwrap_or(0);
    let max = present.max().unwrap_or(0).max(0);
    raw.iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => MAX_NODE_SCORE,
            Some(s) => {
                let v = i128::from(MAX_NODE_SCORE)
                    * (i128::from(max) + i128::from(min) - i128::from(*s))
                    / i128::from(max);
                i64::try_from(v).unwrap_or(0)
            }
        })
        .collect()
}

/// The owner reference with `controller: true`, if any.
pub fn controller_ref(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// `helper.DefaultSelector`: the `spec.selector` labels of every Service of the pod's
/// namespace that selects the pod, merged, plus the requirements of the selector of the pod's
/// controller (ReplicationController, ReplicaSet or StatefulSet, looked up by the caller from
/// `controller_ref`). An empty result means "no selector": the defaults are skipped.
pub fn default_selector<'s>(
    pod: &Pod,
    services: impl IntoIterator<Item = &'s Service>,
    controller: Option<&LabelSelector>,
) -> LabelSelector {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let labels = pod.metadata.labels.as_ref();
    let mut match_labels = BTreeMap::new();
    for service in services {
        if service.metadata.namespace.as_deref().unwrap_or("") != ns {
            continue;
        }
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        let selects = selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        if selects {
            match_labels.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut match_expressions = Vec::new();
    if let Some(c) = controller {
        for (k, v) in c.match_labels.iter().flatten() {
            match_expressions.push(LabelSelectorRequirement {
                key: k.clone(),
                operator: "In".into(),
                values: Some(vec![v.clone()]),
            });
        }
        match_expressions.extend(c.match_expressions.iter().flatten().cloned());
    }
    LabelSelector {
        match_labels: Some(match_labels).filter(|m| !m.is_empty()),
        match_expressions: Some(match_expressions).filter(|e| !e.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_info::PodUsage;
    use crate::testing::*;

    fn app_selector(app: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([("app".to_string(), app.to_string())].into()),
            match_expressions: None,
        }
    }

    fn web(name: &str) -> Pod {
        let mut p = pod_req(name, "", "");
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p
    }

    fn spreading(key: &str, max_skew: i32, when: &str) -> Pod {
        let mut p = web("p");
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![TopologySpreadConstraint {
                when_unsatisfiable: when.into(),
                ..soft(key, max_skew, &app_selector("web"))
            }]);
        p
    }

    fn node_with(name: &str, labels: &[(&str, &str)], web_pods: usize) -> NodeInfo {
        let mut n = info(with_labels(node(name, "4", "4Gi", 10), labels));
        for i in 0..web_pods {
            n.add_pod(
                &format!("default/{name}-w{i}"),
                PodUsage::of(&web(&format!("{name}-w{i}"))),
            );
        }
        n
    }

    #[test]
    fn schedule_anyway_zone_constraint_prefers_the_emptier_zone() {
        let a = node_with("a", &[("zone", "z1")], 2);
        let b = node_with("b", &[("zone", "z2")], 0);
        let c = node_with("c", &[("zone", "z2")], 1);
        let x = node_with("x", &[], 0);
        let p = spreading("zone", 1, "ScheduleAnyway");
        // Two domains, weight ln 4: z1 2 * 1.386 → 3, z2 1 * 1.386 → 1; normalised
        // 100 * (3 + 1 - s) / 3. The node without the key scores 0.
        assert_eq!(
            pod_topology_spread_scores(&p, &[&a, &b, &c, &x], &[&a, &b, &c, &x], None),
            vec![33, 100, 100, 0]
        );
        // Pods on infeasible nodes count for their (feasible) domain.
        assert_eq!(
            pod_topology_spread_scores(&p, &[&a, &b], &[&a, &b, &c], None),
            vec![33, 100]
        );
        // DoNotSchedule constraints do not score.
        let hard = spreading("zone", 1, "DoNotSchedule");
        assert_eq!(
            pod_topology_spread_scores(&hard, &[&a, &b], &[&a, &b], None),
            vec![0, 0]
        );
    }

    #[test]
    fn hostname_constraint_counts_the_node_itself() {
        let a = node_with("a", &[], 3);
        let b = node_with("b", &[], 1);
        let c = node_with("c", &[], 0);
        let p = spreading(LABEL_HOSTNAME, 2, "ScheduleAnyway");
        // 3 nodes → ln 5 = 1.609; a 3 * 1.609 + 1 = 5.83 → 6, b 2.61 → 3, c 1.
        // 100 * (6 + 1 - s) / 6: 16, 66, 100.
        assert_eq!(
            pod_topology_spread_scores(&p, &[&a, &b, &c], &[&a, &b, &c], None),
            vec![16, 66, 100]
        );
    }

    #[test]
    fn system_defaults_need_a_selector_and_tolerate_a_missing_zone() {
        let a = node_with("a", &[(LABEL_ZONE, "z1")], 1);
        let b = node_with("b", &[(LABEL_ZONE, "z1")], 0);
        let c = node_with("c", &[], 0);
        let plain = web("p");
        let nodes = [&a, &b, &c];
        // No owner selector: skipped, as upstream does for a pod nothing selects.
        assert_eq!(
            pod_topology_spread_scores(&plain, &nodes, &nodes, None),
            vec![0, 0, 0]
        );
        assert_eq!(
            pod_topology_spread_scores(&plain, &nodes, &nodes, Some(&LabelSelector::default())),
            vec![0, 0, 0]
        );
        // hostname: 3 nodes, ln 5, maxSkew 3; zone: domains z1 and "" (c), ln 4, maxSkew 5.
        // a: 1.609 + 2 + 1.386 + 4 = 8.99 → 9; b: 2 + 5.386 → 7; c: hostname only → 2.
        // 100 * (9 + 2 - s) / 9: 22, 44, 100.
        let sel = app_selector("web");
        assert_eq!(
            pod_topology_spread_scores(&plain, &nodes, &nodes, Some(&sel)),
            vec![22, 44, 100]
        );
    }

    #[test]
    fn default_selector_merges_services_and_the_controller() {
        use k8s_openapi::api::core::v1::ServiceSpec;
        let mut p = web("p");
        p.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("tier".into(), "front".into());
        let service = |ns: &str, sel: &[(&str, &str)]| Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(
                    sel.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        };
        let services = [
            service("default", &[("app", "web")]),
            service("default", &[("app", "db")]),
            service("other", &[("tier", "front")]),
        ];
        let rs = app_selector("web");
        let sel = default_selector(&p, &services, Some(&rs));
        assert_eq!(
            sel.match_labels,
            Some([("app".to_string(), "web".to_string())].into())
        );
        assert_eq!(sel.match_expressions.as_ref().map(Vec::len), Some(1));
        assert!(!Selector::new(Some(sel)).is_empty());
        assert!(Selector::new(Some(default_selector(&p, &[], None))).is_empty());
        assert_eq!(controller_ref(&p), None);
    }

    #[test]
    fn other_namespaces_and_terminating_pods_do_not_count() {
        let mut a = node_with("a", &[("zone", "z1")], 0);
        let mut elsewhere = web("o");
        elsewhere.metadata.namespace = Some("other".into());
        a.add_pod("other/o", PodUsage::of(&elsewhere));
        let mut going = web("g");
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        a.add_pod("default/g", PodUsage::of(&going));
        let b = node_with("b", &[("zone", "z2")], 0);
        let p = spreading("zone", 1, "ScheduleAnyway");
        assert_eq!(
            pod_topology_spread_scores(&p, &[&a, &b], &[&a, &b], None),
            vec![100, 100]
        );
    }

    #[test]
    fn spread_normalisation_matches_upstream() {
        assert_eq!(
            normalize_spread(&[Some(0), Some(0), None]),
            vec![100, 100, 0]
        );
        assert_eq!(normalize_spread(&[Some(4), Some(2)]), vec![50, 100]);
        assert_eq!(normalize_spread(&[None]), vec![0]);
        assert!(normalize_spread(&[]).is_empty());
    }
}

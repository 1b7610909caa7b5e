//! Victim selection and node choice over desired + observed state, no cluster.

use super::*;
use crate::pod_filters::NamespaceLabels;
use crate::testing::*;
use k8s_openapi::api::core::v1::PodStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const NOW: i64 = 1_000_000;

/// A pod asking for `cpu` with `priority`, started `start` seconds after the epoch (if given).
fn prio_pod(name: &str, cpu: &str, priority: i32, start: Option<i64>) -> Pod {
    let mut p = pod_req(name, cpu, "");
    p.metadata.uid = Some(format!("uid-{name}"));
    p.spec.as_mut().unwrap().priority = Some(priority);
    if let Some(secs) = start {
        p.status = Some(PodStatus {
            start_time: Some(Time(Timestamp::from_second(secs).unwrap())),
            ..Default::default()
        });
    }
    p
}

/// A 4-cpu node holding `pods`.
fn node_with(name: &str, pods: &[Pod]) -> NodeInfo {
    let mut n = info(node(name, "4", "8Gi", 110));
    for p in pods {
        place(&mut n, p);
    }
    n
}

fn decide_with(pod: &Pod, nodes: &[NodeInfo], nominator: &Nominator, offset: usize) -> Decision {
    let namespaces = NamespaceLabels::new();
    let refs: Vec<&NodeInfo> = nodes.iter().collect();
    let filters = PodFilters::new(pod, &refs, &namespaces);
    let key = format!("default/{}", pod.metadata.name.as_deref().unwrap());
    let statuses: BTreeMap<String, Unfit> = refs
        .iter()
        .filter_map(|n| {
            let view = nominator.with_nominated(n, &key, pod_priority(pod));
            filters
                .check(&view)
                .err()
                .map(|u| (n.name().to_string(), u))
        })
        .collect();
    assert_eq!(statuses.len(), nodes.len(), "the pod must fit nowhere");
    post_filter(&PreemptionInput {
        key: &key,
        filters: &filters,
        nodes: &refs,
        statuses: &statuses,
        nominator,
        evicting: &BTreeSet::new(),
        offset,
        now: Timestamp::from_second(NOW).unwrap(),
    })
}

fn decide(pod: &Pod, nodes: &[NodeInfo]) -> Decision {
    decide_with(pod, nodes, &Nominator::default(), 0)
}

fn victims_of(decision: &Decision) -> (String, Vec<String>) {
    match decision {
        Decision::Preempt(c) => (
            c.node.clone(),
            c.victims.iter().map(|v| v.key.clone()).collect(),
        ),
        other => panic!("expected a preemption, got {other:?}"),
    }
}

#[test]
fn reprieve_keeps_higher_priority_pods_and_evicts_the_minimum() {
    // 4 cpus full: a (prio 10), b (5), c (1) with 1 cpu each, d (3) with 1 cpu.
    let n = node_with(
        "n1",
        &[
            prio_pod("a", "1", 10, Some(1)),
            prio_pod("b", "1", 5, Some(1)),
            prio_pod("c", "1", 1, Some(1)),
            prio_pod("d", "1", 3, Some(1)),
        ],
    );
    // Needs 2 cpus: a and b are reprieved, d and c go.
    let (node, victims) = victims_of(&decide(
        &prio_pod("p", "2", 100, None),
        std::slice::from_ref(&n),
    ));
    assert_eq!(node, "n1");
    assert_eq!(
        victims,
        vec!["default/d", "default/c"],
        "most important first"
    );
    // Needs 1 cpu: only the least important goes.
    let (_, victims) = victims_of(&decide(
        &prio_pod("p", "1", 100, None),
        std::slice::from_ref(&n),
    ));
    assert_eq!(victims, vec!["default/c"]);
    // Priority 4 may only evict c (1) and d (3): 2 cpus at most.
    let (_, victims) = victims_of(&decide(
        &prio_pod("p", "2", 4, None),
        std::slice::from_ref(&n),
    ));
    assert_eq!(victims, vec!["default/d", "default/c"]);
    // ... and not 3 cpus: the filters still fail after removing both.
    assert_eq!(
        decide(&prio_pod("p", "3", 4, None), &[n]),
        Decision::Fail {
            message: "preemption: 0/1 nodes are available: 1 Insufficient cpu.".into(),
            clear_nomination: true,
        }
    );
}

#[test]
fn equal_priority_pods_are_never_evicted() {
    let n = node_with(
        "n1",
        &[prio_pod("a", "2", 100, None), prio_pod("b", "2", 100, None)],
    );
    assert_eq!(
        decide(&prio_pod("p", "1", 100, None), &[n]),
        Decision::Fail {
            message: "preemption: 0/1 nodes are available: 1 No preemption victims found for \
                      incoming pod."
                .into(),
            clear_nomination: true,
        }
    );
}

#[test]
fn preemption_policy_never_is_not_eligible() {
    let n = node_with("n1", &[prio_pod("a", "4", 0, None)]);
    let mut p = prio_pod("p", "1", 1000, None);
    p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
    assert_eq!(
        decide(&p, &[n]),
        Decision::Fail {
            message: "preemption: not eligible due to preemptionPolicy=Never.".into(),
            clear_nomination: false,
        }
    );
}

#[test]
fn unresolvable_nodes_are_not_candidates() {
    let tainted = info(with_taint(
        node("t", "4", "8Gi", 110),
        "dedicated",
        "gpu",
        "NoSchedule",
    ));
    let mut tainted = tainted;
    place(&mut tainted, &prio_pod("x", "4", 0, None));
    let full = node_with("n1", &[prio_pod("a", "4", 0, None)]);
    let (node, victims) = victims_of(&decide(
        &prio_pod("p", "1", 10, None),
        &[tainted.clone(), full],
    ));
    assert_eq!(
        (node.as_str(), victims),
        ("n1", vec!["default/a".to_string()])
    );
    // Only the tainted node: nothing to try.
    assert_eq!(
        decide(&prio_pod("p", "1", 10, None), &[tainted]),
        Decision::Fail {
            message: "preemption: 0/1 nodes are available: 1 Preemption is not helpful for \
                      scheduling."
                .into(),
            clear_nomination: true,
        }
    );
}

#[test]
fn node_choice_follows_pick_one_node_for_preemption() {
    let p = prio_pod("p", "2", 100, None);
    // Lowest highest-victim priority wins, whatever the count.
    let n1 = node_with("n1", &[prio_pod("a1", "4", 50, None)]);
    let n2 = node_with(
        "n2",
        &[prio_pod("b1", "2", 10, None), prio_pod("b2", "2", 10, None)],
    );
    let n3 = node_with("n3", &[prio_pod("c1", "4", 20, None)]);
    let (node, victims) = victims_of(&decide(&p, &[n1, n2, n3]));
    assert_eq!(node, "n2");
    assert_eq!(victims.len(), 1, "one of the two 2-cpu pods is enough");

    // Same highest priority: the smallest sum of priorities (fewer victims here).
    let n1 = node_with(
        "n1",
        &[
            prio_pod("a1", "1", 10, None),
            prio_pod("a2", "1", 10, None),
            prio_pod("a3", "2", 0, None),
        ],
    );
    let n2 = node_with(
        "n2",
        &[prio_pod("b1", "2", 10, None), prio_pod("b2", "2", 0, None)],
    );
    // n1 must lose 2 cpus: a3 (0) alone suffices -> [a3]; n2: b2 (0) -> [b2]. Tie on highest (0)
    // and on sum; one victim each; latest start among them decides.
    let n1_started = {
        let mut n = n1.clone();
        place(&mut n, &prio_pod("a3", "2", 0, Some(100)));
        n
    };
    let n2_started = {
        let mut n = n2.clone();
        place(&mut n, &prio_pod("b2", "2", 0, Some(200)));
        n
    };
    let (node, victims) = victims_of(&decide(&p, &[n1_started, n2_started]));
    assert_eq!(
        (node.as_str(), victims),
        ("n2", vec!["default/b2".to_string()])
    );

    // Sum of priorities: n1 loses [5, 5] (highest 5), n2 loses [5] plus nothing else.
    let n1 = node_with(
        "n1",
        &[
            prio_pod("a1", "1", 5, None),
            prio_pod("a2", "1", 5, None),
            prio_pod("a3", "2", 50, None),
        ],
    );
    let n2 = node_with(
        "n2",
        &[prio_pod("b1", "2", 5, None), prio_pod("b2", "2", 50, None)],
    );
    let (node, victims) = victims_of(&decide(&p, &[n1, n2]));
    assert_eq!(
        (node.as_str(), victims),
        ("n2", vec!["default/b1".to_string()])
    );
}

#[test]
fn pick_one_node_tie_breaks() {
    let v = |key: &str, priority: i32, start: Option<i64>| Victim {
        key: key.into(),
        uid: String::new(),
        priority,
        start_time: start.map(|s| Timestamp::from_second(s).unwrap()),
    };
    let now = Timestamp::from_second(NOW).unwrap();
    let c = |node: &str, victims: Vec<Victim>| Candidate {
        node: node.into(),
        victims,
    };
    // Negative priorities: fewer victims still wins on the shifted sum.
    let cands = [
        c("a", vec![v("x", -5, None), v("y", -5, None)]),
        c("b", vec![v("z", -5, None)]),
    ];
    assert_eq!(pick_one_node(&cands, now), Some(1));
    // Everything equal but start: the latest earliest-start of the top-priority victims.
    let cands = [
        c("a", vec![v("x", 3, Some(50)), v("y", 1, Some(10))]),
        c("b", vec![v("z", 3, Some(40)), v("w", 1, Some(90))]),
    ];
    assert_eq!(pick_one_node(&cands, now), Some(0));
    // Not started counts as now (the latest).
    let cands = [
        c("a", vec![v("x", 3, Some(50))]),
        c("b", vec![v("z", 3, None)]),
    ];
    assert_eq!(pick_one_node(&cands, now), Some(1));
    // Full tie: the first.
    let cands = [
        c("a", vec![v("x", 3, Some(5))]),
        c("b", vec![v("z", 3, Some(5))]),
    ];
    assert_eq!(pick_one_node(&cands, now), Some(0));
    assert_eq!(pick_one_node(&[], now), None);
}

#[test]
fn nominated_pods_hold_their_room_in_the_dry_run() {
    // n1 has 4 cpus, 2 used by a low pod; a nominated pod of priority 500 reserves 2.
    let n = node_with("n1", &[prio_pod("low", "2", 0, None)]);
    let mut nominator = Nominator::default();
    nominator.nominate("default/nom", &prio_pod("nom", "2", 500, None), "n1");
    // A priority-100 pod asking 2 cpus: the nominated pod counts, so "low" must go.
    let (_, victims) = victims_of(&decide_with(
        &prio_pod("p", "2", 100, None),
        std::slice::from_ref(&n),
        &nominator,
        0,
    ));
    assert_eq!(victims, vec!["default/low"]);
    // Asking 3: even without "low" the nominated room leaves 2.
    assert!(matches!(
        decide_with(&prio_pod("p", "3", 100, None), &[n], &nominator, 0),
        Decision::Fail { .. }
    ));
}

#[test]
fn not_eligible_while_earlier_victims_terminate_on_the_nominated_node() {
    let mut victim = prio_pod("v", "4", 0, None);
    victim.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).unwrap()));
    victim.status = Some(PodStatus {
        conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("PreemptionByScheduler".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let n = node_with("n1", &[victim]);
    let p = prio_pod("p", "1", 100, None);
    let mut nominator = Nominator::default();
    nominator.nominate("default/p", &p, "n1");
    assert_eq!(
        decide_with(&p, std::slice::from_ref(&n), &nominator, 0),
        Decision::Fail {
            message: format!("preemption: {NOT_ELIGIBLE_TERMINATING}"),
            clear_nomination: false,
        }
    );
    // Not nominated: it may preempt (the terminating pod is a victim like any other).
    assert!(matches!(decide(&p, &[n]), Decision::Preempt(_)));
}

#[test]
fn dry_run_stops_at_the_candidate_count_from_the_offset() {
    assert_eq!(num_candidates(5), 5);
    assert_eq!(num_candidates(500), 100);
    assert_eq!(num_candidates(5000), 500);
    let nodes: Vec<NodeInfo> = (0..3)
        .map(|i| {
            node_with(
                &format!("n{i}"),
                &[prio_pod(&format!("v{i}"), "4", 0, None)],
            )
        })
        .collect();
    // All three are equal: the first candidate in dry-run order (from the offset) wins.
    let (node, _) = victims_of(&decide_with(
        &prio_pod("p", "1", 9, None),
        &nodes,
        &Nominator::default(),
        2,
    ));
    assert_eq!(node, "n2");
}

#[test]
fn evicting_a_pod_lifts_inter_pod_anti_affinity() {
    use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let anti = |mut p: Pod, app: &str| {
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some([("app".to_string(), app.to_string())].into()),
                        match_expressions: None,
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    };
    let labelled = |mut p: Pod, app: &str| {
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p
    };
    // The incoming pod refuses web pods; the node holds a low-priority web pod and a
    // high-priority db pod: only the web pod goes, though cpu is plentiful.
    let n = node_with(
        "n1",
        &[
            labelled(prio_pod("web", "100m", 0, None), "web"),
            labelled(prio_pod("db", "100m", 1000, None), "db"),
        ],
    );
    let p = anti(labelled(prio_pod("p", "100m", 100, None), "api"), "web");
    let (_, victims) = victims_of(&decide(&p, &[n]));
    assert_eq!(victims, vec!["default/web"]);
    // An existing low-priority pod whose own anti-affinity refuses the incoming pod.
    let n = node_with(
        "n1",
        &[anti(
            labelled(prio_pod("loner", "100m", 0, None), "x"),
            "api",
        )],
    );
    let (_, victims) = victims_of(&decide(
        &labelled(prio_pod("p", "100m", 100, None), "api"),
        &[n],
    ));
    assert_eq!(victims, vec!["default/loner"]);
}

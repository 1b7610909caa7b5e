//! Filter cases after upstream's plugin tests (fit_test.go, taint_toleration_test.go,
//! node_affinity_test.go, node_ports_test.go, node_unschedulable_test.go).

use k8s_openapi::api::core::v1::{
    Affinity, ContainerPort, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    Pod,
};

use super::*;
use crate::node_info::PodUsage;
use crate::testing::*;

fn fit(pod: &Pod, node: &NodeInfo) -> Result<(), Unfit> {
    run_filters(pod, &PodUsage::of(pod), node)
}

fn reasons(r: Result<(), Unfit>) -> Vec<String> {
    r.err().map(|u| u.reasons).unwrap_or_default()
}

#[test]
fn resources_fit_counts_in_use_and_reports_every_shortage() {
    let mut n = info(node("n", "10", "20", 32));
    place(&mut n, &pod_on("a", "5", "19", "n"));
    assert!(fit(&pod_req("p", "5", "1"), &n).is_ok(), "exactly fits");
    assert_eq!(
        reasons(fit(&pod_req("p", "6", "2"), &n)),
        ["Insufficient cpu", "Insufficient memory"]
    );
    let u = fit(&pod_req("p", "8", ""), &n).unwrap_err();
    assert!(!u.unresolvable, "evicting could free 8 of 10 cpus");
    assert_eq!(
        u.details,
        ["Insufficient cpu: requests 8, allocatable 10, in use 5"]
    );
    let u = fit(&pod_req("p", "11", ""), &n).unwrap_err();
    assert!(u.unresolvable, "more than the whole node");
}

#[test]
fn resources_fit_pods_limit_and_zero_request_pods() {
    let mut n = info(node("n", "10", "20", 1));
    assert!(fit(&pod_req("p", "", ""), &n).is_ok());
    place(&mut n, &pod_on("a", "", "", "n"));
    assert_eq!(reasons(fit(&pod_req("p", "", ""), &n)), ["Too many pods"]);
}

#[test]
fn resources_fit_extended_resources_and_init_containers() {
    let mut node_obj = node("n", "10", "20", 32);
    node_obj
        .status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert(
            "example.com/gpu".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
        );
    let n = info(node_obj);
    let mut p = pod_req("p", "1", "1");
    let c = &mut p.spec.as_mut().unwrap().containers[0];
    c.resources
        .as_mut()
        .unwrap()
        .requests
        .as_mut()
        .unwrap()
        .insert(
            "example.com/gpu".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("3".into()),
        );
    assert_eq!(reasons(fit(&p, &n)), ["Insufficient example.com/gpu"]);
    // An init container bigger than the node refuses the pod even if containers are small.
    let mut q = pod_req("q", "1", "1");
    q.spec.as_mut().unwrap().init_containers =
        pod_req("i", "11", "1").spec.unwrap().containers.into();
    assert_eq!(reasons(fit(&q, &n)), ["Insufficient cpu"]);
}

#[test]
fn taints_need_tolerations_for_no_schedule_and_no_execute() {
    let n = info(with_taint(
        node("n", "4", "4Gi", 10),
        "dedicated",
        "gpu",
        "NoSchedule",
    ));
    assert_eq!(
        reasons(fit(&pod_req("p", "", ""), &n)),
        ["node(s) had untolerated taint {dedicated: gpu}"]
    );
    let tolerated = |tol| {
        let mut p = pod_req("p", "", "");
        p.spec.as_mut().unwrap().tolerations = Some(vec![tol]);
        fit(&p, &n).is_ok()
    };
    assert!(tolerated(toleration(
        "dedicated",
        "Equal",
        "gpu",
        "NoSchedule"
    )));
    assert!(tolerated(toleration("dedicated", "Exists", "", "")));
    assert!(
        tolerated(toleration("", "Exists", "", "")),
        "empty key + Exists tolerates all"
    );
    assert!(!tolerated(toleration(
        "dedicated",
        "Equal",
        "cpu",
        "NoSchedule"
    )));
    assert!(!tolerated(toleration(
        "dedicated",
        "Equal",
        "gpu",
        "NoExecute"
    )));
    let soft = info(with_taint(
        node("n", "4", "4Gi", 10),
        "k",
        "v",
        "PreferNoSchedule",
    ));
    assert!(
        fit(&pod_req("p", "", ""), &soft).is_ok(),
        "PreferNoSchedule only scores"
    );
    let empty = info(with_taint(
        node("n", "4", "4Gi", 10),
        "node-role.kubernetes.io/control-plane",
        "",
        "NoExecute",
    ));
    assert_eq!(
        reasons(fit(&pod_req("p", "", ""), &empty)),
        ["node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"]
    );
}

fn with_required(mut p: Pod, terms: Vec<NodeSelectorTerm>) -> Pod {
    p.spec.as_mut().unwrap().affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    p
}

fn expr(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

fn term(exprs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(exprs),
        match_fields: None,
    }
}

#[test]
fn node_selector_and_every_affinity_operator() {
    let n = info(with_labels(
        node("n", "4", "4Gi", 10),
        &[("zone", "a"), ("gen", "5")],
    ));
    let mut p = pod_req("p", "", "");
    p.spec.as_mut().unwrap().node_selector = Some([("zone".to_string(), "b".to_string())].into());
    assert_eq!(reasons(fit(&p, &n)), [REASON_NODE_AFFINITY]);
    let ok = |exprs| fit(&with_required(pod_req("p", "", ""), vec![term(exprs)]), &n).is_ok();
    assert!(ok(vec![expr("zone", "In", &["a", "b"])]));
    assert!(!ok(vec![expr("zone", "NotIn", &["a"])]));
    assert!(ok(vec![expr("missing", "NotIn", &["a"])]));
    assert!(ok(vec![expr("zone", "Exists", &[])]));
    assert!(ok(vec![expr("missing", "DoesNotExist", &[])]));
    assert!(ok(vec![expr("gen", "Gt", &["4"])]));
    assert!(!ok(vec![expr("gen", "Lt", &["5"])]));
    assert!(
        !ok(vec![expr("zone", "Gt", &["1"])]),
        "non-integer label never matches Gt"
    );
    assert!(
        !ok(vec![expr("zone", "In", &["a"]), expr("gen", "In", &["4"])]),
        "ANDed"
    );
    assert!(!ok(vec![]), "an empty term matches nothing");
    // Terms are ORed.
    let p = with_required(
        pod_req("p", "", ""),
        vec![
            term(vec![expr("zone", "In", &["x"])]),
            term(vec![expr("zone", "In", &["a"])]),
        ],
    );
    assert!(fit(&p, &n).is_ok());
    // matchFields on metadata.name.
    let by_name = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![expr("metadata.name", "In", &["n"])]),
    };
    assert!(fit(&with_required(pod_req("p", "", ""), vec![by_name]), &n).is_ok());
}

#[test]
fn host_ports_conflict_including_wildcard_ip() {
    let with_port = |name: &str, ip: &str, port: i32| {
        let mut p = pod_req(name, "", "");
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: port,
            host_port: Some(port),
            host_ip: Some(ip.into()).filter(|s: &String| !s.is_empty()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]);
        p
    };
    let mut n = info(node("n", "4", "4Gi", 10));
    place(&mut n, &with_port("a", "127.0.0.1", 8080));
    assert!(fit(&with_port("p", "127.0.0.2", 8080), &n).is_ok());
    assert_eq!(
        reasons(fit(&with_port("p", "", 8080), &n)),
        [REASON_NODE_PORTS]
    );
    assert!(fit(&with_port("p", "", 8081), &n).is_ok());
}

#[test]
fn cordoned_and_named_nodes() {
    let mut cordoned = node("n", "4", "4Gi", 10);
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    let n = info(cordoned);
    assert_eq!(
        reasons(fit(&pod_req("p", "", ""), &n)),
        [REASON_UNSCHEDULABLE]
    );
    let mut p = pod_req("p", "", "");
    p.spec.as_mut().unwrap().tolerations = Some(vec![toleration(
        TAINT_UNSCHEDULABLE,
        "Exists",
        "",
        "NoSchedule",
    )]);
    assert!(fit(&p, &n).is_ok());
    let other = info(node("m", "4", "4Gi", 10));
    assert_eq!(
        reasons(fit(&pod_on("p", "", "", "n"), &other)),
        [REASON_NODE_NAME]
    );
}

//! Which pods a simulated kubelet acts on.

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;

fn pod(node: Option<&str>, phase: &str) -> Pod {
    Pod {
        spec: Some(PodSpec {
            node_name: node.map(String::from),
            containers: vec![Container {
                name: "c".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check(pod: &Pod) -> PodAction {
    plan(pod, |n| n.starts_with("sim-"), |n| n == "sim-stopped")
}

#[test]
fn starts_pending_pods_on_simulated_nodes_only() {
    assert_eq!(check(&pod(Some("sim-1"), "Pending")), PodAction::Start);
    assert_eq!(check(&pod(Some("real-1"), "Pending")), PodAction::Ignore);
    assert_eq!(check(&pod(None, "Pending")), PodAction::Ignore);
    assert_eq!(check(&pod(Some(""), "Pending")), PodAction::Ignore);
    assert_eq!(
        check(&pod(Some("sim-stopped"), "Pending")),
        PodAction::Ignore
    );
    assert_eq!(check(&pod(Some("sim-1"), "Succeeded")), PodAction::Ignore);
}

#[test]
fn a_running_pod_is_left_alone_once_complete() {
    let mut p = pod(Some("sim-1"), "Running");
    // Running but written by someone else (no IP, no Ready): made whole.
    assert_eq!(check(&p), PodAction::Start);
    let status = p.status.as_mut().expect("status");
    status.pod_ip = Some("10.42.1.3".into());
    status.conditions = Some(vec![PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    status.container_statuses = Some(vec![ContainerStatus::default()]);
    assert!(is_running(&p));
    assert_eq!(check(&p), PodAction::Ignore);
    assert_eq!(reported_ip(&p), Some(std::net::Ipv4Addr::new(10, 42, 1, 3)));
}

#[test]
fn deleted_pods_are_terminated_then_deleted() {
    let mut p = pod(Some("sim-1"), "Running");
    p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    assert_eq!(check(&p), PodAction::Terminate { write_status: true });
    p.status.as_mut().expect("status").phase = Some("Succeeded".into());
    assert_eq!(
        check(&p),
        PodAction::Terminate {
            write_status: false
        }
    );
    // A stopped node's kubelet does nothing, deletions included.
    p.spec.as_mut().expect("spec").node_name = Some("sim-stopped".into());
    assert_eq!(check(&p), PodAction::Ignore);
}

//! The Node, Lease and pod statuses the simulator writes.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::config::{CONCURRENT_WRITES_DEFAULT, TaintSpec};

fn config() -> NodeSimConfig {
    NodeSimConfig {
        nodes: 3,
        name_prefix: "sim-node-".into(),
        cpu: "32".into(),
        memory: "256Gi".into(),
        pods: 110,
        ephemeral_storage: "100Gi".into(),
        arch: "amd64".into(),
        zones: 3,
        taints: vec!["dedicated=gpu:NoSchedule".parse().expect("taint")],
        pod_cidr: "10.42.0.0/16".parse().expect("cidr"),
        node_cidr_mask_size: 24,
        stop_renewing_file: None,
        max_concurrent_writes: CONCURRENT_WRITES_DEFAULT,
    }
}

fn sim() -> SimNode {
    SimNode {
        name: "sim-node-1".into(),
        zone: "zone-1".into(),
        internal_ip: Ipv4Addr::new(172, 16, 0, 2),
        pod_subnet: "10.42.1.0/24".parse().expect("cidr"),
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("in range")
}

#[test]
fn node_has_labels_taints_capacity_and_ready() {
    let node = node(&config(), &sim(), at(0));
    let labels = node.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["kubernetes.io/hostname"], "sim-node-1");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-1");
    assert_eq!(labels["type"], "kwok");
    let spec = node.spec.as_ref().expect("spec");
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.42.1.0/24"));
    let taints = spec.taints.as_ref().expect("taints");
    assert_eq!(
        (
            taints[0].key.as_str(),
            taints[0].value.as_deref(),
            taints[0].effect.as_str()
        ),
        ("dedicated", Some("gpu"), "NoSchedule")
    );
    let status = node.status.as_ref().expect("status");
    assert_eq!(
        status.allocatable.as_ref().expect("allocatable")["memory"].0,
        "256Gi"
    );
    assert_eq!(status.capacity.as_ref().expect("capacity")["pods"].0, "110");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True");
    let addresses = status.addresses.as_ref().expect("addresses");
    assert_eq!(
        (addresses[0].type_.as_str(), addresses[0].address.as_str()),
        ("InternalIP", "172.16.0.2")
    );
}

#[test]
fn refreshed_status_keeps_transition_time_and_moves_heartbeat() {
    let status = node_status(&config(), &sim(), at(0), at(60));
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        ready.last_transition_time.as_ref().map(|t| t.0),
        Some(at(0))
    );
    assert_eq!(
        ready.last_heartbeat_time.as_ref().map(|t| t.0),
        Some(at(60))
    );
}

#[test]
fn lease_is_held_by_the_node_and_owned_by_it() {
    let lease = lease("sim-node-1", Some("uid-1"), at(5));
    assert_eq!(lease.metadata.namespace.as_deref(), Some("kube-node-lease"));
    let owner = &lease.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-1"));
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("sim-node-1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert_eq!(spec.renew_time.map(|t| t.0), Some(at(5)));
}

fn bound_pod() -> Pod {
    let container = |name: &str| Container {
        name: name.into(),
        image: Some("nginx:1.27".into()),
        ..Default::default()
    };
    let mut pod = Pod::default();
    pod.metadata.uid = Some("pod-uid".into());
    pod.spec = Some(PodSpec {
        node_name: Some("sim-node-1".into()),
        containers: vec![container("web"), container("sidecar")],
        init_containers: Some(vec![container("init")]),
        ..Default::default()
    });
    pod
}

#[test]
fn running_status_is_complete() {
    let pod = bound_pod();
    let status = running_status(
        &pod,
        Ipv4Addr::new(172, 16, 0, 2),
        Ipv4Addr::new(10, 42, 1, 7),
        at(3),
    );
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.42.1.7"));
    assert_eq!(status.host_ip.as_deref(), Some("172.16.0.2"));
    assert_eq!(status.start_time.as_ref().map(|t| t.0), Some(at(3)));
    let types: Vec<(&str, &str)> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    for wanted in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(types.contains(&(wanted, "True")), "{wanted} in {types:?}");
    }
    let containers = status
        .container_statuses
        .as_ref()
        .expect("containerStatuses");
    assert_eq!(containers.len(), 2);
    let web = &containers[0];
    assert!(web.ready && web.started == Some(true) && web.restart_count == 0);
    assert!(
        web.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("sim://") && id.len() == 6 + 64)
    );
    assert_ne!(web.container_id, containers[1].container_id);
    assert!(web.image_id.starts_with("nginx:1.27@sha256:"));
    let running = web
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .expect("running");
    assert_eq!(running.started_at.as_ref().map(|t| t.0), Some(at(3)));
    let init = &status.init_container_statuses.as_ref().expect("init")[0];
    assert_eq!(
        init.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code),
        Some(0)
    );
    assert!(crate::plan::is_running(&Pod {
        status: Some(status),
        ..pod
    }));
}

#[test]
fn terminated_status_stops_every_container() {
    let mut pod = bound_pod();
    pod.status = Some(running_status(
        &pod,
        Ipv4Addr::new(172, 16, 0, 2),
        Ipv4Addr::new(10, 42, 1, 7),
        at(3),
    ));
    let status = terminated_status(&pod, at(9));
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.42.1.7"));
    for c in status.container_statuses.iter().flatten() {
        let terminated = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!(terminated.finished_at.as_ref().map(|t| t.0), Some(at(9)));
        assert!(!c.ready);
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("PodCompleted"))
    );
}

#[test]
fn taints_quantities_and_stop_lists_parse() {
    let taint: TaintSpec = "gpu:NoExecute".parse().expect("taint");
    assert_eq!(
        (taint.key.as_str(), taint.value, taint.effect.as_str()),
        ("gpu", None, "NoExecute")
    );
    for bad in ["gpu", "gpu=x:Sometimes", "=x:NoSchedule", ":NoSchedule"] {
        assert!(bad.parse::<TaintSpec>().is_err(), "{bad} accepted");
    }
    for good in ["32", "500m", "256Gi", "1.5", "100G"] {
        assert!(crate::config::is_quantity(good), "{good}");
    }
    for bad in ["", "Gi", "1.2.3", "12x", "."] {
        assert!(!crate::config::is_quantity(bad), "{bad}");
    }
    let list = crate::nodes::stop_list("sim-node-1\n\n  sim-node-3  # dead\n# comment\n");
    assert_eq!(
        list.into_iter().collect::<Vec<_>>(),
        ["sim-node-1", "sim-node-3"]
    );
}

#[test]
fn validate_refuses_bad_configs() {
    assert!(config().validate().is_ok());
    let mut c = config();
    c.nodes = 1000;
    assert!(
        c.validate()
            .expect_err("too many for a /16 of /24s")
            .to_string()
            .contains("--pod-cidr")
    );
    c.node_cidr_mask_size = 26;
    assert!(c.validate().is_ok());
    for change in [
        (|c: &mut NodeSimConfig| c.nodes = 0) as fn(&mut NodeSimConfig),
        |c| c.zones = 0,
        |c| c.cpu = "lots".into(),
        |c| c.name_prefix = "Sim_".into(),
        |c| c.max_concurrent_writes = 0,
        |c| c.pods = 0,
    ] {
        let mut c = config();
        change(&mut c);
        assert!(c.validate().is_err(), "{c:?}");
    }
}

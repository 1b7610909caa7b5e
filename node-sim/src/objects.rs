//! The objects a simulated kubelet writes, built as pure functions of the node, the pod and
//! the time `now` (no IO): the Node it registers, its status and Lease, and the status of a pod
//! when it starts running and when its containers are stopped for a deletion.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    DaemonEndpoint, HostIP, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo, Pod, PodCondition, PodIP, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use crate::config::{LEASE_DURATION_SECONDS, NodeSimConfig};
use crate::ipam::PodCidr;

/// Namespace of the node Leases (kubelet's).
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Label marking simulated nodes (kwok's).
pub const SIM_LABEL: (&str, &str) = ("type", "kwok");
/// Annotation marking simulated nodes (kwok's).
pub const SIM_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// `status.nodeInfo.kubeletVersion` of simulated nodes.
pub const KUBELET_VERSION: &str = "v1.33.0-skiff-sim";

/// What stays fixed about one simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub zone: String,
    pub internal_ip: Ipv4Addr,
    pub pod_subnet: PodCidr,
}

/// The Node to register: labels, the kwok marker, pod CIDR, taints and an initial status.
pub fn node(config: &NodeSimConfig, sim: &SimNode, now: Timestamp) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), sim.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), config.arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), config.arch.clone()),
        ("topology.kubernetes.io/zone".to_string(), sim.zone.clone()),
        (SIM_LABEL.0.to_string(), SIM_LABEL.1.to_string()),
    ]);
    let taints: Vec<Taint> = config
        .taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(sim.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                SIM_ANNOTATION.0.to_string(),
                SIM_ANNOTATION.1.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(sim.pod_subnet.to_string()),
            pod_cidrs: Some(vec![sim.pod_subnet.to_string()]),
            provider_id: Some(format!("sim://{}", sim.name)),
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        status: Some(node_status(config, sim, now, now)),
    }
}

/// The node's status as kubelet reports it: Ready since `ready_since`, heartbeat `now`.
pub fn node_status(
    config: &NodeSimConfig,
    sim: &SimNode,
    ready_since: Timestamp,
    now: Timestamp,
) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(config.cpu.clone())),
        ("memory".to_string(), Quantity(config.memory.clone())),
        ("pods".to_string(), Quantity(config.pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(config.ephemeral_storage.clone()),
        ),
    ]);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(ready_since)),
    };
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: sim.internal_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: sim.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: config.arch.clone(),
            operating_system: "linux".into(),
            os_image: "skiff node-sim".into(),
            kernel_version: "sim".into(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: KUBELET_VERSION.into(),
            container_runtime_version: "sim://0.1.0".into(),
            machine_id: hex_id(&["machine", &sim.name], 32),
            system_uuid: hex_id(&["uuid", &sim.name], 32),
            boot_id: hex_id(&["boot", &sim.name], 32),
            swap: None,
        }),
        ..Default::default()
    }
}

/// The node's Lease in `kube-node-lease` as kubelet keeps it: held by the node, owned by the
/// Node (so it goes with it).
pub fn lease(node_name: &str, node_uid: Option<&str>, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node_name.to_string()),
            namespace: Some(NODE_LEASE_NAMESPACE.to_string()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node_name.to_string(),
                    uid: uid.to_string(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(lease_spec(node_name, now)),
    }
}

/// A renewal: holder, duration and `renewTime = now`.
pub fn lease_spec(node_name: &str, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(node_name.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    }
}

/// The status of a pod whose containers all started: phase Running, the node's host IP, the
/// pod IP, all conditions True, a running status per container (init containers completed).
/// Keeps the pod's `startTime`, `qosClass` and PodScheduled condition when it has them.
pub fn running_status(pod: &Pod, host_ip: Ipv4Addr, pod_ip: Ipv4Addr, now: Timestamp) -> PodStatus {
    let current = pod.status.as_ref();
    let start_time = current
        .and_then(|s| s.start_time.clone())
        .unwrap_or(Time(now));
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let containers = spec_containers(pod, false);
    let init_containers = spec_containers(pod, true);
    let container_statuses = containers
        .iter()
        .map(|c| ContainerStatus {
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(start_time.clone()),
                }),
                ..Default::default()
            }),
            ready: true,
            started: Some(true),
            ..container_status(uid, c)
        })
        .collect();
    let init_statuses: Vec<ContainerStatus> = init_containers
        .iter()
        .map(|c| ContainerStatus {
            state: Some(terminated(uid, c, &start_time, &start_time)),
            ready: true,
            started: Some(false),
            ..container_status(uid, c)
        })
        .collect();
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
    ]
    .into_iter()
    .map(|type_| pod_condition(type_, "True", None, &start_time))
    .chain([scheduled_condition(pod, &start_time)])
    .collect();
    PodStatus {
        phase: Some("Running".into()),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        start_time: Some(start_time),
        conditions: Some(conditions),
        container_statuses: Some(container_statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        qos_class: current.and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

/// The status after the containers were stopped for a deletion: each exited 0 (they honour
/// SIGTERM at once), phase Succeeded, Ready and ContainersReady False. Addresses and
/// `startTime` stay as they were.
pub fn terminated_status(pod: &Pod, now: Timestamp) -> PodStatus {
    let mut status = pod.status.clone().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let started = status.start_time.clone().unwrap_or(Time(now));
    let finished = Time(now);
    status.phase = Some("Succeeded".into());
    status.container_statuses = Some(
        spec_containers(pod, false)
            .iter()
            .map(|c| ContainerStatus {
                state: Some(terminated(uid, c, &started, &finished)),
                ready: false,
                started: Some(false),
                ..container_status(uid, c)
            })
            .collect(),
    );
    let mut conditions = status.conditions.take().unwrap_or_default();
    for type_ in ["PodReadyToStartContainers", "Ready", "ContainersReady"] {
        let reason = (type_ != "PodReadyToStartContainers").then_some("PodCompleted");
        let condition = pod_condition(type_, "False", reason, &finished);
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => *existing = condition,
            None => conditions.push(condition),
        }
    }
    status.conditions = Some(conditions);
    status
}

fn spec_containers(pod: &Pod, init: bool) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|spec| {
            if init {
                spec.init_containers.as_deref()
            } else {
                Some(spec.containers.as_slice())
            }
        })
        .unwrap_or(&[])
}

/// The identity fields of a container's status (no state).
fn container_status(uid: &str, c: &Container) -> ContainerStatus {
    let image = c.image.clone().unwrap_or_default();
    ContainerStatus {
        name: c.name.clone(),
        image_id: format!("{image}@sha256:{}", hex_id(&["image", &image], 64)),
        image,
        container_id: Some(container_id(uid, &c.name)),
        restart_count: 0,
        ..Default::default()
    }
}

fn terminated(uid: &str, c: &Container, started: &Time, finished: &Time) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 0,
            reason: Some("Completed".into()),
            started_at: Some(started.clone()),
            finished_at: Some(finished.clone()),
            container_id: Some(container_id(uid, &c.name)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `sim://` and 64 hex digits derived from the pod UID and container name (stable).
pub fn container_id(uid: &str, container: &str) -> String {
    format!("sim://{}", hex_id(&["container", uid, container], 64))
}

fn pod_condition(type_: &str, status: &str, reason: Option<&str>, at: &Time) -> PodCondition {
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.map(String::from),
        last_transition_time: Some(at.clone()),
        ..Default::default()
    }
}

/// PodScheduled as the scheduler wrote it, or True now for a pod created with a nodeName.
fn scheduled_condition(pod: &Pod, at: &Time) -> PodCondition {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "PodScheduled"))
        .filter(|c| c.status == "True")
        .cloned()
        .unwrap_or_else(|| pod_condition("PodScheduled", "True", None, at))
}

/// `digits` lowercase hex digits derived from `parts` (FNV-1a, chained): stable fake IDs.
fn hex_id(parts: &[&str], digits: usize) -> String {
    let mut out = String::with_capacity(digits + 16);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut round: u8 = 0;
    while out.len() < digits {
        for byte in parts
            .iter()
            .flat_map(|p| p.bytes().chain([0]))
            .chain([round])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{hash:016x}"));
        round = round.wrapping_add(1);
    }
    out.truncate(digits);
    out
}

#[cfg(test)]
mod tests;

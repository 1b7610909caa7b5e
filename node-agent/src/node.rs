//! The node as kubelet keeps it: registration (labels, taints, podCIDR, capacity from the
//! machine), the Lease in `kube-node-lease` renewed every 10 s, and the status (conditions
//! with memory/disk/PID pressure, addresses, nodeInfo with `runc://<version>`) written on
//! start, on change and every minute.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

/// Namespace of node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// kubelet's lease duration.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// kubelet renews its Lease every quarter of the duration (10 s).
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// kubelet's `nodeStatusReportFrequency`.
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// `status.nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.33.0-skiff";

/// What the node looks like from this machine.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub pod_cidr: Option<String>,
    pub max_pods: u32,
    pub port: u16,
    pub runtime_version: String,
    /// Machine resources.
    pub cpus: u32,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

impl NodeFacts {
    /// Reads cpus (online CPUs), memory (`/proc/meminfo`) and disk (statvfs of `root_dir`).
    pub fn machine(root_dir: &Path) -> (u32, u64, u64) {
        let cpus =
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        (cpus, memory, disk_bytes(root_dir).unwrap_or(0))
    }
}

/// Total bytes of the filesystem holding `path`.
pub fn disk_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_blocks * stat.f_frsize)
}

/// The Node to register.
pub fn node(facts: &NodeFacts) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), facts.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
    ]);
    labels.extend(facts.labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_string(),
                "0".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: facts.pod_cidr.clone(),
            pod_cidrs: facts.pod_cidr.clone().map(|c| vec![c]),
            taints: (!facts.taints.is_empty()).then(|| facts.taints.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// (used, total) bytes of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| {
        let total = stat.f_blocks * stat.f_frsize;
        (total.saturating_sub(stat.f_bfree * stat.f_frsize), total)
    })
}

/// Pressure signals read from the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

impl Pressure {
    /// kubelet's default hard eviction thresholds: memory.available < 100Mi,
    /// nodefs.available < 10%, pids over 90% of `pid_max`.
    pub fn read(root_dir: &Path) -> Pressure {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let available_kb = meminfo
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok());
        let memory = available_kb.is_some_and(|kb| kb * 1024 < 100 * 1024 * 1024);
        let disk = disk_available_fraction(root_dir).is_some_and(|f| f < 0.10);
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let pids = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count()
            })
            .unwrap_or(0) as u64;
        let pid = pid_max.is_some_and(|max| pids * 10 > max * 9);
        Pressure { memory, disk, pid }
    }
}

fn disk_available_fraction(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0 && stat.f_blocks > 0).then(|| stat.f_bavail as f64 / stat.f_blocks as f64)
}

/// The node's status; `ready_since`/`pressure_since` keep transition times stable.
pub fn status(
    facts: &NodeFacts,
    pressure: Pressure,
    transitions: &BTreeMap<String, Timestamp>,
    now: Timestamp,
) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(facts.cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", facts.memory_bytes / 1024)),
        ),
        ("pods".to_string(), Quantity(facts.max_pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", facts.ephemeral_storage_bytes / 1024)),
        ),
    ]);
    let condition = |type_: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(transitions.get(type_).copied().unwrap_or(now))),
    };
    let (mem_reason, mem_msg) = if pressure.memory {
        (
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        )
    } else {
        (
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        )
    };
    let (disk_reason, disk_msg) = if pressure.disk {
        ("KubeletHasDiskPressure", "kubelet has disk pressure")
    } else {
        ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
    };
    let (pid_reason, pid_msg) = if pressure.pid {
        (
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
        )
    } else {
        (
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        )
    };
    let (kernel, os_image) = os_facts();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition("MemoryPressure", pressure.memory, mem_reason, mem_msg),
            condition("DiskPressure", pressure.disk, disk_reason, disk_msg),
            condition("PIDPressure", pressure.pid, pid_reason, pid_msg),
            condition(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: facts.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(facts.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            operating_system: "linux".into(),
            os_image,
            kernel_version: kernel,
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: KUBELET_VERSION.into(),
            container_runtime_version: format!("runc://{}", facts.runtime_version),
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .unwrap_or_default()
                .trim()
                .to_string(),
            system_uuid: std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
                .unwrap_or_default()
                .trim()
                .to_string(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .unwrap_or_default()
                .trim()
                .to_string(),
            swap: None,
        }),
        ..Default::default()
    }
}

fn os_facts() -> (String, String) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let pretty = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    (kernel, pretty)
}

/// Registers the node (or takes over an existing one: labels and taints merged in) and
/// returns it as stored.
pub async fn register(client: &kube::Client, facts: &NodeFacts) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let desired = node(facts);
    match nodes.create(&PostParams::default(), &desired).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let mut patch =
                serde_json::json!({ "metadata": { "labels": desired.metadata.labels } });
            if !facts.taints.is_empty() {
                patch["spec"] = serde_json::json!({ "taints": facts.taints });
            }
            if let Some(cidr) = &facts.pod_cidr {
                let existing = nodes.get(&facts.name).await?;
                if existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_ref())
                    .is_none()
                {
                    patch["spec"]["podCIDR"] = serde_json::json!(cidr);
                    patch["spec"]["podCIDRs"] = serde_json::json!([cidr]);
                }
            }
            nodes
                .patch(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
        Err(e) => Err(e),
    }
}

/// Writes the node's status.
pub async fn write_status(
    client: &kube::Client,
    name: &str,
    status: &NodeStatus,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Renews (or creates) the node's Lease.
pub async fn renew_lease(
    client: &kube::Client,
    name: &str,
    node_uid: Option<&str>,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let now = Timestamp::now();
    let spec = LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    let patch = serde_json::json!({ "spec": spec });
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(NODE_LEASE_NAMESPACE.to_string()),
                    owner_references: node_uid.map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.to_string(),
                            uid: uid.to_string(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(drop)
        }
        Err(e) => Err(e),
    }
}

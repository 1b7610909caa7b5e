//! `NodeInfo`: a node plus what the scheduler knows is placed on it — the sum of its pods'
//! requests (and non-zero requests for scoring), its pod count, the host ports in use, the
//! placed pods' labels and affinity terms, and the images the node reports.
//! Pods are added when the watch shows them bound *or* when this scheduler assumes them, so
//! a decision is visible to the next pod at once.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;

use crate::resources::{Resources, pod_requests};

/// A host port in use: (hostIP, protocol, port).
pub type HostPort = (String, String, i32);

/// What a pod occupies on a node.
#[derive(Debug, Clone, Default)]
pub struct PodUsage {
    /// `PodRequests`.
    pub requests: Resources,
    /// `PodRequests` with the non-zero defaults.
    pub non_zero: Resources,
    /// Host ports.
    pub ports: Vec<HostPort>,
    /// The pod's namespace and labels (for inter-pod affinity).
    pub namespace: String,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the pod is being deleted (PodTopologySpread does not count it).
    pub terminating: bool,
    /// The pod's required anti-affinity terms (existing pods' anti-affinity).
    pub anti_affinity: Vec<crate::interpod::AffinityTerm>,
    /// The pod's required affinity terms (scored with `hardPodAffinityWeight`).
    pub affinity: Vec<crate::interpod::AffinityTerm>,
    /// The pod's preferred affinity terms.
    pub preferred_affinity: Vec<crate::interpod::WeightedTerm>,
    /// The pod's preferred anti-affinity terms.
    pub preferred_anti_affinity: Vec<crate::interpod::WeightedTerm>,
    /// `spec.priority` (0 when unset), for preemption.
    pub priority: i32,
    /// `status.startTime`, for preemption's tie-breaks (`None`: not started, counts as now).
    pub start_time: Option<Timestamp>,
    /// `metadata.uid` (the precondition of a preemption's DELETE).
    pub uid: String,
    /// Whether it carries `DisruptionTarget=True` with reason `PreemptionByScheduler`.
    pub preempted_by_scheduler: bool,
}

impl PodUsage {
    /// Computes a pod's usage.
    pub fn of(pod: &Pod) -> PodUsage {
        PodUsage {
            requests: pod_requests(pod, false),
            non_zero: pod_requests(pod, true),
            ports: host_ports(pod),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            anti_affinity: crate::interpod::required_terms(pod, true),
            affinity: crate::interpod::required_terms(pod, false),
            preferred_affinity: crate::interpod::preferred_terms(pod, false),
            preferred_anti_affinity: crate::interpod::preferred_terms(pod, true),
            priority: pod_priority(pod),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            preempted_by_scheduler: preempted_by_scheduler(pod),
        }
    }

    /// Whether the pod has any pod (anti-)affinity term (upstream's `PodsWithAffinity`).
    pub fn has_affinity(&self) -> bool {
        !(self.anti_affinity.is_empty()
            && self.affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }

    /// `podTerminatingByPreemption`: being deleted, and marked so by a scheduler's preemption.
    pub fn terminating_by_preemption(&self) -> bool {
        self.terminating && self.preempted_by_scheduler
    }
}

/// `corev1helpers.PodPriority`: `spec.priority`, 0 when unset.
pub fn pod_priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The `DisruptionTarget` condition's reason a scheduler's preemption sets.
pub const REASON_PREEMPTION_BY_SCHEDULER: &str = "PreemptionByScheduler";

/// Whether the pod's `DisruptionTarget` condition says a scheduler preempted it.
pub fn preempted_by_scheduler(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "DisruptionTarget"))
        .is_some_and(|c| {
            c.status == "True" && c.reason.as_deref() == Some(REASON_PREEMPTION_BY_SCHEDULER)
        })
}

/// The host ports a pod asks for (`hostPort` > 0), with `0.0.0.0` for an empty hostIP.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let mut ports = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return ports;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|p| *p > 0) else {
                continue;
            };
            let ip = p
                .host_ip
                .clone()
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            ports.push((ip, proto, host_port));
        }
    }
    ports
}

/// A node and its placed pods.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The Node object.
    pub node: Node,
    /// `status.allocatable`.
    pub allocatable: Resources,
    /// Sum of placed pods' requests.
    pub requested: Resources,
    /// Sum of placed pods' non-zero requests.
    pub non_zero_requested: Resources,
    /// Placed pods by `namespace/name`.
    pub pods: BTreeMap<String, PodUsage>,
    /// Host ports in use (with multiplicity).
    pub used_ports: BTreeMap<HostPort, usize>,
    /// Placed pods with required anti-affinity terms.
    pub anti_affinity_pods: usize,
    /// Placed pods with any pod (anti-)affinity term.
    pub affinity_pods: usize,
    /// `status.images`: every name (normalised, `image_locality::normalized_image_name`) →
    /// `sizeBytes`.
    pub images: BTreeMap<String, i64>,
}

impl NodeInfo {
    /// A node with nothing on it.
    pub fn new(node: Node) -> NodeInfo {
        let allocatable =
            Resources::from_map(node.status.as_ref().and_then(|s| s.allocatable.as_ref()));
        NodeInfo {
            allocatable,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: BTreeMap::new(),
            used_ports: BTreeMap::new(),
            anti_affinity_pods: 0,
            affinity_pods: 0,
            images: crate::image_locality::node_images(&node),
            node,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// Replaces the Node object, keeping the pods.
    pub fn set_node(&mut self, node: Node) {
        self.allocatable =
            Resources::from_map(node.status.as_ref().and_then(|s| s.allocatable.as_ref()));
        self.images = crate::image_locality::node_images(&node);
        self.node = node;
    }

    /// Adds (or replaces) a pod.
    pub fn add_pod(&mut self, key: &str, usage: PodUsage) {
        self.remove_pod(key);
        self.requested.add(&usage.requests);
        self.non_zero_requested.add(&usage.non_zero);
        for port in &usage.ports {
            *self.used_ports.entry(port.clone()).or_insert(0) += 1;
        }
        if !usage.anti_affinity.is_empty() {
            self.anti_affinity_pods += 1;
        }
        if usage.has_affinity() {
            self.affinity_pods += 1;
        }
        self.pods.insert(key.to_string(), usage);
    }

    /// Removes a pod if present.
    pub fn remove_pod(&mut self, key: &str) {
        let Some(usage) = self.pods.remove(key) else {
            return;
        };
        self.requested.sub(&usage.requests);
        self.non_zero_requested.sub(&usage.non_zero);
        if !usage.anti_affinity.is_empty() {
            self.anti_affinity_pods -= 1;
        }
        if usage.has_affinity() {
            self.affinity_pods -= 1;
        }
        for port in &usage.ports {
            if let Some(n) = self.used_ports.get_mut(port) {
                *n -= 1;
                if *n == 0 {
                    self.used_ports.remove(port);
                }
            }
        }
    }

    /// Whether a port conflicts with one in use (`0.0.0.0` conflicts with every IP).
    pub fn port_conflicts(&self, want: &HostPort) -> bool {
        let (ip, proto, port) = want;
        self.used_ports.keys().any(|(uip, uproto, uport)| {
            uport == port && uproto == proto && (uip == ip || uip == "0.0.0.0" || ip == "0.0.0.0")
        })
    }

    /// Host ports in use, for explanations.
    pub fn ports_in_use(&self) -> BTreeSet<i32> {
        self.used_ports.keys().map(|(_, _, p)| *p).collect()
    }
}

//! Which pods the simulator acts on and how: a pure function of the pod (as last seen) and of
//! which nodes are simulated and which of them are stopped.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// What a simulated kubelet does with a pod it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodAction {
    /// Not on a simulated node, already in the state the simulator would write, terminal, or on
    /// a stopped node (its kubelet is "down").
    Ignore,
    /// Start its containers: status Running with a pod IP.
    Start,
    /// It has a `deletionTimestamp`: stop its containers (status) unless its status is already
    /// terminal, then delete it with grace period 0.
    Terminate { write_status: bool },
}

/// The node a pod is bound to, if any.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .filter(|name| !name.is_empty())
}

/// What to do with `pod`; `simulated` tells the simulated nodes and `stopped` those that
/// stopped renewing.
pub fn plan(
    pod: &Pod,
    simulated: impl Fn(&str) -> bool,
    stopped: impl Fn(&str) -> bool,
) -> PodAction {
    let Some(node) = node_name(pod) else {
        return PodAction::Ignore;
    };
    if !simulated(node) || stopped(node) {
        return PodAction::Ignore;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    if pod.metadata.deletion_timestamp.is_some() {
        return PodAction::Terminate {
            write_status: !terminal,
        };
    }
    if terminal || is_running(pod) {
        return PodAction::Ignore;
    }
    PodAction::Start
}

/// Whether the pod's status already says what [`crate::objects::running_status`] writes:
/// Running, a pod IP, Ready, and a status for each container.
pub fn is_running(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let ready = status
        .conditions
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers = pod.spec.as_ref().map_or(0, |spec| spec.containers.len());
    let statuses = status.container_statuses.as_ref().map_or(0, Vec::len);
    status.phase.as_deref() == Some("Running")
        && status.pod_ip.is_some()
        && ready
        && statuses == containers
}

/// The IPv4 pod IP the pod's status reports, if any.
pub fn reported_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests;

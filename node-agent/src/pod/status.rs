//! The pod's status as kubelet reports it, a pure function of the pod, the agent's `PodState`,
//! the node's IP and `now`: phase (kubelet's `getPhase`), conditions (PodReadyToStartContainers,
//! Initialized, ContainersReady, Ready; PodScheduled and others kept), and per container
//! state / lastState / ready / started / restartCount / image / imageID / containerID.

use std::net::Ipv4Addr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState as K8sContainerState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition,
    PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{is_finished, restart_policy, restarts};
use super::qos::{qos_class, qos_name};
use super::state::{ContainerState, ImageState, PodState, Sandbox, Terminated};

/// The pod's status.
pub fn pod_status(pod: &Pod, state: &PodState, node_ip: Ipv4Addr, now: Timestamp) -> PodStatus {
    let current = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let init: Vec<&Container> = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let containers: Vec<&Container> = spec
        .map(|s| s.containers.iter().collect())
        .unwrap_or_default();

    let init_done = init.iter().all(|c| {
        state
            .containers
            .get(&c.name)
            .and_then(ContainerState::terminated)
            .is_some_and(|t| t.exit_code == 0)
    });
    let init_statuses: Vec<ContainerStatus> = init
        .iter()
        .map(|c| container_status(pod, c, state, true))
        .collect();
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .map(|c| container_status(pod, c, state, false))
        .collect();
    let phase = phase(pod, state, init_done, &statuses);

    let sandbox_ready = matches!(state.sandbox, Sandbox::Ready { .. });
    let containers_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let mut conditions: Vec<PodCondition> = current
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !OWN_CONDITIONS.contains(&c.type_.as_str()))
        .collect();
    let previous = current.conditions.clone().unwrap_or_default();
    let mut own = |type_: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let transition = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        conditions.push(PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: (!ok).then(|| reason.map(str::to_string)).flatten(),
            last_transition_time: Some(transition),
            ..Default::default()
        });
    };
    own("PodReadyToStartContainers", sandbox_ready, None);
    own(
        "Initialized",
        init_done,
        Some(if terminal {
            "PodCompleted"
        } else {
            "ContainersNotInitialized"
        }),
    );
    let not_ready = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    own(
        "ContainersReady",
        containers_ready && !terminal,
        Some(not_ready),
    );
    own("Ready", containers_ready && !terminal, Some(not_ready));
    conditions.sort_by_key(|c| condition_order(&c.type_));

    let pod_ip = match state.sandbox {
        Sandbox::Ready { ip: Some(ip) } => Some(ip.to_string()),
        Sandbox::Ready { ip: None } if host_network => Some(node_ip.to_string()),
        _ => current
            .pod_ip
            .clone()
            .filter(|_| !matches!(state.sandbox, Sandbox::None)),
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: node_ip.to_string(),
        }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: state.start_time.map(Time).or(current.start_time),
        qos_class: Some(qos_name(qos_class(pod)).to_string()),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        nominated_node_name: current.nominated_node_name,
        message: current.message.filter(|_| terminal),
        reason: current.reason.filter(|_| terminal),
        ..Default::default()
    }
}

const OWN_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

fn condition_order(type_: &str) -> usize {
    [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .iter()
    .position(|t| *t == type_)
    .unwrap_or(5)
}

/// kubelet's `getPhase`.
fn phase(
    pod: &Pod,
    state: &PodState,
    init_done: bool,
    statuses: &[ContainerStatus],
) -> &'static str {
    if is_finished(pod, state) {
        let all_succeeded = statuses.iter().all(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        });
        let init_failed = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .any(|c| {
                state
                    .containers
                    .get(&c.name)
                    .and_then(ContainerState::terminated)
                    .is_some_and(|t| t.exit_code != 0)
            });
        return if all_succeeded && !init_failed {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    if !init_done {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped) = (0, 0, 0);
    for status in statuses {
        let st = status.state.as_ref();
        if st.and_then(|s| s.running.as_ref()).is_some() {
            running += 1;
        } else if st.and_then(|s| s.terminated.as_ref()).is_some()
            || status
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some()
        {
            // Terminated, or waiting to restart after having run.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 || (stopped == statuses.len() && !statuses.is_empty()) {
        // Running, or everything stopped but something restarts (Always, or OnFailure
        // with failures).
        "Running"
    } else {
        "Pending"
    }
}

fn terminated_state(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
        container_id: Some(t.container_id.clone()),
    }
}

fn waiting(reason: &str, message: Option<String>) -> K8sContainerState {
    K8sContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    }
}

/// One container's status.
fn container_status(
    pod: &Pod,
    container: &Container,
    state: &PodState,
    init: bool,
) -> ContainerStatus {
    let image = container.image.clone().unwrap_or_default();
    let c = state
        .containers
        .get(&container.name)
        .cloned()
        .unwrap_or_default();
    let image_state = state.images.get(&image);
    let image_id = match image_state {
        Some(ImageState::Present { image_id }) => image_id.clone(),
        _ => String::new(),
    };
    let attempt = c.current.as_ref();
    let container_state = match attempt {
        Some(a) if a.terminated.is_none() => K8sContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(a.started_at)),
            }),
            ..Default::default()
        },
        Some(a) => {
            let t = a.terminated.as_ref().expect("terminated");
            let policy = restart_policy(pod);
            let restarting = if init {
                t.exit_code != 0 && policy != "Never"
            } else {
                restarts(policy, t.exit_code)
            };
            if restarting && !crate::pod::plan::deleting(pod) {
                let delay = c.backoff.last.as_secs();
                if let Some((reason, message)) = &c.start_error {
                    waiting(reason, Some(message.clone()))
                } else if delay > 0 {
                    let message = format!(
                        "back-off {delay}s restarting failed container={} pod={}_{}({})",
                        container.name,
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                        pod.metadata.uid.as_deref().unwrap_or_default(),
                    );
                    waiting("CrashLoopBackOff", Some(message))
                } else {
                    K8sContainerState {
                        terminated: Some(terminated_state(t)),
                        ..Default::default()
                    }
                }
            } else {
                K8sContainerState {
                    terminated: Some(terminated_state(t)),
                    ..Default::default()
                }
            }
        }
        None => match (&c.start_error, image_state) {
            (Some((reason, message)), _) => waiting(reason, Some(message.clone())),
            (
                None,
                Some(ImageState::Failed {
                    reason, message, ..
                }),
            ) => waiting(reason, Some(message.clone())),
            _ if init => waiting("PodInitializing", None),
            _ => waiting("ContainerCreating", None),
        },
    };
    // lastState: the previous attempt when the current one runs or waits to restart.
    let shows_terminated = container_state.terminated.is_some();
    let last_terminated = if shows_terminated {
        c.last_terminated.clone()
    } else if container_state.waiting.is_some() {
        c.terminated().cloned().or(c.last_terminated.clone())
    } else {
        c.last_terminated.clone()
    };
    let running = container_state.running.is_some();
    let has_readiness = container.readiness_probe.is_some();
    let ready = running && c.probes.started && (c.probes.ready || !has_readiness) && !init;
    let ready = if init {
        attempt
            .and_then(|a| a.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    } else {
        ready
    };
    ContainerStatus {
        name: container.name.clone(),
        image,
        image_id,
        container_id: attempt.map(|a| format!("runc://{}", a.id)),
        state: Some(container_state),
        last_state: Some(K8sContainerState {
            terminated: last_terminated.as_ref().map(terminated_state),
            ..Default::default()
        }),
        ready,
        restart_count: i32::try_from(c.restart_count()).unwrap_or(i32::MAX),
        started: Some(running && c.probes.started),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

//! The pod plan: from the pod (desired) and what the agent observed (`PodState`) at `now`, the
//! next actions — kubelet's `SyncPod` as a pure, level-triggered function. Running it again
//! with nothing changed yields the same actions, so a repeated or missed wake-up is harmless.
//!
//! Order: sandbox → init containers one at a time, in order → containers (each: image, then
//! start; exits restarted per `restartPolicy` after the CrashLoopBackOff delay; liveness
//! failures stop the container). A pod being deleted stops every container within its grace
//! period, then tears the sandbox down, then confirms the deletion.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};

use super::state::{ContainerState, ImageState, PodState, Sandbox};

/// kubelet's default termination grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// One step for the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the netns + CNI, the cgroup parent and the volumes.
    SetupSandbox,
    /// Make `image` present (pull per `imagePullPolicy`).
    EnsureImage { image: String, policy: PullPolicy },
    /// Start the next attempt of this container.
    Start { container: String },
    /// Stop a running container (TERM, `grace`, KILL); `reason` goes to the log and events.
    Stop {
        container: String,
        grace: Duration,
        reason: String,
    },
    /// Remove containers, unmount, CNI DEL, netns, cgroups (keeps logs).
    TeardownSandbox,
    /// Delete the pod object with grace 0 (everything stopped and torn down).
    ConfirmDeletion,
}

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The container's pull policy with the API server's default (Always for `:latest` or no
/// tag, IfNotPresent otherwise).
pub fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = container.image.as_deref().unwrap_or_default();
            let last = image.rsplit('/').next().unwrap_or(image);
            if image.contains('@') {
                PullPolicy::IfNotPresent
            } else if !last.contains(':') || last.ends_with(":latest") {
                PullPolicy::Always
            } else {
                PullPolicy::IfNotPresent
            }
        }
    }
}

/// `restartPolicy` (default Always).
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether an attempt that exited with `exit_code` is restarted.
pub fn restarts(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The grace period for stopping this pod's containers: the deletion's, else the spec's,
/// else 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
    seconds.unwrap_or(DEFAULT_GRACE)
}

/// The pod is being deleted.
pub fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Init containers in order, then containers.
pub fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.map(|s| s.containers.as_slice()).unwrap_or_default())
}

/// The next actions for `pod`.
pub fn plan(pod: &Pod, state: &PodState, now: Timestamp) -> Vec<Action> {
    if deleting(pod) {
        return plan_deletion(pod, state);
    }
    if is_finished(pod, state) {
        // A terminal pod (restartPolicy Never/OnFailure, all done) keeps no sandbox.
        return match state.sandbox {
            Sandbox::None | Sandbox::TornDown => vec![],
            _ => vec![Action::TeardownSandbox],
        };
    }
    match &state.sandbox {
        Sandbox::None | Sandbox::TornDown => return vec![Action::SetupSandbox],
        Sandbox::Failed { retry_at, .. } => {
            return if *retry_at <= now {
                vec![Action::SetupSandbox]
            } else {
                vec![]
            };
        }
        Sandbox::Ready { .. } => {}
    }
    if state.volume_error.is_some() {
        // Retried by SetupSandbox on the next sync (kubelet waits for volumes before starting).
        return vec![Action::SetupSandbox];
    }
    let policy = restart_policy(pod);
    let spec = pod.spec.as_ref();
    // Init containers, one at a time.
    for container in spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
    {
        let current = state.containers.get(&container.name);
        match current.and_then(|c| c.current.as_ref()) {
            Some(attempt) if attempt.terminated.is_none() => return vec![],
            Some(attempt) => {
                let exit_code = attempt.terminated.as_ref().map_or(0, |t| t.exit_code);
                if exit_code == 0 {
                    continue;
                }
                // A failed init container: retried unless the pod never restarts.
                if policy == "Never" {
                    return vec![];
                }
                return start_when_due(pod, container, state, now);
            }
            None => return start_when_due(pod, container, state, now),
        }
    }
    let mut actions = Vec::new();
    for container in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        let current = state.containers.get(&container.name);
        let attempt = current.and_then(|c| c.current.as_ref());
        match attempt {
            Some(a) if a.terminated.is_none() => {
                let c = current.expect("attempt implies state");
                if let Some(reason) = &c.probes.kill_reason
                    && !c.stopping
                {
                    let grace = container_grace(pod, container);
                    actions.push(Action::Stop {
                        container: container.name.clone(),
                        grace,
                        reason: reason.clone(),
                    });
                }
            }
            Some(a) => {
                let exit_code = a.terminated.as_ref().map_or(0, |t| t.exit_code);
                if restarts(policy, exit_code) {
                    actions.extend(start_when_due(pod, container, state, now));
                }
            }
            None => actions.extend(start_when_due(pod, container, state, now)),
        }
    }
    actions
}

/// Grace for a liveness restart: the probe's `terminationGracePeriodSeconds`, else the pod's.
fn container_grace(pod: &Pod, container: &Container) -> Duration {
    let probe = container
        .liveness_probe
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .or_else(|| {
            container
                .startup_probe
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds)
        });
    probe
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or_else(|| grace_period(pod))
}

/// Image first, then a start once the back-off allows.
fn start_when_due(
    pod: &Pod,
    container: &Container,
    state: &PodState,
    now: Timestamp,
) -> Vec<Action> {
    let image = container.image.clone().unwrap_or_default();
    match state.images.get(&image) {
        None => {
            return vec![Action::EnsureImage {
                image,
                policy: pull_policy(container),
            }];
        }
        Some(ImageState::Failed { retry_at, .. }) => {
            return if *retry_at <= now {
                vec![Action::EnsureImage {
                    image,
                    policy: pull_policy(container),
                }]
            } else {
                vec![]
            };
        }
        Some(ImageState::Present { .. }) => {}
    }
    let c = state.containers.get(&container.name);
    if c.and_then(|c| c.restart_after).is_some_and(|t| t > now) {
        return vec![];
    }
    let _ = pod;
    vec![Action::Start {
        container: container.name.clone(),
    }]
}

fn plan_deletion(pod: &Pod, state: &PodState) -> Vec<Action> {
    let grace = grace_period(pod);
    let running: Vec<Action> = all_containers(pod)
        .filter(|c| {
            state
                .containers
                .get(&c.name)
                .is_some_and(ContainerState::is_running)
        })
        .filter(|c| !state.containers.get(&c.name).is_some_and(|s| s.stopping))
        .map(|c| Action::Stop {
            container: c.name.clone(),
            grace,
            reason: "pod deleted".into(),
        })
        .collect();
    if !running.is_empty() {
        return running;
    }
    if state.containers.values().any(|c| c.stopping) {
        return vec![];
    }
    match state.sandbox {
        Sandbox::None | Sandbox::TornDown => vec![Action::ConfirmDeletion],
        _ => vec![Action::TeardownSandbox],
    }
}

/// Every container ran and none will restart: the pod is Succeeded or Failed.
pub fn is_finished(pod: &Pod, state: &PodState) -> bool {
    let policy = restart_policy(pod);
    if policy == "Always" {
        return false;
    }
    let spec = pod.spec.as_ref();
    // A failed init container under restartPolicy Never fails the pod.
    if policy == "Never" {
        for container in spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(t) = state
                .containers
                .get(&container.name)
                .and_then(ContainerState::terminated)
                && t.exit_code != 0
            {
                return true;
            }
        }
    }
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    !containers.is_empty()
        && containers.iter().all(|c| {
            state
                .containers
                .get(&c.name)
                .and_then(ContainerState::terminated)
                .is_some_and(|t| !restarts(policy, t.exit_code))
        })
}

#[cfg(test)]
mod tests;

//! What the agent knows about one pod on its node: its sandbox, its images, and per container
//! the current attempt, the last terminated one, the back-off and the probe results. The plan
//! and the status are pure functions of this and the pod; the worker keeps it up to date.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;

/// The pod's sandbox (netns, CNI, cgroup parent, volumes).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Sandbox {
    /// Not set up yet.
    #[default]
    None,
    /// Ready; `ip` is None for hostNetwork pods (they use the node's).
    Ready { ip: Option<Ipv4Addr> },
    /// Setting it up failed; retried at `retry_at`.
    Failed {
        message: String,
        retry_at: Timestamp,
    },
    /// Torn down (deleted or terminal pod).
    TornDown,
}

/// An image a container needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageState {
    /// Present in the store: `repo@sha256:…`.
    Present { image_id: String },
    /// Pulling failed: `ErrImagePull` until `retry_at`, then `ImagePullBackOff` while waiting
    /// for the next try; `ErrImageNeverPull` for `imagePullPolicy: Never` of a missing image.
    Failed {
        reason: String,
        message: String,
        retry_at: Timestamp,
        backoff: Backoff,
    },
}

/// How one attempt of a container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `ContainerStatusUnknown`.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// `runc://<id>`.
    pub container_id: String,
}

/// One started attempt of a container (one runc container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// runc's container id.
    pub id: String,
    /// 0 for the first attempt; the restart count it was started with.
    pub number: u32,
    pub started_at: Timestamp,
    /// `None` while running.
    pub terminated: Option<Terminated>,
}

/// Probe results of a running attempt.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Probes {
    /// The readiness probe succeeded (`successThreshold` times); true without a probe.
    pub ready: bool,
    /// The startup probe succeeded (true without one).
    pub started: bool,
    /// The liveness or startup probe failed `failureThreshold` times: restart it.
    pub kill_reason: Option<String>,
}

/// Everything about one container.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerState {
    /// Attempts started so far (the next attempt's number).
    pub attempts: u32,
    pub current: Option<Attempt>,
    /// The attempt before the current one, if it terminated (`lastState`).
    pub last_terminated: Option<Terminated>,
    /// Why the last start failed: (`CreateContainerConfigError` | `CreateContainerError` |
    /// `RunContainerError`, message); cleared by a successful start.
    pub start_error: Option<(String, String)>,
    /// Not restarted before this time (CrashLoopBackOff while in the future).
    pub restart_after: Option<Timestamp>,
    pub backoff: Backoff,
    pub probes: Probes,
    /// A stop was asked for and is under way.
    pub stopping: bool,
}

impl ContainerState {
    /// The restart count kubelet reports: attempts started beyond the first.
    pub fn restart_count(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }

    /// The current attempt is running.
    pub fn is_running(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|a| a.terminated.is_none())
    }

    /// The current attempt's termination, if it ended.
    pub fn terminated(&self) -> Option<&Terminated> {
        self.current.as_ref().and_then(|a| a.terminated.as_ref())
    }
}

/// Everything about one pod.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodState {
    pub sandbox: Sandbox,
    /// By image reference as the pod spells it.
    pub images: BTreeMap<String, ImageState>,
    /// By container name (init containers and containers).
    pub containers: BTreeMap<String, ContainerState>,
    /// When the agent first acknowledged the pod (`status.startTime`).
    pub start_time: Option<Timestamp>,
    /// Volumes could not be set up (kubelet's `FailedMount`); retried every sync.
    pub volume_error: Option<String>,
}

/// What survives an agent restart beside runc's state and the exit files: per container the
/// attempt count and the last termination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub start_time: Option<Timestamp>,
    pub containers: BTreeMap<String, ContainerCheckpoint>,
}

/// One container's part of the checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCheckpoint {
    pub attempts: u32,
    pub current_started_at: Option<Timestamp>,
    pub last_terminated: Option<Terminated>,
    #[serde(default)]
    pub current_terminated: Option<Terminated>,
}

impl PodState {
    /// The part worth persisting.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            start_time: self.start_time,
            containers: self
                .containers
                .iter()
                .map(|(name, c)| {
                    (
                        name.clone(),
                        ContainerCheckpoint {
                            attempts: c.attempts,
                            current_started_at: c.current.as_ref().map(|a| a.started_at),
                            last_terminated: c.last_terminated.clone(),
                            current_terminated: c.terminated().cloned(),
                        },
                    )
                })
                .collect(),
        }
    }
}

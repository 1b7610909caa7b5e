//! One container's life under runc: the types the rest of the agent sees ([`ExitRecord`],
//! [`ContainerState`], [`ListedContainer`], [`ExecOutput`], [`RuntimeError`]) and
//! [`RuncRuntime`], which starts every container under its own `skiff-shim` (see [`crate::shim`]).

mod runc;

pub use runc::RuncRuntime;

use serde::{Deserialize, Serialize};

/// What the shim records when a container's init process ends (`exit.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code, 128 + signal when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// RFC 3339 time the container started (as the shim saw `runc start` return).
    pub started_at: Option<String>,
    /// RFC 3339 time the init process was reaped.
    pub finished_at: String,
}

/// A container as the runtime sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created but not started.
    Created,
    /// Its init process runs.
    Running { pid: u32 },
    /// It ended; the shim recorded how.
    Exited(ExitRecord),
    /// runc says stopped but no exit record appeared (the shim died): kubelet's
    /// `ContainerStatusUnknown`, reported as exit code 137.
    Unknown,
    /// runc does not know this id.
    NotFound,
}

/// A container `runc list` knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedContainer {
    pub id: String,
    pub pid: u32,
    /// runc's status word: created, running, stopped, paused.
    pub status: String,
    pub bundle: std::path::PathBuf,
}

/// The output of a finished `runc exec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runtime failures. `Start` carries runc's own message (kubelet puts it in the container's
/// `CreateContainerError`/`RunContainerError` message).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Start(String),
    #[error("runc {command}: {message}")]
    Runc { command: String, message: String },
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

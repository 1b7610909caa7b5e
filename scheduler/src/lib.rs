//! skiff's pod scheduler: kube-scheduler's default filters and scores over a cache fed by
//! watches, a scheduling queue with backoff, assume-then-bind through `pods/binding`, and
//! leader election on a Lease — talking to the API server only, through `skiff-client`.
//!
//! - `resources`, `node_info`: quantities, pod requests, per-node accounting.
//! - `filters`, `spread`, `interpod`, `scores` (with `scores_interpod`, `scores_spread`,
//!   `image_locality`): the plugins, pure functions of (pod, node info);
//!   `pod_filters`: one pod's filters with their pre-pass state.
//! - `volume_binding`: VolumeBinding's PreFilter, Filter and PreBind over claims, volumes and
//!   classes.
//! - `preemption`, `nominator`: DefaultPreemption's PostFilter and nominated pods' reservations.
//! - `explain`: the FailedScheduling message in kube-scheduler's wording.
//! - `queue`: active / backoff / unschedulable.
//! - `cache`: nodes, bound and assumed pods.
//! - `run`: the loop that ties them to the API server.
//! - `why`: `skiff why-pending`'s per-node report.

pub mod cache;
pub mod config;
pub mod explain;
pub mod filters;
pub mod image_locality;
pub mod interpod;
pub mod metrics;
pub mod node_info;
pub mod nominator;
pub mod pod_filters;
pub mod preemption;
pub mod queue;
pub mod resources;
pub mod run;
pub mod scores;
pub mod scores_interpod;
pub mod scores_spread;
pub mod spread;
pub mod volume_binding;
pub mod why;

#[cfg(test)]
mod testing;

pub use run::{SchedulerConfig, run};

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Client runtime trouble (kubeconfig, leader election lost, ...).
    #[error(transparent)]
    Client(#[from] skiff_client::Error),
    /// A request to the API server failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// Bad input (e.g. a pod that does not exist for why-pending).
    #[error("{0}")]
    Invalid(String),
}

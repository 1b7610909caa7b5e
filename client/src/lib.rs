//! skiff's client runtime, shared by the scheduler, the controller manager, the node agent and
//! the node simulator. It talks to the API server only (kube-rs + k8s-openapi), never to the
//! store.
//!
//! - `config`: where the kubeconfig comes from (`--kubeconfig`, else `KUBECONFIG`, else in-cluster).
//! - `informer`: kube-runtime watchers/reflectors feeding bounded channels.
//! - `leader`: leader election on a coordination.k8s.io/v1 Lease, client-go's algorithm and defaults.
//! - `events`: a core/v1 Event recorder deduplicating repeats with `count`, like client-go's.
//! - `metrics`: a small Prometheus text-format registry.
//! - `quantity`: resource quantities (`100m`, `128Mi`) in milli-units.
//! - `serve`: `/healthz`, `/livez`, `/readyz` and `/metrics` over HTTPS or plain HTTP.
//! - `workqueue`: client-go's rate-limited, deduplicating work queue for controllers.
//! - `tls`: a secure port's serving certificate: given files, or self-signed (in `--cert-dir` or
//!   in memory), as kube-scheduler picks it.

pub mod config;
pub mod events;
pub mod informer;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod serve;
pub mod tls;
pub mod workqueue;

/// Errors of the client runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A request to the API server failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// This candidate held the lease and could not renew it within the renew deadline.
    #[error("leader election lost: could not renew lease {0} within the renew deadline")]
    LeaderLost(String),
    /// The serving certificate could not be loaded, generated or used.
    #[error("tls: {0}")]
    Tls(String),
    /// Socket trouble while serving.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The current wall-clock time as a Kubernetes timestamp.
pub fn now_timestamp() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

//! skiff's controller manager: kube-controller-manager's control loops over the Kubernetes
//! API (through `skiff-client`, never the store). Each controller is split the
//! sample-controller way: a pure *plan* (desired + observed state in, actions out, unit-tested
//! without a cluster) and a thin IO shell that feeds it from informers and applies its actions.
//!
//! - `manager`: `--controllers`, leader election, running the selected controllers.
//! - `shell`: keys, workers over a `skiff_client::workqueue::WorkQueue`, error codes.
//! - `expectations`: creates and deletes a controller waits to see in its cache.
//! - `pods`: pod readiness and availability, controller references (shared by the loops).
//! - `replicaset`: ReplicaSets keep `spec.replicas` pods (`plan` is the pure part).
//! - `deployment`: Deployments roll ReplicaSets (`sync` is the pure part).
//! - `nodeipam`: pod CIDRs for nodes (`--allocate-node-cidrs`).
//! - `garbagecollector`: dependents whose owners are gone are deleted; orphan and foreground
//!   deletions are finished.

pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod expectations;
pub mod garbagecollector;
pub mod manager;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod pods;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;
pub mod shell;
pub mod volume;

/// Errors of the controller manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Client runtime trouble (kubeconfig, leader election lost, ...).
    #[error(transparent)]
    Client(#[from] skiff_client::Error),
    /// A request to the API server failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    /// Bad configuration (an unknown controller name, ...).
    #[error("{0}")]
    Invalid(String),
}

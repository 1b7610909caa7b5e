//! Pods on this node: the pure parts (QoS class, back-off, the plan, the status, env and etc
//! files, probe bookkeeping) unit-tested without a cluster, and the per-pod worker that
//! observes, plans, acts and reports.

pub mod actions;
pub mod backoff;
pub mod env;
pub mod env_files;
pub mod metrics;
pub mod plan;
pub mod probes;
pub mod qos;
pub mod state;
pub mod status;
pub mod worker;

//! Kubernetes-compatible API server keeping objects in the store through the etcd v3 API only
//! (so it runs on skiff's store and on real etcd). kube-apiserver's shape, top to bottom (the
//! order imports go; [`layers`] tests it):
//!
//! - [`server`]: configuration, TLS, the admin kubeconfig, the router with its filters, [`run`].
//! - [`filters`]: the chain every request passes — [`request_info`] first, then metrics, audit,
//!   status errors, authentication, authorization, in-flight limits, YAML bodies.
//! - [`endpoints`]: the handlers: resource requests to the registry, discovery, OpenAPI,
//!   health, and the gRPC API over the same router.
//! - [`registry`]: the REST verbs written once (get, list, watch, create, update, patch,
//!   delete, deletecollection, server-side apply, scale, binding) and each kind's
//!   [`registry::strategy::Strategy`] (defaults, validation, subresources, Table, field
//!   labels, lifecycle).
//! - [`admission`]: the admission chain the registry's writes call (NamespaceLifecycle,
//!   LimitRanger, ServiceAccount, DefaultTolerationSeconds, Priority, ResourceQuota).
//! - [`storage`]: the [`storage::Storage`] trait over etcd v3, its client (balancing, failover,
//!   resumed watches, mTLS) and encryption at rest.
//! - Foundation: [`request_info`] (what a request asks for, computed once), [`status`] (every
//!   error a `Status`, typed [`status::Reason`]), [`selector`], [`protobuf`], [`limits`],
//!   [`ids`], [`auth`] (users, tokens, the authorizer), [`audit`] (policy and log), [`metrics`].

pub mod admission;
pub mod audit;
pub mod auth;
pub mod endpoints;
pub mod filters;
pub mod ids;
#[cfg(test)]
mod layers;
pub mod limits;
pub mod metrics;
pub mod protobuf;
pub mod registry;
pub mod request_info;
pub mod selector;
pub mod server;
pub mod status;
pub mod storage;

pub use server::{ApiServerConfig, Error, run};

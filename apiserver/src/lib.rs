//! Kubernetes-compatible API server keeping objects in the store through the etcd v3 API only
//! (so it runs on skiff's store and on real etcd).
//!
//! - [`storage`]: the [`storage::Storage`] trait and its etcd v3 gRPC implementation.
//! - [`rest`]: the REST verbs (get, list, watch, create, update, patch, delete).
//! - [`resources`]: the served kinds (k8s-openapi types), validation, defaults, Tables.
//! - [`discovery`]: `/version`, `/api`, `/apis`, `/openapi/v3`.
//! - [`server`]: TLS, authentication, the admin kubeconfig, [`run`].

pub mod discovery;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod server;
pub mod status;
pub mod storage;

pub use server::{ApiServerConfig, Error, run};

//! Kubernetes-compatible API server keeping objects in the store through the etcd v3 API only
//! (so it runs on skiff's store and on real etcd).
//!
//! - [`storage`]: the [`storage::Storage`] trait and its etcd v3 gRPC implementation.
//! - [`etcd`]: the etcd client under it: balancing, failover, resumed watches, mTLS.
//! - [`rest`]: the REST verbs (get, list, watch, create, update, patch, delete).
//! - [`resources`]: the served kinds (k8s-openapi types), validation, defaults, Tables.
//! - [`defaults`]: kube-apiserver's defaulting (`SetDefaults_*`) and each kind's new `status`.
//! - [`discovery`]: `/version`, `/api`, `/apis` (aggregated and legacy), `/openapi/v3`.
//! - [`health`]: `/healthz`, `/livez`, `/readyz` with kube-apiserver's per-check output.
//! - [`server`]: TLS, authentication, the admin kubeconfig, [`run`].
//! - [`auth`]: client certificates, anonymous users, the authorization hook.
//! - [`grpc`]: the gRPC automation API (`skiff.api.v1.Resources`) over the same router.
//! - [`metrics`]: `/metrics` (request counts and latencies by verb and resource).
//! - [`encryption`]: encryption at rest (`--encryption-provider-config`).
//! - [`audit`]: the audit log (`--audit-log-path`, `--audit-policy-file`).

pub mod audit;
pub mod auth;
pub mod defaults;
pub mod discovery;
pub mod encryption;
pub mod errors;
pub mod etcd;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod server;
pub mod status;
pub mod storage;
pub mod yaml;

pub use server::{ApiServerConfig, Error, run};

//! The filter chain every HTTP request passes before a handler (kube-apiserver's
//! `DefaultBuildHandlerChain`), outermost first:
//!
//! 1. [`request_info`] — reads the request's [`crate::request_info::RequestInfo`] once and puts
//!    it in the request's extensions; every later filter and handler reads it from there.
//! 2. [`metrics`] — counts the request and times it.
//! 3. [`audit`] — the audit log's events (outside authentication, so refusals are logged).
//! 4. [`status_errors`] — any non-JSON 4xx/5xx becomes a `Status` (then the body limit).
//! 5. [`authn`] — who the request is (401 when nobody); puts the [`crate::auth::User`] in the
//!    extensions.
//! 6. [`authz`] — whether that user may (403).
//! 7. [`inflight`] — the read and write in-flight limits (429).
//! 8. [`yaml`] — YAML bodies become JSON.
//!
//! Filters read the request and the foundation modules (auth, audit, metrics, status); they
//! never reach into the handlers or the registry.

pub mod audit;
pub mod authn;
pub mod authz;
pub mod inflight;
pub mod metrics;
pub mod request_info;
pub mod status_errors;
pub mod yaml;

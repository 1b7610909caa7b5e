//! kube-apiserver's audit log: `--audit-log-path` (a file, or `-` for stdout) receives one JSON
//! line per `audit.k8s.io/v1` `Event`, as `--audit-policy-file` (an `audit.k8s.io/v1` `Policy`)
//! decides; without a policy file every request is logged at `Metadata`.
//!
//! As upstream: the first rule that matches a request (users, userGroups, verbs, resources,
//! namespaces, nonResourceURLs) sets its level (`None`, `Metadata`, `Request`,
//! `RequestResponse`) and the stages it omits; a request no rule matches is not logged. Every
//! logged request has a `RequestReceived` and a `ResponseComplete` event (a watch also a
//! `ResponseStarted`, and its `ResponseComplete` when the stream ends). `Request` adds the
//! request body (`requestObject`), `RequestResponse` the response body too. Headers are never
//! logged, so neither are bearer tokens; whether Secret bodies are logged is the policy's call
//! (upstream's example policies keep `secrets` at `Metadata`, and so does the default).
//!
//! Requests never wait for the disk: events go through a queue of [`AUDIT_QUEUE_LIMIT`] to a
//! writer thread; when it is full an event is dropped and counted in `/metrics`
//! (`apiserver_audit_error_total{plugin="buffered"}`), as upstream's batching backend does.
//! `--audit-log-maxsize`/`--audit-log-maxbackup` rotate the file as kube-apiserver's
//! lumberjack does (`audit-<time>.log` backups next to it).
//!
//! - [`policy`]: the `Policy` and its rules.
//! - [`log`]: the log file and its rotation.
//! - the filter that builds each request's events is `crate::filters::audit`.

mod log;
pub mod policy;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::AuditCounters;
use crate::request_info::RequestInfo;

use log::Sink;
pub use policy::{Decision, Policy};

/// Events waiting for the writer (kube-apiserver's default `--audit-log-batch-buffer-size`);
/// beyond it events are dropped (and counted), never queued without bound.
pub const AUDIT_QUEUE_LIMIT: usize = 10_000;
/// The `apiVersion` of policies and events.
pub const AUDIT_API_VERSION: &str = "audit.k8s.io/v1";

/// How much of a request is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

/// The stages of a request that produce events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

/// A file the audit log cannot use.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("--audit-policy-file {path}: {message}")]
    Policy { path: String, message: String },
    #[error("--audit-log-path {path}: {message}")]
    Log { path: String, message: String },
}

/// An event's `objectRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

impl ObjectRef {
    /// The object a resource request addresses (None for non-resource URLs).
    pub fn of(info: &RequestInfo) -> Option<ObjectRef> {
        info.is_resource_request.then(|| ObjectRef {
            resource: info.resource.clone(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            api_group: info.api_group.clone(),
            api_version: info.api_version.clone(),
            subresource: info.subresource.clone(),
        })
    }
}

/// An event's `user`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct UserInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) groups: Vec<String>,
}

/// One `audit.k8s.io/v1` `Event`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Event {
    pub(crate) kind: &'static str,
    pub(crate) api_version: &'static str,
    pub(crate) level: Level,
    #[serde(rename = "auditID")]
    pub(crate) audit_id: String,
    pub(crate) stage: Stage,
    #[serde(rename = "requestURI")]
    pub(crate) request_uri: String,
    pub(crate) verb: String,
    pub(crate) user: UserInfo,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub(crate) source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_object: Option<Value>,
    pub(crate) request_received_timestamp: String,
    pub(crate) stage_timestamp: String,
}

/// Where the audit log goes and how it rotates.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `--audit-log-path`: a file, or `-` for stdout.
    pub log_path: PathBuf,
    /// The `--audit-policy-file` ([`Policy::load`]); None = everything at `Metadata`.
    pub policy: Option<Policy>,
    /// `--audit-log-maxsize`: megabytes before the file is rotated; 0 = never.
    pub max_size_mb: u64,
    /// `--audit-log-maxbackup`: rotated files kept; 0 = all.
    pub max_backups: usize,
}

/// The audit log of one API server process.
pub struct Auditor {
    pub(crate) policy: Policy,
    queue: tokio::sync::mpsc::Sender<Vec<u8>>,
    counters: Arc<AuditCounters>,
}

impl Auditor {
    /// Loads the policy, opens the log and starts its writer thread (which ends when the
    /// auditor is dropped, after writing what is queued).
    pub fn start(
        config: &AuditConfig,
        counters: Arc<AuditCounters>,
    ) -> Result<Auditor, AuditError> {
        let policy = config
            .policy
            .clone()
            .unwrap_or_else(Policy::metadata_for_everything);
        let mut sink = Sink::open(config)?;
        let (queue, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(AUDIT_QUEUE_LIMIT);
        let writer_counters = counters.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Some(line) = rx.blocking_recv() {
                    let mut batch = vec![line];
                    while let Ok(line) = rx.try_recv() {
                        batch.push(line);
                    }
                    for line in &batch {
                        if let Err(e) = sink.write(line) {
                            writer_counters.write_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "audit log write failed");
                        }
                    }
                    if let Err(e) = sink.flush() {
                        tracing::warn!(error = %e, "audit log flush failed");
                    }
                }
            })
            .map_err(|e| AuditError::Log {
                path: config.log_path.display().to_string(),
                message: format!("start the writer thread: {e}"),
            })?;
        Ok(Auditor {
            policy,
            queue,
            counters,
        })
    }

    /// Queues one event; a full queue drops it (counted), it never waits.
    pub(crate) fn emit(&self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(_) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        line.push(b'\n');
        match self.queue.try_send(line) {
            Ok(()) => {
                self.counters.events.fetch_add(1, Ordering::Relaxed);
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// metav1.MicroTime: RFC 3339 in UTC with microseconds.
pub(crate) fn micro_time(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = k8s_openapi::jiff::Timestamp::from_second(since.as_secs() as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    format!(
        "{}.{:06}Z",
        seconds.strftime("%Y-%m-%dT%H:%M:%S"),
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use serde_json::json;

    use super::*;

    /// A GET of `path`, authorized as `verb`.
    fn request(verb: &str, path: &str) -> RequestInfo {
        RequestInfo {
            verb: verb.into(),
            ..RequestInfo::new(&Method::GET, path, None)
        }
    }

    #[test]
    fn urls_are_read_like_request_info() {
        let o = |path: &str| ObjectRef::of(&request("get", path));
        let cm = o("/api/v1/namespaces/d/configmaps/c").unwrap();
        assert_eq!(
            (
                cm.resource.as_str(),
                cm.namespace.as_str(),
                cm.name.as_str()
            ),
            ("configmaps", "d", "c")
        );
        assert_eq!(cm.api_version, "v1");
        let scale = o("/apis/apps/v1/namespaces/d/deployments/w/scale").unwrap();
        assert_eq!(
            (scale.api_group.as_str(), scale.subresource.as_str()),
            ("apps", "scale")
        );
        let ns = o("/api/v1/namespaces/d").unwrap();
        assert_eq!(
            (
                ns.resource.as_str(),
                ns.namespace.as_str(),
                ns.name.as_str()
            ),
            ("namespaces", "d", "d")
        );
        let fin = o("/api/v1/namespaces/d/finalize").unwrap();
        assert_eq!(
            (fin.resource.as_str(), fin.subresource.as_str()),
            ("namespaces", "finalize")
        );
        let nodes = o("/api/v1/nodes").unwrap();
        assert_eq!(
            (nodes.resource.as_str(), nodes.namespace.as_str()),
            ("nodes", "")
        );
        let watch = o("/api/v1/watch/namespaces/d/pods").unwrap();
        assert_eq!(watch.resource, "pods");
        for path in ["/api", "/api/v1", "/apis/apps/v1", "/version", "/healthz"] {
            assert!(o(path).is_none(), "{path}");
        }
    }

    #[test]
    fn events_look_like_kube_apiserver_s() {
        let event = Event {
            kind: "Event",
            api_version: AUDIT_API_VERSION,
            level: Level::Metadata,
            audit_id: crate::ids::new_uid(),
            stage: Stage::ResponseComplete,
            request_uri: "/api/v1/namespaces/d/configmaps?limit=1".into(),
            verb: "list".into(),
            user: UserInfo {
                username: "admin".into(),
                uid: "1".into(),
                groups: vec!["system:masters".into()],
            },
            source_ips: vec!["127.0.0.1".into()],
            user_agent: "kubectl".into(),
            object_ref: ObjectRef::of(&request("list", "/api/v1/namespaces/d/configmaps")),
            response_status: Some(json!({"metadata": {}, "code": 200})),
            request_object: None,
            response_object: None,
            request_received_timestamp: micro_time(SystemTime::UNIX_EPOCH),
            stage_timestamp: micro_time(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_001),
            ),
        };
        let v = serde_json::to_value(&event).unwrap();
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(v["stage"], "ResponseComplete");
        assert_eq!(v["requestURI"], "/api/v1/namespaces/d/configmaps?limit=1");
        assert_eq!(v["sourceIPs"][0], "127.0.0.1");
        assert_eq!(
            v["objectRef"],
            json!({"resource": "configmaps", "namespace": "d", "apiVersion": "v1"})
        );
        assert_eq!(v["requestReceivedTimestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["stageTimestamp"], "1970-01-01T00:00:01.500001Z");
        assert!(v.get("requestObject").is_none());
        let id = v["auditID"].as_str().unwrap();
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
    }
}

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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::metrics::AuditCounters;
use crate::rest::MAX_BODY_BYTES;
use crate::server::User;
use crate::status::ApiError;

/// Events waiting for the writer (kube-apiserver's default `--audit-log-batch-buffer-size`);
/// beyond it events are dropped (and counted), never queued without bound.
pub const AUDIT_QUEUE_LIMIT: usize = 10_000;
/// kube-apiserver truncates longer user agents.
const MAX_USER_AGENT: usize = 1024;
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

/// The `audit.k8s.io/v1` `Policy`.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_managed_fields: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDoc {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

impl Policy {
    /// Without `--audit-policy-file`: everything at `Metadata`.
    pub fn metadata_for_everything() -> Policy {
        Policy {
            rules: vec![Rule {
                level: Level::Metadata,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
                omit_stages: Vec::new(),
                omit_managed_fields: None,
            }],
            omit_managed_fields: false,
        }
    }

    pub fn load(path: &Path) -> Result<Policy, AuditError> {
        let error = |message: String| AuditError::Policy {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Policy::parse(&text).map_err(error)
    }

    /// Parses and validates a policy (YAML or JSON) with kube-apiserver's rules.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let doc: PolicyDoc = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if doc.api_version.as_deref() != Some(AUDIT_API_VERSION) {
            return Err(format!(
                "apiVersion must be {AUDIT_API_VERSION:?}, got {:?}",
                doc.api_version.as_deref().unwrap_or("")
            ));
        }
        if doc.kind.as_deref() != Some("Policy") {
            return Err(format!(
                "kind must be \"Policy\", got {:?}",
                doc.kind.as_deref().unwrap_or("")
            ));
        }
        let _ = doc.metadata;
        if doc.rules.is_empty() {
            return Err("loaded illegal policy with 0 rules".into());
        }
        let mut rules = doc.rules;
        for (i, rule) in rules.iter_mut().enumerate() {
            let path = format!("rules[{i}]");
            for (j, url) in rule.non_resource_urls.iter().enumerate() {
                if url == "*" {
                    continue;
                }
                if !url.starts_with('/') {
                    return Err(format!(
                        "{path}.nonResourceURLs[{j}]: Invalid value: {url:?}: non-resource URL rules must begin with a '/' character"
                    ));
                }
                if url[..url.len() - 1].contains('*') {
                    return Err(format!(
                        "{path}.nonResourceURLs[{j}]: Invalid value: {url:?}: non-resource URL wildcards '*' must be the final character of the rule"
                    ));
                }
            }
            if !rule.non_resource_urls.is_empty()
                && (!rule.resources.is_empty() || !rule.namespaces.is_empty())
            {
                return Err(format!(
                    "{path}.nonResourceURLs: Invalid value: {:?}: rules cannot apply to both regular resources and non-resource URLs",
                    rule.non_resource_urls
                ));
            }
            for gr in &rule.resources {
                if !gr.resource_names.is_empty() && gr.resources.is_empty() {
                    return Err(format!(
                        "{path}.resources.resourceNames: Invalid value: {:?}: using resourceNames requires at least one resource",
                        gr.resource_names
                    ));
                }
            }
            // As upstream's policy reader: the policy's omitted stages apply to every rule.
            for stage in &doc.omit_stages {
                if !rule.omit_stages.contains(stage) {
                    rule.omit_stages.push(*stage);
                }
            }
        }
        Ok(Policy {
            rules,
            omit_managed_fields: doc.omit_managed_fields,
        })
    }

    /// The first matching rule's level and omitted stages; `None` when no rule matches.
    pub fn evaluate(&self, user: Option<&User>, verb: &str, info: &RequestInfo) -> Decision {
        for rule in &self.rules {
            if rule.matches(user, verb, info) {
                return Decision {
                    level: rule.level,
                    omit_stages: rule.omit_stages.clone(),
                    omit_managed_fields: rule
                        .omit_managed_fields
                        .unwrap_or(self.omit_managed_fields),
                };
            }
        }
        Decision {
            level: Level::None,
            omit_stages: Vec::new(),
            omit_managed_fields: self.omit_managed_fields,
        }
    }
}

impl Rule {
    fn matches(&self, user: Option<&User>, verb: &str, info: &RequestInfo) -> bool {
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.name)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(info);
        }
        if !self.non_resource_urls.is_empty() {
            return info.object.is_none()
                && self
                    .non_resource_urls
                    .iter()
                    .any(|spec| path_matches(&info.path, spec));
        }
        true
    }

    fn matches_resource(&self, info: &RequestInfo) -> bool {
        let Some(object) = &info.object else {
            return false;
        };
        if !self.namespaces.is_empty() && !self.namespaces.contains(&object.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if object.subresource.is_empty() {
            object.resource.clone()
        } else {
            format!("{}/{}", object.resource, object.subresource)
        };
        self.resources.iter().any(|gr| {
            if gr.group != object.api_group && gr.group != "*" {
                return false;
            }
            if gr.resources.is_empty() {
                return true;
            }
            if !gr.resource_names.is_empty() && !gr.resource_names.contains(&object.name) {
                return false;
            }
            gr.resources.iter().any(|res| {
                res == &combined
                    || res == "*"
                    || (!object.subresource.is_empty()
                        && res.strip_prefix("*/") == Some(object.subresource.as_str()))
                    || res.strip_suffix("/*") == Some(object.resource.as_str())
            })
        })
    }
}

/// `nonResourceURLs` entries: exact, `*`, or a prefix ending in `*`.
fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
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

/// What a URL addresses, as apiserver's `RequestInfoFactory` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub path: String,
    /// None for non-resource URLs (`/version`, `/api`, `/healthz`, ...).
    pub object: Option<ObjectRef>,
}

impl RequestInfo {
    pub fn of(path: &str) -> RequestInfo {
        let non_resource = || RequestInfo {
            path: path.to_string(),
            object: None,
        };
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, mut rest): (&str, &str, &[&str]) = match parts.as_slice() {
            ["api", version, rest @ ..] if !rest.is_empty() => ("", version, rest),
            ["apis", group, version, rest @ ..] if !rest.is_empty() => (group, version, rest),
            _ => return non_resource(),
        };
        if rest.first() == Some(&"watch") && rest.len() > 1 {
            rest = &rest[1..];
        }
        let mut object = ObjectRef {
            api_group: group.to_string(),
            api_version: version.to_string(),
            ..ObjectRef::default()
        };
        if rest.first() == Some(&"namespaces") && rest.len() > 1 {
            object.namespace = rest[1].to_string();
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
        object.resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
        object.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
        object.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
        RequestInfo {
            path: path.to_string(),
            object: Some(object),
        }
    }
}

/// An event's `user`.
#[derive(Debug, Clone, Default, Serialize)]
struct UserInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
}

/// One `audit.k8s.io/v1` `Event`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    kind: &'static str,
    api_version: &'static str,
    level: Level,
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: Stage,
    #[serde(rename = "requestURI")]
    request_uri: String,
    verb: String,
    user: UserInfo,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_object: Option<Value>,
    request_received_timestamp: String,
    stage_timestamp: String,
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
    policy: Policy,
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
    fn emit(&self, event: &Event) {
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

/// The middleware's work for one request: `user` is who authentication will find (None: the
/// request will be refused as unauthenticated).
pub async fn observe(
    auditor: &Arc<Auditor>,
    user: Option<User>,
    req: Request,
    next: Next,
) -> Response {
    let received = SystemTime::now();
    let verb = crate::auth::verb(req.method(), req.uri().path(), req.uri().query());
    let info = RequestInfo::of(req.uri().path());
    let decision = auditor.policy.evaluate(user.as_ref(), &verb, &info);
    if decision.level == Level::None {
        return next.run(req).await;
    }
    let mut event = Event {
        kind: "Event",
        api_version: AUDIT_API_VERSION,
        level: decision.level,
        audit_id: crate::resources::new_uid(),
        stage: Stage::RequestReceived,
        request_uri: req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| req.uri().path().to_string()),
        verb: verb.clone(),
        user: user
            .as_ref()
            .map(|u| UserInfo {
                username: u.name.clone(),
                uid: u.uid.clone(),
                groups: u.groups.clone(),
            })
            .unwrap_or_default(),
        source_ips: source_ips(
            req.headers(),
            req.extensions().get::<ConnectInfo<SocketAddr>>(),
        ),
        user_agent: user_agent(req.headers()),
        object_ref: info.object.clone(),
        response_status: None,
        request_object: None,
        response_object: None,
        request_received_timestamp: micro_time(received),
        stage_timestamp: String::new(),
    };
    let omitted = |stage: Stage| decision.omit_stages.contains(&stage);

    // The body: for `Request` and above, and for a create's object name. Only for requests that
    // will be authenticated (others are refused without reading it).
    let has_body = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let req =
        if user.is_some() && has_body && (decision.level >= Level::Request || verb == "create") {
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
                Ok(bytes) => bytes,
                Err(_) => {
                    let response = ApiError::new(
                        413,
                        "RequestEntityTooLarge",
                        format!("Request entity too large: limit is {MAX_BODY_BYTES}"),
                    )
                    .into_response();
                    event.response_status = Some(json!({"metadata": {}, "code": 413}));
                    complete(auditor, &mut event, &omitted);
                    return response;
                }
            };
            let object = request_json(&parts.headers, &bytes);
            if let (Some(object), Some(object_ref)) = (&object, event.object_ref.as_mut()) {
                fill_from_object(object_ref, object);
            }
            if decision.level >= Level::Request {
                event.request_object = object.map(|mut o| {
                    if decision.omit_managed_fields {
                        drop_managed_fields(&mut o);
                    }
                    o
                });
            }
            Request::from_parts(parts, Body::from(bytes))
        } else {
            req
        };
    if !omitted(Stage::RequestReceived) {
        event.stage_timestamp = micro_time(SystemTime::now());
        auditor.emit(&event);
    }

    let response = next.run(req).await;
    let code = response.status().as_u16();
    event.response_status = Some(json!({"metadata": {}, "code": code}));

    if verb == "watch" && response.status().is_success() {
        // Long-running: ResponseStarted now, ResponseComplete when the stream ends.
        if !omitted(Stage::ResponseStarted) {
            event.stage = Stage::ResponseStarted;
            event.stage_timestamp = micro_time(SystemTime::now());
            auditor.emit(&event);
        }
        if omitted(Stage::ResponseComplete) {
            return response;
        }
        let guard = CompleteOnDrop {
            auditor: auditor.clone(),
            event: Some(event),
        };
        let (parts, body) = response.into_parts();
        let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _alive = &guard;
            chunk
        }));
        return Response::from_parts(parts, body);
    }

    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let wants_body = is_json && (decision.level >= Level::RequestResponse || code >= 400);
    if !wants_body {
        complete(auditor, &mut event, &omitted);
        return response;
    }
    // Every answer but a watch is a complete body in memory already; this only reads it.
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if let Ok(mut object) = serde_json::from_slice::<Value>(&bytes) {
        if object["kind"] == "Status" {
            let mut status = json!({"metadata": {}, "code": code});
            for field in ["status", "message", "reason", "details"] {
                if let Some(v) = object.get(field) {
                    status[field] = v.clone();
                }
            }
            event.response_status = Some(status);
        }
        if decision.level >= Level::RequestResponse {
            if decision.omit_managed_fields {
                drop_managed_fields(&mut object);
            }
            event.response_object = Some(object);
        }
    }
    complete(auditor, &mut event, &omitted);
    Response::from_parts(parts, Body::from(bytes))
}

fn complete(auditor: &Auditor, event: &mut Event, omitted: &impl Fn(Stage) -> bool) {
    if omitted(Stage::ResponseComplete) {
        return;
    }
    event.stage = Stage::ResponseComplete;
    event.stage_timestamp = micro_time(SystemTime::now());
    auditor.emit(event);
}

/// Logs a watch's `ResponseComplete` when its response stream is dropped (ended or closed).
struct CompleteOnDrop {
    auditor: Arc<Auditor>,
    event: Option<Event>,
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            complete(&self.auditor, &mut event, &|_| false);
        }
    }
}

/// The request body as JSON (YAML bodies converted; protobuf and unreadable bodies: None).
fn request_json(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.contains("yaml") {
        let text = std::str::from_utf8(body).ok()?;
        return serde_json::from_str(&crate::yaml::yaml_to_json(text).ok()?).ok();
    }
    serde_json::from_slice(body).ok()
}

/// A create names its object in the body (kube-apiserver completes `objectRef` from it).
fn fill_from_object(object_ref: &mut ObjectRef, object: &Value) {
    let meta = &object["metadata"];
    if object_ref.name.is_empty()
        && let Some(name) = meta["name"].as_str()
    {
        object_ref.name = name.to_string();
    }
    if object_ref.namespace.is_empty()
        && let Some(namespace) = meta["namespace"].as_str()
    {
        object_ref.namespace = namespace.to_string();
    }
}

/// `omitManagedFields`: drops `metadata.managedFields` of an object or of a list's items.
fn drop_managed_fields(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(meta) = item.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
        }
    }
}

/// `X-Forwarded-For`, `X-Real-Ip`, then the peer, without repeats (apimachinery's
/// `SourceIPs`).
fn source_ips(headers: &HeaderMap, peer: Option<&ConnectInfo<SocketAddr>>) -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    let mut add = |ip: &str| {
        if let Ok(ip) = ip.trim().parse::<std::net::IpAddr>() {
            let ip = ip.to_string();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    };
    if let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        forwarded.split(',').for_each(&mut add);
    }
    if let Some(real) = headers.get("x-real-ip").and_then(|v| v.to_str().ok()) {
        add(real);
    }
    if let Some(ConnectInfo(peer)) = peer {
        add(&peer.ip().to_string());
    }
    ips
}

fn user_agent(headers: &HeaderMap) -> String {
    let agent = headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if agent.len() <= MAX_USER_AGENT {
        return agent;
    }
    let mut cut = MAX_USER_AGENT;
    while !agent.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...TRUNCATED", &agent[..cut])
}

/// metav1.MicroTime: RFC 3339 in UTC with microseconds.
fn micro_time(at: SystemTime) -> String {
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

/// The log's destination, with lumberjack's size-based rotation for files.
enum Sink {
    Stdout(std::io::Stdout),
    File(RotatingFile),
}

struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    /// Bytes before rotation; 0 = never.
    max_size: u64,
    /// Rotated files kept; 0 = all.
    max_backups: usize,
}

impl Sink {
    fn open(config: &AuditConfig) -> Result<Sink, AuditError> {
        if config.log_path.as_os_str() == "-" {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        let path = config.log_path.clone();
        let (file, size) = open_log(&path).map_err(|message| AuditError::Log {
            path: path.display().to_string(),
            message,
        })?;
        Ok(Sink::File(RotatingFile {
            path,
            file: BufWriter::new(file),
            size,
            max_size: config.max_size_mb.saturating_mul(1 << 20),
            max_backups: config.max_backups,
        }))
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.lock().write_all(line),
            Sink::File(f) => {
                if f.max_size > 0 && f.size > 0 && f.size + line.len() as u64 > f.max_size {
                    f.rotate()?;
                }
                f.file.write_all(line)?;
                f.size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.lock().flush(),
            Sink::File(f) => f.file.flush(),
        }
    }
}

/// Opens (appends to) the log, private to its owner as kube-apiserver's are; creates the
/// directory. Returns the file and its current size.
fn open_log(path: &Path) -> Result<(File, u64), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| e.to_string())?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

impl RotatingFile {
    /// Renames the log to `<name>-<UTC time>.<ext>`, starts a new one, and removes the oldest
    /// backups beyond `max_backups`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let (stem, ext) = self.name_parts();
        let now = micro_time(SystemTime::now());
        // 2006-01-02T15-04-05.000, as lumberjack names backups.
        let stamp = format!("{}{}", &now[..19].replace(':', "-"), &now[19..23]);
        let backup = self.dir().join(format!("{stem}-{stamp}{ext}"));
        std::fs::rename(&self.path, &backup)?;
        let (file, size) = open_log(&self.path).map_err(std::io::Error::other)?;
        self.file = BufWriter::new(file);
        self.size = size;
        if self.max_backups > 0 {
            let mut backups: Vec<PathBuf> = std::fs::read_dir(self.dir())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(&ext))
                })
                .collect();
            backups.sort();
            let excess = backups.len().saturating_sub(self.max_backups);
            for old in &backups[..excess] {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// (`audit`, `.log`) for `audit.log`.
    fn name_parts(&self) -> (String, String) {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        (stem, ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: "1".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn urls_are_read_like_request_info() {
        let o = |path: &str| RequestInfo::of(path).object;
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
    fn the_first_matching_rule_decides() {
        let policy = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: ["system:kube-proxy"]
  verbs: [watch]
- level: None
  nonResourceURLs: ["/healthz*", /version]
- level: Metadata
  resources:
  - group: ""
    resources: [secrets, configmaps/status]
- level: RequestResponse
  resources:
  - group: ""
    resources: [configmaps]
  namespaces: [kube-system, default]
- level: Request
  userGroups: [dev]
  resources:
  - group: apps
    resources: ["*/scale"]
- level: Metadata
  omitStages: [ResponseStarted]
"#,
        )
        .unwrap();
        let admin = user("admin", &["system:masters"]);
        let dev = user("jane", &["dev"]);
        let proxy = user("system:kube-proxy", &[]);
        let level = |u: &User, verb: &str, path: &str| {
            policy.evaluate(Some(u), verb, &RequestInfo::of(path)).level
        };
        assert_eq!(level(&proxy, "watch", "/api/v1/pods"), Level::None);
        assert_eq!(level(&proxy, "list", "/api/v1/pods"), Level::Metadata);
        assert_eq!(level(&admin, "get", "/healthz/etcd"), Level::None);
        assert_eq!(level(&admin, "get", "/version"), Level::None);
        assert_eq!(
            level(&admin, "get", "/api/v1/namespaces/default/secrets/s"),
            Level::Metadata
        );
        assert_eq!(
            level(&admin, "create", "/api/v1/namespaces/default/configmaps"),
            Level::RequestResponse
        );
        assert_eq!(
            level(
                &admin,
                "update",
                "/api/v1/namespaces/default/configmaps/c/status"
            ),
            Level::Metadata
        );
        assert_eq!(
            level(&admin, "create", "/api/v1/namespaces/other/configmaps"),
            Level::Metadata
        );
        assert_eq!(
            level(
                &dev,
                "update",
                "/apis/apps/v1/namespaces/d/deployments/w/scale"
            ),
            Level::Request
        );
        assert_eq!(
            level(
                &admin,
                "update",
                "/apis/apps/v1/namespaces/d/deployments/w/scale"
            ),
            Level::Metadata
        );
        // The policy's omitted stages join each rule's.
        let last = policy.evaluate(Some(&admin), "get", &RequestInfo::of("/openapi/v3"));
        assert_eq!(
            last.omit_stages,
            vec![Stage::ResponseStarted, Stage::RequestReceived]
        );
        // No rule matches: not logged.
        let narrow = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  users: [alice]\n",
        )
        .unwrap();
        assert_eq!(
            narrow
                .evaluate(None, "get", &RequestInfo::of("/api/v1/pods"))
                .level,
            Level::None
        );
        assert_eq!(
            Policy::metadata_for_everything()
                .evaluate(None, "get", &RequestInfo::of("/version"))
                .level,
            Level::Metadata
        );
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let err = |rules: &str| {
            Policy::parse(&format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\n{rules}"
            ))
            .unwrap_err()
        };
        assert!(err("rules: []\n").contains("0 rules"));
        assert!(err("rules:\n- level: Everything\n").contains("Everything"));
        assert!(
            err("rules:\n- level: None\n  nonResourceURLs: [healthz]\n")
                .contains("must begin with a '/'")
        );
        assert!(
            err("rules:\n- level: None\n  nonResourceURLs: ['/a*b']\n").contains("final character")
        );
        assert!(
            err("rules:\n- level: None\n  nonResourceURLs: [/a]\n  namespaces: [x]\n")
                .contains("both regular resources and non-resource URLs")
        );
        assert!(err("rules:\n- level: None\n  userz: [a]\n").contains("userz"));
        assert!(err("omitStages: [Sometimes]\nrules:\n- level: None\n").contains("Sometimes"));
        assert!(
            Policy::parse(
                "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules: [{level: None}]\n"
            )
            .unwrap_err()
            .contains("apiVersion")
        );
    }

    #[test]
    fn events_look_like_kube_apiserver_s() {
        let event = Event {
            kind: "Event",
            api_version: AUDIT_API_VERSION,
            level: Level::Metadata,
            audit_id: crate::resources::new_uid(),
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
            object_ref: RequestInfo::of("/api/v1/namespaces/d/configmaps").object,
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

    #[test]
    fn source_ips_and_user_agents_are_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "10.0.0.1, 10.0.0.2, bogus".parse().unwrap(),
        );
        headers.insert(header::USER_AGENT, "a".repeat(2000).parse().unwrap());
        let peer = ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5000)));
        assert_eq!(
            source_ips(&headers, Some(&peer)),
            vec!["10.0.0.1", "10.0.0.2", "127.0.0.1"]
        );
        let agent = user_agent(&headers);
        assert!(agent.ends_with("...TRUNCATED") && agent.len() == 1024 + 12);
    }

    #[test]
    fn the_log_rotates_and_keeps_max_backups() {
        let dir = tempfile_dir();
        let config = AuditConfig {
            log_path: dir.join("audit.log"),
            policy: None,
            max_size_mb: 1,
            max_backups: 2,
        };
        let mut sink = Sink::open(&config).unwrap();
        let line = vec![b'x'; 300 << 10];
        for _ in 0..12 {
            sink.write(&line).unwrap();
            // Distinct backup names (millisecond stamps).
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        sink.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().any(|n| n == "audit.log"));
        assert!(
            names
                .iter()
                .all(|n| n == "audit.log" || (n.starts_with("audit-") && n.ends_with(".log")))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("audit.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("skiff-audit-test-{}", crate::resources::new_uid()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! The audit filter (outside authentication, so refused requests are logged too): evaluates
//! the policy on the request's [`RequestInfo`], and hands the `RequestReceived`,
//! `ResponseStarted` (watches) and `ResponseComplete` events to the [`Auditor`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::audit::{
    AUDIT_API_VERSION, Auditor, Event, Level, ObjectRef, Stage, UserInfo, micro_time,
};
use crate::auth::User;
use crate::filters::authn::Authenticator;
use crate::limits::MAX_BODY_BYTES;
use crate::request_info::RequestInfo;
use crate::status::ApiError;

/// kube-apiserver truncates longer user agents.
const MAX_USER_AGENT: usize = 1024;

/// What the audit filter needs: the log, and the authenticator (to name the user authentication
/// will find).
#[derive(Clone)]
pub struct AuditFilter {
    pub auditor: Option<Arc<Auditor>>,
    pub authenticator: Arc<Authenticator>,
}

/// The filter: without `--audit-log-path` it only passes the request on.
pub async fn audit(State(filter): State<AuditFilter>, req: Request, next: Next) -> Response {
    let Some(auditor) = &filter.auditor else {
        return next.run(req).await;
    };
    let user = filter.authenticator.authenticate(&req);
    observe(auditor, user, req, next).await
}

/// The middleware's work for one request: `user` is who authentication will find (None: the
/// request will be refused as unauthenticated).
async fn observe(auditor: &Arc<Auditor>, user: Option<User>, req: Request, next: Next) -> Response {
    let received = SystemTime::now();
    let info = req
        .extensions()
        .get::<RequestInfo>()
        .cloned()
        .unwrap_or_default();
    let verb = info.verb.clone();
    let decision = auditor.policy.evaluate(user.as_ref(), &info);
    if decision.level == Level::None {
        return next.run(req).await;
    }
    let mut event = Event {
        kind: "Event",
        api_version: AUDIT_API_VERSION,
        level: decision.level,
        audit_id: crate::ids::new_uid(),
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
        object_ref: ObjectRef::of(&info),
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
                    let response = ApiError::body_too_large().into_response();
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

    if info.is_watch && response.status().is_success() {
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
        return serde_json::from_str(&crate::filters::yaml::yaml_to_json(text).ok()?).ok();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! The pod subresources a kubelet serves, proxied to the pod's node (kube-apiserver's
//! `pods/log` `LocationStreamer` and the `UpgradeAwareHandler` behind `pods/exec`,
//! `pods/attach`, `pods/portforward`):
//!
//! - resolve: the pod → its container (defaulted when it has one, else named) → its
//!   `spec.nodeName` → the Node → the kubelet's address (the first `status.addresses` entry of
//!   the first `--kubelet-preferred-address-types` type that has one) and port
//!   (`status.daemonEndpoints.kubeletEndpoint.Port`, else 10250);
//! - `log`: `GET /containerLogs/<ns>/<pod>/<container>?<the log parameters>`, the kubelet's
//!   body streamed back as it arrives (a `follow` until either side closes);
//! - `exec`, `attach`, `portforward`: the client's upgrade request (WebSocket or SPDY) replayed
//!   to `/exec/…`, `/attach/…`, `/portForward/…`; on the kubelet's 101 the client gets a 101
//!   with the kubelet's handshake headers and the two upgraded streams are spliced.
//!
//! The kubelet's non-success answers keep their code, and their body becomes the message.
//! The pure parts (address choice, container defaulting, paths and queries, error wording)
//! are functions over JSON, unit-tested in `node_proxy/tests.rs` with a fake kubelet.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::kubelet::{KUBELET_PORT_DEFAULT, KubeletAddress, KubeletClient};
use super::strategy::Subresource;
use super::{ApiResult, Registry};
use crate::request_info::RequestInfo;
use crate::status::{ApiError, Reason};

/// The most of a kubelet's error body read into the `Status` message.
const NODE_ERROR_BODY_MAX_BYTES: usize = 64 << 10;

/// The `pods/log` query parameters the kubelet is given (`PodLogOptions` minus `container`,
/// which is in the path, and `insecureSkipTLSVerifyBackend`, which this client ignores).
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "tailLines",
    "limitBytes",
    "stream",
];

/// Parameters that are the API server's, never forwarded to a kubelet.
const API_SERVER_PARAMS: &[&str] = &["container", "insecureSkipTLSVerifyBackend", "pretty"];

/// The client headers an upgrade request carries to the kubelet (never `Authorization`: the
/// kubelet authenticates the API server by its client certificate).
const UPGRADE_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
    "user-agent",
];

/// The kubelet's 101 headers the client gets.
const UPGRADE_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Whether a request is for one of the subresources this module serves (checked before its
/// body is read: an upgrade request's connection must stay untouched).
pub fn is_node_proxy(info: &RequestInfo) -> bool {
    info.is_resource_request
        && info.api_group.is_empty()
        && info.resource == "pods"
        && (info.subresource == "log"
            || crate::request_info::is_pod_connect_subresource(&info.subresource))
}

/// The kubelet address of a Node: the first address of the first preferred type that has
/// one (`Hostname` falls back to the `kubernetes.io/hostname` label, as upstream's
/// `GetPreferredNodeAddress`).
pub fn preferred_address(node: &Value, preferred: &[String]) -> Result<String, ApiError> {
    let addresses = node["status"]["addresses"].as_array();
    for kind in preferred {
        let found = addresses.into_iter().flatten().find_map(|a| {
            (a["type"].as_str() == Some(kind.as_str()))
                .then(|| a["address"].as_str())
                .flatten()
                .filter(|s| !s.is_empty())
        });
        if let Some(address) = found {
            return Ok(address.to_string());
        }
        if kind == "Hostname"
            && let Some(host) = node["metadata"]["labels"]["kubernetes.io/hostname"]
                .as_str()
                .filter(|s| !s.is_empty())
        {
            return Ok(host.to_string());
        }
    }
    let known: Vec<String> = addresses
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{{{} {}}}",
                a["type"].as_str().unwrap_or(""),
                a["address"].as_str().unwrap_or("")
            )
        })
        .collect();
    Err(ApiError::internal(format!(
        "no preferred addresses found; known addresses: [{}]",
        known.join(" ")
    )))
}

/// The kubelet port a Node reports, else 10250.
pub fn kubelet_port(node: &Value) -> u16 {
    node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(KUBELET_PORT_DEFAULT)
}

fn container_names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// The container a request addresses: the one named (it must be the pod's: init, regular or
/// ephemeral), else the pod's only container. `for_logs` picks upstream's wording for logs
/// (`validateContainer`, every container in one list) over the streams' (`streamLocation`,
/// init containers listed apart).
pub fn choose_container(
    pod: &Value,
    name: &str,
    requested: Option<&str>,
    for_logs: bool,
) -> Result<String, ApiError> {
    let init = container_names(pod, "initContainers");
    let regular = container_names(pod, "containers");
    let ephemeral = container_names(pod, "ephemeralContainers");
    if let Some(requested) = requested.filter(|c| !c.is_empty()) {
        let known = init.iter().chain(&regular).chain(&ephemeral);
        if !known.into_iter().any(|c| c == requested) {
            return Err(ApiError::bad_request(format!(
                "container {requested} is not valid for pod {name}"
            )));
        }
        return Ok(requested.to_string());
    }
    match regular.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(ApiError::bad_request(format!(
            "pod {name} does not have a container"
        ))),
        _ if for_logs => {
            let all: Vec<&String> = init.iter().chain(&regular).chain(&ephemeral).collect();
            Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            )))
        }
        _ => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                regular.join(" ")
            );
            if !init.is_empty() {
                message += &format!(" or one of the init containers: [{}]", init.join(" "));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The raw `key=value` pairs of a query, in order, whose key `keep` accepts (values stay as
/// the client encoded them).
fn filter_query(raw: Option<&str>, keep: impl Fn(&str) -> bool) -> String {
    raw.unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| keep(pair.split('=').next().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("&")
}

/// The query the kubelet gets: the log parameters for `log`; for the streams everything
/// but the API server's own parameters.
pub fn kubelet_query(sub: Subresource, raw: Option<&str>) -> String {
    match sub {
        Subresource::Log => filter_query(raw, |key| LOG_PARAMS.contains(&key)),
        _ => filter_query(raw, |key| !API_SERVER_PARAMS.contains(&key)),
    }
}

/// The kubelet's path and query for a subresource (`container` is None for portforward).
pub fn kubelet_path(
    sub: Subresource,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    query: &str,
) -> String {
    let endpoint = match sub {
        Subresource::Log => "containerLogs",
        Subresource::Exec => "exec",
        Subresource::Attach => "attach",
        _ => "portForward",
    };
    let mut path = format!("/{endpoint}/{namespace}/{pod}");
    if let Some(container) = container {
        path = format!("{path}/{container}");
    }
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    path
}

/// A kubelet's answer other than success: its JSON `Status` as it is, else a `Status` of its
/// code with its body (or the code's text) as the message.
pub fn node_error(code: u16, content_type: Option<&str>, body: &[u8]) -> Response {
    if content_type.is_some_and(|ct| ct.contains("json"))
        && serde_json::from_slice::<Value>(body).is_ok_and(|v| v["kind"] == "Status")
    {
        let mut response = Response::new(Body::from(body.to_vec()));
        *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let reason = match code {
        400 => Reason::BadRequest,
        401 => Reason::Unauthorized,
        403 => Reason::Forbidden,
        404 => Reason::NotFound,
        405 => Reason::MethodNotAllowed,
        406 => Reason::NotAcceptable,
        409 => Reason::Conflict,
        410 => Reason::Gone,
        413 => Reason::RequestEntityTooLarge,
        415 => Reason::UnsupportedMediaType,
        422 => Reason::Invalid,
        429 => Reason::TooManyRequests,
        503 => Reason::ServiceUnavailable,
        504 => Reason::Timeout,
        c if c >= 500 => Reason::InternalError,
        _ => Reason::BadRequest,
    };
    let text = String::from_utf8_lossy(body).trim().to_string();
    let message = if text.is_empty() {
        format!("the kubelet answered {code}")
    } else {
        text
    };
    ApiError::with_code(code, reason, message).into_response()
}

/// Whether a request asks to switch protocols (`Connection: Upgrade` and an `Upgrade`).
fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[&'static str]) {
    for name in names {
        let name = HeaderName::from_static(name);
        for value in from.get_all(&name) {
            to.append(name.clone(), value.clone());
        }
    }
}

impl Registry {
    /// An object's JSON, or the API's 404.
    async fn object(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let info = self
            .find("", "v1", resource)
            .ok_or_else(|| ApiError::internal(format!("{resource} are not served")))?;
        let stored = self
            .storage
            .get(&self.key(info, namespace, name))
            .await
            .map_err(|e| ApiError::from_storage(e, info.resource, info.group, name))?
            .ok_or_else(|| ApiError::not_found(info.resource, info.group, name))?;
        self.decode(info, &stored)
    }

    /// `pods/log`, `pods/exec`, `pods/attach`, `pods/portforward` (see the module).
    pub async fn node_proxy(
        &self,
        kubelet: &KubeletClient,
        request: &RequestInfo,
        query: &HashMap<String, String>,
        req: Request,
    ) -> ApiResult {
        let t = self.target(request)?;
        let sub = t
            .info
            .strategy
            .subresources()
            .iter()
            .copied()
            .find(|s| Some(s.name()) == t.subresource.as_deref())
            .filter(|s| {
                matches!(
                    s,
                    Subresource::Log
                        | Subresource::Exec
                        | Subresource::Attach
                        | Subresource::PortForward
                )
            })
            .ok_or_else(ApiError::path_not_found)?;
        let allowed = match sub {
            Subresource::Log => *req.method() == Method::GET,
            _ => matches!(*req.method(), Method::GET | Method::POST),
        };
        let (Some(namespace), Some(name), true) =
            (t.namespace.as_deref(), t.name.as_deref(), allowed)
        else {
            return Err(ApiError::method_not_allowed());
        };
        let raw_query = req.uri().query();
        if sub == Subresource::Exec
            && !raw_query
                .unwrap_or("")
                .split('&')
                .any(|pair| pair.split('=').next() == Some("command"))
        {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        let pod = self.object("pods", Some(namespace), name).await?;
        let container = match sub {
            Subresource::PortForward => None,
            _ => Some(choose_container(
                &pod,
                name,
                query.get("container").map(String::as_str),
                sub == Subresource::Log,
            )?),
        };
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if node_name.is_empty() {
            if sub == Subresource::Log {
                // kube-apiserver: no host yet, so no location and an empty log.
                return Ok(([(header::CONTENT_TYPE, "text/plain")], "").into_response());
            }
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        let node = self.object("nodes", None, node_name).await?;
        let address = KubeletAddress {
            host: preferred_address(&node, &kubelet.preferred_address_types)?,
            port: kubelet_port(&node),
        };
        let path = kubelet_path(
            sub,
            namespace,
            name,
            container.as_deref(),
            &kubelet_query(sub, raw_query),
        );
        match sub {
            Subresource::Log => stream_log(kubelet, &address, &path, query).await,
            _ => upgrade(kubelet, &address, &path, req).await,
        }
    }
}

/// `GET /containerLogs/…`: the kubelet's 200 body streamed as it arrives.
async fn stream_log(
    kubelet: &KubeletClient,
    address: &KubeletAddress,
    path: &str,
    query: &HashMap<String, String>,
) -> ApiResult {
    let follow = query
        .get("follow")
        .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "True" | "TRUE" | "t" | "T"));
    let req = axum::http::Request::get(path)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // A follow may wait for the first line: only the connection is bounded then.
    let response = kubelet
        .send(address, req, !follow)
        .await
        .map_err(|e| ApiError::internal(e.0))?;
    if !response.status().is_success() {
        return Ok(read_node_error(response).await);
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("text/plain"));
    let mut out = Response::new(Body::new(response.into_body()));
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(out)
}

async fn read_node_error(response: axum::http::Response<hyper::body::Incoming>) -> Response {
    let code = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = axum::body::to_bytes(Body::new(response.into_body()), NODE_ERROR_BODY_MAX_BYTES)
        .await
        .unwrap_or_default();
    node_error(code, content_type.as_deref(), &body)
}

/// The upgrade-aware proxy: the client's upgrade request replayed to the kubelet; on its 101
/// the client gets a 101 with its handshake headers and the upgraded streams are spliced in a
/// task that ends when either side closes.
async fn upgrade(
    kubelet: &KubeletClient,
    address: &KubeletAddress,
    path: &str,
    mut req: Request,
) -> ApiResult {
    if !is_upgrade(req.headers()) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    // Present only on an HTTP/1.1 connection served with upgrades.
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut node_req = axum::http::Request::builder()
        .method(req.method().clone())
        .uri(path)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    copy_headers(
        req.headers(),
        node_req.headers_mut(),
        UPGRADE_REQUEST_HEADERS,
    );
    let mut response = kubelet.send(address, node_req, true).await.map_err(|e| {
        // kube-apiserver's UpgradeAwareHandler wording.
        let why = e.0.split_once(": ").map_or(e.0.as_str(), |(_, why)| why);
        ApiError::internal(format!("error dialing backend: {why}"))
    })?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(read_node_error(response).await);
    }
    let node_upgrade = hyper::upgrade::on(&mut response);
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    copy_headers(
        response.headers(),
        out.headers_mut(),
        UPGRADE_RESPONSE_HEADERS,
    );
    tokio::spawn(async move {
        let (client, node) = match tokio::try_join!(client_upgrade, node_upgrade) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade to the kubelet stream failed");
                return;
            }
        };
        let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
            tracing::debug!(error = %e, "kubelet stream ended with an error");
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests;

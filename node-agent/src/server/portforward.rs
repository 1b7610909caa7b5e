//! `/portForward/{namespace}/{pod}`: kubelet's port-forward over SPDY/3.1
//! (`crate::portforward`). kubectl first asks for a WebSocket tunnel; that is answered with a
//! plain 400, which makes it fall back to SPDY (client-go's fallback dialer), so only the
//! SPDY upgrade is served.

use std::sync::Arc;

use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::pods::{pod_dir, valid_name};
use super::{Peer, Shared, deny, query, text};
use crate::portforward;

pub(crate) async fn handler(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<Peer>>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    mut request: Request,
) -> Response {
    if let Some(denied) = deny(&shared, peer) {
        return denied;
    }
    let headers = request.headers();
    if !portforward::wants_spdy(headers) {
        return text(
            StatusCode::BAD_REQUEST,
            "port-forward needs an upgrade to SPDY/3.1 (WebSocket tunnels are not served)".into(),
        );
    }
    if !portforward::protocol_supported(headers) {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "no supported port-forward protocol (want {})",
                portforward::PROTOCOL_V1
            ),
        );
    }
    if !valid_name(&namespace) || !valid_name(&pod) {
        return text(
            StatusCode::BAD_REQUEST,
            "invalid namespace or pod name".into(),
        );
    }
    let Some((uid, _)) = pod_dir(&shared.config.logs_dir, &namespace, &pod) else {
        return text(StatusCode::NOT_FOUND, format!("pods {pod:?} not found"));
    };
    let netns = shared
        .config
        .netns_dir
        .join(format!("{}{uid}", shared.config.netns_prefix));
    let mut ports = Vec::new();
    for (key, value) in query::parse(raw.as_deref().unwrap_or_default()) {
        if key == "port" {
            match value.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return text(StatusCode::BAD_REQUEST, format!("invalid port {value:?}")),
            }
        }
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                if let Err(e) = portforward::serve_spdy(io, netns, uid, ports).await {
                    tracing::debug!(error = %e, "port-forward session ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    for (name, value) in portforward::upgrade_response_headers() {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

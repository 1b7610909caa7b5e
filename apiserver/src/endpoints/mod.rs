//! The handlers behind the filters: resource requests go to the registry, the rest is
//! discovery (`/api`, `/apis`, `/version`), OpenAPI, health, and the gRPC API over the same
//! router.

pub mod discovery;
pub mod grpc;
pub mod health;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, FromRequest, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};

use crate::registry::kubelet::KubeletClient;
use crate::registry::{self, Registry, resources};
use crate::request_info::RequestInfo;
use crate::selector::QueryParams;
use crate::status::ApiError;
use crate::storage::etcd::EtcdClient;

/// What the handlers share.
pub struct Handlers {
    pub registry: Arc<Registry>,
    /// For the health checks' `etcd` check.
    pub etcd: EtcdClient,
    /// The client of the pod subresources proxied to kubelets.
    pub kubelet: Arc<KubeletClient>,
}

/// Every route but `/metrics` (the server adds it, with the filters around all of them).
pub fn routes(handlers: Arc<Handlers>) -> Router {
    Router::new()
        .route("/version", get(|| async { Json(discovery::version()) }))
        // kube-apiserver answers these with a trailing slash too (the Python client's
        // `VersionApi` asks for `/version/`).
        .route("/version/", get(|| async { Json(discovery::version()) }))
        .route("/healthz", get(health_root))
        .route("/healthz/{check}", get(health_check))
        .route("/livez", get(health_root))
        .route("/livez/{check}", get(health_check))
        .route("/readyz", get(health_root))
        .route("/readyz/{check}", get(health_check))
        .route("/api", any(serve_api))
        .route("/api/", any(serve_api))
        .route("/api/{*rest}", any(serve_api))
        .route("/apis", any(serve_api))
        .route("/apis/", any(serve_api))
        .route("/apis/{*rest}", any(serve_api))
        .route("/openapi/v3", get(openapi_v3))
        .route("/openapi/v3/{*path}", get(openapi_v3_doc))
        .fallback(|| async { not_found().into_response() })
        .with_state(handlers)
}

/// `/api…` and `/apis…`: a resource request goes to the registry, any other path is discovery.
/// The subresources proxied to a kubelet get the request itself (an upgrade needs it whole).
async fn serve_api(
    State(state): State<Arc<Handlers>>,
    Extension(info): Extension<RequestInfo>,
    method: Method,
    QueryParams(query): QueryParams,
    headers: HeaderMap,
    req: Request,
) -> Response {
    if registry::node_proxy::is_node_proxy(&info) {
        return state
            .registry
            .node_proxy(&state.kubelet, &info, &query, req)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let body = match Bytes::from_request(req, &()).await {
        Ok(body) => body,
        Err(rejection) => return rejection.into_response(),
    };
    let result = if info.is_resource_request {
        registry::dispatch(
            state.registry.clone(),
            &info,
            &method,
            &query,
            &headers,
            &body,
        )
        .await
    } else {
        discovery_document(&state.registry.resources, &info.path, &headers)
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`.
fn discovery_document(
    resources: &[resources::ResourceInfo],
    path: &str,
    headers: &HeaderMap,
) -> registry::ApiResult {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let json =
        |doc: Option<serde_json::Value>| doc.map(|d| Json(d).into_response()).ok_or_else(not_found);
    match segments.as_slice() {
        ["api"] if wants_aggregated(headers) => Ok(aggregated(resources, true)),
        ["api"] => json(Some(discovery::api_versions())),
        ["api", "v1"] => json(discovery::api_resource_list(resources, "", "v1")),
        ["apis"] if wants_aggregated(headers) => Ok(aggregated(resources, false)),
        ["apis"] => json(Some(discovery::api_group_list(resources))),
        ["apis", group] => json(discovery::api_group(resources, group)),
        ["apis", group, version] => json(discovery::api_resource_list(resources, group, version)),
        _ => Err(not_found()),
    }
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(discovery::wants_aggregated)
}

/// Aggregated discovery, with the exact content type client-go looks for.
fn aggregated(resources: &[resources::ResourceInfo], core: bool) -> Response {
    (
        [(header::CONTENT_TYPE, discovery::AGGREGATED_DISCOVERY)],
        Json(discovery::aggregated(resources, core)),
    )
        .into_response()
}

fn not_found() -> ApiError {
    ApiError::path_not_found()
}

async fn openapi_v3(State(state): State<Arc<Handlers>>) -> Response {
    Json(discovery::openapi_index(&state.registry.resources)).into_response()
}

async fn openapi_v3_doc(
    State(state): State<Arc<Handlers>>,
    UrlPath(path): UrlPath<String>,
) -> Response {
    let segments: Vec<&str> = path.split('/').collect();
    let (group, version) = match segments.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return not_found().into_response(),
    };
    match discovery::openapi_group_version(&state.registry.resources, group, version) {
        Some(doc) => ([(header::CACHE_CONTROL, "public, immutable")], Json(doc)).into_response(),
        None => not_found().into_response(),
    }
}

/// `/healthz`, `/livez`, `/readyz`: every check, listed with `?verbose` or on failure.
async fn health_root(State(state): State<Arc<Handlers>>, uri: axum::http::Uri) -> Response {
    let endpoint = uri.path().trim_start_matches('/');
    health::root(endpoint, uri.query(), &state.etcd).await
}

/// `/readyz/<check>` (and the same under `/livez`, `/healthz`): one check.
async fn health_check(
    State(state): State<Arc<Handlers>>,
    uri: axum::http::Uri,
    UrlPath(check): UrlPath<String>,
) -> Response {
    let endpoint = uri.path().trim_start_matches('/');
    let endpoint = endpoint.split('/').next().unwrap_or_default();
    health::single(endpoint, &check, &state.etcd).await
}

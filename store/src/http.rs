//! Plain HTTP endpoints etcd serves next to gRPC on the client port: `/health`,
//! `/version`, `/metrics` (Prometheus text: etcd's metrics with etcd's names, see
//! [`crate::metrics`]), plus `/readyz` and `/livez`.
//!
//! The client port tells the two apart as etcd does (cmux on the connection, then grpc-go's
//! handler check): a request is gRPC only if it is HTTP/2 with a gRPC content type
//! (`application/grpc`, `application/grpc+proto`, `application/grpc;...`). Anything else
//! goes to the HTTP endpoints, and a path none of them serves, a gRPC method's included,
//! is Go's plain `404 page not found` — never a gRPC call.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceExt;

use crate::grpc::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::node::StoreNode;

/// The HTTP routes, sharing the member handle.
pub fn routes(node: Arc<StoreNode>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(live))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(node)
}

/// The client port's router: gRPC requests go to `grpc`, every other request to `http`
/// (whose fallback answers 404), so an HTTP/1.1 POST to a gRPC method never runs it.
pub fn client_port(grpc: Router, http: Router) -> Router {
    grpc.layer(axum::middleware::from_fn_with_state(http, grpc_or_http))
}

async fn grpc_or_http(State(http): State<Router>, request: Request, next: Next) -> Response {
    if is_grpc(&request) {
        return next.run(request).await;
    }
    match http.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// grpc-go's test: HTTP/2 and a content type of `application/grpc`, optionally followed
/// by `+subtype` or `;parameters` (so `application/grpc-web` is not gRPC).
pub fn is_grpc(request: &Request) -> bool {
    if request.version() != Version::HTTP_2 {
        return false;
    }
    let Some(content_type) = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
    else {
        return false;
    };
    match content_type.strip_prefix(b"application/grpc") {
        Some(rest) => matches!(rest.first(), None | Some(b'+' | b';')),
        None => false,
    }
}

/// How much of an unserved request's body is read before the 404 goes out (Go's server
/// reads up to 256 KiB of what a handler left unread, for the same reason).
const NOT_FOUND_DRAIN_LIMIT: usize = 256 * 1024;

/// Go's `http.NotFound`, which etcd answers for any path its HTTP mux does not serve.
///
/// The request's body is read first (up to [`NOT_FOUND_DRAIN_LIMIT`]): answering an HTTP/2
/// request while its body is still arriving ends the stream with a reset, which some
/// clients (curl among them) report as a failed transfer instead of the 404.
async fn not_found(request: Request) -> impl IntoResponse {
    // A body over the limit, or one the client aborts, still gets the 404.
    let _ = axum::body::to_bytes(request.into_body(), NOT_FOUND_DRAIN_LIMIT).await;
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "404 page not found\n",
    )
}

async fn health(State(node): State<Arc<StoreNode>>) -> impl IntoResponse {
    let (code, body) = if node.current_leader().is_some() {
        (StatusCode::OK, r#"{"health":"true","reason":""}"#)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#,
        )
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn live() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn version() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#),
    )
}

/// The highest log index a quorum of voters has: what this member knows committed (its
/// last applied index when it does not lead: it applies all that the leader told it).
fn committed_index(m: &openraft::RaftMetrics<crate::types::MemberId, crate::types::Member>) -> u64 {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let Some(replication) = &m.replication else {
        return applied;
    };
    let mut matched: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .map(|id| match replication.get(&id) {
            Some(Some(log_id)) => log_id.index,
            _ if id == m.id => applied,
            _ => 0,
        })
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[matched.len() / 2].max(applied)
}

/// etcd's `version.Cluster`: `major.minor` of a version.
fn major_minor(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

async fn metrics(State(node): State<Arc<StoreNode>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let m = node.raft.metrics().borrow().clone();
    let (revision, compacted, keys) = {
        let state = node.sm.read();
        (
            state.mvcc.current_revision(),
            state.mvcc.compact_revision(),
            state.mvcc.live_keys(),
        )
    };
    let engine = node.sm.engine();
    let db_size = engine.size_bytes() as f64;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, labels: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}"
        );
    };
    let gauge = "gauge";
    let counter = "counter";
    metric(
        "etcd_cluster_version",
        gauge,
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        &format!(
            "{{cluster_version=\"{}\"}}",
            major_minor(ETCD_CLUSTER_VERSION)
        ),
        1.0,
    );
    metric(
        "etcd_debugging_mvcc_compact_revision",
        gauge,
        "The revision of the last compaction in store.",
        "",
        compacted as f64,
    );
    metric(
        "etcd_debugging_mvcc_current_revision",
        gauge,
        "The current revision of store.",
        "",
        revision as f64,
    );
    metric(
        "etcd_debugging_mvcc_db_total_size_in_bytes",
        gauge,
        "Total size of the underlying database physically allocated in bytes.",
        "",
        db_size,
    );
    metric(
        "etcd_debugging_mvcc_keys_total",
        gauge,
        "Total number of keys.",
        "",
        keys as f64,
    );
    metric(
        "etcd_mvcc_db_total_size_in_bytes",
        gauge,
        "Total size of the underlying database physically allocated in bytes.",
        "",
        db_size,
    );
    metric(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        gauge,
        "Total size of the underlying database logically in use in bytes.",
        "",
        engine.size_in_use_bytes() as f64,
    );
    metric(
        "etcd_server_has_leader",
        gauge,
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        "",
        f64::from(u8::from(node.current_leader().is_some())),
    );
    metric(
        "etcd_server_id",
        gauge,
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        &format!("{{server_id=\"{:x}\"}}", node.id),
        1.0,
    );
    metric(
        "etcd_server_is_leader",
        gauge,
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        "",
        f64::from(u8::from(m.current_leader == Some(node.id))),
    );
    metric(
        "etcd_server_is_learner",
        gauge,
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        "",
        f64::from(u8::from(node.is_learner())),
    );
    metric(
        "etcd_server_leader_changes_seen_total",
        counter,
        "The number of leader changes seen.",
        "",
        crate::metrics::LEADER_CHANGES.load(Relaxed) as f64,
    );
    metric(
        "etcd_server_proposals_applied_total",
        gauge,
        "The total number of consensus proposals applied.",
        "",
        m.last_applied.map_or(0, |l| l.index) as f64,
    );
    metric(
        "etcd_server_proposals_committed_total",
        gauge,
        "The total number of consensus proposals committed.",
        "",
        committed_index(&m) as f64,
    );
    metric(
        "etcd_server_proposals_failed_total",
        counter,
        "The total number of failed proposals seen.",
        "",
        crate::metrics::grpc::PROPOSALS_FAILED.load(Relaxed) as f64,
    );
    metric(
        "etcd_server_proposals_pending",
        gauge,
        "The current number of pending proposals to commit.",
        "",
        crate::metrics::grpc::PROPOSALS_PENDING.load(Relaxed) as f64,
    );
    metric(
        "etcd_server_quota_backend_bytes",
        gauge,
        "Current backend storage quota size in bytes.",
        "",
        node.config.quota_bytes().unwrap_or(0) as f64,
    );
    metric(
        "etcd_server_term",
        gauge,
        "Current Raft term.",
        "",
        m.current_term as f64,
    );
    metric(
        "etcd_server_version",
        gauge,
        "Which version is running. 1 for 'server_version' label with current version.",
        &format!("{{server_version=\"{ETCD_VERSION}\"}}"),
        1.0,
    );
    let writes = engine.write_counts();
    metric(
        "skiff_engine_durable_writes_total",
        counter,
        "Engine writes fsynced before returning (checkpoints, votes, purges).",
        "",
        writes.durable as f64,
    );
    metric(
        "skiff_log_syncs_total",
        counter,
        "Raft log fsyncs, each making every entry appended before it durable (group commit).",
        "",
        node.log_syncs.load(Relaxed) as f64,
    );
    metric(
        "skiff_engine_buffered_writes_total",
        counter,
        "Engine writes made durable by a later fsync (state machine applies).",
        "",
        writes.buffered as f64,
    );
    crate::metrics::WAL_FSYNC.render(
        &mut out,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
    );
    crate::metrics::BACKEND_COMMIT.render(
        &mut out,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    );
    crate::metrics::render_peers(&mut out);
    crate::metrics::grpc::render(&mut out);
    crate::metrics::render_watches(&mut out);
    crate::metrics::process::render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::any;

    /// A client-port router whose gRPC side answers 200 "grpc" for any path and whose HTTP
    /// side serves `/health` and 404 for the rest.
    fn router() -> Router {
        let grpc = Router::new()
            .route("/etcdserverpb.KV/{*rest}", any(|| async { "grpc" }))
            .fallback(|| async { "grpc fallback" });
        let http = Router::new()
            .route("/health", get(|| async { "http health" }))
            .fallback(not_found);
        client_port(grpc, http)
    }

    async fn call(
        version: Version,
        method: &str,
        path: &str,
        content_type: Option<&str>,
    ) -> (StatusCode, Vec<(String, String)>, String) {
        let mut request = Request::builder().method(method).uri(path).version(version);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Body::empty()).expect("request");
        let response = router().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn only_http2_with_a_grpc_content_type_reaches_grpc() {
        const PUT: &str = "/etcdserverpb.KV/Put";
        for content_type in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=y",
        ] {
            let (status, _, body) = call(Version::HTTP_2, "POST", PUT, Some(content_type)).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "grpc"),
                "{content_type}"
            );
        }
        let (_, _, body) = call(Version::HTTP_2, "POST", "/x", Some("application/grpc")).await;
        assert_eq!(body, "grpc fallback");
        let not_grpc = [
            (Version::HTTP_11, Some("application/grpc")),
            (Version::HTTP_11, None),
            (Version::HTTP_10, Some("application/grpc")),
            (Version::HTTP_2, None),
            (Version::HTTP_2, Some("application/json")),
            (Version::HTTP_2, Some("application/grpc-web")),
            (Version::HTTP_2, Some("application/grpcx")),
            (Version::HTTP_2, Some("text/plain; application/grpc")),
        ];
        for (version, content_type) in not_grpc {
            for (method, path) in [("POST", PUT), ("GET", PUT), ("POST", "/x")] {
                let (status, headers, body) = call(version, method, path, content_type).await;
                let case = format!("{version:?} {content_type:?} {method} {path}");
                assert_eq!(status, StatusCode::NOT_FOUND, "{case}");
                assert_eq!(body, "404 page not found\n", "{case}");
                assert!(
                    headers.contains(&("content-type".into(), "text/plain; charset=utf-8".into())),
                    "{case}: {headers:?}"
                );
            }
            let (status, _, body) = call(version, "GET", "/health", content_type).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "http health"));
        }
    }
}

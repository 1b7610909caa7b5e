//! Plain HTTP endpoints etcd serves next to gRPC on the client port: `/health`,
//! `/version`, `/metrics` (Prometheus text), plus `/readyz` and `/livez`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

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
        .with_state(node)
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

fn resident_memory_bytes() -> u64 {
    // /proc/self/statm: size resident shared ... (in pages)
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

async fn metrics(State(node): State<Arc<StoreNode>>) -> impl IntoResponse {
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
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "etcd_server_has_leader",
        "Whether a leader exists (1) or not (0).",
        f64::from(u8::from(m.current_leader.is_some())),
    );
    gauge(
        "etcd_server_is_leader",
        "Whether this member is the leader.",
        f64::from(u8::from(m.current_leader == Some(node.id))),
    );
    gauge(
        "etcd_server_is_learner",
        "Whether this member is a learner.",
        f64::from(u8::from(node.is_learner())),
    );
    gauge(
        "etcd_server_term",
        "Current Raft term.",
        m.current_term as f64,
    );
    gauge(
        "etcd_server_proposals_committed_total",
        "Last Raft log index.",
        m.last_log_index.unwrap_or(0) as f64,
    );
    gauge(
        "etcd_server_proposals_applied_total",
        "Last applied Raft log index.",
        m.last_applied.map(|l| l.index).unwrap_or(0) as f64,
    );
    gauge(
        "etcd_debugging_mvcc_current_revision",
        "Current store revision.",
        revision as f64,
    );
    gauge(
        "etcd_debugging_mvcc_compact_revision",
        "Last compaction revision.",
        compacted as f64,
    );
    gauge("etcd_debugging_mvcc_keys_total", "Live keys.", keys as f64);
    gauge(
        "etcd_mvcc_db_total_size_in_bytes",
        "Backend size on disk.",
        engine.size_bytes() as f64,
    );
    gauge(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Backend bytes in use.",
        engine.size_in_use_bytes() as f64,
    );
    let writes = engine.write_counts();
    gauge(
        "skiff_engine_durable_writes_total",
        "Engine writes fsynced before returning (checkpoints, votes, purges).",
        writes.durable as f64,
    );
    gauge(
        "skiff_log_syncs_total",
        "Raft log fsyncs, each making every entry appended before it durable (group commit).",
        node.log_syncs.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    gauge(
        "skiff_engine_buffered_writes_total",
        "Engine writes made durable by a later fsync (state machine applies).",
        writes.buffered as f64,
    );
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        resident_memory_bytes() as f64,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

//! `/healthz`, `/readyz` and `/metrics` for a component, over plain HTTP on an injected
//! listener (kube-scheduler serves these over HTTPS on `--secure-port`; TLS is a follow-up).
//! `/healthz` also reports `leaderElection` unhealthy when the component is the leader on paper
//! but its lease renewals have stopped — the caller decides that through `Health`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Registry;

/// Health state a component flips; cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    unhealthy: Arc<AtomicBool>,
}

impl Health {
    /// Marks the component (un)healthy.
    pub fn set_healthy(&self, healthy: bool) {
        self.unhealthy.store(!healthy, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    registry: Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    let check = move || {
        let health = health.clone();
        async move {
            if health.healthy() {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy")
            }
        }
    };
    let app = Router::new()
        .route("/healthz", get(check.clone()))
        .route("/livez", get(check.clone()))
        .route("/readyz", get(check))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { registry.render() }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

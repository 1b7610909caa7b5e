//! The in-flight request limits (kube-apiserver's `WithMaxInFlightLimit`): one pool for reads,
//! one for writes; a request beyond its pool's limit is 429 `TooManyRequests` with
//! `Retry-After: 1`, never queued. Long-running requests (watches), health checks and
//! `system:masters` members are not limited, as in kube-apiserver.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::auth::User;
use crate::limits::MAX_BODY_BYTES;
use crate::metrics::Metrics;
use crate::request_info::RequestInfo;
use crate::status::{ApiError, Reason};

/// The two pools; None = unlimited.
#[derive(Clone)]
pub struct InFlight {
    reads: Option<Arc<Semaphore>>,
    writes: Option<Arc<Semaphore>>,
    /// For `apiserver_current_inflight_requests`.
    metrics: Metrics,
}

impl InFlight {
    /// `--max-requests-inflight` and `--max-mutating-requests-inflight` (0 = unlimited).
    pub fn new(reads_max: usize, writes_max: usize, metrics: Metrics) -> InFlight {
        let pool = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        InFlight {
            reads: pool(reads_max),
            writes: pool(writes_max),
            metrics,
        }
    }
}

pub async fn limit_inflight(State(limits): State<InFlight>, req: Request, next: Next) -> Response {
    let watching = req
        .extensions()
        .get::<RequestInfo>()
        .is_some_and(|info| info.is_watch);
    if watching {
        return next.run(req).await;
    }
    let privileged = req
        .extensions()
        .get::<User>()
        .is_none_or(|u| u.groups.iter().any(|g| g == "system:masters"));
    let mutating = RequestInfo::is_mutating(req.method());
    let pool = if mutating {
        &limits.writes
    } else {
        &limits.reads
    };
    let _counted = limits.metrics.in_flight(mutating);
    let Some(pool) = pool.as_ref().filter(|_| !privileged) else {
        return next.run(req).await;
    };
    let Ok(_permit) = pool.clone().try_acquire_owned() else {
        // Read what the client is still sending (up to the body limit), so that the refusal is
        // not lost in a connection reset.
        let _ = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await;
        return ApiError::new(
            Reason::TooManyRequests,
            "Too many requests, please try again later.",
        )
        .retry_after(1)
        .into_response();
    };
    next.run(req).await
}

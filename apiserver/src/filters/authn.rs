//! Authentication: the [`Authenticator`] names the request's [`User`] (a verified client
//! certificate, else a known bearer token — a wrong one is 401 — else anonymous when allowed),
//! which later filters and handlers find in the request's extensions. Health endpoints are
//! open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use crate::auth::{Authenticator, User};
use crate::status::ApiError;

pub async fn authenticate(
    State(authenticator): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    if crate::request_info::is_health_path(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(user) = authenticator.authenticate(&req) else {
        return ApiError::unauthorized().into_response();
    };
    req.extensions_mut().insert(user);
    next.run(req).await
}

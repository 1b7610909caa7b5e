//! The first filter (kube-apiserver's `WithRequestInfo`): reads the request's [`RequestInfo`]
//! once, for every later filter and handler.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::request_info::RequestInfo;
use crate::status::ApiError;

pub async fn with_request_info(mut req: Request, next: Next) -> Response {
    let info = RequestInfo::new(req.method(), req.uri().path(), req.uri().query());
    req.extensions_mut().insert(info);
    next.run(req).await
}

/// A filter inside [`with_request_info`] found no [`RequestInfo`]: the chain was built without
/// it, a programming error answered as an internal error.
pub fn missing_request_info() -> Response {
    ApiError::internal("no RequestInfo on the request").into_response()
}

//! Authorization: the `--authorization-mode` [`Authorizer`] decides on the authenticated
//! [`User`] and the request's [`RequestInfo`]; a denial is 403 `Forbidden`. Health endpoints
//! are open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{Attributes, Authorizer, Decision, User};
use crate::filters::request_info::missing_request_info;
use crate::request_info::RequestInfo;
use crate::status::{ApiError, Reason};

pub async fn authorize(
    State(authorizer): State<Arc<dyn Authorizer>>,
    req: Request,
    next: Next,
) -> Response {
    if crate::request_info::is_health_path(req.uri().path()) {
        return next.run(req).await;
    }
    let (Some(user), Some(info)) = (
        req.extensions().get::<User>(),
        req.extensions().get::<RequestInfo>(),
    ) else {
        return missing_request_info();
    };
    let attrs = Attributes {
        user,
        request: info,
    };
    if let Decision::Deny(reason) = authorizer.authorize(&attrs) {
        let mut message = format!("User \"{}\" cannot {} {}", user.name, info.verb, info.path);
        if !reason.is_empty() {
            message = format!("{message}: {reason}");
        }
        return ApiError::new(Reason::Forbidden, message).into_response();
    }
    next.run(req).await
}

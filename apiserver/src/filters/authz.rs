//! Authorization: the `--authorization-mode` [`Authorizer`] decides on the authenticated
//! [`User`] and the request's [`RequestInfo`]; a denial is 403 `Forbidden`. Health endpoints
//! are open. Whatever the mode, an unauthenticated user never reaches a container's streams
//! (`pods/exec`, `attach`, `portforward`): `AlwaysAllow` with `--anonymous-auth` must not
//! hand anonymous clients a shell.

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
    if let Some(why) = anonymous_connect(user, info) {
        return ApiError::new(Reason::Forbidden, why).into_response();
    }
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

/// The refusal of `pods/exec`, `pods/attach` or `pods/portforward` to an unauthenticated user
/// (RBAC's wording), whatever the authorizer would say.
fn anonymous_connect(user: &User, info: &RequestInfo) -> Option<String> {
    let unauthenticated = user.groups.iter().any(|g| g == "system:unauthenticated");
    let connect = info.is_resource_request
        && info.api_group.is_empty()
        && info.resource == "pods"
        && crate::request_info::is_pod_connect_subresource(&info.subresource);
    (unauthenticated && connect).then(|| {
        format!(
            "pods \"{}\" is forbidden: User \"{}\" cannot {} resource \"pods/{}\" in API group \"\" \
             in the namespace \"{}\"",
            info.name, user.name, info.verb, info.subresource, info.namespace
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn anonymous_never_connects_to_containers() {
        let anonymous = crate::auth::anonymous_user();
        let exec = RequestInfo::new(
            &Method::GET,
            "/api/v1/namespaces/q/pods/p/exec",
            Some("command=sh"),
        );
        assert_eq!(
            anonymous_connect(&anonymous, &exec).as_deref(),
            Some(
                "pods \"p\" is forbidden: User \"system:anonymous\" cannot create resource \
                 \"pods/exec\" in API group \"\" in the namespace \"q\""
            )
        );
        let log = RequestInfo::new(&Method::GET, "/api/v1/namespaces/q/pods/p/log", None);
        assert_eq!(anonymous_connect(&anonymous, &log), None);
        let admin = User {
            name: "admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into()],
        };
        assert_eq!(anonymous_connect(&admin, &exec), None);
    }
}

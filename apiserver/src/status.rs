//! Every failure the REST API returns is a `meta.k8s.io/v1 Status` (kube-apiserver's
//! `apierrors`): the one table from error kind to HTTP code, reason and message.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::limits::MAX_BODY_BYTES;

/// A `Status`'s `reason` (apimachinery's `metav1.StatusReason`), each with the HTTP code
/// kube-apiserver answers it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    AlreadyExists,
    Conflict,
    /// A resourceVersion or continue token older than the store keeps (410).
    Expired,
    Gone,
    RequestEntityTooLarge,
    UnsupportedMediaType,
    Invalid,
    TooManyRequests,
    InternalError,
    ServiceUnavailable,
    /// The request's fate is unknown (504; 408 for a request the client was too slow to send).
    Timeout,
}

impl Reason {
    /// The one table: reason → (HTTP code, wire name).
    pub const fn wire(self) -> (u16, &'static str) {
        match self {
            Reason::BadRequest => (400, "BadRequest"),
            Reason::Unauthorized => (401, "Unauthorized"),
            Reason::Forbidden => (403, "Forbidden"),
            Reason::NotFound => (404, "NotFound"),
            Reason::MethodNotAllowed => (405, "MethodNotAllowed"),
            Reason::NotAcceptable => (406, "NotAcceptable"),
            Reason::AlreadyExists => (409, "AlreadyExists"),
            Reason::Conflict => (409, "Conflict"),
            Reason::Expired => (410, "Expired"),
            Reason::Gone => (410, "Gone"),
            Reason::RequestEntityTooLarge => (413, "RequestEntityTooLarge"),
            Reason::UnsupportedMediaType => (415, "UnsupportedMediaType"),
            Reason::Invalid => (422, "Invalid"),
            Reason::TooManyRequests => (429, "TooManyRequests"),
            Reason::InternalError => (500, "InternalError"),
            Reason::ServiceUnavailable => (503, "ServiceUnavailable"),
            Reason::Timeout => (504, "Timeout"),
        }
    }

    /// The HTTP code this reason is answered with.
    pub const fn code(self) -> u16 {
        self.wire().0
    }

    /// The name written in `Status.reason`.
    pub const fn as_str(self) -> &'static str {
        self.wire().1
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP code: the reason's ([`Reason::code`]) except where kube-apiserver answers
    /// otherwise (a 408 `Timeout`).
    pub code: u16,
    pub reason: Reason,
    pub message: String,
    /// `details` (name, group, kind, causes), when kube-apiserver would set it.
    pub details: Option<Value>,
}

/// "deployments.apps" or "pods": the qualified resource as kube-apiserver names it.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// `details` of a named object's error: `group` only when there is one (kube-apiserver's
/// `StatusDetails` has `omitempty` on every field).
fn details(resource: &str, group: &str, name: &str) -> Value {
    let mut details = json!({"name": name, "kind": resource});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    details
}

impl ApiError {
    /// An error of `reason`, answered with its HTTP code.
    pub fn new(reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError::with_code(reason.code(), reason, message)
    }

    /// An error of `reason` answered with another HTTP code (kube-apiserver's
    /// `NewGenericServerResponse` for a bare HTTP status).
    pub fn with_code(code: u16, reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// `details.retryAfterSeconds`, which also becomes a `Retry-After` header.
    pub fn retry_after(self, seconds: u64) -> ApiError {
        ApiError {
            details: Some(json!({"retryAfterSeconds": seconds})),
            ..self
        }
    }

    /// Whether this is a `reason` error (for retries: a lost race is `Conflict`).
    pub fn is(&self, reason: Reason) -> bool {
        self.reason == reason
    }

    pub fn not_found(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(resource, group, name)),
            ..ApiError::new(
                Reason::NotFound,
                format!("{} \"{name}\" not found", qualified(resource, group)),
            )
        }
    }

    pub fn already_exists(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(resource, group, name)),
            ..ApiError::new(
                Reason::AlreadyExists,
                format!("{} \"{name}\" already exists", qualified(resource, group)),
            )
        }
    }

    pub fn conflict(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(resource, group, name)),
            ..ApiError::new(
                Reason::Conflict,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    qualified(resource, group)
                ),
            )
        }
    }

    /// 403 for the object `name` of `resource` (`apierrors.NewForbidden`, which admission
    /// plugins answer with): `pods "x" is forbidden: <why>`.
    pub fn forbidden(resource: &str, group: &str, name: &str, why: &str) -> ApiError {
        ApiError {
            details: Some(details(resource, group, name)),
            ..ApiError::new(
                Reason::Forbidden,
                format!(
                    "{} \"{name}\" is forbidden: {why}",
                    qualified(resource, group)
                ),
            )
        }
    }

    /// 422 with one cause per `(field, message)`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(String, String)]) -> ApiError {
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        let what = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut details = details(kind, group, name);
        details["causes"] = json!(causes);
        ApiError {
            details: Some(details),
            ..ApiError::new(
                Reason::Invalid,
                format!("{what} \"{name}\" is invalid: {}", text.join(", ")),
            )
        }
    }

    /// 404 for a path that names no resource (`apierrors.NewGenericServerResponse(404, …)`,
    /// whose empty `details` are written as `{}`).
    pub fn path_not_found() -> ApiError {
        ApiError {
            details: Some(json!({})),
            ..ApiError::new(
                Reason::NotFound,
                "the server could not find the requested resource",
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::BadRequest, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(Reason::Unauthorized, "Unauthorized")
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::Expired, message)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            Reason::MethodNotAllowed,
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            Reason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {content_type:?}"
            ),
        )
    }

    /// 413 (`apierrors.NewRequestEntityTooLargeError`): the message follows
    /// `Request entity too large: `.
    pub fn request_entity_too_large(message: &str) -> ApiError {
        ApiError::new(
            Reason::RequestEntityTooLarge,
            format!("Request entity too large: {message}"),
        )
    }

    /// 413 for a body over [`MAX_BODY_BYTES`].
    pub fn body_too_large() -> ApiError {
        ApiError::request_entity_too_large(&format!("limit is {MAX_BODY_BYTES}"))
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::InternalError, message)
    }

    /// The `Status` object (as a JSON value, whose keys are unordered: [`Self::to_status_json`]
    /// is what goes on the wire).
    pub fn to_status(&self) -> Value {
        serde_json::from_slice(&self.to_status_json()).unwrap_or(Value::Null)
    }

    /// The `Status` as kube-apiserver encodes it: [`StatusBody`]'s field order, empty fields
    /// left out, Go's escaping, no trailing newline (see [`encode_status`]).
    pub fn to_status_json(&self) -> Vec<u8> {
        let body = StatusBody {
            status: "Failure",
            message: &self.message,
            reason: self.reason.as_str(),
            details: self.details.as_ref().map(StatusDetails::from_value),
            code: self.code,
            ..StatusBody::default()
        };
        go_json(&body)
    }
}

/// `metav1.Status` in Go's declaration order (`TypeMeta` inline, then `ListMeta` as `metadata`,
/// which is a struct and so always written, as `{}`), every other field `omitempty`.
#[derive(Debug, Serialize)]
pub struct StatusBody<'a> {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    #[serde(skip_serializing_if = "is_zero")]
    pub code: u16,
}

impl Default for StatusBody<'_> {
    fn default() -> Self {
        StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: Map::new(),
            status: "",
            message: "",
            reason: "",
            details: None,
            code: 0,
        }
    }
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// `metav1.StatusDetails` in Go's field order, empty fields left out.
#[derive(Debug, Default, Serialize)]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// `metav1.StatusCause`: `type` is written as `reason`.
#[derive(Debug, Default, Serialize)]
pub struct StatusCause {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

impl StatusDetails {
    /// The typed details of an [`ApiError::details`] value (unknown keys are dropped, as
    /// kube-apiserver's struct has no place for them).
    fn from_value(v: &Value) -> StatusDetails {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        StatusDetails {
            name: s(&v["name"]),
            group: s(&v["group"]),
            kind: s(&v["kind"]),
            uid: s(&v["uid"]),
            causes: v["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| StatusCause {
                    reason: s(&c["reason"]),
                    message: s(&c["message"]),
                    field: s(&c["field"]),
                })
                .collect(),
            retry_after_seconds: v["retryAfterSeconds"].as_u64().filter(|s| *s > 0),
        }
    }
}

/// JSON as Go's `encoding/json` writes it (kube-apiserver's serializer): `<`, `>`, `&`,
/// U+2028 and U+2029 escaped as `\u003c` etc., backspace and form feed as `\u0008` and
/// `\u000c` (serde_json writes `\b`, `\f`). Those characters occur only inside strings, so
/// rewriting serde_json's output is exact.
pub fn go_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let text = serde_json::to_string(value).unwrap_or_default();
    if !text.contains(['<', '>', '&', '\\', '\u{2028}', '\u{2029}']) {
        return text.into_bytes();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            '\\' => match chars.next() {
                Some('b') => out.push_str("\\u0008"),
                Some('f') => out.push_str("\\u000c"),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// A `Status` response body as kube-apiserver writes one: the JSON and a newline (Go's
/// `json.Encoder`).
pub fn status_response(code: u16, json: Vec<u8>) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json;
    body.push(b'\n');
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from(body),
    )
        .into_response()
}

/// A `status: Success` Status (e.g. the answer to a `pods/binding`).
pub fn success(code: u16) -> Response {
    let body = StatusBody {
        status: "Success",
        code,
        ..StatusBody::default()
    };
    status_response(code, go_json(&body))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // kube-apiserver's response writers turn `details.retryAfterSeconds` into the header
        // client-go waits for before it retries.
        let retry_after = self
            .details
            .as_ref()
            .and_then(|d| d["retryAfterSeconds"].as_u64())
            .filter(|s| *s > 0);
        let mut response = status_response(code.as_u16(), self.to_status_json());
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> (u16, String, String) {
        let code = response.status().as_u16();
        let ct = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (code, ct, String::from_utf8(bytes.to_vec()).expect("utf-8"))
    }

    /// Bodies copied from kube-apiserver v1.33 (`curl -k https://…/api/v1/namespaces/default/
    /// configmaps/nope` and the like): byte for byte, newline included.
    #[tokio::test]
    async fn status_bodies_are_kube_apiservers_bytes() {
        let core = ApiError::not_found("configmaps", "", "nope").into_response();
        assert_eq!(
            body_of(core).await,
            (
                404,
                "application/json".into(),
                "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
                 \"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\
                 \"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
                    .into()
            )
        );
        let grouped = ApiError::already_exists("deployments", "apps", "web").into_response();
        assert_eq!(
            body_of(grouped).await.2,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
             \"message\":\"deployments.apps \\\"web\\\" already exists\",\"reason\":\"AlreadyExists\",\
             \"details\":{\"name\":\"web\",\"group\":\"apps\",\"kind\":\"deployments\"},\"code\":409}\n"
        );
        let invalid = ApiError::invalid(
            "Pod",
            "",
            "p",
            &[("spec.containers".into(), "Required value".into())],
        )
        .into_response();
        assert_eq!(
            body_of(invalid).await.2,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
             \"message\":\"Pod \\\"p\\\" is invalid: spec.containers: Required value\",\
             \"reason\":\"Invalid\",\"details\":{\"name\":\"p\",\"kind\":\"Pod\",\"causes\":\
             [{\"reason\":\"FieldValueInvalid\",\"message\":\"Required value\",\
             \"field\":\"spec.containers\"}]},\"code\":422}\n"
        );
        // No details: none written; Go's HTML-safe escaping of `<`, `>` and `&`.
        let bare = ApiError::bad_request("a <b> & c").into_response();
        assert_eq!(
            body_of(bare).await.2,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
             \"message\":\"a \\u003cb\\u003e \\u0026 c\",\"reason\":\"BadRequest\",\"code\":400}\n"
        );
        // An unknown resource: go-restful's 404, whose empty details are still written.
        assert_eq!(
            body_of(ApiError::path_not_found().into_response()).await.2,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
             \"message\":\"the server could not find the requested resource\",\"reason\":\"NotFound\",\
             \"details\":{},\"code\":404}\n"
        );
        assert_eq!(
            body_of(success(201)).await,
            (
                201,
                "application/json".into(),
                "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Success\",\
                 \"code\":201}\n"
                    .into()
            )
        );
    }

    #[test]
    fn every_reason_has_kube_apiservers_code() {
        let all = [
            (Reason::BadRequest, 400),
            (Reason::Unauthorized, 401),
            (Reason::Forbidden, 403),
            (Reason::NotFound, 404),
            (Reason::MethodNotAllowed, 405),
            (Reason::NotAcceptable, 406),
            (Reason::AlreadyExists, 409),
            (Reason::Conflict, 409),
            (Reason::Expired, 410),
            (Reason::Gone, 410),
            (Reason::RequestEntityTooLarge, 413),
            (Reason::UnsupportedMediaType, 415),
            (Reason::Invalid, 422),
            (Reason::TooManyRequests, 429),
            (Reason::InternalError, 500),
            (Reason::ServiceUnavailable, 503),
            (Reason::Timeout, 504),
        ];
        for (reason, code) in all {
            assert_eq!(reason.code(), code, "{reason}");
            assert_eq!(reason.as_str(), format!("{reason:?}"));
            let status = ApiError::new(reason, "m").to_status();
            assert_eq!(
                (status["reason"].as_str(), status["code"].as_u64()),
                (Some(reason.as_str()), Some(u64::from(code)))
            );
        }
        let slow = ApiError::with_code(408, Reason::Timeout, "request timeout").to_status();
        assert_eq!(
            (slow["reason"].as_str(), slow["code"].as_u64()),
            (Some("Timeout"), Some(408))
        );
        let busy = ApiError::new(Reason::TooManyRequests, "later")
            .retry_after(1)
            .into_response();
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn go_escaping_only_touches_strings_specials() {
        let v = json!({"s": "\u{8}\u{c}\n\\b\u{2028}\u{1f}"});
        assert_eq!(
            String::from_utf8(go_json(&v)).unwrap(),
            r#"{"s":"\u0008\u000c\n\\b\u2028\u001f"}"#
        );
        // The value form keeps the fields (for audit logs and watch ERROR events).
        let s = ApiError::not_found("pods", "", "x").to_status();
        assert_eq!(s["details"], json!({"name": "x", "kind": "pods"}));
        assert_eq!(s["metadata"], json!({}));
    }
}

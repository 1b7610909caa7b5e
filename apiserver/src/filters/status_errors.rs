//! Every error answer is a `Status`: responses that the HTTP layers produce on their own (an
//! oversized body, an unreadable request) are rewritten into kube-apiserver's Status objects.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::status::{ApiError, Reason};

/// Middleware: a 4xx/5xx response that is not JSON becomes a Status of the same code (but
/// the health endpoints answer plain text, failures included, as kube-apiserver's do).
pub async fn status_errors(req: Request, next: Next) -> Response {
    let health = crate::request_info::is_health_path(req.uri().path());
    let response = next.run(req).await;
    let code = response.status();
    if health || !(code.is_client_error() || code.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 << 10).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    status_for(code.as_u16(), &text).into_response()
}

/// kube-apiserver's reason and message for a bare HTTP error.
fn status_for(code: u16, text: &str) -> ApiError {
    let or = |default: &str| {
        if text.is_empty() {
            default.to_string()
        } else {
            text.to_string()
        }
    };
    let (reason, default) = match code {
        413 => {
            return ApiError::body_too_large();
        }
        401 => return ApiError::unauthorized(),
        404 => return ApiError::path_not_found(),
        405 => return ApiError::method_not_allowed(),
        400 => (Reason::BadRequest, "bad request"),
        403 => (Reason::Forbidden, "forbidden"),
        406 => (Reason::NotAcceptable, "not acceptable"),
        408 => (Reason::Timeout, "request timeout"),
        415 => (Reason::UnsupportedMediaType, "unsupported media type"),
        422 => (Reason::Invalid, "invalid"),
        429 => (Reason::TooManyRequests, "too many requests"),
        503 => (Reason::ServiceUnavailable, "service unavailable"),
        504 => (Reason::Timeout, "timeout"),
        c if c >= 500 => (Reason::InternalError, "internal error"),
        _ => (Reason::BadRequest, "bad request"),
    };
    // 408 keeps its code; every other reason is answered with its own.
    let code = if code == 408 { 408 } else { reason.code() };
    ApiError::with_code(code, reason, or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_is_request_entity_too_large() {
        let s = status_for(413, "length limit exceeded").to_status();
        assert_eq!(s["reason"], "RequestEntityTooLarge");
        assert_eq!(s["code"], 413);
        assert_eq!(s["message"], "Request entity too large: limit is 3145728");
    }
}

//! Every error answer is a `Status`: responses that the HTTP layers produce on their own (an
//! oversized body, an unreadable request) are rewritten into kube-apiserver's Status objects.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::rest::MAX_BODY_BYTES;
use crate::status::ApiError;

/// Middleware: a 4xx/5xx response that is not JSON becomes a Status of the same code (but
/// the health endpoints answer plain text, failures included, as kube-apiserver's do).
pub async fn status_errors(req: Request, next: Next) -> Response {
    let health = crate::health::is_health_path(req.uri().path());
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
    match code {
        413 => ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {MAX_BODY_BYTES}"),
        ),
        400 => ApiError::new(400, "BadRequest", or("bad request")),
        401 => ApiError::unauthorized(),
        403 => ApiError::new(403, "Forbidden", or("forbidden")),
        404 => ApiError::path_not_found(),
        405 => ApiError::method_not_allowed(),
        406 => ApiError::new(406, "NotAcceptable", or("not acceptable")),
        408 => ApiError::new(408, "Timeout", or("request timeout")),
        415 => ApiError::new(415, "UnsupportedMediaType", or("unsupported media type")),
        422 => ApiError::new(422, "Invalid", or("invalid")),
        429 => ApiError::new(429, "TooManyRequests", or("too many requests")),
        503 => ApiError::new(503, "ServiceUnavailable", or("service unavailable")),
        504 => ApiError::new(504, "Timeout", or("timeout")),
        c if c >= 500 => ApiError::new(500, "InternalError", or("internal error")),
        _ => ApiError::new(400, "BadRequest", or("bad request")),
    }
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

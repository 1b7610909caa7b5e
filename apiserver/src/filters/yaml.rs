//! `Content-Type: application/yaml` request bodies (create and update), as kube-apiserver
//! accepts them: converted to JSON before routing, so every handler sees JSON. Malformed YAML is
//! a 400 BadRequest `Status`. (Server-side apply's `application/apply-patch+yaml` is the patch
//! handler's.)

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::limits::MAX_BODY_BYTES;
use crate::status::ApiError;

fn is_yaml(req: &Request) -> bool {
    matches!(*req.method(), Method::POST | Method::PUT)
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|ct| {
                let ct = ct.trim();
                ct.eq_ignore_ascii_case("application/yaml")
                    || ct.eq_ignore_ascii_case("application/x-yaml")
            })
}

/// Converts one YAML document to JSON text.
pub fn yaml_to_json(text: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(value.to_string())
}

/// Middleware: YAML bodies of POST/PUT become JSON.
pub async fn yaml_bodies(req: Request, next: Next) -> Response {
    if !is_yaml(&req) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError::body_too_large().into_response();
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            return ApiError::bad_request(format!("error decoding YAML request body: {e}"))
                .into_response();
        }
    };
    let json = match yaml_to_json(text) {
        Ok(json) => json,
        Err(e) => {
            return ApiError::bad_request(format!("error decoding YAML request body: {e}"))
                .into_response();
        }
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    next.run(Request::from_parts(parts, Body::from(json))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_become_json() {
        let json = yaml_to_json(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  n: \"1\"\n",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["metadata"]["name"], "c");
        assert_eq!(v["data"]["n"], "1");
        assert!(yaml_to_json("a: [1, 2\nb: }").is_err());
    }
}

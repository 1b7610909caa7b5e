//! Every failure the REST API returns is a `meta.k8s.io/v1 Status` (kube-apiserver's
//! `apierrors`): the one table from error kind to HTTP code, reason and message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::storage::StorageError;

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
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

fn details(resource: &str, group: &str, name: &str) -> Value {
    json!({"name": name, "group": group, "kind": resource})
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn not_found(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(resource, group, name)),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(resource, group)),
            )
        }
    }

    pub fn already_exists(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(resource, group, name)),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(resource, group)),
            )
        }
    }

    pub fn conflict(resource: &str, group: &str, name: &str) -> ApiError {
        ApiError {
            details: Some(details(resource, group, name)),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
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
        ApiError {
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
            ..ApiError::new(
                422,
                "Invalid",
                format!("{what} \"{name}\" is invalid: {}", text.join(", ")),
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {content_type:?}"
            ),
        )
    }

    /// 413 (`apierrors.NewRequestEntityTooLargeError`): the message follows
    /// `Request entity too large: `.
    pub fn request_entity_too_large(message: &str) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: {message}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    pub fn from_storage(err: StorageError, resource: &str, group: &str, name: &str) -> ApiError {
        match err {
            StorageError::NotFound => ApiError::not_found(resource, group, name),
            StorageError::Exists => ApiError::already_exists(resource, group, name),
            StorageError::Conflict => ApiError::conflict(resource, group, name),
            StorageError::Compacted(_) => ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ),
            // Not retryable, so not the 503 below; etcd's words, without the gRPC text.
            StorageError::TooLarge => {
                ApiError::request_entity_too_large("etcdserver: request is too large")
            }
            StorageError::Unavailable(msg) => ApiError::new(
                503,
                "ServiceUnavailable",
                format!("storage unavailable: {msg}"),
            ),
            StorageError::Internal(msg) => ApiError::internal(msg),
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}

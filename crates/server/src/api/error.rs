//! API errors: the one place that maps failures to HTTP statuses and to the
//! `{"error": {"code", "message", "details"}}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_api::{ErrorBody, ErrorDetail};
use corral_core::error::{FieldError, FieldErrors};
use serde_json::json;

use crate::engine::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: serde_json::Value,
}

impl ApiError {
    pub fn invalid(e: FieldError) -> ApiError {
        ApiError::invalid_all(e.into())
    }

    /// Every problem of an input: the first in `message` and `details.path`,
    /// all of them in `details.errors`.
    pub fn invalid_all(e: FieldErrors) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: e.to_string(),
            details: json!({ "path": e.first().path, "errors": e }),
        }
    }

    pub fn forbidden(message: String) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message,
            details: json!({}),
        }
    }

    pub fn not_found(what: &str, name: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("{what} {name} not found"),
            details: json!({}),
        }
    }
}

/// A request's path parameters, as axum's `Path` extracts them, but refused as
/// any bad input is: a 400 in the envelope naming the parameter.
pub struct PathParam<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for PathParam<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => ApiError::invalid(FieldError::new(
                    key.clone(),
                    "is not UTF-8 text once percent-decoded",
                )),
                ErrorKind::ParseErrorAtKey {
                    key,
                    value,
                    expected_type,
                } => ApiError::invalid(FieldError::new(
                    key.clone(),
                    format!("{value:?} is not a {expected_type}"),
                )),
                _ => ApiError::invalid(FieldError::new("path", e.body_text())),
            }),
            Err(other) => Err(ApiError {
                status: other.status(),
                code: "internal",
                message: other.body_text(),
                details: json!({}),
            }),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e)
    }
}

impl From<FieldErrors> for ApiError {
    fn from(e: FieldErrors) -> Self {
        ApiError::invalid_all(e)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(f) => ApiError::invalid_all(f),
            EngineError::NotFound { what, name } => ApiError::not_found(what, name),
            EngineError::Conflict(message) => ApiError {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message,
                details: json!({}),
            },
            EngineError::Forbidden(message) => ApiError::forbidden(message),
            EngineError::Store(e) => e.into(),
            EngineError::KeepSecret(e) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: format!("cannot keep a secret: {e}"),
                details: json!({}),
            },
            EngineError::CommitFailed(message) => {
                tracing::error!(%message, "commit failed");
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "unavailable",
                    message: format!("the store failed to commit; nothing was changed: {message}"),
                    details: json!({}),
                }
            }
        }
    }
}

impl From<corral_store::StoreError> for ApiError {
    fn from(e: corral_store::StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: format!("the store failed: {e}"),
            details: json!({}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// Gives every error the JSON envelope, those of axum's extractors and router
/// included (a bad path parameter, a body over the limit, an unknown route, a
/// method a route does not have), which answer in plain text or with nothing.
pub async fn envelope(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    max_body_bytes: usize,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let (code, message, details) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            format!("the request body is larger than the limit of {max_body_bytes} bytes"),
            json!({ "path": "body", "limit": max_body_bytes }),
        ),
        StatusCode::NOT_FOUND => ("not_found", "no such route".to_string(), json!({})),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method".to_string(),
            json!({}),
        ),
        s if s.is_server_error() => ("internal", text, json!({})),
        _ => ("invalid", text, json!({})),
    };
    ApiError {
        status,
        code,
        message,
        details,
    }
    .into_response()
}

//! API errors: the one place that maps failures to HTTP statuses and to the
//! `{"error": {"code", "message", "details"}}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_api::{ErrorBody, ErrorDetail};
use corral_core::error::FieldError;
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
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: e.to_string(),
            details: json!({ "path": e.path }),
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

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(f) => ApiError::invalid(f),
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
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
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

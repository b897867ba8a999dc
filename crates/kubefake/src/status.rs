//! Errors as the API server answers them: a `Status` object with its reason and code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::validate::Cause;

/// An error answered as a `Status`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    /// 404 `NotFound`: `pods "x" not found`.
    pub(crate) fn not_found(resource: &str, name: &str) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{resource} {name:?} not found"),
            details: json!({"name": name, "kind": resource}),
        }
    }

    /// 409 `AlreadyExists`: `pods "x" already exists`.
    pub(crate) fn already_exists(resource: &str, name: &str) -> Self {
        Self {
            code: StatusCode::CONFLICT,
            reason: "AlreadyExists",
            message: format!("{resource} {name:?} already exists"),
            details: json!({"name": name, "kind": resource}),
        }
    }

    /// 409 `Conflict`: an update from a stale `resourceVersion`.
    pub(crate) fn conflict(resource: &str, name: &str) -> Self {
        Self {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
            ),
            details: json!({"name": name, "kind": resource}),
        }
    }

    /// 422 `Invalid`, with one cause per problem: `Pod "x" is invalid: field: problem`.
    pub(crate) fn invalid(kind: &str, resource: &str, name: &str, causes: &[Cause]) -> Self {
        let described: Vec<String> = causes
            .iter()
            .map(|cause| {
                if cause.field.is_empty() {
                    cause.message.clone()
                } else {
                    format!("{}: {}", cause.field, cause.message)
                }
            })
            .collect();
        let list = match described.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|cause| json!({"reason": cause.reason, "message": cause.message, "field": cause.field}))
            .collect();
        Self {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{kind} {name:?} is invalid: {list}"),
            details: json!({"name": name, "group": "", "kind": resource, "causes": causes}),
        }
    }

    /// 400 `BadRequest`: a body or query the server cannot read.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            details: Value::Null,
        }
    }

    /// 403 `Forbidden`: more objects of a kind than the fake keeps.
    pub(crate) fn too_many(resource: &str, most: usize) -> Self {
        Self {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: format!(
                "{resource} is forbidden: the fake cluster keeps at most {most} {resource}"
            ),
            details: json!({"kind": resource}),
        }
    }

    /// 401 `Unauthorized`.
    pub(crate) fn unauthorized() -> Self {
        Self {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: "Unauthorized".to_owned(),
            details: Value::Null,
        }
    }

    /// 405 `MethodNotAllowed`.
    pub(crate) fn method_not_allowed() -> Self {
        Self {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".to_owned(),
            details: Value::Null,
        }
    }

    /// 404 for a path the fake does not serve.
    pub(crate) fn no_route(path: &str) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
            details: Value::Null,
        }
    }

    /// The `Status` object, as served in a response or a watch's `ERROR` event.
    pub(crate) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

/// The `Status` of 410 `Gone`, sent as a watch's `ERROR` event for a too old
/// `resourceVersion`.
pub(crate) fn gone(requested: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {requested} ({oldest})"),
        "reason": "Expired",
        "code": 410,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, axum::Json(self.status())).into_response()
    }
}

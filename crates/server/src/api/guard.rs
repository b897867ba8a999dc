//! The gate every request passes: its route's access rule, its credential and,
//! for writes, its body's media type. Handlers receive the authenticated
//! [`Principal`] (or, for agent calls, the [`Caller`]) as a request extension.

use std::sync::Arc;

use axum::RequestExt;
use axum::body::HttpBody;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_core::access::Access;
use corral_core::error::FieldError;
use corral_core::ids::WorkerId;
use serde_json::json;

use super::error::ApiError;
use crate::auth::{self, AuthError, Caller};
use crate::engine::Engine;

/// The media types a request body may have: nothing a browser sends
/// cross-origin without asking first.
const BODY_TYPES: [&str; 2] = ["application/json", "application/yaml"];

fn unauthorized(e: &AuthError) -> Response {
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: e.to_string(),
        details: json!({}),
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn forbidden(message: String) -> Response {
    ApiError::forbidden(message).into_response()
}

/// Whether a write's body, if it has one, is JSON or YAML.
fn body_type_accepted(request: &Request) -> Result<(), ApiError> {
    if !matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    ) {
        return Ok(());
    }
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"));
    // Whatever the framing (HTTP/1 length or chunks, HTTP/2 frames), a body
    // not known to be empty counts as one.
    let has_body = content_type.is_some() || request.body().size_hint().exact() != Some(0);
    if !has_body {
        return Ok(());
    }
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if BODY_TYPES.contains(&essence.as_str()) {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        message: format!(
            "Content-Type: {:?} is not accepted; send {}",
            content_type.unwrap_or("(none)"),
            BODY_TYPES.join(" or ")
        ),
        details: json!({ "path": "Content-Type" }),
    })
}

/// The `{worker}` of an agent call's path; one that is not a worker id is bad input.
fn path_worker(params: &RawPathParams) -> Result<WorkerId, ApiError> {
    let text = params
        .iter()
        .find(|(k, _)| *k == "worker")
        .map_or("", |(_, v)| v);
    text.parse().map_err(|_| {
        ApiError::invalid(FieldError::new(
            "worker",
            format!("{text:?} is not a worker id"),
        ))
    })
}

/// Checks a request against its route's `access`; passes it on with who sent it.
pub async fn guard(
    State((engine, access)): State<(Arc<Engine>, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let secret = match auth::bearer(header) {
        Ok(s) => s.to_string(),
        Err(e) => return unauthorized(&e),
    };
    let caller = match engine.credentials().resolve(&secret, engine.now()) {
        Ok(c) => c,
        Err(e) => return unauthorized(&e),
    };
    if let Err(refused) = body_type_accepted(&request) {
        return refused.into_response();
    }
    match (access, caller) {
        (Access::Worker, Caller::Worker(id)) => {
            let params = match request.extract_parts::<RawPathParams>().await {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            match path_worker(&params) {
                Ok(path) if path == id => {}
                Err(refused) => return refused.into_response(),
                Ok(_) => {
                    return forbidden(format!(
                        "this secret is worker {id}'s: it acts for that worker only"
                    ));
                }
            }
            request.extensions_mut().insert(id);
        }
        (Access::Worker, _) => {
            return forbidden(
                "agent calls are made with the secret the worker got at registration".into(),
            );
        }
        // A used spawn credential registers only as a retry of its worker's
        // own registration, and a worker's secret not at all: the engine checks.
        (
            Access::Register,
            caller @ (Caller::Spawned { .. } | Caller::Registering(_) | Caller::Worker(_)),
        ) => {
            request.extensions_mut().insert(caller);
        }
        (_, Caller::Token(principal)) if access.allows(&principal.role) => {
            if engine.credentials().touch(&principal.name, engine.now()) {
                let engine = engine.clone();
                let name = principal.name.clone();
                tokio::spawn(async move { engine.persist_token_use(&name).await });
            }
            if access == Access::Register {
                request
                    .extensions_mut()
                    .insert(Caller::Token(principal.clone()));
            }
            request.extensions_mut().insert(principal);
        }
        (_, Caller::Token(principal)) => {
            return forbidden(format!(
                "token {} ({}) may not do this",
                principal.name, principal.role
            ));
        }
        (_, Caller::Worker(id)) => {
            return forbidden(format!(
                "worker {id}'s secret is for the agent protocol only"
            ));
        }
        (_, Caller::Registering(id)) => {
            return forbidden(format!(
                "this credential only retries worker {id}'s registration"
            ));
        }
        (_, Caller::Spawned { .. }) => {
            return forbidden("a local agent's credential is for its registration only".into());
        }
    }
    next.run(request).await
}

//! Console sessions: login with an API token, the session cookie, the CSRF
//! token of every form, and the gate each page passes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use corral_core::access::{Access, Role};
use maud::html;
use sha2::{Digest, Sha256};

use super::layout;
use crate::auth::{Caller, Principal};
use crate::engine::Engine;

/// The cookie that holds a console session's token.
pub const SESSION_COOKIE: &str = "corral_session";
/// How long a session lasts without logging in again (the token's own expiry
/// ends it sooner).
const SESSION_SECONDS: u64 = 12 * 3600;
/// The largest form the console takes.
pub(super) const MAX_FORM_BYTES: usize = 64 * 1024;
/// The longest token a login form takes.
const MAX_TOKEN_CHARS: usize = 512;

/// Who is logged in, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.principal.role == Role::Admin
    }

    /// Whether the visitor may submit and cancel runs of `tenant`.
    pub fn may_operate(&self, tenant: &str) -> bool {
        match &self.principal.role {
            Role::Admin => true,
            Role::Tenant { tenant: own } => own == tenant,
            _ => false,
        }
    }
}

/// The CSRF token of a session: bound to its token, unguessable without it.
pub fn csrf_of(secret: &str) -> String {
    let digest = Sha256::digest(format!("corral console csrf\n{secret}").as_bytes());
    hex::encode(&digest[..16])
}

/// The value of cookie `name` in a request's headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The person a token is for, if it may use the console (agents' tokens and
/// workers' secrets may not).
fn principal(engine: &Engine, secret: &str) -> Option<Principal> {
    match engine.credentials().resolve(secret, engine.now()) {
        Ok(Caller::Token(p)) if !matches!(p.role, Role::Agent { .. }) => Some(p),
        _ => None,
    }
}

fn refused(status: StatusCode, message: &str) -> Response {
    (status, layout::bare("Not allowed", message)).into_response()
}

/// Checks a page's access rule against the session, and a form's CSRF token
/// against the session's, before the handler runs. A page asked for without a
/// session sends the visitor to log in; a form posted without one is refused.
pub async fn gate(
    State((engine, access)): State<(Arc<Engine>, Access)>,
    request: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(request).await;
    }
    let secret = cookie(request.headers(), SESSION_COOKIE);
    let Some((secret, who)) = secret.and_then(|s| principal(&engine, &s).map(|p| (s, p))) else {
        if request.method() == Method::GET {
            let path = request.uri().path();
            return Redirect::to(&format!("/login?next={}", encode(path))).into_response();
        }
        return refused(
            StatusCode::FORBIDDEN,
            "This form needs a session: log in again.",
        );
    };
    if !access.allows(&who.role) {
        return refused(
            StatusCode::FORBIDDEN,
            &format!("Token {} ({}) may not do this.", who.name, who.role),
        );
    }
    let csrf = csrf_of(&secret);
    let mut request = if request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "This form is larger than the console takes (64 KiB).",
            );
        };
        let sent = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned());
        if sent.as_deref() != Some(csrf.as_str()) {
            return refused(
                StatusCode::FORBIDDEN,
                "This form did not come from this console (its CSRF token does not match): reload the page and try again.",
            );
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    if engine.credentials().touch(&who.name, engine.now()) {
        let engine = engine.clone();
        let name = who.name.clone();
        tokio::spawn(async move { engine.persist_token_use(&name).await });
    }
    request.extensions_mut().insert(Session {
        principal: who,
        csrf,
    });
    next.run(request).await
}

/// A path for a query string.
fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Where to go after logging in: a path of this console, nothing else.
fn next_page(query: &BTreeMap<String, String>) -> String {
    query
        .get("next")
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && n.len() <= 512)
        .cloned()
        .unwrap_or_else(|| "/".to_string())
}

fn login_form(next: &str, error: Option<&str>) -> maud::Markup {
    layout::bare_page(
        "Log in",
        html! {
            form.login method="post" action={ "/login?next=" (encode(next)) } {
                h1 { "corral" }
                p.muted { "Log in with an API token (" code { "corral token create" } ")." }
                (layout::field_with(
                    "token",
                    "API token",
                    error,
                    html! {
                        input #token name="token" type="password" required
                            autocomplete="current-password" maxlength=(MAX_TOKEN_CHARS)
                            aria-invalid=[error.map(|_| "true")]
                            aria-describedby=[error.map(|_| "token-error")];
                    },
                ))
                button.primary type="submit" { "Log in" }
            }
        },
    )
}

pub async fn login_page(Query(query): Query<BTreeMap<String, String>>) -> Response {
    login_form(&next_page(&query), None).into_response()
}

pub async fn login(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<BTreeMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let next = next_page(&query);
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let error = if token.is_empty() {
        Some("Enter a token.")
    } else if token.len() > MAX_TOKEN_CHARS {
        Some("This is longer than any token.")
    } else if principal(&engine, &token).is_none() {
        Some("This token is not valid (unknown, revoked or expired), or is an agent's.")
    } else {
        None
    };
    if let Some(error) = error {
        return (StatusCode::UNAUTHORIZED, login_form(&next, Some(error))).into_response();
    }
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}"
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

pub async fn logout() -> Response {
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; corral_session=corral_abc; x=1"
                .parse()
                .expect("header"),
        );
        assert_eq!(
            cookie(&headers, SESSION_COOKIE).as_deref(),
            Some("corral_abc")
        );
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn login_only_returns_to_this_console() {
        let next = |n: &str| next_page(&BTreeMap::from([("next".to_string(), n.to_string())]));
        assert_eq!(next("/pools/a"), "/pools/a");
        assert_eq!(next("//evil.example/"), "/");
        assert_eq!(next("https://evil.example/"), "/");
        assert_eq!(csrf_of("a").len(), 32);
        assert_ne!(csrf_of("a"), csrf_of("b"));
    }
}

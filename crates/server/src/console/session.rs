//! Console sessions: login with an API token into a server-side session
//! (the cookie holds the session's random id, never the token), the CSRF
//! token of every form, the gate each page passes, and logout.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, to_bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use corral_core::access::{Access, Role};
use hmac::{Hmac, KeyInit, Mac};
use maud::html;
use sha2::Sha256;

use super::{PageError, layout, origin};
use crate::auth::{self, Caller, Principal};
use crate::engine::Engine;

/// The cookie that holds a console session's id, on plain HTTP.
pub const SESSION_COOKIE: &str = "corral_session";
/// The cookie under TLS: `__Host-` makes the browser take it only when
/// `Secure`, for the whole site (`Path=/`) and this host alone (no `Domain`).
pub const SECURE_SESSION_COOKIE: &str = "__Host-corral_session";
/// The largest form the console takes.
pub(super) const MAX_FORM_BYTES: usize = 64 * 1024;
/// The longest token a login form takes.
const MAX_TOKEN_CHARS: usize = 512;
/// The length of a session id in its cookie (256 bits, hex).
const SESSION_ID_CHARS: usize = 64;

/// How the server is reached: whether it serves TLS, which names the
/// session's cookie and marks it `Secure`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transport {
    pub tls: bool,
}

impl Transport {
    fn cookie_name(self) -> &'static str {
        if self.tls {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// The `Set-Cookie` value that holds `id` for `max_age_s` (0 clears it).
    fn cookie(self, id: &str, max_age_s: i64) -> String {
        let secure = if self.tls { "; Secure" } else { "" };
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}",
            self.cookie_name()
        )
    }
}

/// Who is logged in, and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
    /// The hash of the session's id: what its event stream checks at each tick.
    pub(super) id_hash: String,
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

/// A session's CSRF MAC: HMAC-SHA256 keyed by the session's id, which only
/// the session's browser holds (in an `HttpOnly` cookie), so another site
/// can neither read nor compute it; it survives a restart with the session.
fn csrf_mac(session_id: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(session_id.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"corral console csrf");
    mac
}

/// The CSRF token of the session of id `session_id`, hex.
pub fn csrf_of(session_id: &str) -> String {
    hex::encode(csrf_mac(session_id).finalize().into_bytes())
}

/// Whether `sent` is the CSRF token of session `session_id`, compared in
/// constant time.
fn csrf_matches(session_id: &str, sent: &str) -> bool {
    hex::decode(sent).is_ok_and(|bytes| csrf_mac(session_id).verify_slice(&bytes).is_ok())
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
    Extension(transport): Extension<Transport>,
    request: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(request).await;
    }
    let session = cookie(request.headers(), transport.cookie_name())
        .filter(|id| id.len() == SESSION_ID_CHARS)
        .and_then(|id| {
            let id_hash = auth::hash(&id);
            let who = engine.session_principal(&id_hash)?;
            Some((id, id_hash, who))
        });
    let Some((id, id_hash, who)) = session else {
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
        if !sent.is_some_and(|sent| csrf_matches(&id, &sent)) {
            return refused(
                StatusCode::FORBIDDEN,
                "This form did not come from this console (its CSRF token does not match): reload the page and try again.",
            );
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    let now = engine.now();
    if engine.sessions().touch(&id_hash, now) {
        let engine = engine.clone();
        let id_hash = id_hash.clone();
        tokio::spawn(async move { engine.persist_session_use(&id_hash).await });
    }
    if engine.credentials().touch(&who.name, now) {
        let engine = engine.clone();
        let name = who.name.clone();
        tokio::spawn(async move { engine.persist_token_use(&name).await });
    }
    request.extensions_mut().insert(Session {
        principal: who,
        csrf: csrf_of(&id),
        id_hash,
    });
    next.run(request).await
}

/// A path for a query string.
fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
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

fn next_of(query: &BTreeMap<String, String>) -> String {
    origin::next_page(query.get("next").map(String::as_str))
}

pub async fn login_page(Query(query): Query<BTreeMap<String, String>>) -> Response {
    login_form(&next_of(&query), None).into_response()
}

/// A form posted from another site: refused, and nothing done.
fn foreign(what: &str) -> Response {
    refused(
        StatusCode::FORBIDDEN,
        &format!(
            "This {what} did not come from this console's own page; open the console and {what} there."
        ),
    )
}

/// Opens a session for a valid token (not an agent's) and sends the visitor
/// on, with the session's id in the cookie; a login posted from another
/// origin opens none.
pub async fn login(
    State(engine): State<Arc<Engine>>,
    Extension(transport): Extension<Transport>,
    Query(query): Query<BTreeMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !origin::same_origin(&headers, &uri, transport.tls) {
        return foreign("log in");
    }
    let next = next_of(&query);
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
    let id = match engine.open_session(&auth::hash(&token)).await {
        Ok(id) => id,
        Err(e) => return PageError::from(e).into_response(),
    };
    let lifetime_s = engine.sessions().limits().lifetime_ms / 1000;
    (
        [(header::SET_COOKIE, transport.cookie(&id, lifetime_s))],
        Redirect::to(&next),
    )
        .into_response()
}

/// Ends the visitor's session, in the store too, and clears its cookie; a
/// logout posted from another origin ends nothing.
pub async fn logout(
    State(engine): State<Arc<Engine>>,
    Extension(transport): Extension<Transport>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !origin::same_origin(&headers, &uri, transport.tls) {
        return foreign("log out");
    }
    if let Some(id) =
        cookie(&headers, transport.cookie_name()).filter(|id| id.len() == SESSION_ID_CHARS)
        && let Err(e) = engine.end_session(&auth::hash(&id)).await
    {
        return PageError::from(e).into_response();
    }
    (
        [(header::SET_COOKIE, transport.cookie("", 0))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; corral_session=abc; x=1"
                .parse()
                .expect("header"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, SECURE_SESSION_COOKIE), None);
    }

    #[test]
    fn csrf_tokens_are_keyed_by_the_session() {
        let (a, b) = (crate::sessions::new_id(), crate::sessions::new_id());
        assert_eq!(csrf_of(&a).len(), 64);
        assert_ne!(csrf_of(&a), csrf_of(&b));
        assert!(csrf_matches(&a, &csrf_of(&a)));
        assert!(!csrf_matches(&a, &csrf_of(&b)));
        assert!(!csrf_matches(&a, &csrf_of(&a)[..32]));
        assert!(!csrf_matches(&a, "not hex"));
        assert!(!csrf_matches(&a, ""));
    }

    #[test]
    fn the_cookie_is_host_only_and_secure_under_tls() {
        let plain = Transport { tls: false }.cookie("abc", 60);
        assert_eq!(
            plain,
            "corral_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        let tls = Transport { tls: true }.cookie("abc", 60);
        assert_eq!(
            tls,
            "__Host-corral_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }
}

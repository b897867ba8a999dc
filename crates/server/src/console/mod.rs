//! The web console at `/`: server-rendered pages over the same engine calls
//! and views as the API, for people with a browser.
//!
//! A visitor logs in with an API token into a server-side session: the
//! cookie (`HttpOnly`, `SameSite=Strict`, `__Host-` and `Secure` under TLS)
//! holds a random session id whose hash the store keeps; the session ends on
//! logout, with its token (revoked or expired), when idle too long and at the
//! end of its lifetime, and survives a restart. Login and logout refuse forms
//! posted from other origins, and a login returns only to a path of this
//! site. Every form carries a CSRF token keyed by the session, checked before
//! any handler runs; every response carries a Content-Security-Policy and the
//! other protections of `headers.rs`. Each page has an access rule, like
//! every API route; a page hides what the visitor's role may not do, and the
//! server refuses it anyway.

mod agents;
mod assets;
mod audit;
mod charts;
mod confirm;
mod dashboards;
mod forms;
mod headers;
mod layout;
mod origin;
mod overview;
mod pools;
mod prices;
mod rightsizing;
mod runs;
mod session;
mod spend;
mod tenants;
mod tokens;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Router};
use corral_core::access::Access;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api::error::ApiError;
use crate::engine::Engine;

pub use headers::CONTENT_SECURITY_POLICY;
pub use session::{SECURE_SESSION_COOKIE, SESSION_COOKIE, csrf_of};

type Handler = MethodRouter<Arc<Engine>>;

/// One page or form of the console, with its access rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

fn table() -> Vec<(PageSpec, Handler)> {
    use Access::*;
    let p = |method: &'static str, path: &'static str, access: Access, handler: Handler| {
        (
            PageSpec {
                method,
                path,
                access,
            },
            handler,
        )
    };
    vec![
        p("GET", "/", Read, get(overview::page)),
        p("GET", "/events", Read, get(overview::events)),
        p("GET", "/login", Public, get(session::login_page)),
        p("POST", "/login", Public, post(session::login)),
        p("POST", "/logout", Public, post(session::logout)),
        p("GET", "/assets/{file}", Public, get(assets::serve)),
        p("GET", "/pools", Read, get(pools::list)),
        p("GET", "/pools/new", Admin, get(pools::new_form)),
        p("POST", "/pools", Admin, post(pools::create)),
        p("GET", "/pools/{name}", Read, get(pools::detail)),
        p("POST", "/pools/{name}", Admin, post(pools::update)),
        p("POST", "/pools/{name}/state", Admin, post(pools::set_state)),
        p("POST", "/pools/{name}/delete", Admin, post(pools::delete)),
        p("GET", "/tenants", Read, get(tenants::list)),
        p("GET", "/tenants/new", Admin, get(tenants::new_form)),
        p("POST", "/tenants", Admin, post(tenants::create)),
        p("GET", "/tenants/{name}", Read, get(tenants::detail)),
        p("POST", "/tenants/{name}", Admin, post(tenants::update)),
        p(
            "POST",
            "/tenants/{name}/delete",
            Admin,
            post(tenants::delete),
        ),
        p("GET", "/queue", Read, get(runs::queue)),
        p("GET", "/runs/{id}", Read, get(runs::detail)),
        p(
            "GET",
            "/pipelines/{name}/recommendation",
            Read,
            get(rightsizing::page),
        ),
        p("GET", "/runs/{id}/log", Read, get(runs::log)),
        p("POST", "/runs/{id}/cancel", Operate, post(runs::cancel)),
        p("GET", "/dashboards", Read, get(dashboards::page)),
        p(
            "GET",
            "/dashboards/usage.csv",
            Read,
            get(dashboards::usage_csv),
        ),
        p(
            "GET",
            "/dashboards/waits.csv",
            Read,
            get(dashboards::waits_csv),
        ),
        p("GET", "/agents", Read, get(agents::page)),
        p("GET", "/prices", Read, get(prices::page)),
        p("GET", "/tokens", ReadAll, get(tokens::list)),
        p("POST", "/tokens", Admin, post(tokens::create)),
        p("POST", "/tokens/{name}/revoke", Admin, post(tokens::revoke)),
        p("GET", "/audit", ReadAll, get(audit::page)),
    ]
}

/// Every page and form with its access rule.
pub fn page_table() -> Vec<PageSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

/// The console's routes; merged with the API's, which keep `/api`, `/metrics`
/// and `/healthz`. A form's body is read within `body_timeout`, and is at most
/// 64 KiB (the login's too). `tls` says whether the server serves TLS (the
/// session cookie is then `Secure`, and HSTS is sent).
pub fn router(engine: Arc<Engine>, body_timeout: std::time::Duration, tls: bool) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        let gate = from_fn_with_state((engine.clone(), spec.access), session::gate);
        let handler = handler.layer(RequestBodyTimeoutLayer::new(body_timeout));
        router = router.route(spec.path, handler.route_layer(gate));
    }
    router
        .with_state(engine)
        .layer(DefaultBodyLimit::max(session::MAX_FORM_BYTES))
        .layer(Extension(session::Transport { tls }))
        .layer(from_fn_with_state(tls, headers::secure))
}

/// What a console handler answers when it fails: the API's error as a page,
/// under a title that says what was not done when the handler gives one.
pub struct PageError {
    error: ApiError,
    title: Option<String>,
}

impl PageError {
    /// The page's title, such as `Pool main was not deleted`.
    pub fn titled(self, title: impl Into<String>) -> PageError {
        PageError {
            title: Some(title.into()),
            ..self
        }
    }
}

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError {
            error: e.into(),
            title: None,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.error;
        let title = self.title.unwrap_or_else(|| {
            match e.status {
                StatusCode::NOT_FOUND => "Not found",
                StatusCode::FORBIDDEN => "Not allowed",
                StatusCode::CONFLICT => "Refused",
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "Not valid",
                StatusCode::SERVICE_UNAVAILABLE => "The store is unavailable",
                _ => "Something went wrong",
            }
            .to_string()
        });
        (e.status, layout::bare(&title, &e.message)).into_response()
    }
}

type PageResult = Result<Response, PageError>;

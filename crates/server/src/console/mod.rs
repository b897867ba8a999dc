//! The web console at `/`: server-rendered pages over the same engine calls
//! and views as the API, for people with a browser.
//!
//! A visitor logs in with an API token; the session is an `HttpOnly`,
//! `SameSite=Strict` cookie holding that token, so that revoking or expiring the
//! token ends the session, and a restart of the server does not. Every form
//! carries a CSRF token derived from the session's, checked before any handler
//! runs. Each page has an access rule, like every API route; a page hides what
//! the visitor's role may not do, and the server refuses it anyway.

mod agents;
mod assets;
mod audit;
mod charts;
mod dashboards;
mod forms;
mod layout;
mod overview;
mod pools;
mod prices;
mod rightsizing;
mod runs;
mod session;
mod tenants;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use corral_core::access::Access;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api::error::ApiError;
use crate::engine::Engine;

pub use session::{SESSION_COOKIE, csrf_of};

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
        p("GET", "/tenants/{name}", Read, get(tenants::detail)),
        p("POST", "/tenants/{name}", Admin, post(tenants::update)),
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
/// 64 KiB (the login's too).
pub fn router(engine: Arc<Engine>, body_timeout: std::time::Duration) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        let gate = from_fn_with_state((engine.clone(), spec.access), session::gate);
        let handler = handler.layer(RequestBodyTimeoutLayer::new(body_timeout));
        router = router.route(spec.path, handler.route_layer(gate));
    }
    router
        .with_state(engine)
        .layer(DefaultBodyLimit::max(session::MAX_FORM_BYTES))
}

/// What a console handler answers when it fails: the API's error as a page.
pub struct PageError(ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        let title = match e.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::SERVICE_UNAVAILABLE => "The store is unavailable",
            _ => "Something went wrong",
        };
        (e.status, layout::bare(title, &e.message)).into_response()
    }
}

type PageResult = Result<Response, PageError>;

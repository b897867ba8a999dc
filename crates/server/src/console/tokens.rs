//! Tokens: every token with its role, what it is bound to, and when it was
//! created, expires, was last used and revoked; for `admin`, a form that
//! creates one (its secret shown once, on the answer only) and revocation
//! after a confirmation.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use corral_api::{TokenCreate, TokenView};
use corral_core::pool::Provider;
use maud::{Markup, html};
use serde_json::Value;

use super::forms;
use super::layout::{self, Section};
use super::session::Session;
use super::{PageError, PageResult};
use crate::api::error::{ApiError, PathParam};
use crate::api::routes::{make_token, token_view};
use crate::engine::Engine;

const ROLES: [&str; 4] = ["viewer", "tenant", "agent", "admin"];

/// The form's fields, as the visitor typed them.
#[derive(Default)]
struct Typed {
    name: String,
    role: String,
    tenant: String,
    pool: String,
    expires: String,
}

impl Typed {
    fn from_body(body: &[u8]) -> Typed {
        let mut f = forms::fields(body);
        let mut take = |k: &str| f.remove(k).unwrap_or_default();
        Typed {
            name: take("name"),
            role: take("role"),
            tenant: take("tenant"),
            pool: take("pool"),
            expires: take("expires"),
        }
    }

    fn request(&self) -> TokenCreate {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        TokenCreate {
            name: self.name.clone(),
            role: self.role.clone(),
            tenant: some(&self.tenant),
            pool: some(&self.pool),
            expires: some(&self.expires),
        }
    }
}

/// The tenants a token may be bound to, and the static pools.
async fn choices(engine: &Engine) -> (Vec<String>, Vec<String>) {
    let state = engine.read_model().view();
    (
        state.tenants.keys().cloned().collect(),
        state
            .pools
            .values()
            .filter(|p| p.spec.provider == Provider::Static)
            .map(|p| p.spec.name.clone())
            .collect(),
    )
}

fn tokens(engine: &Engine) -> Vec<TokenView> {
    let mut all: Vec<TokenView> = engine
        .credentials()
        .tokens()
        .iter()
        .map(|t| token_view(engine, t))
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

fn optional_time(t: Option<&String>, none: &str) -> Markup {
    match t {
        Some(t) => layout::time(t),
        None => html! { span.muted { (none) } },
    }
}

fn table(session: &Session, tokens: &[TokenView]) -> Markup {
    html! {
        div.table-wrap tabindex="0" { table #tokens {
            thead { tr {
                th scope="col" { "Token" } th scope="col" { "Role" } th scope="col" { "Bound to" }
                th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Last used" }
                th scope="col" { "Revoked" }
                @if session.is_admin() { th scope="col" { "Revoke" } }
            } }
            tbody { @for t in tokens {
                tr data-token=(t.name) {
                    td { (t.name) }
                    td { (t.role) }
                    td {
                        @if let Some(tenant) = &t.tenant { "tenant " (tenant) }
                        @else if let Some(pool) = &t.pool { "pool " (pool) }
                        @else { span.muted { "—" } }
                    }
                    td { (layout::time(&t.created_at)) }
                    td { (optional_time(t.expires_at.as_ref(), "never")) }
                    td { (optional_time(t.last_used_at.as_ref(), "never")) }
                    td { (optional_time(t.revoked_at.as_ref(), "no")) }
                    @if session.is_admin() {
                        td { @if t.revoked_at.is_none() {
                            form method="post" action={ "/tokens/" (t.name) "/revoke" } {
                                (layout::csrf(session))
                                button.danger type="submit" aria-label={ "Revoke token " (t.name) } { "Revoke" }
                            }
                        } }
                    }
                }
            } }
        } }
    }
}

/// The form that creates a token, with what was typed and the error next to
/// its field.
fn form(
    session: &Session,
    (tenants, pools): &(Vec<String>, Vec<String>),
    typed: &Typed,
    error: Option<(&str, &str)>,
) -> Markup {
    let err = |field: &str| error.and_then(|(f, m)| (f == field).then_some(m));
    let select = |name: &str, label: &str, none: &str, options: &[String], current: &str| {
        layout::field_with(
            name,
            label,
            err(name),
            html! {
                select id=(name) name=(name) aria-invalid=[err(name).map(|_| "true")]
                    aria-describedby=[err(name).map(|_| format!("{name}-error"))] {
                    @if !none.is_empty() { option value="" { (none) } }
                    @for o in options { option value=(o) selected[current == o] { (o) } }
                }
            },
        )
    };
    let roles: Vec<String> = ROLES.iter().map(|r| r.to_string()).collect();
    let general = error.filter(|(f, _)| !["name", "role", "tenant", "pool", "expires"].contains(f));
    html! {
        form.stack method="post" action="/tokens" novalidate {
            (layout::csrf(session))
            @if let Some((_, message)) = general { p.alert role="alert" { (message) } }
            (layout::text_field("name", "Name", &typed.name, err("name"), "Letters, digits, '.', '_' and '-', at most 63."))
            div.row {
                (select("role", "Role", "", &roles, &typed.role))
                (select("tenant", "Tenant (a tenant token)", "none", tenants, &typed.tenant))
                (select("pool", "Static pool (an agent token)", "none", pools, &typed.pool))
            }
            (layout::text_field("expires", "Expires after", &typed.expires, err("expires"), "Such as 12h or 30d; empty: never."))
            div.actions { button.primary type="submit" { "Create token" } }
        }
    }
}

pub async fn list(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let all = tokens(&engine);
    let choices = choices(&engine).await;
    let body = html! {
        @if let Some(name) = query.get("revoked") {
            p.notice role="status" { "Token " (name) " is revoked: it is refused from now on." }
        }
        (table(&session, &all))
        @if session.is_admin() {
            h2 { "New token" }
            (form(&session, &choices, &Typed { role: "viewer".into(), ..Typed::default() }, None))
        }
    };
    Ok(layout::page(&session, Section::Tokens, "Tokens", body).into_response())
}

/// Creates a token; the answer shows its secret this once and is never
/// stored by the browser. A refused token: the form again, with its error.
pub async fn create(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> PageResult {
    let typed = Typed::from_body(&body);
    match make_token(&engine, &session.principal, typed.request()).await {
        Ok(created) => {
            let t = &created.token;
            let body = html! {
                p.notice role="status" { "Token " (t.name) " is created. Copy its secret now: it is shown only this once." }
                section.card {
                    dl.facts {
                        dt { "Role" } dd { (t.role) }
                        @if let Some(tenant) = &t.tenant { dt { "Tenant" } dd { (tenant) } }
                        @if let Some(pool) = &t.pool { dt { "Pool" } dd { (pool) } }
                        dt { "Expires" } dd { (optional_time(t.expires_at.as_ref(), "never")) }
                    }
                    label for="secret" { "Secret" }
                    input #secret.secret type="text" readonly value=(created.secret) aria-describedby="secret-hint";
                    p.hint #secret-hint { "Give it as a bearer token (" code { "Authorization: Bearer …" } ") or to " code { "corral login" } "." }
                }
                p { a href="/tokens" { "Back to the tokens" } }
            };
            Ok((
                StatusCode::CREATED,
                [(header::CACHE_CONTROL, "no-store")],
                layout::page(
                    &session,
                    Section::Tokens,
                    &format!("Token {}", t.name),
                    body,
                ),
            )
                .into_response())
        }
        Err(e) if matches!(e.status, StatusCode::BAD_REQUEST | StatusCode::CONFLICT) => {
            let path = e
                .details
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("name");
            let choices = choices(&engine).await;
            let body = form(&session, &choices, &typed, Some((path, &e.message)));
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                layout::page(&session, Section::Tokens, "New token", body),
            )
                .into_response())
        }
        Err(e) => Err(PageError::from(e)),
    }
}

/// Revokes a token once the visitor confirms: the first post answers a page
/// that asks, whose form posts again with `confirm=yes`.
pub async fn revoke(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    let confirmed = forms::fields(&body).get("confirm").map(String::as_str) == Some("yes");
    if !confirmed {
        let token = engine
            .credentials()
            .token(&name)
            .ok_or_else(|| ApiError::not_found("token", &name))?;
        let t = token_view(&engine, &token);
        let body = html! {
            p { "Revoke token " strong { (t.name) } " (" (t.role) ")? Every request and console session made with it is refused from then on; this cannot be undone." }
            div.actions {
                form method="post" action={ "/tokens/" (t.name) "/revoke" } {
                    (layout::csrf(&session))
                    input type="hidden" name="confirm" value="yes";
                    button.danger type="submit" { "Revoke " (t.name) }
                }
                a href="/tokens" { "Keep it" }
            }
        };
        return Ok(layout::page(
            &session,
            Section::Tokens,
            &format!("Revoke token {name}?"),
            body,
        )
        .into_response());
    }
    engine.revoke_token(&session.principal, &name).await?;
    let to = form_urlencoded::Serializer::for_suffix(String::from("/tokens?"), "/tokens?".len())
        .append_pair("revoked", &name)
        .finish();
    Ok(Redirect::to(&to).into_response())
}

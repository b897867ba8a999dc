//! Pools: the list, a pool's page (capacity, agents and their heartbeats,
//! utilization and saturation over time), and the forms that create, edit,
//! drain, disable and delete them, validated as the API validates a Pool.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use corral_api::PoolView;
use corral_core::pool::PoolSpec;
use maud::{Markup, html};
use serde_json::Value;

use super::forms::{self, Kind};
use super::layout::{self, Section};
use super::session::Session;
use super::{PageError, PageResult, agents, charts};
use crate::api::error::{ApiError, PathParam};
use crate::api::routes::{may_use_pool, pool_view};
use crate::api::views;
use crate::engine::Engine;

/// The fields of the pool form, by their path in a Pool document.
const FIELDS: [(&str, Kind); 12] = [
    ("name", Kind::Text),
    ("provider", Kind::Text),
    ("capacity.cpu", Kind::Text),
    ("capacity.memory", Kind::Text),
    ("capacity.gpu", Kind::Number),
    ("max_workers", Kind::Number),
    ("labels", Kind::Pairs),
    ("price.cpu_hour", Kind::Number),
    ("price.memory_gib_hour", Kind::Number),
    ("price.gpu_hour", Kind::Number),
    ("state", Kind::Text),
    ("require_confinement", Kind::Bool),
];

pub async fn list(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let pools: Vec<PoolView> = {
        let state = engine.read().await;
        let snapshot = state.snapshot(engine.now());
        state
            .pools
            .values()
            .filter(|p| may_use_pool(&state, &session.principal, &p.spec.name))
            .map(|p| {
                views::pool(
                    p,
                    &snapshot,
                    state.reserved_on(&p.spec.name, &snapshot),
                    state.agents_of(&p.spec.name),
                )
            })
            .collect()
    };
    let body = html! {
        @if session.is_admin() {
            div.actions { a href="/pools/new" { "New pool" } }
        }
        (layout::live("pools", html! {
            div.table-wrap tabindex="0" { table {
                thead { tr {
                    th scope="col" { "Pool" } th scope="col" { "Provider" } th scope="col" { "State" }
                    th.num scope="col" { "CPU used / capacity" } th.num scope="col" { "Memory used / capacity" }
                    th.num scope="col" { "Workers" } th.num scope="col" { "Price (cpu-hour)" }
                } }
                tbody {
                    @for p in &pools {
                        tr {
                            td { a href={ "/pools/" (p.name) } { (p.name) } }
                            td { (p.provider) }
                            td { (layout::state(&p.state)) }
                            td.num { (layout::cores(p.used.cpu_millis)) " / " (layout::cores(p.capacity.cpu_millis)) }
                            td.num { (layout::memory(p.used.memory_mib)) " / " (layout::memory(p.capacity.memory_mib)) }
                            td.num { (p.workers) "/" (p.max_workers) }
                            td.num { (format!("{:.4}", p.price.cpu_hour)) }
                        }
                    }
                }
            } }
        }))
    };
    Ok(layout::page(&session, Section::Pools, "Pools", body).into_response())
}

/// The pool form, filled with `doc`'s values, with `error` next to its field.
fn form(
    session: &Session,
    action: &str,
    doc: &Value,
    error: Option<(&str, &str)>,
    creating: bool,
) -> Markup {
    let err = |field: &str| error.and_then(|(f, m)| (f == field).then_some(m));
    let text = |field: &str, label: &str, hint: &str| {
        layout::text_field(field, label, &forms::text_at(doc, field), err(field), hint)
    };
    let select = |field: &str, label: &str, options: &[&str]| {
        let current = forms::text_at(doc, field);
        layout::field_with(
            field,
            label,
            err(field),
            html! {
                select id=(field) name=(field) {
                    @for o in options {
                        option value=(o) selected[current == *o] { (o) }
                    }
                }
            },
        )
    };
    let general = error.filter(|(f, _)| !FIELDS.iter().any(|(p, _)| p == f));
    html! {
        form.stack method="post" action=(action) novalidate {
            (layout::csrf(session))
            @if let Some((_, message)) = general {
                p.alert role="alert" { (message) }
            }
            @if creating {
                (text("name", "Name", "Letters, digits, '.', '_' and '-', at most 63."))
            } @else {
                input type="hidden" name="name" value=(forms::text_at(doc, "name"));
            }
            div.row {
                (select("provider", "Provider", &["local", "static"]))
                (select("state", "State", &["active", "draining", "disabled"]))
            }
            div.row {
                (text("capacity.cpu", "CPU", "Cores, such as 8 or 500m (local pools)."))
                (text("capacity.memory", "Memory", "Such as 16Gi or 512Mi."))
                (text("capacity.gpu", "GPUs", ""))
            }
            div.row {
                (text("max_workers", "Max workers", ""))
                (text("labels", "Labels", "key=value, separated by commas."))
                (select("require_confinement", "Require confined agents", &["false", "true"]))
            }
            div.row {
                (text("price.cpu_hour", "Price per cpu-hour", ""))
                (text("price.memory_gib_hour", "Price per GiB-hour", ""))
                (text("price.gpu_hour", "Price per gpu-hour", ""))
            }
            div.actions {
                button.primary type="submit" { @if creating { "Create pool" } @else { "Save" } }
            }
        }
    }
}

pub async fn new_form(Extension(session): Extension<Session>) -> Response {
    let doc = serde_json::json!({"provider": "local", "state": "active"});
    let body = form(&session, "/pools", &doc, None, true);
    layout::page(&session, Section::Pools, "New pool", body).into_response()
}

/// The pool the form describes, or the field and message of what is wrong.
fn parse(body: &[u8]) -> Result<PoolSpec, (Value, String, String)> {
    let fields = forms::fields(body);
    let doc = match forms::document(&fields, &FIELDS) {
        Ok(doc) => doc,
        Err((field, message)) => {
            let doc = forms::document(
                &fields.into_iter().filter(|(k, _)| *k != field).collect(),
                &FIELDS,
            )
            .unwrap_or_default();
            return Err((doc, field, message));
        }
    };
    PoolSpec::parse(doc.clone()).map_err(|e| {
        let field = forms::field_of(&e.path, &FIELDS)
            .unwrap_or(&e.path)
            .to_string();
        (doc, field, e.message)
    })
}

/// Saves the pool a form describes; on a bad field, the form again with its error.
async fn save(engine: &Engine, session: &Session, body: &[u8], creating: bool) -> PageResult {
    let (title, action) = if creating {
        ("New pool".to_string(), "/pools".to_string())
    } else {
        let name = forms::text_at(
            &forms::document(&forms::fields(body), &FIELDS).unwrap_or_default(),
            "name",
        );
        (format!("Pool {name}"), format!("/pools/{name}"))
    };
    let refused = |doc: &Value, field: &str, message: &str| {
        let body = form(session, &action, doc, Some((field, message)), creating);
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            layout::page(session, Section::Pools, &title, body),
        )
            .into_response()
    };
    let spec = match parse(body) {
        Ok(spec) => spec,
        Err((doc, field, message)) => return Ok(refused(&doc, &field, &message)),
    };
    let name = spec.name.clone();
    let doc = serde_json::to_value(&spec).unwrap_or_default();
    match engine.put_pool(&session.principal, spec, creating).await {
        Ok(_) => Ok(Redirect::to(&format!("/pools/{name}?saved=1")).into_response()),
        Err(e) => {
            let e = ApiError::from(e);
            if e.status == StatusCode::UNPROCESSABLE_ENTITY
                || e.status == StatusCode::BAD_REQUEST
                || e.status == StatusCode::CONFLICT
            {
                let path = e.details.get("path").and_then(Value::as_str).unwrap_or("");
                let field = forms::field_of(path, &FIELDS).unwrap_or("name");
                Ok(refused(&doc, field, &e.message))
            } else {
                Err(PageError::from(e))
            }
        }
    }
}

pub async fn create(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> PageResult {
    save(&engine, &session, &body, true).await
}

pub async fn update(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    let mut fields = forms::fields(&body);
    fields.insert("name".into(), name);
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter())
        .finish();
    save(&engine, &session, body.as_bytes(), false).await
}

/// Sets only a pool's state (drain, disable, activate), keeping the rest.
pub async fn set_state(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    let fields = forms::fields(&body);
    let spec = {
        let state = engine.read().await;
        state
            .pools
            .get(&name)
            .map(|p| p.spec.clone())
            .ok_or_else(|| ApiError::not_found("pool", &name))?
    };
    let mut doc = serde_json::to_value(&spec).unwrap_or_default();
    doc["state"] = Value::String(fields.get("state").cloned().unwrap_or_default());
    let spec = PoolSpec::parse(doc).map_err(ApiError::from)?;
    engine.put_pool(&session.principal, spec, false).await?;
    Ok(Redirect::to(&format!("/pools/{name}?saved=1")).into_response())
}

pub async fn delete(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
) -> PageResult {
    engine.delete_pool(&session.principal, &name).await?;
    Ok(Redirect::to("/pools").into_response())
}

pub async fn detail(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let view = pool_view(&engine, &session.principal, &name).await?;
    let spec = {
        let state = engine.read().await;
        state.pools.get(&name).map(|p| p.spec.clone())
    };
    let range = charts::Range::from_query(&query);
    let charts = charts::pool_charts(&engine, &session.principal, &name, range).await?;
    let doc = spec
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let body = html! {
        @if query.contains_key("saved") {
            p.notice role="status" { "Saved." }
        }
        (layout::live("pool", html! {
            section.card {
                (layout::resource_bars(&view.used, &view.reserved, &view.capacity))
                dl.facts {
                    dt { "Provider" } dd { (view.provider) }
                    dt { "State" } dd { (layout::state(&view.state)) }
                    dt { "Workers" } dd { (view.workers) " of at most " (view.max_workers) }
                    dt { "Labels" } dd { (forms::text_at(&doc, "labels")) }
                    dt { "Price" } dd {
                        (format!("{:.4}", view.price.cpu_hour)) " a cpu-hour, "
                        (format!("{:.4}", view.price.memory_gib_hour)) " a GiB-hour, "
                        (format!("{:.4}", view.price.gpu_hour)) " a gpu-hour"
                    }
                }
            }
            h2 { "Agents" }
            p { a href={ "/agents?pool=" (name) } { "Every agent of the pool" } }
            @if view.require_confinement {
                p { "Agents that cannot confine their steps are refused (" code { "require_confinement: true" } ")." }
            }
            @if view.live_agents.is_empty() { p.muted { "No live agent." } }
            @else { (agents::agent_table(&view.live_agents, engine.now().0)) }
        }))
        h2 { "Utilization and saturation" }
        (charts::range_links(&format!("/pools/{name}"), range))
        div.grid { (charts) }
        @if session.is_admin() {
            h2 { "Change" }
            div.actions {
                @for (target, label) in [("draining", "Drain"), ("disabled", "Disable"), ("active", "Activate")] {
                    @if view.state != target {
                        form method="post" action={ "/pools/" (name) "/state" } {
                            (layout::csrf(&session))
                            input type="hidden" name="state" value=(target);
                            button type="submit" { (label) }
                        }
                    }
                }
                form method="post" action={ "/pools/" (name) "/delete" } {
                    (layout::csrf(&session))
                    button.danger type="submit" { "Delete pool" }
                }
            }
            (form(&session, &format!("/pools/{name}"), &doc, None, false))
        }
    };
    Ok(layout::page(&session, Section::Pools, &format!("Pool {name}"), body).into_response())
}

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
use corral_core::error::FieldError;
use corral_core::pool::PoolSpec;
use maud::{Markup, html};
use serde_json::Value;

use super::forms::{self, Kind, Problems};
use super::layout::{self, Section};
use super::session::Session;
use super::{PageError, PageResult, agents, charts, confirm};
use crate::api::error::{ApiError, PathParam};
use crate::api::routes::{may_use_pool, pool_view};
use crate::api::views;
use crate::engine::{Engine, EngineError};

/// The fields of the pool form, by their path in a Pool document.
const FIELDS: [(&str, Kind); 15] = [
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
    ("max_agent.cpu", Kind::Text),
    ("max_agent.memory", Kind::Text),
    ("max_agent.gpu", Kind::Number),
];

pub async fn list(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let pools: Vec<PoolView> = {
        let state = engine.read_model().view();
        state
            .pools
            .values()
            .filter(|p| may_use_pool(&state, &session.principal, &p.spec.name))
            .map(|p| {
                views::pool(
                    p,
                    &state.snapshot,
                    state
                        .reserved
                        .get(&p.spec.name)
                        .copied()
                        .unwrap_or_default(),
                    state.agents.get(&p.spec.name).cloned().unwrap_or_default(),
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
                    th.num scope="col" { "GPU used / capacity" } th.num scope="col" { "Workers" } th.num scope="col" { "Price (cpu-hour)" }
                } }
                tbody {
                    @for p in &pools {
                        tr {
                            td { a href={ "/pools/" (p.name) } { (p.name) } }
                            td { (p.provider) }
                            td { (layout::state(&p.state)) }
                            td.num { (layout::cores(p.used.cpu_millis)) " / " (layout::cores(p.capacity.cpu_millis)) }
                            td.num { (layout::memory(p.used.memory_mib)) " / " (layout::memory(p.capacity.memory_mib)) }
                            td.num { (p.used.gpu) " / " (p.capacity.gpu) }
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

/// The pool form, its fields showing `values`, each with its problem.
fn form(
    session: &Session,
    action: &str,
    values: &BTreeMap<String, String>,
    problems: &Problems,
    creating: bool,
) -> Markup {
    let value = |field: &str| values.get(field).map_or("", String::as_str);
    let text = |field: &str, label: &str, hint: &str| {
        layout::text_field(field, label, value(field), problems.of(field), hint)
    };
    let select = |field: &str, label: &str, options: &[&str]| {
        let current = value(field);
        layout::field_with(
            field,
            label,
            problems.of(field),
            html! {
                select id=(field) name=(field) {
                    @for o in options {
                        option value=(o) selected[current == *o] { (o) }
                    }
                }
            },
        )
    };
    html! {
        form.stack method="post" action=(action) novalidate {
            (layout::csrf(session))
            @for message in &problems.general {
                p.alert role="alert" { (message) }
            }
            @if creating {
                (text("name", "Name", "Letters, digits, '.', '_' and '-', at most 63."))
            } @else {
                input type="hidden" name="name" value=(value("name"));
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
                (text("max_agent.cpu", "Most CPU one agent may offer", "Empty: the server's --max-agent."))
                (text("max_agent.memory", "Most memory one agent may offer", ""))
                (text("max_agent.gpu", "Most GPUs one agent may offer", ""))
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
    let values = forms::shown(&doc, &FIELDS);
    let body = form(&session, "/pools", &values, &Problems::default(), true);
    layout::page(&session, Section::Pools, "New pool", body).into_response()
}

/// Saves the pool a form describes over the `stored` one (none for a new
/// pool), keeping what the form does not show; on problems, the form again
/// as it was typed, with every problem beside its field.
async fn save(
    engine: &Engine,
    session: &Session,
    fields: BTreeMap<String, String>,
    stored: Option<PoolSpec>,
) -> PageResult {
    let creating = stored.is_none();
    let base = stored.map_or_else(|| serde_json::json!({}), |s| spec_json(&s));
    let (doc, mut problems) = forms::merge(base, &fields, &FIELDS);
    let (spec, found) = PoolSpec::read(doc);
    problems.extend(found);
    let name = fields.get("name").cloned().unwrap_or_default();
    if let (true, Some(spec)) = (problems.is_empty(), spec) {
        match engine.put_pool(&session.principal, spec, creating).await {
            Ok(_) => return Ok(Redirect::to(&format!("/pools/{name}?saved=1")).into_response()),
            Err(EngineError::Invalid(all)) => problems = all.into_vec(),
            Err(EngineError::Conflict(message)) => {
                problems = vec![FieldError::new("name", message)]
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (title, action) = if creating {
        ("New pool".to_string(), "/pools".to_string())
    } else {
        (format!("Pool {name}"), format!("/pools/{name}"))
    };
    let body = form(
        session,
        &action,
        &fields,
        &Problems::new(problems, &FIELDS),
        creating,
    );
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        layout::page(session, Section::Pools, &title, body),
    )
        .into_response())
}

fn spec_json(spec: &PoolSpec) -> Value {
    serde_json::to_value(spec).expect("a pool serializes to JSON: plain data, string keys")
}

/// The pool `name` as stored.
async fn stored(engine: &Engine, name: &str) -> Result<PoolSpec, ApiError> {
    let state = engine.read_model().view();
    state
        .pools
        .get(name)
        .map(|p| p.spec.clone())
        .ok_or_else(|| ApiError::not_found("pool", name))
}

pub async fn create(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> PageResult {
    save(&engine, &session, forms::fields(&body), None).await
}

pub async fn update(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    let spec = stored(&engine, &name).await?;
    let mut fields = forms::fields(&body);
    fields.insert("name".into(), name);
    save(&engine, &session, fields, Some(spec)).await
}

/// Sets only a pool's state (drain, disable, activate), keeping the rest;
/// draining and disabling ask first.
pub async fn set_state(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    let fields = forms::fields(&body);
    let target = fields.get("state").cloned().unwrap_or_default();
    let spec = stored(&engine, &name).await?;
    let verb = match target.as_str() {
        "draining" => Some("Drain"),
        "disabled" => Some("Disable"),
        _ => None,
    };
    if let Some(verb) = verb
        && !confirm::confirmed(&fields)
    {
        let action = format!("/pools/{name}/state");
        let title = format!("{verb} pool {name}?");
        let button = format!("{verb} pool");
        let back = format!("/pools/{name}");
        let question = confirm::Question {
            title: &title,
            consequence: "The pool takes no new runs; the runs it holds now go on until they end. Activate it to take runs again.",
            action: &action,
            fields: &[("state", &target)],
            button: &button,
            back: &back,
        };
        return Ok(confirm::ask(&session, Section::Pools, &question));
    }
    let not_done = || format!("Pool {name} was not changed");
    let mut doc = spec_json(&spec);
    doc["state"] = Value::String(target.clone());
    let spec = PoolSpec::parse(doc).map_err(|e| PageError::from(e).titled(not_done()))?;
    engine
        .put_pool(&session.principal, spec, false)
        .await
        .map_err(|e| PageError::from(e).titled(not_done()))?;
    Ok(Redirect::to(&format!("/pools/{name}?saved=1")).into_response())
}

/// Deletes a pool once confirmed; a refusal (it holds allocations) says why.
pub async fn delete(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    if !confirm::confirmed(&forms::fields(&body)) {
        stored(&engine, &name).await?;
        return Ok(confirm::ask_delete(
            &session,
            Section::Pools,
            "pool",
            &name,
            "The pool is removed with the records of its agents; runs that ask for it can no longer be placed. This cannot be undone.",
        ));
    }
    engine
        .delete_pool(&session.principal, &name)
        .await
        .map_err(|e| PageError::from(e).titled(format!("Pool {name} was not deleted")))?;
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
        let state = engine.read_model().view();
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
            (form(&session, &format!("/pools/{name}"), &forms::shown(&doc, &FIELDS), &Problems::default(), false))
        }
    };
    Ok(layout::page(&session, Section::Pools, &format!("Pool {name}"), body).into_response())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_round_trips_every_field_of_a_pool() {
        let spec = PoolSpec::parse(serde_json::json!({
            "name": "full", "provider": "local",
            "capacity": {"cpu": "2500m", "memory": "6Gi", "gpu": 2}, "max_workers": 3,
            "labels": {"os": "linux", "zone": "b"},
            "price": {"cpu_hour": 0.04, "memory_gib_hour": 0.005, "gpu_hour": 2.5},
            "state": "draining", "max_agent": {"cpu": 4, "memory": "8Gi", "gpu": 1},
            "require_confinement": true
        }))
        .expect("a pool");
        let shown = forms::shown(&spec_json(&spec), &FIELDS);
        // What the form shows makes the whole pool on its own...
        let (doc, problems) = forms::merge(serde_json::json!({}), &shown, &FIELDS);
        assert_eq!(problems, []);
        assert_eq!(PoolSpec::parse(doc).expect("valid"), spec);
        // ...and saved over the stored pool, changes nothing.
        let (doc, _) = forms::merge(spec_json(&spec), &shown, &FIELDS);
        assert_eq!(PoolSpec::parse(doc).expect("valid"), spec);
    }
}

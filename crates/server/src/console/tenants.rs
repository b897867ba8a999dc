//! Tenants: quota against holdings, limits, weight, budget, spend and
//! forecast, usage by pool and pipeline, their tokens; and the form that
//! edits them, validated as the API validates a Tenant.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use corral_api::{QuotaView, TenantSummary, TenantView, UsageRowView};
use corral_core::tenant::TenantSpec;
use maud::{Markup, html};
use serde_json::Value;

use super::forms::{self, Kind};
use super::layout::{self, Section};
use super::session::Session;
use super::{PageResult, charts, dashboards};
use crate::api::error::{ApiError, PathParam};
use crate::api::usage::tenant_summary;
use crate::api::views;
use crate::engine::Engine;

/// The tenant form's fields, by their path in a Tenant document.
const FIELDS: [(&str, Kind); 10] = [
    ("weight", Kind::Number),
    ("quota.cpu", Kind::Text),
    ("quota.memory", Kind::Text),
    ("quota.gpu", Kind::Number),
    ("quota.runs", Kind::Number),
    ("budget.monthly", Kind::Number),
    ("budget.enforce", Kind::Text),
    ("budget.alert_at", Kind::Numbers),
    ("allowed_pools", Kind::Names),
    ("pool_limits", Kind::Table),
];

pub async fn list(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let tenants: Vec<TenantView> = {
        let state = engine.read().await;
        let snapshot = state.snapshot(engine.now());
        state
            .tenants
            .values()
            .filter(|t| session.principal.may_touch_tenant(&t.spec.name))
            .map(|t| views::tenant(t, &snapshot))
            .collect()
    };
    let limit = |v: Option<u64>, show: fn(u64) -> String| v.map_or("—".to_string(), show);
    let body = layout::live(
        "tenants",
        html! {
            div.table-wrap tabindex="0" { table {
                thead { tr {
                    th scope="col" { "Tenant" } th.num scope="col" { "Weight" }
                    th.num scope="col" { "CPU held / quota" } th.num scope="col" { "Memory held / quota" }
                    th.num scope="col" { "Runs holding" } th.num scope="col" { "Budget" }
                } }
                tbody { @for t in &tenants {
                    tr {
                        td { a href={ "/tenants/" (t.name) } { (t.name) } }
                        td.num { (t.weight) }
                        td.num { (layout::cores(t.used.cpu_millis)) " / " (limit(t.quota.cpu_millis, layout::cores)) }
                        td.num { (layout::memory(t.used.memory_mib)) " / " (limit(t.quota.memory_mib, layout::memory)) }
                        td.num { (t.runs) }
                        td.num { @match &t.budget { Some(b) => { (layout::money(b.monthly)) " " (b.enforce) }, None => "—" } }
                    }
                } }
            } }
        },
    );
    Ok(layout::page(&session, Section::Tenants, "Tenants", body).into_response())
}

fn quota_rows(quota: &QuotaView, used: &corral_api::ResourcesView) -> Markup {
    let zero = corral_api::ResourcesView::default();
    html! {
        @if let Some(cpu) = quota.cpu_millis { (layout::bar("cpu", used.cpu_millis, zero.cpu_millis, cpu, layout::cores)) }
        @else { p.muted { "cpu: " (layout::cores(used.cpu_millis)) " held, no quota" } }
        @if let Some(mem) = quota.memory_mib { (layout::bar("memory", used.memory_mib, zero.memory_mib, mem, layout::memory)) }
        @else { p.muted { "memory: " (layout::memory(used.memory_mib)) " held, no quota" } }
        @if let Some(gpu) = quota.gpu { (layout::bar("gpu", used.gpu, zero.gpu, gpu, |g| g.to_string())) }
    }
}

fn usage_table(title: &str, key: &str, rows: &[UsageRowView]) -> Markup {
    html! {
        div.table-wrap tabindex="0" { table {
            caption.muted.table-title { (title) }
            thead { tr { th scope="col" { (key) } th.num scope="col" { "core-hours" } th.num scope="col" { "GiB-hours" } th.num scope="col" { "Cost" } th.num scope="col" { "CPU used" } th.num scope="col" { "Memory used" } } }
            tbody {
                @for r in rows {
                    tr {
                        td { (r.key.get(key).cloned().unwrap_or_default()) }
                        td.num { (format!("{:.2}", r.usage.cpu_core_seconds / 3600.0)) }
                        td.num { (format!("{:.2}", r.usage.memory_gib_seconds / 3600.0)) }
                        td.num { (layout::money(r.usage.cost)) }
                        td.num { (layout::efficiency(r.efficiency.cpu)) }
                        td.num { (layout::efficiency(r.efficiency.memory)) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="6" { span.muted { "Nothing used this month." } } } }
            }
        } }
    }
}

fn form(session: &Session, name: &str, doc: &Value, error: Option<(&str, &str)>) -> Markup {
    let err = |field: &str| error.and_then(|(f, m)| (f == field).then_some(m));
    let text = |field: &str, label: &str, hint: &str| {
        layout::text_field(field, label, &forms::text_at(doc, field), err(field), hint)
    };
    let general = error.filter(|(f, _)| !FIELDS.iter().any(|(p, _)| p == f));
    let enforce = forms::text_at(doc, "budget.enforce");
    // No pool at all is a list of none, which an empty field would lose.
    let allowed_pools = match doc.get("allowed_pools") {
        Some(Value::Array(names)) if names.is_empty() => forms::NONE.to_string(),
        _ => forms::text_at(doc, "allowed_pools"),
    };
    html! {
        form.stack method="post" action={ "/tenants/" (name) } novalidate {
            (layout::csrf(session))
            @if let Some((_, message)) = general { p.alert role="alert" { (message) } }
            div.row {
                (text("quota.cpu", "CPU quota", "Cores; empty: no quota."))
                (text("quota.memory", "Memory quota", "Such as 64Gi."))
                (text("quota.gpu", "GPU quota", ""))
                (text("quota.runs", "Runs at once", ""))
            }
            div.row {
                (text("weight", "Fair-share weight", ""))
                (text("budget.monthly", "Monthly budget", "Empty: no budget."))
                (text("budget.alert_at", "Alert at", "Fractions of the budget, such as 0.8, 1.0."))
                (layout::field_with("budget.enforce", "Budget enforcement", err("budget.enforce"), html! {
                    select id="budget.enforce" name="budget.enforce" {
                        option value="soft" selected[enforce != "hard"] { "soft (alerts only)" }
                        option value="hard" selected[enforce == "hard"] { "hard (new runs wait)" }
                    }
                }))
            }
            div.row {
                (layout::text_field("allowed_pools", "Allowed pools", &allowed_pools, err("allowed_pools"),
                    "Names separated by commas; empty: every pool; a dash (-): no pool."))
                (layout::text_area("pool_limits", "Limits per pool", &forms::text_at(doc, "pool_limits"), err("pool_limits"),
                    "One line per pool, such as gpu: cpu=8, memory=32Gi, gpu=2, runs=3."))
            }
            div.actions { button.primary type="submit" { "Save tenant" } }
        }
    }
}

pub async fn detail(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    Query(query): Query<std::collections::BTreeMap<String, String>>,
) -> PageResult {
    let axum::Json(summary): axum::Json<TenantSummary> = tenant_summary(
        State(engine.clone()),
        Extension(session.principal.clone()),
        PathParam(name.clone()),
    )
    .await?;
    let by_pipeline = dashboards::usage(&engine, &session, "pipeline", Some(&name)).await?;
    let spec = {
        let state = engine.read().await;
        state.tenants.get(&name).map(|t| t.spec.clone())
    };
    let doc = spec
        .map(|s| serde_json::to_value(&s).unwrap_or_default())
        .unwrap_or_default();
    let t = &summary.tenant;
    let range = charts::Range::from_query(&query);
    let (charts, waits) =
        charts::tenant_charts(&engine, &session.principal, Some(&name), range).await?;
    let tokens: Vec<corral_store::TokenRecord> = if session.is_admin() {
        engine
            .credentials()
            .tokens()
            .into_iter()
            .filter(|k| k.role.tenant() == Some(name.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    let body = html! {
        @if query.contains_key("saved") { p.notice role="status" { "Saved." } }
        (layout::live("tenant", html! {
            div.grid {
                section.card {
                    h2 { "Quota and holdings" }
                    (quota_rows(&t.quota, &t.used))
                    @for (pool, limit) in &t.pool_limits {
                        h3 { "In pool " (pool) }
                        (quota_rows(limit, &t.held.get(pool).copied().unwrap_or_default()))
                    }
                    p.muted { "Weight " (t.weight) " · " (t.runs) " runs holding allocations" }
                }
                section.card {
                    h2 { "Spend in " (summary.month) }
                    dl.facts {
                        dt { "Spent" } dd { (layout::money(summary.spent)) }
                        dt { "Forecast" } dd { (layout::money(summary.forecast)) " by the month's end" }
                        dt { "Budget" } dd {
                            @match &t.budget {
                                Some(b) => { (layout::money(b.monthly)) " (" (b.enforce) ")" }
                                None => "none",
                            }
                        }
                        dt { "Queued" } dd { (summary.queued_runs) " runs" }
                    }
                }
            }
        }))
        h2 { "Usage this month" }
        div.grid {
            (usage_table("By pool", "pool", &summary.usage_by_pool))
            (usage_table("By pipeline", "pipeline", &by_pipeline.rows))
        }
        h2 { "Queue over time" }
        (charts::range_links(&format!("/tenants/{name}"), range))
        @let admitted = waits.tenants.first();
        p {
            "Admission wait over " (range.label()) ": "
            @match admitted {
                Some(w) => { "p50 " (layout::wait(w.p50_seconds)) ", p99 " (layout::wait(w.p99_seconds)) ", over " (w.runs) " runs admitted." }
                None => "no run admitted.",
            }
        }
        div.grid { (charts) }
        @if session.is_admin() {
            h2 { "Tokens" }
            @if tokens.is_empty() { p.muted { "No token is bound to this tenant." } }
            @else {
                div.table-wrap tabindex="0" { table {
                    thead { tr { th scope="col" { "Token" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Last used" } th scope="col" { "State" } } }
                    tbody { @for k in &tokens {
                        tr {
                            td { (k.name) }
                            td { (views::time(k.created_at)) }
                            td { (k.expires_at.map(views::time).unwrap_or_else(|| "never".into())) }
                            td { (k.last_used_at.map(views::time).unwrap_or_else(|| "never".into())) }
                            td { @if k.revoked_at.is_some() { "revoked" } @else { "active" } }
                        }
                    } }
                } }
            }
            h2 { "Change" }
            (form(&session, &name, &doc, None))
        }
    };
    Ok(layout::page(&session, Section::Tenants, &format!("Tenant {name}"), body).into_response())
}

pub async fn update(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    let spec = {
        let state = engine.read().await;
        state
            .tenants
            .get(&name)
            .map(|t| t.spec.clone())
            .ok_or_else(|| ApiError::not_found("tenant", &name))?
    };
    let base = serde_json::to_value(&spec).unwrap_or_default();
    let refused = |doc: &Value, field: &str, message: &str| -> Response {
        let body = form(&session, &name, doc, Some((field, message)));
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            layout::page(&session, Section::Tenants, &format!("Tenant {name}"), body),
        )
            .into_response()
    };
    let fields = forms::fields(&body);
    let mut doc = match forms::merge(base.clone(), &fields, &FIELDS) {
        Ok(doc) => doc,
        Err((field, message)) => return Ok(refused(&base, &field, &message)),
    };
    // A budget needs its amount: without one, the tenant has no budget.
    if doc.pointer("/budget/monthly").is_none()
        && let Some(object) = doc.as_object_mut()
    {
        object.remove("budget");
    }
    let spec = match TenantSpec::parse(doc.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            let field = forms::field_of(&e.path, &FIELDS)
                .unwrap_or(&e.path)
                .to_string();
            return Ok(refused(&doc, &field, &e.message));
        }
    };
    match engine.put_tenant(&session.principal, spec, false).await {
        Ok(_) => Ok(Redirect::to(&format!("/tenants/{name}?saved=1")).into_response()),
        Err(e) => {
            let e = ApiError::from(e);
            if e.status.is_client_error() {
                let path = e.details.get("path").and_then(Value::as_str).unwrap_or("");
                let field = forms::field_of(path, &FIELDS).unwrap_or(path).to_string();
                Ok(refused(&doc, &field, &e.message))
            } else {
                Err(e.into())
            }
        }
    }
}

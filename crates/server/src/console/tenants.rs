//! Tenants: quota against holdings, limits, weight, budget, spend and
//! forecast, usage by pool and pipeline, their tokens; and the forms that
//! create, edit and delete them, validated as the API validates a Tenant.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use corral_api::{QuotaView, TenantSummary, TenantView, UsageRowView};
use corral_core::error::FieldError;
use corral_core::metering::BudgetHealth;
use corral_core::tenant::TenantSpec;
use maud::{Markup, html};
use serde_json::Value;

use super::forms::{self, Kind, Problems};
use super::layout::{self, Section};
use super::session::Session;
use super::{PageError, PageResult, charts, confirm, dashboards, overview};
use crate::api::error::{ApiError, PathParam};
use crate::api::usage::tenant_summary;
use crate::api::views;
use crate::engine::{Engine, EngineError};

/// The tenant form's fields, by their path in a Tenant document.
const FIELDS: [(&str, Kind); 11] = [
    ("name", Kind::Text),
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
        let state = engine.read_model().view();
        state
            .tenants
            .values()
            .filter(|t| session.principal.may_touch_tenant(&t.spec.name))
            .map(|t| views::tenant(t, &state.snapshot))
            .collect()
    };
    let limit = |v: Option<u64>, show: fn(u64) -> String| v.map_or("—".to_string(), show);
    let table = layout::live(
        "tenants",
        html! {
            div.table-wrap tabindex="0" { table {
                thead { tr {
                    th scope="col" { "Tenant" } th.num scope="col" { "Weight" }
                    th.num scope="col" { "CPU held / quota" } th.num scope="col" { "Memory held / quota" }
                    th.num scope="col" { "GPU held / quota" } th.num scope="col" { "Runs holding" } th.num scope="col" { "Budget" }
                } }
                tbody { @for t in &tenants {
                    tr {
                        td { a href={ "/tenants/" (t.name) } { (t.name) } }
                        td.num { (t.weight) }
                        td.num { (layout::cores(t.used.cpu_millis)) " / " (limit(t.quota.cpu_millis, layout::cores)) }
                        td.num { (layout::memory(t.used.memory_mib)) " / " (limit(t.quota.memory_mib, layout::memory)) }
                        td.num { (t.used.gpu) " / " (limit(t.quota.gpu, |g| g.to_string())) }
                        td.num { (t.runs) }
                        td.num { @match &t.budget { Some(b) => { (layout::money(b.monthly)) " " (b.enforce) }, None => "—" } }
                    }
                } }
            } }
        },
    );
    let body = html! {
        @if session.is_admin() {
            div.actions { a href="/tenants/new" { "New tenant" } }
        }
        (table)
    };
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

/// The tenant form, its fields showing `values`, each with its problem.
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
    let enforce = value("budget.enforce");
    html! {
        form.stack method="post" action=(action) novalidate {
            (layout::csrf(session))
            @for message in &problems.general { p.alert role="alert" { (message) } }
            @if creating {
                (text("name", "Name", "Letters, digits, '.', '_' and '-', at most 63."))
            } @else {
                input type="hidden" name="name" value=(value("name"));
            }
            div.row {
                (text("quota.cpu", "CPU quota", "Cores; empty: no quota."))
                (text("quota.memory", "Memory quota", "Such as 64Gi."))
                (text("quota.gpu", "GPU quota", ""))
                (text("quota.runs", "Runs at once", ""))
            }
            div.row {
                (text("weight", "Fair-share weight", ""))
                (text("budget.monthly", "Monthly budget", "Empty: no budget."))
                (text("budget.alert_at", "Alert at", "Fractions of the budget, such as 0.8, 1.0; a dash (-): no alert."))
                (layout::field_with("budget.enforce", "Budget enforcement", problems.of("budget.enforce"), html! {
                    select id="budget.enforce" name="budget.enforce" {
                        option value="soft" selected[enforce != "hard"] { "soft (alerts only)" }
                        option value="hard" selected[enforce == "hard"] { "hard (new runs wait)" }
                    }
                }))
            }
            div.row {
                (text("allowed_pools", "Allowed pools",
                    "Names separated by commas; empty: every pool; a dash (-): no pool."))
                (layout::text_area("pool_limits", "Limits per pool", value("pool_limits"), problems.of("pool_limits"),
                    "One line per pool, such as gpu: cpu=8, memory=32Gi, gpu=2, runs=3."))
            }
            div.actions {
                button.primary type="submit" { @if creating { "Create tenant" } @else { "Save tenant" } }
            }
        }
    }
}

pub async fn new_form(Extension(session): Extension<Session>) -> Response {
    let values = forms::shown(&serde_json::json!({}), &FIELDS);
    let body = form(&session, "/tenants", &values, &Problems::default(), true);
    layout::page(&session, Section::Tenants, "New tenant", body).into_response()
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
        let state = engine.read_model().view();
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
                        dt { "Forecast" } dd {
                            (layout::money(summary.forecast)) " by the month's end"
                            p.hint { (summary.forecast_basis) "." }
                        }
                        dt { "Budget" } dd {
                            @match &t.budget {
                                Some(b) => { (layout::money(b.monthly)) " (" (b.enforce) ")" }
                                None => "none",
                            }
                        }
                        @if let Some(h) = summary.budget_health.as_deref().and_then(health_of) {
                            dt { "Budget health" } dd { (overview::health(h)) }
                        }
                        @if t.budget.is_some() {
                            dt { "Reaches its budget" } dd {
                                @match &summary.budget_crosses_at {
                                    Some(at) => (layout::time(at)),
                                    None => "not this month, at this rate",
                                }
                            }
                        }
                        dt { "Queued" } dd { (summary.queued_runs) " runs" }
                        @if !summary.blocked_by.is_empty() {
                            dt { "Blocked by" } dd {
                                @for (i, (what, runs)) in summary.blocked_by.iter().enumerate() {
                                    @if i > 0 { " · " }
                                    (what) " " (runs)
                                }
                            }
                        }
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
                            td { (engine.credentials().last_used(&k.name).or(k.last_used_at).map(views::time).unwrap_or_else(|| "never".into())) }
                            td { @if k.revoked_at.is_some() { "revoked" } @else { "active" } }
                        }
                    } }
                } }
            }
            h2 { "Change" }
            (form(&session, &format!("/tenants/{name}"), &forms::shown(&doc, &FIELDS), &Problems::default(), false))
            form method="post" action={ "/tenants/" (name) "/delete" } {
                (layout::csrf(&session))
                div.actions { button.danger type="submit" { "Delete tenant" } }
            }
        }
    };
    Ok(layout::page(&session, Section::Tenants, &format!("Tenant {name}"), body).into_response())
}

/// Saves the tenant a form describes over the `stored` one (none for a new
/// tenant), keeping what the form does not show; on problems, the form again
/// as it was typed, with every problem beside its field (the pools it names
/// that do not exist among them).
async fn save(
    engine: &Engine,
    session: &Session,
    fields: BTreeMap<String, String>,
    stored: Option<TenantSpec>,
) -> PageResult {
    let creating = stored.is_none();
    let base = stored.map_or_else(|| serde_json::json!({}), |s| spec_json(&s));
    let (mut doc, mut problems) = forms::merge(base, &fields, &FIELDS);
    // A budget is its amount: without one, the tenant has no budget.
    if doc.pointer("/budget/monthly").is_none()
        && let Some(object) = doc.as_object_mut()
    {
        object.remove("budget");
    }
    let (spec, found) = TenantSpec::read(doc);
    problems.extend(found);
    let name = fields.get("name").cloned().unwrap_or_default();
    match spec {
        Some(spec) if problems.is_empty() => {
            match engine.put_tenant(&session.principal, spec, creating).await {
                Ok(_) => {
                    return Ok(Redirect::to(&format!("/tenants/{name}?saved=1")).into_response());
                }
                Err(EngineError::Invalid(all)) => problems = all.into_vec(),
                Err(EngineError::Conflict(message)) => {
                    problems = vec![FieldError::new("name", message)];
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(spec) => problems.extend(engine.unknown_pools(&spec).await),
        None => {}
    }
    let (title, action) = if creating {
        ("New tenant".to_string(), "/tenants".to_string())
    } else {
        (format!("Tenant {name}"), format!("/tenants/{name}"))
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
        layout::page(session, Section::Tenants, &title, body),
    )
        .into_response())
}

fn spec_json(spec: &TenantSpec) -> Value {
    serde_json::to_value(spec).expect("a tenant serializes to JSON: plain data, string keys")
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
    let spec = {
        let state = engine.read_model().view();
        state
            .tenants
            .get(&name)
            .map(|t| t.spec.clone())
            .ok_or_else(|| ApiError::not_found("tenant", &name))?
    };
    let mut fields = forms::fields(&body);
    fields.insert("name".into(), name);
    save(&engine, &session, fields, Some(spec)).await
}

/// Deletes a tenant once confirmed; a refusal (it holds allocations) says why.
pub async fn delete(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    body: Bytes,
) -> PageResult {
    if !confirm::confirmed(&forms::fields(&body)) {
        if !engine.read_model().view().tenants.contains_key(&name) {
            return Err(ApiError::not_found("tenant", &name).into());
        }
        return Ok(confirm::ask_delete(
            &session,
            Section::Tenants,
            "tenant",
            &name,
            "The tenant is removed with its quota, limits and budget; its runs can no longer be submitted. Its tokens stay until they are revoked. This cannot be undone.",
        ));
    }
    engine
        .delete_tenant(&session.principal, &name)
        .await
        .map_err(|e| PageError::from(e).titled(format!("Tenant {name} was not deleted")))?;
    Ok(Redirect::to("/tenants").into_response())
}

/// A budget health as the API names it.
fn health_of(name: &str) -> Option<BudgetHealth> {
    [
        BudgetHealth::Ok,
        BudgetHealth::Alerting,
        BudgetHealth::Over,
        BudgetHealth::Blocking,
    ]
    .into_iter()
    .find(|h| h.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_round_trips_every_field_of_a_tenant() {
        for spec in [
            serde_json::json!({
                "name": "full", "weight": 3,
                "quota": {"cpu": "4", "memory": "8Gi", "gpu": 2, "runs": 5},
                "allowed_pools": ["a", "b"],
                "pool_limits": {"a": {"cpu": "500m", "memory": "1Gi", "gpu": 1, "runs": 2}, "b": {}},
                "budget": {"monthly": 250.5, "enforce": "hard", "alert_at": [0.5, 0.9, 1.2]}
            }),
            serde_json::json!({"name": "bare", "allowed_pools": [],
                "budget": {"monthly": 10, "alert_at": []}}),
            serde_json::json!({"name": "open"}),
        ] {
            let spec = TenantSpec::parse(spec).expect("a tenant");
            let shown = forms::shown(&spec_json(&spec), &FIELDS);
            let (doc, problems) = forms::merge(serde_json::json!({}), &shown, &FIELDS);
            assert_eq!(problems, []);
            assert_eq!(TenantSpec::parse(doc).expect("valid"), spec);
        }
    }
}

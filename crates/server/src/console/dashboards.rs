//! Governance dashboards: utilization and saturation of the pools over time,
//! queue depth and admission waits per tenant, and this month's cost by
//! tenant, pool, pipeline and day with idle capacity, each table also as CSV.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_api::UsageView;
use corral_api::history::WaitsView;
use futures_util::future::try_join_all;
use maud::{Markup, html};

use super::layout::{self, Section};
use super::session::Session;
use super::{PageResult, charts, spend};
use crate::api::error::ApiError;
use crate::api::usage::{csv_field, usage_report};
use crate::engine::Engine;

/// The groupings the dashboard shows, each one table.
const TABLES: [(&str, &str); 4] = [
    ("tenant", "By tenant"),
    ("pool", "By pool"),
    ("pipeline", "By pipeline"),
    ("day", "By day"),
];

/// The spend charts: per day, stacked by tenant and by pool.
const SPEND: [(&str, &str); 2] = [
    ("tenant", "Spend per day by tenant"),
    ("pool", "Spend per day by pool"),
];

/// This month's usage as `query` asks, through the API's own handler; CSV
/// when `csv`.
async fn report(
    engine: &Arc<Engine>,
    session: &Session,
    query: BTreeMap<String, String>,
    csv: bool,
) -> Result<Response, ApiError> {
    let mut headers = HeaderMap::new();
    if csv {
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/csv"));
    }
    usage_report(
        State(engine.clone()),
        Extension(session.principal.clone()),
        headers,
        Query(query),
    )
    .await
}

/// This month's usage grouped `by`, of one tenant if given, as the API's
/// JSON answer reads.
pub(super) async fn usage(
    engine: &Arc<Engine>,
    session: &Session,
    by: &str,
    tenant: Option<&str>,
) -> Result<UsageView, ApiError> {
    let mut query = BTreeMap::from([("by".to_string(), by.to_string())]);
    if let Some(t) = tenant {
        query.insert("tenant".to_string(), t.to_string());
    }
    let answer = report(engine, session, query, false).await?;
    let broken = |message: String| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message,
        details: serde_json::json!({}),
    };
    let bytes = axum::body::to_bytes(answer.into_body(), 64 << 20)
        .await
        .map_err(|e| broken(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| broken(e.to_string()))
}

fn table(by: &str, title: &str, view: &UsageView) -> Markup {
    html! {
        section {
            h3 { (title) " " a href={ "/dashboards/usage.csv?by=" (by) } download { "CSV" } }
            div.table-wrap tabindex="0" { table {
                thead { tr {
                    th scope="col" { (by) } th.num scope="col" { "core-hours" }
                    th.num scope="col" { "GiB-hours" } th.num scope="col" { "gpu-hours" } th.num scope="col" { "Cost" }
                    th.num scope="col" { abbr title="cpu used over cpu allocated" { "CPU used" } }
                    th.num scope="col" { abbr title="memory peak held over memory allocated" { "Memory used" } }
                } }
                tbody {
                    @for r in &view.rows {
                        tr {
                            td { (r.key.get(by).cloned().unwrap_or_default()) }
                            td.num { (format!("{:.2}", r.usage.cpu_core_seconds / 3600.0)) }
                            td.num { (format!("{:.2}", r.usage.memory_gib_seconds / 3600.0)) }
                            td.num { (format!("{:.2}", r.usage.gpu_seconds / 3600.0)) }
                            td.num { (layout::money(r.usage.cost)) }
                            td.num { (layout::efficiency(r.efficiency.cpu)) }
                            td.num { (layout::efficiency(r.efficiency.memory)) }
                        }
                    }
                    tr {
                        th scope="row" { "Total" }
                        td.num { (format!("{:.2}", view.total.cpu_core_seconds / 3600.0)) }
                        td.num { (format!("{:.2}", view.total.memory_gib_seconds / 3600.0)) }
                        td.num { (format!("{:.2}", view.total.gpu_seconds / 3600.0)) }
                        td.num { (layout::money(view.total.cost)) }
                        td.num { (layout::efficiency(view.total_efficiency.cpu)) }
                        td.num { (layout::efficiency(view.total_efficiency.memory)) }
                    }
                }
            } }
        }
    }
}

fn idle_table(view: &UsageView) -> Markup {
    html! {
        section {
            h3 { "Idle capacity by pool " a href="/dashboards/usage.csv?by=pool" download { "CSV" } }
            div.table-wrap tabindex="0" { table {
                thead { tr {
                    th scope="col" { "pool" } th.num scope="col" { "Capacity cost" }
                    th.num scope="col" { "Allocated" } th.num scope="col" { "Idle" }
                } }
                tbody { @for r in &view.idle {
                    tr {
                        td { (r.pool) }
                        td.num { (layout::money(r.capacity.cost)) }
                        td.num { (layout::money(r.allocated.cost)) }
                        td.num { (layout::money(r.idle.cost)) }
                    }
                } }
            } }
        }
    }
}

fn waits_table(view: &WaitsView, range: charts::Range) -> Markup {
    html! {
        section {
            h3 { "Admission wait by tenant " a href={ "/dashboards/waits.csv?range=" (range.label()) } download { "CSV" } }
            div.table-wrap tabindex="0" { table {
                thead { tr {
                    th scope="col" { "tenant" } th.num scope="col" { "Runs admitted" }
                    th.num scope="col" { "p50" } th.num scope="col" { "p99" }
                } }
                tbody { @for t in &view.tenants {
                    tr {
                        td { (t.tenant) }
                        td.num { (t.runs) }
                        td.num { (layout::wait(t.p50_seconds)) }
                        td.num { (layout::wait(t.p99_seconds)) }
                    }
                } }
            } }
        }
    }
}

/// This month's usage tables, read at once (each on a reader of its own).
async fn usage_tables(
    engine: &Arc<Engine>,
    session: &Session,
) -> Result<Vec<(&'static str, &'static str, UsageView)>, ApiError> {
    try_join_all(TABLES.map(|(by, title)| async move {
        Ok::<_, ApiError>((by, title, usage(engine, session, by, None).await?))
    }))
    .await
}

/// This month's spend per day, stacked by tenant and by pool, read at once.
async fn spend_charts(engine: &Arc<Engine>, session: &Session) -> Result<Vec<Markup>, ApiError> {
    try_join_all(SPEND.map(|(by, title)| async move {
        let view = usage(engine, session, &format!("{by},day"), None).await?;
        Ok::<_, ApiError>(spend::stacked(&format!("spend-{by}"), title, by, &view))
    }))
    .await
}

pub async fn page(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let range = charts::Range::from_query(&query);
    // The time series and the usage live in different files: read both at once.
    let series = async {
        let pools = charts::pools_charts(&engine, &session.principal, range).await?;
        let tenants = charts::tenant_charts(&engine, &session.principal, None, range).await?;
        Ok::<_, ApiError>((pools, tenants))
    };
    let reports = async {
        tokio::try_join!(
            usage_tables(&engine, &session),
            spend_charts(&engine, &session)
        )
    };
    let (series, reports) = tokio::join!(series, reports);
    let ((pools, (tenants, waits)), (reports, spend)) = (series?, reports?);
    let mut tables = Vec::new();
    let mut idle = None;
    for (by, title, view) in &reports {
        if *by == "pool" && !view.idle.is_empty() {
            idle = Some(idle_table(view));
        }
        tables.push(table(by, title, view));
    }
    let body = html! {
        (charts::range_links("/dashboards", range))
        h2 { "Pools" }
        div.grid { (pools) }
        h2 { "Tenants" }
        div.grid { (tenants) (waits_table(&waits, range)) }
        h2 { "Spend this month, per day" }
        div.grid { @for chart in &spend { (chart) } }
        h2 { "Cost this month" }
        div.grid {
            @for t in &tables { (t) }
            @if let Some(idle) = idle { (idle) }
        }
    };
    Ok(layout::page(&session, Section::Dashboards, "Dashboards", body).into_response())
}

/// A dashboard table as CSV, downloaded: the API's CSV answer.
pub async fn usage_csv(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let by = query
        .get("by")
        .filter(|b| TABLES.iter().any(|(k, _)| k == b))
        .cloned()
        .unwrap_or_else(|| "tenant".into());
    let query = BTreeMap::from([("by".to_string(), by.clone())]);
    let mut answer = report(&engine, &session, query, true).await?;
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"usage-by-{by}.csv\""))
    {
        answer
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(answer)
}

/// The admission wait table as CSV, downloaded: per tenant over the range,
/// from the API's JSON answer.
pub async fn waits_csv(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let range = charts::Range::from_query(&query);
    let view = charts::waits(&engine, &session.principal, None, range).await?;
    let mut csv = String::from("tenant,runs,p50_seconds,p99_seconds\n");
    for t in &view.tenants {
        csv.push_str(&format!(
            "{},{},{:.3},{:.3}\n",
            csv_field(&t.tenant),
            t.runs,
            t.p50_seconds,
            t.p99_seconds
        ));
    }
    let disposition = format!("attachment; filename=\"waits-{}.csv\"", range.label());
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv,
    )
        .into_response())
}

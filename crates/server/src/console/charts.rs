//! Time series charts: read through the API's history handler (the same
//! answer `GET /api/v1/history` gives) and drawn in the browser by uPlot.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use corral_api::history::HistoryView;
use corral_core::history::MAX_BUCKETS;
use maud::{Markup, html};
use serde_json::json;

use super::layout;
use crate::api::error::ApiError;
use crate::api::history::get_history;
use crate::auth::Principal;
use crate::engine::Engine;

/// The most points a chart of several lines draws: with its time axis, well
/// under 200 KB of data.
const MAX_CHART_POINTS: i64 = 4_000;

/// How far back a chart looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    Day,
    Week,
    Month,
}

impl Range {
    const ALL: [Range; 4] = [Range::Hour, Range::Day, Range::Week, Range::Month];

    fn ms(self) -> i64 {
        match self {
            Range::Hour => 3_600_000,
            Range::Day => 86_400_000,
            Range::Week => 7 * 86_400_000,
            Range::Month => 30 * 86_400_000,
        }
    }

    /// The shortest step that keeps `lines` lines over this range within
    /// [`MAX_CHART_POINTS`] and the history's bucket limit; none (the API's
    /// own choice) for one line.
    fn step_for(self, lines: usize) -> Option<&'static str> {
        if lines <= 1 {
            return None;
        }
        let steps = [
            ("1m", 60_000),
            ("5m", 300_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("6h", 21_600_000),
            ("1d", 86_400_000),
        ];
        steps
            .into_iter()
            .find(|(_, ms)| {
                let buckets = self.ms() / ms;
                buckets <= MAX_BUCKETS && lines as i64 * buckets <= MAX_CHART_POINTS
            })
            .or(steps.last().copied())
            .map(|(step, _)| step)
    }

    fn label(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Week => "7d",
            Range::Month => "30d",
        }
    }

    /// The range asked for with `?range=`, 24 hours by default.
    pub fn from_query(query: &BTreeMap<String, String>) -> Range {
        query
            .get("range")
            .and_then(|r| Range::ALL.into_iter().find(|x| x.label() == r))
            .unwrap_or(Range::Day)
    }
}

/// Links to the other ranges of a page's charts.
pub fn range_links(base: &str, current: Range) -> Markup {
    html! {
        nav.actions aria-label="Time range" {
            @for r in Range::ALL {
                a href={ (base) "?range=" (r.label()) } aria-current=[(r == current).then_some("true")] { (r.label()) }
            }
        }
    }
}

/// The series named, of one pool or tenant (or every one the visitor may
/// see), over `range`.
async fn history(
    engine: &Arc<Engine>,
    who: &Principal,
    series: &str,
    subject: Option<(&str, &str)>,
    range: Range,
    lines: usize,
) -> Result<HistoryView, ApiError> {
    let mut query = BTreeMap::from([
        ("series".to_string(), series.to_string()),
        ("from".to_string(), range.label().to_string()),
    ]);
    if let Some((kind, name)) = subject {
        query.insert(kind.to_string(), name.to_string());
    }
    if let Some(step) = range.step_for(lines) {
        query.insert("step".to_string(), step.to_string());
    }
    let answer = get_history(State(engine.clone()), Extension(who.clone()), Query(query)).await?;
    Ok(answer.0)
}

/// A chart's data: one time axis (seconds) shared by every series, `null`
/// where a series has no point.
fn data(view: &HistoryView, label: impl Fn(&str, &str) -> String) -> serde_json::Value {
    let mut times: BTreeMap<i64, Vec<Option<f64>>> = BTreeMap::new();
    let n = view.series.len();
    for (i, s) in view.series.iter().enumerate() {
        for p in &s.points {
            let Ok(at) = chrono::DateTime::parse_from_rfc3339(&p.at) else {
                continue;
            };
            times.entry(at.timestamp()).or_insert_with(|| vec![None; n])[i] = Some(p.value);
        }
    }
    let x: Vec<i64> = times.keys().copied().collect();
    let series: Vec<serde_json::Value> = view
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "label": label(&s.series, &s.subject),
                "y": times.values().map(|v| v[i]).collect::<Vec<_>>(),
            })
        })
        .collect();
    let seconds = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|d| d.timestamp())
    };
    json!({
        "x": x,
        "series": series,
        "unit": view.series.first().map(|s| s.unit.clone()),
        "from": seconds(&view.from),
        "to": seconds(&view.to),
    })
}

/// A chart, or a line saying there is nothing to draw yet.
fn chart_or_note(
    id: &str,
    title: &str,
    view: &HistoryView,
    label: impl Fn(&str, &str) -> String,
) -> Markup {
    if view.series.iter().all(|s| s.points.is_empty()) {
        return html! {
            figure.chart { figcaption { (title) } p.muted { "No samples in this range yet." } }
        };
    }
    layout::chart(id, title, &data(view, label))
}

/// A pool's utilization and saturation per resource.
pub async fn pool_charts(
    engine: &Arc<Engine>,
    who: &Principal,
    pool: &str,
    range: Range,
) -> Result<Markup, ApiError> {
    let resource = |series: &str, _: &str| series.rsplit('.').next().unwrap_or(series).to_string();
    let utilization = history(
        engine,
        who,
        "pool.utilization.cpu,pool.utilization.memory,pool.utilization.gpu",
        Some(("pool", pool)),
        range,
        3,
    )
    .await?;
    let saturation = history(
        engine,
        who,
        "pool.saturation.cpu,pool.saturation.memory,pool.saturation.gpu",
        Some(("pool", pool)),
        range,
        3,
    )
    .await?;
    Ok(html! {
        (chart_or_note("utilization", "Utilization (allocated / capacity)", &utilization, resource))
        (chart_or_note("saturation", "Saturation (queued demand / free capacity)", &saturation, resource))
    })
}

/// Per tenant (or one tenant): queued runs and admission wait.
pub async fn tenant_charts(
    engine: &Arc<Engine>,
    who: &Principal,
    tenant: Option<&str>,
    range: Range,
) -> Result<Markup, ApiError> {
    let subject = tenant.map(|t| ("tenant", t));
    let lines = match tenant {
        Some(_) => 1,
        None => engine.read().await.tenants.len(),
    };
    let read = |series: &'static str| history(engine, who, series, subject, range, lines);
    let by_tenant = |_: &str, subject: &str| subject.to_string();
    let queued = read("tenant.queued_runs").await?;
    let waits = read("tenant.admission_wait_seconds").await?;
    Ok(html! {
        (chart_or_note("queued", "Queued runs", &queued, by_tenant))
        (chart_or_note("waits", "Admission wait (seconds, mean per sample)", &waits, by_tenant))
    })
}

/// Every pool's cpu utilization and saturation, one line per pool (each
/// pool's page has the other resources).
pub async fn pools_charts(
    engine: &Arc<Engine>,
    who: &Principal,
    range: Range,
) -> Result<Markup, ApiError> {
    let by_pool = |_: &str, subject: &str| subject.to_string();
    let lines = engine.read().await.pools.len();
    let mut charts = Vec::new();
    for (id, series, title) in [
        ("cpu-utilization", "pool.utilization.cpu", "CPU utilization"),
        ("cpu-saturation", "pool.saturation.cpu", "CPU saturation"),
    ] {
        let view = history(engine, who, series, None, range, lines).await?;
        charts.push(chart_or_note(id, title, &view, by_pool));
    }
    Ok(html! { @for c in &charts { (c) } })
}

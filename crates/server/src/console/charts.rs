//! Time series charts: read through the API's history handler (the same
//! answer `GET /api/v1/history` gives) and drawn in the browser by uPlot.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use corral_api::history::{HistoryView, WaitsView};
use corral_core::history::{MAX_BUCKETS, Step};
use maud::{Markup, html};
use serde_json::json;

use super::layout;
use crate::api::error::ApiError;
use crate::api::history::{get_history, get_waits};
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

    pub fn label(self) -> &'static str {
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

/// One line of a chart: its label and points (time in seconds, value).
struct Line {
    label: String,
    points: Vec<(i64, f64)>,
}

/// Seconds since the epoch of an RFC 3339 time the API wrote.
fn seconds(time: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|d| d.timestamp())
}

/// Where a point of a read with `step` is drawn: a bucket at its middle (a
/// bucket's time is its start), and never after the range's end `to` (the
/// current bucket is not over yet); a raw sample at its time.
fn placer(step: &str, to: &str) -> impl Fn(i64) -> i64 {
    let half = match Step::parse(step) {
        Ok(Step::Every(ms)) => ms / 2000,
        _ => 0,
    };
    let end = seconds(to).unwrap_or(i64::MAX);
    move |at| at.saturating_add(half).min(end.max(at))
}

/// A chart's data: one time axis (seconds) shared by every line, `null`
/// where a line has no point, over the range `from` to `to`.
fn data(lines: &[Line], unit: Option<&str>, from: &str, to: &str) -> serde_json::Value {
    let mut times: BTreeMap<i64, Vec<Option<f64>>> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        for &(at, value) in &line.points {
            times.entry(at).or_insert_with(|| vec![None; lines.len()])[i] = Some(value);
        }
    }
    let series: Vec<serde_json::Value> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| json!({ "label": line.label, "y": times.values().map(|v| v[i]).collect::<Vec<_>>() }))
        .collect();
    json!({
        "x": times.keys().collect::<Vec<_>>(),
        "series": series,
        "unit": unit,
        "from": seconds(from),
        "to": seconds(to),
    })
}

/// A chart, or a line saying there is nothing to draw yet.
fn chart_or_note(
    id: &str,
    title: &str,
    lines: &[Line],
    data: impl FnOnce() -> serde_json::Value,
) -> Markup {
    if lines.iter().all(|l| l.points.is_empty()) {
        return html! {
            figure.chart { figcaption { (title) } p.muted { "No samples in this range yet." } }
        };
    }
    layout::chart(id, title, &data())
}

/// A chart of a history answer, each series labelled by `label`.
fn history_chart(
    id: &str,
    title: &str,
    view: &HistoryView,
    label: impl Fn(&str, &str) -> String,
) -> Markup {
    let place = placer(&view.step, &view.to);
    let lines: Vec<Line> = view
        .series
        .iter()
        .map(|s| Line {
            label: label(&s.series, &s.subject),
            points: s
                .points
                .iter()
                .filter_map(|p| Some((place(seconds(&p.at)?), p.value)))
                .collect(),
        })
        .collect();
    let unit = view.series.first().map(|s| s.unit.as_str());
    chart_or_note(id, title, &lines, || {
        data(&lines, unit, &view.from, &view.to)
    })
}

/// The admission waits of one tenant (its p50 and p99) or every tenant the
/// visitor may see (their p99), over `range`, through the API's handler.
pub async fn waits(
    engine: &Arc<Engine>,
    who: &Principal,
    tenant: Option<&str>,
    range: Range,
) -> Result<WaitsView, ApiError> {
    let mut query = BTreeMap::from([("from".to_string(), range.label().to_string())]);
    if let Some(t) = tenant {
        query.insert("tenant".to_string(), t.to_string());
    }
    // Whole hours (the waits are kept per hour); whole days for every
    // tenant's line over a week or more, which the daily sums answer.
    let step = match (range, tenant) {
        (Range::Hour | Range::Day, _) | (Range::Week, Some(_)) => "1h",
        (Range::Month, Some(_)) => "6h",
        (Range::Week | Range::Month, None) => "1d",
    };
    query.insert("step".to_string(), step.to_string());
    Ok(
        get_waits(State(engine.clone()), Extension(who.clone()), Query(query))
            .await?
            .0,
    )
}

/// A chart of admission waits: p50 and p99 of one tenant, or p99 per tenant.
pub fn waits_chart(view: &WaitsView, one_tenant: bool) -> Markup {
    let place = placer(&view.step, &view.to);
    let line = |label: String, t: &corral_api::history::TenantWaitsView, p99: bool| Line {
        label,
        points: t
            .points
            .iter()
            .filter_map(|p| {
                Some((
                    place(seconds(&p.at)?),
                    if p99 { p.p99_seconds } else { p.p50_seconds },
                ))
            })
            .collect(),
    };
    let lines: Vec<Line> = if one_tenant {
        view.tenants
            .iter()
            .flat_map(|t| [line("p50".into(), t, false), line("p99".into(), t, true)])
            .collect()
    } else {
        view.tenants
            .iter()
            .map(|t| line(t.tenant.clone(), t, true))
            .collect()
    };
    let title = if one_tenant {
        "Admission wait, p50 and p99 (seconds)"
    } else {
        "Admission wait, p99 (seconds)"
    };
    chart_or_note("waits", title, &lines, || {
        data(&lines, Some("seconds"), &view.from, &view.to)
    })
}

/// What a pool's saturation chart shows.
const SATURATION: &str =
    "Saturation ((allocated + waiting runs more capacity would admit) / capacity)";
/// What a pool's held-demand chart shows.
const HELD: &str =
    "Held demand (waiting runs held by quotas, budgets, reservations or gangs / capacity)";

/// A pool's utilization, saturation and held demand per resource.
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
    let held = history(
        engine,
        who,
        "pool.held.cpu,pool.held.memory,pool.held.gpu",
        Some(("pool", pool)),
        range,
        3,
    )
    .await?;
    Ok(html! {
        (history_chart("utilization", "Utilization (allocated / capacity)", &utilization, resource))
        (history_chart("saturation", SATURATION, &saturation, resource))
        (history_chart("held", HELD, &held, resource))
    })
}

/// Per tenant (or one tenant): queued runs and admission waits.
pub async fn tenant_charts(
    engine: &Arc<Engine>,
    who: &Principal,
    tenant: Option<&str>,
    range: Range,
) -> Result<(Markup, WaitsView), ApiError> {
    let lines = match tenant {
        Some(_) => 1,
        None => engine.read_model().view().tenants.len(),
    };
    let by_tenant = |_: &str, subject: &str| subject.to_string();
    let subject = tenant.map(|t| ("tenant", t));
    let (queued, waits) = tokio::join!(
        history(engine, who, "tenant.queued_runs", subject, range, lines),
        waits(engine, who, tenant, range)
    );
    let (queued, waits) = (queued?, waits?);
    let charts = html! {
        (history_chart("queued", "Queued runs", &queued, by_tenant))
        (waits_chart(&waits, tenant.is_some()))
    };
    Ok((charts, waits))
}

/// Every pool's cpu utilization, saturation and held demand, one line per pool (each
/// pool's page has the other resources).
pub async fn pools_charts(
    engine: &Arc<Engine>,
    who: &Principal,
    range: Range,
) -> Result<Markup, ApiError> {
    let by_pool = |_: &str, subject: &str| subject.to_string();
    let lines = engine.read_model().view().pools.len();
    // Saturation and held demand are read together (one read, two charts).
    let (utilization, demand) = tokio::join!(
        history(engine, who, "pool.utilization.cpu", None, range, lines),
        history(
            engine,
            who,
            "pool.saturation.cpu,pool.held.cpu",
            None,
            range,
            2 * lines
        )
    );
    let (saturation, held) = split(demand?, "pool.saturation.cpu");
    Ok(html! {
        (history_chart("cpu-utilization", "CPU utilization", &utilization?, by_pool))
        (history_chart("cpu-saturation", "CPU saturation: demand more capacity would admit", &saturation, by_pool))
        (history_chart("cpu-held", "CPU demand held by quotas, budgets, reservations or gangs", &held, by_pool))
    })
}

/// A history answer split in two: the series named `first`, and the others.
fn split(view: HistoryView, first: &str) -> (HistoryView, HistoryView) {
    let (ours, rest): (Vec<_>, Vec<_>) = view.series.into_iter().partition(|s| s.series == first);
    let with = |series| HistoryView {
        from: view.from.clone(),
        to: view.to.clone(),
        step: view.step.clone(),
        source: view.source.clone(),
        series,
    };
    (with(ours), with(rest))
}

//! `GET /api/v1/history`: the governance time series for the console, read
//! back raw or merged into steps (see `corral_core::history::resolution`).
//!
//! Who sees what: `admin` and `viewer` every series. A `tenant` token its own
//! tenant's series only (asking for another tenant is a 403) and the series of
//! the pools its tenant may use (asking for another pool is a 403; without
//! `pool=`, the others are left out), as `GET /api/v1/pools` shows it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::{Extension, Json};
use corral_api::history::{
    HistoryView, PointView, SeriesView, TenantWaitsView, WaitPointView, WaitsView,
};
use corral_core::clock::Timestamp;
use corral_core::error::{FieldError, check_name};
use corral_core::history::waits::{self, WaitHistogram};
use corral_core::history::{HOUR_MS, Series, Source, Step, SubjectKind, resolution};
use corral_store::{HistoryPoint, HistoryQuery, WaitQuery};

use super::error::ApiError;
use super::routes::{may_use_pool, params, tenant_scope};
use super::views;
use crate::auth::Principal;
use crate::engine::Engine;

/// Points one answer may hold.
const MAX_POINTS: usize = 10_000;

/// Counts (per tenant, time bucket and wait bucket) a waits read may merge.
const MAX_WAIT_COUNTS: usize = 200_000;

/// Governance time series: per pool, utilization and saturation; per tenant,
/// holdings, queued runs and admission wait. One entry per series and subject,
/// its points oldest first.
#[utoipa::path(get, path = "/api/v1/history",
    params(
        ("series" = String, Query, description = "Series names, comma-separated: pool.utilization.{cpu,memory,gpu}, pool.saturation.{cpu,memory,gpu}, pool.held.{cpu,memory,gpu}, tenant.holdings.{cpu,memory,gpu}, tenant.queued_runs, tenant.admission_wait_seconds",
            pattern = "^(pool\\.(utilization|saturation|held)\\.(cpu|memory|gpu)|tenant\\.(holdings\\.(cpu|memory|gpu)|queued_runs|admission_wait_seconds))(,(pool\\.(utilization|saturation|held)\\.(cpu|memory|gpu)|tenant\\.(holdings\\.(cpu|memory|gpu)|queued_runs|admission_wait_seconds))){0,10}$"),
        ("pool" = Option<String>, Query, description = "Only this pool's series", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's series", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
        ("from" = Option<String>, Query, description = "An RFC 3339 time, or an age such as 90m or 7d (default: 1h)",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("to" = Option<String>, Query, description = "An RFC 3339 time, or an age (default: now)",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("step" = Option<String>, Query, description = "raw, or a bucket length such as 1m, 5m or 1h (whole hours from 1h on: hourly aggregates); by default raw while that holds at most 1000 samples per series, else the shortest of 1m, 5m, 15m, 1h, 6h, 1d, 7d giving at most 1000 buckets",
            pattern = "^(raw|([0-9]{1,9}[smhd]){1,8})$")),
    responses((status = 200, body = HistoryView), (status = 503, body = corral_api::ErrorBody)))]
pub(crate) async fn get_history(
    State(engine): State<Arc<Engine>>,
    Extension(who): Extension<Principal>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<HistoryView>, ApiError> {
    params(&query, &["series", "pool", "tenant", "from", "to", "step"])?;
    let series = parse_series(query.get("series"))?;
    let now = engine.now();
    let (from, to) = range(now, &query)?;
    let step = query.get("step").map(|s| Step::parse(s)).transpose()?;
    let interval_ms =
        i64::try_from(engine.config().sample_interval.as_millis()).unwrap_or(i64::MAX);
    let resolution = resolution(from, to, step, now, interval_ms)?;
    let mut points: Vec<HistoryPoint> = Vec::new();
    for kind in [SubjectKind::Pool, SubjectKind::Tenant] {
        let wanted: Vec<Series> = series
            .iter()
            .copied()
            .filter(|s| s.subject() == kind)
            .collect();
        let subjects = subjects(&engine, &who, &query, kind, !wanted.is_empty()).await?;
        if wanted.is_empty() {
            continue;
        }
        let read = HistoryQuery {
            series: wanted,
            subjects,
            from,
            to,
            source: resolution.source,
            bucket_ms: resolution.bucket_ms,
            limit: u32::try_from(MAX_POINTS + 1 - points.len()).unwrap_or(u32::MAX),
        };
        points.extend(engine.store().history(&read).await?);
    }
    if points.len() > MAX_POINTS {
        return Err(FieldError::new(
            "step",
            format!(
                "the answer would hold more than {MAX_POINTS} points: give a longer step, a shorter range, or pool= or tenant="
            ),
        )
        .into());
    }
    Ok(Json(HistoryView {
        from: views::time(from),
        to: views::time(to),
        step: resolution
            .bucket_ms
            .map_or_else(|| "raw".to_string(), format_step),
        source: match resolution.source {
            Source::Raw => "raw",
            Source::Hourly => "hourly",
        }
        .into(),
        series: entries(points),
    }))
}

/// How long runs waited for their first admission: per tenant, the number
/// of runs first admitted and their median and 99th percentile wait, over the
/// range and per bucket of it. The waits are kept per hour as histograms (see
/// `corral_core::history::waits`), so the percentiles are estimates within
/// 19% and the range is widened to whole hours.
///
/// Who sees what: `admin` and `viewer` every tenant, a `tenant` token its
/// own (asking for another is a 403).
#[utoipa::path(get, path = "/api/v1/history/waits",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
        ("from" = Option<String>, Query, description = "An RFC 3339 time, or an age such as 90m or 7d (default: 1h)",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("to" = Option<String>, Query, description = "An RFC 3339 time, or an age (default: now)",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("step" = Option<String>, Query, description = "Whole hours (1h, 6h, 1d) giving at most 1000 buckets; by default the shortest of 1h, 6h, 1d, 7d that does",
            pattern = "^([0-9]{1,9}[smhd]){1,8}$")),
    responses((status = 200, body = WaitsView), (status = 503, body = corral_api::ErrorBody)))]
pub(crate) async fn get_waits(
    State(engine): State<Arc<Engine>>,
    Extension(who): Extension<Principal>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<WaitsView>, ApiError> {
    params(&query, &["tenant", "from", "to", "step"])?;
    let (from, to) = range(engine.now(), &query)?;
    let step = query.get("step").map(|s| Step::parse(s)).transpose()?;
    let bucket_ms = waits::step_ms(from, to, step)?;
    if let Some(t) = query.get("tenant") {
        check_name("tenant", t)?;
    }
    let read = WaitQuery {
        tenants: tenant_scope(&who, &query)?.map(|t| vec![t]),
        from,
        to,
        bucket_ms,
        limit: u32::try_from(MAX_WAIT_COUNTS + 1).unwrap_or(u32::MAX),
    };
    let counts = engine.store().admission_waits(&read).await?;
    if counts.len() > MAX_WAIT_COUNTS {
        return Err(FieldError::new(
            "step",
            format!(
                "the range holds more than {MAX_WAIT_COUNTS} counts: give a longer step, a shorter range, or tenant="
            ),
        )
        .into());
    }
    let mut by_tenant: BTreeMap<String, BTreeMap<Timestamp, WaitHistogram>> = BTreeMap::new();
    for c in counts {
        by_tenant
            .entry(c.tenant)
            .or_default()
            .entry(c.at)
            .or_default()
            .add(c.bucket, c.runs);
    }
    let quantiles = |h: &WaitHistogram| (h.quantile(0.5), h.quantile(0.99));
    let tenants = by_tenant
        .into_iter()
        .map(|(tenant, buckets)| {
            let mut whole = WaitHistogram::default();
            let points = buckets
                .into_iter()
                .map(|(at, h)| {
                    whole.merge(&h);
                    let (p50, p99) = quantiles(&h);
                    WaitPointView {
                        at: views::time(at),
                        runs: h.runs(),
                        p50_seconds: p50.unwrap_or(0.0),
                        p99_seconds: p99.unwrap_or(0.0),
                    }
                })
                .collect();
            let (p50, p99) = quantiles(&whole);
            TenantWaitsView {
                tenant,
                runs: whole.runs(),
                p50_seconds: p50.unwrap_or(0.0),
                p99_seconds: p99.unwrap_or(0.0),
                points,
            }
        })
        .collect();
    Ok(Json(WaitsView {
        from: views::time(from),
        to: views::time(to),
        step: format_step(bucket_ms),
        tenants,
    }))
}

fn parse_series(text: Option<&String>) -> Result<BTreeSet<Series>, FieldError> {
    let known = || {
        Series::ALL
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = text.ok_or_else(|| {
        FieldError::new(
            "series",
            format!("is required: one or more of {}, comma-separated", known()),
        )
    })?;
    text.split(',')
        .map(|name| {
            Series::parse(name).ok_or_else(|| {
                FieldError::new(
                    "series",
                    format!("{name:?} is not a series (known: {})", known()),
                )
            })
        })
        .collect()
}

/// The range `from=` and `to=` ask for: the last hour by default.
fn range(
    now: Timestamp,
    query: &BTreeMap<String, String>,
) -> Result<(Timestamp, Timestamp), FieldError> {
    let from = match query.get("from") {
        Some(text) => moment(now, "from", text)?,
        None => now.plus_millis(-HOUR_MS),
    };
    let to = match query.get("to") {
        Some(text) => moment(now, "to", text)?,
        None => now,
    };
    if from > to {
        return Err(FieldError::new(
            "from",
            format!("{} is after to ({})", views::time(from), views::time(to)),
        ));
    }
    Ok((from, to))
}

/// A time given as RFC 3339 (`2026-11-28T09:00:00Z`) or as an age (`1h`, `7d`).
fn moment(now: Timestamp, field: &str, text: &str) -> Result<Timestamp, FieldError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp(t.timestamp_millis()));
    }
    corral_core::pipeline::parse_duration_secs(text)
        .and_then(|s| i64::try_from(s.checked_mul(1000)?).ok())
        .map(|ms| now.plus_millis(-ms))
        .ok_or_else(|| {
            FieldError::new(
                field,
                format!("{text:?} is neither an RFC 3339 time nor an age such as 1h or 7d"),
            )
        })
}

/// The pools or tenants whose series `who` reads, as the store's filter (none:
/// every one): what `pool=` or `tenant=` asks for, within what `who` may see.
async fn subjects(
    engine: &Engine,
    who: &Principal,
    query: &BTreeMap<String, String>,
    kind: SubjectKind,
    wanted: bool,
) -> Result<Option<Vec<String>>, ApiError> {
    let field = match kind {
        SubjectKind::Pool => "pool",
        SubjectKind::Tenant => "tenant",
    };
    let asked = query.get(field);
    if let Some(name) = asked {
        check_name(field, name)?;
        if !wanted {
            return Err(FieldError::new(
                field,
                format!("only {field}.* series have a {field}, and none is asked for"),
            )
            .into());
        }
    }
    if kind == SubjectKind::Tenant {
        return Ok(tenant_scope(who, query)?.map(|t| vec![t]));
    }
    if who.role.tenant().is_none() {
        return Ok(asked.map(|p| vec![p.clone()]));
    }
    let state = engine.read_model().view();
    let visible: Vec<String> = state
        .pools
        .keys()
        .filter(|p| may_use_pool(&state, who, p))
        .cloned()
        .collect();
    match asked {
        Some(p) if !visible.contains(p) => Err(ApiError::forbidden(format!(
            "token {} may not read the series of pool {p}",
            who.name
        ))),
        Some(p) => Ok(Some(vec![p.clone()])),
        None => Ok(Some(visible)),
    }
}

/// Points ordered by series and subject, grouped into one entry each.
fn entries(points: Vec<HistoryPoint>) -> Vec<SeriesView> {
    let mut entries: Vec<SeriesView> = Vec::new();
    for p in points {
        let point = PointView {
            at: views::time(p.at),
            value: p.mean,
            max: p.max,
            samples: p.samples,
        };
        match entries.last_mut() {
            Some(e) if e.series == p.series.name() && e.subject == p.subject => {
                e.points.push(point);
            }
            _ => entries.push(SeriesView {
                series: p.series.name().into(),
                subject: p.subject,
                unit: p.series.unit().into(),
                points: vec![point],
            }),
        }
    }
    entries
}

/// A bucket length as a user writes it: `30s`, `5m`, `1h`, `1d`.
fn format_step(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

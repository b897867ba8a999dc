//! Usage reports: what the allocation history held and cost, grouped by
//! tenant, pool, pipeline, day or month, as JSON or CSV; with the idle
//! capacity of each pool for those who may see every tenant, and (with
//! `idle=share`) that idle cost shared back to the rows that used each pool.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use corral_api::{
    AlertView, EfficiencyView, ErrorBody, IdleView, PriceChangeView, TenantSummary, UsageAmounts,
    UsageRowView, UsageView, UsedAmounts,
};
use corral_core::clock::Timestamp;
use corral_core::controller::Blocker;
use corral_core::error::FieldError;
use corral_core::metering::{
    DAY_MS, Date, FORECAST_WINDOW_MS, Grouping, IdleRow, Key, Month, SlotUsage, Usage, Window,
    budget_crossing, budget_health, daily_burn, forecast, group, idle, key_values, share_idle,
};
use corral_core::money::Money;
use corral_core::rightsizing;
use corral_store::{AlertFilter, AlertRecord, MeasuredSum, SpanFilter, UsageQuery, metered_usage};

use super::error::PathParam;
use super::routes::{Params, limit, params, tenant_scope, tenant_view, time_param};
use super::views::time as rfc3339;
use crate::api::error::ApiError;
use crate::auth::Principal;
use crate::engine::Engine;
use crate::engine::alerts::message;

/// The longest window one report covers.
const MAX_WINDOW_MS: i64 = 400 * 86_400_000;

/// Usage and cost over a window, grouped as asked; CSV with `Accept: text/csv`.
///
/// A tenant's token reports on its own tenant only. Costs are computed from
/// the allocation history and each pool's price in force over each interval,
/// so every grouping adds up to the same total.
///
/// With `idle=share`, each pool's idle cost over the window (over each day,
/// when by day) is shared back among those who used the pool then, in
/// proportion to what their use of it cost: each row gets `idle_share` and
/// `total_with_idle`, and the CSV two columns of the same names. Shares are
/// exact to the micro-unit (largest remainder), so a pool's shares sum to its
/// idle cost exactly (`shared` on its idle row); a pool nobody used keeps its
/// idle cost unshared. A tenant's shares are computed against every tenant's
/// use, so they are the same in its own report as in the operator's.
#[utoipa::path(get, path = "/api/v1/usage",
    params(
        ("by" = Option<String>, Query, description = "Comma-separated keys among tenant, pool, pipeline, day, month (default tenant)",
            pattern = "^(tenant|pool|pipeline|day|month)(,(tenant|pool|pipeline|day|month)){0,4}$"),
        ("from" = Option<String>, Query, description = "An RFC 3339 time or an age such as 7d (default: the start of this month, UTC)",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("to" = Option<String>, Query, description = "An RFC 3339 time or an age (default: now); after `from`, at most 400 days later",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("tenant" = Option<String>, Query),
        ("pool" = Option<String>, Query),
        ("idle" = Option<String>, Query, description = "`separate` (the default: idle cost in `idle` only) or `share` (shared back to the rows in proportion to what their use of each pool cost)",
            pattern = "^(separate|share)$")),
    responses(
        (status = 200, content((UsageView = "application/json"), (String = "text/csv"))),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn usage_report(
    State(engine): State<std::sync::Arc<Engine>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Query(query): Params,
) -> Result<Response, ApiError> {
    params(&query, &["by", "from", "to", "tenant", "pool", "idle"])?;
    let by = keys(query.get("by").map_or("tenant", String::as_str))?;
    let share = match query.get("idle").map(String::as_str) {
        None | Some("separate") => false,
        Some("share") => true,
        Some(other) => {
            return Err(
                FieldError::new("idle", format!("{other:?} is not separate or share")).into(),
            );
        }
    };
    let now = engine.now();
    let from = match query.get("from") {
        Some(t) => time_param(&engine, "from", t)?,
        None => Timestamp(Month::containing(now.0).start_ms()),
    };
    let to = match query.get("to") {
        Some(t) => time_param(&engine, "to", t)?,
        None => now,
    };
    if to.0 <= from.0 {
        return Err(FieldError::new("to", "must be after from").into());
    }
    if to.0 - from.0 > MAX_WINDOW_MS {
        return Err(FieldError::new("from", "a report covers at most 400 days").into());
    }
    let tenant = tenant_scope(&who, &query)?;
    let pool = query.get("pool").cloned();
    let filter = SpanFilter {
        from,
        to,
        tenant: tenant.clone(),
        pool: pool.clone(),
        unmetered: false,
    };
    let store = engine.store();
    let prices = store.prices().await?;
    let with_idle = who.role.tenant().is_none() && tenant.is_none();
    let grouping = Grouping::of(&by, with_idle);
    let held = metered_usage(store.as_ref(), &filter, grouping, &prices, now.0).await?;
    let window = Window::new(from.0, to.0);
    let report = group(&held, &by);
    let measured = store
        .measured_sums(&UsageQuery {
            window,
            tenant: tenant.clone(),
            pool: pool.clone(),
            grouping,
        })
        .await?;
    let (used_by_key, total_used) = used_by(&measured, &by);
    // Every tenant's use of the pools, by pool and slot: what idle capacity
    // is measured against and shared by. Without a tenant filter, the report's own.
    let everyone = if share && tenant.is_some() {
        let everyone = SpanFilter {
            tenant: None,
            ..filter.clone()
        };
        let grouping = Grouping {
            tenant: true,
            ..Grouping::of(&by, true)
        };
        metered_usage(store.as_ref(), &everyone, grouping, &prices, now.0).await?
    } else {
        Vec::new()
    };
    let everyone: &[SlotUsage] = if tenant.is_some() { &everyone } else { &held };
    let idle_rows = if with_idle || share {
        let mut capacities = store.capacities().await?;
        capacities.retain(|c| pool.as_ref().is_none_or(|p| *p == c.pool));
        idle(
            &capacities,
            everyone,
            &prices,
            window,
            now.0,
            by.contains(&Key::Day),
        )
    } else {
        Vec::new()
    };
    let shares = share.then(|| shares_by_row(&idle_rows, everyone, &by, tenant.as_deref()));
    let names: Vec<String> = by.iter().map(|k| k.as_str().to_string()).collect();
    let view = UsageView {
        rows: report
            .rows
            .iter()
            .map(|r| {
                let usage = amounts(&r.usage);
                let used = used_by_key.get(&r.key).copied().unwrap_or_default();
                let idle_share = shares
                    .as_ref()
                    .map(|s| s.by_row.get(&r.key).copied().unwrap_or_default());
                let total = idle_share.map(|s| r.usage.cost.saturating_add(s));
                UsageRowView {
                    key: names.iter().cloned().zip(r.key.iter().cloned()).collect(),
                    efficiency: efficiency_of(&used, &usage),
                    usage,
                    used,
                    idle_share: idle_share.map(Money::to_units_f64),
                    idle_share_micros: idle_share.map(Money::micros),
                    total_with_idle: total.map(Money::to_units_f64),
                    total_with_idle_micros: total.map(Money::micros),
                }
            })
            .collect(),
        total_efficiency: efficiency_of(&total_used, &amounts(&report.total)),
        total_used,
        total: amounts(&report.total),
        // Idle capacity is every tenant's business, so only theirs who see all.
        idle: idle_rows
            .iter()
            .enumerate()
            .take(if with_idle { idle_rows.len() } else { 0 })
            .map(|(i, r)| {
                let shared = shares.as_ref().map(|s| s.shared[i]);
                IdleView {
                    pool: r.pool.clone(),
                    day: r.day.clone(),
                    capacity: amounts(&r.capacity),
                    allocated: amounts(&r.allocated),
                    idle: amounts(&r.idle),
                    shared: shared.map(Money::to_units_f64),
                    shared_micros: shared.map(Money::micros),
                }
            })
            .collect(),
        by: names,
        from: rfc3339(from),
        to: rfc3339(to),
        idle_mode: if share { "share" } else { "separate" }.into(),
        currency: engine.config().currency.clone(),
    };
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    Ok(if wants_csv {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv(&view),
        )
            .into_response()
    } else {
        axum::Json(view).into_response()
    })
}

/// Every pool's price history, by pool and time: what usage is priced by.
#[utoipa::path(get, path = "/api/v1/prices",
    responses((status = 200, body = [PriceChangeView]), (status = 503, body = ErrorBody)))]
pub(crate) async fn price_history(
    State(engine): State<std::sync::Arc<Engine>>,
    Query(query): Params,
) -> Result<axum::Json<Vec<PriceChangeView>>, ApiError> {
    params(&query, &[])?;
    let prices = engine.store().prices().await?;
    Ok(axum::Json(
        prices
            .into_iter()
            .map(|p| PriceChangeView {
                at: rfc3339(Timestamp(p.at_ms)),
                pool: p.pool,
                cpu_hour: p.price.cpu_hour,
                memory_gib_hour: p.price.memory_gib_hour,
                gpu_hour: p.price.gpu_hour,
            })
            .collect(),
    ))
}

/// Budget alerts, newest first: the thresholds tenants' spend crossed this
/// month and before, and their delivery to the alert webhook. A tenant's token
/// sees its own tenant's only.
#[utoipa::path(get, path = "/api/v1/alerts",
    params(("tenant" = Option<String>, Query),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10_000)),
    responses((status = 200, body = [AlertView]), (status = 503, body = ErrorBody)))]
pub(super) async fn list_alerts(
    State(engine): State<std::sync::Arc<Engine>>,
    Extension(who): Extension<Principal>,
    Query(query): Params,
) -> Result<axum::Json<Vec<AlertView>>, ApiError> {
    params(&query, &["tenant", "limit"])?;
    let filter = AlertFilter {
        tenant: tenant_scope(&who, &query)?,
        month: None,
        undelivered: false,
        limit: limit(&query, 100, 10_000)?,
    };
    let alerts = engine.store().alerts(&filter).await?;
    Ok(axum::Json(alerts.iter().map(alert_view).collect()))
}

fn alert_view(a: &AlertRecord) -> AlertView {
    AlertView {
        tenant: a.tenant.clone(),
        month: a.month.clone(),
        threshold: a.threshold_milli as f64 / 1000.0,
        at: rfc3339(a.at),
        spent: a.spent.to_units_f64(),
        monthly: a.monthly.to_units_f64(),
        message: message(a),
        attempts: a.attempts,
        delivered_at: a.delivered_at.map(rfc3339),
        last_error: a.last_error.clone(),
    }
}

/// A tenant at a glance: quota and holdings, this month's spend per pool
/// against its budget, the month-end forecast, what it has waiting, and this
/// month's alerts.
#[utoipa::path(get, path = "/api/v1/tenants/{name}/summary",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    responses((status = 200, body = TenantSummary), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn tenant_summary(
    State(engine): State<std::sync::Arc<Engine>>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
) -> Result<axum::Json<TenantSummary>, ApiError> {
    let tenant = tenant_view(&engine, &who, &name).await?;
    let now = engine.now();
    let month = Month::containing(now.0);
    let (created, budget, queued_runs, queued_demand, blocked) = {
        let view = engine.read_model().view();
        let record = view
            .tenants
            .get(&name)
            .ok_or_else(|| ApiError::not_found("tenant", &name))?;
        let positions = engine.read_model().positions();
        let (runs, demand) = crate::meter::queued_by_tenant(positions.queue())
            .remove(&name)
            .unwrap_or_default();
        let blocked = crate::trouble::blocked_by_tenant(positions.queue(), positions.waiting())
            .remove(&name)
            .unwrap_or_default();
        (
            record.created_at,
            record.spec.budget.clone(),
            runs,
            demand,
            blocked,
        )
    };
    let store = engine.store();
    let week_ago = Timestamp(now.0.saturating_sub(FORECAST_WINDOW_MS));
    let prices = store.prices().await?;
    let held = |from: i64, to: i64, by: &[Key]| {
        let filter = SpanFilter {
            from: Timestamp(from),
            to: Timestamp(to),
            tenant: Some(name.clone()),
            pool: None,
            unmetered: false,
        };
        let grouping = Grouping::of(by, false);
        let prices = &prices;
        async move { metered_usage(store.as_ref(), &filter, grouping, prices, now.0).await }
    };
    let this_month = group(
        &held(month.start_ms(), month.end_ms(), &[Key::Pool]).await?,
        &[Key::Pool],
    );
    let last_week = group(&held(week_ago.0, now.0, &[]).await?, &[]);
    let measured = store
        .measured_sums(&UsageQuery {
            window: Window::new(month.start_ms(), month.end_ms()),
            tenant: Some(name.clone()),
            pool: None,
            grouping: Grouping::of(&[Key::Pool], false),
        })
        .await?;
    let (used_by_pool, _) = used_by(&measured, &[Key::Pool]);
    let spent = this_month.total.cost;
    let burned = last_week.total.cost;
    // A tenant made minutes ago would have its first minutes extrapolated to
    // the month: its history counts as a day at least.
    let history_start = created.0.min(now.0.saturating_sub(DAY_MS));
    let daily = daily_burn(burned, history_start, now.0);
    // Its share of the month's idle cost, against every tenant's use.
    let everyone = metered_usage(
        store.as_ref(),
        &SpanFilter {
            from: Timestamp(month.start_ms()),
            to: Timestamp(month.end_ms()),
            tenant: None,
            pool: None,
            unmetered: false,
        },
        Grouping {
            tenant: true,
            ..Grouping::of(&[Key::Pool], true)
        },
        &prices,
        now.0,
    )
    .await?;
    let idle_rows = idle(
        &store.capacities().await?,
        &everyone,
        &prices,
        Window::month(month),
        now.0,
        false,
    );
    let idle_by_pool = shares_by_row(&idle_rows, &everyone, &[Key::Pool], Some(&name)).by_row;
    let idle_share: Money = idle_by_pool.values().copied().sum();
    let alerts = store
        .alerts(&AlertFilter {
            tenant: Some(name.clone()),
            month: Some(month.label()),
            undelivered: false,
            limit: 100,
        })
        .await?;
    Ok(axum::Json(TenantSummary {
        tenant,
        month: month.label(),
        usage_by_pool: this_month
            .rows
            .iter()
            .map(|r| {
                let usage = amounts(&r.usage);
                let used = used_by_pool.get(&r.key).copied().unwrap_or_default();
                let share = idle_by_pool.get(&r.key).copied().unwrap_or_default();
                let total = r.usage.cost.saturating_add(share);
                UsageRowView {
                    key: std::iter::once("pool".to_string())
                        .zip(r.key.iter().cloned())
                        .collect(),
                    efficiency: efficiency_of(&used, &usage),
                    usage,
                    used,
                    idle_share: Some(share.to_units_f64()),
                    idle_share_micros: Some(share.micros()),
                    total_with_idle: Some(total.to_units_f64()),
                    total_with_idle_micros: Some(total.micros()),
                }
            })
            .collect(),
        spent: spent.to_units_f64(),
        forecast: forecast(spent, burned, history_start, now.0, month).to_units_f64(),
        daily_burn: daily.to_units_f64(),
        forecast_basis: format!(
            "{} spent this month, plus {daily} a day (the spend of the last {}) for the {} left of the month",
            spent,
            span_text(now.0 - history_start.max(week_ago.0)),
            span_text(month.end_ms().saturating_sub(now.0).max(0)),
        ),
        budget_crosses_at: budget.as_ref().and_then(|b| {
            budget_crossing(spent, burned, history_start, now.0, month, b.monthly)
                .map(|at| rfc3339(Timestamp(at)))
        }),
        budget_health: budget.as_ref().map(|b| {
            budget_health(b, spent, blocked.count(Blocker::Budget))
                .name()
                .to_string()
        }),
        blocked_by: blocked
            .by
            .iter()
            .map(|(b, n)| (b.name().to_string(), *n))
            .collect(),
        queued_runs,
        queued_demand: queued_demand.into(),
        alerts: alerts.iter().map(alert_view).collect(),
        idle_share: idle_share.to_units_f64(),
        idle_share_micros: idle_share.micros(),
        currency: engine.config().currency.clone(),
    }))
}

/// A report's idle cost shared back: each row's share (by its key values),
/// and what of each idle row was shared.
struct RowShares {
    by_row: BTreeMap<Vec<String>, Money>,
    shared: Vec<Money>,
}

/// Shares `idle` among the rows of a report by `by`, from every tenant's
/// usage `everyone` (by pool and slot, and by tenant when `tenant` is set);
/// with `tenant`, only that tenant's shares are kept, but they are computed
/// against everyone's use.
fn shares_by_row(
    idle: &[IdleRow],
    everyone: &[SlotUsage],
    by: &[Key],
    tenant: Option<&str>,
) -> RowShares {
    let shares = share_idle(idle, everyone, |piece| {
        (key_values(piece, by), tenant.map(|_| piece.tenant.clone()))
    });
    let mut by_row: BTreeMap<Vec<String>, Money> = BTreeMap::new();
    for ((key, owner), share) in shares.by_key {
        if owner.as_deref() == tenant {
            let row = by_row.entry(key).or_default();
            *row = row.saturating_add(share);
        }
    }
    RowShares {
        by_row,
        shared: shares.shared,
    }
}

/// What the measured attempts used, summed by the report's keys (an
/// attempt counts on the day it ended), and in all.
fn used_by(
    measured: &[MeasuredSum],
    by: &[Key],
) -> (BTreeMap<Vec<String>, UsedAmounts>, UsedAmounts) {
    let mut rows: BTreeMap<Vec<String>, UsedAmounts> = BTreeMap::new();
    let mut total = UsedAmounts::default();
    for m in measured {
        let key: Vec<String> = by
            .iter()
            .map(|k| match k {
                Key::Tenant => m.tenant.clone(),
                Key::Pool => m.pool.clone(),
                Key::Pipeline => m.pipeline.clone(),
                Key::Day => Date::containing(m.day_ms).to_string(),
                Key::Month => Month::containing(m.day_ms).label(),
            })
            .collect();
        let cpu = m.cpu_micros as f64 / 1e6;
        // MiB·ms to GiB·s.
        let memory = m.memory_peak_mib_ms as f64 / 1024.0 / 1000.0;
        for sum in [rows.entry(key).or_default(), &mut total] {
            sum.cpu_core_seconds += cpu;
            sum.memory_gib_seconds += memory;
        }
    }
    (rows, total)
}

/// Used over allocated, per resource; none where nothing was measured.
fn efficiency_of(used: &UsedAmounts, allocated: &UsageAmounts) -> EfficiencyView {
    let measured = used.cpu_core_seconds > 0.0 || used.memory_gib_seconds > 0.0;
    let ratio = |used: f64, allocated: f64| {
        measured
            .then(|| rightsizing::efficiency(used, allocated))
            .flatten()
    };
    EfficiencyView {
        cpu: ratio(used.cpu_core_seconds, allocated.cpu_core_seconds),
        memory: ratio(used.memory_gib_seconds, allocated.memory_gib_seconds),
    }
}

/// The keys of `by`, each once.
fn keys(text: &str) -> Result<Vec<Key>, ApiError> {
    let mut keys = Vec::new();
    for part in text.split(',') {
        let key: Key = part.trim().parse().map_err(|_| {
            FieldError::new(
                "by",
                format!("{part:?} is not one of tenant, pool, pipeline, day, month"),
            )
        })?;
        if keys.contains(&key) {
            return Err(FieldError::new("by", format!("{part} is given twice")).into());
        }
        keys.push(key);
    }
    Ok(keys)
}

fn amounts(u: &Usage) -> UsageAmounts {
    UsageAmounts {
        cpu_core_seconds: u.time.cpu_core_seconds(),
        memory_gib_seconds: u.time.memory_gib_seconds(),
        gpu_seconds: u.time.gpu_seconds(),
        cost: u.cost.to_units_f64(),
        cost_micros: u.cost.micros(),
    }
}

/// The report's rows as CSV: one column per key, then the amounts; the cost
/// to the micro-unit.
fn csv(view: &UsageView) -> String {
    let mut out = view.by.join(",");
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str("cpu_core_seconds,memory_gib_seconds,gpu_seconds,cost,used_cpu_core_seconds,used_memory_gib_seconds,cpu_efficiency,memory_efficiency");
    let share = view.idle_mode == "share";
    if share {
        out.push_str(",idle_share,total_with_idle");
    }
    out.push('\n');
    for row in &view.rows {
        for key in &view.by {
            out.push_str(&csv_field(row.key.get(key).map_or("", String::as_str)));
            out.push(',');
        }
        let u = &row.usage;
        let ratio = |r: Option<f64>| r.map_or(String::new(), |r| format!("{r:.4}"));
        out.push_str(&format!(
            "{:.3},{:.3},{:.3},{},{:.3},{:.3},{},{}\n",
            u.cpu_core_seconds,
            u.memory_gib_seconds,
            u.gpu_seconds,
            micros_text(u.cost_micros),
            row.used.cpu_core_seconds,
            row.used.memory_gib_seconds,
            ratio(row.efficiency.cpu),
            ratio(row.efficiency.memory),
        ));
        if share {
            out.pop();
            let micros = |m: Option<i64>| micros_text(m.unwrap_or_default());
            out.push_str(&format!(
                ",{},{}\n",
                micros(row.idle_share_micros),
                micros(row.total_with_idle_micros)
            ));
        }
    }
    out
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
pub(crate) fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// An amount of micro-units as a decimal with six places.
fn micros_text(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// A length of time in days, or hours under two days: `7 days`, `36 hours`.
fn span_text(ms: i64) -> String {
    let hours = ms / 3_600_000;
    if hours < 48 {
        format!("{hours} hours")
    } else {
        format!("{} days", hours / 24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_once_each() {
        assert_eq!(keys("tenant,day").ok(), Some(vec![Key::Tenant, Key::Day]));
        for bad in ["tenant,tenant", "week", ""] {
            assert!(keys(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_it_and_keeps_micro_units() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(micros_text(12_340_005), "12.340005");
        assert_eq!(micros_text(-5), "-0.000005");
    }
}

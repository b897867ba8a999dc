//! A tenant's month: what it has spent, where the month is heading, and which
//! alert thresholds its spend has crossed.

use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::tenant::{BudgetSpec, Enforce};

use super::calendar::DAY_MS;
use super::pieces::Cutter;
use super::{Month, PriceChange, Span, Window};

/// How far back [`forecast`]'s burn rate looks: seven days.
pub const FORECAST_WINDOW_MS: i64 = 7 * DAY_MS;

/// What `tenant` has spent in the UTC month containing `now_ms`, open spans up
/// to `now_ms`. Spans of other tenants are ignored.
pub fn month_to_date(spans: &[Span], prices: &[PriceChange], tenant: &str, now_ms: i64) -> Money {
    let window = Window::month(Month::containing(now_ms));
    Cutter::new(prices, window, now_ms)
        .pieces(spans.iter().filter(|s| s.tenant == tenant))
        .iter()
        .map(|piece| piece.usage.cost)
        .sum()
}

/// The spend `month` is heading for: what was spent so far, plus the burn rate
/// of the last seven days over what is left of the month after `now_ms`.
///
/// `spent_last_7_days` is the spend over `[now - FORECAST_WINDOW_MS, now)`;
/// when the history is younger (`history_start_ms`, e.g. the tenant's first
/// allocation, is within the last seven days) that spend covered only
/// `now - history_start_ms`, and the rate is taken over that. With no history
/// yet, or a month already over, the forecast is what was spent.
pub fn forecast(
    spent_month_to_date: Money,
    spent_last_7_days: Money,
    history_start_ms: i64,
    now_ms: i64,
    month: Month,
) -> Money {
    let observed = now_ms
        .saturating_sub(history_start_ms)
        .min(FORECAST_WINDOW_MS);
    let left = month
        .end_ms()
        .saturating_sub(now_ms.max(month.start_ms()))
        .max(0);
    if observed <= 0 || left == 0 {
        return spent_month_to_date;
    }
    // Rounded to the nearest micro-unit, half away from zero.
    let numerator = i128::from(spent_last_7_days.micros()) * i128::from(left);
    let divisor = i128::from(observed);
    let half = divisor / 2;
    let rest = if numerator >= 0 {
        (numerator + half) / divisor
    } else {
        (numerator - half) / divisor
    };
    spent_month_to_date.saturating_add(Money::saturating_from_i128(rest))
}

/// The spend at which the threshold `fraction` of `monthly` is reached, to the
/// nearest micro-unit.
pub fn alert_level(monthly: Money, fraction: f64) -> Money {
    // A budget is at most a billion units (1e15 micro-units), so the product
    // keeps its micro-units in an f64.
    Money::saturating_from_i128((monthly.micros() as f64 * fraction).round() as i128)
}

/// The thresholds of `alert_at` (fractions of `monthly`) that the spend crossed
/// going from `before` to `after`: reached by `after` and not by `before`,
/// leaving out those in `fired`, in increasing order.
///
/// Each threshold fires at most once a month: the caller records the ones it
/// fired this month and passes them as `fired` (an empty list on the first day
/// of a month). To fire thresholds that the spend had already passed when they
/// came to apply (a budget lowered, a threshold added), pass `Money::ZERO` as
/// `before`: `fired` keeps those that already fired from firing again.
pub fn crossed_alerts(
    alert_at: &[f64],
    monthly: Money,
    before: Money,
    after: Money,
    fired: &[f64],
) -> Vec<f64> {
    alert_at
        .iter()
        .copied()
        .filter(|&at| {
            let level = alert_level(monthly, at);
            before < level && level <= after && !fired.contains(&at)
        })
        .collect()
}

/// How a tenant's budget stands this month, from the best to the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetHealth {
    /// Below its first alert threshold.
    Ok,
    /// Past an alert threshold, within the budget.
    Alerting,
    /// Spent more than the budget (a soft budget lets runs in anyway).
    Over,
    /// A hard budget that keeps runs waiting.
    Blocking,
}

impl BudgetHealth {
    pub fn name(self) -> &'static str {
        match self {
            BudgetHealth::Ok => "ok",
            BudgetHealth::Alerting => "alerting",
            BudgetHealth::Over => "over",
            BudgetHealth::Blocking => "blocking",
        }
    }
}

/// Where `budget` stands with `spent` this month and `held` runs of the
/// tenant waiting because of it.
pub fn budget_health(budget: &BudgetSpec, spent: Money, held: u64) -> BudgetHealth {
    let first_alert = budget
        .alert_at
        .iter()
        .map(|&at| alert_level(budget.monthly, at))
        .min();
    if budget.enforce == Enforce::Hard && held > 0 {
        BudgetHealth::Blocking
    } else if spent > budget.monthly {
        BudgetHealth::Over
    } else if first_alert.is_some_and(|level| spent >= level) {
        BudgetHealth::Alerting
    } else {
        BudgetHealth::Ok
    }
}

/// When the spend reaches `budget` at the burn rate [`forecast`] uses (the
/// last seven days, or the history's age when younger): `now_ms` when it is
/// already there, none when it does not before `month` ends (or nothing is
/// spent at all).
pub fn budget_crossing(
    spent_month_to_date: Money,
    spent_last_7_days: Money,
    history_start_ms: i64,
    now_ms: i64,
    month: Month,
    budget: Money,
) -> Option<i64> {
    if spent_month_to_date >= budget {
        return Some(now_ms);
    }
    let observed = now_ms
        .saturating_sub(history_start_ms)
        .min(FORECAST_WINDOW_MS);
    if observed <= 0 || spent_last_7_days <= Money::ZERO {
        return None;
    }
    let missing = i128::from(budget.saturating_sub(spent_month_to_date).micros());
    let rate = i128::from(spent_last_7_days.micros());
    // Rounded up: the spend has reached the budget at that time, not before.
    let after = (missing * i128::from(observed) + rate - 1) / rate;
    let at = i128::from(now_ms) + after;
    (at < i128::from(month.end_ms())).then(|| i64::try_from(at).unwrap_or(i64::MAX))
}

/// The burn rate [`forecast`] uses, per day.
pub fn daily_burn(spent_last_7_days: Money, history_start_ms: i64, now_ms: i64) -> Money {
    let observed = now_ms
        .saturating_sub(history_start_ms)
        .min(FORECAST_WINDOW_MS);
    if observed <= 0 {
        return Money::ZERO;
    }
    Money::saturating_from_i128(
        i128::from(spent_last_7_days.micros()) * i128::from(DAY_MS) / i128::from(observed),
    )
}

//! Metering: what the allocation history cost, grouped as asked; idle capacity,
//! and its cost shared back to those who used each pool (`share.rs`);
//! month-to-date spend, forecasts, run estimates and budget alerts.
//!
//! Usage is computed from *spans* (an allocation held from its start to its end,
//! or to `now` while open), priced by the pool's price in force over each
//! interval. The unit of every report is the canonical piece: a span within the
//! window, cut at every price change of its pool and every UTC day boundary.
//! Each piece is priced once (rounded once, to the micro-unit) and every grouping
//! sums the same pieces, so the totals by tenant, pool, pipeline, day or month
//! are exactly equal, and the rows of a grouping add up to its total.
//!
//! Everything here is pure: the caller reads spans, price and capacity histories
//! from the store and passes `now`. To report on some tenants or pools only,
//! filter the spans (and, for [`idle`], the capacities) before calling: pieces
//! do not depend on other spans, so a filtered report holds exactly the rows of
//! the full one for what it keeps.

mod budget;
mod calendar;
mod estimate;
mod idle;
mod ledger;
mod pieces;
mod share;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AllocationId, RunId};
use crate::money::Money;
use crate::pool::Price;
use crate::resources::{ResourceTime, Resources};

pub use budget::{
    BudgetHealth, FORECAST_WINDOW_MS, alert_level, budget_crossing, budget_health, crossed_alerts,
    daily_burn, forecast, month_to_date,
};
pub use calendar::{DAY_MS, Date, Month, day_start};
pub use estimate::{estimate_cost, expected_duration_ms};
pub use idle::{IdleRow, idle};
pub use ledger::{Grouping, Plan, SlotPiece, plan, slot_pieces};
pub use share::{IdleShares, apportion, share_idle};

use pieces::Cutter;

/// An allocation held over time: from `start_ms` to `end_ms`, or, while it is
/// open (`end_ms` is `None`), up to `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub allocation: AllocationId,
    /// The run the allocation was granted to.
    pub run: RunId,
    pub tenant: String,
    pub pool: String,
    /// The name of the run's pipeline.
    pub pipeline: String,
    /// What the allocation holds.
    pub resources: Resources,
    /// When it was opened, in ms since the epoch.
    pub start_ms: i64,
    /// When it was closed; `None` while it is open.
    pub end_ms: Option<i64>,
}

/// A pool's price from `at_ms` until its next change. Before a pool's first
/// change (and for a pool without any) its price is zero; of changes at the
/// same time, the last given wins.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceChange {
    pub pool: String,
    /// From when the price is in force, in ms since the epoch.
    pub at_ms: i64,
    pub price: Price,
}

/// A pool's capacity from `at_ms` until its next change (a static pool's changes
/// as its agents come and go). Zero before the first change, like prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityChange {
    pub pool: String,
    /// From when the capacity is offered, in ms since the epoch.
    pub at_ms: i64,
    pub capacity: Resources,
}

/// The interval `[from_ms, to_ms)` a report covers. Nothing accrues after the
/// `now` given with it: a window that reaches past `now` ends there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first millisecond counted.
    pub from_ms: i64,
    /// The first millisecond not counted.
    pub to_ms: i64,
}

impl Window {
    /// `[from_ms, to_ms)`.
    pub fn new(from_ms: i64, to_ms: i64) -> Window {
        Window { from_ms, to_ms }
    }

    /// The whole of a UTC month.
    pub fn month(month: Month) -> Window {
        Window::new(month.start_ms(), month.end_ms())
    }
}

/// What usage is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Key {
    Tenant,
    Pool,
    Pipeline,
    /// The UTC day, `2026-11-28`.
    Day,
    /// The UTC month, `2026-11`.
    Month,
}

impl Key {
    /// Every key, in the order they are documented.
    pub const ALL: [Key; 5] = [Key::Tenant, Key::Pool, Key::Pipeline, Key::Day, Key::Month];

    /// `tenant`, `pool`, `pipeline`, `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Key::Tenant => "tenant",
            Key::Pool => "pool",
            Key::Pipeline => "pipeline",
            Key::Day => "day",
            Key::Month => "month",
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a [`Key`]; the message lists the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not something usage is grouped by (tenant, pool, pipeline, day or month)")]
pub struct KeyError(pub String);

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| KeyError(s.to_string()))
    }
}

/// Resources held over time and what that cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Core-, GiB- and gpu-time, exactly (see its accessors for seconds).
    pub time: ResourceTime,
    /// The sum of the costs of its pieces, each rounded once.
    pub cost: Money,
}

impl Usage {
    /// Nothing held, nothing spent.
    pub const ZERO: Usage = Usage {
        time: ResourceTime::ZERO,
        cost: Money::ZERO,
    };

    /// `time` at `price`, rounded once.
    pub fn priced(time: ResourceTime, price: &Price) -> Usage {
        Usage {
            time,
            cost: price.cost_of(&time),
        }
    }

    /// Both summed exactly (saturating at the bounds of their integers).
    pub fn saturating_add(&self, other: &Usage) -> Usage {
        Usage {
            time: self.time.saturating_add(&other.time),
            cost: self.cost.saturating_add(other.cost),
        }
    }

    /// Both subtracted exactly; negative where `other` is larger.
    pub fn saturating_sub(&self, other: &Usage) -> Usage {
        Usage {
            time: self.time.saturating_sub(&other.time),
            cost: self.cost.saturating_sub(other.cost),
        }
    }
}

/// One group of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// One value per key of the report, in the order of its keys.
    pub key: Vec<String>,
    pub usage: Usage,
}

/// Usage grouped by some keys, with the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// The keys the rows are grouped by.
    pub by: Vec<Key>,
    /// Sorted by their key values (days and months sort in time order); only
    /// groups with some usage. With no keys, a single row with an empty key.
    pub rows: Vec<UsageRow>,
    /// The sum of the rows, the same whatever the keys.
    pub total: Usage,
}

/// Usage within one slot of a pool (one price within one UTC day) by one
/// tenant's pipeline: a canonical piece, or pieces summed. Summed by a store
/// asked for fewer keys (see [`Grouping`]), the keys left out are empty, and
/// `slot_ms` is the window's start when slots were left out too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotUsage {
    pub tenant: String,
    pub pool: String,
    pub pipeline: String,
    /// The start of the slot, within the report's window.
    pub slot_ms: i64,
    pub usage: Usage,
}

/// The canonical pieces of `spans` within `window` (up to `now_ms`), priced by
/// `prices`, one per piece.
pub fn pieces(
    spans: &[Span],
    prices: &[PriceChange],
    window: Window,
    now_ms: i64,
) -> Vec<SlotUsage> {
    Cutter::new(prices, window, now_ms)
        .pieces(spans)
        .into_iter()
        .map(|piece| SlotUsage {
            tenant: piece.span.tenant.clone(),
            pool: piece.span.pool.clone(),
            pipeline: piece.span.pipeline.clone(),
            slot_ms: piece.slot,
            usage: piece.usage,
        })
        .collect()
}

/// The usage of `spans` within `window` (up to `now_ms`), priced by `prices`,
/// grouped by `by`. See the module's documentation for how pieces are cut and
/// why every grouping has the same total.
pub fn usage(
    spans: &[Span],
    prices: &[PriceChange],
    window: Window,
    now_ms: i64,
    by: &[Key],
) -> UsageReport {
    group(&pieces(spans, prices, window, now_ms), by)
}

/// The values of `by` for a piece: the key of the report's row it counts in.
pub fn key_values(piece: &SlotUsage, by: &[Key]) -> Vec<String> {
    by.iter()
        .map(|k| match k {
            Key::Tenant => piece.tenant.clone(),
            Key::Pool => piece.pool.clone(),
            Key::Pipeline => piece.pipeline.clone(),
            Key::Day => Date::containing(piece.slot_ms).to_string(),
            Key::Month => Month::containing(piece.slot_ms).label(),
        })
        .collect()
}

/// Pieces (or sums of pieces) of usage grouped by `by`.
pub fn group(held: &[SlotUsage], by: &[Key]) -> UsageReport {
    let mut rows: BTreeMap<Vec<String>, Usage> = BTreeMap::new();
    let mut total = Usage::ZERO;
    for piece in held {
        let row = rows.entry(key_values(piece, by)).or_default();
        *row = row.saturating_add(&piece.usage);
        total = total.saturating_add(&piece.usage);
    }
    UsageReport {
        by: by.to_vec(),
        rows: rows
            .into_iter()
            .map(|(key, usage)| UsageRow { key, usage })
            .collect(),
        total,
    }
}

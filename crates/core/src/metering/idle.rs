//! Idle capacity: what pools offered and nobody held, priced like usage.

use std::collections::BTreeMap;

use crate::resources::{ResourceTime, Resources};

use super::pieces::{Cutter, Timeline};
use super::{CapacityChange, Date, PriceChange, SlotUsage, Usage, Window};

/// A pool's capacity over the window (or one day of it), what was allocated of
/// it, and what was left idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleRow {
    pub pool: String,
    /// The UTC day (`2026-11-28`) when asked for by day.
    pub day: Option<String>,
    pub capacity: Usage,
    /// The same as the pool's usage over the same window.
    pub allocated: Usage,
    /// `capacity - allocated`, exactly, cost included.
    pub idle: Usage,
}

/// Per pool (and per UTC day when `by_day`), the capacity nobody held within
/// `window` (up to `now_ms`), priced by the pool's price in force, given the
/// usage `held` within the window: its canonical pieces (see [`super::pieces`]),
/// or their sums by pool and slot.
///
/// For every row, `allocated.cost + idle.cost == capacity.cost` exactly. The
/// pool's slots (one price, one day: see the pieces module) are priced once each
/// for the capacity they hold (summed over its changes within the slot), the
/// allocated cost is the sum of the canonical usage pieces in the slot (the very
/// pieces [`super::usage`] sums, so `allocated` equals the pool's usage), and
/// the idle cost of the slot is the difference of the two.
///
/// Allocations never exceed capacity while the controller keeps its invariant.
/// Should they ever (a capacity history that missed an agent, spans of a pool
/// without capacity changes), idle time and cost go negative by the excess:
/// they are not clamped at zero, so the identity still holds and the excess
/// shows in the report instead of disappearing.
///
/// Rows are sorted by pool, then day; a pool has rows when it has a capacity
/// change or some usage, and, by day, one row for each day of the window up to now.
pub fn idle(
    capacities: &[CapacityChange],
    held: &[SlotUsage],
    prices: &[PriceChange],
    window: Window,
    now_ms: i64,
    by_day: bool,
) -> Vec<IdleRow> {
    let cutter = Cutter::new(prices, window, now_ms);
    let (from, to) = cutter.bounds();
    let mut allocated: BTreeMap<(&str, i64), Usage> = BTreeMap::new();
    for piece in held {
        let slot = allocated
            .entry((piece.pool.as_str(), piece.slot_ms))
            .or_default();
        *slot = slot.saturating_add(&piece.usage);
    }
    let capacity = Timeline::by_pool(
        capacities
            .iter()
            .map(|c| (c.pool.as_str(), c.at_ms, &c.capacity)),
    );
    let mut pools: Vec<&str> = capacity.keys().copied().collect();
    pools.extend(held.iter().map(|s| s.pool.as_str()));
    pools.sort_unstable();
    pools.dedup();
    let mut rows: BTreeMap<(&str, Option<String>), IdleRow> = BTreeMap::new();
    for pool in pools {
        let mut t = from;
        while t < to {
            let slot = cutter.slot(pool, t);
            // The capacity held over the slot, summed over its changes.
            let mut held = ResourceTime::ZERO;
            let mut u = slot.start;
            while u < slot.end {
                let (current, next) = capacity
                    .get(pool)
                    .map_or((None, None), |timeline| timeline.at(u));
                let until = slot.end.min(next.unwrap_or(i64::MAX));
                let offered = current.map_or(Resources::ZERO, |(_, &c)| c);
                held = held.saturating_add(&ResourceTime::held(&offered, until - u));
                u = until;
            }
            let offered = Usage::priced(held, &slot.price);
            let taken = allocated
                .get(&(pool, slot.start))
                .copied()
                .unwrap_or_default();
            let day = by_day.then(|| Date::containing(slot.start).to_string());
            let row = rows.entry((pool, day.clone())).or_insert_with(|| IdleRow {
                pool: pool.to_string(),
                day,
                capacity: Usage::ZERO,
                allocated: Usage::ZERO,
                idle: Usage::ZERO,
            });
            row.capacity = row.capacity.saturating_add(&offered);
            row.allocated = row.allocated.saturating_add(&taken);
            row.idle = row.idle.saturating_add(&offered.saturating_sub(&taken));
            t = slot.end;
        }
    }
    rows.into_values().collect()
}

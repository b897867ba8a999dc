//! The canonical pieces of usage: every span, within the window, cut at every
//! price change of its pool and every UTC day boundary. Each piece is priced
//! once; every report sums pieces, never re-prices their sums.
//!
//! The same cuts without the spans make a pool's *slots*: within a slot a pool
//! has one price and one day. A piece lies in exactly one slot, which is how the
//! idle capacity of a slot is priced against the pieces allocated in it.

use std::collections::BTreeMap;

use crate::pool::Price;
use crate::resources::ResourceTime;

use super::calendar::{DAY_MS, day_start};
use super::{PriceChange, Span, Usage, Window};

/// Changes of one value of a pool over time, each in force until the next.
pub(super) struct Timeline<'a, T> {
    /// By time; of changes at the same time, the last given wins.
    changes: Vec<(i64, &'a T)>,
}

impl<'a, T> Timeline<'a, T> {
    /// The pools' timelines from their changes, in any order.
    pub(super) fn by_pool(
        changes: impl Iterator<Item = (&'a str, i64, &'a T)>,
    ) -> BTreeMap<&'a str, Timeline<'a, T>> {
        let mut pools: BTreeMap<&'a str, Timeline<'a, T>> = BTreeMap::new();
        for (pool, at, value) in changes {
            pools
                .entry(pool)
                .or_insert_with(|| Timeline {
                    changes: Vec::new(),
                })
                .changes
                .push((at, value));
        }
        for timeline in pools.values_mut() {
            // Stable: changes at the same time keep their order.
            timeline.changes.sort_by_key(|&(at, _)| at);
        }
        pools
    }

    /// The change in force at `t` (none before the first) and when the first
    /// change after `t` comes, if any.
    pub(super) fn at(&self, t: i64) -> (Option<(i64, &'a T)>, Option<i64>) {
        let i = self.changes.partition_point(|&(at, _)| at <= t);
        let current = i.checked_sub(1).and_then(|j| self.changes.get(j)).copied();
        (current, self.changes.get(i).map(|&(at, _)| at))
    }
}

/// A stretch of one pool with one price within one UTC day, inside the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Slot {
    pub start: i64,
    pub end: i64,
    pub price: Price,
}

/// One canonical piece: a span held over part of one slot.
pub(super) struct Piece<'a> {
    pub span: &'a Span,
    /// The start of its slot.
    pub slot: i64,
    /// When it starts and ends, within its slot.
    pub start: i64,
    pub end: i64,
    pub usage: Usage,
}

/// Cuts spans and pools into pieces and slots over one window.
pub(super) struct Cutter<'a> {
    prices: BTreeMap<&'a str, Timeline<'a, Price>>,
    from: i64,
    /// The window's end, or `now` if earlier: nothing accrues after `now`.
    to: i64,
    now: i64,
}

impl<'a> Cutter<'a> {
    pub(super) fn new(prices: &'a [PriceChange], window: Window, now_ms: i64) -> Cutter<'a> {
        Cutter {
            prices: Timeline::by_pool(prices.iter().map(|c| (c.pool.as_str(), c.at_ms, &c.price))),
            from: window.from_ms,
            to: window.to_ms.min(now_ms),
            now: now_ms,
        }
    }

    /// The window as far as it is measured: `[from, min(to, now))`.
    pub(super) fn bounds(&self) -> (i64, i64) {
        (self.from, self.to)
    }

    /// The slot of `pool` containing `t` (which must lie in the window). Before a
    /// pool's first price change, and for a pool without any, the price is zero.
    pub(super) fn slot(&self, pool: &str, t: i64) -> Slot {
        let (current, next) = self
            .prices
            .get(pool)
            .map_or((None, None), |timeline| timeline.at(t));
        let price = current.map_or_else(Price::default, |(_, &price)| price);
        let last = current.map(|(at, _)| at);
        let day = day_start(t);
        let start = self.from.max(day).max(last.unwrap_or(i64::MIN));
        let end = self
            .to
            .min(day.saturating_add(DAY_MS))
            .min(next.unwrap_or(i64::MAX));
        Slot { start, end, price }
    }

    /// The canonical pieces of `spans`, span by span, in time order within each.
    pub(super) fn pieces(&self, spans: impl IntoIterator<Item = &'a Span>) -> Vec<Piece<'a>> {
        let mut pieces = Vec::new();
        for span in spans {
            let start = span.start_ms.max(self.from);
            let end = span.end_ms.unwrap_or(self.now).min(self.to);
            let mut t = start;
            while t < end {
                let slot = self.slot(&span.pool, t);
                let until = end.min(slot.end);
                pieces.push(Piece {
                    span,
                    slot: slot.start,
                    start: t,
                    end: until,
                    usage: Usage::priced(
                        ResourceTime::held(&span.resources, until - t),
                        &slot.price,
                    ),
                });
                t = until;
            }
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: i64, cpu_hour: f64) -> PriceChange {
        PriceChange {
            pool: "p".into(),
            at_ms: at,
            price: Price {
                cpu_hour,
                ..Price::default()
            },
        }
    }

    #[test]
    fn slots_end_at_days_price_changes_and_the_window() {
        let prices = [
            change(DAY_MS + 5, 2.0),
            change(10, 1.0),
            change(DAY_MS + 5, 3.0),
        ];
        let cutter = Cutter::new(&prices, Window::new(0, 3 * DAY_MS), 2 * DAY_MS + 7);
        let slot = |t| {
            let s = cutter.slot("p", t);
            (s.start, s.end, s.price.cpu_hour)
        };
        assert_eq!(slot(0), (0, 10, 0.0));
        assert_eq!(slot(10), (10, DAY_MS, 1.0));
        assert_eq!(slot(DAY_MS + 4), (DAY_MS, DAY_MS + 5, 1.0));
        // Of two changes at one time, the last given wins.
        assert_eq!(slot(DAY_MS + 5), (DAY_MS + 5, 2 * DAY_MS, 3.0));
        // Cut at now.
        assert_eq!(slot(2 * DAY_MS), (2 * DAY_MS, 2 * DAY_MS + 7, 3.0));
        assert_eq!(cutter.slot("q", 3).price, Price::default());
        assert_eq!(cutter.bounds(), (0, 2 * DAY_MS + 7));
    }
}

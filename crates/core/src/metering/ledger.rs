//! What a store keeps of closed allocations so that a report does not price
//! them again: each closed span's canonical pieces over its whole life (its
//! slots, cut at price changes and UTC days but not at any report's window),
//! and their sums per slot. A report then reads whole days from the sums, the
//! pieces of a day the window cuts from the pieces (pricing again only the few
//! that straddle the window's edge), and prices live only what is still open.
//!
//! This holds as long as a pool's price changes are recorded when they happen,
//! never back-dated before an allocation already closed: the pieces keep the
//! price in force when they were metered.

use super::calendar::{DAY_MS, day_start};
use super::pieces::Cutter;
use super::{Key, PriceChange, Span, Usage, Window};

/// One canonical piece of a closed span: its part within one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPiece {
    /// The start of the slot (a price change or a UTC midnight).
    pub slot_ms: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub usage: Usage,
}

/// The canonical pieces of a closed span over its whole life, in time order;
/// none for an open one. Within any report's window, the pieces of the span
/// are these, cut at the window's edges.
pub fn slot_pieces(span: &Span, prices: &[PriceChange]) -> Vec<SlotPiece> {
    let Some(end) = span.end_ms else {
        return Vec::new();
    };
    let window = Window::new(day_start(span.start_ms), end);
    Cutter::new(prices, window, end)
        .pieces(std::slice::from_ref(span))
        .into_iter()
        .map(|p| SlotPiece {
            slot_ms: p.slot,
            start_ms: p.start,
            end_ms: p.end,
            usage: p.usage,
        })
        .collect()
}

/// How a report's window is read from metered pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Whole UTC days (from midnight to midnight): every metered piece in a
    /// slot of these days lies within the window, so their sums serve as they
    /// are. When the window reaches `now`, the day of `now` is whole: no closed
    /// piece ends after `now`.
    pub whole: Option<Window>,
    /// The parts of at most two days the window cuts, each within one day: of
    /// the metered pieces in such a day, those within the part count as they
    /// are, those that straddle its edges are cut and priced again.
    pub partial: Vec<Window>,
}

/// How `window`, up to `now_ms`, divides into whole days and parts of days.
pub fn plan(window: Window, now_ms: i64) -> Plan {
    let from = window.from_ms;
    let end = window.to_ms.min(now_ms);
    if end <= from {
        return Plan {
            whole: None,
            partial: Vec::new(),
        };
    }
    let ceil = |t: i64| day_start(t - 1).saturating_add(DAY_MS);
    let whole_from = ceil(from);
    let whole_to = if window.to_ms >= now_ms {
        ceil(end)
    } else {
        day_start(end)
    };
    if whole_from < whole_to {
        let mut partial = Vec::new();
        if from < whole_from {
            partial.push(Window::new(from, whole_from));
        }
        if whole_to < end {
            partial.push(Window::new(whole_to, end));
        }
        return Plan {
            whole: Some(Window::new(whole_from, whole_to)),
            partial,
        };
    }
    // No whole day: the window lies within one day or straddles one midnight.
    let midnight = day_start(end - 1);
    let partial = if midnight > from {
        vec![Window::new(from, midnight), Window::new(midnight, end)]
    } else {
        vec![Window::new(from, end)]
    };
    Plan {
        whole: None,
        partial,
    }
}

/// Which keys sums of usage are grouped by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grouping {
    pub tenant: bool,
    pub pool: bool,
    pub pipeline: bool,
    /// By slot, which gives the day and the month too.
    pub slot: bool,
}

impl Grouping {
    /// What a report by `by` needs; with `idle`, by pool and slot as well.
    pub fn of(by: &[Key], idle: bool) -> Grouping {
        let has = |k| by.contains(&k);
        Grouping {
            tenant: has(Key::Tenant),
            pool: idle || has(Key::Pool),
            pipeline: has(Key::Pipeline),
            slot: idle || has(Key::Day) || has(Key::Month),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    type Range = (i64, i64);

    fn plan_of(from: i64, to: i64, now: i64) -> (Option<Range>, Vec<Range>) {
        let p = plan(Window::new(from, to), now);
        (
            p.whole.map(|w| (w.from_ms, w.to_ms)),
            p.partial.iter().map(|w| (w.from_ms, w.to_ms)).collect(),
        )
    }

    #[test]
    fn a_closed_span_is_cut_into_its_slots_over_its_whole_life() {
        use crate::ids::{AllocationId, RunId};
        use crate::pool::Price;
        use crate::resources::Resources;

        let d = 100 * DAY_MS;
        let price = |at_ms, cpu_hour| PriceChange {
            pool: "p".into(),
            at_ms,
            price: Price {
                cpu_hour,
                ..Price::default()
            },
        };
        let prices = [price(0, 1.0), price(d + 20 * HOUR, 2.0)];
        let span = Span {
            allocation: AllocationId(1),
            run: RunId(1),
            tenant: "t".into(),
            pool: "p".into(),
            pipeline: "x".into(),
            resources: Resources::new(2000, 0, 0),
            start_ms: d + 10 * HOUR,
            end_ms: Some(d + DAY_MS + 2 * HOUR),
        };
        let pieces = slot_pieces(&span, &prices);
        let cut: Vec<(i64, i64, i64, String)> = pieces
            .iter()
            .map(|p| (p.slot_ms, p.start_ms, p.end_ms, p.usage.cost.to_string()))
            .collect();
        assert_eq!(
            cut,
            vec![
                // The first slot starts at midnight, not where the span does.
                (d, d + 10 * HOUR, d + 20 * HOUR, "20.00".to_string()),
                (
                    d + 20 * HOUR,
                    d + 20 * HOUR,
                    d + DAY_MS,
                    "16.00".to_string()
                ),
                (
                    d + DAY_MS,
                    d + DAY_MS,
                    d + DAY_MS + 2 * HOUR,
                    "8.00".to_string()
                ),
            ]
        );
        let whole = super::super::usage(
            std::slice::from_ref(&span),
            &prices,
            Window::new(i64::MIN, i64::MAX),
            i64::MAX,
            &[],
        );
        assert_eq!(whole.total.cost.to_string(), "44.00");
        assert!(
            slot_pieces(
                &Span {
                    end_ms: None,
                    ..span
                },
                &prices
            )
            .is_empty()
        );
    }

    #[test]
    fn windows_divide_into_whole_days_and_parts() {
        let d = 100 * DAY_MS;
        let later = d + 30 * DAY_MS;
        // Aligned: all whole.
        assert_eq!(
            plan_of(d, d + 2 * DAY_MS, later),
            (Some((d, d + 2 * DAY_MS)), vec![])
        );
        // Cut at both ends.
        assert_eq!(
            plan_of(d + HOUR, d + 3 * DAY_MS + HOUR, later),
            (
                Some((d + DAY_MS, d + 3 * DAY_MS)),
                vec![
                    (d + HOUR, d + DAY_MS),
                    (d + 3 * DAY_MS, d + 3 * DAY_MS + HOUR)
                ]
            )
        );
        // Reaching now: the day of now is whole.
        assert_eq!(
            plan_of(d, d + 9 * DAY_MS, d + DAY_MS + HOUR),
            (Some((d, d + 2 * DAY_MS)), vec![])
        );
        // Within one day, and across one midnight.
        assert_eq!(
            plan_of(d + HOUR, d + 2 * HOUR, later),
            (None, vec![(d + HOUR, d + 2 * HOUR)])
        );
        assert_eq!(
            plan_of(d + HOUR, d + DAY_MS + HOUR, later),
            (
                None,
                vec![(d + HOUR, d + DAY_MS), (d + DAY_MS, d + DAY_MS + HOUR)]
            )
        );
        // Starting within the day of now.
        assert_eq!(
            plan_of(d + HOUR, d + 9 * DAY_MS, d + 2 * HOUR),
            (None, vec![(d + HOUR, d + 2 * HOUR)])
        );
        // Nothing measured yet.
        assert_eq!(plan_of(d, d + DAY_MS, d), (None, vec![]));
    }
}

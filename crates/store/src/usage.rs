//! Reading a usage report's pieces from what the store metered: whole days
//! from the sums per slot, parts of days from the pieces (cutting again those
//! that straddle the window's edge), and, priced live, what is open or closed
//! before metering. See `corral_core::metering::ledger`.

use corral_core::metering::{Grouping, PriceChange, SlotUsage, Span, Window, pieces, plan};

use crate::{Result, SpanFilter, Store, UsageQuery};

/// The usage within `filter`'s window up to `now_ms` (the `unmetered` flag is
/// ignored), as canonical pieces and sums of pieces grouped by `grouping`:
/// what `corral_core::metering::group` and `idle` take, with exactly the
/// totals that pricing every span of the window would give.
pub async fn metered_usage(
    store: &dyn Store,
    filter: &SpanFilter,
    grouping: Grouping,
    prices: &[PriceChange],
    now_ms: i64,
) -> Result<Vec<SlotUsage>> {
    let window = Window::new(filter.from.0, filter.to.0);
    let query = |window: Window| UsageQuery {
        window,
        tenant: filter.tenant.clone(),
        pool: filter.pool.clone(),
        grouping,
    };
    let live: Vec<Span> = store
        .spans(&SpanFilter {
            unmetered: true,
            ..filter.clone()
        })
        .await?;
    let mut held = pieces(&live, prices, window, now_ms);
    let plan = plan(window, now_ms);
    let mut summed = Vec::new();
    if let Some(whole) = plan.whole {
        summed.push((whole, store.slot_sums(&query(whole)).await?));
    }
    for part in plan.partial {
        summed.push((part, store.piece_sums(&query(part)).await?));
        let straddling = store.straddling_pieces(&query(part)).await?;
        held.extend(pieces(&straddling, prices, part, now_ms));
    }
    for (within, sums) in summed {
        // A slot that began before the window counts from its start.
        held.extend(sums.into_iter().map(|s| SlotUsage {
            slot_ms: s.slot_ms.max(within.from_ms),
            ..s
        }));
    }
    Ok(held)
}

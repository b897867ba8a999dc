//! What tenants spend in a simulation, metered as the server meters it: runs'
//! allocations as spans priced by their pools, month by month, and each run's
//! estimate at arrival, so that budgets act on the simulated controller.

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use crate::controller::{BudgetView, PoolView};
use crate::ids::AllocationId;
use crate::metering::{Month, PriceChange, Span, Window, estimate_cost, usage};
use crate::money::Money;
use crate::pool::Price;
use crate::resources::Resources;
use crate::selector::PoolSelector;
use crate::tenant::{BudgetSpec, TenantSpec};

use super::SimRun;

/// Spend per tenant in the current month, of the runs that have finished.
#[derive(Debug)]
pub(super) struct Spend {
    /// Each pool's price, in force from the start of the simulation.
    prices: Vec<PriceChange>,
    month: Month,
    closed: BTreeMap<String, Money>,
}

impl Spend {
    pub(super) fn new(pools: &BTreeMap<String, PoolView>) -> Spend {
        Spend {
            prices: pools
                .values()
                .map(|p| PriceChange {
                    pool: p.name.clone(),
                    at_ms: 0,
                    price: p.price,
                })
                .collect(),
            month: Month::containing(0),
            closed: BTreeMap::new(),
        }
    }

    /// Starts a new month's books when `now` is in a later month.
    pub(super) fn roll(&mut self, now: Timestamp) {
        let month = Month::containing(now.0);
        if month != self.month {
            self.month = month;
            self.closed.clear();
        }
    }

    /// A run's allocations as spans, open ones up to `end` when it is `None`.
    fn spans(run: &SimRun, end: Option<Timestamp>) -> Vec<Span> {
        let Some(admitted) = run.admitted else {
            return Vec::new();
        };
        run.placements
            .iter()
            .enumerate()
            .map(|(i, p)| Span {
                allocation: AllocationId(i as i64),
                run: run.id,
                tenant: run.tenant.clone(),
                pool: p.pool.clone(),
                pipeline: format!("workload-{}", run.workload),
                resources: p.resources,
                start_ms: admitted.0,
                end_ms: end.map(|e| e.0),
            })
            .collect()
    }

    /// What `run` cost within `window`, up to `now`.
    fn cost(&self, run: &SimRun, end: Option<Timestamp>, window: Window, now: Timestamp) -> Money {
        usage(&Self::spans(run, end), &self.prices, window, now.0, &[])
            .total
            .cost
    }

    /// Books a run that ended at `ends` (within the month of `now`).
    pub(super) fn finish(&mut self, run: &SimRun, ends: Timestamp, now: Timestamp) {
        let cost = self.cost(run, Some(ends), Window::month(self.month), now);
        let spent = self.closed.entry(run.tenant.clone()).or_default();
        *spent = spent.saturating_add(cost);
    }

    /// The tenant's budget as the controller sees it at `now`, given its runs
    /// still holding their allocations.
    pub(super) fn view<'a>(
        &self,
        tenant: &str,
        budget: &BudgetSpec,
        running: impl Iterator<Item = &'a SimRun>,
        now: Timestamp,
    ) -> BudgetView {
        let mut spent = self.closed.get(tenant).copied().unwrap_or_default();
        let mut expected = Money::ZERO;
        for run in running {
            spent = spent.saturating_add(self.cost(run, None, Window::month(self.month), now));
            let so_far = self.cost(run, None, Window::new(i64::MIN, i64::MAX), now);
            expected =
                expected.saturating_add(run.estimate.saturating_sub(so_far).max(Money::ZERO));
        }
        BudgetView::new(budget, self.month, spent, expected)
    }
}

/// A run's estimate at arrival: each group's envelope at the dearest pool it may
/// use, for the longest duration of its workload.
pub(super) fn estimate(
    groups: &[(PoolSelector, Resources)],
    tenant: Option<&TenantSpec>,
    pools: &BTreeMap<String, PoolView>,
    max_ms: i64,
) -> Money {
    let candidates: Vec<(Resources, Vec<Price>)> = groups
        .iter()
        .map(|(selector, need)| {
            let prices = pools
                .values()
                .filter(|p| {
                    selector.matches(&p.name, &p.labels)
                        && tenant.is_none_or(|t| t.allows_pool(&p.name))
                })
                .map(|p| p.price)
                .collect();
            (*need, prices)
        })
        .collect();
    let groups: Vec<(Resources, &[Price])> = candidates
        .iter()
        .map(|(need, prices)| (*need, prices.as_slice()))
        .collect();
    estimate_cost(&groups, max_ms)
}

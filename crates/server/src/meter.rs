//! What the state knows of money: every pool's price history and latest
//! recorded capacity (kept in the store as history, so that usage and idle
//! capacity are priced over time), and what each tenant spent this month on
//! allocations already closed. Open allocations are priced when asked, up to
//! `now`. Budgets in the controller's snapshot come from here, and the upper
//! bound of each run that a hard budget admits on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use corral_core::clock::Timestamp;
use corral_core::controller::{BudgetView, Snapshot};
use corral_core::ids::RunId;
use corral_core::limits::Limits;
use corral_core::metering::{
    CapacityChange, Grouping, Month, PriceChange, Span, Window, crossed_alerts, estimate_cost,
    slot_pieces, usage,
};
use corral_core::money::Money;
use corral_core::pipeline::{StepSpec, longest_run_ms};
use corral_core::pool::{Price, Provider};
use corral_core::queue::RunQueue;
use corral_core::request::ResourceRequest;
use corral_core::resources::Resources;
use corral_core::tenant::Enforce;
use corral_store::{
    AlertFilter, AlertRecord, AllocationRecord, Live, Metered, RunRecord, SpanFilter, Store,
    UsageQuery, Write,
};

use crate::background::{Job, JobError, Progress};
use crate::state::State;

/// Prices, capacities and this month's closed spend.
#[derive(Debug, Default)]
pub struct SpendBook {
    /// Every price change, by pool and time.
    prices: Vec<PriceChange>,
    /// The last capacity recorded per pool.
    capacities: BTreeMap<String, Resources>,
    /// The month `closed` counts.
    month: Option<Month>,
    /// What each tenant's allocations closed in `month` cost within it.
    closed: BTreeMap<String, Money>,
    /// The budget thresholds that fired: (tenant, month, thousandths).
    fired: BTreeSet<(String, String, i64)>,
    /// How long each pipeline's last successful runs held their allocations.
    durations: Durations,
    /// The server's bounds on pipelines: the longest a step may run.
    limits: Limits,
}

/// How many of a pipeline's last successful runs its estimate learns from.
pub const ESTIMATE_HISTORY: u32 = 20;
/// Pipelines whose durations are kept; past it, the least recently updated
/// is forgotten (its next run is estimated as if it had no history).
const MAX_PIPELINES: usize = 10_000;
/// How far back durations are read on start.
const DURATIONS_SINCE_MS: i64 = 90 * 86_400_000;

/// A pipeline's durations are known by its tenant, its name and the content
/// of its steps (`PipelineSpec::content_key`): runs of other steps under the
/// same name teach its estimate nothing.
type PipelineKey = (String, String, u64);

/// The last durations of each pipeline, newest first, bounded.
#[derive(Debug, Default)]
struct Durations {
    by_pipeline: HashMap<PipelineKey, (u64, Vec<i64>)>,
    updates: u64,
}

impl Durations {
    fn record(&mut self, tenant: &str, pipeline: &str, content: u64, ms: i64) {
        self.updates += 1;
        let key = (tenant.to_string(), pipeline.to_string(), content);
        if !self.by_pipeline.contains_key(&key) && self.by_pipeline.len() >= MAX_PIPELINES {
            let oldest = self
                .by_pipeline
                .iter()
                .min_by_key(|(_, (updated, _))| *updated)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.by_pipeline.remove(&oldest);
            }
        }
        let (updated, list) = self.by_pipeline.entry(key).or_default();
        *updated = self.updates;
        list.insert(0, ms);
        list.truncate(ESTIMATE_HISTORY as usize);
    }
}

/// A threshold (a fraction of the budget) in thousandths.
fn milli(fraction: f64) -> i64 {
    (fraction * 1000.0).round() as i64
}

/// An allocation as a span of usage (its pipeline does not matter here).
fn span(a: &AllocationRecord, run: RunId) -> Span {
    Span {
        allocation: a.id,
        run,
        tenant: a.tenant.clone(),
        pool: a.pool.clone(),
        pipeline: String::new(),
        resources: a.resources,
        start_ms: a.opened_at.0,
        end_ms: a.closed_at.map(|t| t.0),
    }
}

impl SpendBook {
    /// The book for `now`'s month, from the store's histories and what each
    /// tenant's allocations closed this month cost.
    fn new(
        prices: Vec<PriceChange>,
        capacities: Vec<CapacityChange>,
        closed: BTreeMap<String, Money>,
        now: Timestamp,
        limits: Limits,
    ) -> SpendBook {
        SpendBook {
            prices,
            capacities: capacities
                .into_iter()
                .map(|c| (c.pool, c.capacity))
                .collect(),
            month: Some(Month::containing(now.0)),
            closed,
            fired: BTreeSet::new(),
            durations: Durations::default(),
            limits,
        }
    }

    /// The book the store's histories (taken out of `live`) and this month's
    /// closed allocations make: the metered sums of the month's days, and the
    /// allocations closed but not metered yet, priced. `limits` are the
    /// server's, for the bounds of runs.
    pub async fn replay(
        store: &dyn Store,
        live: &mut Live,
        now: Timestamp,
        limits: Limits,
    ) -> corral_store::Result<SpendBook> {
        let month = Month::containing(now.0);
        let sums = store
            .slot_sums(&UsageQuery {
                window: Window::month(month),
                tenant: None,
                pool: None,
                grouping: Grouping {
                    tenant: true,
                    ..Grouping::default()
                },
            })
            .await?;
        let mut closed: BTreeMap<String, Money> = BTreeMap::new();
        for s in sums {
            let spent = closed.entry(s.tenant).or_default();
            *spent = spent.saturating_add(s.usage.cost);
        }
        let unmetered = store
            .spans(&SpanFilter {
                from: Timestamp(month.start_ms()),
                to: Timestamp(now.0.saturating_add(1)),
                tenant: None,
                pool: None,
                unmetered: true,
            })
            .await?;
        let mut book = SpendBook::new(
            std::mem::take(&mut live.prices),
            std::mem::take(&mut live.capacities),
            closed,
            now,
            limits,
        );
        for s in unmetered.iter().filter(|s| s.end_ms.is_some()) {
            book.add_closed(s, now);
        }
        let fired = store
            .alerts(&AlertFilter {
                month: Some(month.label()),
                limit: u32::MAX,
                ..AlertFilter::default()
            })
            .await?;
        for alert in &fired {
            book.record_alert(alert);
        }
        let since = Timestamp(now.0.saturating_sub(DURATIONS_SINCE_MS));
        for p in store.recent_durations(since, ESTIMATE_HISTORY).await? {
            // Oldest first, so that the list ends newest first.
            for ms in p.durations.iter().rev() {
                book.durations
                    .record(&p.tenant, &p.pipeline, p.content, *ms);
            }
        }
        Ok(book)
    }

    /// The cost of `spans` within `window`, up to `now`.
    fn cost(&self, spans: &[Span], window: Window, now: Timestamp) -> Money {
        usage(spans, &self.prices, window, now.0, &[]).total.cost
    }

    fn add_closed(&mut self, s: &Span, now: Timestamp) {
        let Some(month) = self.month else { return };
        let cost = self.cost(std::slice::from_ref(s), Window::month(month), now);
        let spent = self.closed.entry(s.tenant.clone()).or_default();
        *spent = spent.saturating_add(cost);
    }

    /// Counts an allocation that has just closed.
    pub fn close(&mut self, a: &AllocationRecord, now: Timestamp) {
        self.roll(now);
        self.add_closed(&span(a, a.run_id), now);
    }

    /// Starts a new month's count when `now` is past the book's month.
    fn roll(&mut self, now: Timestamp) {
        let month = Month::containing(now.0);
        if self.month != Some(month) {
            self.month = Some(month);
            self.closed.clear();
        }
    }

    pub fn record_price(&mut self, change: &PriceChange) {
        let at = self
            .prices
            .partition_point(|p| (&p.pool, p.at_ms) <= (&change.pool, change.at_ms));
        self.prices.insert(at, change.clone());
    }

    pub fn record_capacity(&mut self, change: &CapacityChange) {
        self.capacities.insert(change.pool.clone(), change.capacity);
    }

    /// The last capacity recorded for `pool`: a `capacity: auto` pool's is
    /// what its provider last found.
    pub fn capacity(&self, pool: &str) -> Option<Resources> {
        self.capacities.get(pool).copied()
    }

    /// Counts a successful run of a pipeline (its name and `content_key`) that
    /// held its allocations for `ms`.
    pub fn record_duration(&mut self, tenant: &str, pipeline: &str, content: u64, ms: i64) {
        self.durations.record(tenant, pipeline, content, ms.max(0));
    }

    /// The last durations of a tenant's pipeline with these steps, newest first.
    pub fn durations(&self, tenant: &str, pipeline: &str, content: u64) -> &[i64] {
        self.durations
            .by_pipeline
            .get(&(tenant.to_string(), pipeline.to_string(), content))
            .map_or(&[], |(_, list)| list.as_slice())
    }

    pub fn record_alert(&mut self, alert: &AlertRecord) {
        self.fired.insert((
            alert.tenant.clone(),
            alert.month.clone(),
            alert.threshold_milli,
        ));
    }

    fn current_price(&self, pool: &str) -> Option<&PriceChange> {
        self.prices.iter().rev().find(|p| p.pool == pool)
    }

    /// What `tenant` spent in `now`'s month: its closed allocations, and its
    /// `open` ones up to `now`.
    pub fn month_to_date(&self, tenant: &str, open: &[Span], now: Timestamp) -> Money {
        let month = Month::containing(now.0);
        let closed = if self.month == Some(month) {
            self.closed.get(tenant).copied().unwrap_or_default()
        } else {
            Money::ZERO
        };
        closed.saturating_add(self.cost(open, Window::month(month), now))
    }

    /// What the open allocations of a run have cost so far, whatever the month.
    fn so_far(&self, open: &[Span], now: Timestamp) -> Money {
        self.cost(open, Window::new(i64::MIN, i64::MAX), now)
    }
}

impl State {
    /// Each tenant's open allocations as spans, and the most its admitted runs
    /// may still cost: each run's upper bound less what it cost so far, not
    /// below zero.
    fn open_and_running(
        &self,
        now: Timestamp,
    ) -> (BTreeMap<&str, Vec<Span>>, BTreeMap<&str, Money>) {
        let mut open: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
        let mut running: BTreeMap<&str, Money> = BTreeMap::new();
        // The runs holding allocations, not every live run.
        for run in self
            .usage
            .runs_holding()
            .filter_map(|id| self.runs.get(&id))
        {
            if run.allocations.is_empty() {
                continue;
            }
            let spans: Vec<Span> = run
                .allocations
                .iter()
                .map(|a| span(a, run.record.id))
                .collect();
            let left = run
                .bound
                .saturating_sub(self.spend.so_far(&spans, now))
                .max(Money::ZERO);
            let tenant = run.record.tenant.as_str();
            let r = running.entry(tenant).or_default();
            *r = r.saturating_add(left);
            open.entry(tenant).or_default().extend(spans);
        }
        (open, running)
    }

    /// Per tenant, its runs waiting for admission and what they ask for in
    /// all (the groups of admitted runs waiting for a new worker included).
    pub fn queued_by_tenant(&self) -> BTreeMap<String, (u64, Resources)> {
        queued_by_tenant(&self.queue)
    }

    /// What every tenant spent in `now`'s month, open allocations included.
    pub fn spend_by_tenant(&self, now: Timestamp) -> BTreeMap<String, Money> {
        let (open, _) = self.open_and_running(now);
        self.tenants
            .keys()
            .map(|name| {
                let mine = open
                    .get(name.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                (name.clone(), self.spend.month_to_date(name, mine, now))
            })
            .collect()
    }

    /// Each tenant's budget as the controller sees it at `now`, for tenants
    /// that have one.
    pub fn budgets(&self, now: Timestamp) -> BTreeMap<String, BudgetView> {
        // Pricing open allocations costs a little per run: only when it counts.
        if self.tenants.values().all(|t| t.spec.budget.is_none()) {
            return BTreeMap::new();
        }
        let month = Month::containing(now.0);
        let (open, running) = self.open_and_running(now);
        self.tenants
            .values()
            .filter_map(|t| {
                let budget = t.spec.budget.as_ref()?;
                let name = t.spec.name.as_str();
                let mine = open.get(name).map(Vec::as_slice).unwrap_or_default();
                let spent = self.spend.month_to_date(name, mine, now);
                let running = running.get(name).copied().unwrap_or_default();
                Some((
                    t.spec.name.clone(),
                    BudgetView::new(budget, month, spent, running),
                ))
            })
            .collect()
    }

    /// The budget alerts the spend in `snapshot` (this cycle's) crosses: each
    /// threshold once per tenant and month.
    pub fn alert_writes(&self, snapshot: &Snapshot, now: Timestamp) -> Vec<Write> {
        let mut writes = Vec::new();
        for (name, view) in &snapshot.tenants {
            let Some(budget) = &view.budget else { continue };
            let Some(spec) = self.tenants.get(name).and_then(|t| t.spec.budget.as_ref()) else {
                continue;
            };
            let fired: Vec<f64> = spec
                .alert_at
                .iter()
                .copied()
                .filter(|&f| {
                    self.spend
                        .fired
                        .contains(&(name.clone(), budget.month.clone(), milli(f)))
                })
                .collect();
            for at in crossed_alerts(
                &spec.alert_at,
                budget.monthly,
                Money::ZERO,
                budget.spent,
                &fired,
            ) {
                writes.push(Write::PutAlert(AlertRecord {
                    tenant: name.clone(),
                    month: budget.month.clone(),
                    threshold_milli: milli(at),
                    at: now,
                    spent: budget.spent,
                    monthly: budget.monthly,
                    attempts: 0,
                    delivered_at: None,
                    last_error: None,
                }));
            }
        }
        writes
    }

    /// What a run of `tenant` asking for `request` is expected to cost, held
    /// for `duration_ms`: each group priced at the dearest pool it may land on.
    pub fn estimate(&self, tenant: &str, request: &ResourceRequest, duration_ms: i64) -> Money {
        let allowed = self
            .tenants
            .get(tenant)
            .and_then(|t| t.spec.allowed_pools.as_ref());
        let prices: Vec<Vec<Price>> = request
            .groups
            .iter()
            .map(|g| {
                self.pools
                    .values()
                    .filter(|p| g.selector.matches(&p.spec.name, &p.spec.labels))
                    .filter(|p| allowed.is_none_or(|a| a.contains(&p.spec.name)))
                    .map(|p| p.spec.price)
                    .collect()
            })
            .collect();
        let groups: Vec<(Resources, &[Price])> = request
            .groups
            .iter()
            .zip(&prices)
            .map(|(g, p)| (g.resources, p.as_slice()))
            .collect();
        estimate_cost(&groups, duration_ms)
    }

    /// The most a run may cost at the prices in force: each group at the
    /// dearest pool it may land on, for the longest the run may take (every
    /// attempt of each step on its critical path running to its timeout, the
    /// server's `--max-step-duration` for a step without one). `needs` are its
    /// steps' resolved `needs`.
    pub fn upper_bound(&self, record: &RunRecord, needs: &[Vec<usize>]) -> Money {
        self.bound_of(&record.tenant, &record.request, &record.spec.steps, needs)
    }

    /// [`State::upper_bound`] of a run not made yet.
    pub fn bound_of(
        &self,
        tenant: &str,
        request: &ResourceRequest,
        steps: &[StepSpec],
        needs: &[Vec<usize>],
    ) -> Money {
        let longest = longest_run_ms(steps, needs, &self.spend.limits);
        self.estimate(tenant, request, longest)
    }

    /// Why a run that may cost `bound` can never be admitted under its
    /// tenant's hard budget: it may cost more than the whole month's budget.
    pub fn past_whole_budget(&self, tenant: &str, bound: Money) -> Option<String> {
        let budget = self.tenants.get(tenant)?.spec.budget.as_ref()?;
        (budget.enforce == Enforce::Hard && bound > budget.monthly).then(|| {
            format!(
                "the run may cost up to {bound} (every step running to its timeout, or {}s without one, at the dearest pool it may use), more than tenant {tenant}'s whole monthly budget of {} (hard)",
                self.spend.limits.max_step_secs, budget.monthly
            )
        })
    }

    /// What a pool offers now: a static pool its live agents' capacity, a
    /// `capacity: auto` pool what its provider last found, any other its own.
    fn pool_capacity(&self, pool: &str) -> Option<Resources> {
        let p = self.pools.get(pool)?;
        if p.spec.auto_capacity() {
            return Some(self.spend.capacity(pool).unwrap_or(Resources::ZERO));
        }
        Some(match p.spec.provider {
            Provider::Static => self
                .workers
                .values()
                .filter(|w| w.record.pool == pool)
                .fold(Resources::ZERO, |acc, w| {
                    acc.saturating_add(&w.record.capacity)
                }),
            _ => p.spec.capacity(),
        })
    }

    /// The metering of the allocations that `writes`, about to be applied,
    /// close: each priced once, in the batch that closes it.
    pub fn meter_writes(&self, writes: &[Write]) -> Vec<Write> {
        writes
            .iter()
            .filter_map(|w| match w {
                // A close is written once, for a live run; an allocation closed
                // otherwise is left to the backlog.
                Write::PutAllocation(a) if a.closed_at.is_some() => {
                    let run = self.runs.get(&a.run_id)?;
                    let span = Span {
                        pipeline: run.record.pipeline.clone(),
                        ..span(a, a.run_id)
                    };
                    let pieces = slot_pieces(&span, &self.spend.prices);
                    Some(Write::Meter(Metered { span, pieces }))
                }
                _ => None,
            })
            .collect()
    }

    /// Histories for pools that have none (made before metering was): their
    /// price and capacity from their creation on.
    pub fn backfill_history(&self) -> Vec<Write> {
        let mut writes = Vec::new();
        for (name, p) in &self.pools {
            let at_ms = p.created_at.0;
            if self.spend.current_price(name).is_none() {
                writes.push(Write::PutPrice(PriceChange {
                    pool: name.clone(),
                    at_ms,
                    price: p.spec.price,
                }));
            }
            if !self.spend.capacities.contains_key(name) {
                writes.push(Write::PutCapacity(CapacityChange {
                    pool: name.clone(),
                    at_ms,
                    capacity: self.pool_capacity(name).unwrap_or(Resources::ZERO),
                }));
            }
        }
        writes
    }

    /// The price and capacity changes that `writes`, just applied, made: the
    /// writes that keep their histories, staged in the same batch.
    pub fn history_writes(&self, writes: &[Write], now: Timestamp) -> Vec<Write> {
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        for w in writes {
            match w {
                Write::PutPool(p) => {
                    touched.insert(&p.spec.name);
                }
                Write::DeletePool(name) => {
                    touched.insert(name);
                }
                Write::PutWorker(w) => {
                    touched.insert(&w.pool);
                }
                _ => {}
            }
        }
        let mut history = Vec::new();
        for pool in touched {
            if let Some(p) = self.pools.get(pool) {
                let price = p.spec.price;
                if self.spend.current_price(pool).map(|c| c.price) != Some(price) {
                    history.push(Write::PutPrice(PriceChange {
                        pool: pool.to_string(),
                        at_ms: now.0,
                        price,
                    }));
                }
            }
            let capacity = self.pool_capacity(pool).unwrap_or(Resources::ZERO);
            let known = self.spend.capacities.get(pool).copied();
            // A deleted pool offers nothing from now on.
            if known.unwrap_or(Resources::ZERO) != capacity
                || (known.is_none() && self.pools.contains_key(pool))
            {
                history.push(Write::PutCapacity(CapacityChange {
                    pool: pool.to_string(),
                    at_ms: now.0,
                    capacity,
                }));
            }
        }
        history
    }
}

/// How many unmetered allocations one transaction meters.
const BACKLOG_BATCH: u32 = 200;
/// How often the backlog is looked at again once it is empty: allocations
/// whose run was not in memory when they closed are metered then.
const BACKLOG_RECHECK: std::time::Duration = std::time::Duration::from_secs(600);

/// Meters the allocations closed before metering was (or closed while their
/// run was not in memory), a batch per round, so that reports stop pricing
/// them live. Safe beside the engine: metering an allocation twice counts it
/// once.
pub struct MeterBacklog {
    store: Arc<dyn Store>,
    /// Metered since the backlog was last found empty.
    metered: usize,
}

impl MeterBacklog {
    pub fn new(store: Arc<dyn Store>) -> MeterBacklog {
        MeterBacklog { store, metered: 0 }
    }
}

impl Job for MeterBacklog {
    async fn work(&mut self) -> Result<Progress, JobError> {
        let spans = self.store.unmetered(BACKLOG_BATCH).await?;
        if spans.is_empty() {
            if self.metered > 0 {
                tracing::info!(
                    metered = self.metered,
                    "metered the allocations closed before metering"
                );
                self.metered = 0;
            }
            return Ok(Progress::Idle);
        }
        let prices = self.store.prices().await?;
        let writes: Vec<Write> = spans
            .into_iter()
            .map(|span| {
                let pieces = slot_pieces(&span, &prices);
                Write::Meter(Metered { span, pieces })
            })
            .collect();
        self.store.commit(&writes).await?;
        let n = writes.len();
        self.metered += n;
        if self.metered % 10_000 < n {
            tracing::info!(
                metered = self.metered,
                "metering allocations closed before metering"
            );
        }
        Ok(Progress::Busy)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(BACKLOG_RECHECK).await;
    }
}

/// Per tenant, its runs waiting in `queue` and what they ask for in all
/// (the groups of admitted runs waiting for a new worker included).
pub fn queued_by_tenant(queue: &RunQueue) -> BTreeMap<String, (u64, Resources)> {
    let mut waiting: BTreeMap<String, (u64, Resources)> = BTreeMap::new();
    for class in queue.classes() {
        let entry = waiting.entry(class.tenant.clone()).or_default();
        let runs = class.runs.len() as u64;
        if !class.readmit {
            entry.0 += runs;
        }
        let each = class.total();
        let all = Resources {
            cpu_millis: each.cpu_millis.saturating_mul(runs),
            memory_mib: each.memory_mib.saturating_mul(runs),
            gpu: each.gpu.saturating_mul(runs),
        };
        entry.1 = entry.1.saturating_add(&all);
    }
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_kept_newest_first_and_bounded() {
        let mut d = Durations::default();
        for ms in 0..25 {
            d.record("t", "p", 7, ms);
        }
        d.record("t", "p", 8, 1_000);
        let list = &d.by_pipeline[&("t".to_string(), "p".to_string(), 7)].1;
        assert_eq!(list.len(), ESTIMATE_HISTORY as usize);
        assert_eq!((list[0], list[19]), (24, 5));
        let other = &d.by_pipeline[&("t".to_string(), "p".to_string(), 8)].1;
        assert_eq!(other, &vec![1_000], "other steps under the same name");
        for i in 0..MAX_PIPELINES {
            d.record("t", &format!("q{i}"), 7, 1);
        }
        assert_eq!(d.by_pipeline.len(), MAX_PIPELINES);
        assert!(
            !d.by_pipeline
                .contains_key(&("t".to_string(), "p".to_string(), 7)),
            "the least recently updated is forgotten"
        );
    }
}

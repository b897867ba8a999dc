//! A deterministic simulator: the real controller (the incremental
//! [`Controller`] the server runs, which decides what [`decide`] does) driven by a
//! virtual clock over a synthetic workload, to see what a change of quotas,
//! weights or pools does before making it.
//!
//! Every `cycle` of simulated time, as in the server's loop: runs whose time is
//! up finish (their allocations close into the usage ledger), arrivals join the
//! queue, the snapshot is built the way the server builds it (pools, tenants with
//! their recent usage, open allocations charged), `decide` runs, and admitted
//! runs open their allocations. After every decision the invariants are checked
//! against the simulator's own books, independently of the snapshot.
//!
//! Tenants' budgets act as on the server: allocations are metered at their
//! pools' prices month by month, each run is estimated at arrival (its groups
//! at the dearest pool they may use, for the longest duration of its workload),
//! and a tenant's budget view carries what it spent and what its running runs
//! are still expected to cost.
//!
//! Arrivals and run durations are drawn at arrival from one seeded ChaCha8 stream
//! per workload, never from what the controller decided: two specs that differ
//! only in quotas or pools see the same runs.

mod report;
mod spec;
mod spend;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

pub use report::{
    PoolReport, ResourceTime, RunCounts, SimReport, TenantReport, Totals, Utilization, Waits,
};
pub use spec::{Arrival, GangSpec, RunDuration, SimSpec, Span, WorkloadSpec};

use crate::clock::Timestamp;
use crate::controller::{
    Admission, AgentView, Controller, OpenAllocation, Placement, Policy, PoolView, Reason,
    Reservation, Snapshot, TenantView, decide,
};
use crate::error::FieldError;
use crate::ids::{RunId, WorkerId};
use crate::money::Money;
use crate::pool::{PoolState, Provider};
use crate::queue::{ClassId, QueuedRun, RunQueue};
use crate::request::GroupRequest;
use crate::resources::Resources;
use crate::tenant::{Enforce, TenantSpec};
use crate::usage::UsageLedger;
use spec::Workload;
use spend::Spend;

/// Runs a whole simulation and reports on it.
pub fn simulate(spec: &SimSpec) -> Result<SimReport, FieldError> {
    let mut sim = Simulation::new(spec)?;
    while sim.step().is_some() {}
    Ok(sim.report())
}

/// One run, from its arrival to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRun {
    pub id: RunId,
    /// Its workload's index in the spec.
    pub workload: usize,
    pub tenant: String,
    pub arrived: Timestamp,
    /// How long it holds its allocations once admitted.
    pub duration_ms: i64,
    pub admitted: Option<Timestamp>,
    pub placements: Vec<Placement>,
    pub rejected: Option<Reason>,
    /// What it was expected to cost when it arrived.
    pub estimate: Money,
}

impl SimRun {
    /// When it ends (or ended), if admitted.
    pub fn ends(&self) -> Option<Timestamp> {
        self.admitted.map(|at| at.plus_millis(self.duration_ms))
    }

    /// What its allocations hold, all groups together.
    pub fn resources(&self) -> Resources {
        self.placements
            .iter()
            .fold(Resources::ZERO, |acc, p| acc.saturating_add(&p.resources))
    }

    /// Milliseconds of the interval `[from, to)` during which it held its allocations.
    pub fn held_within(&self, from: Timestamp, to: Timestamp) -> i64 {
        match (self.admitted, self.ends()) {
            (Some(a), Some(e)) => (e.0.min(to.0) - a.0.max(from.0)).max(0),
            _ => 0,
        }
    }
}

/// What one controller cycle decided, and the invariants it broke.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleLog {
    pub at: Timestamp,
    pub admitted: Vec<Admission>,
    pub rejected: Vec<RunId>,
    pub reservations: Vec<Reservation>,
    /// Why the runs of each class still queued wait.
    pub waiting: BTreeMap<ClassId, Arc<Reason>>,
    pub violations: Vec<Violation>,
}

/// A broken invariant: the controller decided something it must never decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}", report::format_ms(self.at_ms))?;
        if let Some(run) = self.run {
            write!(f, ", run {run}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One workload's arrivals.
#[derive(Debug)]
struct Source {
    rng: ChaCha8Rng,
    next: Option<i64>,
    emitted: u64,
}

impl Source {
    fn new(seed: u64, index: usize, w: &Workload) -> Source {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        let mut source = Source {
            rng,
            next: None,
            emitted: 0,
        };
        let first = match w.arrival {
            Arrival::RatePerMin(rate) => w.start.saturating_add(source.gap(rate)),
            Arrival::Every(_) | Arrival::Backlog(_) => w.start,
        };
        source.next = (first < w.stop).then_some(first);
        source
    }

    /// An exponential gap of a Poisson process, in milliseconds.
    fn gap(&mut self, rate_per_min: f64) -> i64 {
        let u: f64 = self.rng.random();
        (-(1.0 - u).ln() * 60_000.0 / rate_per_min).round() as i64
    }

    /// Takes the arrival due at `at`: draws its duration and the next arrival.
    fn take(&mut self, w: &Workload, at: i64) -> i64 {
        let duration = self.rng.random_range(w.min_ms..=w.max_ms);
        self.emitted += 1;
        let next = match w.arrival {
            _ if w.count.is_some_and(|c| self.emitted >= c) => None,
            Arrival::Every(every) => Some(at.saturating_add(every.millis())),
            Arrival::RatePerMin(rate) => Some(at.saturating_add(self.gap(rate))),
            Arrival::Backlog(n) => (self.emitted < n).then_some(at),
        };
        self.next = next.filter(|&t| t < w.stop);
        duration
    }
}

/// A simulation in progress: step it cycle by cycle, look at its runs, report.
#[derive(Debug)]
pub struct Simulation {
    spec: SimSpec,
    workloads: Vec<Workload>,
    policy: Policy,
    /// Kept across cycles, as the server keeps it; `None` decides each cycle
    /// with the full [`decide`] (the reference the tests compare it with).
    controller: Option<Controller>,
    /// Pools (static ones with their agents) and tenants, nothing held.
    base: Snapshot,
    sources: Vec<Source>,
    queue: RunQueue,
    ledger: UsageLedger,
    spend: Spend,
    /// Indexed by run id - 1.
    runs: Vec<SimRun>,
    /// Admitted runs not finished yet, by the time they end.
    running: BTreeSet<(Timestamp, RunId)>,
    now: Timestamp,
    end: Timestamp,
    cycles: u64,
    violations: Vec<Violation>,
}

impl Simulation {
    /// Validates the spec and sets the simulation at time zero.
    pub fn new(spec: &SimSpec) -> Result<Simulation, FieldError> {
        let workloads = spec.workloads()?;
        let mut next_agent = 0;
        let pools = spec
            .pools
            .iter()
            .map(|p| {
                let agents = match p.provider {
                    Provider::Static => spec
                        .agents
                        .get(&p.name)
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            next_agent += 1;
                            AgentView {
                                id: WorkerId(next_agent),
                                capacity: a.or(Resources::ZERO),
                                used: Resources::ZERO,
                            }
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                (p.name.clone(), PoolView::new(p, agents))
            })
            .collect();
        let tenants = spec
            .tenants
            .iter()
            .map(|t| (t.name.clone(), TenantView::new(t, [0.0; 3])))
            .collect();
        let spend = Spend::new(&pools);
        let sources = workloads
            .iter()
            .enumerate()
            .map(|(i, w)| Source::new(spec.seed, i, w))
            .collect();
        Ok(Simulation {
            spec: spec.clone(),
            workloads,
            policy: spec.policy(),
            controller: Some(Controller::new()),
            base: Snapshot { pools, tenants },
            sources,
            queue: RunQueue::new(),
            ledger: UsageLedger::new(spec.half_life.millis()),
            spend,
            runs: Vec::new(),
            running: BTreeSet::new(),
            now: Timestamp(0),
            end: Timestamp(spec.duration.millis()),
            cycles: 0,
            violations: Vec::new(),
        })
    }

    /// The same simulation deciding every cycle with the full [`decide`].
    #[cfg(test)]
    fn with_full_decision(mut self) -> Simulation {
        self.controller = None;
        self
    }

    pub fn is_done(&self) -> bool {
        self.now >= self.end
    }

    /// Every run that has arrived, by id.
    pub fn runs(&self) -> &[SimRun] {
        &self.runs
    }

    pub fn run(&self, id: RunId) -> Option<&SimRun> {
        run_index(id).and_then(|i| self.runs.get(i))
    }

    pub fn queue(&self) -> &RunQueue {
        &self.queue
    }

    /// Every invariant broken so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Replaces a tenant, as an operator applying a changed `kind: Tenant`
    /// document would: from the next cycle on, the controller sees its new
    /// quotas, limits and budget.
    pub fn set_tenant(&mut self, tenant: TenantSpec) -> Result<(), FieldError> {
        tenant.validate()?;
        let Some(slot) = self.spec.tenants.iter_mut().find(|t| t.name == tenant.name) else {
            return Err(FieldError::new(
                "name",
                format!("there is no tenant {:?} in the simulation", tenant.name),
            ));
        };
        self.base
            .tenants
            .insert(tenant.name.clone(), TenantView::new(&tenant, [0.0; 3]));
        *slot = tenant;
        Ok(())
    }

    /// Runs one controller cycle and moves the clock on by `cycle`; `None` once
    /// the simulated duration is over.
    pub fn step(&mut self) -> Option<CycleLog> {
        if self.is_done() {
            return None;
        }
        let now = self.now;
        self.spend.roll(now);
        self.finish_due(now);
        self.arrive(now);
        let mut log = CycleLog {
            at: now,
            admitted: Vec::new(),
            rejected: Vec::new(),
            reservations: Vec::new(),
            waiting: BTreeMap::new(),
            violations: Vec::new(),
        };
        if !self.queue.is_empty() {
            let snapshot = self.snapshot(now);
            let outcome = match self.controller.as_mut() {
                Some(controller) => controller.decide(&snapshot, &self.queue, now, &self.policy),
                None => decide(&snapshot, &self.queue, now, &self.policy),
            };
            log.violations = self.check(now, &outcome.admitted, &outcome.rejected);
            self.apply(now, &outcome.admitted, &outcome.rejected);
            log.rejected = outcome.rejected.into_iter().map(|(id, _)| id).collect();
            log.admitted = outcome.admitted;
            log.reservations = outcome.reservations;
            log.waiting = outcome.waiting;
            self.violations.extend(log.violations.iter().cloned());
        }
        self.cycles += 1;
        self.now = now.plus_millis(self.spec.cycle.millis());
        Some(log)
    }

    /// The report as of now (the end, once done).
    pub fn report(&self) -> SimReport {
        SimReport::build(self)
    }

    /// Closes the allocations of runs whose time is up, into the usage ledger.
    fn finish_due(&mut self, now: Timestamp) {
        while let Some(&(ends, id)) = self.running.first() {
            if ends > now {
                break;
            }
            self.running.pop_first();
            let Some(run) = run_index(id).and_then(|i| self.runs.get(i)) else {
                continue;
            };
            let Some(admitted) = run.admitted else {
                continue;
            };
            for p in &run.placements {
                self.ledger
                    .record(&run.tenant, &p.resources, admitted, ends);
            }
            self.spend.finish(run, ends, now);
        }
    }

    /// Queues every run arriving by `now`, in order of arrival (ties by workload).
    fn arrive(&mut self, now: Timestamp) {
        let mut arrivals: Vec<(i64, usize, i64)> = Vec::new();
        for (i, source) in self.sources.iter_mut().enumerate() {
            let w = &self.workloads[i];
            while let Some(at) = source.next.filter(|&at| at <= now.0) {
                let duration = source.take(w, at);
                arrivals.push((at, i, duration));
            }
        }
        arrivals.sort_by_key(|&(at, i, _)| (at, i));
        for (at, i, duration_ms) in arrivals {
            let w = &self.workloads[i];
            let id = RunId(self.runs.len() as i64 + 1);
            let groups = w
                .groups
                .iter()
                .enumerate()
                .map(|(g, (selector, resources))| GroupRequest {
                    index: g as u32,
                    selector: selector.clone(),
                    resources: *resources,
                    steps: Vec::new(),
                })
                .collect();
            let tenant = self.spec.tenants.iter().find(|t| t.name == w.tenant);
            let estimate = spend::estimate(&w.groups, tenant, &self.base.pools, w.max_ms);
            self.queue.insert(QueuedRun {
                id,
                tenant: w.tenant.clone(),
                priority: w.priority,
                enqueued_at: Timestamp(at),
                groups,
                readmit: false,
                bound: estimate,
            });
            self.runs.push(SimRun {
                id,
                workload: i,
                tenant: w.tenant.clone(),
                arrived: Timestamp(at),
                duration_ms,
                admitted: None,
                placements: Vec::new(),
                rejected: None,
                estimate,
            });
        }
    }

    fn running_runs(&self) -> impl Iterator<Item = &SimRun> {
        self.running.iter().filter_map(|&(_, id)| self.run(id))
    }

    /// The controller's view, built as the server builds it.
    fn snapshot(&self, now: Timestamp) -> Snapshot {
        let mut snapshot = self.base.clone();
        let mut open = Vec::new();
        let mut opened: BTreeMap<&str, Vec<(&Resources, Timestamp)>> = BTreeMap::new();
        for run in self.running_runs() {
            let Some(admitted) = run.admitted else {
                continue;
            };
            for p in &run.placements {
                open.push(OpenAllocation {
                    run: run.id,
                    tenant: run.tenant.clone(),
                    pool: p.pool.clone(),
                    resources: p.resources,
                    worker: p.worker,
                });
                opened
                    .entry(run.tenant.as_str())
                    .or_default()
                    .push((&p.resources, admitted));
            }
        }
        for (name, t) in &mut snapshot.tenants {
            let mine = opened.remove(name.as_str()).unwrap_or_default();
            t.recent = self.ledger.recent(name, mine, now);
        }
        for tenant in &self.spec.tenants {
            if let (Some(budget), Some(view)) =
                (&tenant.budget, snapshot.tenants.get_mut(&tenant.name))
            {
                let running = self.running_runs().filter(|r| r.tenant == tenant.name);
                view.budget = Some(self.spend.view(&tenant.name, budget, running, now));
            }
        }
        snapshot.charge(&open);
        snapshot
    }

    /// Checks a cycle's decisions against the books: each admitted run was
    /// queued and is admitted once, with one placement per group on a pool its
    /// selector, its tenant and the pool's state allow; and once they are
    /// added, no pool, agent, tenant quota, per-pool limit, `max_workers` or
    /// hard budget is exceeded.
    fn check(
        &self,
        now: Timestamp,
        admitted: &[Admission],
        rejected: &[(RunId, Reason)],
    ) -> Vec<Violation> {
        let mut out = Vec::new();
        if admitted.is_empty() && rejected.is_empty() {
            return out;
        }
        let mut books = Books::default();
        for run in self.running_runs() {
            books.add(run.id, &run.tenant, &run.placements);
        }
        let mut seen = BTreeSet::new();
        for a in admitted {
            let mut fail = |message: String| {
                out.push(Violation {
                    at_ms: now.0,
                    run: Some(a.run),
                    message,
                });
            };
            let Some(run) = self.run(a.run) else {
                fail("admitted, but it never arrived".into());
                continue;
            };
            if !seen.insert(a.run) || run.admitted.is_some() {
                fail("admitted twice".into());
                continue;
            }
            if !self.queue.contains(a.run) {
                fail("admitted, but it is not queued".into());
                continue;
            }
            for message in self.check_placements(run, &a.placements) {
                fail(message);
            }
            books.add(run.id, &run.tenant, &a.placements);
            for message in self.check_limits(&books, &run.tenant, &a.placements) {
                fail(message);
            }
        }
        out.extend(self.check_budgets(now, admitted));
        for (id, _) in rejected {
            if seen.contains(id) || !self.queue.contains(*id) {
                out.push(Violation {
                    at_ms: now.0,
                    run: Some(*id),
                    message: "rejected, but it is not queued or was admitted".into(),
                });
            }
        }
        out
    }

    /// No tenant with a hard budget is committed past it: what it spent, what
    /// its running runs are still expected to cost, and the estimates of the
    /// runs admitted now.
    fn check_budgets(&self, now: Timestamp, admitted: &[Admission]) -> Vec<Violation> {
        let mut estimates: BTreeMap<&str, Money> = BTreeMap::new();
        for run in admitted.iter().filter_map(|a| self.run(a.run)) {
            let sum = estimates.entry(run.tenant.as_str()).or_default();
            *sum = sum.saturating_add(run.estimate);
        }
        let mut out = Vec::new();
        for (tenant, estimate) in estimates {
            let Some(budget) = self
                .spec
                .tenants
                .iter()
                .find(|t| t.name == tenant)
                .and_then(|t| t.budget.as_ref())
                .filter(|b| b.enforce == Enforce::Hard)
            else {
                continue;
            };
            let running = self.running_runs().filter(|r| r.tenant == tenant);
            let view = self.spend.view(tenant, budget, running, now);
            let committed = view.committed().saturating_add(estimate);
            if committed > view.monthly {
                out.push(Violation {
                    at_ms: now.0,
                    run: None,
                    message: format!(
                        "tenant {tenant} is committed to {committed}, over its hard budget of {} for {}",
                        view.monthly, view.month
                    ),
                });
            }
        }
        out
    }

    /// One placement per group, of the group's size, on a pool that may take it.
    fn check_placements(&self, run: &SimRun, placements: &[Placement]) -> Vec<String> {
        let mut out = Vec::new();
        let groups = &self.workloads[run.workload].groups;
        let mut placed: Vec<u32> = placements.iter().map(|p| p.group).collect();
        placed.sort_unstable();
        let expected: Vec<u32> = (0..groups.len() as u32).collect();
        if placed != expected {
            out.push(format!(
                "placed groups {placed:?}: a gang of {} groups needs each placed once",
                groups.len()
            ));
        }
        let tenant = self.spec.tenants.iter().find(|t| t.name == run.tenant);
        for p in placements {
            let Some((selector, need)) = groups.get(p.group as usize) else {
                continue;
            };
            if p.resources != *need {
                out.push(format!(
                    "group {} granted {}, asked for {need}",
                    p.group, p.resources
                ));
            }
            let Some(pool) = self.base.pools.get(&p.pool) else {
                out.push(format!(
                    "group {} placed on unknown pool {}",
                    p.group, p.pool
                ));
                continue;
            };
            if !selector.matches(&pool.name, &pool.labels) {
                out.push(format!(
                    "group {} placed on pool {}, which is not {selector}",
                    p.group, pool.name
                ));
            }
            if pool.state != PoolState::Active {
                out.push(format!(
                    "group {} placed on pool {}, which is {}",
                    p.group,
                    pool.name,
                    pool.state.as_str()
                ));
            }
            if tenant.is_none_or(|t| !t.allows_pool(&pool.name)) {
                out.push(format!(
                    "group {} placed on pool {}, which tenant {} may not use",
                    p.group, pool.name, run.tenant
                ));
            }
            let on_agent = pool
                .agents
                .as_ref()
                .is_none_or(|agents| agents.iter().any(|a| Some(a.id) == p.worker));
            if !on_agent {
                out.push(format!(
                    "group {} placed on static pool {} without one of its agents",
                    p.group, pool.name
                ));
            }
        }
        out
    }

    /// The limits an admission of `tenant` with `placements` touches, once added.
    fn check_limits(&self, books: &Books, tenant: &str, placements: &[Placement]) -> Vec<String> {
        let mut out = Vec::new();
        let over = |used: &Resources, limit: &Resources| !used.fits_in(limit);
        if let Some(t) = self.base.tenants.get(tenant) {
            let (used, runs) = books.tenants.get(tenant).cloned().unwrap_or_default();
            if over(&used, &t.quota.resources) {
                out.push(format!(
                    "tenant {tenant} holds {used}, over its quota {}",
                    t.quota.resources
                ));
            }
            if runs.len() as u64 > t.quota.runs {
                out.push(format!(
                    "tenant {tenant} holds {} runs, over its quota of {}",
                    runs.len(),
                    t.quota.runs
                ));
            }
            for p in placements {
                let Some(limit) = t.pool_limits.get(&p.pool) else {
                    continue;
                };
                let key = (tenant.to_string(), p.pool.clone());
                let (used, runs) = books.tenant_pools.get(&key).cloned().unwrap_or_default();
                if over(&used, &limit.resources) || runs.len() as u64 > limit.runs {
                    out.push(format!(
                        "tenant {tenant} holds {used} in {} runs in pool {}, over its limit there ({}, {} runs)",
                        runs.len(),
                        p.pool,
                        limit.resources,
                        limit.runs
                    ));
                }
            }
        }
        for p in placements {
            let Some(pool) = self.base.pools.get(&p.pool) else {
                continue;
            };
            let (used, workers) = books.pools.get(&p.pool).copied().unwrap_or_default();
            if over(&used, &pool.capacity) {
                out.push(format!(
                    "pool {} holds {used}, over its capacity {}",
                    pool.name, pool.capacity
                ));
            }
            if workers > u64::from(pool.max_workers) {
                out.push(format!(
                    "pool {} has {workers} workers, over its max_workers {}",
                    pool.name, pool.max_workers
                ));
            }
            let agent = p.worker.and_then(|w| {
                let a = pool.agents.as_ref()?.iter().find(|a| a.id == w)?;
                Some((a, books.agents.get(&w).copied().unwrap_or_default()))
            });
            if let Some((agent, used)) = agent
                && over(&used, &agent.capacity)
            {
                out.push(format!(
                    "agent {} of pool {} holds {used}, over its capacity {}",
                    agent.id, pool.name, agent.capacity
                ));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Opens the admitted runs' allocations and drops the rejected runs.
    fn apply(&mut self, now: Timestamp, admitted: &[Admission], rejected: &[(RunId, Reason)]) {
        for a in admitted {
            if !self.queue.contains(a.run) {
                continue;
            }
            self.queue.remove(a.run);
            let Some(run) = run_index(a.run).and_then(|i| self.runs.get_mut(i)) else {
                continue;
            };
            run.admitted = Some(now);
            run.placements = a.placements.clone();
            self.running
                .insert((now.plus_millis(run.duration_ms), run.id));
        }
        for (id, reason) in rejected {
            if !self.queue.contains(*id) {
                continue;
            }
            self.queue.remove(*id);
            let Some(run) = run_index(*id).and_then(|i| self.runs.get_mut(i)) else {
                continue;
            };
            run.rejected = Some(reason.clone());
        }
    }
}

/// Runs are numbered from 1 in order of arrival.
fn run_index(id: RunId) -> Option<usize> {
    usize::try_from(id.0.checked_sub(1)?).ok()
}

/// What is held, summed the simulator's own way, to check the controller with.
#[derive(Debug, Default)]
struct Books {
    /// Per pool: resources and workers (one per allocation).
    pools: BTreeMap<String, (Resources, u64)>,
    agents: BTreeMap<WorkerId, Resources>,
    tenants: BTreeMap<String, (Resources, BTreeSet<RunId>)>,
    tenant_pools: BTreeMap<(String, String), (Resources, BTreeSet<RunId>)>,
}

impl Books {
    fn add(&mut self, run: RunId, tenant: &str, placements: &[Placement]) {
        for p in placements {
            let pool = self.pools.entry(p.pool.clone()).or_default();
            pool.0 = pool.0.saturating_add(&p.resources);
            pool.1 += 1;
            if let Some(w) = p.worker {
                let agent = self.agents.entry(w).or_default();
                *agent = agent.saturating_add(&p.resources);
            }
            let t = self.tenants.entry(tenant.to_string()).or_default();
            t.0 = t.0.saturating_add(&p.resources);
            t.1.insert(run);
            let tp = self
                .tenant_pools
                .entry((tenant.to_string(), p.pool.clone()))
                .or_default();
            tp.0 = tp.0.saturating_add(&p.resources);
            tp.1.insert(run);
        }
    }
}

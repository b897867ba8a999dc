//! The resource controller: a pure function from a snapshot of pools, tenants
//! and open allocations, the queue and the time to admission decisions.
//!
//! Order of admission, level by level (readmissions of runs that lost a worker
//! first, then priority, higher first): fair share. The tenant with the lowest
//! weighted dominant share (what it holds plus its decayed recent usage, over the
//! total capacity, divided by its weight) goes next, with its oldest run that may
//! still fit; FIFO within a tenant. A run that must wait blocks only the runs of
//! its class (same tenant, priority and groups), never the runs behind it.
//!
//! No run starves: one that has waited longer than `starvation_after` and must
//! still wait when its turn comes reserves the room it waits for (one
//! reservation per pool), which no run after it may take. Its tenant holds
//! little while it waits, so its turn comes early in every cycle and the
//! reservation holds from cycle to cycle until the work in its way has ended.
//! Runs that have waited long but fit keep their fair-share turn: under
//! sustained overload every run waits long, and that must not turn the order
//! into first come, first served.
//!
//! An admission is charged to the working snapshot at once, so later runs in the
//! same cycle see it: its resources, and its upper bound to its tenant's budget.
//!
//! A hard budget admits on upper bounds, never on history, so spend cannot pass
//! it (like Slurm's `safe` limits): a run goes in only if the month's spend,
//! what the tenant's running runs may still cost at most and the run's own
//! bound (its groups at the dearest pool each may land on, for the longest
//! the run may take) fit in the budget. It is checked per run, after the
//! verdict of its class: runs of a class share their shape but not their
//! bounds, so the class (and with it the cost of a cycle, classes plus
//! admissions) stays as it is, and each run is admitted on its own bound. A run its budget stops waits like any
//! other: its class waits behind it for the rest of the cycle (FIFO within a
//! class), and the class's reason gives that run's numbers.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::ids::{RunId, WorkerId};
use crate::money::Money;
use crate::pool::{PoolSpec, PoolState, Price, Provider};
use crate::queue::{Class, ClassId, Level, QueuedRun, RunQueue};
use crate::request::GroupRequest;
use crate::resources::{Dimension, Resources};
use crate::selector::{PlacementPolicy, PoolSelector};
use crate::tenant::{Quota, TenantSpec};
use crate::usage::Amount;

mod budget;
mod memo;
mod reason;
pub use budget::BudgetView;
pub use memo::{Controller, CycleStats};
pub use reason::{Blocker, Limit, Reason, ReasonCode};

use budget::check_budget;
use memo::{Keys, Memo, Probe, Verdict};

/// A live agent of a static pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub id: WorkerId,
    pub capacity: Resources,
    pub used: Resources,
}

/// A pool as the controller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub name: String,
    pub state: PoolState,
    pub labels: BTreeMap<String, String>,
    pub price: Price,
    /// For a static pool, the sum of its live agents'.
    pub capacity: Resources,
    pub max_workers: u32,
    /// Sum of the open allocations on the pool.
    pub used: Resources,
    /// Open allocations on the pool; each is served by one worker.
    pub workers: u32,
    /// A static pool's live agents: a group must fit on one of them.
    pub agents: Option<Vec<AgentView>>,
    /// Its capacity comes and goes (a static pool's agents, the nodes of a
    /// `capacity: auto` pool): a group larger than it now may fit later, so
    /// it is waited for, never rejected.
    pub elastic: bool,
    /// Held for a starving run during this cycle.
    pub reserved: Option<(RunId, Resources)>,
}

impl PoolView {
    pub fn new(spec: &PoolSpec, agents: Vec<AgentView>) -> PoolView {
        let (capacity, agents) = match spec.provider {
            Provider::Static => (
                agents
                    .iter()
                    .fold(Resources::ZERO, |acc, a| acc.saturating_add(&a.capacity)),
                Some(agents),
            ),
            _ => (spec.capacity(), None),
        };
        PoolView {
            elastic: spec.provider == Provider::Static || spec.auto_capacity(),
            name: spec.name.clone(),
            state: spec.state,
            labels: spec.labels.clone(),
            price: spec.price,
            capacity,
            max_workers: spec.max_workers,
            used: Resources::ZERO,
            workers: 0,
            agents,
            reserved: None,
        }
    }
}

/// What a tenant holds in one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub resources: Resources,
    pub runs: u64,
}

/// A tenant as the controller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantView {
    pub name: String,
    pub weight: u32,
    pub quota: Quota,
    pub allowed_pools: Option<Vec<String>>,
    pub pool_limits: BTreeMap<String, Quota>,
    /// Sum of the tenant's open allocations across all pools.
    pub used: Resources,
    /// Runs holding allocations.
    pub runs: u64,
    /// What it holds, per pool.
    pub held: BTreeMap<String, Held>,
    /// Decayed recent usage, as a resource amount (see `usage.rs`).
    pub recent: Amount,
    /// Held for a starving run of the tenant during this cycle.
    pub reserved: Option<(RunId, Resources)>,
    /// Its budget for the month of the cycle, if it has one.
    pub budget: Option<BudgetView>,
}

impl TenantView {
    pub fn new(spec: &TenantSpec, recent: Amount) -> TenantView {
        TenantView {
            name: spec.name.clone(),
            weight: spec.weight,
            quota: spec.quota(),
            allowed_pools: spec.allowed_pools.clone(),
            pool_limits: spec.pool_limits(),
            used: Resources::ZERO,
            runs: 0,
            held: BTreeMap::new(),
            recent,
            reserved: None,
            budget: None,
        }
    }

    fn allows(&self, pool: &str) -> bool {
        self.allowed_pools
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| x == pool))
    }
}

/// An open allocation, as far as the snapshot needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAllocation {
    pub run: RunId,
    pub tenant: String,
    pub pool: String,
    pub resources: Resources,
    pub worker: Option<WorkerId>,
}

/// What the controller decides from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub pools: BTreeMap<String, PoolView>,
    pub tenants: BTreeMap<String, TenantView>,
}

impl Snapshot {
    /// Adds open allocations to what pools, agents and tenants use.
    pub fn charge(&mut self, open: &[OpenAllocation]) {
        let mut runs: BTreeSet<(&str, RunId)> = BTreeSet::new();
        let mut pool_runs: BTreeSet<(&str, &str, RunId)> = BTreeSet::new();
        for a in open {
            self.charge_pool(&a.pool, &a.resources, a.worker);
            if let Some(tenant) = self.tenants.get_mut(&a.tenant) {
                tenant.used = tenant.used.saturating_add(&a.resources);
                let held = tenant.held.entry(a.pool.clone()).or_default();
                held.resources = held.resources.saturating_add(&a.resources);
                if pool_runs.insert((&a.tenant, &a.pool, a.run)) {
                    held.runs += 1;
                }
                if runs.insert((&a.tenant, a.run)) {
                    tenant.runs += 1;
                }
            }
        }
    }

    /// The sum of every pool's capacity: the denominator of shares.
    pub fn total_capacity(&self) -> Resources {
        self.pools
            .values()
            .fold(Resources::ZERO, |acc, p| acc.saturating_add(&p.capacity))
    }

    /// A tenant's dominant share divided by its weight.
    pub fn weighted_share(&self, tenant: &TenantView, total: &Resources) -> f64 {
        let dominant = Dimension::ALL
            .iter()
            .enumerate()
            .filter(|(_, d)| total.get(**d) > 0)
            .map(|(i, d)| (tenant.used.get(*d) as f64 + tenant.recent[i]) / total.get(*d) as f64)
            .fold(0.0, f64::max);
        dominant / f64::from(tenant.weight.max(1))
    }

    /// One more worker on `pool` using `resources` (on static agent `worker`).
    fn charge_pool(&mut self, pool: &str, resources: &Resources, worker: Option<WorkerId>) {
        let Some(pool) = self.pools.get_mut(pool) else {
            return;
        };
        pool.used = pool.used.saturating_add(resources);
        pool.workers = pool.workers.saturating_add(1);
        if let (Some(agents), Some(w)) = (pool.agents.as_mut(), worker)
            && let Some(agent) = agents.iter_mut().find(|x| x.id == w)
        {
            agent.used = agent.used.saturating_add(resources);
        }
    }

    fn admit(
        &mut self,
        run: RunId,
        tenant: &str,
        readmit: bool,
        bound: Money,
        placements: &[Placement],
    ) {
        for p in placements {
            self.charge_pool(&p.pool, &p.resources, p.worker);
        }
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        let mut pools_of_run: BTreeSet<&str> = BTreeSet::new();
        for p in placements {
            t.used = t.used.saturating_add(&p.resources);
            let held = match t.held.get_mut(&p.pool) {
                Some(held) => held,
                None => t.held.entry(p.pool.clone()).or_default(),
            };
            held.resources = held.resources.saturating_add(&p.resources);
            if pools_of_run.insert(&p.pool) && !readmit {
                held.runs += 1;
            }
        }
        if !readmit {
            t.runs += 1;
            if let Some(budget) = t.budget.as_mut() {
                budget.running = budget.running.saturating_add(bound);
            }
        }
        if t.reserved.is_some_and(|(r, _)| r == run) {
            t.reserved = None;
        }
    }
}

/// Settings of the controller that are not part of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Used for groups whose selector does not set one.
    pub placement: PlacementPolicy,
    /// After this wait, a run gets a reservation.
    pub starvation_after_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            placement: PlacementPolicy::Binpack,
            starvation_after_ms: 5 * 60 * 1000,
        }
    }
}

/// One group's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub group: u32,
    pub pool: String,
    pub resources: Resources,
    /// The static agent that serves it.
    pub worker: Option<WorkerId>,
}

/// An admitted run and where its groups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub run: RunId,
    pub placements: Vec<Placement>,
}

/// Room held for a run that has waited too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub run: RunId,
    /// Pools holding room for it; empty when it holds its tenant's quota.
    pub pools: Vec<String>,
}

/// The decisions of one cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// In admission order.
    pub admitted: Vec<Admission>,
    pub rejected: Vec<(RunId, Reason)>,
    /// Why the runs of each class still queued wait. The runs of a class wait
    /// behind its oldest one; a budget's numbers are that run's (its bound).
    /// Shared, so that a verdict the incremental controller reuses is not copied.
    pub waiting: BTreeMap<ClassId, Arc<Reason>>,
    pub reservations: Vec<Reservation>,
}

/// Fair-share order key: lower goes first. Shares are finite and non-negative.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Decides which queued runs are admitted (and where), rejected, or left
/// waiting with a reason. Deterministic: same input, same output. A
/// [`Controller`] kept across cycles decides the same, evaluating only what
/// changed.
pub fn decide(snapshot: &Snapshot, queue: &RunQueue, now: Timestamp, policy: &Policy) -> Outcome {
    walk(snapshot, queue, now, policy, None)
}

/// The one walk of a cycle, with the verdicts of earlier cycles in `memo` (the
/// incremental controller) or none (the full decision).
fn walk(
    snapshot: &Snapshot,
    queue: &RunQueue,
    now: Timestamp,
    policy: &Policy,
    memo: Option<&mut Memo>,
) -> Outcome {
    let work = snapshot.clone();
    let keys = memo.map(|memo| Keys::new(memo, &work, policy));
    let mut cycle = Cycle {
        work,
        total: snapshot.total_capacity(),
        queue,
        now,
        policy,
        outcome: Outcome::default(),
        classes: FastMap::default(),
        masks: Masks::default(),
        empty: None,
        reasons: ReasonCache::default(),
        keys,
    };
    for (level, tenants) in queue.levels() {
        cycle.level(level, tenants);
    }
    if let Some(keys) = cycle.keys {
        keys.finish();
    }
    cycle.outcome
}

struct Cycle<'a, 'm> {
    work: Snapshot,
    total: Resources,
    queue: &'a RunQueue,
    now: Timestamp,
    policy: &'a Policy,
    outcome: Outcome,
    /// Per class tried: what does not change within the cycle.
    classes: FastMap<ClassId, ClassFacts>,
    masks: Masks,
    /// The pools emptied, to check that gangs fit them (see [`empty_pools`]).
    empty: Option<Snapshot>,
    reasons: ReasonCache,
    /// The verdicts of earlier cycles, for the incremental controller.
    keys: Option<Keys<'m>>,
}

/// A queued run, ordered by when it was enqueued.
type Queued = (Timestamp, RunId);

/// What a cycle learns of a class the first time it tries one of its runs.
struct ClassFacts {
    /// Can it ever fit?
    fits: Result<(), Reason>,
    matching: Matching,
}

impl<'a> Cycle<'a, '_> {
    fn level(&mut self, _level: Level, tenants: &'a BTreeMap<String, BTreeSet<ClassId>>) {
        let queue: &'a RunQueue = self.queue;
        // Per class: its runs not yet admitted this cycle, oldest first.
        let mut cursors: BTreeMap<
            ClassId,
            std::collections::btree_set::Iter<'a, (Timestamp, RunId)>,
        > = BTreeMap::new();
        let mut heads: BTreeMap<ClassId, Queued> = BTreeMap::new();
        for classes in tenants.values() {
            for &id in classes {
                let Some(class) = queue.class(id) else {
                    continue;
                };
                let mut iter = class.runs.iter();
                if let Some(&head) = iter.next() {
                    heads.insert(id, head);
                    cursors.insert(id, iter);
                }
            }
        }
        // Fair share across tenants, FIFO within each. A run that has waited
        // too long and must still wait reserves the room it waits for.
        let starve_before = self.now.0.saturating_sub(self.policy.starvation_after_ms);
        let mut per_tenant: BTreeMap<&'a str, BTreeSet<(Queued, ClassId)>> = BTreeMap::new();
        for (&class_id, &head) in &heads {
            if let Some(class) = queue.class(class_id) {
                per_tenant
                    .entry(class.tenant.as_str())
                    .or_default()
                    .insert((head, class_id));
            }
        }
        let mut turn: BinaryHeap<std::cmp::Reverse<(Share, &'a str)>> = per_tenant
            .keys()
            .map(|&t| std::cmp::Reverse((self.share(t), t)))
            .collect();
        while let Some(std::cmp::Reverse((_, tenant))) = turn.pop() {
            let Some(candidates) = per_tenant.get_mut(tenant) else {
                continue;
            };
            let Some(((at, run), class_id)) = candidates.pop_first() else {
                continue;
            };
            let Some(class) = queue.class(class_id) else {
                continue;
            };
            if self.try_run(class, run, at.0 <= starve_before)
                && let Some(&next) = cursors.get_mut(&class_id).and_then(Iterator::next)
            {
                candidates.insert((next, class_id));
            }
            if !candidates.is_empty() {
                turn.push(std::cmp::Reverse((self.share(tenant), tenant)));
            }
        }
    }

    fn share(&self, tenant: &str) -> Share {
        Share(
            self.work
                .tenants
                .get(tenant)
                .map_or(0.0, |t| self.work.weighted_share(t, &self.total)),
        )
    }

    /// Decides one run, the oldest of its class still queued. Returns whether
    /// it was admitted; if not, the class has its verdict (wait or reject).
    fn try_run(&mut self, class: &Class, run: RunId, starving: bool) -> bool {
        let Some(tenant) = self.work.tenants.get(&class.tenant) else {
            let reason = Reason::simple(
                ReasonCode::UnknownTenant,
                format!("tenant {} does not exist", class.tenant),
            );
            self.reject_class(class, &reason);
            return false;
        };
        // The budget per run, with its own bound (see the module's header).
        let bound = if tenant.budget.is_some() {
            self.queue.bound(run)
        } else {
            Money::ZERO
        };
        // A verdict remembered under the same inputs is the verdict.
        let mut probe: Option<Probe> = None;
        let remembered = match self.keys.as_mut() {
            Some(keys) => match keys.lookup(tenant, class, run, bound) {
                Ok(verdict) => Some(verdict),
                Err(p) => {
                    probe = Some(p);
                    None
                }
            },
            None => None,
        };
        let verdict = match remembered {
            Some(verdict) => Err(verdict),
            None => {
                let facts = self.classes.entry(class.id).or_insert_with(|| {
                    let matching = self.masks.matching(&self.work, tenant, &class.groups);
                    // Readmissions too: their pool may have gone or shrunk meanwhile.
                    ClassFacts {
                        fits: ever_fits(
                            &self.work,
                            tenant,
                            &class.groups,
                            &matching,
                            &mut self.empty,
                        ),
                        matching,
                    }
                });
                let verdict = match &facts.fits {
                    Err(reason) => Err(Verdict::Reject(Arc::new(reason.clone()))),
                    Ok(()) => evaluate(
                        &self.work,
                        tenant,
                        class,
                        &facts.matching,
                        self.policy.placement,
                        run,
                        bound,
                        &mut self.reasons,
                    )
                    .map_err(Verdict::Wait),
                };
                if let (Err(v), Some(keys), Some(probe)) = (&verdict, self.keys.as_mut(), probe) {
                    keys.store(class.id, probe, &facts.matching, v.clone());
                }
                verdict
            }
        };
        match verdict {
            Ok(placements) => {
                self.work
                    .admit(run, &class.tenant, class.readmit, bound, &placements);
                if let Some(keys) = self.keys.as_mut() {
                    for p in &placements {
                        keys.pool_changed(&self.work, &p.pool);
                    }
                    keys.tenant_changed(&class.tenant);
                }
                self.outcome.admitted.push(Admission { run, placements });
                true
            }
            Err(Verdict::Reject(reason)) => {
                self.reject_class(class, &reason);
                false
            }
            Err(Verdict::Wait(mut reason)) => {
                // Always decided afresh: the reservation depends on the time,
                // and on what earlier starving runs of the cycle hold.
                if starving && reason.code != ReasonCode::Reserved {
                    let waited = self
                        .now
                        .millis_since(self.queue.enqueued_at(run).unwrap_or(self.now));
                    if let Some(reservation) = self.reserve(class, run, &reason) {
                        if let Some(keys) = self.keys.as_mut() {
                            for pool in &reservation.pools {
                                keys.pool_changed(&self.work, pool);
                            }
                            keys.tenant_changed(&class.tenant);
                        }
                        let reason = Arc::make_mut(&mut reason);
                        reason.message = format!(
                            "{}; it has waited {}, so {} room is held for it",
                            reason.message,
                            format_wait(waited),
                            if reservation.pools.is_empty() {
                                format!("tenant {}'s", class.tenant)
                            } else {
                                format!("pool {}", reservation.pools.join(", "))
                            }
                        );
                        self.outcome.reservations.push(reservation);
                    }
                }
                self.outcome.waiting.insert(class.id, reason);
                false
            }
        }
    }

    fn reject_class(&mut self, class: &Class, reason: &Reason) {
        for (_, run) in &class.runs {
            self.outcome.rejected.push((*run, reason.clone()));
        }
    }

    /// Holds room for a starving run: in its tenant's quota when that blocks
    /// it, else in one pool per group (the one with most room, not already held).
    fn reserve(&mut self, class: &Class, run: RunId, reason: &Reason) -> Option<Reservation> {
        let total = class.total();
        if matches!(
            reason.code,
            ReasonCode::TenantQuota | ReasonCode::TenantRuns
        ) {
            let tenant = self.work.tenants.get_mut(&class.tenant)?;
            if tenant.reserved.is_some() {
                return None;
            }
            tenant.reserved = Some((run, total));
            return Some(Reservation {
                run,
                pools: Vec::new(),
            });
        }
        if !matches!(
            reason.code,
            ReasonCode::PoolFull
                | ReasonCode::PoolMaxWorkers
                | ReasonCode::GangPartnerFull
                | ReasonCode::NoAgents
                | ReasonCode::PoolLimit
        ) {
            return None;
        }
        let tenant = self.work.tenants.get(&class.tenant)?;
        let mut chosen: Vec<(String, Resources)> = Vec::new();
        for g in &class.groups {
            let pool = self
                .work
                .pools
                .values()
                .filter(|p| {
                    p.state == PoolState::Active
                        && p.reserved.is_none()
                        && !chosen.iter().any(|(c, _)| c == &p.name)
                        && g.selector.matches(&p.name, &p.labels)
                        && tenant.allows(&p.name)
                        && g.resources.fits_in(&p.capacity)
                })
                .min_by_key(|p| {
                    (
                        std::cmp::Reverse(fullness(
                            &p.capacity,
                            &p.capacity.saturating_sub(&p.used),
                        )),
                        p.name.clone(),
                    )
                })?;
            chosen.push((pool.name.clone(), g.resources));
        }
        for (name, need) in &chosen {
            if let Some(p) = self.work.pools.get_mut(name) {
                p.reserved = Some((run, *need));
            }
        }
        Some(Reservation {
            run,
            pools: chosen.into_iter().map(|(n, _)| n).collect(),
        })
    }
}

fn format_wait(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// The verdict of a class that can fit, for `run`: its placements, or why it
/// waits. Every limit in the way is named: the tenant's first, then the pools'.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of the cycle a verdict reads, borrowed apart from the cycle's memo"
)]
fn evaluate(
    work: &Snapshot,
    tenant: &TenantView,
    class: &Class,
    matching: &Matching,
    policy: PlacementPolicy,
    run: RunId,
    bound: Money,
    reasons: &mut ReasonCache,
) -> Result<Vec<Placement>, Arc<Reason>> {
    let placed = place(
        work,
        tenant,
        &class.groups,
        matching,
        policy,
        Some(run),
        Some(reasons),
    );
    // A readmission's run was admitted on its bound already: money does not
    // hold back a run that is under way.
    let budget = if class.readmit {
        Ok(())
    } else {
        check_budget(tenant, bound)
    };
    let tenant_limits = match (budget, check_tenant(tenant, class, run)) {
        (Ok(()), quota) => quota,
        (Err(budget), Ok(())) => Err(budget),
        (Err(budget), Err(quota)) => Err(budget.and(&quota)),
    };
    match (tenant_limits, placed) {
        (Ok(()), placed) => placed,
        (Err(tenant), Ok(_)) => Err(Arc::new(tenant)),
        (Err(tenant), Err(pools)) => Err(Arc::new(tenant.and(&pools))),
    }
}

fn total(groups: &[GroupRequest]) -> Resources {
    groups
        .iter()
        .fold(Resources::ZERO, |acc, g| acc.saturating_add(&g.resources))
}

/// The tenant's quota summed across pools, and room it holds for another run.
fn check_tenant(tenant: &TenantView, class: &Class, run: RunId) -> Result<(), Reason> {
    let need = class.total();
    if !class.readmit && tenant.runs >= tenant.quota.runs {
        return Err(Reason::limit(
            ReasonCode::TenantRuns,
            format!("tenant {}", tenant.name),
            Limit::runs(tenant.runs, tenant.quota.runs),
        ));
    }
    if let Some(limits) = Limit::shortfall(&tenant.used, &tenant.quota.resources, &need) {
        return Err(Reason::limits(
            ReasonCode::TenantQuota,
            format!("tenant {}", tenant.name),
            limits,
        ));
    }
    if let Some((holder, held)) = tenant.reserved
        && holder != run
    {
        let with_hold = tenant.used.saturating_add(&held);
        if Limit::shortfall(&with_hold, &tenant.quota.resources, &need).is_some()
            || (!class.readmit && tenant.runs.saturating_add(1) >= tenant.quota.runs)
        {
            return Err(Reason::simple(
                ReasonCode::Reserved,
                format!(
                    "tenant {}: the room left in its quota ({} of {}) is held for its run {holder}, which has waited longest",
                    tenant.name,
                    tenant.quota.resources.saturating_sub(&tenant.used),
                    held
                ),
            ));
        }
    }
    Ok(())
}

/// Can the run be admitted at all, were everything free? Used at submit and on
/// every cycle (pools and quotas may have shrunk since). Static pools may grow
/// as agents join, so they never make a run impossible.
pub fn check_ever_fits(
    work: &Snapshot,
    tenant: &TenantView,
    groups: &[GroupRequest],
) -> Result<(), Reason> {
    let matching = Masks::default().matching(work, tenant, groups);
    ever_fits(work, tenant, groups, &matching, &mut None)
}

/// Per group, per pool in the order of `Snapshot::pools`: `None` when the
/// group's selector does not match the pool, else whether the tenant may use it.
/// Pools, selectors and tenants' allowed pools stay as they are for a cycle.
type Matching = Vec<Vec<Option<bool>>>;

/// Per pool in the order of `Snapshot::pools`, for the selectors and the lists
/// of allowed pools seen so far in a cycle: does the selector match the pool,
/// does the list allow it?
#[derive(Default)]
struct Masks {
    selectors: FastMap<PoolSelector, Vec<bool>>,
    allowed: FastMap<Vec<String>, Vec<bool>>,
}

impl Masks {
    fn matching(
        &mut self,
        work: &Snapshot,
        tenant: &TenantView,
        groups: &[GroupRequest],
    ) -> Matching {
        let allowed = match &tenant.allowed_pools {
            None => None,
            Some(list) => {
                if !self.allowed.contains_key(list) {
                    let mask = work.pools.keys().map(|p| tenant.allows(p)).collect();
                    self.allowed.insert(list.clone(), mask);
                }
                self.allowed.get(list)
            }
        };
        groups
            .iter()
            .map(|g| {
                if !self.selectors.contains_key(&g.selector) {
                    let mask = work
                        .pools
                        .values()
                        .map(|p| g.selector.matches(&p.name, &p.labels))
                        .collect();
                    self.selectors.insert(g.selector.clone(), mask);
                }
                let selected = self
                    .selectors
                    .get(&g.selector)
                    .map_or(&[][..], Vec::as_slice);
                selected
                    .iter()
                    .enumerate()
                    .map(|(i, &m)| {
                        m.then(|| allowed.is_none_or(|a| a.get(i).copied().unwrap_or(false)))
                    })
                    .collect()
            })
            .collect()
    }
}

/// The pools of `work` that group `g` of `tenant` selects, with their positions
/// and whether the tenant may use them; `row` is the group's row of
/// [`Masks::matching`] of the same pools.
fn candidates<'a>(
    work: &'a Snapshot,
    tenant: &'a TenantView,
    g: &'a GroupRequest,
    row: Option<&'a Vec<Option<bool>>>,
) -> impl Iterator<Item = (usize, &'a PoolView, bool)> + Clone {
    work.pools.values().enumerate().filter_map(move |(i, p)| {
        let allowed = match row.and_then(|r| r.get(i)) {
            Some(&m) => m,
            None => g
                .selector
                .matches(&p.name, &p.labels)
                .then(|| tenant.allows(&p.name)),
        };
        allowed.map(|a| (i, p, a))
    })
}

/// `work`'s pools as [`check_ever_fits`] sees them: empty, active, and static
/// ones as large as agents may make them. Only pools: placing reads no tenant.
fn empty_pools(work: &Snapshot) -> Snapshot {
    let mut empty = Snapshot {
        pools: work.pools.clone(),
        tenants: BTreeMap::new(),
    };
    for p in empty.pools.values_mut() {
        p.used = Resources::ZERO;
        p.workers = 0;
        p.state = PoolState::Active;
        p.reserved = None;
        if let Some(agents) = p.agents.as_mut() {
            // Agents may join: only the written capacities are checked.
            agents.clear();
            p.capacity = Resources::new(u64::MAX, u64::MAX, u64::MAX);
        }
    }
    empty
}

/// [`check_ever_fits`]; `empty` keeps [`empty_pools`] of `work` from one call
/// to the next, as a cycle changes nothing of the pools it keeps.
fn ever_fits(
    work: &Snapshot,
    tenant: &TenantView,
    groups: &[GroupRequest],
    matching: &[Vec<Option<bool>>],
    empty: &mut Option<Snapshot>,
) -> Result<(), Reason> {
    let need = total(groups);
    let over: Vec<String> = need
        .exceeding(&tenant.quota.resources)
        .into_iter()
        .map(|d| {
            format!(
                "{} {} (quota {})",
                d.name(),
                d.format(need.get(d)),
                d.format(tenant.quota.resources.get(d))
            )
        })
        .collect();
    if !over.is_empty() {
        return Err(Reason::simple(
            ReasonCode::LargerThanQuota,
            format!(
                "larger than tenant {}'s quota: needs {}",
                tenant.name,
                over.join(", ")
            ),
        ));
    }
    if tenant.quota.runs == 0 {
        return Err(Reason::simple(
            ReasonCode::LargerThanQuota,
            format!("tenant {} has a quota of 0 runs", tenant.name),
        ));
    }
    for (index, g) in groups.iter().enumerate() {
        // Iterated rather than collected: most classes pass every check.
        let selected = candidates(work, tenant, g, matching.get(index));
        if selected.clone().next().is_none() {
            return Err(Reason::simple(
                ReasonCode::NoMatchingPool,
                format!("group {}: there is no {}", g.index, g.selector),
            ));
        }
        let allowed = selected
            .clone()
            .filter(|(_, _, allowed)| *allowed)
            .map(|(_, p, _)| p);
        if allowed.clone().next().is_none() {
            let names: Vec<&str> = selected.map(|(_, p, _)| p.name.as_str()).collect();
            return Err(Reason::simple(
                ReasonCode::PoolNotAllowed,
                format!(
                    "group {}: tenant {} is not allowed to use pool {} (allowed pools: {})",
                    g.index,
                    tenant.name,
                    names.join(", "),
                    tenant
                        .allowed_pools
                        .as_deref()
                        .unwrap_or_default()
                        .join(", ")
                ),
            ));
        }
        let within = |p: &PoolView| {
            let limit = tenant
                .pool_limits
                .get(&p.name)
                .map_or(Quota::UNLIMITED, |q| *q);
            g.resources.fits_in(&limit.resources) && limit.runs > 0
        };
        if !allowed
            .clone()
            .any(|p| (p.elastic || g.resources.fits_in(&p.capacity)) && within(p))
        {
            let largest = allowed
                .map(|p| match tenant.pool_limits.get(&p.name) {
                    Some(l) if !g.resources.fits_in(&l.resources) || l.runs == 0 => {
                        format!("{} (tenant limit {})", p.name, l.resources)
                    }
                    _ => format!("{} ({})", p.name, p.capacity),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Reason::simple(
                ReasonCode::LargerThanPools,
                format!(
                    "group {} needs {}, more than every pool it may use allows: {largest}",
                    g.index, g.resources
                ),
            ));
        }
    }
    // Groups that share a pool add up: the gang must fit its pools when empty.
    if groups.len() > 1 {
        let empty = empty.get_or_insert_with(|| empty_pools(work));
        // The tenant holding nothing (not cloned whole: what it holds is large).
        let t = TenantView {
            name: tenant.name.clone(),
            weight: tenant.weight,
            quota: tenant.quota,
            allowed_pools: tenant.allowed_pools.clone(),
            pool_limits: tenant.pool_limits.clone(),
            used: tenant.used,
            runs: 0,
            held: BTreeMap::new(),
            recent: tenant.recent,
            reserved: None,
            budget: None,
        };
        // `empty` has the pools of `work`, in the same order: `matching` holds.
        if let Err(reason) = place(
            empty,
            &t,
            groups,
            matching,
            PlacementPolicy::Binpack,
            None,
            None,
        ) {
            return Err(Reason::simple(
                ReasonCode::LargerThanPools,
                format!(
                    "the groups together never fit, even in empty pools: {}",
                    reason.message
                ),
            ));
        }
    }
    Ok(())
}

/// What stops a pool from taking a group now. Finding it allocates nothing:
/// most pools a cycle looks at take the group or are passed over, and only when
/// no pool takes it does [`Block::reason`] put the blocks in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Block {
    NotAllowed,
    Draining,
    Disabled,
    PoolLimitRuns {
        runs: u64,
        limit: u64,
    },
    PoolLimit {
        used: Resources,
        limit: Resources,
    },
    NoAgents,
    MaxWorkers {
        workers: u32,
    },
    Full {
        used: Resources,
    },
    Reserved {
        holder: RunId,
        held: Resources,
        used: Resources,
    },
    /// A static pool none of whose agents has room.
    NoAgentRoom,
}

/// Does `used + need` go over `limit` in a dimension the run needs? As
/// [`Limit::shortfall`], without building the limits.
fn short(used: &Resources, limit: &Resources, need: &Resources) -> bool {
    Dimension::ALL
        .into_iter()
        .any(|d| need.get(d) > 0 && used.get(d).saturating_add(need.get(d)) > limit.get(d))
}

/// What stops `pool` from taking `need` for `tenant` now, if anything.
/// `allowed`: the tenant may use the pool. `extra` is what earlier groups of the
/// same run take in it; `run` is the run being placed (room held for it is its
/// own).
fn pool_blocker(
    pool: &PoolView,
    allowed: bool,
    tenant: &TenantView,
    need: &Resources,
    extra: (Resources, u32),
    run: Option<RunId>,
) -> Option<Block> {
    if !allowed {
        return Some(Block::NotAllowed);
    }
    match pool.state {
        PoolState::Active => {}
        PoolState::Draining => return Some(Block::Draining),
        PoolState::Disabled => return Some(Block::Disabled),
    }
    if let Some(limit) = tenant.pool_limits.get(&pool.name) {
        let held = tenant.held.get(&pool.name).copied().unwrap_or_default();
        let runs = held.runs.saturating_add(u64::from(extra.1 > 0));
        if extra.1 == 0 && runs >= limit.runs {
            return Some(Block::PoolLimitRuns {
                runs,
                limit: limit.runs,
            });
        }
        let used = held.resources.saturating_add(&extra.0);
        if short(&used, &limit.resources, need) {
            return Some(Block::PoolLimit {
                used,
                limit: limit.resources,
            });
        }
    }
    if pool.agents.as_ref().is_some_and(|a| a.is_empty()) {
        return Some(Block::NoAgents);
    }
    let workers = pool.workers.saturating_add(extra.1);
    if workers >= pool.max_workers {
        return Some(Block::MaxWorkers { workers });
    }
    let used = pool.used.saturating_add(&extra.0);
    if short(&used, &pool.capacity, need) {
        return Some(Block::Full { used });
    }
    if let Some((holder, held)) = pool.reserved
        && Some(holder) != run
        && short(&used.saturating_add(&held), &pool.capacity, need)
    {
        return Some(Block::Reserved { holder, held, used });
    }
    None
}

/// Reasons built once in a cycle and shared by the classes that get them.
#[derive(Default)]
struct ReasonCache {
    /// Reasons of blocked pools, by position of the pool in the snapshot, block
    /// and need: the many classes that find the same pools full share them.
    pools: FastMap<(usize, Block, Resources), Rc<Reason>>,
    /// The reason of a group that no pool takes, with no group of its gang
    /// placed before it, by need, the group's index and selector when it has
    /// partners, and the blocks of its pools (positions and blocks, all of the
    /// pool's alone): the classes that differ only in what the reason does not
    /// read (tenant, level) share it, so re-evaluating one that still waits
    /// copies a pointer.
    groups: FastMap<GroupBlocks, Arc<Reason>>,
}

/// A group's need, its index and selector in a gang, and for each pool in its
/// way, the pool's position and block.
type GroupBlocks = (Resources, Option<(u32, PoolSelector)>, Vec<(usize, Block)>);

impl Block {
    /// Does its reason follow from the pool's position, the block and the need
    /// alone (given pools whose names, capacities and limits stay as they are)?
    fn of_pool_only(self) -> bool {
        match self {
            Block::Draining
            | Block::Disabled
            | Block::NoAgents
            | Block::MaxWorkers { .. }
            | Block::Full { .. }
            | Block::Reserved { .. } => true,
            // The tenant's name and pools, or the agents' use, are in the reason.
            Block::NotAllowed
            | Block::PoolLimitRuns { .. }
            | Block::PoolLimit { .. }
            | Block::NoAgentRoom => false,
        }
    }

    /// The block of `pool` for a group that needs `need`, in words.
    fn reason(self, pool: &PoolView, tenant: &TenantView, need: &Resources) -> Reason {
        let scope = format!("pool {}", pool.name);
        let tenant_in_pool = || format!("tenant {} in pool {}", tenant.name, pool.name);
        match self {
            Block::NotAllowed => Reason::simple(
                ReasonCode::PoolNotAllowed,
                format!(
                    "{scope}: tenant {} is not allowed to use it (allowed pools: {})",
                    tenant.name,
                    tenant
                        .allowed_pools
                        .as_deref()
                        .unwrap_or_default()
                        .join(", ")
                ),
            ),
            Block::Draining => Reason::simple(
                ReasonCode::PoolDraining,
                format!("{scope} is draining: it admits nothing new"),
            ),
            Block::Disabled => {
                Reason::simple(ReasonCode::PoolDisabled, format!("{scope} is disabled"))
            }
            Block::PoolLimitRuns { runs, limit } => Reason::limit(
                ReasonCode::PoolLimit,
                tenant_in_pool(),
                Limit::runs(runs, limit),
            ),
            Block::PoolLimit { used, limit } => Reason::limits(
                ReasonCode::PoolLimit,
                tenant_in_pool(),
                Limit::shortfall(&used, &limit, need).unwrap_or_default(),
            ),
            Block::NoAgents => {
                Reason::simple(ReasonCode::NoAgents, format!("{scope} has no live agent"))
            }
            Block::MaxWorkers { workers } => Reason::limit(
                ReasonCode::PoolMaxWorkers,
                scope,
                Limit::workers(u64::from(workers), u64::from(pool.max_workers)),
            ),
            Block::Full { used } => Reason::limits(
                ReasonCode::PoolFull,
                scope,
                Limit::shortfall(&used, &pool.capacity, need).unwrap_or_default(),
            ),
            Block::Reserved { holder, held, used } => Reason::simple(
                ReasonCode::Reserved,
                format!(
                    "{scope}: its free room ({}) is held for run {holder}, which has waited longest and needs {held}",
                    pool.capacity.saturating_sub(&used)
                ),
            ),
            Block::NoAgentRoom => {
                let largest = pool
                    .agents
                    .iter()
                    .flatten()
                    .map(|a| a.capacity.saturating_sub(&a.used))
                    .max()
                    .unwrap_or(Resources::ZERO);
                Reason::simple(
                    ReasonCode::NoAgents,
                    format!(
                        "pool {}: no live agent has {need} free (the most free on one agent: {largest})",
                        pool.name
                    ),
                )
            }
        }
    }
}

/// What `agent` uses, with what earlier groups of the run take on it, if it has
/// room for `need` besides.
fn agent_room(
    agent: &AgentView,
    need: &Resources,
    taken: &BTreeMap<WorkerId, Resources>,
) -> Option<Resources> {
    let used = agent
        .used
        .saturating_add(taken.get(&agent.id).unwrap_or(&Resources::ZERO));
    need.fits_in(&agent.capacity.saturating_sub(&used))
        .then_some(used)
}

/// The agent of a static pool that takes `need`, by policy; `None` exactly when
/// no agent has room.
fn pick_agent(
    agents: &[AgentView],
    need: &Resources,
    taken: &BTreeMap<WorkerId, Resources>,
    policy: PlacementPolicy,
) -> Option<WorkerId> {
    let candidates = agents.iter().filter_map(|a| {
        agent_room(a, need, taken)
            .map(|used| (fullness(&a.capacity, &used.saturating_add(need)), a.id))
    });
    match policy {
        PlacementPolicy::Spread => candidates.min(),
        PlacementPolicy::Binpack | PlacementPolicy::Cheapest => {
            candidates.max_by_key(|(f, id)| (*f, std::cmp::Reverse(*id)))
        }
    }
    .map(|(_, id)| id)
}

/// Places every group of a gang (all or none) by policy, or explains which group
/// cannot be placed and why, pool by pool. Groups placed on one pool add up.
/// `matching` is [`Masks::matching`] of `work`'s pools and `groups`; `reasons`
/// keeps the reasons of blocked pools across calls on the same `work`.
fn place(
    work: &Snapshot,
    tenant: &TenantView,
    groups: &[GroupRequest],
    matching: &[Vec<Option<bool>>],
    default_policy: PlacementPolicy,
    run: Option<RunId>,
    mut reasons: Option<&mut ReasonCache>,
) -> Result<Vec<Placement>, Arc<Reason>> {
    let mut extra: BTreeMap<&str, (Resources, u32)> = BTreeMap::new();
    let mut taken: BTreeMap<WorkerId, Resources> = BTreeMap::new();
    let mut placements = Vec::with_capacity(groups.len());
    for (index, g) in groups.iter().enumerate() {
        let policy = g.selector.placement.unwrap_or(default_policy);
        // How well the pool takes the group (higher is better), or what blocks
        // it. The agent of a static pool is picked once the pool is chosen: the
        // pool's score does not depend on it.
        let judge = |pool: &PoolView, allowed: bool| -> Result<(i64, u128), Block> {
            let more = extra.get(pool.name.as_str()).copied().unwrap_or_default();
            if let Some(block) = pool_blocker(pool, allowed, tenant, &g.resources, more, run) {
                return Err(block);
            }
            if let Some(agents) = &pool.agents
                && !agents
                    .iter()
                    .any(|a| agent_room(a, &g.resources, &taken).is_some())
            {
                return Err(Block::NoAgentRoom);
            }
            let after = pool
                .used
                .saturating_add(&more.0)
                .saturating_add(&g.resources);
            let full = fullness(&pool.capacity, &after);
            let score = match policy {
                PlacementPolicy::Binpack => (0, full),
                PlacementPolicy::Spread => (0, u128::MAX - full),
                PlacementPolicy::Cheapest => {
                    let micros = (pool.price.hourly_cost(&g.resources) * 1e6).round() as i64;
                    (-micros, full)
                }
            };
            Ok(score)
        };
        // Pools the tenant may not use are named only when the group asked for
        // them (by name or labels), not when any pool would do.
        let any_pool = g.selector.name.is_none() && g.selector.labels.is_empty();
        let mut best: Option<(&PoolView, (i64, u128))> = None;
        // What blocks each pool, kept from the one pass over them for the
        // reason should no pool take the group.
        let mut blocks: Vec<(usize, &PoolView, Block)> = Vec::new();
        for (i, pool, allowed) in candidates(work, tenant, g, matching.get(index)) {
            match judge(pool, allowed) {
                Ok(score) => {
                    if best.as_ref().is_none_or(|(_, s)| score > *s) {
                        best = Some((pool, score));
                    }
                }
                Err(Block::NotAllowed) if any_pool => {}
                Err(block) => blocks.push((i, pool, block)),
            }
        }
        let Some((pool, _)) = best else {
            // No pool takes the group: only now say why, pool by pool.
            // With no partner placed, the reason is the pools' reasons and,
            // in a gang, the group's index and selector.
            let shared = (groups.len() == 1 || placements.is_empty())
                && !blocks.is_empty()
                && blocks.iter().all(|(_, _, b)| b.of_pool_only());
            let key = shared.then(|| {
                (
                    g.resources,
                    (groups.len() > 1).then(|| (g.index, g.selector.clone())),
                    blocks.iter().map(|&(i, _, b)| (i, b)).collect::<Vec<_>>(),
                )
            });
            if let (Some(key), Some(cache)) = (&key, reasons.as_deref())
                && let Some(reason) = cache.groups.get(key)
            {
                return Err(Arc::clone(reason));
            }
            let blockers = blocks
                .into_iter()
                .map(|(i, p, block)| match reasons.as_deref_mut() {
                    Some(cache) if block.of_pool_only() => Rc::clone(
                        cache
                            .pools
                            .entry((i, block, g.resources))
                            .or_insert_with(|| Rc::new(block.reason(p, tenant, &g.resources))),
                    ),
                    _ => Rc::new(block.reason(p, tenant, &g.resources)),
                })
                .collect::<Vec<Rc<Reason>>>();
            let reason = Arc::new(Reason::blocked_group(
                g,
                groups.len(),
                &placements,
                &blockers,
            ));
            if let (Some(key), Some(cache)) = (key, reasons.as_deref_mut()) {
                cache.groups.insert(key, Arc::clone(&reason));
            }
            return Err(reason);
        };
        let worker = pool
            .agents
            .as_ref()
            .and_then(|agents| pick_agent(agents, &g.resources, &taken, policy));
        let entry = extra.entry(pool.name.as_str()).or_default();
        entry.0 = entry.0.saturating_add(&g.resources);
        entry.1 = entry.1.saturating_add(1);
        if let Some(w) = worker {
            let t = taken.entry(w).or_insert(Resources::ZERO);
            *t = t.saturating_add(&g.resources);
        }
        placements.push(Placement {
            group: g.index,
            pool: pool.name.clone(),
            resources: g.resources,
            worker,
        });
    }
    Ok(placements)
}

/// A hash map keyed by small values of the cycle's own (ids, positions,
/// amounts, selectors), where the default hasher's resistance to chosen keys
/// costs more than the lookups it serves.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The multiply-rotate hash of rustc (`FxHasher`).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How full `used` makes `capacity`, as the largest share over dimensions, in
/// parts per 2^32.
fn fullness(capacity: &Resources, used: &Resources) -> u128 {
    Dimension::ALL
        .into_iter()
        .filter(|&d| capacity.get(d) > 0)
        .map(|d| {
            let (used, capacity) = (used.get(d), capacity.get(d));
            // The same quotient; a 64-bit division is much cheaper, and fits
            // whenever `used` does in 32 bits (4 million cores, 4 PiB).
            if used <= u64::from(u32::MAX) {
                u128::from((used << 32) / capacity)
            } else {
                (u128::from(used) << 32) / u128::from(capacity)
            }
        })
        .max()
        .unwrap_or(0)
}

/// The order in which the queued runs would be admitted were there room for
/// all: levels, then fair share (each run charged to its tenant as it is
/// taken), FIFO within a tenant. Gives each run its position in the queue.
pub fn admission_order(snapshot: &Snapshot, queue: &RunQueue) -> Vec<RunId> {
    let total = snapshot.total_capacity();
    // The tenants by position (in name order), charged as their runs are taken.
    let names: Vec<&str> = snapshot.tenants.keys().map(String::as_str).collect();
    let mut tenants: Vec<TenantView> = snapshot.tenants.values().cloned().collect();
    let share =
        |view: Option<&TenantView>| Share(view.map_or(0.0, |v| snapshot.weighted_share(v, &total)));
    let mut order = Vec::with_capacity(queue.len());
    for (_, level) in queue.levels() {
        // Per tenant of the level, in name order: its position in `tenants`
        // and its runs.
        let mut fifo: Vec<(Option<usize>, Fifo<'_>)> = level
            .iter()
            .map(|(tenant, classes)| {
                let mut runs = Fifo::default();
                for &c in classes {
                    if let Some(class) = queue.class(c) {
                        runs.add(class);
                    }
                }
                let view = names.binary_search(&tenant.as_str()).ok();
                (view, runs)
            })
            .collect();
        // Lowest share first; ties in name order, as positions follow names.
        let mut turn: BinaryHeap<std::cmp::Reverse<(Share, usize)>> = fifo
            .iter()
            .enumerate()
            .map(|(k, (view, _))| std::cmp::Reverse((share(view.and_then(|v| tenants.get(v))), k)))
            .collect();
        while let Some(std::cmp::Reverse((_, k))) = turn.pop() {
            let Some((view, runs)) = fifo.get_mut(k) else {
                continue;
            };
            let Some((run, class)) = runs.pop() else {
                continue;
            };
            order.push(run);
            let mut view = view.and_then(|v| tenants.get_mut(v));
            if let Some(view) = view.as_mut() {
                view.used = view.used.saturating_add(&class.total());
            }
            if !runs.is_empty() {
                turn.push(std::cmp::Reverse((share(view.as_deref()), k)));
            }
        }
    }
    order
}

/// The runs of some classes, oldest first: their sorted runs merged, without
/// copying them.
#[derive(Default)]
struct Fifo<'q> {
    /// The oldest run not yet taken of each class, by position in `classes`.
    heads: BinaryHeap<std::cmp::Reverse<(Timestamp, RunId, usize)>>,
    classes: Vec<(
        &'q Class,
        std::collections::btree_set::Iter<'q, (Timestamp, RunId)>,
    )>,
}

impl<'q> Fifo<'q> {
    fn add(&mut self, class: &'q Class) {
        let mut runs = class.runs.iter();
        if let Some(&(at, run)) = runs.next() {
            self.heads
                .push(std::cmp::Reverse((at, run, self.classes.len())));
            self.classes.push((class, runs));
        }
    }

    fn pop(&mut self) -> Option<(RunId, &'q Class)> {
        let std::cmp::Reverse((_, run, i)) = self.heads.pop()?;
        let (class, runs) = self.classes.get_mut(i)?;
        if let Some(&(at, next)) = runs.next() {
            self.heads.push(std::cmp::Reverse((at, next, i)));
        }
        Some((run, *class))
    }

    fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }
}

/// Builds a queue from a list of runs (for tests and tools).
pub fn queue_of(runs: impl IntoIterator<Item = QueuedRun>) -> RunQueue {
    let mut queue = RunQueue::new();
    for run in runs {
        queue.insert(run);
    }
    queue
}

#[cfg(test)]
mod tests;

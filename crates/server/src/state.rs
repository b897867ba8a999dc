//! The server's in-memory view of everything unfinished: loaded from the store on
//! start, and changed by the writes the engine stages for the store. Nothing acts
//! on a write before the store has committed it (see `commit.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use corral_core::clock::Timestamp;
use corral_core::controller::{AgentView, PoolView, Reason, Reservation, Snapshot, TenantView};
use corral_core::ids::{AllocationId, AttemptId, RunId, WorkerId};
use corral_core::money::Money;

use corral_core::pool::Provider;
use corral_core::queue::{ClassId, QueuedRun, RunQueue};
use corral_core::resources::Resources;
use corral_core::run::{AttemptState, RunState, StepProgress, WorkerState};
use corral_core::usage::UsageLedger;
use corral_store::{
    AllocationRecord, AttemptRecord, Live, MaxIds, PoolRecord, RunRecord, StepRecord, TenantRecord,
    WorkerRecord, Write,
};
use tokio::sync::Notify;

use crate::meter::SpendBook;
use crate::read_model::{Mirror, Queued};

mod usage;

pub use usage::Usage;

mod unbound;
pub use unbound::{Unbound, UnboundAllocation};

/// An unfinished run with its steps, attempts and open allocations.
#[derive(Debug, Clone)]
pub struct LiveRun {
    pub record: RunRecord,
    pub steps: Vec<StepRecord>,
    pub attempts: Vec<AttemptRecord>,
    pub allocations: Vec<AllocationRecord>,
    /// `needs[i]`: indices of the steps step `i` waits for.
    pub needs: Vec<Vec<usize>>,
    /// When its first allocation (of those known since the start) opened.
    pub held_since: Option<Timestamp>,
    /// The most it may cost (`State::upper_bound`), at the prices in force when
    /// it came into memory: what a hard budget admits it on.
    pub bound: Money,
}

impl LiveRun {
    fn new(record: RunRecord) -> LiveRun {
        let needs = record
            .spec
            .steps
            .iter()
            .map(|s| {
                s.needs
                    .iter()
                    .filter_map(|n| record.spec.steps.iter().position(|x| &x.name == n))
                    .collect()
            })
            .collect();
        LiveRun {
            record,
            steps: Vec::new(),
            attempts: Vec::new(),
            allocations: Vec::new(),
            needs,
            held_since: None,
            bound: Money::ZERO,
        }
    }

    pub fn progress(&self) -> Vec<StepProgress> {
        let mut lost = vec![0u32; self.steps.len()];
        for a in &self.attempts {
            if a.state == AttemptState::Lost
                && let Some(n) = lost.get_mut(a.step_idx as usize)
            {
                *n += 1;
            }
        }
        self.steps
            .iter()
            .map(|s| StepProgress {
                state: s.state,
                attempts: s.attempts,
                lost: lost.get(s.idx as usize).copied().unwrap_or(0),
                retries: self
                    .record
                    .spec
                    .steps
                    .get(s.idx as usize)
                    .map_or(0, |x| x.retries),
                needs: self.needs.get(s.idx as usize).cloned().unwrap_or_default(),
            })
            .collect()
    }

    pub fn attempt(&self, id: AttemptId) -> Option<&AttemptRecord> {
        self.attempts.iter().find(|a| a.id == id)
    }
}

/// A ready worker and what only the running server knows of it.
#[derive(Debug)]
pub struct LiveWorker {
    pub record: WorkerRecord,
    /// Last poll; a worker is lost when this grows too old. Reset on server start.
    pub last_seen: Timestamp,
    /// Since when no allocation is bound to it.
    pub idle_since: Option<Timestamp>,
    /// Wakes the worker's pending long-poll.
    pub wake: Arc<Notify>,
    /// Has polled since it registered or since this server started: a static
    /// agent is offered work only then (it may have died while the server was down).
    pub polled: bool,
}

impl State {
    /// A pool's live agents, as the API shows them (a pool's workers only:
    /// at most its `max_workers`, or its static agents), each with the open
    /// allocations bound to it.
    pub fn agents_of(&self, pool: &str) -> Vec<corral_api::AgentView> {
        self.workers_of(pool)
            .filter(|w| w.record.state == WorkerState::Ready)
            .map(|w| {
                let mut holds: Vec<&AllocationRecord> = self
                    .usage
                    .bound_to(w.record.id)
                    .filter(|a| a.pool == pool)
                    .collect();
                holds.sort_by_key(|a| (a.run_id, a.id));
                crate::api::views::agent(&w.record, w.last_seen, &holds)
            })
            .collect()
    }

    /// The live workers of pool `pool`, by id.
    pub fn workers_of(&self, pool: &str) -> impl Iterator<Item = &LiveWorker> {
        self.pool_workers
            .get(pool)
            .into_iter()
            .flatten()
            .filter_map(|id| self.workers.get(id))
    }
}

/// Everything unfinished, indexed for the engine.
#[derive(Debug)]
pub struct State {
    pub pools: BTreeMap<String, PoolRecord>,
    pub tenants: BTreeMap<String, TenantRecord>,
    pub runs: BTreeMap<RunId, LiveRun>,
    pub workers: BTreeMap<WorkerId, LiveWorker>,
    /// Which live run an attempt belongs to.
    pub attempt_runs: HashMap<AttemptId, RunId>,
    /// The running attempts of live runs, by worker: what a poll looks at.
    pub running: HashMap<WorkerId, BTreeSet<AttemptId>>,
    /// Running attempts handed to their worker, and when. Not persisted: after a
    /// restart a worker gets again what it does not report as running.
    pub delivered: HashMap<AttemptId, Timestamp>,
    /// Attempts whose last write is not committed yet, with that write's batch.
    pub unsettled: HashMap<AttemptId, u64>,
    /// Workers whose removal (gone or lost) is not committed yet, with its batch.
    pub retiring: HashMap<WorkerId, u64>,
    /// The last batch of writes staged.
    pub seq: u64,
    pub last_ids: MaxIds,
    /// Runs waiting for admission: queued runs, and groups of admitted runs that
    /// lost their allocation with their worker.
    pub queue: RunQueue,
    /// Decayed recent usage per tenant, for fair share.
    pub ledger: UsageLedger,
    /// Prices, capacities and this month's spend, for budgets.
    pub spend: SpendBook,
    /// Why each class of the queue waits, as of the last controller cycle
    /// (shared with the read model's views).
    pub waiting: Arc<BTreeMap<ClassId, Arc<Reason>>>,
    /// Room held for starving runs in the last controller cycle.
    pub reservations: Arc<Vec<Reservation>>,
    /// What the open allocations use, kept as they change.
    pub usage: Usage,
    /// The live workers of each pool.
    pub pool_workers: BTreeMap<String, BTreeSet<WorkerId>>,
    /// Live runs and the queue, as the read model's views share them.
    pub mirror: Mirror,
    /// Allocations waiting for a worker, and the worker requests made for them.
    pub unbound: Unbound,
}

impl State {
    /// The room pool `name` holds for runs that waited too long (from the last
    /// cycle): their demand, up to what the pool has free.
    pub fn reserved_on(&self, name: &str, snapshot: &Snapshot) -> Resources {
        let free = snapshot
            .pools
            .get(name)
            .map_or(Resources::ZERO, |p| p.capacity.saturating_sub(&p.used));
        let held = self
            .reservations
            .iter()
            .filter(|r| r.pools.iter().any(|p| p == name))
            .filter_map(|r| self.runs.get(&r.run))
            .fold(Resources::ZERO, |held, run| {
                held.saturating_add(&run.record.request.total())
            });
        Resources::min(&held, &free)
    }
    /// Builds the state from what the store holds; every worker counts as just
    /// seen. `ledger` holds the usage of allocations closed before.
    pub fn from_live(live: Live, ledger: UsageLedger, spend: SpendBook, now: Timestamp) -> State {
        let mut state = State {
            pools: BTreeMap::new(),
            tenants: BTreeMap::new(),
            runs: BTreeMap::new(),
            workers: BTreeMap::new(),
            attempt_runs: HashMap::new(),
            running: HashMap::new(),
            delivered: HashMap::new(),
            unsettled: HashMap::new(),
            retiring: HashMap::new(),
            seq: 0,
            last_ids: live.max_ids,
            queue: RunQueue::new(),
            ledger,
            spend,
            waiting: Arc::default(),
            reservations: Arc::default(),
            mirror: Mirror::default(),
            usage: Usage::default(),
            pool_workers: BTreeMap::new(),
            unbound: Unbound::default(),
        };
        let writes = live
            .pools
            .into_iter()
            .map(Write::PutPool)
            .chain(live.tenants.into_iter().map(Write::PutTenant))
            .chain(live.runs.into_iter().map(Write::PutRun))
            .chain(live.steps.into_iter().map(Write::PutStep))
            .chain(live.attempts.into_iter().map(Write::PutAttempt))
            .chain(live.open_allocations.into_iter().map(Write::PutAllocation))
            .chain(live.workers.into_iter().map(Write::PutWorker))
            .chain(
                live.worker_requests
                    .into_iter()
                    .map(Write::PutWorkerRequest),
            );
        let writes: Vec<Write> = writes.collect();
        state.apply_all(&writes, now, 0);
        for w in state.workers.values_mut() {
            w.polled = false;
        }
        state.unsettled.clear();
        state.retiring.clear();
        state
    }

    pub fn next_run_id(&mut self) -> RunId {
        self.last_ids.run += 1;
        RunId(self.last_ids.run)
    }

    pub fn next_attempt_id(&mut self) -> AttemptId {
        self.last_ids.attempt += 1;
        AttemptId(self.last_ids.attempt)
    }

    pub fn next_allocation_id(&mut self) -> AllocationId {
        self.last_ids.allocation += 1;
        AllocationId(self.last_ids.allocation)
    }

    pub fn next_audit_id(&mut self) -> i64 {
        self.last_ids.audit += 1;
        self.last_ids.audit
    }

    pub fn next_worker_id(&mut self) -> WorkerId {
        self.last_ids.worker += 1;
        WorkerId(self.last_ids.worker)
    }

    /// Takes `attempt` out of its worker's running attempts.
    fn not_running(&mut self, attempt: &AttemptRecord) {
        if let Some(running) = self.running.get_mut(&attempt.worker_id) {
            running.remove(&attempt.id);
            if running.is_empty() {
                self.running.remove(&attempt.worker_id);
            }
        }
    }

    /// Applies one committed write.
    fn apply(&mut self, write: &Write, now: Timestamp, seq: u64) {
        self.unbound.apply(write);
        match write {
            Write::PutPool(p) => {
                self.pools.insert(p.spec.name.clone(), p.clone());
            }
            Write::DeletePool(name) => {
                self.pools.remove(name);
            }
            Write::PutTenant(t) => {
                self.tenants.insert(t.spec.name.clone(), t.clone());
            }
            Write::DeleteTenant(name) => {
                self.tenants.remove(name);
            }
            Write::PutRun(r) if r.state.is_terminal() => {
                self.usage.release_run(r.id);
                self.mirror.runs.remove(&r.id);
                if let Some(run) = self.runs.remove(&r.id) {
                    if let (RunState::Succeeded, Some(since), Some(end)) =
                        (r.state, run.held_since, r.finished_at)
                    {
                        self.spend.record_duration(
                            &r.tenant,
                            &r.pipeline,
                            r.spec.content_key(),
                            end.millis_since(since),
                        );
                    }
                    for a in &run.attempts {
                        self.attempt_runs.remove(&a.id);
                        self.delivered.remove(&a.id);
                        self.not_running(a);
                    }
                }
            }
            Write::PutRun(r) => {
                self.mirror.runs.insert(r.id, Arc::new(r.clone()));
                match self.runs.get_mut(&r.id) {
                    Some(run) => run.record = r.clone(),
                    None => {
                        let mut run = LiveRun::new(r.clone());
                        run.bound = self.upper_bound(&run.record, &run.needs);
                        self.runs.insert(r.id, run);
                    }
                }
            }
            Write::PutStep(s) => {
                if let Some(run) = self.runs.get_mut(&s.run_id) {
                    match run.steps.get_mut(s.idx as usize) {
                        Some(slot) => *slot = s.clone(),
                        None => run.steps.push(s.clone()),
                    }
                }
            }
            Write::PutAttempt(a) => {
                self.unsettled.insert(a.id, seq);
                if let Some(run) = self.runs.get_mut(&a.run_id) {
                    match run.attempts.iter_mut().find(|x| x.id == a.id) {
                        Some(slot) => *slot = a.clone(),
                        None => run.attempts.push(a.clone()),
                    }
                    self.attempt_runs.insert(a.id, a.run_id);
                    if a.state == AttemptState::Running {
                        self.running.entry(a.worker_id).or_default().insert(a.id);
                    } else {
                        self.not_running(a);
                    }
                    if a.state.is_terminal() {
                        self.delivered.remove(&a.id);
                    }
                }
            }
            Write::PutAllocation(a) => {
                let Some(run) = self.runs.get_mut(&a.run_id) else {
                    self.usage.release(a.id);
                    return;
                };
                match a.closed_at {
                    None => self.usage.hold(a),
                    Some(_) => self.usage.release(a.id),
                }
                let previous = run.allocations.iter().position(|x| x.id == a.id);
                if a.closed_at.is_none() {
                    run.held_since =
                        Some(run.held_since.map_or(a.opened_at, |t| t.min(a.opened_at)));
                }
                match (previous, a.closed_at) {
                    // A close is written once; a run update that closes an
                    // allocation has already taken it out of the run.
                    (previous, Some(closed)) => {
                        if let Some(i) = previous {
                            run.allocations.remove(i);
                        }
                        self.ledger
                            .record(&a.tenant, &a.resources, a.opened_at, closed);
                        self.spend.close(a, now);
                    }
                    (Some(i), None) => run.allocations[i] = a.clone(),
                    (None, None) => {
                        run.held_since =
                            Some(run.held_since.map_or(a.opened_at, |t| t.min(a.opened_at)));
                        run.allocations.push(a.clone());
                    }
                }
            }
            Write::PutWorker(w) if w.state == WorkerState::Ready => {
                if let Some(old) = self.workers.get(&w.id)
                    && old.record.pool != w.pool
                {
                    self.unlist_worker(&old.record.pool.clone(), w.id);
                }
                self.pool_workers
                    .entry(w.pool.clone())
                    .or_default()
                    .insert(w.id);
                match self.workers.get_mut(&w.id) {
                    Some(live) => live.record = w.clone(),
                    None => {
                        self.workers.insert(
                            w.id,
                            LiveWorker {
                                record: w.clone(),
                                last_seen: now,
                                idle_since: Some(now),
                                wake: Arc::new(Notify::new()),
                                polled: true,
                            },
                        );
                    }
                }
            }
            Write::PutWorker(w) => {
                if let Some(old) = self.workers.remove(&w.id) {
                    self.unlist_worker(&old.record.pool, w.id);
                }
                self.retiring.insert(w.id, seq);
            }
            Write::PutPrice(p) => self.spend.record_price(p),
            Write::PutCapacity(c) => self.spend.record_capacity(c),
            Write::PutAlert(a) => self.spend.record_alert(a),
            Write::PutToken(_)
            | Write::TouchToken { .. }
            | Write::Session(_)
            | Write::AppendAudit(_)
            | Write::Meter(_)
            | Write::CountWait(_)
            | Write::PutMeasured(_)
            | Write::PutWorkerRequest(_)
            | Write::DeleteWorkerRequest(_) => {}
        }
    }

    fn unlist_worker(&mut self, pool: &str, id: WorkerId) {
        if let Some(ids) = self.pool_workers.get_mut(pool) {
            ids.remove(&id);
            if ids.is_empty() {
                self.pool_workers.remove(pool);
            }
        }
    }

    /// Applies a batch of writes staged as batch `seq`.
    pub fn apply_all(&mut self, writes: &[Write], now: Timestamp, seq: u64) {
        let mut touched = std::collections::BTreeSet::new();
        for w in writes {
            self.apply(w, now, seq);
            match w {
                Write::PutRun(r) => {
                    touched.insert(r.id);
                }
                Write::PutStep(s) => {
                    touched.insert(s.run_id);
                }
                Write::PutAllocation(a) => {
                    touched.insert(a.run_id);
                }
                _ => {}
            }
        }
        for run in touched {
            self.sync_queue(run);
        }
        let binding_changed = writes.iter().any(|w| {
            matches!(w, Write::PutAllocation(_) | Write::PutWorker(_))
                || matches!(w, Write::PutRun(r) if r.state.is_terminal())
        });
        if binding_changed {
            self.refresh_idle(now);
        }
    }

    /// A worker is idle when no open allocation is bound to it.
    fn refresh_idle(&mut self, now: Timestamp) {
        for (id, w) in &mut self.workers {
            if self.usage.is_bound(*id) {
                w.idle_since = None;
            } else {
                w.idle_since.get_or_insert(now);
            }
        }
    }

    /// Puts a run in the queue, or takes it out, after its records changed: a
    /// queued run waits with all its groups; an admitted one whose groups lost
    /// their allocation (with their worker) waits for those groups again.
    fn sync_queue(&mut self, id: RunId) {
        let Some(run) = self.runs.get(&id) else {
            self.queue.remove(id);
            self.mirror.queued.remove(&id);
            return;
        };
        let record = &run.record;
        let (groups, readmit) = match record.state {
            RunState::Queued => (record.request.groups.clone(), false),
            RunState::Admitted | RunState::Provisioning | RunState::Running => {
                let missing = record
                    .request
                    .groups
                    .iter()
                    .filter(|g| {
                        !run.allocations.iter().any(|a| a.group == g.index)
                            && g.steps
                                .iter()
                                .any(|&i| run.steps.get(i).is_some_and(|s| !s.state.is_terminal()))
                    })
                    .cloned()
                    .collect();
                (missing, true)
            }
            _ => (Vec::new(), false),
        };
        if groups.is_empty() {
            self.queue.remove(id);
            self.mirror.queued.remove(&id);
            return;
        }
        let queued = QueuedRun {
            id,
            tenant: record.tenant.clone(),
            priority: record.priority,
            enqueued_at: record.created_at,
            groups,
            readmit,
            bound: run.bound,
        };
        let shape = |groups: &[corral_core::request::GroupRequest]| -> Vec<_> {
            groups
                .iter()
                .map(|g| (g.index, g.selector.clone(), g.resources))
                .collect()
        };
        let same = self.queue.class_of(id).is_some_and(|c| {
            c.readmit == queued.readmit
                && c.priority == queued.priority
                && shape(&c.groups) == shape(&queued.groups)
        });
        if !same {
            self.queue.insert(queued.clone());
            if let Some(class) = self.queue.class_of(id) {
                let class = class.id;
                self.mirror
                    .queued
                    .insert(id, Arc::new(Queued { run: queued, class }));
            }
        }
    }

    /// The worker bound to a run's group, if any.
    pub fn worker_of(&self, run: RunId, group: u32) -> Option<WorkerId> {
        self.runs
            .get(&run)?
            .allocations
            .iter()
            .find(|a| a.group == group)?
            .worker_id
    }

    /// The controller's snapshot of pools (a static pool with its live agents),
    /// tenants (with their recent usage) and open allocations.
    ///
    /// Costs O(pools + tenants + agents + open allocations): what they use is
    /// kept in `usage`, not summed from the runs.
    pub fn snapshot(&self, now: Timestamp) -> Snapshot {
        let mut snapshot = self.capacities();
        let mut budgets = self.budgets(now);
        for (name, t) in &mut snapshot.tenants {
            t.recent = self.ledger.recent(name, self.usage.opened_by(name), now);
            t.budget = budgets.remove(name);
        }
        self.usage.charge(&mut snapshot);
        snapshot
    }

    /// Forgets what has been committed up to batch `settled`.
    pub fn prune_settled(&mut self, settled: u64) {
        self.unsettled.retain(|_, seq| *seq > settled);
        self.retiring.retain(|_, seq| *seq > settled);
    }

    /// The snapshot with nothing in use: pools' capacities (a static pool's from
    /// its live agents, an auto pool's as its provider last found it) and
    /// tenants' quotas.
    pub fn capacities(&self) -> Snapshot {
        let pools = self
            .pools
            .values()
            .map(|p| {
                let agents = if p.spec.provider == Provider::Static {
                    self.workers_of(&p.spec.name)
                        .filter(|w| w.polled)
                        .map(|w| AgentView {
                            id: w.record.id,
                            capacity: w.record.capacity,
                            used: corral_core::resources::Resources::ZERO,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let mut view = PoolView::new(&p.spec, agents);
                if p.spec.auto_capacity() {
                    view.capacity = self
                        .spend
                        .capacity(&p.spec.name)
                        .unwrap_or(corral_core::resources::Resources::ZERO);
                }
                (p.spec.name.clone(), view)
            })
            .collect();
        let tenants = self
            .tenants
            .values()
            .map(|t| (t.spec.name.clone(), TenantView::new(&t.spec, [0.0; 3])))
            .collect();
        Snapshot { pools, tenants }
    }
}

/// A queued run's place in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePlace {
    pub run: RunId,
    /// 1-based, in the whole queue and among the tenant's runs.
    pub position: u64,
    pub tenant_position: u64,
    pub waited_ms: i64,
    /// The run was admitted and waits for groups that lost their worker.
    pub regroup: bool,
    /// As of the last controller cycle; none before the first.
    pub reason: Option<Reason>,
    /// Pools holding room for it (empty: its tenant's quota), if any.
    pub reserved: Option<Vec<String>>,
    /// The batch of writes the position is as of.
    pub as_of: u64,
}

#[cfg(test)]
mod tests;

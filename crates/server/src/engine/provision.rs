//! Provisioning: the workers open allocations need. Each cycle binds
//! allocations without a worker to idle workers that fit, and asks the pool's
//! provider for a worker for the rest through a worker request, committed
//! with the batch that needs it. Provider calls are made by the provisioning
//! worker, off the engine lock and off every request's path, once the
//! request is committed; their outcomes come back as writes.
//!
//! A request's worker that has not registered by the request's deadline is
//! deleted and the allocation gets a new request (a new name), so nothing
//! stays unbound past a deadline. On start, [`Engine::reconcile`] sets the
//! requests against what each provider holds: a worker that exists is waited
//! for, a missing one is created again under its name, and a worker nobody
//! asked for is deleted.

use std::collections::VecDeque;

use corral_core::controller::{Reason, ReasonCode};
use corral_core::pool::Provider as PoolProvider;
use corral_store::{WorkerRequestRecord, WorkerRequestState};

use super::*;
use crate::background::{Job, JobError, Progress, Restart};
use crate::provider::{Providers, WorkerRequest, worker_name};

/// How many workers an allocation is given, each asked for when the last did
/// not come up (past its deadline, or ended before registering), before its
/// run fails: as a step lost with its worker runs at most three times.
const WORKER_TRIES: u32 = 3;
/// How many provider calls run at once.
const CONCURRENT_CALLS: usize = 8;
/// The longest a provider's delete or list may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A provider call to make once the writes that ask for it are committed.
pub(super) enum Order {
    Create {
        kind: PoolProvider,
        request: Box<WorkerRequest>,
        /// The request's attempt this create is: its outcome is kept only
        /// if the request is still at that attempt.
        attempts: u32,
        deadline: Timestamp,
        /// The hash of the credential of the request's earlier attempt, no
        /// good any more.
        revoke: Option<String>,
    },
    Delete {
        kind: PoolProvider,
        name: String,
        reference: String,
    },
}

/// The provider calls waiting for the provisioning worker.
#[derive(Default)]
pub(super) struct Orders {
    queue: std::sync::Mutex<VecDeque<Order>>,
    ready: Notify,
}

impl Orders {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Order>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, orders: Vec<Order>) {
        if orders.is_empty() {
            return;
        }
        self.queue().extend(orders);
        self.ready.notify_one();
    }

    /// Everything queued, once there is something.
    async fn next(&self) -> Vec<Order> {
        loop {
            let orders: Vec<Order> = self.queue().drain(..).collect();
            if !orders.is_empty() {
                return orders;
            }
            self.ready.notified().await;
        }
    }
}

/// The shape of the worker that serves a run's group on `pool`, with the pool
/// as applied, while the run is live (in the state) and the pool exists.
fn template_of(
    state: &State,
    run: RunId,
    group: u32,
    pool: &str,
) -> Option<(WorkerTemplate, PoolSpec)> {
    let group = state
        .runs
        .get(&run)?
        .record
        .request
        .groups
        .get(group as usize)?;
    let spec = &state.pools.get(pool)?.spec;
    Some((
        WorkerTemplate::for_group(group, pool, &spec.labels),
        spec.clone(),
    ))
}

/// The writes and calls of planning: what is staged, then called once committed.
#[derive(Default)]
struct Plan {
    writes: Vec<Write>,
    orders: Vec<Order>,
    /// The credentials of dropped requests, refused from the moment they are
    /// dropped rather than from their commit: an agent registering in
    /// between would find no request, join its pool as a plain idle worker,
    /// take a run, and then be killed by its request's delete.
    revoke: Vec<String>,
}

impl Plan {
    /// Done with request `r`: its row goes, and its worker (if the provider
    /// made one) is deleted.
    fn drop_request(&mut self, kind: Option<PoolProvider>, r: &WorkerRequestRecord) {
        self.writes.push(Write::DeleteWorkerRequest(r.name.clone()));
        self.revoke.push(r.spawn_hash.clone());
        if let Some(kind) = kind {
            self.orders.push(Order::Delete {
                kind,
                name: r.name.clone(),
                reference: r.reference.clone().unwrap_or_else(|| r.name.clone()),
            });
        }
    }

    /// Asks the provider again for `r`'s worker, under its name, with a new
    /// credential.
    fn retry(
        &mut self,
        kind: PoolProvider,
        r: &WorkerRequestRecord,
        (template, pool): (WorkerTemplate, PoolSpec),
        now: Timestamp,
    ) {
        let credential = auth::new_spawn_secret();
        let record = WorkerRequestRecord {
            state: WorkerRequestState::Pending,
            attempts: r.attempts.saturating_add(1),
            spawn_hash: auth::hash(&credential),
            updated_at: now,
            ..r.clone()
        };
        self.ask(
            kind,
            record,
            (template, pool),
            credential,
            Some(r.spawn_hash.clone()),
        );
    }

    fn ask(
        &mut self,
        kind: PoolProvider,
        record: WorkerRequestRecord,
        (template, pool): (WorkerTemplate, PoolSpec),
        credential: String,
        revoke: Option<String>,
    ) {
        self.orders.push(Order::Create {
            kind,
            request: Box::new(WorkerRequest {
                name: record.name.clone(),
                template,
                pool,
                run: record.run_id,
                allocation: record.allocation_id,
                credential,
            }),
            attempts: record.attempts,
            deadline: record.deadline,
            revoke,
        });
        self.writes.push(Write::PutWorkerRequest(record));
    }
}

impl Engine {
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// Binds allocations that have no worker to idle workers that fit, and asks
    /// providers for workers for the rest. Idempotent: re-driven on every cycle.
    pub(super) fn provision(&self, state: &mut State, fx: &mut Effects) {
        let plan = self.plan_provision(state);
        for hash in &plan.revoke {
            self.credentials.revoke_spawn(hash);
        }
        let assigned: BTreeSet<WorkerId> = plan
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::PutAttempt(a) => Some(a.worker_id),
                _ => None,
            })
            .collect();
        self.stage(state, plan.writes, fx);
        fx.wake.extend(Self::wake_handles(state, assigned));
        fx.orders.extend(plan.orders);
    }

    /// The writes that bind allocations to workers and make, retry or replace
    /// worker requests, and the provider calls they need: in the unbound
    /// allocations, the requests, and the workers of the pools they are on.
    fn plan_provision(&self, state: &mut State) -> Plan {
        let now = self.now();
        let mut plan = Plan::default();
        let kind_of = |state: &State, pool: &str| state.pools.get(pool).map(|p| p.spec.provider);
        // A request whose allocation no longer waits (it was bound, or closed)
        // is done with.
        let done: Vec<WorkerRequestRecord> = state
            .unbound
            .requests()
            .filter(|r| !state.unbound.waits(r.run_id, r.group, r.allocation_id))
            .cloned()
            .collect();
        for r in &done {
            plan.drop_request(kind_of(state, &r.pool), r);
        }
        let mut waiting: BTreeMap<RunId, Vec<(u32, AllocationId)>> = BTreeMap::new();
        let mut pools: BTreeMap<String, (Vec<(Resources, WorkerId)>, usize)> = BTreeMap::new();
        for (run, group, a) in state.unbound.allocations() {
            waiting.entry(run).or_default().push((group, a.id));
            pools.entry(a.pool.clone()).or_default();
        }
        if waiting.is_empty() {
            return plan;
        }
        // Each pool's idle workers (the smallest that fits is taken) and how
        // many workers it has or has asked for, against its max_workers.
        for w in state.workers.values() {
            if let Some((idle, alive)) = pools.get_mut(&w.record.pool) {
                *alive += 1;
                if w.idle_since.is_some() {
                    idle.push((w.record.capacity, w.record.id));
                }
            }
        }
        for r in state.unbound.requests() {
            if let Some((_, alive)) = pools.get_mut(&r.pool)
                && !done.iter().any(|d| d.name == r.name)
            {
                *alive += 1;
            }
        }
        for (idle, _) in pools.values_mut() {
            idle.sort();
        }
        let mut taken: BTreeSet<WorkerId> = BTreeSet::new();
        for (run_id, groups) in waiting {
            let Some(mut update) = RunUpdate::take(state, run_id, now) else {
                continue;
            };
            let mut provisioning = false;
            let mut failed = None;
            for (group, id) in groups {
                let Some(alloc) = update.run.allocations.iter().find(|a| a.id == id).cloned()
                else {
                    continue;
                };
                let request = state.unbound.request_for(alloc.id).cloned();
                let kind = kind_of(state, &alloc.pool);
                let Some((idle, alive)) = pools.get_mut(&alloc.pool) else {
                    continue;
                };
                let fits = idle.iter().position(|(capacity, w)| {
                    !taken.contains(w) && alloc.resources.fits_in(capacity)
                });
                if let Some(i) = fits {
                    let (_, worker) = idle.remove(i);
                    taken.insert(worker);
                    update.bind(group, Some(worker));
                    if let Some(r) = &request {
                        plan.drop_request(kind, r);
                        *alive = alive.saturating_sub(1);
                    }
                    continue;
                }
                let Some(pool) = state.pools.get(&alloc.pool) else {
                    continue;
                };
                let Some(kind) = kind else { continue };
                if !self.providers.of(kind).is_some_and(|p| p.provisions()) {
                    continue;
                }
                let Some(g) = update.run.record.request.groups.get(group as usize) else {
                    continue;
                };
                let template = WorkerTemplate::for_group(g, &alloc.pool, &pool.spec.labels);
                let problem = request
                    .as_ref()
                    .and_then(|r| state.unbound.problem(&r.name));
                let generation = match &request {
                    Some(r) if now < r.deadline => {
                        if r.state == WorkerRequestState::Failed {
                            plan.retry(kind, r, (template, pool.spec.clone()), now);
                        }
                        provisioning = true;
                        continue;
                    }
                    // Its provider says why it is not up yet and that it may
                    // still come (a pod waiting to be scheduled): another
                    // would wait for the same.
                    Some(_) if problem.is_some_and(|p| !p.fatal) => {
                        provisioning = true;
                        continue;
                    }
                    Some(r) => {
                        let why = problem.map_or_else(
                            || {
                                format!(
                                    "worker {} did not register within {}s",
                                    r.name,
                                    self.config.spawn_timeout.as_secs()
                                )
                            },
                            |p| p.message.clone(),
                        );
                        plan.drop_request(Some(kind), r);
                        *alive = alive.saturating_sub(1);
                        if r.generation.saturating_add(1) >= WORKER_TRIES {
                            tracing::warn!(worker = %r.name, allocation = %alloc.id, "no worker asked for the allocation came up; failing its run: {why}");
                            failed = Some(Reason::simple(
                                ReasonCode::WorkerPending,
                                format!(
                                    "none of the {WORKER_TRIES} workers asked for group {group} came up; the last: {why}"
                                ),
                            ));
                            break;
                        }
                        tracing::warn!(worker = %r.name, allocation = %alloc.id, attempts = r.attempts, "deleting a worker that did not come up and asking for another: {why}");
                        r.generation.saturating_add(1)
                    }
                    None => 0,
                };
                // Make room under max_workers by retiring an idle worker of
                // another shape.
                if *alive >= pool.spec.max_workers as usize {
                    let victim = idle
                        .iter()
                        .enumerate()
                        .filter(|(_, (_, w))| !taken.contains(w))
                        .min_by_key(|(_, (_, w))| *w)
                        .map(|(i, _)| i);
                    let Some(i) = victim else { continue };
                    let (_, victim) = idle.remove(i);
                    let Some(live) = state.workers.get(&victim) else {
                        continue;
                    };
                    plan.writes.push(Write::PutWorker(WorkerRecord {
                        state: WorkerState::Gone,
                        updated_at: now,
                        ..live.record.clone()
                    }));
                    *alive = alive.saturating_sub(1);
                }
                let credential = auth::new_spawn_secret();
                let record = WorkerRequestRecord {
                    name: worker_name(&alloc.pool, alloc.id, generation),
                    allocation_id: alloc.id,
                    run_id,
                    group,
                    pool: alloc.pool.clone(),
                    reference: None,
                    state: WorkerRequestState::Pending,
                    deadline: now.plus_millis(ms(self.config.spawn_timeout)),
                    attempts: 1,
                    generation,
                    spawn_hash: auth::hash(&credential),
                    created_at: now,
                    updated_at: now,
                };
                plan.ask(
                    kind,
                    record,
                    (template, pool.spec.clone()),
                    credential,
                    None,
                );
                *alive += 1;
                provisioning = true;
            }
            if let Some(reason) = failed {
                update.finish_with(RunState::Failed, Some(reason));
            } else {
                if provisioning && update.run.record.state == RunState::Admitted {
                    update.set_run_state(RunState::Provisioning);
                }
                update.advance(state);
            }
            plan.writes.append(&mut update.done(state));
        }
        plan
    }

    /// Hands committed orders to the provisioning worker: a created worker's
    /// credential is good from now until its request's deadline.
    pub(super) fn dispatch(&self, orders: Vec<Order>) {
        let now = self.now();
        for order in &orders {
            if let Order::Create {
                request,
                deadline,
                revoke,
                ..
            } = order
            {
                if let Some(old) = revoke {
                    self.credentials.revoke_spawn(old);
                }
                self.credentials.grant_spawn(
                    auth::hash(&request.credential),
                    SpawnGrant {
                        pool: request.template.pool.clone(),
                        name: request.name.clone(),
                        expires_at: *deadline,
                    },
                    now,
                );
            }
        }
        self.orders.push(orders);
    }

    /// Starts the provisioning worker, which makes the provider calls, and,
    /// when a provider watches its workers, the provider watch.
    pub fn start_provisioner(self: &Arc<Self>) {
        let engine = self.clone();
        self.background
            .start("provisioning", true, Restart::WithBackoff, move || {
                Provisioner::new(engine.clone())
            });
        if self
            .providers
            .all()
            .any(|(_, p)| p.provisions() && p.watches())
        {
            let engine = self.clone();
            self.background
                .start("provider-watch", false, Restart::WithBackoff, move || {
                    super::watch::ProviderWatch::new(engine.clone())
                });
        }
        if self.providers.of(PoolProvider::Kubernetes).is_some() {
            let engine = self.clone();
            self.background
                .start("pool-capacity", false, Restart::WithBackoff, move || {
                    super::capacity::PoolCapacity::new(
                        engine.clone(),
                        engine.config.capacity_refresh,
                    )
                });
        }
    }

    async fn carry_out(&self, order: Order) {
        match order {
            Order::Create {
                kind,
                request,
                attempts,
                deadline,
                ..
            } => {
                let Some(provider) = self.providers.of(kind).cloned() else {
                    return;
                };
                let left = u64::try_from(deadline.millis_since(self.now())).unwrap_or(0);
                let outcome =
                    tokio::time::timeout(Duration::from_millis(left), provider.create(&request))
                        .await
                        .map_err(|_| "no answer before the request's deadline".to_string())
                        .and_then(|created| created.map_err(|e| e.to_string()));
                if let Err(e) = self.created(&request.name, attempts, outcome).await {
                    tracing::warn!(worker = %request.name, error = %e, "cannot record what the provider answered");
                }
            }
            Order::Delete {
                kind,
                name,
                reference,
                ..
            } => {
                let Some(provider) = self.providers.of(kind).cloned() else {
                    return;
                };
                match tokio::time::timeout(CALL_TIMEOUT, provider.delete(&reference)).await {
                    Ok(Ok(())) => tracing::info!(worker = %name, "deleted a worker"),
                    Ok(Err(e)) => {
                        tracing::warn!(worker = %name, error = %e, "cannot delete a worker");
                    }
                    Err(_) => tracing::warn!(worker = %name, "deleting a worker took too long"),
                }
            }
        }
    }

    /// Records a provider's answer to attempt `attempts` of worker `name`'s
    /// request, unless the request has moved on (its worker registered, or it
    /// was replaced) meanwhile. A failed create is asked again by a later
    /// cycle, before the deadline.
    async fn created(
        &self,
        name: &str,
        attempts: u32,
        outcome: Result<String, String>,
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        let Some(r) = state
            .unbound
            .request(name)
            .filter(|r| r.attempts == attempts && r.state == WorkerRequestState::Pending)
            .cloned()
        else {
            return Ok(());
        };
        let now = self.now();
        let record = match outcome {
            Ok(reference) => WorkerRequestRecord {
                state: WorkerRequestState::Created,
                reference: Some(reference),
                updated_at: now,
                ..r
            },
            Err(e) => {
                tracing::warn!(worker = %name, attempts, error = %e, "the provider could not create a worker");
                WorkerRequestRecord {
                    state: WorkerRequestState::Failed,
                    updated_at: now,
                    ..r
                }
            }
        };
        let mut fx = Effects::default();
        self.stage(&mut state, vec![Write::PutWorkerRequest(record)], &mut fx);
        drop(state);
        self.finish(fx).await
    }

    /// Sets the stored worker requests against what each provider holds, once
    /// at start before the first cycle: a request whose worker exists waits
    /// for it until its deadline; one whose worker is missing is created again
    /// under the same name (so there are never two); a worker that exists
    /// with neither a request nor a registered worker of its name (an orphan)
    /// is deleted. A provider that cannot list is skipped (and said so).
    pub async fn reconcile(&self) -> Result<()> {
        for (kind, provider) in self.providers.all() {
            if !provider.provisions() {
                continue;
            }
            let pools = self.pools_of(kind);
            let existing = match tokio::time::timeout(CALL_TIMEOUT, provider.list(&pools)).await {
                Ok(Ok(existing)) => existing,
                Ok(Err(e)) => {
                    tracing::error!(?kind, error = %e, "cannot list the provider's workers; not reconciling them");
                    continue;
                }
                Err(_) => {
                    tracing::error!(
                        ?kind,
                        "listing the provider's workers took too long; not reconciling them"
                    );
                    continue;
                }
            };
            let existing: BTreeMap<String, String> = existing
                .into_iter()
                .map(|e| (e.name, e.reference))
                .collect();
            let mut state = self.state.lock().await;
            let now = self.now();
            let mut plan = Plan::default();
            let of_kind = |pool: &str| {
                state
                    .pools
                    .get(pool)
                    .is_some_and(|p| p.spec.provider == kind)
            };
            let requests: Vec<WorkerRequestRecord> = state
                .unbound
                .requests()
                .filter(|r| of_kind(&r.pool))
                .cloned()
                .collect();
            for r in &requests {
                match existing.get(&r.name) {
                    // It exists: waited for until its deadline.
                    Some(reference)
                        if r.state != WorkerRequestState::Created
                            || r.reference.as_ref() != Some(reference) =>
                    {
                        plan.writes
                            .push(Write::PutWorkerRequest(WorkerRequestRecord {
                                state: WorkerRequestState::Created,
                                reference: Some(reference.clone()),
                                updated_at: now,
                                ..r.clone()
                            }));
                    }
                    Some(_) => {}
                    None if now < r.deadline => {
                        if let Some(shape) = template_of(&state, r.run_id, r.group, &r.pool) {
                            tracing::info!(worker = %r.name, "the requested worker is missing; creating it again");
                            plan.retry(kind, r, shape, now);
                        }
                    }
                    // Past its deadline: the next cycle replaces it.
                    None => {}
                }
            }
            let known: BTreeSet<&str> = requests
                .iter()
                .map(|r| r.name.as_str())
                .chain(
                    state
                        .workers
                        .values()
                        .filter(|w| of_kind(&w.record.pool))
                        .map(|w| w.record.name.as_str()),
                )
                .collect();
            for (name, reference) in &existing {
                if !known.contains(name.as_str()) {
                    tracing::warn!(worker = %name, "deleting an orphan worker: no request and no registered worker has its name");
                    plan.orders.push(Order::Delete {
                        kind,
                        name: name.clone(),
                        reference: reference.clone(),
                    });
                }
            }
            let mut fx = Effects {
                controller: true,
                ..Effects::default()
            };
            self.stage(&mut state, plan.writes, &mut fx);
            fx.orders = plan.orders;
            drop(state);
            self.finish(fx).await?;
        }
        Ok(())
    }
}

impl Engine {
    /// The pools of `kind`, as committed.
    pub(super) fn pools_of(&self, kind: PoolProvider) -> Vec<PoolSpec> {
        self.read_model()
            .view()
            .pools
            .values()
            .filter(|p| p.spec.provider == kind)
            .map(|p| p.spec.clone())
            .collect()
    }
}

/// The provisioning worker (a background worker): makes the provider calls
/// that committed writes asked for, a few at once, each bounded in time (a
/// create by its request's deadline), and records what the providers answered.
pub struct Provisioner {
    engine: Arc<Engine>,
    calls: Arc<tokio::sync::Semaphore>,
    /// Taken whole from the engine's queue by `wait_for_work`.
    orders: Vec<Order>,
}

impl Provisioner {
    pub fn new(engine: Arc<Engine>) -> Provisioner {
        Provisioner {
            engine,
            calls: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS)),
            orders: Vec::new(),
        }
    }
}

impl Job for Provisioner {
    async fn work(&mut self) -> Result<Progress, JobError> {
        for order in std::mem::take(&mut self.orders) {
            let permit = self.calls.clone().acquire_owned().await?;
            let engine = self.engine.clone();
            tokio::spawn(async move {
                engine.carry_out(order).await;
                drop(permit);
            });
        }
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.orders = self.engine.orders.next().await;
    }
}

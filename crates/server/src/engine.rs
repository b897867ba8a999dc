//! The engine: every change to corral's state goes through here. Each operation
//! reads the in-memory state, computes the writes, commits them to the store in
//! one transaction and only then applies them in memory and acts (wakes agents,
//! spawns workers). One lock serializes the operations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use corral_api::{Assignment, PollRequest, PollResponse, RegisterRequest, ReportRequest};
use corral_core::clock::{Clock, Timestamp};
use corral_core::controller::{Controller, Policy, check_ever_fits};
use corral_core::error::{FieldError, FieldErrors};
use corral_core::ids::{AllocationId, AttemptId, RunId, WorkerId};
use corral_core::manifest::{from_value, parse_single};
use corral_core::metering::expected_duration_ms;
use corral_core::pipeline::{Pipeline, PipelineSpec, PriorityClasses};
use corral_core::pool::{PoolSpec, PoolState, Provider};
use corral_core::request::{ResourceRequest, WorkerTemplate};
use corral_core::resources::{Dimension, MAX_QUANTITY, Resources};
use corral_core::run::{AttemptState, RunState, StepState, WorkerState};
use corral_core::tenant::TenantSpec;
use corral_core::usage::UsageLedger;
use corral_store::{
    AdmissionWait, AllocationFilter, AllocationRecord, AttemptRecord, LogChunk, MeasuredAttempt,
    PoolRecord, RunDetail, RunRecord, StepRecord, Store, StoreError, TenantRecord,
    WorkerConfinement, WorkerRecord, Write,
};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::auth::{self, Credentials, Principal, SpawnGrant};
use crate::background::{Background, Restart};
use crate::commit::{Batch, CommitQueue};
use crate::meter::SpendBook;
use crate::metrics::{Metrics, Observed};
use crate::progress::RunUpdate;
use crate::provider::Providers;
use crate::read_model::{ReadModel, View};
use crate::sessions::Sessions;
use crate::state::State;

mod agent_fields;
mod agents;
pub mod alerts;
mod capacity;
mod catalog;
mod health;
mod heartbeats;
mod logs;
mod provision;
mod sessions;
mod watch;

pub use health::{BackgroundWorkerDown, Readiness, StoreWatch};
pub use logs::{LogArrival, OutputLimits};

pub use catalog::{Bootstrap, token_json};

/// Errors of engine operations; the API maps each to an HTTP status in one place.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Every problem of the input, each with its field.
    #[error("{0}")]
    Invalid(FieldErrors),
    #[error("{what} {name} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store failed to commit: {0}")]
    CommitFailed(String),
    #[error("cannot keep the new admin token: {0}")]
    KeepSecret(std::io::Error),
}

impl From<FieldError> for EngineError {
    fn from(e: FieldError) -> Self {
        EngineError::Invalid(e.into())
    }
}

impl From<FieldErrors> for EngineError {
    fn from(e: FieldErrors) -> Self {
        EngineError::Invalid(e)
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Timings and admission policy of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A worker that has not polled for this long is lost.
    pub heartbeat_timeout: Duration,
    /// A local worker idle for this long is retired.
    pub idle_ttl: Duration,
    /// The longest a poll is held open.
    pub max_poll_wait: Duration,
    /// A spawned worker that has not registered after this long is spawned again.
    pub spawn_timeout: Duration,
    /// How often a `capacity: auto` pool is sized again.
    pub capacity_refresh: Duration,
    /// Placement policy and when a waiting run gets a reservation.
    pub policy: Policy,
    /// Half-life of the recent usage that fair share counts.
    pub fair_share_half_life: Duration,
    /// Named priorities that pipelines may use.
    pub priority_classes: PriorityClasses,
    /// Bounds on the output agents send.
    pub output: OutputLimits,
    /// The most an agent may declare (a pool's `max_agent` may lower it).
    pub max_agent: Resources,
    /// Bounds on a pipeline.
    pub limits: corral_core::limits::Limits,
    /// How long a run is expected to hold its allocations when neither its
    /// pipeline's history nor its steps' timeouts say.
    pub default_run_duration: Duration,
    /// How often the governance time series are sampled (`history.rs`).
    pub sample_interval: Duration,
    /// The code of the currency prices and budgets are in, shown beside amounts.
    pub currency: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            heartbeat_timeout: Duration::from_secs(6),
            idle_ttl: Duration::from_secs(120),
            max_poll_wait: Duration::from_secs(20),
            spawn_timeout: Duration::from_secs(30),
            capacity_refresh: Duration::from_secs(30),
            policy: Policy::default(),
            fair_share_half_life: Duration::from_secs(3600),
            priority_classes: PriorityClasses::default(),
            output: OutputLimits::default(),
            max_agent: Resources::new(1024 * 1000, 16 * 1024 * 1024, 64),
            limits: corral_core::limits::Limits::default(),
            default_run_duration: Duration::from_secs(600),
            sample_interval: Duration::from_secs(10),
            currency: "USD".into(),
        }
    }
}

/// What `apply` did with a pool or tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        }
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// The provider of each kind of pool.
    providers: Providers,
    state: Mutex<State>,
    /// The incremental controller, kept across cycles; taken only by a cycle,
    /// which holds the state's lock.
    controller: std::sync::Mutex<Controller>,
    commits: CommitQueue,
    /// Provider calls for the provisioning worker.
    orders: provision::Orders,
    /// Tokens, workers' secrets and spawned agents' credentials.
    credentials: Credentials,
    /// Console sessions, checked without the state's lock.
    sessions: Sessions,
    /// Wakes the controller loop.
    pub wake_controller: Notify,
    /// Announces stored log chunks to followers.
    log_arrivals: tokio::sync::broadcast::Sender<LogArrival>,
    /// The output each live run has stored, against the per-run cap.
    run_outputs: logs::RunOutputs,
    /// Whether the store takes writes.
    health: health::StoreHealth,
    /// Counted events, for `/metrics`.
    metrics: Metrics,
    /// When each worker last polled, recorded without the state's lock.
    heartbeats: heartbeats::Heartbeats,
    /// The server's background workers (the committer, the controller...).
    background: Background,
    /// What readers see: the state as of the last commit.
    read_model: Arc<ReadModel>,
}

/// What an operation does once its writes are settled.
#[derive(Default)]
struct Effects {
    /// The last batch the answer depends on.
    seq: u64,
    wake: Vec<Arc<Notify>>,
    /// Provider calls to make once the writes are committed.
    orders: Vec<provision::Order>,
    controller: bool,
    /// Events to count once the writes are committed.
    observed: Observed,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What putting `new` over `old` (with its creation and update times) does: the
/// times to keep and the action; `create_only` refuses an existing name.
fn upsert<T: PartialEq>(
    kind: &str,
    name: &str,
    old: Option<(&T, Timestamp, Timestamp)>,
    new: &T,
    create_only: bool,
    now: Timestamp,
) -> Result<(Timestamp, Timestamp, Action)> {
    match old {
        Some(_) if create_only => Err(EngineError::Conflict(format!(
            "{kind} {name} already exists"
        ))),
        Some((old, created, updated)) if old == new => Ok((created, updated, Action::Unchanged)),
        Some((_, created, _)) => Ok((created, now, Action::Updated)),
        None => Ok((now, now, Action::Created)),
    }
}

/// Another tenant's run is not found, exactly as one that does not exist.
fn run_not_found(id: RunId) -> EngineError {
    EngineError::NotFound {
        what: "run",
        name: id.to_string(),
    }
}

/// A pool or tenant may be deleted when it exists and no open allocation is on it.
fn check_deletable(
    state: &State,
    kind: &'static str,
    name: &str,
    exists: bool,
    holds: impl Fn(&AllocationRecord) -> bool,
) -> Result<()> {
    if !exists {
        return Err(EngineError::NotFound {
            what: kind,
            name: name.into(),
        });
    }
    let open = state
        .runs
        .values()
        .flat_map(|r| &r.allocations)
        .filter(|a| holds(a))
        .count();
    if open > 0 {
        return Err(EngineError::Conflict(format!(
            "{kind} {name} has {open} open allocation(s); delete it when they are released"
        )));
    }
    Ok(())
}

impl Engine {
    /// Loads the state from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        providers: Providers,
    ) -> Result<Engine> {
        let now = clock.now();
        let mut live = store.load_live().await?;
        let credentials = Credentials::default();
        credentials.load_live(&live);
        let sessions = Sessions::default();
        sessions.load(&live.sessions);
        let spend = SpendBook::replay(store.as_ref(), &mut live, now, config.limits).await?;
        let mut state = State::from_live(
            live,
            Self::replay_usage(store.as_ref(), &config, now).await?,
            spend,
            now,
        );
        let backfill = state.backfill_history();
        if !backfill.is_empty() {
            store.commit(&backfill).await?;
            state.apply_all(&backfill, now, 0);
        }
        let read_model = Arc::new(ReadModel::new(View::of(&state, now)));
        Ok(Engine {
            store,
            background: Background::new(clock.clone()),
            clock,
            config,
            providers,
            state: Mutex::new(state),
            controller: std::sync::Mutex::new(Controller::new()),
            commits: CommitQueue::new(0),
            orders: provision::Orders::default(),
            credentials,
            sessions,
            wake_controller: Notify::new(),
            log_arrivals: tokio::sync::broadcast::Sender::new(1024),
            run_outputs: logs::RunOutputs::default(),
            health: health::StoreHealth::default(),
            metrics: Metrics::new(),
            heartbeats: heartbeats::Heartbeats::default(),
            read_model,
        })
    }

    /// The committed read model, which readers use without the engine's lock.
    pub fn read_model(&self) -> &Arc<ReadModel> {
        &self.read_model
    }

    /// When worker `id` last polled, as far as is known without the lock.
    pub fn last_poll(&self, id: WorkerId) -> Option<Timestamp> {
        self.heartbeats.last(id)
    }

    pub fn background(&self) -> &Background {
        &self.background
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Fair share's memory of recent usage, rebuilt from the allocations closed
    /// within the last twenty half-lives (older ones weigh under a millionth).
    async fn replay_usage(
        store: &dyn Store,
        config: &EngineConfig,
        now: Timestamp,
    ) -> Result<UsageLedger> {
        let half_life = ms(config.fair_share_half_life);
        let mut ledger = UsageLedger::new(half_life);
        let closed = store
            .allocations(&AllocationFilter {
                closed_since: Some(Timestamp(
                    now.0.saturating_sub(half_life.saturating_mul(20)),
                )),
                limit: u32::MAX,
                ..AllocationFilter::default()
            })
            .await?;
        for a in closed {
            if let Some(end) = a.closed_at {
                ledger.record(&a.tenant, &a.resources, a.opened_at, end);
            }
        }
        Ok(ledger)
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A read-only look at the state.
    pub async fn read(&self) -> MutexGuard<'_, State> {
        self.state.lock().await
    }

    /// Applies `writes` in memory and queues them for the store; the caller's
    /// answer and effects wait for them through `fx`.
    fn stage(&self, state: &mut State, mut writes: Vec<Write>, fx: &mut Effects) {
        fx.observed.ended(state, &writes);
        self.run_outputs.forget_ended(&writes);
        // A retired or lost worker's pending poll is answered once that is committed.
        for w in &writes {
            if let Write::PutWorker(w) = w
                && w.state != WorkerState::Ready
                && let Some(live) = state.workers.get(&w.id)
            {
                fx.wake.push(live.wake.clone());
            }
        }
        if !writes.is_empty() {
            state.seq += 1;
            let now = self.clock.now();
            // Allocations are metered, and price and capacity histories
            // change, in the batch that closes or changes them.
            let metered = state.meter_writes(&writes);
            state.apply_all(&writes, now, state.seq);
            let history = state.history_writes(&writes, now);
            state.apply_all(&history, now, state.seq);
            writes.extend(history);
            writes.extend(metered);
            // The view of this batch, published once it is committed: kept
            // before the committer can see the batch.
            self.read_model.staged(View::of(state, now));
            self.commits.enqueue(Batch {
                seq: state.seq,
                writes,
            });
        } else if !self.read_model.is_current(state) {
            self.read_model.staged(View::of(state, self.clock.now()));
        }
        fx.seq = state.seq;
    }

    /// Waits until the operation's writes are settled, then acts.
    ///
    /// The controller is woken at once: its cycle decides on the state in
    /// memory, and what it decides is committed after these writes, and acted
    /// on only then (if they fail, so does its batch).
    async fn finish(&self, fx: Effects) -> Result<()> {
        if fx.controller {
            self.wake_controller.notify_one();
        }
        self.commits
            .settle(fx.seq)
            .await
            .map_err(EngineError::CommitFailed)?;
        self.metrics.record(fx.observed);
        for wake in fx.wake {
            wake.notify_one();
        }
        self.dispatch(fx.orders);
        Ok(())
    }

    /// Runs the committer as the background worker `committer` (batches are
    /// written only while it runs) until it fails for good; returns why. Then
    /// nothing can be written any more, and the server must exit.
    pub async fn run_committer(self: &Arc<Self>) -> String {
        self.start_committer();
        self.background.fatal().await
    }

    /// Starts the committer as the background worker `committer`; the
    /// background's `fatal` says when it has failed for good.
    pub fn start_committer(self: &Arc<Self>) {
        let engine = self.clone();
        self.background
            .start("committer", true, Restart::Never, move || {
                crate::commit::Committer::new(engine.clone())
            });
    }

    /// What the committer writes next: every batch queued, once there is one.
    pub(crate) async fn next_batches(&self) -> Vec<Batch> {
        self.commits.next().await
    }

    /// The committer's round: writes `batches` in one transaction. When it
    /// fails, the memory holds writes the store does not: the state is
    /// rebuilt from the store and the operations fail. It fails only when the
    /// state cannot be rebuilt for `RELOAD_PATIENCE`: the server cannot go on
    /// and must exit (a supervisor restarts it).
    pub(crate) async fn commit_batches(&self, batches: Vec<Batch>) -> Result<(), String> {
        let first = batches.first().map_or(0, |b| b.seq);
        let last = batches.last().map_or(0, |b| b.seq);
        let writes: Vec<Write> = batches.into_iter().flat_map(|b| b.writes).collect();
        let Err(e) = self.store.commit(&writes).await else {
            self.health.committed();
            // Published before anyone is told: an operation's answer
            // reads what it wrote.
            self.read_model.committed(last);
            self.commits.mark_committed(last);
            return Ok(());
        };
        tracing::error!(error = %e, "commit failed; reloading the state from the store");
        self.health.failed(self.now(), e.to_string());
        let mut state = self.state.lock().await;
        let later = self.commits.drain();
        let last = later.last().map_or(last, |b| b.seq);
        // Their operations answer now (503); new ones wait for the
        // state, which holds writes the store does not, to be reloaded.
        self.commits.mark_failed(first, last, e.to_string());
        let started = std::time::Instant::now();
        loop {
            match self.reload(&mut state).await {
                Ok(()) => {
                    self.read_model.reloaded(View::of(&state, self.now()));
                    return Ok(());
                }
                Err(e) if started.elapsed() > health::RELOAD_PATIENCE => {
                    return Err(format!("cannot reload the state from the store: {e}"));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload the state; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Replaces the state with the store's; the usage ledger is rebuilt too
    /// (it counted closes that were never committed), and tokens staged with a
    /// failed batch are forgotten.
    async fn reload(&self, state: &mut State) -> Result<()> {
        let now = self.now();
        let mut live = self.store.load_live().await?;
        let ledger = Self::replay_usage(self.store.as_ref(), &self.config, now).await?;
        let spend =
            SpendBook::replay(self.store.as_ref(), &mut live, now, self.config.limits).await?;
        self.credentials.load_live(&live);
        self.sessions.load(&live.sessions);
        let seq = state.seq;
        *state = State::from_live(live, ledger, spend, now);
        state.seq = seq;
        Ok(())
    }

    fn wake_handles(
        state: &State,
        workers: impl IntoIterator<Item = WorkerId>,
    ) -> Vec<Arc<Notify>> {
        workers
            .into_iter()
            .filter_map(|w| state.workers.get(&w).map(|live| live.wake.clone()))
            .collect()
    }

    // ---- runs ----

    /// Validates a pipeline spec (YAML or JSON) and queues a run of it, or stores
    /// it as rejected when it can never fit. Nothing is stored for an invalid spec.
    /// A pipeline whose matrix makes several runs is refused: [`Engine::submit_runs`]
    /// makes them.
    ///
    /// Returns the run as submitted (with its steps, before any attempt or
    /// allocation), so the answer needs no read of the store.
    pub async fn submit(&self, who: &Principal, text: &str) -> Result<RunDetail> {
        let pipeline = self.compile_submitted(who, text)?;
        let specs = pipeline.runs(1, &self.config.limits)?;
        if specs.len() != 1 {
            return Err(FieldError::new(
                "matrix",
                format!("makes {} runs; submit it as a bulk submit", specs.len()),
            )
            .into());
        }
        let mut runs = self.queue_runs(&pipeline, specs).await?;
        Ok(runs.pop().expect("one spec makes one run"))
    }

    /// Validates a pipeline spec once and queues the runs it makes: one per
    /// combination of its matrix, `count` times each, all staged in one batch
    /// (one transaction) and answered together, in order. Each run is admitted
    /// by the controller like any other; the checks made at submit (that it can
    /// ever fit, that its cost bound is within a hard budget) are the same for
    /// every run, which differ only in their matrix values, so they are made
    /// once and hold for each.
    pub async fn submit_runs(
        &self,
        who: &Principal,
        text: &str,
        count: usize,
    ) -> Result<Vec<RunDetail>> {
        let pipeline = self.compile_submitted(who, text)?;
        let specs = pipeline.runs(count, &self.config.limits)?;
        self.queue_runs(&pipeline, specs).await
    }

    /// Parses and validates a submitted pipeline, its tenant being a tenant
    /// token's own: a pipeline without `tenant:` gets it, and another tenant's
    /// name is refused.
    fn compile_submitted(&self, who: &Principal, text: &str) -> Result<Pipeline> {
        let mut value = parse_single(text, "Pipeline")?;
        if let Some(own) = who.role.tenant() {
            match value.get("tenant") {
                None => {
                    if let Some(doc) = value.as_object_mut() {
                        doc.insert("tenant".into(), own.into());
                    }
                }
                Some(named) if named.as_str() == Some(own) => {}
                Some(named) => {
                    return Err(EngineError::Forbidden(format!(
                        "token {} submits runs for tenant {own} only, not {named}",
                        who.name
                    )));
                }
            }
        }
        let spec: PipelineSpec = from_value(value, "")?;
        Ok(spec.compile_with(&self.config.limits)?)
    }

    /// Queues a run of each of `specs` (copies of `pipeline` but for their
    /// matrix), or stores them as rejected when they can never fit.
    async fn queue_runs(
        &self,
        pipeline: &Pipeline,
        specs: Vec<PipelineSpec>,
    ) -> Result<Vec<RunDetail>> {
        let priority = self
            .config
            .priority_classes
            .resolve(&pipeline.spec.priority)?;
        let request = ResourceRequest::for_pipeline(pipeline);
        let timeouts = pipeline.critical_path_timeouts_ms();
        let mut state = self.state.lock().await;
        if !state.tenants.contains_key(&pipeline.spec.tenant) {
            return Err(FieldError::new(
                "tenant",
                format!("unknown tenant {:?}", pipeline.spec.tenant),
            )
            .into());
        }
        // Whether it can ever fit depends on capacities and quotas, not on use.
        let snapshot = state.capacities();
        let tenant = &snapshot.tenants[&pipeline.spec.tenant];
        let verdict = check_ever_fits(&snapshot, tenant, &request.groups);
        // A run that may cost more than a whole hard budget could never go in.
        let bound = state.bound_of(
            &pipeline.spec.tenant,
            &request,
            &pipeline.spec.steps,
            &pipeline.needs,
        );
        if let Some(why) = state.past_whole_budget(&pipeline.spec.tenant, bound) {
            return Err(EngineError::Conflict(why));
        }
        let now = self.now();
        let (run_state, reason, finished_at) = match verdict {
            Ok(()) => (RunState::Queued, None, None),
            Err(reason) => (RunState::Rejected, Some(reason), Some(now)),
        };
        // What the pipeline's last successful runs held, for its estimate.
        let duration = expected_duration_ms(
            state.spend.durations(
                &pipeline.spec.tenant,
                &pipeline.spec.name,
                pipeline.spec.content_key(),
            ),
            timeouts,
            ms(self.config.default_run_duration),
        );
        let estimate = state.estimate(&pipeline.spec.tenant, &request, duration);
        let mut runs = Vec::with_capacity(specs.len());
        let mut writes = Vec::with_capacity(specs.len() * (1 + pipeline.spec.steps.len()));
        for spec in specs {
            let id = state.next_run_id();
            let steps: Vec<StepRecord> = spec
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepRecord {
                    run_id: id,
                    idx: u32::try_from(i).unwrap_or(u32::MAX),
                    name: s.name.clone(),
                    group: request.group_of(i).unwrap_or(0),
                    state: if run_state == RunState::Rejected {
                        StepState::Cancelled
                    } else {
                        StepState::Pending
                    },
                    attempts: 0,
                })
                .collect();
            let record = RunRecord {
                id,
                pipeline: spec.name.clone(),
                tenant: spec.tenant.clone(),
                priority,
                state: run_state,
                reason: reason.clone(),
                spec,
                request: request.clone(),
                estimate,
                created_at: now,
                updated_at: now,
                finished_at,
            };
            // The run goes first so the steps find it when applied in memory.
            writes.push(Write::PutRun(record.clone()));
            writes.extend(steps.iter().cloned().map(Write::PutStep));
            runs.push(RunDetail {
                run: record,
                steps,
                attempts: Vec::new(),
                allocations: Vec::new(),
            });
        }
        let mut fx = Effects {
            controller: true,
            ..Effects::default()
        };
        self.stage(&mut state, writes, &mut fx);
        drop(state);
        self.finish(fx).await?;
        Ok(runs)
    }

    /// Cancels a run that has not ended: releases everything it holds at once
    /// and tells its workers to kill its processes.
    /// A tenant token cancels its own tenant's runs only. The cancel is audited.
    pub async fn cancel(&self, who: &Principal, id: RunId) -> Result<RunRecord> {
        let mut state = self.state.lock().await;
        let Some(run) = state.runs.get(&id) else {
            drop(state);
            return match self.store.run(id).await? {
                Some(detail) if !who.may_touch_tenant(&detail.run.tenant) => Err(run_not_found(id)),
                Some(detail) => Err(EngineError::Conflict(format!(
                    "run {id} has already ended ({})",
                    detail.run.state
                ))),
                None => Err(run_not_found(id)),
            };
        };
        if !who.may_touch_tenant(&run.record.tenant) {
            return Err(run_not_found(id));
        }
        let now = self.now();
        let before = run.record.state;
        let workers: BTreeSet<WorkerId> = run
            .attempts
            .iter()
            .filter(|a| !a.state.is_terminal())
            .map(|a| a.worker_id)
            .collect();
        let mut update = RunUpdate::take(&mut state, id, now).expect("the run is live");
        update.finish(RunState::Cancelled);
        let record = update.run.record.clone();
        let name = id.to_string();
        update.writes.push(
            catalog::Change {
                kind: "run",
                name: &name,
                action: "cancel",
                before: Some(serde_json::json!({ "state": before.as_str() })),
                after: Some(serde_json::json!({ "state": record.state.as_str() })),
            }
            .write(&mut state, who, now),
        );
        let mut fx = Effects {
            wake: Self::wake_handles(&state, workers),
            controller: true,
            ..Effects::default()
        };
        let writes = update.done(&mut state);
        self.stage(&mut state, writes, &mut fx);
        drop(state);
        self.finish(fx).await?;
        Ok(record)
    }

    // ---- the controller cycle ----

    /// One controller cycle: lose silent workers, retire idle ones, decide on the
    /// queue, commit the decisions, then provision workers for new allocations.
    pub async fn cycle(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let started = std::time::Instant::now();
        state.prune_settled(self.commits.settled());
        let mut fx = Effects::default();
        self.lose_silent_workers(&mut state, &mut fx);
        self.retire_idle_workers(&mut state, &mut fx);
        let now = self.now();
        let snapshot = state.snapshot(now);
        let outcome = self
            .controller()
            .decide(&snapshot, &state.queue, now, &self.config.policy);
        state.ledger.prune(now, &snapshot.total_capacity());
        let mut writes = Vec::new();
        let mut assigned = BTreeSet::new();
        for admission in outcome.admitted {
            let Some(mut update) = RunUpdate::take(&mut state, admission.run, now) else {
                continue;
            };
            for p in admission.placements {
                update.open(AllocationRecord {
                    id: state.next_allocation_id(),
                    run_id: admission.run,
                    group: p.group,
                    tenant: update.run.record.tenant.clone(),
                    pool: p.pool,
                    resources: p.resources,
                    worker_id: p.worker,
                    opened_at: now,
                    closed_at: None,
                });
            }
            if update.run.record.state == RunState::Queued {
                fx.observed.admitted(&update.run.record, now);
                writes.push(Write::CountWait(AdmissionWait {
                    tenant: update.run.record.tenant.clone(),
                    at: now,
                    wait_ms: now.millis_since(update.run.record.created_at),
                }));
                update.set_run_state(RunState::Admitted);
            }
            // Groups placed on static agents start at once.
            update.advance(&mut state);
            assigned.extend(update.assigned_workers());
            writes.append(&mut update.done(&mut state));
        }
        for (id, reason) in outcome.rejected {
            let Some(mut update) = RunUpdate::take(&mut state, id, now) else {
                continue;
            };
            // A run that lost a worker and can no longer be placed fails.
            let end = if update.run.record.state == RunState::Queued {
                RunState::Rejected
            } else {
                RunState::Failed
            };
            update.finish_with(end, Some(reason));
            writes.append(&mut update.done(&mut state));
        }

        writes.extend(state.alert_writes(&snapshot, now));
        state.waiting = Arc::new(outcome.waiting);
        state.reservations = Arc::new(outcome.reservations);
        fx.wake.extend(Self::wake_handles(&state, assigned));
        // The decisions are staged before any provisioning, and nothing is
        // spawned until both are committed.
        self.stage(&mut state, writes, &mut fx);
        fx.observed.waits(&state);
        self.provision(&mut state, &mut fx);
        drop(state);
        self.metrics.cycle(started.elapsed());
        self.finish(fx).await
    }

    /// The controller. A cycle that panicked may have left it halfway: it
    /// starts afresh, without what it remembered (the next cycle evaluates
    /// every class).
    fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.controller.lock().unwrap_or_else(|poisoned| {
            self.controller.clear_poison();
            let mut controller = poisoned.into_inner();
            *controller = Controller::new();
            controller
        })
    }

    fn lose_silent_workers(&self, state: &mut State, fx: &mut Effects) {
        let now = self.now();
        let timeout = ms(self.config.heartbeat_timeout);
        self.heartbeats.retain(|id| state.workers.contains_key(&id));
        let lost: BTreeSet<WorkerId> = state
            .workers
            .values()
            .filter(|w| {
                let seen = self
                    .heartbeats
                    .last(w.record.id)
                    .map_or(w.last_seen, |t| t.max(w.last_seen));
                now.millis_since(seen) > timeout
            })
            .map(|w| w.record.id)
            .collect();
        self.lose_workers(state, &lost, "no heartbeat", fx);
    }

    /// Marks workers lost: their running attempts end as `lost` (and are retried
    /// per the step's `retries`), and their allocations are released, so their
    /// capacity leaves the pool at once; the groups wait in the queue for a new
    /// allocation.
    fn lose_workers(
        &self,
        state: &mut State,
        lost: &BTreeSet<WorkerId>,
        why: &str,
        fx: &mut Effects,
    ) {
        if lost.is_empty() {
            return;
        }
        let now = self.now();
        let mut writes: Vec<Write> = lost
            .iter()
            .filter_map(|id| state.workers.get(id))
            .map(|w| {
                tracing::warn!(worker = w.record.id.0, name = %w.record.name, pool = %w.record.pool, "worker lost: {why}");
                Write::PutWorker(WorkerRecord {
                    state: WorkerState::Lost,
                    updated_at: now,
                    ..w.record.clone()
                })
            })
            .collect();
        let affected: Vec<RunId> = state
            .runs
            .values()
            .filter(|r| {
                r.allocations
                    .iter()
                    .any(|a| a.worker_id.is_some_and(|w| lost.contains(&w)))
            })
            .map(|r| r.record.id)
            .collect();
        for run_id in affected {
            let Some(mut update) = RunUpdate::take(state, run_id, now) else {
                continue;
            };
            let lost_attempts: Vec<AttemptRecord> = update
                .run
                .attempts
                .iter()
                .filter(|a| !a.state.is_terminal() && lost.contains(&a.worker_id))
                .cloned()
                .collect();
            for attempt in lost_attempts {
                update.end_attempt(
                    attempt,
                    AttemptState::Lost,
                    None,
                    Some("worker lost".into()),
                );
            }
            let released: Vec<u32> = update
                .run
                .allocations
                .iter()
                .filter(|a| a.worker_id.is_some_and(|w| lost.contains(&w)))
                .map(|a| a.group)
                .collect();
            for group in released {
                update.release(group);
            }
            update.advance(state);
            writes.append(&mut update.done(state));
        }
        self.stage(state, writes, fx);
        fx.controller = true;
    }

    /// Retires the workers providers made (local agents, pods) idle for longer
    /// than `idle_ttl`, or idle in a pool that is not active. Static agents
    /// stay: their operators own them.
    fn retire_idle_workers(&self, state: &mut State, fx: &mut Effects) {
        let now = self.now();
        let ttl = ms(self.config.idle_ttl);
        let writes: Vec<Write> = state
            .workers
            .values()
            .filter(|w| {
                let pool = state.pools.get(&w.record.pool);
                let made = pool.is_none_or(|p| p.spec.provider != Provider::Static);
                let active = pool.is_some_and(|p| p.spec.state == PoolState::Active);
                made && w
                    .idle_since
                    .is_some_and(|t| !active || now.millis_since(t) > ttl)
            })
            .map(|w| {
                Write::PutWorker(WorkerRecord {
                    state: WorkerState::Gone,
                    updated_at: now,
                    ..w.record.clone()
                })
            })
            .collect();
        self.stage(state, writes, fx);
    }
}

//! The records the store keeps, one per table row, and the writes that change them.

use std::collections::BTreeMap;

use corral_core::access::Role;
use corral_core::clock::Timestamp;
use corral_core::controller::Reason;
use corral_core::ids::{AllocationId, AttemptId, RunId, WorkerId};
use corral_core::metering::{CapacityChange, Grouping, PriceChange, SlotPiece, Span, Window};
use corral_core::money::Money;
use corral_core::pipeline::PipelineSpec;
use corral_core::pool::PoolSpec;
use corral_core::request::ResourceRequest;
use corral_core::resources::Resources;
use corral_core::run::{AttemptState, RunState, StepState, WorkerState};
use corral_core::tenant::TenantSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolRecord {
    pub spec: PoolSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub spec: TenantSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub pipeline: String,
    pub tenant: String,
    pub priority: i32,
    pub state: RunState,
    /// Why the run waits or was rejected.
    pub reason: Option<Reason>,
    pub spec: PipelineSpec,
    pub request: ResourceRequest,
    /// What the run is expected to cost, set at submit.
    pub estimate: Money,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub run_id: RunId,
    pub idx: u32,
    pub name: String,
    pub group: u32,
    pub state: StepState,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub run_id: RunId,
    pub step_idx: u32,
    /// 1 for the first attempt at the step.
    pub number: u32,
    pub worker_id: WorkerId,
    pub state: AttemptState,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// What it really used, as its agent measured it.
    pub usage: Option<Measured>,
}

/// What an attempt really used, by the kernel's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Measured {
    pub cpu_micros: u64,
    pub memory_peak_bytes: u64,
    pub throttled_micros: u64,
}

/// An ended attempt's measured usage with what its step asked for and where
/// it ran (`measured_usage`), for efficiency and recommendations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredAttempt {
    pub attempt: AttemptId,
    pub run_id: RunId,
    pub tenant: String,
    pub pool: String,
    pub pipeline: String,
    pub step: String,
    pub succeeded: bool,
    pub ended_at: Timestamp,
    pub duration_ms: i64,
    /// The step's request.
    pub requested: Resources,
    pub usage: Measured,
}

/// Measured usage summed by tenant, pool, pipeline and UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredSum {
    pub tenant: String,
    pub pool: String,
    pub pipeline: String,
    /// The day's start, in ms.
    pub day_ms: i64,
    pub cpu_micros: i64,
    /// Each attempt's peak times its duration, in MiB·ms.
    pub memory_peak_mib_ms: i64,
}

/// How an agent confines its steps, as it said at registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerConfinement {
    pub namespaces: bool,
    /// `v2`, `v1` or `none`.
    pub cgroup: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationRecord {
    pub id: AllocationId,
    pub run_id: RunId,
    pub group: u32,
    pub tenant: String,
    pub pool: String,
    pub resources: Resources,
    /// The worker serving the allocation, once one is bound.
    pub worker_id: Option<WorkerId>,
    pub opened_at: Timestamp,
    pub closed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub pool: String,
    pub name: String,
    pub capacity: Resources,
    pub labels: BTreeMap<String, String>,
    pub state: WorkerState,
    pub registered_at: Timestamp,
    pub updated_at: Timestamp,
    /// The agent's own id for itself (kept in its work directory): tells a
    /// restart of this agent from another agent with the same name.
    pub instance: Option<String>,
    /// The agent process's id for itself: a registration retried by the same
    /// process carries the same one.
    pub incarnation: Option<String>,
    /// The hash of the secret the worker was handed at registration.
    pub secret_hash: Option<String>,
    /// How it confines its steps; none for an agent that did not say.
    pub confinement: Option<WorkerConfinement>,
    /// The token it registered with: revoking it ends the worker.
    pub token_name: Option<String>,
    /// A spawned agent's one-time credential: it may retry its registration
    /// with it until the worker first polls.
    pub spawn_hash: Option<String>,
}

/// An API token: only the hash of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// A console session: only the SHA-256 of its random id is kept, with the
/// hash of the token it was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the session's id, hex.
    pub id_hash: String,
    /// The hash of the token the session was opened with.
    pub token_hash: String,
    pub created_at: Timestamp,
    /// As the store last heard of it: about once a minute while in use.
    pub last_used_at: Timestamp,
}

/// A change to console sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionWrite {
    Open(SessionRecord),
    /// Records when the session of this id hash was last used.
    Touch {
        id_hash: String,
        at: Timestamp,
    },
    /// Ends the session of this id hash (a logout).
    End(String),
    /// Ends every session opened with the token of this hash (its revocation).
    EndOfToken(String),
    /// Ends the sessions opened before `opened_before` or last used before
    /// `used_before`: those past their lifetime or idle timeout.
    EndStale {
        opened_before: Timestamp,
        used_before: Timestamp,
    },
}

/// One change to pools, tenants or tokens, or a cancel: who made it, when, and
/// what the object was before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: Timestamp,
    /// The name of the token that made the change (`corral` for the server itself).
    pub who: String,
    /// `pool`, `tenant`, `token` or `run`.
    pub kind: String,
    pub name: String,
    /// `create`, `update`, `delete`, `revoke` or `cancel`.
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A piece of a step's output, at a byte offset of its attempt's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub attempt_id: AttemptId,
    pub run_id: RunId,
    pub step_idx: u32,
    pub offset: u64,
    pub data: String,
}

/// Where a paged read of a run's log goes on: after this chunk, in (step,
/// attempt, offset) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    pub step_idx: u32,
    pub attempt_id: AttemptId,
    pub offset: u64,
}

impl LogChunk {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            step_idx: self.step_idx,
            attempt_id: self.attempt_id,
            offset: self.offset,
        }
    }
}

/// One change to the store. A list of writes is committed as one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    PutPool(PoolRecord),
    DeletePool(String),
    PutTenant(TenantRecord),
    DeleteTenant(String),
    PutRun(RunRecord),
    PutStep(StepRecord),
    PutAttempt(AttemptRecord),
    PutAllocation(AllocationRecord),
    PutWorker(WorkerRecord),
    /// Creates or replaces a token by name.
    PutToken(TokenRecord),
    /// Records when a token was last used.
    TouchToken {
        name: String,
        at: Timestamp,
    },
    AppendAudit(AuditRecord),
    /// A console session opened, used, or ended.
    Session(SessionWrite),
    /// A pool's price from a time on (a later change at the same time wins).
    PutPrice(PriceChange),
    /// A pool's capacity from a time on (a later change at the same time wins).
    PutCapacity(CapacityChange),
    /// A budget alert, new or with its delivery updated.
    PutAlert(AlertRecord),
    /// A closed allocation's usage, priced once: its pieces are kept and added
    /// to the sums per slot, unless the allocation is metered already.
    Meter(Metered),
    /// A run's first admission, counted in its tenant's wait histogram.
    CountWait(AdmissionWait),
    /// An ended attempt's measured usage, kept once.
    PutMeasured(MeasuredAttempt),
    /// Creates or replaces a worker request by its worker's name.
    PutWorkerRequest(WorkerRequestRecord),
    /// A worker request is done with (its worker registered, or its
    /// allocation is bound or closed), by its worker's name.
    DeleteWorkerRequest(String),
}

/// Where a worker request stands with its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkerRequestState {
    /// Decided and committed; the provider has not answered a create yet.
    Pending,
    /// The provider created the worker; its agent has not registered yet.
    Created,
    /// The provider's last create failed; it is asked again before the deadline.
    Failed,
}

impl WorkerRequestState {
    pub const ALL: [WorkerRequestState; 3] = [
        WorkerRequestState::Pending,
        WorkerRequestState::Created,
        WorkerRequestState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerRequestState::Pending => "pending",
            WorkerRequestState::Created => "created",
            WorkerRequestState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for WorkerRequestState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerRequestState::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown worker request state {s:?}"))
    }
}

/// A worker asked of a pool's provider for an open allocation, until its
/// agent registers: what a restarted server reconciles with the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRequestRecord {
    /// The worker's name (a DNS-1123 label), the same for every create of
    /// this request, so that the provider never holds two.
    pub name: String,
    pub allocation_id: AllocationId,
    pub run_id: RunId,
    pub group: u32,
    pub pool: String,
    /// What the provider calls the worker, once it has created it.
    pub reference: Option<String>,
    pub state: WorkerRequestState,
    /// Unregistered past this, the worker is deleted and the allocation gets
    /// a new request.
    pub deadline: Timestamp,
    /// How many times the provider was asked to create it.
    pub attempts: u32,
    /// Which request this is for its allocation (0 for the first): the
    /// next one after a deadline gets a new name.
    pub generation: u32,
    /// The SHA-256 of the one-time credential its agent registers with.
    pub spawn_hash: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A run first admitted at `at` after waiting `wait_ms` since it was
/// submitted: one more run in the bucket of its wait
/// (`corral_core::history::waits`), for its tenant and the hour of `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionWait {
    pub tenant: String,
    pub at: Timestamp,
    pub wait_ms: i64,
}

/// A closed allocation's span (with its run's pipeline) and its canonical
/// pieces, as `corral_core::metering::slot_pieces` cuts them.
#[derive(Debug, Clone, PartialEq)]
pub struct Metered {
    pub span: Span,
    pub pieces: Vec<SlotPiece>,
}

/// A budget threshold a tenant's spend crossed in a month (each fires once a
/// month), and its delivery to the alert webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub tenant: String,
    /// The UTC month, `2026-11`.
    pub month: String,
    /// The fraction of the budget crossed, in thousandths (800 for 0.8).
    pub threshold_milli: i64,
    pub at: Timestamp,
    /// The month's spend when it fired.
    pub spent: Money,
    /// The monthly budget then.
    pub monthly: Money,
    /// Delivery attempts made so far.
    pub attempts: u32,
    pub delivered_at: Option<Timestamp>,
    /// Why the last delivery failed.
    pub last_error: Option<String>,
}

/// Which alerts to list: of one tenant, one month, or those not delivered;
/// newest first, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    pub tenant: Option<String>,
    pub month: Option<String>,
    pub undelivered: bool,
    pub limit: u32,
}

/// Everything that is not finished: what the server needs in memory to work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub pools: Vec<PoolRecord>,
    pub tenants: Vec<TenantRecord>,
    /// Runs not in a terminal state, by id.
    pub runs: Vec<RunRecord>,
    /// The steps of those runs.
    pub steps: Vec<StepRecord>,
    /// The attempts of those runs.
    pub attempts: Vec<AttemptRecord>,
    pub open_allocations: Vec<AllocationRecord>,
    /// Workers in state ready.
    pub workers: Vec<WorkerRecord>,
    /// Every token, revoked and expired ones included.
    pub tokens: Vec<TokenRecord>,
    /// Every console session not ended (some may be past their timeouts).
    pub sessions: Vec<SessionRecord>,
    /// Every worker request not done with, by name.
    pub worker_requests: Vec<WorkerRequestRecord>,
    /// Every pool's price history, by pool and time.
    pub prices: Vec<PriceChange>,
    /// Every pool's latest capacity.
    pub capacities: Vec<CapacityChange>,
    pub max_ids: MaxIds,
}

/// The largest id in use per table (0 when empty), so new ids follow them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxIds {
    pub run: i64,
    pub attempt: i64,
    pub allocation: i64,
    pub worker: i64,
    pub audit: i64,
}

/// A run with everything that belongs to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetail {
    pub run: RunRecord,
    pub steps: Vec<StepRecord>,
    pub attempts: Vec<AttemptRecord>,
    pub allocations: Vec<AllocationRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub tenant: Option<String>,
    pub state: Option<RunState>,
    /// Newest first; at most this many.
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationFilter {
    pub tenant: Option<String>,
    pub pool: Option<String>,
    pub run: Option<RunId>,
    /// Only allocations closed at or after this time.
    pub closed_since: Option<Timestamp>,
    /// Oldest first; at most this many.
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries before this time.
    pub until: Option<Timestamp>,
    pub who: Option<String>,
    pub kind: Option<String>,
    /// Only entries about the object of this name.
    pub name: Option<String>,
    /// Only entries with an id below this one (the next page, newest first).
    pub before_id: Option<i64>,
    /// Only entries with an id above this one (the next page, oldest first).
    pub after_id: Option<i64>,
    /// Newest first, else oldest first.
    pub newest_first: bool,
    /// At most this many.
    pub limit: u32,
}

/// Which allocations a usage report covers: those held at some time in
/// `[from, to)`, of one tenant or pool if set; only those not metered yet
/// (open, or closed before metering) if `unmetered`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanFilter {
    pub from: Timestamp,
    pub to: Timestamp,
    pub tenant: Option<String>,
    pub pool: Option<String>,
    pub unmetered: bool,
}

/// Which metered usage to sum: within `window` (whole days for the sums per
/// slot, a part of one day for the pieces), of one tenant or pool if set,
/// grouped as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub window: Window,
    pub tenant: Option<String>,
    pub pool: Option<String>,
    pub grouping: Grouping,
}

/// How long a pipeline's last successful runs held their allocations, in ms,
/// newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineDurations {
    pub tenant: String,
    pub pipeline: String,
    /// The runs' [`corral_core::pipeline::PipelineSpec::content_key`].
    pub content: u64,
    pub durations: Vec<i64>,
}

//! Wire types of corral's HTTP API, shared by the server, the agent and the CLI.
//!
//! Resources travel as integers in base units (`cpu_millis`, `memory_mib`, `gpu`),
//! times as RFC 3339 strings with milliseconds.

pub mod history;

use std::collections::BTreeMap;

use corral_core::resources::Resources;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Resources in base units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct ResourcesView {
    pub cpu_millis: u64,
    pub memory_mib: u64,
    pub gpu: u64,
}

impl From<Resources> for ResourcesView {
    fn from(r: Resources) -> Self {
        ResourcesView {
            cpu_millis: r.cpu_millis,
            memory_mib: r.memory_mib,
            gpu: r.gpu,
        }
    }
}

impl From<ResourcesView> for Resources {
    fn from(r: ResourcesView) -> Self {
        Resources::new(r.cpu_millis, r.memory_mib, r.gpu)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid` (400), `unauthorized` (401),
    /// `forbidden` (403), `not_found` (404), `method_not_allowed` (405),
    /// `conflict` (409), `too_large` (413), `unsupported_media_type` (415),
    /// `internal` (500), `unavailable` (503).
    pub code: String,
    pub message: String,
    /// For `invalid`, `too_large` and `unsupported_media_type`: the `path` of
    /// the field or parameter, e.g. `{"path": "steps[2].resources.cpu"}`; for
    /// `invalid`, also `errors`, every problem found (`[{"path", "message"}]`),
    /// the first of which is the `message`.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PriceView {
    pub cpu_hour: f64,
    pub memory_gib_hour: f64,
    pub gpu_hour: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    /// `local`, `static` or `kubernetes`.
    pub provider: String,
    pub capacity: ResourcesView,
    pub max_workers: u32,
    pub labels: BTreeMap<String, String>,
    pub price: PriceView,
    /// `active`, `draining` or `disabled`.
    pub state: String,
    /// Sum of the open allocations on the pool.
    pub used: ResourcesView,
    /// Room held for runs that have waited too long (their demand, up to what
    /// the pool has free), which no run after them may take.
    #[serde(default)]
    pub reserved: ResourcesView,
    /// Open allocations, one worker each.
    pub workers: u32,
    /// Live agents of a static pool, whose capacity is theirs summed.
    #[serde(default)]
    pub agents: Option<u32>,
    /// The most one agent of the pool may declare; null fields are bounded by
    /// the server's `--max-agent` only.
    #[serde(default)]
    pub max_agent: BoundsView,
    /// Agents that cannot confine their steps are refused.
    #[serde(default)]
    pub require_confinement: bool,
    /// The pool's live agents, with how each confines its steps.
    #[serde(default)]
    pub live_agents: Vec<AgentView>,
    /// The pool's document as it was applied, without its `kind`: what
    /// `apply` takes back unchanged (no status).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

/// Bounds on resources; a field left out (null) is not bounded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct BoundsView {
    pub cpu_millis: Option<u64>,
    pub memory_mib: Option<u64>,
    pub gpu: Option<u64>,
}

/// A tenant's quota; a field left out (null) is unlimited.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaView {
    pub cpu_millis: Option<u64>,
    pub memory_mib: Option<u64>,
    pub gpu: Option<u64>,
    pub runs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    pub name: String,
    pub weight: u32,
    pub quota: QuotaView,
    pub allowed_pools: Option<Vec<String>>,
    /// Limits in single pools, by pool.
    #[serde(default)]
    pub pool_limits: BTreeMap<String, QuotaView>,
    /// Sum of the tenant's open allocations across all pools.
    pub used: ResourcesView,
    /// What its open allocations hold in each pool that holds any, by pool.
    #[serde(default)]
    pub held: BTreeMap<String, ResourcesView>,
    /// Runs holding allocations now.
    pub runs: u64,
    /// Its budget per calendar month, if it has one.
    #[serde(default)]
    pub budget: Option<BudgetSummary>,
    /// The tenant's document as it was applied, without its `kind`: what
    /// `apply` takes back unchanged (no status).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReasonView {
    /// Stable code, e.g. `tenant_quota`, `pool_full`, `larger_than_pools`.
    pub code: String,
    /// A sentence with the numbers, e.g. `tenant acme: cpu 6/6 in use, run needs 3`.
    pub message: String,
    /// The limits that block the run, with their numbers.
    #[serde(default)]
    pub limits: Vec<LimitView>,
}

/// A limit a run hits: `in_use` of `limit` taken, and the run `needs` more.
/// Amounts in base units: millicores, MiB, gpus, runs or workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LimitView {
    /// `pool small`, `tenant acme`, `tenant acme in pool gpu`.
    pub scope: String,
    /// `cpu`, `memory`, `gpu`, `runs` or `workers`.
    pub dimension: String,
    pub in_use: u64,
    pub limit: u64,
    pub needs: u64,
}

/// A queued run's place in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueuePlaceView {
    /// 1-based position in the whole queue, in admission order.
    pub position: u64,
    /// 1-based position among its tenant's queued runs.
    pub tenant_position: u64,
    pub waited_ms: i64,
    /// Pools holding room for it (empty: its tenant's quota), once it has
    /// waited long enough to get a reservation.
    pub reserved: Option<Vec<String>>,
}

/// A run in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    pub id: i64,
    pub pipeline: String,
    pub tenant: String,
    pub priority: i32,
    /// `queued`, `admitted`, `provisioning`, `running`, `succeeded`, `failed`,
    /// `cancelled` or `rejected`.
    pub state: String,
    pub reason: Option<ReasonView>,
    /// For a run waiting for admission.
    #[serde(default)]
    pub queue: Option<QueuePlaceView>,
    /// What the run was expected to cost at submit, in the operator's
    /// currency: its groups' envelopes at the dearest pool each may land on,
    /// for the p90 of its pipeline's last successful runs (or its steps'
    /// timeouts, or the server's default duration).
    #[serde(default)]
    pub estimated_cost: f64,
    /// What the run asks for in all: its groups' envelopes summed.
    #[serde(default)]
    pub demand: ResourcesView,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// A pool's price from a time on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PriceChangeView {
    pub pool: String,
    pub at: String,
    pub cpu_hour: f64,
    pub memory_gib_hour: f64,
    pub gpu_hour: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub index: u32,
    /// The pools its steps may use: `any pool`, `pool gpu`, `pools labelled gpu=a100`.
    pub pool: String,
    /// The group's envelope: its peak concurrent demand.
    pub resources: ResourcesView,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub groups: Vec<GroupView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub id: i64,
    pub number: u32,
    /// `running`, `succeeded`, `failed`, `timedout`, `lost` or `cancelled`.
    pub state: String,
    pub worker_id: i64,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// What the attempt really used, measured by its agent (null while it
    /// runs, or when its agent measured nothing).
    #[serde(default)]
    pub usage: Option<AttemptUsage>,
}

/// What an attempt really used, by the kernel's accounting: its cgroup's, or
/// the rusage of its process tree where the agent has no cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct AttemptUsage {
    /// CPU time of all its processes, user and system.
    #[schema(minimum = 0.0, maximum = 1.0e12)]
    pub cpu_seconds: f64,
    /// The most memory it held at once.
    #[schema(minimum = 0, maximum = 18446744073709551615_u64)]
    pub memory_peak_bytes: u64,
    /// How long it was held back by its CPU quota.
    #[schema(minimum = 0.0, maximum = 1.0e12)]
    pub throttled_seconds: f64,
}

/// What an agent could set up to confine its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Confinement {
    /// Each step runs in its own user, mount, PID, IPC and UTS namespaces,
    /// with a private `/tmp` and `/proc`, and nothing of the agent's or the
    /// server's data in view.
    pub namespaces: bool,
    /// Where each attempt's limits are set: `v2`, `v1` or `none`.
    #[schema(pattern = "^(v2|v1|none)$")]
    pub cgroup: String,
    /// Whom steps run as: a user name, `uids A-B` (a fresh uid per attempt),
    /// or the agent's own user.
    #[schema(pattern = "^[A-Za-z0-9._ -]{1,63}$")]
    pub user: String,
}

impl Confinement {
    /// Steps are confined: namespaces and a cgroup with limits.
    pub fn is_full(&self) -> bool {
        self.namespaces && self.cgroup != "none"
    }
}

/// A live agent of a pool: what it offers, what it holds now, when it last
/// polled, and how it confines its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub worker_id: i64,
    pub name: String,
    /// Null for an agent that did not say (an older one): not confined.
    pub confinement: Option<Confinement>,
    /// What it offers the pool.
    #[serde(default)]
    pub capacity: ResourcesView,
    /// When it last polled (since this server started).
    #[serde(default)]
    pub last_poll_at: Option<String>,
    /// The open allocations bound to it (a tenant's token sees its own only).
    #[serde(default)]
    pub holds: Vec<HoldingView>,
}

/// An open allocation an agent holds for a run's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HoldingView {
    pub allocation_id: i64,
    pub run_id: i64,
    pub group: u32,
    pub tenant: String,
    pub resources: ResourcesView,
    pub opened_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    pub group: u32,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped` or `cancelled`.
    pub state: String,
    pub needs: Vec<String>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AllocationView {
    pub id: i64,
    pub run_id: i64,
    pub group: u32,
    pub tenant: String,
    pub pool: String,
    pub resources: ResourcesView,
    pub worker_id: Option<i64>,
    pub opened_at: String,
    /// Null while the allocation is open.
    pub closed_at: Option<String>,
}

/// A run with its request, steps and allocations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub request: RequestView,
    pub steps: Vec<StepView>,
    pub allocations: Vec<AllocationView>,
    /// For a waiting or rejected run: why, in sentences, and what would let it in.
    #[serde(default)]
    pub explanation: Option<String>,
    /// For a run of a pipeline with a `matrix`: its value of each axis, which its
    /// steps see as `CORRAL_MATRIX_<AXIS>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
}

/// The answer to a bulk submit (`count`, or a pipeline with a `matrix`): every
/// run it made, in order (the matrix's combinations, first axis by name varying
/// slowest, each `count` times), all written in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmittedRuns {
    pub runs: Vec<SubmittedRun>,
}

/// One run of a bulk submit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmittedRun {
    pub id: i64,
    /// `queued`, or `rejected` when it can never fit (then every run of the
    /// submit is, and `reason` says why).
    pub state: String,
    pub reason: Option<ReasonView>,
    /// Its value of each matrix axis.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, String>,
}

/// What a submit answers: the run, or for a bulk submit the list of its runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Submitted {
    Runs(SubmittedRuns),
    Run(Box<RunView>),
}

/// What `apply` did with one document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Applied {
    pub kind: String,
    pub name: String,
    /// `created`, `updated` or `unchanged`.
    pub action: String,
}

// ---- the agent protocol ----

/// An agent joining a pool.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    pub pool: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    pub name: String,
    /// Identifies the agent's work directory: an agent restarted from it
    /// replaces its earlier self at once; another under the same name is refused.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub instance: Option<String>,
    /// Random per start of the agent process: a registration retried by the
    /// same process carries the same incarnation, a restarted agent a new one.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub incarnation: Option<String>,
    #[schema(schema_with = agent_capacity)]
    pub capacity: ResourcesView,
    #[serde(default)]
    #[schema(schema_with = agent_labels)]
    pub labels: BTreeMap<String, String>,
    /// What the agent could set up to confine its steps; left out, it
    /// confines nothing.
    #[serde(default)]
    pub confinement: Option<Confinement>,
}

/// The schema of an agent's capacity: resources in base units, some cpu and
/// memory.
fn agent_capacity() -> utoipa::openapi::Object {
    serde_json::from_value(serde_json::json!({
        "type": "object",
        "description": "Resources in base units; cpu and memory above zero",
        "required": ["cpu_millis", "memory_mib", "gpu"],
        "properties": {
            "cpu_millis": {"type": "integer", "minimum": 1, "maximum": u64::MAX},
            "memory_mib": {"type": "integer", "minimum": 1, "maximum": u64::MAX},
            "gpu": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
        },
    }))
    .expect("a hand-written schema is valid")
}

/// The schema of an agent's labels (`agent_fields.rs` in the server checks them).
fn agent_labels() -> utoipa::openapi::Object {
    serde_json::from_value(serde_json::json!({
        "type": "object",
        "description": "At most 64; each key a name, each value up to 63 letters, digits, '-', '_' or '.'",
        "maxProperties": 64,
        "propertyNames": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"},
        "additionalProperties": {"type": "string", "pattern": "^[A-Za-z0-9._-]{0,63}$"},
    }))
    .expect("a hand-written schema is valid")
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub worker_id: i64,
    /// The secret every later call of this worker carries as its bearer token.
    pub worker_secret: String,
    /// The agent is lost when it has not polled for this long.
    pub heartbeat_timeout_ms: u64,
    /// The lease each successful poll renews, counted from when the agent
    /// sent that poll: its steps run only while it holds it. Shorter than the
    /// heartbeat timeout by a margin, so a step is killed before the server
    /// runs it again elsewhere.
    #[serde(default)]
    pub lease_ms: u64,
}

/// A long-poll, which is also the agent's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PollRequest {
    /// Attempts the agent is running now.
    #[serde(default)]
    pub running: Vec<i64>,
    /// How long the server may hold the poll when there is nothing to say.
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PollResponse {
    pub assignments: Vec<Assignment>,
    /// Running attempts the agent must kill (cancelled, or no longer its own).
    pub cancel: Vec<i64>,
    /// The agent should exit: it was retired or is unknown.
    pub shutdown: bool,
    /// The lease this poll renews, counted from when the agent sent it (see
    /// [`RegisterResponse::lease_ms`]); 0 renews none.
    #[serde(default)]
    pub lease_ms: u64,
}

/// One attempt at a step, handed to an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub attempt_id: i64,
    pub run_id: i64,
    pub step: String,
    /// Run with `sh -c`.
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub timeout_secs: Option<u64>,
    /// Directory name of the run's workspace on the worker.
    pub workspace: String,
    /// The agent ships at most this many bytes of the attempt's output, then a
    /// line saying it was cut; the step goes on. Unlimited when left out.
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
    /// What the step was admitted with: its cgroup's limits (cpu quota,
    /// memory limit).
    #[serde(default)]
    pub resources: Option<ResourcesView>,
}

/// A piece of an attempt's output at a byte offset; sending it again is harmless.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogAppend {
    pub offset: u64,
    pub data: String,
}

/// How an attempt ended; reporting it again is harmless.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportRequest {
    /// `succeeded`, `failed`, `timedout`, `cancelled`, or `lost` (killed
    /// when the agent's lease lapsed).
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// What the attempt really used, when the agent measured it.
    #[serde(default)]
    pub usage: Option<AttemptUsage>,
}

/// A token to create. The secret is in the answer, once. Its schema in the
/// OpenAPI document is the server's (`TokenRequest`), which ties the role to
/// the tenant or pool it binds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub name: String,
    /// `admin`, `viewer`, `tenant` or `agent`.
    pub role: String,
    /// The tenant of a `tenant` token.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The static pool of an `agent` token.
    #[serde(default)]
    pub pool: Option<String>,
    /// How long the token lives, e.g. `30d` or `12h`; forever when left out.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: String,
    pub tenant: Option<String>,
    pub pool: Option<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// A token just created, with its secret: shown this once, never stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: TokenView,
    pub secret: String,
}

/// One of the server's background workers (its committer, its controller...;
/// not an agent, which the glossary calls a worker).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackgroundWorkerView {
    pub name: String,
    /// While a vital one is down (backing off or failed), `/healthz` is not ready.
    pub vital: bool,
    /// `running`, `idle`, `backing_off` (failed, runs again after a pause) or
    /// `failed` (for good).
    pub status: String,
    /// What its last failure (an error, or a panic) said, kept after it recovers.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// How many times it ran again after a failure.
    pub restarts: u64,
    /// When a round of its work last ended well.
    pub last_run_at: Option<String>,
}

/// One change recorded in the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    /// The name of the token that made the change (`corral`: the server itself).
    pub who: String,
    /// `pool`, `tenant`, `token` or `run`.
    pub kind: String,
    pub name: String,
    /// `create`, `update`, `delete`, `revoke` or `cancel`.
    pub action: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// Resources held over time and what that cost. `cost` is in the operator's
/// currency; `cost_micros` is the same amount exactly, in millionths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageAmounts {
    pub cpu_core_seconds: f64,
    pub memory_gib_seconds: f64,
    pub gpu_seconds: f64,
    pub cost: f64,
    pub cost_micros: i64,
}

/// What the attempts really used, by their agents' measure: cpu time, and
/// each attempt's memory peak held for its whole duration.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct UsedAmounts {
    pub cpu_core_seconds: f64,
    pub memory_gib_seconds: f64,
}

/// Used over allocated, per resource: 1 is all of it used; null where
/// nothing was allocated or nothing was measured.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct EfficiencyView {
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
}

/// One group of a usage report: its key values (by the report's keys) and
/// its usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRowView {
    pub key: BTreeMap<String, String>,
    pub usage: UsageAmounts,
    /// What the group's attempts that ended in the window really used.
    #[serde(default)]
    pub used: UsedAmounts,
    #[serde(default)]
    pub efficiency: EfficiencyView,
    /// With `idle=share`: the group's share of the idle cost of the pools it
    /// used (null otherwise), in the operator's currency and exactly in
    /// micro-units.
    #[serde(default)]
    pub idle_share: Option<f64>,
    #[serde(default)]
    pub idle_share_micros: Option<i64>,
    /// With `idle=share`: its cost and its idle share together.
    #[serde(default)]
    pub total_with_idle: Option<f64>,
    #[serde(default)]
    pub total_with_idle_micros: Option<i64>,
}

/// A pool's capacity over the window, what was allocated of it and what
/// nobody held, priced alike: `allocated + idle = capacity`, exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IdleView {
    pub pool: String,
    /// The UTC day, when the report is by day.
    pub day: Option<String>,
    pub capacity: UsageAmounts,
    pub allocated: UsageAmounts,
    pub idle: UsageAmounts,
    /// With `idle=share`: what of the idle cost was shared among the rows
    /// (all of it, unless nobody used the pool at some cost); null otherwise.
    #[serde(default)]
    pub shared: Option<f64>,
    #[serde(default)]
    pub shared_micros: Option<i64>,
}

/// Usage and cost of the allocations held within `[from, to)`, grouped as
/// asked. The rows add up to the total exactly, whatever the grouping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub by: Vec<String>,
    pub from: String,
    pub to: String,
    pub rows: Vec<UsageRowView>,
    pub total: UsageAmounts,
    #[serde(default)]
    pub total_used: UsedAmounts,
    #[serde(default)]
    pub total_efficiency: EfficiencyView,
    /// Idle capacity per pool (and day); empty for a tenant's token.
    pub idle: Vec<IdleView>,
    /// `separate` (idle cost in `idle` only) or `share` (each row also gets
    /// its share of the idle cost of the pools it used).
    #[serde(default = "separate")]
    pub idle_mode: String,
    /// The code of the currency amounts are in (the server's `--currency`).
    #[serde(default)]
    pub currency: String,
}

fn separate() -> String {
    "separate".into()
}

/// A budget threshold a tenant's spend crossed (once per month each), and its
/// delivery to the alert webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    pub tenant: String,
    /// The UTC month, `2026-11`.
    pub month: String,
    /// The fraction of the budget crossed, such as 0.8.
    pub threshold: f64,
    pub at: String,
    /// The month's spend when it fired.
    pub spent: f64,
    pub monthly: f64,
    pub message: String,
    /// Delivery attempts to the alert webhook so far.
    pub attempts: u32,
    /// Null until the webhook took it (or when no webhook is set).
    pub delivered_at: Option<String>,
    pub last_error: Option<String>,
}

/// A tenant's budget for a calendar month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetSummary {
    pub monthly: f64,
    /// `soft` (alerts only) or `hard` (new runs wait past it).
    pub enforce: String,
    pub alert_at: Vec<f64>,
}

/// Everything about a tenant at a glance: its quota and holdings, this
/// month's spend by pool against its budget, the month-end forecast, and what
/// it has waiting.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantSummary {
    pub tenant: TenantView,
    /// The UTC month the spend is for, `2026-11`.
    pub month: String,
    /// Month-to-date usage and cost per pool.
    pub usage_by_pool: Vec<UsageRowView>,
    /// Month-to-date spend, open allocations included up to now (against
    /// `tenant.budget`).
    pub spent: f64,
    /// The month's spend at the burn rate of the last 7 days.
    pub forecast: f64,
    /// The burn rate the forecast extrapolates, per day: the spend of the
    /// last 7 days (or of the tenant's life, when younger) over their length.
    pub daily_burn: f64,
    /// How the forecast is made, in a sentence with its numbers.
    pub forecast_basis: String,
    /// When the spend reaches the budget at that rate, if it does this month
    /// (now when it already has); none without a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_crosses_at: Option<String>,
    /// How its budget stands: `ok`, `alerting` (past an alert threshold),
    /// `over` (spent more than the budget) or `blocking` (a hard budget
    /// holding runs back); none without a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_health: Option<String>,
    /// Its waiting runs by what holds them back (`quota`, `budget`,
    /// `capacity`, `reservation`, `gang`, `placement`), as the last cycle
    /// decided.
    #[serde(default)]
    pub blocked_by: BTreeMap<String, u64>,
    /// Runs waiting for admission, and what they ask for in all.
    pub queued_runs: u64,
    pub queued_demand: ResourcesView,
    /// This month's budget alerts.
    pub alerts: Vec<AlertView>,
    /// Its share this month of the idle cost of the pools it used, in
    /// proportion to what its use of each cost (as `GET /api/v1/usage?idle=share`),
    /// and exactly in micro-units.
    #[serde(default)]
    pub idle_share: f64,
    #[serde(default)]
    pub idle_share_micros: i64,
    /// The code of the currency amounts are in (the server's `--currency`).
    #[serde(default)]
    pub currency: String,
}

/// A right-sizing recommendation for one step of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepRecommendationView {
    pub step: String,
    /// What the step asks for in its latest measured run.
    pub current: ResourcesView,
    /// What it would ask for: the 95th percentile of its measured peaks (cpu:
    /// of its average cores) over the runs below, plus a margin, rounded up.
    pub recommended: ResourcesView,
    /// Measured attempts it rests on (successful ones only).
    pub samples: u32,
    /// The runs those attempts belong to.
    pub runs: Vec<i64>,
    /// Peak memory measured, in MiB (the highest), and average cores used
    /// (the highest).
    pub peak_memory_mib: u64,
    pub peak_cpu_cores: f64,
    /// What the last 30 days' attempts of this step would have cost less at
    /// their pools' prices, per month, had they asked for `recommended`.
    pub monthly_saving: f64,
}

/// Right-sizing for a tenant's pipeline, per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecommendationView {
    pub tenant: String,
    pub pipeline: String,
    pub steps: Vec<StepRecommendationView>,
    /// The sum of the steps' monthly savings.
    pub monthly_saving: f64,
    /// How the recommendation is made, in a sentence.
    pub method: String,
}

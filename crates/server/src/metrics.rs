//! Prometheus metrics, served at `GET /metrics` in the text format (0.0.4).
//!
//! Two kinds, kept apart so that neither can drift from the API:
//! - What describes the present (pools' capacity and allocations, tenants'
//!   queues, holdings and budgets) is computed at each scrape from the
//!   committed read model's view, the same the API answers from: nothing is
//!   kept twice.
//! - What counts events (admissions, rejections, waits, ends, and the
//!   histograms of waits and run durations) is recorded as it happens: the
//!   engine notes each event in its operation's effects ([`Observed`]) and they
//!   are recorded once the store has committed them, so a failed commit counts
//!   nothing. They live in a `metrics-exporter-prometheus` recorder owned by the
//!   engine (not a process-wide one), which renders them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::background::{Job, JobError, Progress};
use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use corral_core::clock::Timestamp;
use corral_core::controller::ReasonCode;
use corral_core::money::Money;
use corral_core::pool::Provider;
use corral_core::resources::Resources;
use corral_core::run::RunState;
use corral_store::{RunRecord, Write};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::engine::Engine;
use crate::read_model::{QueueModel, View};
use crate::state::State;

/// The media type of the Prometheus text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const ADMISSIONS: &str = "corral_admissions_total";
const REJECTIONS: &str = "corral_rejections_total";
const WAITS: &str = "corral_waits_total";
const FINISHED: &str = "corral_runs_finished_total";
const ADMISSION_WAIT: &str = "corral_admission_wait_seconds";
const RUN_DURATION: &str = "corral_run_duration_seconds";
const REGISTRATIONS: &str = "corral_agent_registrations_total";
const CYCLE_DURATION: &str = "corral_cycle_duration_seconds";

/// From a cycle's half second to a day.
const ADMISSION_WAIT_BUCKETS: [f64; 18] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0, 43200.0, 86400.0,
];

/// From a step that only starts to a day's batch.
const RUN_DURATION_BUCKETS: [f64; 16] = [
    0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0, 86400.0,
];

/// From an idle queue's cycle to one that re-decides 100,000 runs.
const CYCLE_DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How often recorded observations are folded into the histograms between
/// scrapes, so that they never pile up.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder of counted events; the engine owns one.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(ADMISSION_WAIT.into()),
                &ADMISSION_WAIT_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(RUN_DURATION.into()), &RUN_DURATION_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(CYCLE_DURATION.into()),
                    &CYCLE_DURATION_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!(
                ADMISSIONS,
                "Runs admitted, by tenant: each run once, when its admission is committed."
            );
            metrics::describe_counter!(
                REJECTIONS,
                "Runs rejected because they can never fit, by tenant and reason code."
            );
            metrics::describe_counter!(
                WAITS,
                "Runs left waiting by a controller cycle, by tenant and reason code: each waiting run counts once per cycle."
            );
            metrics::describe_counter!(
                FINISHED,
                "Runs that ended, by tenant and final state (succeeded, failed, cancelled, rejected)."
            );
            metrics::describe_counter!(
                REGISTRATIONS,
                "Agents registered (each a new worker), by pool."
            );
            metrics::describe_histogram!(
                ADMISSION_WAIT,
                "Seconds from a run's submission to its admission, by tenant."
            );
            metrics::describe_histogram!(
                RUN_DURATION,
                "Seconds from the start of a run's first step to the run's end, by tenant and final state; runs that started no step are not counted."
            );
            metrics::describe_histogram!(
                CYCLE_DURATION,
                "Seconds each controller cycle held the engine: deciding on the queue and staging its decisions, without the commit."
            );
        });
        let handle = recorder.handle();
        Metrics { recorder, handle }
    }

    /// Records the events of an operation whose writes are committed.
    pub(crate) fn record(&self, observed: Observed) {
        if observed.0.is_empty() {
            return;
        }
        metrics::with_local_recorder(&self.recorder, || {
            for event in observed.0 {
                match event {
                    Event::Admitted { tenant, waited_ms } => {
                        metrics::counter!(ADMISSIONS, "tenant" => tenant.clone()).increment(1);
                        metrics::histogram!(ADMISSION_WAIT, "tenant" => tenant)
                            .record(seconds(waited_ms));
                    }
                    Event::Ended {
                        tenant,
                        state,
                        rejected,
                        ran_ms,
                    } => {
                        let state = state.as_str();
                        if let Some(code) = rejected {
                            metrics::counter!(REJECTIONS, "tenant" => tenant.clone(), "code" => code)
                                .increment(1);
                        }
                        if let Some(ran_ms) = ran_ms {
                            metrics::histogram!(RUN_DURATION, "tenant" => tenant.clone(), "state" => state)
                                .record(seconds(ran_ms));
                        }
                        metrics::counter!(FINISHED, "tenant" => tenant, "state" => state)
                            .increment(1);
                    }
                    Event::Registered { pool } => {
                        metrics::counter!(REGISTRATIONS, "pool" => pool).increment(1);
                    }
                    Event::Waiting { tenant, code, runs } => {
                        metrics::counter!(WAITS, "tenant" => tenant, "code" => code)
                            .increment(runs);
                    }
                }
            }
        });
    }

    /// Records how long a controller cycle took.
    pub(crate) fn cycle(&self, took: Duration) {
        metrics::with_local_recorder(&self.recorder, || {
            metrics::histogram!(CYCLE_DURATION).record(took.as_secs_f64());
        });
    }

    /// The upkeep worker: folds observations into the histograms now and
    /// then (a scrape does it too).
    pub(crate) fn upkeep(&self) -> MetricsUpkeep {
        MetricsUpkeep(self.handle.clone())
    }
}

/// The background worker of [`Metrics::upkeep`].
pub(crate) struct MetricsUpkeep(PrometheusHandle);

impl Job for MetricsUpkeep {
    async fn work(&mut self) -> Result<Progress, JobError> {
        self.0.run_upkeep();
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(UPKEEP_EVERY).await;
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// Something that happened, to be counted once its writes are committed.
#[derive(Debug)]
enum Event {
    Admitted {
        tenant: String,
        waited_ms: i64,
    },
    Ended {
        tenant: String,
        state: RunState,
        /// The reason's code, for a rejected run.
        rejected: Option<String>,
        /// From the start of its first step, if one started.
        ran_ms: Option<i64>,
    },
    Waiting {
        tenant: String,
        code: String,
        runs: u64,
    },
    Registered {
        pool: String,
    },
}

/// The events of one engine operation, recorded after its commit.
#[derive(Debug, Default)]
pub(crate) struct Observed(Vec<Event>);

impl Observed {
    /// An agent registered as a new worker of `pool`.
    pub fn registered(&mut self, pool: &str) {
        self.0.push(Event::Registered { pool: pool.into() });
    }

    /// A queued run is admitted now.
    pub fn admitted(&mut self, run: &RunRecord, now: Timestamp) {
        self.0.push(Event::Admitted {
            tenant: run.tenant.clone(),
            waited_ms: now.millis_since(run.created_at),
        });
    }

    /// The runs that `writes` end, seen in `state` before the writes apply
    /// (a run leaves the state with the write that ends it, so each ends once).
    pub fn ended(&mut self, state: &State, writes: &[Write]) {
        for write in writes {
            let Write::PutRun(run) = write else { continue };
            if !run.state.is_terminal() {
                continue;
            }
            let started = state
                .runs
                .get(&run.id)
                .and_then(|live| live.attempts.iter().filter_map(|a| a.started_at).min());
            let end = run.finished_at.unwrap_or(run.updated_at);
            self.0.push(Event::Ended {
                tenant: run.tenant.clone(),
                state: run.state,
                rejected: (run.state == RunState::Rejected)
                    .then(|| code_name(run.reason.as_ref().map(|r| r.code))),
                ran_ms: started.map(|s| end.millis_since(s)),
            });
        }
    }

    /// The runs still waiting after a cycle, each with its class's reason.
    pub fn waits(&mut self, state: &State) {
        for (class, reason) in state.waiting.iter() {
            let Some(class) = state.queue.class(*class) else {
                continue;
            };
            if class.runs.is_empty() {
                continue;
            }
            self.0.push(Event::Waiting {
                tenant: class.tenant.clone(),
                code: code_name(Some(reason.code)),
                runs: class.runs.len() as u64,
            });
        }
    }
}

/// A reason code as the API writes it (`tenant_quota`).
fn code_name(code: Option<ReasonCode>) -> String {
    code.and_then(|c| serde_json::to_value(c).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// A gauge family computed at scrape time, with its samples.
struct Gauge {
    name: String,
    help: String,
    samples: Vec<(String, f64)>,
}

impl Gauge {
    fn new(name: impl Into<String>, help: impl Into<String>) -> Gauge {
        Gauge {
            name: name.into(),
            help: help.into(),
            samples: Vec::new(),
        }
    }

    fn add(&mut self, label: &str, value: &str, sample: f64) {
        self.add_labelled(&[(label, value)], sample);
    }

    fn add_labelled(&mut self, labels: &[(&str, &str)], sample: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(label, value)| format!("{label}=\"{}\"", escape(value)))
            .collect();
        self.samples.push((labels.join(","), sample));
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{{{labels}}} {value}", self.name);
        }
        out.push('\n');
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The resources as gauges: cpu in cores, memory in bytes, gpus.
const DIMENSIONS: [(&str, &str); 3] = [
    ("cpu_cores", "CPU cores"),
    ("memory_bytes", "Bytes of memory"),
    ("gpus", "GPUs"),
];

fn amounts(r: &Resources) -> [f64; 3] {
    [
        r.cpu_millis as f64 / 1000.0,
        r.memory_mib as f64 * 1024.0 * 1024.0,
        r.gpu as f64,
    ]
}

/// Three gauges, one per resource: `{prefix}_cpu_cores`, `..._memory_bytes`, `..._gpus`.
fn resource_gauges(prefix: &str, what: &str) -> [Gauge; 3] {
    DIMENSIONS.map(|(unit, name)| Gauge::new(format!("{prefix}_{unit}"), format!("{name} {what}.")))
}

fn add_resources(gauges: &mut [Gauge; 3], label: &str, value: &str, r: &Resources) {
    for (gauge, amount) in gauges.iter_mut().zip(amounts(r)) {
        gauge.add(label, value, amount);
    }
}

/// The `resource` label of the gauges that carry one: cpu in cores, memory in
/// bytes, gpu and runs as counts.
const RESOURCES: [&str; 3] = ["cpu", "memory", "gpu"];

/// One sample per resource of `r`, labelled `{label}` and `resource`; an
/// unlimited amount (a quota left out) has none.
fn add_by_resource(gauge: &mut Gauge, label: &str, value: &str, r: &Resources) {
    let unlimited = [r.cpu_millis, r.memory_mib, r.gpu].map(|a| a == u64::MAX);
    for ((resource, amount), unlimited) in RESOURCES.iter().zip(amounts(r)).zip(unlimited) {
        if !unlimited {
            gauge.add_labelled(&[(label, value), ("resource", resource)], amount);
        }
    }
}

/// The gauges of the present, from the committed view: the same snapshot of
/// pools and tenants that `GET /api/v1/pools` and `/tenants` show, and the
/// queue (`queue`, as of its positions) that `GET /api/v1/queue` lists;
/// `spent` is this month's spend per tenant.
pub(crate) fn current(view: &View, queue: &QueueModel, spent: &BTreeMap<String, Money>) -> String {
    let snapshot = &view.snapshot;
    let mut capacity = resource_gauges(
        "corral_pool_capacity",
        "a pool has (a static pool: its live agents')",
    );
    let mut allocated = resource_gauges(
        "corral_pool_allocated",
        "allocated on a pool (its open allocations)",
    );
    let mut free = resource_gauges(
        "corral_pool_free",
        "free on a pool (capacity less allocated)",
    );
    let mut agents = Gauge::new(
        "corral_pool_agents",
        "Live agents of a pool (of a static pool, those that count in its capacity).",
    );
    let mut workers = Gauge::new(
        "corral_pool_workers",
        "Worker slots of a pool in use: its open allocations, one worker each.",
    );
    let mut max_workers = Gauge::new(
        "corral_pool_max_workers",
        "Open allocations a pool takes at most (its max_workers).",
    );
    for (name, pool) in &snapshot.pools {
        add_resources(&mut capacity, "pool", name, &pool.capacity);
        add_resources(&mut allocated, "pool", name, &pool.used);
        add_resources(
            &mut free,
            "pool",
            name,
            &pool.capacity.saturating_sub(&pool.used),
        );
        let static_pool = view
            .pools
            .get(name)
            .is_some_and(|p| p.spec.provider == Provider::Static);
        let count = match &pool.agents {
            Some(live) if static_pool => live.len() as u64,
            _ => view.agents.get(name).map_or(0, Vec::len) as u64,
        };
        agents.add("pool", name, count as f64);
        workers.add("pool", name, f64::from(pool.workers));
        max_workers.add("pool", name, f64::from(pool.max_workers));
    }

    let mut queued_runs = Gauge::new(
        "corral_tenant_queued_runs",
        "Runs of a tenant in state queued.",
    );
    let mut demand = resource_gauges(
        "corral_tenant_queued_demand",
        "a tenant's waiting runs ask for: its queued runs' requests, and the groups of its admitted runs waiting for a new worker",
    );
    let mut holdings = resource_gauges(
        "corral_tenant_allocated",
        "a tenant holds (its open allocations, across pools)",
    );
    let mut budget = Gauge::new(
        "corral_tenant_budget_monthly",
        "A tenant's budget per calendar month, in units of the operator's currency; tenants without a budget have none.",
    );
    let mut spend = Gauge::new(
        "corral_tenant_spend_month",
        "What a tenant spent in the current UTC calendar month, open allocations included up to now, in units of the operator's currency.",
    );
    for (name, spent) in spent {
        spend.add("tenant", name, spent.to_units_f64());
    }
    let waiting = crate::meter::queued_by_tenant(queue.queue());
    for (name, tenant) in &view.tenants {
        let (queued, asked) = waiting.get(name).copied().unwrap_or_default();
        queued_runs.add("tenant", name, queued as f64);
        add_resources(&mut demand, "tenant", name, &asked);
        let held = snapshot
            .tenants
            .get(name)
            .map(|t| t.used)
            .unwrap_or_default();
        add_resources(&mut holdings, "tenant", name, &held);
        if let Some(b) = &tenant.spec.budget {
            budget.add("tenant", name, b.monthly.to_units_f64());
        }
    }

    let governance = governance(view, queue);
    let mut out = String::new();
    for gauge in capacity
        .iter()
        .chain(&allocated)
        .chain(&free)
        .chain([&agents, &workers, &max_workers, &queued_runs])
        .chain(&demand)
        .chain(&holdings)
        .chain([&budget, &spend])
        .chain(&governance)
    {
        gauge.write(&mut out);
    }
    out
}

/// Quotas against holdings, room reserved, and waiting runs by reason, each
/// family with a `resource` or `code` label so that PromQL can divide and sum
/// them: `corral_tenant_allocated / corral_tenant_quota` is how full a quota
/// is. From the snapshot, the reservations and the queue's classes, so a
/// scrape costs O(pools + tenants + classes).
fn governance(view: &View, queue: &QueueModel) -> [Gauge; 4] {
    let snapshot = &view.snapshot;
    let mut quota = Gauge::new(
        "corral_tenant_quota",
        "A tenant's quota by resource: cpu in cores, memory in bytes, gpu and runs as counts; an unlimited one has no sample.",
    );
    let mut held = Gauge::new(
        "corral_tenant_allocated",
        "What a tenant holds now by resource (its open allocations across pools: cpu in cores, memory in bytes, gpu; runs holding allocations), to set against corral_tenant_quota.",
    );
    for (name, tenant) in &snapshot.tenants {
        add_by_resource(&mut quota, "tenant", name, &tenant.quota.resources);
        if tenant.quota.runs != u64::MAX {
            quota.add_labelled(
                &[("tenant", name), ("resource", "runs")],
                tenant.quota.runs as f64,
            );
        }
        add_by_resource(&mut held, "tenant", name, &tenant.used);
        held.add_labelled(
            &[("tenant", name), ("resource", "runs")],
            tenant.runs as f64,
        );
    }
    let mut reserved = Gauge::new(
        "corral_pool_reserved",
        "Room a pool holds for runs that waited too long (their demand, up to what it has free), by resource: cpu in cores, memory in bytes, gpu; as of the last controller cycle.",
    );
    for name in snapshot.pools.keys() {
        add_by_resource(
            &mut reserved,
            "pool",
            name,
            &view.reserved.get(name).copied().unwrap_or_default(),
        );
    }
    let mut queued = Gauge::new(
        "corral_queued_runs",
        "Runs waiting for admission now (queued, or admitted and waiting for a group whose worker was lost), by tenant and the reason code of the last controller cycle (pending: not looked at by a cycle yet).",
    );
    let mut by_code: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for class in queue.queue().classes() {
        let code = queue
            .waiting()
            .get(&class.id)
            .map_or_else(|| "pending".to_string(), |r| code_name(Some(r.code)));
        *by_code.entry((class.tenant.as_str(), code)).or_default() += class.runs.len() as u64;
    }
    for ((tenant, code), runs) in by_code {
        if runs > 0 {
            queued.add_labelled(&[("tenant", tenant), ("code", &code)], runs as f64);
        }
    }
    [quota, held, reserved, queued]
}

/// Prometheus metrics, in the text format.
///
/// Gauges of pools (capacity, allocated, free, agents, workers, reserved) and tenants
/// (queued runs and demand, holdings, quotas, budgets, spend this month), waiting
/// runs by tenant and reason code, counters of admissions,
/// rejections, waits and ends, and histograms of admission waits and run
/// durations; every metric has HELP and TYPE lines. Takes a `viewer` or `admin`
/// token, or none when the server runs with `--metrics-public`.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, content_type = "text/plain; version=0.0.4; charset=utf-8", body = String,
        description = "The Prometheus text format, version 0.0.4")))]
pub(crate) async fn scrape(AxumState(engine): AxumState<Arc<Engine>>) -> Response {
    // This month's spend is priced from the engine's spend book, under its
    // lock; everything else is read from the committed view.
    let spent = engine.read().await.spend_by_tenant(engine.now());
    let mut text = current(
        &engine.read_model().view(),
        &engine.read_model().positions(),
        &spent,
    );
    text.push_str(&engine.metrics().handle.render());
    text.push_str(&crate::http::metrics_text());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use corral_core::pool::PoolSpec;
    use corral_core::tenant::TenantSpec;
    use corral_core::usage::UsageLedger;
    use corral_store::{Live, PoolRecord, TenantRecord};
    use serde_json::json;

    use super::*;
    use crate::meter::SpendBook;

    fn state() -> State {
        let t = Timestamp(0);
        let pool = |spec| PoolRecord {
            spec: PoolSpec::parse(spec).expect("a pool"),
            created_at: t,
            updated_at: t,
        };
        let tenant = |spec| TenantRecord {
            spec: TenantSpec::parse(spec).expect("a tenant"),
            created_at: t,
            updated_at: t,
        };
        let live = Live {
            pools: vec![
                pool(json!({"name": "gpu", "capacity": {"cpu": "1.5", "memory": "2Gi", "gpu": 2}})),
                pool(json!({"name": "metal", "provider": "static"})),
            ],
            tenants: vec![
                tenant(json!({"name": "acme", "budget": {"monthly": 12.5},
                    "quota": {"cpu": "1500m", "gpu": 2, "runs": 3}})),
                tenant(json!({"name": "free"})),
            ],
            ..Live::default()
        };
        State::from_live(live, UsageLedger::new(3_600_000), SpendBook::default(), t)
    }

    /// The gauges of `state`'s view.
    fn text(state: &State) -> String {
        let view = Arc::new(View::of(state, Timestamp(0)));
        let queue = QueueModel::of(view.clone());
        current(&view, &queue, &state.spend_by_tenant(Timestamp(0)))
    }

    fn recorded() -> Metrics {
        let metrics = Metrics::new();
        let tenant = || "acme".to_string();
        metrics.record(Observed(vec![
            Event::Admitted {
                tenant: tenant(),
                waited_ms: 1500,
            },
            Event::Ended {
                tenant: tenant(),
                state: RunState::Succeeded,
                rejected: None,
                ran_ms: Some(2000),
            },
            Event::Ended {
                tenant: tenant(),
                state: RunState::Rejected,
                rejected: Some("larger_than_pools".into()),
                ran_ms: None,
            },
            Event::Waiting {
                tenant: tenant(),
                code: "tenant_quota".into(),
                runs: 3,
            },
        ]));
        metrics.cycle(Duration::from_millis(3));
        metrics
    }

    #[test]
    fn gauges_are_in_base_units_and_budgets_only_where_there_is_one() {
        let text = text(&state());
        for line in [
            "corral_pool_capacity_cpu_cores{pool=\"gpu\"} 1.5",
            "corral_pool_capacity_memory_bytes{pool=\"gpu\"} 2147483648",
            "corral_pool_free_gpus{pool=\"gpu\"} 2",
            "corral_pool_capacity_cpu_cores{pool=\"metal\"} 0",
            "corral_pool_agents{pool=\"metal\"} 0",
            "corral_pool_max_workers{pool=\"gpu\"} 16",
            "corral_tenant_queued_runs{tenant=\"free\"} 0",
            "corral_tenant_budget_monthly{tenant=\"acme\"} 12.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("corral_tenant_budget_monthly{tenant=\"free\"}"));
    }

    #[test]
    fn quotas_have_a_sample_per_limited_resource_and_holdings_one_per_resource() {
        let text = text(&state());
        for line in [
            "corral_tenant_quota{tenant=\"acme\",resource=\"cpu\"} 1.5",
            "corral_tenant_quota{tenant=\"acme\",resource=\"gpu\"} 2",
            "corral_tenant_quota{tenant=\"acme\",resource=\"runs\"} 3",
            "corral_tenant_allocated{tenant=\"acme\",resource=\"cpu\"} 0",
            "corral_tenant_allocated{tenant=\"free\",resource=\"memory\"} 0",
            "corral_tenant_allocated{tenant=\"free\",resource=\"runs\"} 0",
            "corral_pool_reserved{pool=\"gpu\",resource=\"gpu\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        for unlimited in [
            "corral_tenant_quota{tenant=\"acme\",resource=\"memory\"}",
            "corral_tenant_quota{tenant=\"free\"",
        ] {
            assert!(!text.contains(unlimited), "{unlimited} in\n{text}");
        }
        // Nothing waits: no family of waiting runs at all.
        assert!(!text.contains("corral_queued_runs"), "{text}");
    }

    #[test]
    fn every_sample_belongs_to_a_family_with_help_and_type() {
        let metrics = recorded();
        let text = text(&state()) + &metrics.handle.render();
        let mut help = BTreeSet::new();
        let mut kinds = BTreeMap::new();
        let mut samples = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.splitn(4, ' ').collect();
            match words[..] {
                ["#", "HELP", name, _] => {
                    help.insert(name.to_string());
                }
                ["#", "TYPE", name, kind] => {
                    kinds.insert(name.to_string(), kind.to_string());
                }
                _ => {
                    samples += 1;
                    let name = line.split(['{', ' ']).next().unwrap_or_default();
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| {
                            name.strip_suffix(s)
                                .filter(|f| kinds.get(*f).is_some_and(|k| k == "histogram"))
                        })
                        .unwrap_or(name);
                    assert!(help.contains(family), "{line}: no HELP");
                    assert!(kinds.contains_key(family), "{line}: no TYPE");
                }
            }
        }
        assert!(samples > 50, "{text}");
        for (name, kind) in [
            (ADMISSIONS, "counter"),
            (REJECTIONS, "counter"),
            (WAITS, "counter"),
            (FINISHED, "counter"),
            (ADMISSION_WAIT, "histogram"),
            (RUN_DURATION, "histogram"),
            (CYCLE_DURATION, "histogram"),
        ] {
            assert_eq!(kinds.get(name).map(String::as_str), Some(kind), "{name}");
        }
        assert!(text.contains("corral_waits_total{tenant=\"acme\",code=\"tenant_quota\"} 3\n"));
        assert!(
            text.contains("corral_admission_wait_seconds_bucket{tenant=\"acme\",le=\"2.5\"} 1\n")
        );
        assert!(text.contains("corral_cycle_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("corral_cycle_duration_seconds_bucket{le=\"0.005\"} 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}

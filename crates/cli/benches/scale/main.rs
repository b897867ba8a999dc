//! The server at 100,000 queued runs: issue 21's "Measure" figures, taken on
//! the real `corral server` (the release binary built with this bench, a
//! child process on a fresh SQLite data dir). Run with
//! `cargo bench -p corral --bench scale`; `CORRAL_SCALE_RUNS=10000` for a
//! quick run. No figure is asserted: the bench prints them.
//!
//! The world: `CORRAL_SCALE_TENANTS` tenants (200) submit one-step runs in
//! `CORRAL_SCALE_SHAPES` shapes each (50 cpu/memory requests), so the queue
//! has tenants x shapes classes (10,000); each tenant's cpu quota holds its
//! largest shape, and all their runs go to the static pool `work`, whose one
//! simulated agent (4 cpu) holds a few runs at a time: nearly every run
//! stays queued. Another tenant, `probe`, has a static pool of its own.
//! Reservations are put off (`--starvation-after 24h`) so the world does not
//! change under the measurement as runs grow old.
//!
//! The phases:
//! 1. seed `CORRAL_SCALE_RUNS` runs (100,000) through [`seed`], and read
//!    the server's RSS (`VmRSS` of `/proc/PID/status`);
//! 2. the cycle after one run ends: with the work pool full, end one of its
//!    runs and time until its agent is handed the run admitted in its place
//!    (end report sent to assignment received: the cycle, its commit and the
//!    poll's wake-up, seen from outside); and `corral_cycle_duration_seconds`
//!    from `/metrics` when the server has it;
//! 3. churn, `CORRAL_SCALE_SECS` (30 s): the work agent ends each run after
//!    `CORRAL_SCALE_HOLD_MS` (500 ms) and a new run is submitted for each
//!    ended one, so cycles keep running; meanwhile readers time
//!    `GET /api/v1/runs/{id}` of queued runs, `GET /api/v1/queue?limit=10` and
//!    `GET /api/v1/pools` (each one request at a time), and the probe
//!    tenant's one-step runs are timed from submit to end;
//! 4. the same with `CORRAL_SCALE_AGENTS` (1,000) simulated agents polling a
//!    static pool of their own.

mod agents;
mod histogram;
#[path = "../support/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::{Assignment, ResourcesView, RunSummary, SubmittedRuns, TokenCreated};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use agents::{PollCounts, SimAgent};
use histogram::{Histogram, histograms};
use server::{Api, ServerProcess};

/// The histogram the incremental controller's server exports.
const CYCLE_HISTOGRAM: &str = "corral_cycle_duration_seconds";

/// Submits in flight at once while seeding, and registrations.
const CONCURRENCY: usize = 32;

/// Times a run of the full work pool is ended to time the cycle after it.
const END_TRIALS: usize = 10;

/// The work pool's one agent: room for a handful of runs.
const WORK_AGENT: ResourcesView = ResourcesView {
    cpu_millis: 4_000,
    memory_mib: 65_536,
    gpu: 0,
};

/// Pause between two requests of one reader.
const READ_PAUSE: Duration = Duration::from_millis(10);

/// The bench's sizes, each from its environment variable.
struct Config {
    runs: usize,
    tenants: usize,
    shapes: usize,
    agents: usize,
    secs: u64,
    hold_ms: u64,
}

/// `name` from the environment, `default` when unset; a number in `range`.
fn env_number(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64> {
    let Ok(text) = std::env::var(name) else {
        return Ok(default);
    };
    text.trim()
        .replace('_', "")
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .with_context(|| {
            format!(
                "{name}: {text:?} is not a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })
}

impl Config {
    fn from_env() -> Result<Config> {
        let size = |name: &str, default: u64, range| -> Result<usize> {
            usize::try_from(env_number(name, default, range)?).context("a size fits usize")
        };
        Ok(Config {
            runs: size("CORRAL_SCALE_RUNS", 100_000, 1..=1_000_000)?,
            tenants: size("CORRAL_SCALE_TENANTS", 200, 1..=10_000)?,
            shapes: size("CORRAL_SCALE_SHAPES", 50, 1..=1_000)?,
            agents: size("CORRAL_SCALE_AGENTS", 1_000, 0..=4_000)?,
            secs: env_number("CORRAL_SCALE_SECS", 30, 1..=3_600)?,
            hold_ms: env_number("CORRAL_SCALE_HOLD_MS", 500, 0..=60_000)?,
        })
    }
}

/// The runs the bench submits: run `k` is tenant `k % tenants`'s, in shape
/// `(k / tenants) % shapes`, so the first tenants x shapes runs make one
/// class each.
struct Plan {
    tenants: usize,
    shapes: usize,
}

impl Plan {
    /// Shape `s` asks for (s+1) x 10m cpu and 64+s MiB.
    fn shape(s: usize) -> (usize, usize) {
        ((s + 1) * 10, 64 + s)
    }

    fn pipeline(&self, k: usize) -> String {
        let tenant = k % self.tenants;
        let shape = (k / self.tenants) % self.shapes;
        let (cpu, memory) = Plan::shape(shape);
        format!(
            "kind: Pipeline\nname: shape-{shape}\ntenant: t{tenant:04}\nsteps:\n  - {{name: s, run: 'true', pool: work, resources: {{cpu: {cpu}m, memory: {memory}Mi}}}}\n"
        )
    }

    /// The pools and tenants: each tenant's quota holds its largest shape.
    fn catalog(&self) -> String {
        let (quota, _) = Plan::shape(self.shapes - 1);
        let mut yaml = String::from(
            "kind: Pool\nname: work\nprovider: static\n---\nkind: Pool\nname: probe\nprovider: static\n---\nkind: Pool\nname: idle\nprovider: static\n---\nkind: Tenant\nname: probe\n",
        );
        for t in 0..self.tenants {
            yaml.push_str(&format!(
                "---\nkind: Tenant\nname: t{t:04}\nquota: {{cpu: {quota}m}}\n"
            ));
        }
        yaml
    }

    fn classes(&self, runs: usize) -> usize {
        runs.min(self.tenants * self.shapes)
    }
}

const PROBE_PIPELINE: &str = "kind: Pipeline\nname: probe\ntenant: probe\nsteps:\n  - {name: s, run: 'true', pool: probe, resources: {cpu: 100m, memory: 64Mi}}\n";

/// Submits runs `0..runs` of `plan` and answers their ids: one bulk submit per
/// class, [`CONCURRENCY`] at a time.
async fn seed(api: &Api, plan: &Plan, runs: usize) -> Result<Vec<i64>> {
    // One bulk submit (`?count=N`) per class: the classes' pipelines differ
    // in tenant and shape, and a class's runs are alike.
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    let classes = plan.classes(runs).max(1);
    let batches: Vec<Vec<i64>> = futures::stream::iter(0..classes)
        .map(|k| {
            let done = &done;
            let count = runs / classes + usize::from(k < runs % classes);
            async move {
                if count == 0 {
                    return Ok(Vec::new());
                }
                let submitted: SubmittedRuns = api
                    .post_yaml(&format!("/api/v1/runs?count={count}"), plan.pipeline(k))
                    .await?;
                let before = done.fetch_add(count, Ordering::Relaxed);
                if (before + count) / 10_000 > before / 10_000 {
                    eprintln!(
                        "  {} submitted in {:.0} s",
                        before + count,
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok::<Vec<i64>, anyhow::Error>(submitted.runs.into_iter().map(|r| r.id).collect())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    Ok(batches.into_iter().flatten().collect())
}

/// Times of one kind of request (or of a probe run).
#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    /// Answers not counted (a run read that was no longer queued).
    skipped: u64,
    errors: u64,
}

impl Samples {
    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(idx).copied().unwrap_or_default()
    }

    fn row(&self, figure: &str) -> String {
        let mut sorted = self.times.clone();
        sorted.sort_unstable();
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        format!(
            "{figure:<46} {:>6} {:>9} {:>9} {:>9}{}",
            sorted.len(),
            ms(Samples::percentile(&sorted, 0.5)),
            ms(Samples::percentile(&sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or_default()),
            match (self.skipped, self.errors) {
                (0, 0) => String::new(),
                (s, 0) => format!("  ({s} not queued any more)"),
                (s, e) => format!("  ({s} not queued any more, {e} errors)"),
            }
        )
    }
}

const HEADER: &str =
    "figure                                              n   p50 ms    p99 ms    max ms";

/// Reads `path(i)` one request at a time until `until`; `queued_only` counts
/// only answers of a run still queued.
async fn read_loop(
    api: Api,
    path: impl Fn(usize) -> String,
    queued_only: bool,
    until: Instant,
) -> Samples {
    let mut samples = Samples::default();
    let mut i = 0;
    while Instant::now() < until {
        let path = path(i);
        i += 1;
        let start = Instant::now();
        match api.get_text(&path).await {
            Ok(text) => {
                let took = start.elapsed();
                let queued = !queued_only
                    || serde_json::from_str::<serde_json::Value>(&text)
                        .is_ok_and(|run| run["state"] == "queued");
                if queued {
                    samples.times.push(took);
                } else {
                    samples.skipped += 1;
                }
            }
            Err(e) => {
                if samples.errors == 0 {
                    eprintln!("{e:#}");
                }
                samples.errors += 1;
            }
        }
        tokio::time::sleep(READ_PAUSE).await;
    }
    samples
}

/// The probe tenant's runs, one at a time until `until`: submit to end by
/// the server's clock (`created_at` to `finished_at`) and by the bench's
/// (submit sent to end reported and committed).
async fn probe_loop(
    admin: Api,
    ended: &mut mpsc::UnboundedReceiver<i64>,
    until: Instant,
) -> Result<(Samples, Samples)> {
    let (mut server_side, mut client_side) = (Samples::default(), Samples::default());
    let millis = |text: &str| -> Result<i64> {
        Ok(chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("a time: {text}"))?
            .timestamp_millis())
    };
    while Instant::now() < until {
        let start = Instant::now();
        let run: RunSummary = admin
            .post_yaml("/api/v1/runs", PROBE_PIPELINE.to_string())
            .await?;
        loop {
            let id = tokio::time::timeout(Duration::from_secs(120), ended.recv())
                .await
                .with_context(|| format!("probe run {} did not end within 120 s", run.id))?
                .context("the probe agent stopped")?;
            if id == run.id {
                break;
            }
        }
        client_side.times.push(start.elapsed());
        let run: RunSummary = admin.get(&format!("/api/v1/runs/{}", run.id)).await?;
        let finished = run.finished_at.as_deref().context("an ended run's end")?;
        let took = millis(finished)? - millis(&run.created_at)?;
        server_side
            .times
            .push(Duration::from_millis(u64::try_from(took).unwrap_or(0)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((server_side, client_side))
}

/// The cycle histograms of `/metrics` (empty when the server has none).
async fn cycle_histograms(admin: &Api) -> Result<BTreeMap<String, Histogram>> {
    Ok(histograms(
        &admin.get_text("/metrics").await?,
        CYCLE_HISTOGRAM,
    ))
}

/// The cycles between two readings of `/metrics`, one line per series.
fn cycle_rows(
    before: &BTreeMap<String, Histogram>,
    after: &BTreeMap<String, Histogram>,
) -> Vec<String> {
    if after.is_empty() {
        return vec![format!("{CYCLE_HISTOGRAM}: not in this server's /metrics")];
    }
    after
        .iter()
        .map(|(labels, h)| {
            let h = h.since(before.get(labels));
            let ms = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.1}", s * 1000.0));
            let mean = (h.count > 0.0).then(|| h.sum / h.count);
            format!(
                "{CYCLE_HISTOGRAM}{{{labels}}}: {} cycles, mean {} ms, p50 <= {} ms, p99 <= {} ms",
                h.count,
                ms(mean),
                ms(h.quantile_bound(0.5)),
                ms(h.quantile_bound(0.99)),
            )
        })
        .collect()
}

/// What the work pool's runs did during a phase.
#[derive(Default)]
struct ChurnCounts {
    ended: AtomicU64,
    submitted: AtomicU64,
    errors: AtomicU64,
}

/// The work pool's churn: its agent, how long it holds each run, and what
/// it submits in place of the runs it ends.
struct Churn {
    work: Arc<SimAgent>,
    admin: Api,
    hold: Duration,
    plan: Arc<Plan>,
    /// The next run of the plan to submit.
    next: Arc<AtomicUsize>,
    counts: Arc<ChurnCounts>,
}

/// Ends each of the work agent's runs `hold` after it was handed over and
/// submits a new run in its place, until `stop`.
fn spawn_churn(
    churn: Churn,
    mut handed: mpsc::UnboundedReceiver<Assignment>,
    held: Vec<Assignment>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let Churn {
        work,
        admin,
        hold,
        plan,
        next,
        counts,
    } = churn;
    tokio::spawn(async move {
        let mut held = held.into_iter();
        // Each run's end, aborted with the rest when the churn stops.
        let mut ends = tokio::task::JoinSet::new();
        loop {
            while ends.try_join_next().is_some() {}
            let assignment = match held.next() {
                Some(a) => a,
                None => tokio::select! {
                    a = handed.recv() => match a {
                        Some(a) => a,
                        None => break,
                    },
                    _ = stop.changed() => break,
                },
            };
            let (work, admin, plan, next, counts) = (
                Arc::clone(&work),
                admin.clone(),
                Arc::clone(&plan),
                Arc::clone(&next),
                Arc::clone(&counts),
            );
            ends.spawn(async move {
                tokio::time::sleep(hold).await;
                let replaced = async {
                    work.succeed(assignment.attempt_id).await?;
                    counts.ended.fetch_add(1, Ordering::Relaxed);
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let _: RunSummary = admin.post_yaml("/api/v1/runs", plan.pipeline(k)).await?;
                    counts.submitted.fetch_add(1, Ordering::Relaxed);
                    Ok::<(), anyhow::Error>(())
                };
                if let Err(e) = replaced.await
                    && counts.errors.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("churn: {e:#}");
                }
            });
        }
    })
}

/// Everything measured while cycles run.
struct Phase {
    label: String,
    run: Samples,
    queue: Samples,
    pools: Samples,
    probe_server: Samples,
    probe_client: Samples,
    cycles: Vec<String>,
    ended: u64,
    queued_after: u64,
    rss_kib: (u64, u64),
}

impl Phase {
    fn print(&self, secs: u64) {
        println!("\n{} ({secs} s)", self.label);
        println!("{HEADER}");
        println!("{}", self.run.row("GET /api/v1/runs/{id} (a queued run)"));
        println!("{}", self.queue.row("GET /api/v1/queue?limit=10"));
        println!("{}", self.pools.row("GET /api/v1/pools"));
        println!(
            "{}",
            self.probe_server
                .row("probe run, submit to end (server clock)")
        );
        println!(
            "{}",
            self.probe_client
                .row("probe run, submit to end seen by the bench")
        );
        for line in &self.cycles {
            println!("{line}");
        }
        println!(
            "work runs ended (and as many submitted): {} ({:.1}/s); queued at the end: {}; server RSS {} MiB (peak {} MiB)",
            self.ended,
            self.ended as f64 / secs as f64,
            self.queued_after,
            self.rss_kib.0 / 1024,
            self.rss_kib.1 / 1024
        );
    }
}

/// Runs the readers and the probe for `secs` while the churn goes on.
async fn measure(
    label: &str,
    server: &ServerProcess,
    admin: &Api,
    ids: &Arc<Vec<i64>>,
    probe_ended: &mut mpsc::UnboundedReceiver<i64>,
    churn: &ChurnCounts,
    secs: u64,
) -> Result<Phase> {
    eprintln!("{label}: measuring for {secs} s...");
    let cycles_before = cycle_histograms(admin).await?;
    let ended_before = churn.ended.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(secs);
    let readers = Api::new(&server.url, &server.admin_token)?;
    let run_ids = Arc::clone(ids);
    // A stride through the seeded runs: each read is of another run,
    // spread over the whole queue.
    let run = read_loop(
        readers.clone(),
        move |i| format!("/api/v1/runs/{}", run_ids[(i * 7_919) % run_ids.len()]),
        true,
        until,
    );
    let queue = read_loop(
        readers.clone(),
        |_| "/api/v1/queue?limit=10".into(),
        false,
        until,
    );
    let pools = read_loop(readers, |_| "/api/v1/pools".into(), false, until);
    let probe = probe_loop(admin.clone(), probe_ended, until);
    let (run, queue, pools, probe) = tokio::join!(run, queue, pools, probe);
    let (probe_server, probe_client) = probe?;
    let cycles_after = cycle_histograms(admin).await?;
    Ok(Phase {
        label: label.to_string(),
        run,
        queue,
        pools,
        probe_server,
        probe_client,
        cycles: cycle_rows(&cycles_before, &cycles_after),
        ended: churn.ended.load(Ordering::Relaxed) - ended_before,
        queued_after: admin.total_count("/api/v1/queue?limit=1").await?,
        rss_kib: server.rss_kib()?,
    })
}

/// Receives what the work agent is handed until nothing comes for 2 s (its
/// pool is full), at most for `within`.
async fn settle(
    handed: &mut mpsc::UnboundedReceiver<Assignment>,
    held: &mut Vec<Assignment>,
    within: Duration,
) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(2), handed.recv()).await {
            Ok(Some(a)) => held.push(a),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Ends one run of the full work pool at a time and times until the agent is
/// handed the next one: the cycle after one run ends, seen from outside.
async fn cycle_after_one_end(
    work: &SimAgent,
    handed: &mut mpsc::UnboundedReceiver<Assignment>,
    held: &mut Vec<Assignment>,
) -> Result<(Samples, usize)> {
    let mut samples = Samples::default();
    let mut missed = 0;
    for _ in 0..END_TRIALS {
        let Some(ended) = held.pop() else {
            bail!("the work pool holds no run to end");
        };
        let start = Instant::now();
        work.succeed(ended.attempt_id).await?;
        match tokio::time::timeout(Duration::from_secs(10), handed.recv()).await {
            Ok(Some(next)) => {
                samples.times.push(start.elapsed());
                held.push(next);
            }
            Ok(None) => bail!("the work agent stopped"),
            Err(_) => missed += 1,
        }
        // Whatever else the cycle admitted, so the next trial starts full.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(a) = handed.try_recv() {
            held.push(a);
        }
    }
    Ok((samples, missed))
}

/// Creates an `agent` token of `pool` and answers its secret.
async fn agent_token(admin: &Api, pool: &str) -> Result<String> {
    let text = admin
        .post_json(
            "/api/v1/tokens",
            &serde_json::json!({"name": format!("agents-{pool}"), "role": "agent", "pool": pool}),
        )
        .await?;
    let created: TokenCreated =
        serde_json::from_str(&text).with_context(|| format!("a token: {text}"))?;
    Ok(created.secret)
}

fn main() -> Result<()> {
    let config = Config::from_env()?;
    // The bench holds a connection per polling agent.
    corral_server::http::raise_open_files_limit();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("a tokio runtime")?
        .block_on(bench(config))
}

async fn bench(config: Config) -> Result<()> {
    let plan = Arc::new(Plan {
        tenants: config.tenants,
        shapes: config.shapes,
    });
    // One client address holds every simulated agent's poll, readers and
    // submits: lift the per-address cap above them.
    let server = ServerProcess::start(
        "scale",
        &[
            "--max-connections-per-address",
            "3500",
            "--starvation-after",
            "24h",
        ],
    )
    .await?;
    println!(
        "corral scale bench: server pid {} ({}), {} runs of {} tenants x {} shapes ({} classes); load average {}",
        server.pid,
        server.url,
        config.runs,
        config.tenants,
        config.shapes,
        plan.classes(config.runs),
        load_average()
    );
    let admin = Api::new(&server.url, &server.admin_token)?;
    let _: serde_json::Value = admin.post_yaml("/api/v1/apply", plan.catalog()).await?;
    let (stop_tx, stop) = watch::channel(false);
    let agent_http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .context("an HTTP client for the agents")?;
    let agents_api = Api::with_client(agent_http, &server.url, "");

    // The work pool's agent, holding what it is handed until told.
    let work_counts = Arc::new(PollCounts::default());
    let work = SimAgent::register(
        &agents_api.as_bearer(&agent_token(&admin, "work").await?),
        "work",
        "work-0",
        WORK_AGENT,
    )
    .await?;
    let (work_tx, mut work_handed) = mpsc::unbounded_channel();
    let mut polls = vec![work.spawn_polls(Some(work_tx), Arc::clone(&work_counts), stop.clone())];

    // The probe pool's agent ends each run at once.
    let probe = SimAgent::register(
        &agents_api.as_bearer(&agent_token(&admin, "probe").await?),
        "probe",
        "probe-0",
        ResourcesView {
            cpu_millis: 1_000,
            memory_mib: 1_024,
            gpu: 0,
        },
    )
    .await?;
    let (probe_tx, mut probe_handed) = mpsc::unbounded_channel::<Assignment>();
    polls.push(probe.spawn_polls(
        Some(probe_tx),
        Arc::new(PollCounts::default()),
        stop.clone(),
    ));
    let (probe_ended_tx, mut probe_ended) = mpsc::unbounded_channel::<i64>();
    let probe_runner = Arc::clone(&probe);
    tokio::spawn(async move {
        while let Some(a) = probe_handed.recv().await {
            match probe_runner.succeed(a.attempt_id).await {
                Ok(()) => {
                    let _ = probe_ended_tx.send(a.run_id);
                }
                Err(e) => eprintln!("probe agent: {e:#}"),
            }
        }
    });

    eprintln!(
        "seeding {} runs, {CONCURRENCY} submits at a time...",
        config.runs
    );
    let started = Instant::now();
    let ids = Arc::new(seed(&admin, &plan, config.runs).await?);
    let seeding = started.elapsed();
    let seeded_rss = server.rss_kib()?;
    let mut held = Vec::new();
    settle(&mut work_handed, &mut held, Duration::from_secs(120)).await;
    let queued = admin.total_count("/api/v1/queue?limit=1").await?;
    let after_seeding = cycle_histograms(&admin).await?;

    eprintln!("the cycle after one run ends: {END_TRIALS} trials...");
    let (one_end, missed) = cycle_after_one_end(&work, &mut work_handed, &mut held).await?;
    let one_end_cycles = cycle_rows(&after_seeding, &cycle_histograms(&admin).await?);

    let churn = Arc::new(ChurnCounts::default());
    let churner = spawn_churn(
        Churn {
            work: Arc::clone(&work),
            admin: admin.clone(),
            hold: Duration::from_millis(config.hold_ms),
            plan: Arc::clone(&plan),
            next: Arc::new(AtomicUsize::new(config.runs)),
            counts: Arc::clone(&churn),
        },
        work_handed,
        held,
        stop.clone(),
    );
    let churning = measure(
        "churn",
        &server,
        &admin,
        &ids,
        &mut probe_ended,
        &churn,
        config.secs,
    )
    .await?;

    eprintln!("registering {} polling agents...", config.agents);
    let idle_api = agents_api.as_bearer(&agent_token(&admin, "idle").await?);
    let idle_counts = Arc::new(PollCounts::default());
    let registering = Instant::now();
    // Each agent polls from its registration on, as a real one does, so
    // none is lost while the others register.
    let idle: Vec<(Arc<SimAgent>, tokio::task::JoinHandle<()>)> =
        futures::stream::iter(0..config.agents)
            .map(|i| {
                let (idle_api, idle_counts, stop) = (&idle_api, &idle_counts, &stop);
                async move {
                    let agent = SimAgent::register(
                        idle_api,
                        "idle",
                        &format!("idle-{i}"),
                        ResourcesView {
                            cpu_millis: 1_000,
                            memory_mib: 1_024,
                            gpu: 0,
                        },
                    )
                    .await?;
                    let polls = agent.spawn_polls(None, Arc::clone(idle_counts), stop.clone());
                    Ok::<_, anyhow::Error>((agent, polls))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
    let registered = registering.elapsed();
    let (idle, idle_polls): (Vec<Arc<SimAgent>>, Vec<_>) = idle.into_iter().unzip();
    polls.extend(idle_polls);
    // Let every agent's first poll in before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_polls_before = idle_counts.polls.load(Ordering::Relaxed);
    let with_agents = measure(
        &format!("churn with {} agents polling", config.agents),
        &server,
        &admin,
        &ids,
        &mut probe_ended,
        &churn,
        config.secs,
    )
    .await?;
    let idle_polls = idle_counts.polls.load(Ordering::Relaxed) - idle_polls_before;

    let _ = stop_tx.send(true);
    for poll in polls {
        let _ = poll.await;
    }
    let _ = churner.await;

    println!(
        "seeding: {} runs in {:.1} s ({:.0} runs/s, {CONCURRENCY} requests at a time, one POST /api/v1/runs?count=N per class)",
        ids.len(),
        seeding.as_secs_f64(),
        ids.len() as f64 / seeding.as_secs_f64()
    );
    println!(
        "server RSS after seeding: {} MiB (peak {} MiB); queued once the work pool was full: {queued}",
        seeded_rss.0 / 1024,
        seeded_rss.1 / 1024
    );
    println!(
        "\nthe cycle after one run ends (work pool full, {} queued runs)",
        queued
    );
    println!("{HEADER}");
    println!(
        "{}{}",
        one_end.row("run ended to the next one handed to the agent"),
        if missed > 0 {
            format!("  ({missed} trials admitted nothing within 10 s)")
        } else {
            String::new()
        }
    );
    for line in &one_end_cycles {
        println!("{line}");
    }
    churning.print(config.secs);
    with_agents.print(config.secs);
    println!(
        "{} agents registered in {:.1} s; {} polls during the phase ({:.0}/s), {} errors, {} told to shut down",
        idle.len(),
        registered.as_secs_f64(),
        idle_polls,
        idle_polls as f64 / config.secs as f64,
        idle_counts.errors.load(Ordering::Relaxed),
        idle_counts.shutdowns.load(Ordering::Relaxed)
    );
    println!(
        "churn: {} runs ended, {} submitted, {} errors; work agent: {} polls, {} errors",
        churn.ended.load(Ordering::Relaxed),
        churn.submitted.load(Ordering::Relaxed),
        churn.errors.load(Ordering::Relaxed),
        work_counts.polls.load(Ordering::Relaxed),
        work_counts.errors.load(Ordering::Relaxed)
    );
    println!("load average at the end: {}", load_average());
    server.stop()
}

/// The machine's load (`/proc/loadavg`): the figures are taken beside
/// whatever else it runs.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

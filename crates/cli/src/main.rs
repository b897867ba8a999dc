//! The `corral` command: the server, the agent, and the client commands that talk
//! to a server over its HTTP API.

mod bench;
mod client;
mod escapes;
mod limits;
mod output;
mod sim;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use corral_api::{ResourcesView, Submitted, SubmittedRuns};
use corral_core::controller::Policy;
use corral_core::limits::MAX_RUNS_PER_SUBMIT;
use corral_core::pipeline::PriorityClasses;
use corral_core::resources::{parse_cpu, parse_memory};
use corral_core::selector::PlacementPolicy;
use corral_server::engine::EngineConfig;

use crate::client::Client;
use crate::output::Format;

#[derive(Parser)]
#[command(name = "corral", version, about = "Resource-governed pipeline runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ServerArg {
    /// The corral server to talk to.
    #[arg(long, env = "CORRAL_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// The API token (default: $CORRAL_TOKEN, then ./.corral/admin.token).
    #[arg(long)]
    token: Option<String>,
    /// A file holding the API token.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Trust the server certificates this PEM file vouches for (besides the system's).
    #[arg(long, env = "CORRAL_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

/// Where an agent finds its server, and its token: never on its command line
/// or in its environment, which its steps and the host's users could read.
#[derive(clap::Args)]
struct AgentServerArg {
    /// The corral server to talk to.
    #[arg(long, env = "CORRAL_SERVER", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// A file holding the agent's token (an agent token of its pool, or a
    /// local agent's one-time credential); `-` reads its first line from
    /// standard input.
    #[arg(long)]
    token_file: PathBuf,
    /// Trust the server certificates this PEM file vouches for (besides the system's).
    #[arg(long, env = "CORRAL_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl ServerArg {
    /// A client of the server, with the token found as `resolve_token` says.
    fn client(self) -> Result<Client> {
        let token = client::resolve_token(
            self.token,
            self.token_file.as_deref(),
            Some(std::path::Path::new(client::DEFAULT_TOKEN_FILE)),
        )?;
        Client::new(&self.server, token, self.ca_cert)
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret, once.
    Create {
        name: String,
        /// admin, viewer, tenant or agent.
        #[arg(long)]
        role: String,
        /// The tenant of a `tenant` token.
        #[arg(long)]
        tenant: Option<String>,
        /// The static pool of an `agent` token.
        #[arg(long)]
        pool: Option<String>,
        /// How long it lives, e.g. 30d or 12h (default: until revoked).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Revoke a token: it is refused from now on.
    Revoke { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Pools,
    Tenants,
    Runs,
    /// Queued runs in admission order, with their positions and reasons.
    Queue,
    /// The server's background workers (its committer, controller, sampler...;
    /// not agents): status, last error, restarts.
    Workers,
}

#[derive(Clone, Copy, ValueEnum)]
enum DescribeKind {
    Run,
    Tenant,
}

/// Whether `corral usage` shares idle cost back to its rows.
#[derive(Clone, Copy, ValueEnum)]
enum IdleMode {
    /// Each pool's idle cost in a table of its own.
    Separate,
    /// Each row also gets its share of the idle cost of the pools it used,
    /// in proportion to what its use of each cost.
    Share,
}

/// How `corral usage` prints its report.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum UsageFormat {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: API, controller and the local pool.
    Server {
        /// Holds the embedded SQLite store and local workers' workspaces.
        #[arg(long, default_value = "./.corral")]
        data_dir: PathBuf,
        /// Use PostgreSQL (postgres://...) instead of the embedded store.
        #[arg(long, env = "CORRAL_DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Seconds without a poll after which a worker is lost (and its steps
        /// retried).
        #[arg(long, default_value_t = 6)]
        heartbeat_timeout: u64,
        /// Seconds an idle worker a provider made (a local agent, a pod) is kept warm.
        #[arg(long, default_value_t = 120)]
        idle_ttl: u64,
        /// How groups are placed among pools (and static agents) with room.
        #[arg(long, default_value = "binpack", value_parser = ["binpack", "spread", "cheapest"])]
        placement: String,
        /// Half-life of the recent usage fair share counts, e.g. 1h or 30m.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        fair_share_half_life: Duration,
        /// A run waiting longer than this gets a reservation: room that runs
        /// behind it may not take.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        starvation_after: Duration,
        /// A priority class, NAME=VALUE; repeat for several. Replaces the
        /// default classes low=-100, normal=0, high=100.
        #[arg(long = "priority-class", value_parser = PriorityClasses::parse_class)]
        priority_classes: Vec<(String, i32)>,
        /// Serve HTTPS with this certificate chain (PEM); local agents trust it,
        /// so it must name the listen address.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A browser origin allowed to call the API (CORS); repeat for several.
        /// None by default: browsers cannot call the API from other pages.
        #[arg(long = "cors-origin")]
        cors_origins: Vec<String>,
        /// Serve /metrics to anyone, without a token (by default it takes a
        /// viewer or admin token).
        #[arg(long)]
        metrics_public: bool,
        /// POST budget alerts here as JSON (http:// or https://), retried
        /// with backoff until the receiver answers 2xx.
        #[arg(long, value_parser = webhook_url)]
        alert_webhook: Option<String>,
        #[command(flatten)]
        limits: Box<limits::LimitArgs>,
        /// How often the governance time series (GET /api/v1/history) are
        /// sampled, from 100ms to 1h.
        #[arg(long, default_value = "10s", value_parser = parse_sample_interval)]
        sample_interval: Duration,
        /// The currency prices and budgets are in (an ISO 4217 code, such as
        /// EUR): shown beside amounts, never converted.
        #[arg(long, default_value = "USD", value_parser = currency_code)]
        currency: String,
        /// A worker asked of a provider that has not registered after this
        /// long is deleted and asked for again, from 1s to 1h.
        #[arg(long, default_value = "30s", value_parser = parse_spawn_timeout)]
        spawn_timeout: Duration,
        /// How often a `capacity: auto` pool is sized again by its provider,
        /// from 1s to 1h.
        #[arg(long, default_value = "30s", value_parser = parse_spawn_timeout)]
        capacity_refresh: Duration,
        /// The program the local provider starts as `PROGRAM agent ...` (by
        /// default this binary): a wrapper that prepares each local agent's
        /// host, say, and execs corral.
        #[arg(long)]
        local_agent_exe: Option<PathBuf>,
        /// The kubeconfig of the cluster kubernetes pools make pods in (else
        /// $KUBECONFIG, else the in-cluster service account). Needs a build
        /// with the kubernetes feature.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The URL agents in kubernetes pods reach this server at (default:
        /// its listen address, which pods rarely reach), e.g.
        /// http://corral.corral-system.svc:7700.
        #[arg(long, value_parser = advertise_url)]
        advertise_url: Option<String>,
    },
    /// Run an agent that joins a pool and runs its steps.
    Agent {
        #[command(flatten)]
        server: AgentServerArg,
        #[arg(long)]
        pool: String,
        /// cpu to offer, e.g. 4 or 1500m.
        #[arg(long)]
        cpu: String,
        /// memory to offer, e.g. 8Gi.
        #[arg(long)]
        memory: String,
        #[arg(long, default_value_t = 0)]
        gpu: u64,
        /// Labels, as k=v,k2=v2.
        #[arg(long, default_value = "")]
        labels: String,
        /// The agent's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "./.corral-agent")]
        work_dir: PathBuf,
        /// Spawned by the server for one shape of work; exits when retired.
        #[arg(long)]
        ephemeral: bool,
        /// Each attempt runs as a fresh uid of this range, e.g.
        /// 2000000000-2000065535 (the default when the agent is root); agents
        /// on one host share a range safely.
        #[arg(long, conflicts_with = "step_user")]
        step_uids: Option<String>,
        /// Every attempt runs as this user.
        #[arg(long)]
        step_user: Option<String>,
        /// The most processes one attempt may have at once.
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
        step_pids_max: u64,
        /// Hides this file or directory from steps (its data directory, say);
        /// repeatable. The agent's work directory is always hidden.
        #[arg(long = "hide", value_name = "PATH")]
        hide: Vec<PathBuf>,
    },
    /// Create, list and revoke API tokens.
    Token {
        #[command(flatten)]
        server: ServerArg,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show the audit log: who changed pools, tenants and tokens, and who cancelled runs.
    Audit {
        #[command(flatten)]
        server: ServerArg,
        /// Only changes since then: an age (1h, 7d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only changes made with this token.
        #[arg(long)]
        who: Option<String>,
        /// Only changes of this kind: pool, tenant, token or run.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Create or update pools and tenants from a YAML file (`-` for stdin).
    Apply {
        #[command(flatten)]
        server: ServerArg,
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Submit a pipeline; prints the run id.
    Submit {
        #[command(flatten)]
        server: ServerArg,
        file: String,
        /// Stream the logs until the run ends; exit 0 only if it succeeded.
        /// Only for a submit that makes one run.
        #[arg(long, conflicts_with = "count")]
        follow: bool,
        /// Make N runs of the pipeline (of each combination of its matrix) in one
        /// request, and print their ids, one a line.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS_PER_SUBMIT as i64))]
        count: Option<u32>,
    },
    /// List pools, tenants, runs, the queue or the server's background workers.
    Get {
        #[command(flatten)]
        server: ServerArg,
        kind: Kind,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// For runs and the queue: only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// For runs: only in this state.
        #[arg(long)]
        state: Option<String>,
        /// For runs and the queue: at most this many (runs newest first, the
        /// queue in admission order), asked for a thousand at a time; a line
        /// on stderr says when there are more.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        limit: u32,
        /// For runs and the queue: every one, however many.
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// Show a run in detail, with why it waits; or a tenant at a glance.
    Describe {
        #[command(flatten)]
        server: ServerArg,
        kind: DescribeKind,
        /// The run's id, or the tenant's name.
        id: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Usage and cost over a window, grouped by tenant, pool, pipeline, day or month.
    Usage {
        #[command(flatten)]
        server: ServerArg,
        /// Keys to group by, comma-separated.
        #[arg(long, default_value = "tenant")]
        by: String,
        /// From then on: an age (7d, 12h) or an RFC 3339 time; the start of
        /// this month (UTC) by default.
        #[arg(long)]
        since: Option<String>,
        /// Up to then (now by default).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        /// Share each pool's idle cost back to the rows that used it.
        #[arg(long, value_enum, default_value_t = IdleMode::Separate)]
        idle: IdleMode,
        #[arg(short = 'o', long, value_enum, default_value_t = UsageFormat::Table)]
        output: UsageFormat,
    },
    /// Right-size a pipeline: per step, what it asks for, what its recent
    /// successful attempts really used, a recommended request and the saving.
    Recommend {
        #[command(flatten)]
        server: ServerArg,
        pipeline: String,
        /// The tenant whose pipeline it is (a tenant token's own by default).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print a run's logs (all steps, or one).
    Logs {
        #[command(flatten)]
        server: ServerArg,
        run: i64,
        step: Option<String>,
        /// Keep printing until the run ends.
        #[arg(long)]
        follow: bool,
        /// Print the output's bytes as they are, terminal escapes included
        /// (by default they are shown, as `^[` for ESC).
        #[arg(long)]
        raw: bool,
    },
    /// Cancel a run.
    Cancel {
        #[command(flatten)]
        server: ServerArg,
        run: i64,
    },
    /// Measure latency and throughput on a temporary server (SQLite, local workers).
    Bench {
        /// One-at-a-time runs for the latency figures.
        #[arg(long, default_value_t = 500)]
        latency_runs: usize,
        /// Runs submitted at once for the throughput figure.
        #[arg(long, default_value_t = 2000)]
        throughput_runs: usize,
        /// Warm local workers in the bench pool.
        #[arg(long, default_value_t = 8)]
        workers: u32,
        /// Give every tenant a hard budget it never reaches (the pool a price),
        /// so that every admission checks it.
        #[arg(long)]
        budgets: bool,
        /// Then submit this many one-step runs in one request (`--count`) and
        /// time them beside `corral submit` processes, one run each (0: skip).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        bulk_runs: u32,
        /// How many `corral submit` processes are timed for the comparison; their
        /// time is extrapolated to `--bulk-runs` calls.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        sample_submits: u32,
    },
    /// Simulate a workload on the real controller with a virtual clock (`-` for stdin).
    Sim {
        file: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

/// Prints the ids of a bulk submit's runs, one a line; fails when they were
/// rejected (all are, or none: they ask for the same), saying why once.
fn print_submitted(bulk: &SubmittedRuns, follow: bool) -> std::process::ExitCode {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for run in &bulk.runs {
        // A closed stdout (`| head`) ends the listing, not the command.
        if writeln!(out, "{}", run.id).is_err() {
            break;
        }
    }
    drop(out);
    if let Some(rejected) = bulk.runs.iter().find(|r| r.state == "rejected") {
        let reason = rejected.reason.as_ref().map(|r| r.message.as_str());
        eprintln!(
            "{} runs rejected: {}",
            bulk.runs.len(),
            escapes::neutralise(reason.unwrap_or_default())
        );
        return std::process::ExitCode::FAILURE;
    }
    if follow {
        eprintln!(
            "{} runs submitted; --follow follows a submit of one run (see `corral get runs`)",
            bulk.runs.len()
        );
    }
    std::process::ExitCode::SUCCESS
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    corral_core::pipeline::parse_duration_secs(text)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a duration (examples: 90s, 10m, 1h)"))
}

fn webhook_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(text.to_string())
        }
        Ok(_) => Err(format!("{text:?} is not an http:// or https:// URL")),
        Err(e) => Err(format!("{text:?} is not a URL: {e}")),
    }
}

/// An http:// or https:// URL of at most 2048 characters.
fn advertise_url(text: &str) -> Result<String, String> {
    if text.len() > 2048 {
        return Err("the URL is longer than 2048 characters".into());
    }
    webhook_url(text)
}

fn currency_code(text: &str) -> Result<String, String> {
    if text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a currency code (three capital letters, such as USD or EUR)"
        ))
    }
}

fn parse_sample_interval(text: &str) -> Result<Duration, String> {
    corral_core::history::parse_interval_ms(text).map(Duration::from_millis)
}

/// A duration from 1s to 1h.
fn parse_spawn_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&timeout) {
        Ok(timeout)
    } else {
        Err(format!("{text:?} is not between 1s and 1h"))
    }
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => bail!("--labels: {pair:?} is not key=value"),
        })
        .collect()
}

fn main() -> std::process::ExitCode {
    // The agent starts its steps through this binary, as its step supervisor.
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == corral_agent::STEP_SUPERVISOR)
    {
        corral_agent::step_supervisor(args);
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A full disk under the log must not panic a task with eprintln.
        .log_internal_errors(false)
        .init();
    // An agent mostly waits on its server and its children: one thread is plenty,
    // and many agents share a host with the server.
    let mut builder = match cli.command {
        Command::Agent { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // The message may quote what a server or a step said.
            eprintln!("error: {}", escapes::neutralise(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Server {
            data_dir,
            database_url,
            listen,
            heartbeat_timeout,
            idle_ttl,
            placement,
            fair_share_half_life,
            starvation_after,
            priority_classes,
            tls_cert,
            tls_key,
            cors_origins,
            metrics_public,
            alert_webhook,
            limits,
            sample_interval,
            currency,
            spawn_timeout,
            capacity_refresh,
            local_agent_exe,
            kubeconfig,
            advertise_url,
        } => {
            let policy = Policy {
                placement: PlacementPolicy::parse(&placement)
                    .context("--placement: expected binpack, spread or cheapest")?,
                starvation_after_ms: i64::try_from(starvation_after.as_millis())
                    .context("--starvation-after is too long")?,
            };
            let priority_classes = if priority_classes.is_empty() {
                PriorityClasses::default()
            } else {
                PriorityClasses(priority_classes.into_iter().collect())
            };
            let config = corral_server::ServerConfig {
                listen,
                data_dir,
                database_url,
                exe: match local_agent_exe {
                    Some(exe) => exe,
                    None => std::env::current_exe().context("locating the corral binary")?,
                },
                engine: EngineConfig {
                    heartbeat_timeout: Duration::from_secs(heartbeat_timeout),
                    idle_ttl: Duration::from_secs(idle_ttl),
                    policy,
                    fair_share_half_life,
                    priority_classes,
                    output: limits.output(),
                    max_agent: limits.max_agent(),
                    limits: limits.pipeline()?,
                    sample_interval,
                    currency,
                    spawn_timeout,
                    capacity_refresh,
                    ..EngineConfig::default()
                },
                tick: Duration::from_millis(500),
                cors_origins,
                http: limits.http(),
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| corral_server::TlsFiles { cert, key }),
                metrics_public,
                alert_webhook,
                lost_worker_retention: limits.lost_worker_retention(),
                kubernetes: corral_server::KubernetesConfig {
                    kubeconfig,
                    advertise_url,
                },
            };
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
            };
            corral_server::serve(config, shutdown).await?;
            Ok(ok)
        }
        Command::Agent {
            server,
            pool,
            cpu,
            memory,
            gpu,
            labels,
            name,
            work_dir,
            ephemeral,
            step_uids,
            step_user,
            step_pids_max,
            hide,
        } => {
            let capacity = ResourcesView {
                cpu_millis: parse_cpu(&cpu).map_err(|e| anyhow::anyhow!("--cpu: {e}"))?,
                memory_mib: parse_memory(&memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?,
                gpu,
            };
            let name = match name {
                Some(n) => n,
                None => std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "agent".into()),
            };
            for path in &hide {
                if !path.exists() {
                    bail!("--hide {}: no such file or directory", path.display());
                }
            }
            // An agent takes its token from --token-file only: never the admin
            // token lying around, nor its command line or environment.
            let token = corral_agent::read_token(&server.token_file).context(
                "corral agent registers with an agent token of its pool (`corral token create NAME --role agent --pool POOL`)",
            )?;
            corral_agent::run(corral_agent::AgentConfig {
                token,
                ca_cert: server.ca_cert,
                server: server.server,
                pool,
                name,
                capacity,
                labels: parse_labels(&labels)?,
                work_dir,
                ephemeral,
                orphan_timeout: Duration::from_secs(120),
                step_user: corral_agent::StepUser::from_flags(
                    step_uids.as_deref(),
                    step_user.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!(e))?,
                step_pids_max,
                hide,
            })
            .await?;
            Ok(ok)
        }
        Command::Apply { server, file } => {
            let client = server.client()?;
            let applied = client.apply(&read_input(&file)?).await?;
            for a in applied {
                println!("{} {} {}", a.kind.to_lowercase(), a.name, a.action);
            }
            Ok(ok)
        }
        Command::Submit {
            server,
            file,
            follow,
            count,
        } => {
            let client = server.client()?;
            let run = match client.submit_runs(&read_input(&file)?, count).await? {
                Submitted::Run(run) => run,
                Submitted::Runs(bulk) => return Ok(print_submitted(&bulk, follow)),
            };
            println!("{}", run.summary.id);
            if run.summary.state == "rejected" {
                let reason = run.summary.reason.map(|r| r.message).unwrap_or_default();
                eprintln!(
                    "run {} rejected: {}",
                    run.summary.id,
                    escapes::neutralise(&reason)
                );
                return Ok(std::process::ExitCode::FAILURE);
            }
            if !follow {
                return Ok(ok);
            }
            let state = client.print_logs(run.summary.id, None, true, false).await?;
            eprintln!("run {} {state}", run.summary.id);
            Ok(if state == "succeeded" {
                ok
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        Command::Get {
            server,
            kind,
            output,
            tenant,
            state,
            limit,
            all,
        } => {
            let client = server.client()?;
            let want = (!all).then_some(limit);
            let mut more = None;
            let text = match kind {
                Kind::Pools => output::pools(&client.pools().await?, output)?,
                Kind::Tenants => output::tenants(&client.tenants().await?, output)?,
                Kind::Runs => {
                    let (runs, beyond) = client
                        .runs(tenant.as_deref(), state.as_deref(), want)
                        .await?;
                    if beyond {
                        more = Some(format!(
                            "showing the newest {} runs; there are more: --limit N or --all for more",
                            runs.len()
                        ));
                    }
                    output::runs(&runs, output)?
                }
                Kind::Queue => {
                    let (runs, total) = client.queue(tenant.as_deref(), want).await?;
                    if total > runs.len() as u64 {
                        more = Some(format!(
                            "showing {} of {total} queued runs: --limit N or --all for more",
                            runs.len()
                        ));
                    }
                    output::queue(&runs, output)?
                }
                Kind::Workers => {
                    output::background_workers(&client.background_workers().await?, output)?
                }
            };
            print!("{}", escapes::neutralise(&text));
            if let Some(note) = more {
                eprintln!("{note}");
            }
            Ok(ok)
        }
        Command::Describe {
            server,
            kind,
            id,
            output,
        } => {
            let client = server.client()?;
            let text = match kind {
                DescribeKind::Run => {
                    let run: i64 = id
                        .parse()
                        .with_context(|| format!("{id:?} is not a run id"))?;
                    output::describe_run(&client.run(run).await?, output)?
                }
                DescribeKind::Tenant => {
                    output::describe_tenant(&client.tenant_summary(&id).await?, output)?
                }
            };
            print!("{}", escapes::neutralise(&text));
            Ok(ok)
        }
        Command::Usage {
            server,
            by,
            since,
            until,
            tenant,
            pool,
            idle,
            output,
        } => {
            let client = server.client()?;
            let idle = match idle {
                IdleMode::Separate => "separate",
                IdleMode::Share => "share",
            };
            let mut query = vec![("by", by), ("idle", idle.to_string())];
            for (key, value) in [
                ("from", since),
                ("to", until),
                ("tenant", tenant),
                ("pool", pool),
            ] {
                if let Some(v) = value {
                    query.push((key, v));
                }
            }
            let text = match output {
                UsageFormat::Csv => client.usage_csv(&query).await?,
                UsageFormat::Json => {
                    serde_json::to_string_pretty(&client.usage(&query).await?)? + "\n"
                }
                UsageFormat::Table => output::usage_report(&client.usage(&query).await?),
            };
            print!("{}", escapes::neutralise(&text));
            Ok(ok)
        }
        Command::Recommend {
            server,
            pipeline,
            tenant,
            output,
        } => {
            corral_core::error::check_name("pipeline", &pipeline)?;
            let client = server.client()?;
            let found = client.recommendation(&pipeline, tenant.as_deref()).await?;
            print!(
                "{}",
                escapes::neutralise(&output::recommendation(&found, output)?)
            );
            Ok(ok)
        }
        Command::Logs {
            server,
            run,
            step,
            follow,
            raw,
        } => {
            let client = server.client()?;
            client.print_logs(run, step.as_deref(), follow, raw).await?;
            Ok(ok)
        }
        Command::Bench {
            latency_runs,
            throughput_runs,
            workers,
            budgets,
            bulk_runs,
            sample_submits,
        } => {
            bench::run(bench::BenchConfig {
                latency_runs,
                throughput_runs,
                workers,
                budgets,
                bulk_runs,
                sample_submits,
            })
            .await?;
            Ok(ok)
        }
        Command::Sim { file, output } => sim::run(&file, output),
        Command::Token { server, command } => {
            let client = server.client()?;
            match command {
                TokenCommand::Create {
                    name,
                    role,
                    tenant,
                    pool,
                    expires,
                } => {
                    let created = client
                        .create_token(&corral_api::TokenCreate {
                            name,
                            role,
                            tenant,
                            pool,
                            expires,
                        })
                        .await?;
                    eprintln!(
                        "token {} created; its secret is shown this once:",
                        created.token.name
                    );
                    println!("{}", created.secret);
                }
                TokenCommand::List { output } => {
                    print!("{}", output::tokens(&client.tokens().await?, output)?);
                }
                TokenCommand::Revoke { name } => {
                    let token = client.revoke_token(&name).await?;
                    println!("token {} revoked", token.name);
                }
            }
            Ok(ok)
        }
        Command::Audit {
            server,
            since,
            who,
            kind,
            limit,
            output,
        } => {
            let client = server.client()?;
            let mut query = vec![("limit", limit.to_string())];
            for (key, value) in [("since", since), ("who", who), ("kind", kind)] {
                if let Some(v) = value {
                    query.push((key, v));
                }
            }
            let text = output::audit(&client.audit(&query).await?, output)?;
            print!("{}", escapes::neutralise(&text));
            Ok(ok)
        }
        Command::Cancel { server, run } => {
            let client = server.client()?;
            let run = client.cancel(run).await?;
            println!("run {} {}", run.summary.id, run.summary.state);
            Ok(ok)
        }
    }
}

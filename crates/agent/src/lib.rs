//! `corral agent`: registers with a pool, long-polls the server for steps, runs
//! them and reports. It rides out server restarts: running steps keep running and
//! their reports are retried until the server has them. Its steps are hostile
//! code: it keeps no credential in its environment or command line (its token
//! comes from a file or its standard input), no process of its user may read
//! its memory, and its steps run confined where it can (see `confine.rs` and
//! `cgroup.rs`), which it tells the server when it registers.

mod backoff;
mod cgroup;
mod client;
mod confine;
mod executor;
mod lease;
mod output;
mod reaper;
pub mod steps;
mod supervisor;
mod work_dir;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::{Confinement, PollRequest, RegisterRequest, RegisterResponse, ResourcesView};

use crate::backoff::Backoff;
use crate::client::{CallError, Client, with_backoff};
use crate::work_dir::WorkDirLock;

pub use crate::confine::{DEFAULT_STEP_UIDS, StepUser};
use crate::steps::{Setup, Steps, Stop};
pub use crate::supervisor::{STEP_SUPERVISOR, step_supervisor};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("the server refused to register this agent ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("cannot start the step supervisor: {0}")]
    Supervisor(std::io::Error),
    #[error("cannot read the token from {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot keep other processes out of the agent's memory: {0}")]
    Undumpable(nix::errno::Errno),
    #[error("the step supervisor ended: {0}")]
    SupervisorGone(String),
    #[error(
        "another agent (pid {holder}) runs from the work directory {}; give each agent its own --work-dir",
        dir.display()
    )]
    WorkDirTaken { dir: PathBuf, holder: String },
    #[error("cannot lock the work directory ({}): {source}", path.display())]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub pool: String,
    pub name: String,
    pub capacity: ResourcesView,
    pub labels: BTreeMap<String, String>,
    /// Workspaces live under `work_dir/workspaces`.
    pub work_dir: PathBuf,
    /// Spawned by the server for one shape of work: exits when retired or when
    /// the server has been unreachable for `orphan_timeout` with nothing running.
    pub ephemeral: bool,
    pub orphan_timeout: Duration,
    /// Registers with this: an agent token of the pool (or a local agent's
    /// one-time credential).
    pub token: String,
    /// Trusts the server certificates this PEM file vouches for, besides the
    /// system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Whom steps run as.
    pub step_user: StepUser,
    /// The most processes one attempt may have at once.
    pub step_pids_max: u64,
    /// Hidden from steps, besides the work directory.
    pub hide: Vec<PathBuf>,
}

/// Reads the agent's token from `path`, or its first line from standard input
/// for `-` (which is then `/dev/null`, so nothing it inherits holds the pipe).
pub fn read_token(path: &Path) -> Result<String, AgentError> {
    let failed = |source| AgentError::Token {
        path: path.to_path_buf(),
        source,
    };
    let token = if path == Path::new("-") {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(failed)?;
        let null = std::fs::File::open("/dev/null").map_err(failed)?;
        nix::unistd::dup2_stdin(null).map_err(|e| failed(e.into()))?;
        line
    } else {
        std::fs::read_to_string(path).map_err(failed)?
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(failed(std::io::Error::other("there is no token in it")));
    }
    Ok(token)
}

/// An attempt running here.
#[derive(Debug, Default)]
struct Slot {
    /// Stops its step while the step runs.
    stop: Option<Stop>,
    /// Killed on the server's word: no longer reported as running.
    cancelled: bool,
}

/// Attempts running here, until their outcome is reported.
type Running = Arc<Mutex<HashMap<i64, Slot>>>;

fn lock(running: &Running) -> std::sync::MutexGuard<'_, HashMap<i64, Slot>> {
    running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The variables that configure the agent itself, kept from its steps.
const AGENT_SETTINGS: [&str; 5] = [
    "CORRAL_TOKEN",
    "CORRAL_SERVER",
    "CORRAL_CA_CERT",
    "CORRAL_LOG",
    "CORRAL_DATABASE_URL",
];

/// Runs the agent until it is told to exit, or its step supervisor ends (its
/// steps have then ended with it).
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    // Its token is in its memory: no process of its user may read that (nor
    // its /proc files).
    nix::sys::prctl::set_dumpable(false).map_err(AgentError::Undumpable)?;
    // Local agents, spawned by the server, share its work directory; each
    // registers once with a credential of its own, so none can take another's
    // place.
    let _lock = match config.ephemeral {
        true => None,
        false => Some(WorkDirLock::acquire(&config.work_dir)?),
    };
    std::fs::create_dir_all(&config.work_dir).map_err(|source| AgentError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let client = Client::new(&config.server, &config.token, config.ca_cert.as_deref())?;
    let setup = Setup {
        user: config.step_user.clone(),
        hide: std::iter::once(config.work_dir.clone())
            .chain(config.hide.iter().cloned())
            .collect(),
        pids_max: config.step_pids_max,
        cgroups: true,
    };
    // The agent's own settings (its token above all) are not its steps'
    // business; what its worker was given (CORRAL_POOL, a pool's env) is.
    let steps = Arc::new(Steps::start(&AGENT_SETTINGS, setup).map_err(AgentError::Supervisor)?);
    let confinement = tokio::select! {
        said = steps.confinement() => said,
        _ = steps.gone() => None,
    };
    let Some(confinement) = confinement else {
        return Err(AgentError::SupervisorGone(steps.gone().await));
    };
    warn_unless_confined(&confinement);
    tokio::select! {
        served = agent(&client, &config, &steps, &confinement) => served,
        why = steps.gone() => Err(AgentError::SupervisorGone(why)),
    }
}

/// Says loudly, once, what of its steps' confinement the agent could not set
/// up.
fn warn_unless_confined(confinement: &Confinement) {
    if !confinement.namespaces {
        tracing::warn!(
            user = %confinement.user,
            "STEPS ARE NOT CONFINED: they run as the agent's own user and see all it sees; \
             run the agent as root, on a kernel that allows namespaces, to confine them"
        );
    }
    if confinement.cgroup == "none" {
        tracing::warn!(
            "STEPS HAVE NO CGROUP LIMITS: their cpu and memory are not held to what they were \
             admitted with"
        );
    }
    tracing::info!(
        namespaces = confinement.namespaces,
        cgroup = %confinement.cgroup,
        user = %confinement.user,
        "steps are confined"
    );
}

async fn agent(
    client: &Client,
    config: &AgentConfig,
    steps: &Arc<Steps>,
    confinement: &Confinement,
) -> Result<(), AgentError> {
    let running: Running = Arc::new(Mutex::new(HashMap::new()));
    let incarnation = incarnation();
    let mut again = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let registered = register(client, config, &incarnation, confinement).await?;
        let since = Instant::now();
        let worker = registered.worker_id;
        tracing::info!(worker, pool = %config.pool, name = %config.name, "registered");
        // A server that grants no lease: three quarters of its timeout.
        let lease_ms = match registered.lease_ms {
            0 => registered.heartbeat_timeout_ms / 4 * 3,
            granted => granted,
        };
        let wait_ms = poll_wait_ms(lease_ms);
        let calls = client.with_bearer(&registered.worker_secret);
        let terms = Terms {
            wait_ms,
            lease: Duration::from_millis(lease_ms),
        };
        serve(&calls, config, steps, worker, terms, &running).await;
        if config.ephemeral {
            return Ok(());
        }
        // Lost again and again soon after registering (another agent under
        // this name and instance, from a copy of this work directory, say):
        // each registration waits longer, so the two cannot storm the server.
        if since.elapsed() > REGISTRATION_SETTLED {
            again.reset();
        }
        let pause = again.next_pause();
        tracing::warn!(
            ?pause,
            "the server no longer knows this agent; registering again"
        );
        tokio::time::sleep(pause).await;
    }
}

/// A registration that lasted this long was not lost to a flapping peer.
const REGISTRATION_SETTLED: Duration = Duration::from_secs(60);

/// The id of this agent's work directory, made on first use: the server tells
/// a restart of this agent (same id) from another agent with the same name.
///
/// Agents started at once in one work directory (a run's groups on local
/// workers) agree on it: it is written whole under a name of its own and
/// linked into place, so a reader sees the whole id or none, and the first
/// linked is everyone's.
fn instance(work_dir: &std::path::Path) -> Option<String> {
    let path = work_dir.join("instance");
    let read = || {
        std::fs::read_to_string(&path)
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
    };
    if let Some(id) = read() {
        return Some(id);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{nanos:x}-{:x}", std::process::id());
    let whole = work_dir.join(format!("instance.{id}-{:?}", std::thread::current().id()));
    let linked = std::fs::create_dir_all(work_dir)
        .and_then(|()| std::fs::write(&whole, &id))
        .and_then(|()| match std::fs::hard_link(&whole, &path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            linked => linked,
        });
    let _ = std::fs::remove_file(&whole);
    linked
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot keep the agent's instance id"))
        .ok()?;
    read()
}

/// Random, once per start of this process: the server tells a registration
/// retried by this process from one by a restart of it.
fn incarnation() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long the server may hold a poll, which is the agent's heartbeat and
/// renews its lease: a third of the lease (within 200 ms and 10 s), so each
/// poll's answer renews it well before it lapses.
fn poll_wait_ms(lease_ms: u64) -> u64 {
    (lease_ms / 3).clamp(200, 10_000)
}

/// Registers this agent.
async fn register(
    client: &Client,
    config: &AgentConfig,
    incarnation: &str,
    confinement: &Confinement,
) -> Result<RegisterResponse, AgentError> {
    let req = RegisterRequest {
        pool: config.pool.clone(),
        name: config.name.clone(),
        instance: instance(&config.work_dir),
        incarnation: Some(incarnation.to_string()),
        capacity: config.capacity,
        labels: config.labels.clone(),
        confinement: Some(confinement.clone()),
    };
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    with_backoff("register", backoff, || client.register(&req))
        .await
        .map_err(|(status, message)| AgentError::Refused { status, message })
}

/// How this agent polls, as its registration says.
struct Terms {
    /// How long the server may hold a poll.
    wait_ms: u64,
    /// What each poll the server answers renews.
    lease: Duration,
}

/// Polls and runs assignments until the server says to shut down (or, for an
/// ephemeral agent, the server stays away too long).
async fn serve(
    client: &Client,
    config: &AgentConfig,
    steps: &Arc<Steps>,
    worker: i64,
    terms: Terms,
    running: &Running,
) {
    let mut unreachable_since: Option<Instant> = None;
    // Well inside the lease, so that a poll that gets through after a blip
    // still renews it in time.
    let mut retry = Backoff::new(Duration::from_millis(100), terms.lease / 4);
    loop {
        let req = PollRequest {
            running: lock(running)
                .iter()
                .filter(|(_, slot)| !slot.cancelled)
                .map(|(id, _)| *id)
                .collect(),
            wait_ms: terms.wait_ms,
        };
        // The lease is counted from the poll's sending: the server counts its
        // timeout from the poll's arrival, which is later.
        let sent = lease::now_ns();
        let response = match client.poll(worker, &req, terms.lease).await {
            Ok(r) => {
                unreachable_since = None;
                retry.reset();
                if !r.shutdown && r.lease_ms > 0 {
                    steps.renew(sent.saturating_add(r.lease_ms.saturating_mul(1_000_000)));
                }
                r
            }
            Err(CallError::Refused(status, text)) => {
                tracing::warn!(status, %text, "poll refused");
                return;
            }
            Err(CallError::Retry(e)) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if config.ephemeral
                    && lock(running).is_empty()
                    && since.elapsed() > config.orphan_timeout
                {
                    tracing::warn!("the server has been unreachable for too long; exiting");
                    return;
                }
                let pause = retry.next_pause();
                tracing::debug!(error = %e, ?pause, "poll failed; retrying");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        for id in &response.cancel {
            if let Some(slot) = lock(running).get_mut(id) {
                tracing::info!(attempt = id, "cancelling");
                slot.cancelled = true;
                if let Some(stop) = &slot.stop {
                    stop.stop();
                }
            }
        }
        if response.shutdown {
            for slot in lock(running).values_mut() {
                slot.cancelled = true;
                if let Some(stop) = &slot.stop {
                    stop.stop();
                }
            }
            return;
        }
        for assignment in response.assignments {
            let id = assignment.attempt_id;
            // A redelivered assignment already running here is not started twice.
            if lock(running).contains_key(&id) {
                continue;
            }
            lock(running).insert(id, Slot::default());
            tracing::info!(attempt = id, run = assignment.run_id, step = %assignment.step, "starting");
            let client = client.clone();
            let work_dir = config.work_dir.clone();
            let running = running.clone();
            let steps = steps.clone();
            tokio::spawn(async move {
                let on_start = |stop: Stop| {
                    if let Some(slot) = lock(&running).get_mut(&id) {
                        // Cancelled before it started: it does not get to run.
                        if slot.cancelled {
                            stop.stop();
                        }
                        slot.stop = Some(stop);
                    }
                };
                let on_exit = || {
                    if let Some(slot) = lock(&running).get_mut(&id) {
                        slot.stop = None;
                    }
                };
                executor::execute(
                    client, worker, &steps, &work_dir, assignment, on_start, on_exit,
                )
                .await;
                lock(&running).remove(&id);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_held_a_third_of_the_lease_within_bounds() {
        for (lease, wait) in [
            (6_000, 2_000),
            (30_000, 10_000),
            (60_000, 10_000),
            (900, 300),
            (300, 200),
            (0, 200),
        ] {
            assert_eq!(poll_wait_ms(lease), wait, "lease {lease} ms");
        }
    }

    #[test]
    fn agents_started_at_once_in_one_work_dir_agree_on_its_instance() {
        for round in 0..20 {
            let dir = std::env::temp_dir()
                .join(format!("corral-instance-{}-{round}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let ids: Vec<Option<String>> = std::thread::scope(|scope| {
                let readers: Vec<_> = (0..8).map(|_| scope.spawn(|| instance(&dir))).collect();
                readers
                    .into_iter()
                    .map(|r| r.join().expect("no panic"))
                    .collect()
            });
            let first = ids[0].clone().expect("an instance");
            assert!(!first.is_empty());
            assert!(ids.iter().all(|id| id.as_ref() == Some(&first)), "{ids:?}");
            assert_eq!(instance(&dir), Some(first), "kept");
            let left: Vec<_> = std::fs::read_dir(&dir)
                .expect("the dir")
                .map(|e| e.expect("an entry").file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("instance")]);
            std::fs::remove_dir_all(&dir).expect("cleaned up");
        }
    }

    #[test]
    fn incarnations_are_128_random_bits_in_hex() {
        let (a, b) = (incarnation(), incarnation());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}

//! The agent's side of its step supervisor (see `supervisor.rs`): starts the
//! supervisor once, sends it the steps to start and stop, and hands each step's
//! output and end to whoever started it.

use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getsid};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};

use corral_api::Confinement;

pub use crate::confine::{DEFAULT_STEP_UIDS, StepUser};
pub use crate::supervisor::{Ended, Limits, Setup, Usage};
use crate::supervisor::{
    FromSupervisor, START_FDS, STEP_SUPERVISOR, ToSupervisor, frame, frame_len,
};

/// A frame for the supervisor, and the descriptors it carries.
struct Outgoing {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<End>>>>;

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<End>>> {
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This agent's step supervisor. Dropping it asks the supervisor to end, and
/// with it every step still running.
pub struct Steps {
    outbox: mpsc::UnboundedSender<Outgoing>,
    waiting: Waiting,
    next: AtomicU64,
    gone: watch::Receiver<Option<String>>,
    /// How the supervisor confines steps, once it has said.
    confinement: watch::Receiver<Option<Confinement>>,
    /// Reaped when the agent goes.
    process: tokio::process::Child,
}

impl Drop for Steps {
    fn drop(&mut self) {
        // Not reaped yet (nothing waits for it), so the pid is still its own.
        if let Some(pid) = self.process.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

/// A step that runs: its output, and its end.
pub struct Step {
    pub stop: Stop,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub ending: Ending,
}

/// A step's end, to wait for.
pub struct Ending(oneshot::Receiver<End>);

/// How a step ended, and what it used if it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct End {
    pub ended: Ended,
    pub usage: Option<Usage>,
}

/// Stops one step; cheap to clone and to call more than once.
#[derive(Debug, Clone)]
pub struct Stop {
    id: u64,
    outbox: mpsc::UnboundedSender<Outgoing>,
}

impl Stop {
    /// Asks the supervisor to kill all the step started.
    pub fn stop(&self) {
        let _ = self.outbox.send(Outgoing {
            bytes: frame(&ToSupervisor::Stop { id: self.id }),
            fds: Vec::new(),
        });
    }
}

impl Ending {
    /// How the step ended; [`Ended::Failed`] if the supervisor went first.
    pub async fn wait(self) -> End {
        self.0.await.unwrap_or_else(|_| End {
            ended: Ended::Failed("the step supervisor ended".into()),
            usage: None,
        })
    }
}

impl Steps {
    /// Starts the supervisor: this very binary, through /proc/self/exe, which
    /// still works when the binary's file has been replaced by an upgrade.
    /// `hidden` are environment variables the steps must not see; `setup`
    /// says how to confine them.
    pub fn start(hidden: &[&str], setup: Setup) -> std::io::Result<Steps> {
        // The steps' processes are the supervisor's; if it dies first, they
        // are handed to this process, which ends them (see `end_orphans`).
        prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
        let (ours, theirs) = StdUnixStream::pair()?;
        let mut command = tokio::process::Command::new("/proc/self/exe");
        if let Some(name) = std::env::args_os().next() {
            command.arg0(name);
        }
        for key in hidden {
            command.env_remove(key);
        }
        let process = command
            .arg(STEP_SUPERVISOR)
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        ours.set_nonblocking(true)?;
        let supervisor = process.id();
        let socket = Arc::new(UnixStream::from_std(ours)?);
        let (outbox, outgoing) = mpsc::unbounded_channel();
        let waiting: Waiting = Arc::default();
        let (tell_gone, gone) = watch::channel(None);
        let (tell_confinement, confinement) = watch::channel(None);
        // First of all: how to confine steps.
        let _ = outbox.send(Outgoing {
            bytes: frame(&ToSupervisor::Setup(setup)),
            fds: Vec::new(),
        });
        tokio::spawn(write(socket.clone(), outgoing));
        let told = Told {
            waiting: waiting.clone(),
            gone: tell_gone,
            confinement: tell_confinement,
        };
        tokio::spawn(read(socket, told, supervisor));
        Ok(Steps {
            outbox,
            waiting,
            next: AtomicU64::new(1),
            gone,
            confinement,
            process,
        })
    }

    /// How the supervisor confines steps, once it has set up; `None` if it
    /// ended first.
    pub async fn confinement(&self) -> Option<Confinement> {
        let mut confinement = self.confinement.clone();
        let said = confinement.wait_for(Option::is_some).await.ok()?;
        said.clone()
    }

    /// Starts `sh -c command` in `dir`, with `env` over the agent's
    /// environment, within `limits`.
    pub fn run(
        &self,
        dir: &Path,
        command: &str,
        env: &BTreeMap<String, String>,
        limits: Limits,
    ) -> std::io::Result<Step> {
        let path = dir;
        let dir = OwnedFd::from(std::fs::File::open(path)?);
        let stdin = OwnedFd::from(std::fs::File::open("/dev/null")?);
        let (stdout, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (stderr, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tell, ended) = oneshot::channel();
        lock(&self.waiting).insert(id, tell);
        let start = ToSupervisor::Start {
            id,
            command: command.to_string(),
            env: env.clone(),
            dir: path.to_path_buf(),
            limits,
        };
        let fds = vec![dir, stdin, stdout_w, stderr_w];
        debug_assert_eq!(fds.len(), START_FDS);
        let sent = self.outbox.send(Outgoing {
            bytes: frame(&start),
            fds,
        });
        if sent.is_err() {
            lock(&self.waiting).remove(&id);
            return Err(std::io::Error::other("the step supervisor ended"));
        }
        Ok(Step {
            stop: Stop {
                id,
                outbox: self.outbox.clone(),
            },
            stdout: pipe::Receiver::from_owned_fd(stdout)?,
            stderr: pipe::Receiver::from_owned_fd(stderr)?,
            ending: Ending(ended),
        })
    }

    /// Renews the agent's lease until `until_ns` on `CLOCK_BOOTTIME` (see
    /// `lease.rs`): the supervisor kills every step when it passes. Sent in
    /// order with the starts, so a step started after a renewal runs under it.
    pub fn renew(&self, until_ns: u64) {
        let _ = self.outbox.send(Outgoing {
            bytes: frame(&ToSupervisor::Lease { until_ns }),
            fds: Vec::new(),
        });
    }

    /// Resolves when the supervisor has ended, with why.
    pub async fn gone(&self) -> String {
        let mut gone = self.gone.clone();
        match gone.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the step supervisor ended".into(),
        }
    }
}

/// Sends frames in order, each whole, its descriptors with its first byte.
async fn write(socket: Arc<UnixStream>, mut outgoing: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(Outgoing { bytes, fds }) = outgoing.recv().await {
        let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = 0;
        while sent < bytes.len() {
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if sent == 0 && !raw.is_empty() {
                &rights
            } else {
                &[]
            };
            let result = socket
                .async_io(Interest::WRITABLE, || {
                    sendmsg::<()>(
                        socket.as_raw_fd(),
                        &[IoSlice::new(&bytes[sent..])],
                        cmsgs,
                        MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(std::io::Error::from)
                })
                .await;
            match result {
                Ok(n) => sent += n,
                // The reader sees the supervisor's end and says so.
                Err(_) => return,
            }
        }
        // The supervisor has its own copies now; the agent keeps none, so a
        // step's output ends when the step's processes close it.
        drop(fds);
    }
}

/// Whom the reader of the supervisor's messages tells.
struct Told {
    /// Each step's end, to whoever waits for it.
    waiting: Waiting,
    /// Why the supervisor is gone, once it is.
    gone: watch::Sender<Option<String>>,
    confinement: watch::Sender<Option<Confinement>>,
}

/// Hands each step's end to whoever waits for it, and the supervisor's
/// confinement to the agent; says when the supervisor is gone.
async fn read(socket: Arc<UnixStream>, told: Told, supervisor: Option<u32>) {
    let Told {
        waiting,
        gone,
        confinement,
    } = told;
    let why = loop {
        match next_message(&socket).await {
            Ok(FromSupervisor::Ready(said)) => {
                let _ = confinement.send(Some(said));
            }
            Ok(FromSupervisor::Ended { id, ended, usage }) => {
                if let Some(tell) = lock(&waiting).remove(&id) {
                    let _ = tell.send(End { ended, usage });
                }
            }
            Err(why) => break why,
        }
    };
    tracing::error!(%why, "the step supervisor ended");
    // A supervisor killed on its own leaves its steps' processes to this one:
    // they end before their steps are said to have failed (and are run again
    // elsewhere), so that no step runs twice at once.
    let _ = tokio::task::spawn_blocking(move || end_orphans(supervisor)).await;
    // Every step still waiting ends with it.
    lock(&waiting).clear();
    let _ = gone.send(Some(why));
}

/// Ends the supervisor if it is still alive (its socket failed, or it said
/// something this process does not understand): its steps' processes come to
/// this one. Then kills and reaps this process's children from other sessions
/// than its own (steps run in sessions of their own; the supervisor, in this
/// one), until none is left or five seconds have passed, and removes the
/// cgroups the supervisor left. A killed process's
/// children are handed over as it ends, so each round finds the next
/// generation. Only a child not yet reaped is signalled, so its pid cannot be
/// another's.
fn end_orphans(supervisor: Option<u32>) {
    // A dying process closes its descriptors (the socket this process saw
    // close) before it hands its children over: they are this process's only
    // once the supervisor can be waited for. It is left for its owner to reap.
    if let Some(supervisor) = supervisor.and_then(|pid| i32::try_from(pid).ok()) {
        let supervisor = Pid::from_raw(supervisor);
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut killed = false;
        loop {
            match waitid(Id::Pid(supervisor), peek) {
                Ok(WaitStatus::StillAlive) if Instant::now() >= deadline => {
                    // Stuck in the kernel: its steps are still its own.
                    tracing::error!(
                        %supervisor,
                        "the step supervisor does not end; its steps may go on running"
                    );
                    break;
                }
                Ok(WaitStatus::StillAlive) if !killed => {
                    let _ = kill(supervisor, Signal::SIGKILL);
                    killed = true;
                }
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
                // Ended, or already reaped.
                _ => break,
            }
        }
    }
    let own_session = getsid(None).ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let orphans: Vec<Pid> = children()
            .into_iter()
            .filter(|pid| Some(pid.as_raw() as u32) != supervisor)
            .filter(|&pid| getsid(Some(pid)).ok() != own_session)
            .collect();
        if orphans.is_empty() {
            // What the supervisor made of cgroups is empty now.
            if let Some(supervisor) = supervisor {
                crate::cgroup::remove_supervisor(supervisor);
            }
            return;
        }
        for &pid in &orphans {
            let _ = kill(pid, Signal::SIGKILL);
        }
        for pid in orphans {
            while Instant::now() < deadline {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
                    _ => break,
                }
            }
        }
    }
}

/// The children of every thread of this process.
fn children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn next_message(socket: &UnixStream) -> Result<FromSupervisor, String> {
    let mut head = [0u8; 4];
    read_exact(socket, &mut head).await?;
    let mut body = vec![0u8; frame_len(head)?];
    read_exact(socket, &mut body).await?;
    serde_json::from_slice(&body).map_err(|e| format!("a bad message from the supervisor: {e}"))
}

async fn read_exact(socket: &UnixStream, buf: &mut [u8]) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        let read = match socket.readable().await {
            Ok(()) => socket.try_read(&mut buf[got..]),
            Err(e) => Err(e),
        };
        match read {
            Ok(0) => return Err("its socket reached its end".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("its socket: {e}")),
        }
    }
    Ok(())
}

//! The step supervisor: one small process per agent that runs every step. The
//! agent starts its own binary once as `corral __step-supervisor AGENT_PID`,
//! with one end of a Unix socket as its standard input. It first sends a
//! [`ToSupervisor::Setup`] (whom steps run as, what they must not see, their
//! cap on processes), and the supervisor answers with the confinement it
//! could set up ([`FromSupervisor::Ready`]). Then, for each step, it sends a
//! [`ToSupervisor::Start`] with the step's directory, output pipes and
//! `/dev/null` input attached as file descriptors, and the step's limits. The
//! supervisor has one thread; it forks each step's processes (see
//! `confine.rs`: namespaces and a uid of its own when the agent is root), in a
//! session and cgroups of their own (see `cgroup.rs`), and as its steps'
//! child subreaper (see `reaper.rs`) kills all a step started when the step
//! ends, is stopped, or the agent is gone, so a step never outlives its agent,
//! not even a `kill -9` of it (the server would run the step elsewhere
//! meanwhile). With each step's end it sends what the step used.
//!
//! Nor does a step outlive its agent's lease (see `lease.rs`): the agent sends
//! a [`ToSupervisor::Lease`] each time a poll renews it, and when its deadline
//! passes the supervisor kills every step (they end [`Ended::Fenced`]) and
//! starts none until the lease is renewed. A paused or cut-off agent cannot
//! renew it, and the supervisor, a process of its own, goes on without it.
//!
//! The supervisor ends when the agent does: its socket reaches its end, the
//! kernel says the agent is gone (`PARENT_GONE`), or it is asked to stop
//! (SIGTERM, SIGINT, SIGHUP: the agent sends SIGTERM when it drops its
//! [`Steps`](crate::steps::Steps)). It then kills every step and everything
//! under it, and reaps them, before it exits. Like the agent, it is not
//! dumpable: no process of its user may read its memory or environment.
//!
//! Linux only: it rests on `prctl`, `/proc`, namespaces and cgroups.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use corral_api::Confinement;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::unistd::{Pid, getppid};
use serde::{Deserialize, Serialize};

use crate::confine::StepUser;
use crate::lease::Lease;
use crate::reaper::Reaper;

/// What the kernel sends the supervisor when its parent ends. Also when the
/// parent's *thread* that started the supervisor ends, with the parent alive:
/// only a changed parent means the agent is gone.
const PARENT_GONE: Signal = Signal::SIGUSR1;

/// Signals that ask the supervisor to stop every step and end.
const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// The hidden first argument that makes `corral` an agent's step supervisor.
pub const STEP_SUPERVISOR: &str = "__step-supervisor";

/// The largest frame either side accepts: a step's command and environment are
/// bounded far below it by the server.
const MAX_FRAME: usize = 16 << 20;

/// The descriptors a [`ToSupervisor::Start`] carries, in this order.
pub(crate) const START_FDS: usize = 4;

/// How the agent has its steps confined: the first thing it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// Whom steps run as; anyone but the agent's own user means namespaces
    /// (if the supervisor runs as root and the kernel lets it).
    pub user: StepUser,
    /// Hidden from confined steps (the agent's work directory, `--hide`).
    pub hide: Vec<PathBuf>,
    /// The most processes one attempt may have at once.
    pub pids_max: u64,
    /// Attempts get cgroups where the supervisor can make them; off, steps
    /// are tracked by their sessions alone.
    pub cgroups: bool,
}

/// What a step was admitted with: the limits of its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_millis: Option<u64>,
    pub memory_mib: Option<u64>,
}

/// What an attempt used: by its cgroup's counters, or by the rusage of the
/// processes the supervisor waited for where it had no cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub memory_peak_bytes: u64,
    pub throttled_seconds: f64,
    /// Processes of it the OOM killer killed (counted in a cgroup only).
    pub oom_kills: u64,
}

/// What the agent asks of its supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToSupervisor {
    /// How to confine steps; first, and only once.
    Setup(Setup),
    /// Run `sh -c command` in the directory `dir`, with the input and outputs
    /// carried by the frame ([`START_FDS`]: the directory, stdin, stdout,
    /// stderr), the supervisor's environment with `env` over it, and `limits`.
    Start {
        id: u64,
        command: String,
        env: BTreeMap<String, String>,
        dir: PathBuf,
        limits: Limits,
    },
    /// Stop the step: kill all it started.
    Stop { id: u64 },
    /// The agent holds its lease until this time on `CLOCK_BOOTTIME`, in
    /// nanoseconds; past it, every step is killed.
    Lease { until_ns: u64 },
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    /// Its shell exited with this code.
    Exited(i32),
    /// Its shell was ended by this signal (a stop ends it by SIGKILL).
    Killed(i32),
    /// It could not be started.
    Failed(String),
    /// Killed, or not started, because the agent's lease had lapsed.
    Fenced,
}

/// What the supervisor tells the agent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromSupervisor {
    /// The answer to the setup: how steps are confined.
    Ready(Confinement),
    /// A step ended, and what it used if it ran.
    Ended {
        id: u64,
        ended: Ended,
        usage: Option<Usage>,
    },
}

/// A frame: its length as 4 bytes little-endian, then the message as JSON.
pub(crate) fn frame(message: &impl Serialize) -> Vec<u8> {
    let mut bytes = vec![0; 4];
    serde_json::to_writer(&mut bytes, message).expect("a message serializes");
    let len = u32::try_from(bytes.len() - 4).expect("a frame fits in 4 GiB");
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    bytes
}

/// The length a frame's first 4 bytes announce, if it is within bounds.
pub(crate) fn frame_len(head: [u8; 4]) -> Result<usize, String> {
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(format!("a frame of {len} bytes is over {MAX_FRAME}"));
    }
    Ok(len)
}

/// Runs as an agent's step supervisor: `args` are what follows
/// [`STEP_SUPERVISOR`], the agent's pid; standard input is the agent's socket.
pub fn step_supervisor(mut args: impl Iterator<Item = OsString>) -> ! {
    let agent = args
        .next()
        .and_then(|a| a.to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw);
    let (Some(agent), None) = (agent, args.next()) else {
        eprintln!("corral: {STEP_SUPERVISOR} takes the agent's pid");
        std::process::exit(2);
    };
    let socket = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("corral: the step supervisor has no socket: {e}");
            std::process::exit(2);
        }
    };
    match supervise(agent, socket) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("corral: the step supervisor stops: {e}");
            std::process::exit(1)
        }
    }
}

fn supervise(agent: Pid, mut socket: UnixStream) -> Result<(), String> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, PARENT_GONE].into_iter().chain(STOP) {
        signals.add(signal);
    }
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot read signals: {e}"))?;
    prctl::set_pdeathsig(PARENT_GONE)
        .map_err(|e| format!("cannot ask to hear of the agent's end: {e}"))?;
    if getppid() != agent {
        return Ok(());
    }
    prctl::set_dumpable(false).map_err(|e| format!("cannot make itself undumpable: {e}"))?;
    // What the agent's process left open without close-on-exec is no step's
    // business; all the supervisor opens itself is close-on-exec.
    close_on_exec_from(3);
    let mut inbox = Inbox::default();
    let setup = loop {
        match inbox.next()? {
            Some((ToSupervisor::Setup(setup), _)) => break setup,
            Some(_) => return Err("the agent sent a step before its setup".into()),
            None if inbox.receive(&socket)? => {}
            // The agent closed its end: it is gone.
            None => return Ok(()),
        }
    };
    let mut reaper = Reaper::new(&setup, agent)?;
    socket
        .write_all(&frame(&FromSupervisor::Ready(reaper.confinement())))
        .map_err(|e| format!("cannot write to the agent: {e}"))?;
    let served = serve(agent, &mut socket, &signal_fd, &mut reaper, inbox);
    reaper.kill_all(|| {
        let mut fds = [PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        // Woken by a child's end; the timeout covers a child reparented to
        // the supervisor while it looked, with no signal of its own, and
        // cgroups that empty a little after their last process ended.
        let _ = poll(&mut fds, PollTimeout::from(10u8));
        while let Ok(Some(_)) = signal_fd.read_signal() {}
    });
    served
}

/// Serves the agent until it is gone or asks the supervisor to stop.
fn serve(
    agent: Pid,
    socket: &mut UnixStream,
    signal_fd: &SignalFd,
    reaper: &mut Reaper,
    mut inbox: Inbox,
) -> Result<(), String> {
    let mut lease = Lease::new()?;
    // What came with the setup.
    obey(&mut inbox, socket, reaper, &mut lease)?;
    loop {
        // Ended steps whose cgroups still empty out are looked at again soon.
        let wait = match reaper.draining() {
            true => PollTimeout::from(1u8),
            false => PollTimeout::NONE,
        };
        let (socket_ready, signal_ready) = {
            let mut fds = [
                PollFd::new(socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(lease.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("cannot wait: {e}")),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[2]) {
                lease.drain();
            }
            (ready(&fds[0]), ready(&fds[1]))
        };
        // First of all after a wait, the lease: a supervisor that was stopped
        // past its deadline kills its steps as soon as it runs again.
        if lease.lapsed() {
            reaper.fence_all();
        }
        let mut changed = reaper.draining();
        if signal_ready {
            while let Ok(Some(info)) = signal_fd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => changed = true,
                    Ok(PARENT_GONE) if getppid() == agent => {}
                    // The agent is gone, or asks this process to stop.
                    _ => return Ok(()),
                }
            }
        }
        if changed {
            for (id, ended, usage) in reaper.sweep() {
                send(socket, &FromSupervisor::Ended { id, ended, usage })?;
            }
        }
        if socket_ready {
            if !inbox.receive(socket)? {
                // The agent closed its end: it is gone.
                return Ok(());
            }
            obey(&mut inbox, socket, reaper, &mut lease)?;
        }
    }
}

/// Does what the agent asked, in the order it asked.
fn obey(
    inbox: &mut Inbox,
    socket: &mut UnixStream,
    reaper: &mut Reaper,
    lease: &mut Lease,
) -> Result<(), String> {
    while let Some((message, fds)) = inbox.next()? {
        match message {
            ToSupervisor::Setup(_) => return Err("the agent sent its setup twice".into()),
            ToSupervisor::Start {
                id,
                command,
                env,
                dir,
                limits,
            } => {
                let fds: [OwnedFd; START_FDS] = fds
                    .try_into()
                    .map_err(|_| "a start came without its descriptors".to_string())?;
                let ended = if lease.lapsed() {
                    Some(Ended::Fenced)
                } else {
                    let start = crate::reaper::Start {
                        id,
                        command: &command,
                        env: &env,
                        dir: &dir,
                        limits,
                    };
                    reaper.start(start, &fds).err().map(Ended::Failed)
                };
                if let Some(ended) = ended {
                    let usage = None;
                    send(socket, &FromSupervisor::Ended { id, ended, usage })?;
                }
            }
            ToSupervisor::Stop { id } => reaper.stop(id),
            ToSupervisor::Lease { until_ns } => {
                lease.renew(until_ns)?;
                if lease.lapsed() {
                    reaper.fence_all();
                }
            }
        }
    }
    Ok(())
}

fn send(socket: &mut UnixStream, message: &FromSupervisor) -> Result<(), String> {
    socket
        .write_all(&frame(message))
        .map_err(|e| format!("cannot write to the agent: {e}"))
}

/// Frames read from the agent, and the descriptors that came with them.
struct Inbox {
    /// What one read takes, kept from read to read.
    buf: Vec<u8>,
    bytes: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            buf: vec![0; 64 * 1024],
            bytes: Vec::new(),
            fds: VecDeque::new(),
        }
    }
}

impl Inbox {
    /// Reads what the socket has; false at its end.
    #[allow(unsafe_code)]
    fn receive(&mut self, socket: &UnixStream) -> Result<bool, String> {
        let mut space = nix::cmsg_space!([RawFd; 2 * START_FDS]);
        let mut iov = [IoSliceMut::new(&mut self.buf)];
        let received = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("cannot read from the agent: {e}"))?;
        let n = received.bytes;
        for message in received
            .cmsgs()
            .map_err(|e| format!("too many descriptors from the agent: {e}"))?
        {
            if let ControlMessageOwned::ScmRights(fds) = message {
                // SAFETY: the kernel just made these descriptors for this process.
                self.fds.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        self.bytes.extend_from_slice(&self.buf[..n]);
        Ok(n > 0)
    }

    /// The next whole message, with the descriptors a start carries.
    fn next(&mut self) -> Result<Option<(ToSupervisor, Vec<OwnedFd>)>, String> {
        let Some(head) = self.bytes.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = frame_len(*head)?;
        if self.bytes.len() < 4 + len {
            return Ok(None);
        }
        let message: ToSupervisor = serde_json::from_slice(&self.bytes[4..4 + len])
            .map_err(|e| format!("a bad message from the agent: {e}"))?;
        self.bytes.drain(..4 + len);
        let fds = match message {
            ToSupervisor::Start { .. } => {
                if self.fds.len() < START_FDS {
                    return Err("a start came without its descriptors".into());
                }
                self.fds.drain(..START_FDS).collect()
            }
            ToSupervisor::Setup(_) | ToSupervisor::Stop { .. } | ToSupervisor::Lease { .. } => {
                Vec::new()
            }
        };
        Ok(Some((message, fds)))
    }
}

/// Marks every descriptor from `first` on close-on-exec: the steps' shells
/// must not hold the agent's socket, nor another step's pipes (their readers
/// would never see the end of them). One `close_range` call; on a kernel
/// without it (before 5.11), each descriptor `/proc/self/fd` lists.
#[allow(unsafe_code)]
pub(crate) fn close_on_exec_from(first: RawFd) {
    let from = u32::try_from(first).unwrap_or(0);
    // SAFETY: only flags change; every descriptor stays open for this process.
    if unsafe { libc::close_range(from, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) } == 0 {
        return;
    }
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd >= first)
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        // SAFETY: only flags change; a descriptor closed meanwhile is EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length_and_are_read_back_whole() {
        let start = ToSupervisor::Start {
            id: 7,
            command: "echo hi".into(),
            env: BTreeMap::from([("A".into(), "b".into())]),
            dir: PathBuf::from("/work"),
            limits: Limits::default(),
        };
        let bytes = frame(&start);
        let head = *bytes.first_chunk::<4>().expect("a length");
        assert_eq!(frame_len(head), Ok(bytes.len() - 4));
        let back: ToSupervisor = serde_json::from_slice(&bytes[4..]).expect("a message");
        assert!(
            matches!(back, ToSupervisor::Start { id: 7, .. }),
            "{back:?}"
        );
        let (mut a, b) = UnixStream::pair().expect("a socket pair");
        a.write_all(&bytes[..3]).expect("written");
        let mut inbox = Inbox::default();
        assert_eq!(inbox.receive(&b), Ok(true));
        assert!(
            matches!(inbox.next(), Ok(None)),
            "a partial frame is no message"
        );
        a.write_all(&bytes[3..]).expect("written");
        assert_eq!(inbox.receive(&b), Ok(true));
        let Err(err) = inbox.next() else {
            panic!("a start without descriptors is taken");
        };
        assert!(err.contains("without its descriptors"), "{err}");
        drop(a);
        assert_eq!(inbox.receive(&b), Ok(false), "the end of the socket");
    }

    #[test]
    fn oversized_frames_are_refused() {
        let Err(err) = frame_len(u32::MAX.to_le_bytes()) else {
            panic!("a 4 GiB frame is taken");
        };
        assert!(err.contains("over"), "{err}");
    }
}

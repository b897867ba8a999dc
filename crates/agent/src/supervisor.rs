//! The step supervisor: one small process per agent that starts every step's
//! guard (see `guard.rs`). The agent starts its own binary once as
//! `corral __step-supervisor AGENT_PID`, with one end of a Unix socket as its
//! standard input; for each step it sends a [`ToSupervisor::Start`] with the
//! step's directory, output pipes and `/dev/null` input attached as file
//! descriptors. The supervisor has one thread, so it can `fork` a guard for a
//! step without `exec`ing anything but the step's shell, which costs a fraction
//! of starting this binary again per step.
//!
//! The supervisor ends when the agent does: its socket reaches its end, or the
//! kernel says the agent is gone. Its guards then see their parent gone and kill
//! their steps, as they do when the agent is killed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use serde::{Deserialize, Serialize};

use crate::guard::{self, PARENT_GONE, STOP};

/// The hidden first argument that makes `corral` an agent's step supervisor.
pub const STEP_SUPERVISOR: &str = "__step-supervisor";

/// The largest frame either side accepts: a step's command and environment are
/// bounded far below it by the server.
const MAX_FRAME: usize = 16 << 20;

/// The descriptors a [`ToSupervisor::Start`] carries, in this order.
pub(crate) const START_FDS: usize = 4;

/// What the agent asks of its supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToSupervisor {
    /// Run `sh -c command` under a guard, in the directory, with the input and
    /// outputs carried by the frame ([`START_FDS`]: directory, stdin, stdout,
    /// stderr), and the supervisor's environment with `env` over it.
    Start {
        id: u64,
        command: String,
        env: BTreeMap<String, String>,
    },
    /// Stop the step: its guard kills all it started.
    Stop { id: u64 },
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
}

/// What the supervisor tells the agent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FromSupervisor {
    pub id: u64,
    pub ended: Ended,
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
    let mut inbox = Inbox::default();
    let mut guards: HashMap<u64, Pid> = HashMap::new();
    loop {
        let (socket_ready, signal_ready) = {
            let mut fds = [
                PollFd::new(socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("cannot wait: {e}")),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if signal_ready {
            while let Ok(Some(info)) = signal_fd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => reap(&mut guards, &mut socket)?,
                    Ok(PARENT_GONE) if getppid() == agent => {}
                    // The agent is gone, or asks this process to stop.
                    _ => return Ok(()),
                }
            }
        }
        if socket_ready {
            if !inbox.receive(&socket)? {
                // The agent closed its end: it is gone.
                return Ok(());
            }
            while let Some((message, fds)) = inbox.next()? {
                match message {
                    ToSupervisor::Start { id, command, env } => {
                        match start_guard(&command, &env, fds) {
                            Ok(pid) => {
                                guards.insert(id, pid);
                            }
                            Err(e) => send(&mut socket, id, Ended::Failed(e))?,
                        }
                    }
                    ToSupervisor::Stop { id } => {
                        // A guard not reaped yet: its pid is still its own.
                        if let Some(&pid) = guards.get(&id) {
                            let _ = kill(pid, Signal::SIGTERM);
                        }
                    }
                }
            }
        }
    }
}

fn send(socket: &mut UnixStream, id: u64, ended: Ended) -> Result<(), String> {
    socket
        .write_all(&frame(&FromSupervisor { id, ended }))
        .map_err(|e| format!("cannot write to the agent: {e}"))
}

/// Reaps the guards that ended and tells the agent how.
fn reap(guards: &mut HashMap<u64, Pid>, socket: &mut UnixStream) -> Result<(), String> {
    loop {
        let (pid, ended) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Ended::Exited(code)),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Ended::Killed(signal as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
            Ok(_) => continue,
        };
        let id = guards.iter().find_map(|(&id, &p)| (p == pid).then_some(id));
        if let Some(id) = id {
            guards.remove(&id);
            send(socket, id, ended)?;
        }
    }
}

/// Frames read from the agent, and the descriptors that came with them.
struct Inbox {
    /// What one read takes, kept from read to read.
    buf: Vec<u8>,
    bytes: Vec<u8>,
    fds: std::collections::VecDeque<OwnedFd>,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            buf: vec![0; 64 * 1024],
            bytes: Vec::new(),
            fds: std::collections::VecDeque::new(),
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
            ToSupervisor::Stop { .. } => Vec::new(),
        };
        Ok(Some((message, fds)))
    }
}

/// Forks the step's guard; returns its pid.
#[allow(unsafe_code)]
fn start_guard(
    command: &str,
    env: &BTreeMap<String, String>,
    fds: Vec<OwnedFd>,
) -> Result<Pid, String> {
    let command = CString::new(command).map_err(|_| "the command holds a NUL byte".to_string())?;
    let mut vars: BTreeMap<Vec<u8>, Vec<u8>> = std::env::vars_os()
        .map(|(k, v)| (k.into_vec(), v.into_vec()))
        .collect();
    vars.extend(
        env.iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes())),
    );
    let env = vars
        .into_iter()
        .map(|(mut pair, value)| {
            pair.push(b'=');
            pair.extend(value);
            CString::new(pair)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "the environment holds a NUL byte".to_string())?;
    let supervisor = getpid();
    // SAFETY: this process has one thread, so the child may do anything.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => {
            if let Err(e) = become_guard(&fds) {
                let _ = writeln!(std::io::stderr(), "corral: cannot start the step: {e}");
                std::process::exit(125);
            }
            guard::guard_step(supervisor, &command, &env)
        }
        Err(e) => Err(format!("cannot fork the step's guard: {e}")),
    }
}

/// In the forked guard: takes the step's directory, input and outputs, and
/// closes everything else.
fn become_guard(fds: &[OwnedFd]) -> Result<(), String> {
    let [dir, stdin, stdout, stderr] = fds else {
        return Err("the wrong descriptors".into());
    };
    nix::unistd::fchdir(dir).map_err(|e| format!("cannot enter its directory: {e}"))?;
    nix::unistd::dup2_stdin(stdin).map_err(|e| format!("cannot take its input: {e}"))?;
    nix::unistd::dup2_stdout(stdout).map_err(|e| format!("cannot take its output: {e}"))?;
    nix::unistd::dup2_stderr(stderr).map_err(|e| format!("cannot take its output: {e}"))?;
    close_from(3);
    Ok(())
}

/// Closes every descriptor from `first` on: the guard must not hold the
/// agent's socket, nor another step's pipes (their readers would never see
/// the end of them). One `close_range` call; on a kernel without it (before
/// 5.9), each descriptor `/proc/self/fd` lists.
#[allow(unsafe_code)]
fn close_from(first: RawFd) {
    let from = u32::try_from(first).unwrap_or(0);
    // SAFETY: nothing in the child uses these descriptors again.
    if unsafe { libc::close_range(from, u32::MAX, 0) } == 0 {
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
        // SAFETY: as above.
        let _ = nix::unistd::close(unsafe { OwnedFd::from_raw_fd(fd) });
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

//! The step guard: a tiny process between the agent and a step's `sh -c`, so a
//! step never outlives its agent, not even a `kill -9` of it (the server would
//! run the step elsewhere meanwhile). The agent's step supervisor (see
//! `supervisor.rs`) forks one per step, and the guard:
//!
//! - asks the kernel for `PARENT_GONE` when its parent (the supervisor, which
//!   ends with the agent) ends, then checks that the supervisor is still its
//!   parent, so a supervisor that died before the ask is seen too;
//! - becomes a child subreaper: what the step leaves orphaned (a double fork, a
//!   `setsid` daemon) is reparented to the guard, not to init;
//! - runs `sh -c COMMAND` in a process group of its own, with the guard's
//!   directory, input and output, and the environment it was given;
//! - when the shell ends, when it is asked to stop (SIGTERM, SIGINT, SIGHUP) or
//!   when the supervisor is gone, kills the step's group and every process left
//!   under it with SIGKILL, reaps them, and ends as the shell did: with its exit
//!   code, or by its signal.
//!
//! Linux only: it rests on `prctl`.

use std::ffi::{CStr, CString};
use std::time::Duration;

use nix::errno::Errno;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigSet, Signal, kill, killpg, raise};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpid, getppid};

use crate::AgentError;

/// What the kernel sends the guard when its parent ends. Also when the parent's
/// *thread* that started the guard ends, with the parent alive: only a changed
/// parent means the agent is gone.
pub(crate) const PARENT_GONE: Signal = Signal::SIGUSR1;

/// Signals that ask the guard to stop its step (the agent's timeouts and
/// cancels send SIGTERM).
pub(crate) const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// How a step's shell ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Exited(i32),
    Killed(Signal),
}

/// Runs as a step's guard, in a process forked by the supervisor `parent`:
/// ends the process as the step's shell ended, or with 125 if the guard itself
/// fails, after saying why on stderr.
pub(crate) fn guard_step(parent: Pid, command: &CStr, env: &[CString]) -> ! {
    match guard(parent, command, env) {
        Ok(Ended::Exited(code)) => std::process::exit(code),
        Ok(Ended::Killed(signal)) => die_by(signal),
        Err(e) => {
            eprintln!("corral: {e}");
            std::process::exit(125)
        }
    }
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> AgentError {
    move |errno| AgentError::Guard { what, errno }
}

fn guard(parent: Pid, command: &CStr, env: &[CString]) -> Result<Ended, AgentError> {
    // The signals the guard acts on, blocked so that they wait for `SigSet::wait`.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, PARENT_GONE].into_iter().chain(STOP) {
        signals.add(signal);
    }
    signals.thread_block().map_err(sys("block signals"))?;
    prctl::set_pdeathsig(PARENT_GONE).map_err(sys("ask for a signal when the agent ends"))?;
    if getppid() != parent {
        // The agent ended before the ask: the step must not start.
        return Ok(Ended::Killed(Signal::SIGKILL));
    }
    prctl::set_child_subreaper(true).map_err(sys("become a subreaper"))?;
    let shell = start_shell(command, env)?;
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if shell_ended(shell) {
                    break;
                }
            }
            Ok(PARENT_GONE) if getppid() == parent => {}
            // Asked to stop, the agent gone, or no way to wait: the step ends now.
            _ => break,
        }
    }
    Ok(kill_all(shell))
}

/// Starts `sh -c command` in a process group of its own, with the guard's
/// directory, input and output, `env`, no signal blocked and SIGPIPE back to
/// its default action (Rust programs ignore SIGPIPE).
fn start_shell(command: &CStr, env: &[CString]) -> Result<Pid, AgentError> {
    let args = [c"sh", c"-c", command];
    let mut attr = PosixSpawnAttr::init().map_err(sys("prepare the shell"))?;
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .and_then(|()| attr.set_pgroup(Pid::from_raw(0)))
    .and_then(|()| attr.set_sigmask(&SigSet::empty()))
    .and_then(|()| attr.set_sigdefault(&pipe))
    .map_err(sys("prepare the shell"))?;
    let actions = PosixSpawnFileActions::init().map_err(sys("prepare the shell"))?;
    posix_spawnp(c"sh", &actions, &attr, &args, env).map_err(AgentError::Shell)
}

/// Reaps the processes under the guard that ended, except the shell: tells
/// whether it ended, and leaves it a zombie, so its pid (the id of the step's
/// group) cannot be reused before the group is killed.
fn shell_ended(shell: Pid) -> bool {
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::All, peek).map(|status| status.pid()) {
            Ok(Some(pid)) if pid == shell => return true,
            Ok(Some(pid)) => {
                let _ = waitpid(pid, None);
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

/// Kills the step's group and every process under the guard with SIGKILL and
/// reaps them all; returns how the shell ended.
fn kill_all(shell: Pid) -> Ended {
    let _ = killpg(shell, Signal::SIGKILL);
    let mut ended = Ended::Killed(Signal::SIGKILL);
    loop {
        for pid in children() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        // Killed processes may leave children of their own, which come to the
        // guard: kill again until nothing is left.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == shell => ended = Ended::Exited(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == shell => {
                    ended = Ended::Killed(signal)
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => {}
                Err(_) => return ended,
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The guard's children: the shell, and what was orphaned below it. The
/// guard has one thread, whose children the kernel lists; without that list
/// (a kernel without `CONFIG_PROC_CHILDREN`), every process is looked at.
fn children() -> Vec<Pid> {
    let me = getpid().as_raw();
    if let Ok(listed) = std::fs::read_to_string(format!("/proc/self/task/{me}/children")) {
        return listed
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .map(Pid::from_raw)
            .collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me))
        .map(Pid::from_raw)
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold anything: fields follow the
    // last `)`, the state first, then the parent.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Ends the guard by `signal`, as its shell ended, without a core dump of its own.
fn die_by(signal: Signal) -> ! {
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    let mut only = SigSet::empty();
    only.add(signal);
    let _ = only.thread_unblock();
    // Rust's runtime catches SIGSEGV and SIGBUS once (to report stack
    // overflows) and then restores the default: the second raise ends the guard.
    let _ = raise(signal);
    let _ = raise(signal);
    // SIGPIPE, which Rust programs ignore, ends it as a shell would report it.
    std::process::exit(128 + signal as i32)
}

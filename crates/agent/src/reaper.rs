//! The step supervisor's processes (see `supervisor.rs`). The supervisor is a
//! child subreaper: what a step leaves orphaned (a double fork, a `setsid`
//! daemon) is reparented to it, not to init. It starts each step's `sh -c` in a
//! session of its own, whose id is the shell's pid, and tells its children
//! apart by their session:
//!
//! - a child in a running step's session is that step's, and is left alone;
//! - a child in an ended step's session is killed;
//! - a child in no step's session left its step's session (`setsid`). Which
//!   step started it is not known; a step that started after it did cannot
//!   have, so it is killed once every running step started after it (at once
//!   when it is alone, as it is most of the time).
//!
//! When a step's shell ends (or is killed by a stop), its session is killed;
//! the shell is left a zombie, so its pid (the session's and the group's id)
//! cannot be reused, until no child of the supervisor is in its session any
//! more. Every process of a session hangs below a child of the supervisor in
//! that session, reparented to it when its parent ended: a session with no
//! such child is empty. Only then, and once every process the supervisor
//! killed is reaped, is the step's end reported. Children are only ever
//! signalled before they are reaped, by the supervisor, so a pid it signals
//! is its own child's.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawnp};
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::{Pid, SysconfVar, getpid, sysconf};

use crate::supervisor::Ended;

/// A step the supervisor started.
struct Step {
    id: u64,
    /// Its shell: the id of its session and of its process group.
    shell: Pid,
    /// When it started, in clock ticks since boot, at most its shell's start
    /// time as `/proc/PID/stat` gives it.
    started: u64,
    /// How its shell ended, once it has.
    ended: Option<Ended>,
    /// Killed because the agent's lease lapsed.
    fenced: bool,
}

/// The steps that run, and those that ended but are not reported yet.
pub(crate) struct Reaper {
    steps: Vec<Step>,
    /// The supervisor's environment, `KEY=value`, by key.
    env: Vec<(Vec<u8>, CString)>,
    /// Nanoseconds per clock tick.
    tick: u64,
}

impl Reaper {
    pub(crate) fn new() -> Result<Reaper, String> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("cannot become a subreaper: {e}"))?;
        let per_second = match sysconf(SysconfVar::CLK_TCK) {
            Ok(Some(ticks)) => u64::try_from(ticks).ok().filter(|&t| t > 0),
            _ => None,
        }
        .ok_or("no clock tick")?;
        let mut env: Vec<(Vec<u8>, CString)> = std::env::vars_os()
            .filter_map(|(key, value)| {
                let key = key.into_encoded_bytes();
                let mut pair = key.clone();
                pair.push(b'=');
                pair.extend(value.into_encoded_bytes());
                Some((key, CString::new(pair).ok()?))
            })
            .collect();
        env.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Reaper {
            steps: Vec::new(),
            env,
            tick: 1_000_000_000 / per_second,
        })
    }

    /// Starts `sh -c command` in a session of its own, in `dir`, with `stdin`,
    /// `stdout` and `stderr`, the supervisor's environment with `env` over it,
    /// no signal blocked and SIGPIPE back to its default action (Rust programs
    /// ignore it). Every other descriptor of the supervisor is close-on-exec.
    pub(crate) fn start(
        &mut self,
        id: u64,
        command: &str,
        env: &std::collections::BTreeMap<String, String>,
        [dir, stdin, stdout, stderr]: &[OwnedFd; 4],
    ) -> Result<(), String> {
        let command =
            CString::new(command).map_err(|_| "the command holds a NUL byte".to_string())?;
        let given = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "the environment holds a NUL byte".to_string())?;
        let mut envp: Vec<&CStr> = self
            .env
            .iter()
            .filter(|(key, _)| !std::str::from_utf8(key).is_ok_and(|key| env.contains_key(key)))
            .map(|(_, pair)| pair.as_c_str())
            .collect();
        envp.extend(given.iter().map(CString::as_c_str));

        let spawn = |errno: Errno| format!("cannot start sh: {errno}");
        let mut attr = PosixSpawnAttr::init().map_err(spawn)?;
        let mut pipe = SigSet::empty();
        pipe.add(Signal::SIGPIPE);
        let setsid = PosixSpawnFlags::from_bits_retain(libc::c_int::from(libc::POSIX_SPAWN_SETSID));
        attr.set_flags(
            setsid
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
        )
        .and_then(|()| attr.set_sigmask(&SigSet::empty()))
        .and_then(|()| attr.set_sigdefault(&pipe))
        .map_err(spawn)?;
        let mut actions = PosixSpawnFileActions::init().map_err(spawn)?;
        for (fd, to) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
            actions.add_dup2(fd.as_raw_fd(), to).map_err(spawn)?;
        }
        // The shell starts in the supervisor's directory: enter the step's for
        // the spawn, and leave it after, so the supervisor holds none.
        nix::unistd::fchdir(dir).map_err(|e| format!("cannot enter its directory: {e}"))?;
        let started = self.now();
        let shell = posix_spawnp(c"sh", &actions, &attr, &[c"sh", c"-c", &command], &envp);
        let _ = nix::unistd::chdir("/");
        let shell = shell.map_err(spawn)?;
        self.steps.push(Step {
            id,
            shell,
            started,
            ended: None,
            fenced: false,
        });
        Ok(())
    }

    /// Kills a running step's session; its end is reported as its shell's.
    pub(crate) fn stop(&mut self, id: u64) {
        // A shell not reaped yet: its pid is still the group's id.
        if let Some(step) = self.steps.iter().find(|s| s.id == id && s.ended.is_none()) {
            let _ = killpg(step.shell, Signal::SIGKILL);
        }
    }

    /// Kills every running step's session, the agent's lease having lapsed:
    /// their ends are reported as [`Ended::Fenced`].
    pub(crate) fn fence_all(&mut self) {
        for step in self
            .steps
            .iter_mut()
            .filter(|s| s.ended.is_none() && !s.fenced)
        {
            step.fenced = true;
            let _ = killpg(step.shell, Signal::SIGKILL);
        }
    }

    /// Looks at the supervisor's children after some of them changed: notes the
    /// shells that ended and kills their sessions, kills what ended steps
    /// left, reaps what ended; returns the steps whose end can be reported.
    pub(crate) fn sweep(&mut self) -> Vec<(u64, Ended)> {
        // The shells first: when one has ended, its children are already the
        // supervisor's, and the list below has them.
        for step in self.steps.iter_mut().filter(|s| s.ended.is_none()) {
            let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let ended = match waitid(Id::Pid(step.shell), peek) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) if step.fenced => {
                    Ended::Fenced
                }
                Ok(WaitStatus::Exited(_, code)) => Ended::Exited(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => Ended::Killed(signal as i32),
                _ => continue,
            };
            step.ended = Some(ended);
            let _ = killpg(step.shell, Signal::SIGKILL);
        }
        let oldest_running = self
            .steps
            .iter()
            .filter(|s| s.ended.is_none())
            .map(|s| s.started)
            .min();
        // Sessions of ended steps that still have processes, and whether
        // anything killed is still to be reaped.
        let mut busy = Vec::new();
        let mut killed = false;
        for pid in children() {
            if self.steps.iter().any(|s| s.shell == pid) {
                continue;
            }
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                // It had ended, and is reaped now.
                _ => continue,
            }
            let Some(stat) = Stat::of(pid) else {
                continue;
            };
            match self.steps.iter().find(|s| s.shell == stat.session) {
                Some(step) if step.ended.is_none() => {}
                Some(step) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    busy.push(step.shell);
                }
                None if oldest_running.is_none_or(|t| t > stat.started) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    killed = true;
                }
                None => {}
            }
        }
        if killed {
            return Vec::new();
        }
        let mut reported = Vec::new();
        self.steps.retain(|step| match &step.ended {
            Some(ended) if !busy.contains(&step.shell) => {
                let _ = waitpid(step.shell, None);
                reported.push((step.id, ended.clone()));
                false
            }
            _ => true,
        });
        reported
    }

    /// Kills every step and everything under the supervisor, and reaps them;
    /// `wait` waits a little for children to end.
    pub(crate) fn kill_all(&mut self, mut wait: impl FnMut()) {
        for step in &self.steps {
            let _ = killpg(step.shell, Signal::SIGKILL);
        }
        self.steps.clear();
        loop {
            // Killed processes leave children of their own, which come to the
            // supervisor: kill again until nothing is left.
            for pid in children() {
                let _ = kill(pid, Signal::SIGKILL);
            }
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            wait();
        }
    }

    /// Now, in clock ticks since boot, rounded down.
    fn now(&self) -> u64 {
        let nanos = clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
            let seconds = u64::try_from(t.tv_sec()).unwrap_or(0);
            seconds * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0)
        });
        nanos / self.tick
    }
}

/// What the supervisor reads of a process in `/proc/PID/stat`.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    parent: i32,
    session: Pid,
    /// In clock ticks since boot.
    started: u64,
}

impl Stat {
    fn of(pid: impl std::fmt::Display) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    fn parse(stat: &str) -> Option<Stat> {
        // The command name, in parentheses, may hold anything: fields follow
        // the last `)`, the state first; the parent is the 4th field, the
        // session the 6th, the start time the 22nd.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(Stat {
            parent: fields.get(1)?.parse().ok()?,
            session: Pid::from_raw(fields.get(3)?.parse().ok()?),
            started: fields.get(19)?.parse().ok()?,
        })
    }
}

/// The supervisor's children: its steps' shells, and what was orphaned below
/// them. The supervisor has one thread, whose children the kernel lists;
/// without that list (a kernel without `CONFIG_PROC_CHILDREN`), every process
/// is looked at.
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
        .filter(|&pid| Stat::of(pid).is_some_and(|stat| stat.parent == me))
        .map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_is_read_past_a_command_name_with_parentheses_and_spaces() {
        let line = "4242 (a) b (c) S 7 4242 4240 0 -1 4194560 105 0 0 0 0 0 0 0 20 0 1 0 123456 2408448 202\n";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                parent: 7,
                session: Pid::from_raw(4240),
                started: 123456,
            })
        );
        assert_eq!(Stat::parse("4242 (cut"), None);
    }

    #[test]
    fn this_process_has_its_session_and_parent() {
        let stat = Stat::of(getpid()).expect("this process's stat");
        assert_eq!(stat.session, nix::unistd::getsid(None).expect("a session"));
        assert_eq!(stat.parent, nix::unistd::getppid().as_raw());
    }
}

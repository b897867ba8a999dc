//! The step supervisor's processes (see `supervisor.rs`). The supervisor is a
//! child subreaper: what a step leaves orphaned (a double fork, a `setsid`
//! daemon) is reparented to it, not to init, unless the step has a PID
//! namespace of its own, whose init takes it. Each step's first process (its
//! *leader*: its shell, or its intermediate child when confined, see
//! `confine.rs`) starts a session of its own, whose id is its pid, and the
//! supervisor tells its children apart by their session:
//!
//! - a child in a running step's session is that step's, and is left alone;
//! - a child in an ended step's session is killed;
//! - a child in no step's session left its step's session (`setsid`). Which
//!   step started it is not known; a step that started after it did cannot
//!   have, so it is killed once every running step started after it (at once
//!   when it is alone, as it is most of the time).
//!
//! When a step's leader ends (or is killed by a stop), its session is killed,
//! and its cgroup if it has one: every process the step started, whatever its
//! session (see `cgroup.rs`). The leader is left a zombie, so its pid (the
//! session's and the group's id) cannot be reused, until no child of the
//! supervisor is in its session any more and its cgroup is empty. Every
//! process of a session hangs below a child of the supervisor in that session,
//! reparented to it when its parent ended: a session with no such child is
//! empty. Only then, and once every process the supervisor killed is reaped,
//! is the step's end reported, with what it used (its cgroup's counters, or
//! the rusage of what the supervisor reaped of it), and its cgroup removed.
//! Children are only ever signalled before they are reaped, by the
//! supervisor, so a pid it signals is its own child's.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use corral_api::Confinement;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::{Pid, SysconfVar, getpid, sysconf};

use crate::cgroup::{self, Cgroups, Layout};
use crate::confine::{self, Confined, Launch, Program, StepUser, UidLease, Workspace};
use crate::supervisor::{Ended, Limits, Setup, Usage};

/// A step the supervisor started.
struct Step {
    id: u64,
    /// Its first process: the id of its session and of its process group.
    leader: Pid,
    /// When it started, in clock ticks since boot, at most its leader's start
    /// time as `/proc/PID/stat` gives it.
    started: u64,
    /// How its leader ended, once it has.
    ended: Option<Ended>,
    /// Killed because the agent's lease lapsed.
    fenced: bool,
    cgroup: Option<cgroup::Attempt>,
    /// The uid it runs as, held until its processes are gone.
    uid: Option<Rc<UidLease>>,
    /// Where its processes say why they could not set the step up.
    report: OwnedFd,
    /// The rusage of its processes the supervisor reaped.
    reaped: Reaped,
}

/// The rusage of reaped processes (each with its own waited-for children).
#[derive(Debug, Default, Clone, Copy)]
struct Reaped {
    cpu_seconds: f64,
    max_rss_bytes: u64,
}

/// A step's leader, just forked.
struct Launched {
    leader: Pid,
    /// In clock ticks since boot, before the fork.
    started: u64,
    uid: Option<Rc<UidLease>>,
}

/// What starts a step.
pub(crate) struct Start<'a> {
    pub id: u64,
    pub command: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub dir: &'a Path,
    pub limits: Limits,
}

/// The steps that run, and those that ended but are not reported yet.
pub(crate) struct Reaper {
    steps: Vec<Step>,
    /// The supervisor's environment, `KEY=value`, by key.
    env: Vec<(Vec<u8>, CString)>,
    /// Nanoseconds per clock tick.
    tick: u64,
    user: StepUser,
    /// Hidden from confined steps: canonical, each under none of the others.
    hide: Vec<PathBuf>,
    /// Steps get namespaces and a uid of their own.
    namespaces: bool,
    cgroups: Option<Cgroups>,
    /// Cgroups of reported steps not removed yet, with how many times their
    /// removal failed.
    leftovers: Vec<(cgroup::Attempt, u32)>,
    /// The uid each workspace's running steps share, by workspace: the steps
    /// of a run that run at once share its workspace, so they share its
    /// files' owner too.
    uids: BTreeMap<PathBuf, Weak<UidLease>>,
}

impl Reaper {
    /// Sets up what `setup` asks where it can: namespaces if the supervisor
    /// runs as root and a probe of them succeeds, cgroups where it can make
    /// them (below those of `agent`, this supervisor's parent).
    pub(crate) fn new(setup: &Setup, agent: Pid) -> Result<Reaper, String> {
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
        let hide = hidden(&setup.hide);
        let namespaces = match &setup.user {
            StepUser::Agent => false,
            _ if !nix::unistd::geteuid().is_root() => {
                eprintln!(
                    "corral: the agent is not root: its steps run as its own user, unconfined"
                );
                false
            }
            StepUser::Uids { first, .. } => probe(*first, *first, &hide),
            StepUser::Named { uid, gid, .. } => probe(*uid, *gid, &hide),
        };
        let cgroups = setup
            .cgroups
            .then(|| {
                let agent = u32::try_from(agent.as_raw()).unwrap_or(0);
                Cgroups::setup(&Layout::of_this_process(), agent, setup.pids_max)
            })
            .filter(Cgroups::any);
        Ok(Reaper {
            steps: Vec::new(),
            env,
            tick: 1_000_000_000 / per_second,
            user: setup.user.clone(),
            hide,
            namespaces,
            cgroups,
            leftovers: Vec::new(),
            uids: BTreeMap::new(),
        })
    }

    /// How steps are confined.
    pub(crate) fn confinement(&self) -> Confinement {
        let user = match self.namespaces {
            true => self.user.describe(),
            false => StepUser::Agent.describe(),
        };
        Confinement {
            namespaces: self.namespaces,
            cgroup: self
                .cgroups
                .as_ref()
                .map_or("none", Cgroups::mode)
                .to_string(),
            user,
        }
    }

    /// Starts `sh -c command` in a session (and cgroups) of its own, in `dir`
    /// (the descriptor, and its path for a confined step), with `stdin`,
    /// `stdout` and `stderr`, the supervisor's environment with `env` over
    /// it, no signal blocked and SIGPIPE back to its default action (Rust
    /// programs ignore it), and no other descriptor.
    pub(crate) fn start(
        &mut self,
        start: Start,
        [dir, stdin, stdout, stderr]: &[OwnedFd; 4],
    ) -> Result<(), String> {
        let path = match self.namespaces {
            true => std::fs::canonicalize(start.dir)
                .map_err(|e| format!("cannot find {}: {e}", start.dir.display()))?,
            false => start.dir.to_path_buf(),
        };
        let uid = self.uid_for(&path)?;
        let command =
            CString::new(start.command).map_err(|_| "the command holds a NUL byte".to_string())?;
        let given = start
            .env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "the environment holds a NUL byte".to_string())?;
        let mut envp: Vec<&CStr> = self
            .env
            .iter()
            .filter(|(key, _)| {
                !std::str::from_utf8(key).is_ok_and(|key| start.env.contains_key(key))
            })
            .map(|(_, pair)| pair.as_c_str())
            .collect();
        envp.extend(given.iter().map(CString::as_c_str));
        let (report, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        let mut cgroup = match &self.cgroups {
            Some(cgroups) => Some(
                cgroups
                    .attempt(&format!("s{}", start.id), &start.limits)
                    .map_err(|e| format!("cannot make its cgroup: {e}"))?,
            ),
            None => None,
        };
        let program = Program {
            argv: [c"sh", c"-c", &command],
            envp: &envp,
            stdio: [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()],
        };
        let workspace = Workspace {
            path: &path,
            fd: dir.as_fd(),
        };
        let launched = self.launch(program, workspace, cgroup.as_ref(), report_w, uid);
        let launched = match launched {
            Ok(launched) => launched,
            Err(e) => {
                if let Some(mut cgroup) = cgroup.take()
                    && !cgroup.remove()
                {
                    self.leftovers.push((cgroup, 1));
                }
                return Err(e);
            }
        };
        self.steps.push(Step {
            id: start.id,
            leader: launched.leader,
            started: launched.started,
            ended: None,
            fenced: false,
            cgroup,
            uid: launched.uid,
            report,
            reaped: Reaped::default(),
        });
        Ok(())
    }

    /// The uid a step in `workspace` runs as, with a range's: the one the
    /// steps running there share, or a fresh one (with whether it is).
    fn uid_for(&mut self, workspace: &Path) -> Result<Option<(Rc<UidLease>, bool)>, String> {
        let (true, StepUser::Uids { first, last }) = (self.namespaces, &self.user) else {
            return Ok(None);
        };
        if let Some(shared) = self.uids.get(workspace).and_then(Weak::upgrade) {
            return Ok(Some((shared, false)));
        }
        let lease = Rc::new(confine::lease_uid(*first, *last)?);
        self.uids.retain(|_, uid| uid.strong_count() > 0);
        self.uids
            .insert(workspace.to_path_buf(), Rc::downgrade(&lease));
        Ok(Some((lease, true)))
    }

    /// Forks the step's leader, as `uid` where a range gives it (handing it
    /// the workspace's files of earlier steps when it is fresh).
    fn launch(
        &self,
        program: Program,
        workspace: Workspace,
        cgroup: Option<&cgroup::Attempt>,
        report: OwnedFd,
        uid: Option<(Rc<UidLease>, bool)>,
    ) -> Result<Launched, String> {
        let confined = match (self.namespaces, &self.user, &uid) {
            (true, StepUser::Uids { first, last }, Some((lease, fresh))) => {
                let earlier = fresh.then_some((*first, *last));
                Some((lease.uid, lease.uid, earlier))
            }
            (true, StepUser::Named { uid, gid, .. }, _) => Some((*uid, *gid, None)),
            _ => None,
        };
        let procs = cgroup.map(cgroup::Attempt::procs).unwrap_or_default();
        let launch = Launch {
            program: Some(program),
            workspace: Some(workspace),
            cgroups: &procs,
            confined: confined.map(|(uid, gid, earlier)| Confined {
                uid,
                gid,
                hide: &self.hide,
                earlier,
            }),
            report: report.as_fd(),
        };
        let started = self.now();
        let leader = confine::launch(&launch)?;
        Ok(Launched {
            leader,
            started,
            uid: uid.map(|(lease, _)| lease),
        })
    }

    /// Kills a running step's processes; its end is reported as its leader's.
    pub(crate) fn stop(&mut self, id: u64) {
        // A leader not reaped yet: its pid is still the group's id.
        if let Some(step) = self.steps.iter().find(|s| s.id == id && s.ended.is_none()) {
            step.kill();
        }
    }

    /// Kills every running step's processes, the agent's lease having lapsed:
    /// their ends are reported as [`Ended::Fenced`].
    pub(crate) fn fence_all(&mut self) {
        for step in self
            .steps
            .iter_mut()
            .filter(|s| s.ended.is_none() && !s.fenced)
        {
            step.fenced = true;
            step.kill();
        }
    }

    /// Whether ended steps wait for their cgroups to empty, or cgroups to be
    /// removed (for a few seconds; then as steps end, and when the supervisor
    /// does): the supervisor then looks again soon.
    pub(crate) fn draining(&self) -> bool {
        self.leftovers
            .iter()
            .any(|(_, failed)| *failed < LEFTOVER_TRIES)
            || self
                .steps
                .iter()
                .any(|s| s.ended.is_some() && s.cgroup.is_some())
    }

    /// Looks at the supervisor's children after some of them changed: notes the
    /// leaders that ended and kills their steps' processes, kills what ended
    /// steps left, reaps what ended; returns the steps whose end can be
    /// reported, with what they used.
    pub(crate) fn sweep(&mut self) -> Vec<(u64, Ended, Option<Usage>)> {
        // The leaders first: when one has ended, its children are already the
        // supervisor's, and the list below has them.
        for step in self.steps.iter_mut().filter(|s| s.ended.is_none()) {
            let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let ended = match waitid(Id::Pid(step.leader), peek) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) if step.fenced => {
                    Ended::Fenced
                }
                Ok(WaitStatus::Exited(_, code)) => Ended::Exited(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => Ended::Killed(signal as i32),
                _ => continue,
            };
            step.ended = Some(ended);
            step.kill();
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
            if self.steps.iter().any(|s| s.leader == pid) {
                continue;
            }
            let stat = Stat::of(pid);
            match reap(pid, false) {
                Ok(None) => {}
                // It had ended, and is reaped now: what it used is its step's.
                Ok(Some(reaped)) => {
                    let step = stat
                        .as_ref()
                        .and_then(|stat| self.steps.iter_mut().find(|s| s.leader == stat.session));
                    if let Some(step) = step {
                        step.reaped.add(reaped);
                    }
                    continue;
                }
                Err(_) => continue,
            }
            let Some(stat) = stat else {
                continue;
            };
            match self.steps.iter().find(|s| s.leader == stat.session) {
                Some(step) if step.ended.is_none() => {}
                Some(step) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    busy.push(step.leader);
                }
                None if oldest_running.is_none_or(|t| t > stat.started) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    killed = true;
                }
                None => {}
            }
        }
        self.remove_leftovers();
        if killed {
            return Vec::new();
        }
        let mut reported = Vec::new();
        let mut removing = Vec::new();
        self.steps.retain_mut(|step| {
            let Some(ended) = step.ended.clone() else {
                return true;
            };
            if busy.contains(&step.leader) {
                return true;
            }
            if let Some(cgroup) = &step.cgroup
                && !cgroup.is_empty()
            {
                // What it started after the kill, or an exit the cgroup has
                // not counted yet: killed again, looked at again soon.
                cgroup.kill();
                return true;
            }
            if let Ok(Some(reaped)) = reap(step.leader, true) {
                step.reaped.add(reaped);
            }
            let ended = match (ended, said(&step.report)) {
                (ended @ Ended::Fenced, _) | (ended, None) => ended,
                (_, Some(why)) => Ended::Failed(why),
            };
            reported.push((step.id, ended, Some(step.usage())));
            if let Some(cgroup) = step.cgroup.take() {
                removing.push(cgroup);
            }
            false
        });
        // Removed on the next look, a moment later: after the ends are
        // reported, so that removing them (slow where the kernel waits for a
        // grace period) does not hold the reports up.
        self.leftovers
            .extend(removing.into_iter().map(|cgroup| (cgroup, 0)));
        reported
    }

    /// Kills every step and everything under the supervisor, reaps them, and
    /// removes their cgroups and the agent's; `wait` waits a little for
    /// children to end.
    pub(crate) fn kill_all(&mut self, mut wait: impl FnMut()) {
        for step in &self.steps {
            step.kill();
        }
        let mut uids = Vec::new();
        for step in std::mem::take(&mut self.steps) {
            uids.extend(step.uid);
            self.leftovers.extend(step.cgroup.map(|cgroup| (cgroup, 0)));
        }
        'reaping: loop {
            // Killed processes leave children of their own, which come to the
            // supervisor: kill again until nothing is left.
            for pid in children() {
                let _ = kill(pid, Signal::SIGKILL);
            }
            for (cgroup, _) in &self.leftovers {
                cgroup.kill();
            }
            loop {
                match reap(Pid::from_raw(-1), false) {
                    Ok(None) => break,
                    Ok(Some(_)) => {}
                    Err(_) => break 'reaping,
                }
            }
            wait();
        }
        drop(uids);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.leftovers.is_empty() && std::time::Instant::now() < deadline {
            self.leftovers.retain_mut(|(cgroup, _)| !cgroup.remove());
            wait();
        }
        for (cgroup, _) in &self.leftovers {
            eprintln!("corral: cannot remove the cgroups {}", cgroup.describe());
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove();
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

/// How many times in a row (10 ms apart) the removal of an empty cgroup is
/// tried before it is tried only as steps end.
const LEFTOVER_TRIES: u32 = 300;

impl Reaper {
    /// Tries again to remove the cgroups of reported steps.
    fn remove_leftovers(&mut self) {
        self.leftovers.retain_mut(|(cgroup, failed)| {
            if cgroup.remove() {
                return false;
            }
            *failed += 1;
            if *failed == LEFTOVER_TRIES {
                eprintln!(
                    "corral: cannot remove the cgroups {}; trying again as steps end",
                    cgroup.describe()
                );
            }
            true
        });
    }
}

impl Step {
    /// Kills its session, and its cgroup: every process it started.
    fn kill(&self) {
        let _ = killpg(self.leader, Signal::SIGKILL);
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
    }

    /// What it used: its cgroup's counters, what they lack from the rusage of
    /// what was reaped of it.
    fn usage(&self) -> Usage {
        let measured = self
            .cgroup
            .as_ref()
            .map(cgroup::Attempt::measured)
            .unwrap_or_default();
        Usage {
            cpu_seconds: measured.cpu_seconds.unwrap_or(self.reaped.cpu_seconds),
            memory_peak_bytes: measured
                .memory_peak_bytes
                .unwrap_or(self.reaped.max_rss_bytes),
            throttled_seconds: measured.throttled_seconds.unwrap_or(0.0),
            oom_kills: measured.oom_kills,
        }
    }
}

impl Reaped {
    fn add(&mut self, other: Reaped) {
        self.cpu_seconds += other.cpu_seconds;
        self.max_rss_bytes = self.max_rss_bytes.max(other.max_rss_bytes);
    }
}

/// Reaps `pid` (any child if -1), waiting for it if `block`: `None` while it
/// runs; what it used, with the children it waited for, once reaped.
#[allow(unsafe_code)]
fn reap(pid: Pid, block: bool) -> Result<Option<Reaped>, Errno> {
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let options = if block { 0 } else { libc::WNOHANG };
    // SAFETY: `status` and `usage` are valid places for what wait4 writes.
    let waited = unsafe { libc::wait4(pid.as_raw(), &mut status, options, &mut usage) };
    match Errno::result(waited)? {
        0 => Ok(None),
        _ => {
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            Ok(Some(Reaped {
                cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
                max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
            }))
        }
    }
}

/// What a step's processes wrote on their way to exec: why it could not be set
/// up (every writer has ended, or exec'd and so closed it).
fn said(report: &OwnedFd) -> Option<String> {
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = nix::unistd::read(report, &mut buf) {
        said.extend_from_slice(&buf[..n]);
    }
    (!said.is_empty()).then(|| String::from_utf8_lossy(&said).into_owned())
}

/// The paths to hide, canonical (those that do not exist are not there to
/// see), each under none of the others.
fn hidden(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut hide: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    hide.sort_by_key(|p| p.components().count());
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in hide {
        if !kept.iter().any(|k| path.starts_with(k)) {
            kept.push(path);
        }
    }
    kept
}

/// Whether steps can be confined as `uid`, said loudly when not.
fn probe(uid: u32, gid: u32, hide: &[PathBuf]) -> bool {
    match confine::probe(uid, gid, hide) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("corral: steps cannot have namespaces here ({e}): they run unconfined");
            false
        }
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

//! Each attempt's cgroups, below the agent's own in every hierarchy it can use:
//! limits the kernel enforces (a cpu quota, memory with no swap, a cap on
//! processes), what the attempt used by the kernel's own counters, and a kill
//! that reaches every process it started, however it left its session.
//!
//! cgroup v2 where the agent's cgroup can hand `cpu`, `memory` and `pids` down
//! to its children: the limits are set there (`v2`). Otherwise the v1 `cpu`,
//! `cpuacct`, `memory` and `pids` hierarchies set them (`v1`), and `freezer`
//! holds an attempt still while it is killed. A v2 hierarchy without
//! controllers (a hybrid host) still tracks and kills: it has `cgroup.kill`,
//! `cgroup.events` and `cpu.stat`'s `usage_usec` without any controller.
//!
//! An attempt's cgroup is `<own>/corral-<supervisor pid>/s<step>` in each
//! hierarchy, `<own>` being the agent's (from `/proc/self/cgroup`): each
//! supervisor has a tree of its own. It removes an attempt's once it is empty,
//! and its own when it ends; its agent removes what a supervisor killed on its
//! own left, and any supervisor what those of agents that are gone left. A few
//! small files per attempt, written by hand: no library needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::supervisor::Limits;

/// The cpu quota's period, in microseconds.
const PERIOD_US: u64 = 100_000;

/// The smallest quota the kernel takes, in microseconds.
const MIN_QUOTA_US: u64 = 1_000;

/// The v1 controllers attempts use.
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];

/// The v2 controllers the limits need.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The agent's own cgroups, as `/proc/self/mountinfo` and `/proc/self/cgroup`
/// say.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Its cgroup in the v2 hierarchy.
    pub v2: Option<PathBuf>,
    /// Its cgroup in each v1 hierarchy with a controller attempts use, and
    /// those controllers.
    pub v1: Vec<(PathBuf, Vec<String>)>,
}

impl Layout {
    pub fn of_this_process() -> Layout {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        Layout::parse(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup"))
    }

    fn parse(mountinfo: &str, cgroup: &str) -> Layout {
        // Each cgroup mount: its root within its hierarchy, where it is
        // mounted, and its v1 controllers (None for v2).
        let mut mounts: Vec<(PathBuf, PathBuf, Option<Vec<&str>>)> = Vec::new();
        for line in mountinfo.lines() {
            let Some((fields, rest)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = fields.split(' ').collect();
            let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
                continue;
            };
            let mut rest = rest.split(' ');
            let (kind, options) = (rest.next(), rest.nth(1).unwrap_or(""));
            let controllers = match kind {
                Some("cgroup2") => None,
                Some("cgroup") => Some(options.split(',').collect()),
                _ => continue,
            };
            mounts.push((unescape(root), unescape(point), controllers));
        }
        let mut layout = Layout::default();
        for line in cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.is_empty() {
                layout.v2 = layout.v2.or_else(|| {
                    mounts
                        .iter()
                        .filter(|(_, _, v1)| v1.is_none())
                        .find_map(|(root, point, _)| within(root, point, path))
                });
                continue;
            }
            let wanted: Vec<String> = controllers
                .split(',')
                .filter(|c| V1_CONTROLLERS.contains(c))
                .map(String::from)
                .collect();
            let mounted = mounts.iter().find(|(_, _, v1)| {
                v1.as_ref()
                    .is_some_and(|cs| wanted.iter().any(|w| cs.contains(&w.as_str())))
            });
            if let Some(dir) = mounted.and_then(|(root, point, _)| within(root, point, path)) {
                layout.v1.push((dir, wanted));
            }
        }
        layout
    }
}

/// `path` (of a hierarchy) under a mount of `root` at `point`.
fn within(root: &Path, point: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path).strip_prefix(root).ok()?;
    Some(match rel.as_os_str().is_empty() {
        true => point.to_path_buf(),
        false => point.join(rel),
    })
}

/// A mountinfo field, its `\ooo` escapes (spaces, tabs, newlines, `\`) undone.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Where attempts' cgroups are made: this supervisor's `corral-<pid>` in each
/// hierarchy where it could make one.
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// In the v2 hierarchy, and whether the limits' controllers are there.
    v2: Option<(PathBuf, bool)>,
    /// In each v1 hierarchy, with the controllers attempts use there.
    v1: Vec<(PathBuf, Vec<String>)>,
    pids_max: u64,
}

impl Cgroups {
    /// Makes this supervisor's cgroups (`corral-<pid>`) below its agent's
    /// (`agent`), after removing those of supervisors that are gone.
    pub fn setup(layout: &Layout, agent: u32, pids_max: u64) -> Cgroups {
        let name = format!("corral-{}", std::process::id());
        let make = |own: &Path| {
            remove_stale(own);
            let dir = own.join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) => Some(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(dir),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot make a cgroup");
                    None
                }
            }
        };
        let v2 = layout.v2.as_deref().and_then(|own| {
            let dir = make(own)?;
            let limits = delegate(own, &dir, agent);
            Some((dir, limits))
        });
        let v1 = layout
            .v1
            .iter()
            .filter_map(|(own, controllers)| Some((make(own)?, controllers.clone())))
            .collect();
        Cgroups { v2, v1, pids_max }
    }

    /// Where limits are set: `v2`, `v1` or `none`.
    pub fn mode(&self) -> &'static str {
        let v1 = |c: &str| self.v1.iter().any(|(_, cs)| cs.iter().any(|x| x == c));
        if self.v2.as_ref().is_some_and(|(_, limits)| *limits) {
            "v2"
        } else if v1("cpu") && v1("memory") {
            "v1"
        } else {
            "none"
        }
    }

    /// Whether attempts get cgroups at all (to track and kill, if not to
    /// limit).
    pub fn any(&self) -> bool {
        self.v2.is_some() || !self.v1.is_empty()
    }

    /// Makes an attempt's cgroups, named `name`, with `limits`.
    pub fn attempt(&self, name: &str, limits: &Limits) -> std::io::Result<Attempt> {
        let mut attempt = Attempt {
            v2: None,
            v1: Vec::new(),
        };
        let made = self.make(&mut attempt, name, limits);
        if let Err(e) = made {
            attempt.remove();
            return Err(e);
        }
        Ok(attempt)
    }

    fn make(&self, attempt: &mut Attempt, name: &str, limits: &Limits) -> std::io::Result<()> {
        let memory = limits.memory_mib.filter(|&m| m > 0).map(|m| m << 20);
        let quota = limits
            .cpu_millis
            .filter(|&m| m > 0)
            .map(|m| (m * (PERIOD_US / 1000)).max(MIN_QUOTA_US));
        if let Some((parent, limited)) = &self.v2 {
            let dir = parent.join(name);
            std::fs::create_dir(&dir)?;
            attempt.v2 = Some((dir.clone(), *limited));
            if *limited {
                if let Some(quota) = quota {
                    write(&dir, "cpu.max", &format!("{quota} {PERIOD_US}"))?;
                }
                if let Some(bytes) = memory {
                    write(&dir, "memory.max", &bytes.to_string())?;
                    // Absent where swap is not accounted: there is none to use.
                    let _ = write(&dir, "memory.swap.max", "0");
                }
                write(&dir, "pids.max", &self.pids_max.to_string())?;
            }
        }
        for (parent, controllers) in &self.v1 {
            let dir = parent.join(name);
            std::fs::create_dir(&dir)?;
            attempt.v1.push((dir.clone(), controllers.clone()));
            let has = |c: &str| controllers.iter().any(|x| x == c);
            if has("cpu")
                && let Some(quota) = quota
            {
                write(&dir, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
                write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
            }
            if has("memory")
                && let Some(bytes) = memory
            {
                write(&dir, "memory.limit_in_bytes", &bytes.to_string())?;
                // Absent where swap is not accounted: there is none to use.
                let _ = write(&dir, "memory.memsw.limit_in_bytes", &bytes.to_string());
            }
            if has("pids") {
                write(&dir, "pids.max", &self.pids_max.to_string())?;
            }
        }
        Ok(())
    }

    /// Removes this supervisor's cgroups (once its attempts' are gone).
    pub fn remove(&self) {
        let dirs = self
            .v2
            .iter()
            .map(|(d, _)| d)
            .chain(self.v1.iter().map(|(d, _)| d));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Hands the limits' controllers down from `own` to the supervisor's `dir`, and
/// from it to attempts'. A cgroup that holds processes hands none down (but
/// the root): where `own` refuses, the agent and its supervisor move to a leaf
/// of their own (`dir/agent`), as systemd asks of a service it delegates a
/// cgroup to, and `own` is asked again. Where it still refuses (it holds other
/// processes), the limits are not set in v2.
fn delegate(own: &Path, dir: &Path, agent: u32) -> bool {
    let available = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    if !V2_CONTROLLERS.iter().all(|c| available.contains(c)) {
        return false;
    }
    let enable = V2_CONTROLLERS.map(|c| format!("+{c}")).join(" ");
    if write(own, "cgroup.subtree_control", &enable).is_err() {
        let leaf = dir.join("agent");
        let made = match std::fs::create_dir(&leaf) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        };
        let moved = made
            .and_then(|()| write(&leaf, "cgroup.procs", &agent.to_string()))
            .and_then(|()| write(&leaf, "cgroup.procs", &std::process::id().to_string()));
        if moved.is_err() || write(own, "cgroup.subtree_control", &enable).is_err() {
            return false;
        }
    }
    write(dir, "cgroup.subtree_control", &enable).is_ok()
}

/// Removes the cgroups of supervisors that are gone: `corral-<pid>` of no live
/// process, with whatever empty attempts' cgroups they hold.
fn remove_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("corral-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && remove_tree(&entry.path()) {
            tracing::info!(dir = %entry.path().display(), "removed the cgroups of a supervisor that is gone");
        }
    }
}

/// Removes the cgroups of `supervisor`, and what attempts' cgroups they still
/// hold (each must be empty): what a supervisor killed on its own left.
pub(crate) fn remove_supervisor(supervisor: u32) {
    let layout = Layout::of_this_process();
    let owns = layout.v2.iter().chain(layout.v1.iter().map(|(d, _)| d));
    for own in owns {
        remove_tree(&own.join(format!("corral-{supervisor}")));
    }
}

/// Removes a supervisor's cgroup and its attempts' (each must be empty);
/// whether it is gone.
fn remove_tree(dir: &Path) -> bool {
    if let Ok(attempts) = std::fs::read_dir(dir) {
        for attempt in attempts.flatten().filter(|a| a.path().is_dir()) {
            let _ = std::fs::remove_dir(attempt.path());
        }
    }
    std::fs::remove_dir(dir).is_ok()
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot write {value} to {}: {e}", dir.join(file).display()),
        )
    })
}

/// The value of `key` in a file of `key value` lines.
fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A file holding one number.
fn number(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What an attempt used, by its cgroups' counters; what they do not count is
/// `None`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Measured {
    pub cpu_seconds: Option<f64>,
    pub memory_peak_bytes: Option<u64>,
    pub throttled_seconds: Option<f64>,
    /// Processes the OOM killer killed in it.
    pub oom_kills: u64,
}

/// An attempt's cgroups.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// In the v2 hierarchy, and whether its limits are set there.
    v2: Option<(PathBuf, bool)>,
    /// In each v1 hierarchy, with the controllers attempts use there.
    v1: Vec<(PathBuf, Vec<String>)>,
}

impl Attempt {
    /// The `cgroup.procs` files a process writes itself into to join.
    pub fn procs(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.v2
            .iter()
            .map(|(d, _)| d)
            .chain(self.v1.iter().map(|(d, _)| d))
    }

    /// Its cgroup in the v1 hierarchy of `controller`.
    fn v1(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, cs)| cs.iter().any(|c| c == controller))
            .map(|(d, _)| d.as_path())
    }

    /// Its cgroup where limits are set in v2.
    fn v2_limited(&self) -> Option<&Path> {
        self.v2
            .as_ref()
            .filter(|(_, limited)| *limited)
            .map(|(d, _)| d.as_path())
    }

    /// Kills every process in it: `cgroup.kill` in v2; in v1, frozen first so
    /// that nothing forks or exits meanwhile (a pid read is still its own),
    /// then thawed to die. Again on each call: harmless once empty.
    pub fn kill(&self) {
        if let Some((dir, _)) = &self.v2
            && write(dir, "cgroup.kill", "1").is_ok()
        {
            return;
        }
        let Some(dir) = self.dirs().next() else {
            return;
        };
        let freezer = self.v1("freezer");
        if let Some(freezer) = freezer {
            let _ = write(freezer, "freezer.state", "FROZEN");
            for _ in 0..100 {
                match std::fs::read_to_string(freezer.join("freezer.state")) {
                    Ok(state) if state.trim() != "FREEZING" => break,
                    Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                    Err(_) => break,
                }
            }
        }
        for pid in pids(freezer.unwrap_or(dir)) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(freezer) = freezer {
            let _ = write(freezer, "freezer.state", "THAWED");
        }
    }

    /// No process is left in it.
    pub fn is_empty(&self) -> bool {
        if let Some((dir, _)) = &self.v2
            && let Some(populated) = keyed(dir, "cgroup.events", "populated")
        {
            return populated == 0;
        }
        self.dirs().all(|d| pids(d).is_empty())
    }

    /// What it used: from v2's files where its limits are there, from v1's
    /// otherwise; its cpu time from v2 even without controllers.
    pub fn measured(&self) -> Measured {
        let v2 = self.v2.as_ref().map(|(d, _)| d.as_path());
        let limited = self.v2_limited();
        let cpu = v2
            .and_then(|d| keyed(d, "cpu.stat", "usage_usec"))
            .map(|us| us as f64 / 1e6)
            .or_else(|| {
                let ns = number(self.v1("cpuacct")?, "cpuacct.usage")?;
                Some(ns as f64 / 1e9)
            });
        let throttled = limited
            .and_then(|d| keyed(d, "cpu.stat", "throttled_usec"))
            .map(|us| us as f64 / 1e6)
            .or_else(|| {
                let ns = keyed(self.v1("cpu")?, "cpu.stat", "throttled_time")?;
                Some(ns as f64 / 1e9)
            });
        let peak = limited
            .and_then(|d| number(d, "memory.peak"))
            .or_else(|| number(self.v1("memory")?, "memory.max_usage_in_bytes"));
        let oom_kills = limited
            .and_then(|d| keyed(d, "memory.events", "oom_kill"))
            .or_else(|| keyed(self.v1("memory")?, "memory.oom_control", "oom_kill"))
            .unwrap_or(0);
        Measured {
            cpu_seconds: cpu,
            memory_peak_bytes: peak,
            throttled_seconds: throttled,
            oom_kills,
        }
    }

    /// Removes its cgroups (each must be empty); true once all are gone.
    /// What could not be removed is kept, to try again.
    pub fn remove(&mut self) -> bool {
        let gone = |dir: &PathBuf| match std::fs::remove_dir(dir) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if self.v2.as_ref().is_some_and(|(d, _)| gone(d)) {
            self.v2 = None;
        }
        self.v1.retain(|(d, _)| !gone(d));
        self.v2.is_none() && self.v1.is_empty()
    }

    /// Its directories, for messages.
    pub fn describe(&self) -> String {
        self.dirs()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The processes a cgroup lists.
fn pids(dir: &Path) -> Vec<Pid> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests;

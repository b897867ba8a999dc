//! How the step supervisor starts a step's processes, confined when the agent
//! runs as root.
//!
//! For each attempt the supervisor (one thread, so `fork` is safe) forks an
//! *intermediate* child. It joins the attempt's cgroups and starts a session of
//! its own. Unconfined, it then becomes the step's `sh -c` itself, as the
//! agent's user. Confined, it hands the workspace to the attempt's uid,
//! unshares mount, PID, IPC and UTS namespaces, forks the new PID namespace's
//! *init* and ends as the step did. The init makes every mount private, mounts
//! a `/proc` of its own namespace (the step sees only its own processes),
//! fresh tmpfs on `/tmp`, `/var/tmp` and `/dev/shm`, and an empty, root-only
//! tmpfs over each hidden path (the agent's work dir, `--hide`); the workspace,
//! opened before anything hides it, is bound back onto its own path. It forks
//! the step's process and reaps every process of the namespace until that one
//! ends, then passes on its status and exits, which kills what is left there.
//! The step's process drops to the attempt's uid and gid, creates a user
//! namespace mapping just them (after the mount namespace, so the mounts it
//! inherits are locked: it cannot unmount what hides the agent's files), sets
//! `no_new_privs` and execs `sh -c`.
//!
//! Each attempt gets a fresh uid from a range, held by a `flock` on
//! `/run/corral/uids/<uid>` for as long as the attempt has processes, so agents
//! sharing a host never hand one out twice; or a fixed `--step-user`.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, signal, sigprocmask};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, getpid, getppid};
use serde::{Deserialize, Serialize};

/// The uids attempts take when the agent runs as root and is told nothing.
pub const DEFAULT_STEP_UIDS: (u32, u32) = (2_000_000_000, 2_000_065_535);

/// Where agents on a host mark the uids their attempts hold.
const UID_LOCKS: &str = "/run/corral/uids";

/// The confined step's host name.
const HOSTNAME: &str = "corral-step";

/// How deep into a workspace earlier attempts' files are handed over.
const REOWN_DEPTH: usize = 256;

/// Whom steps run as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepUser {
    /// A fresh uid per attempt from this range (inclusive); its gid is the
    /// same number.
    Uids { first: u32, last: u32 },
    /// This user, always.
    Named { name: String, uid: u32, gid: u32 },
    /// The agent's own user, in the agent's namespaces: not confined.
    Agent,
}

impl StepUser {
    /// From the agent's flags: `--step-user NAME`, else `--step-uids A-B`,
    /// else a fresh uid of [`DEFAULT_STEP_UIDS`] when the agent is root, else
    /// the agent's own user.
    pub fn from_flags(uids: Option<&str>, user: Option<&str>) -> Result<StepUser, String> {
        if let Some(name) = user {
            let found = nix::unistd::User::from_name(name)
                .map_err(|e| format!("--step-user {name}: {e}"))?
                .ok_or_else(|| format!("--step-user {name}: no such user"))?;
            if found.uid.is_root() {
                return Err(format!("--step-user {name}: steps never run as root"));
            }
            return Ok(StepUser::Named {
                name: name.to_string(),
                uid: found.uid.as_raw(),
                gid: found.gid.as_raw(),
            });
        }
        if let Some(range) = uids {
            return StepUser::parse_uids(range).map_err(|e| format!("--step-uids: {e}"));
        }
        if nix::unistd::geteuid().is_root() {
            let (first, last) = DEFAULT_STEP_UIDS;
            return Ok(StepUser::Uids { first, last });
        }
        Ok(StepUser::Agent)
    }

    /// `A-B`, a range of uids above 0.
    pub fn parse_uids(range: &str) -> Result<StepUser, String> {
        let bad = || format!("{range:?} is not a range of uids (example: 2000000000-2000065535)");
        let (first, last) = range.split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        // -1 means "unchanged" to chown and setresuid.
        if first == 0 || first > last || last == u32::MAX {
            return Err(bad());
        }
        Ok(StepUser::Uids { first, last })
    }

    /// How the agent says it at registration.
    pub fn describe(&self) -> String {
        match self {
            StepUser::Uids { first, last } => format!("uids {first}-{last}"),
            StepUser::Named { name, .. } => name.clone(),
            StepUser::Agent => {
                let uid = nix::unistd::geteuid();
                match nix::unistd::User::from_uid(uid) {
                    Ok(Some(user)) => user.name,
                    _ => format!("uid {uid}"),
                }
            }
        }
    }
}

/// A uid an attempt holds: no other attempt on the host gets it while the
/// lock lives, which is as long as the attempt has processes.
#[derive(Debug)]
pub(crate) struct UidLease {
    pub uid: u32,
    _lock: File,
}

/// Takes a uid of `first..=last` that no attempt on the host holds, trying
/// from a random one.
pub(crate) fn lease_uid(first: u32, last: u32) -> Result<UidLease, String> {
    let dir = Path::new(UID_LOCKS);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot make {UID_LOCKS}: {e}"))?;
    let span = u64::from(last - first) + 1;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| format!("no random numbers: {e}"))?;
    let start = u64::from_le_bytes(random) % span;
    for i in 0..span {
        let uid = first + u32::try_from((start + i) % span).expect("within the range");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(uid.to_string()))
            .map_err(|e| format!("cannot open {UID_LOCKS}/{uid}: {e}"))?;
        if lock.try_lock().is_ok() {
            return Ok(UidLease { uid, _lock: lock });
        }
    }
    Err(format!("every uid of {first}-{last} is held by an attempt"))
}

/// What a forked child needs to become a step.
pub(crate) struct Launch<'a> {
    /// `sh -c COMMAND`, its environment and its input and outputs; none for a
    /// probe, which ends just before it would exec.
    pub program: Option<Program<'a>>,
    pub workspace: Option<Workspace<'a>>,
    /// The attempt's `cgroup.procs` files.
    pub cgroups: &'a [PathBuf],
    /// Namespaces and an unprivileged user; none runs the step as the agent's
    /// user, in the agent's namespaces.
    pub confined: Option<Confined<'a>>,
    /// Where a process that cannot set the step up says why (close-on-exec,
    /// so it ends with every copy once the step runs).
    pub report: BorrowedFd<'a>,
}

/// `sh -c COMMAND`, its environment, and its input and outputs.
pub(crate) struct Program<'a> {
    pub argv: [&'a CStr; 3],
    pub envp: &'a [&'a CStr],
    pub stdio: [BorrowedFd<'a>; 3],
}

/// The step's directory: its path (in the supervisor's namespace) and the
/// directory itself.
pub(crate) struct Workspace<'a> {
    pub path: &'a Path,
    pub fd: BorrowedFd<'a>,
}

/// How a confined step runs: as whom, and not seeing what.
pub(crate) struct Confined<'a> {
    pub uid: u32,
    pub gid: u32,
    /// Hidden behind an empty tmpfs: canonical paths, each under none of the
    /// others.
    pub hide: &'a [PathBuf],
    /// The uids of earlier attempts, whose files in the workspace are handed
    /// to this one.
    pub earlier: Option<(u32, u32)>,
}

/// Forks the intermediate child of `launch`; returns its pid.
#[allow(unsafe_code)]
pub(crate) fn launch(launch: &Launch) -> Result<Pid, String> {
    let supervisor = getpid();
    // SAFETY: the supervisor has one thread, so the child's copy of its memory
    // holds no lock another thread held; the child execs or exits.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => intermediate(launch, supervisor),
        Err(e) => Err(format!("cannot fork: {e}")),
    }
}

/// Whether steps can be confined here: the whole set-up (namespaces, mounts
/// and a user namespace as `uid`), in a child that ends before it would exec.
pub(crate) fn probe(uid: u32, gid: u32, hide: &[PathBuf]) -> Result<(), String> {
    let (report, report_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot make a pipe: {e}"))?;
    let child = launch(&Launch {
        program: None,
        workspace: None,
        cgroups: &[],
        confined: Some(Confined {
            uid,
            gid,
            hide,
            earlier: None,
        }),
        report: report_w.as_fd(),
    })?;
    drop(report_w);
    let status = loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    let said = std::io::read_to_string(File::from(report)).unwrap_or_default();
    match status {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        _ if !said.is_empty() => Err(said),
        other => Err(format!("the probe ended {other:?}")),
    }
}

/// Ends this process at once: a forked child never runs the supervisor's
/// exit handlers.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` ends the process; nothing of it is used after.
    unsafe { libc::_exit(code) }
}

/// Says why the step could not be set up, and ends this process.
fn fail(report: BorrowedFd, what: &str, error: impl std::fmt::Display) -> ! {
    let _ = nix::unistd::write(report, format!("{what}: {error}").as_bytes());
    exit_now(127)
}

/// The supervisor's child: joins the step's cgroups and starts its session;
/// then becomes its shell, or (confined) hands it its workspace, makes its
/// namespaces, forks their init and ends as the step does.
fn intermediate(l: &Launch, supervisor: Pid) -> ! {
    let report = l.report;
    // It dies with the supervisor; one already gone is not waited for.
    if prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != supervisor {
        exit_now(1);
    }
    let mut keep = vec![report.as_raw_fd()];
    keep.extend(l.workspace.iter().map(|w| w.fd.as_raw_fd()));
    keep.extend(
        l.program
            .iter()
            .flat_map(|p| p.stdio.iter().map(AsRawFd::as_raw_fd)),
    );
    close_all_but(&keep);
    let me = getpid().to_string();
    for procs in l.cgroups {
        if let Err(e) = std::fs::write(procs, &me) {
            fail(report, &format!("cannot join {}", procs.display()), e);
        }
    }
    if let Err(e) = nix::unistd::setsid() {
        fail(report, "cannot start a session", e);
    }
    let Some(confined) = &l.confined else {
        if let Some(workspace) = &l.workspace
            && let Err(e) = nix::unistd::fchdir(workspace.fd)
        {
            fail(report, "cannot enter its directory", e);
        }
        exec(l)
    };
    // The OOM killer takes the step's processes, never this one or the init.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    if let Some(workspace) = &l.workspace
        && let Err(e) = reown(workspace.fd, confined)
    {
        fail(report, "cannot hand the workspace to the step's user", e);
    }
    let namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = unshare(namespaces) {
        fail(report, "cannot make namespaces", e);
    }
    let (status, status_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => fail(report, "cannot make a pipe", e),
    };
    // SAFETY: this process has one thread, the supervisor's.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked {
        Ok(ForkResult::Child) => {
            drop(status);
            init(l, confined, status_w)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_w);
            mirror(child, status)
        }
        Err(e) => fail(report, "cannot fork the namespace's init", e),
    }
}

/// Waits for the init, then ends as the step did (its raw status comes through
/// `status`), or as the init did if it had none to pass on.
fn mirror(init: Pid, status: OwnedFd) -> ! {
    let waited = loop {
        match wait_raw(Some(init)) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    let mut raw = [0u8; 4];
    let passed = nix::unistd::read(&status, &mut raw).is_ok_and(|n| n == raw.len());
    let ended = match (passed, waited) {
        (true, _) => i32::from_ne_bytes(raw),
        (false, Ok((_, raw))) => raw,
        (false, Err(_)) => exit_now(1),
    };
    match WaitStatus::from_raw(init, ended) {
        Ok(WaitStatus::Exited(_, code)) => exit_now(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => die_of(signal),
        _ => exit_now(1),
    }
}

/// Ends this process by `signal`, as the step ended (no core: the process is
/// not dumpable, as the supervisor is not).
#[allow(unsafe_code)]
fn die_of(signal: Signal) -> ! {
    // SAFETY: the default action involves no handler of this process.
    let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let _ = kill(getpid(), signal);
    exit_now(128 + signal as i32)
}

/// `waitpid` for `pid` (any child if none), with the raw status.
#[allow(unsafe_code)]
fn wait_raw(pid: Option<Pid>) -> Result<(Pid, i32), Errno> {
    let mut status = 0;
    // SAFETY: `status` is a valid place for the status.
    let pid = unsafe { libc::waitpid(pid.map_or(-1, Pid::as_raw), &mut status, 0) };
    Errno::result(pid).map(|pid| (Pid::from_raw(pid), status))
}

/// The PID namespace's first process: sets up the mounts and the host name,
/// forks the step's process and reaps every process until that one ends.
fn init(l: &Launch, confined: &Confined, status: OwnedFd) -> ! {
    let report = l.report;
    // Its parent (the intermediate child) killed, the namespace goes with it.
    // Whether it is gone already cannot be read here (the parent of a
    // namespace's init is 0): the supervisor kills a step's session when its
    // intermediate child ends.
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(report, "cannot ask to die with its parent", e);
    }
    let _ = prctl::set_name(c"corral-init");
    if let Err(e) = mounts(l.workspace.as_ref(), confined.hide) {
        fail(report, "cannot set up the step's mounts", e);
    }
    if let Err(e) = nix::unistd::sethostname(HOSTNAME) {
        fail(report, "cannot set the host name", e);
    }
    // SAFETY: this process has one thread.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    let step = match forked {
        Ok(ForkResult::Child) => step(l, confined),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => fail(report, "cannot fork the step", e),
    };
    loop {
        match wait_raw(None) {
            Ok((pid, raw)) if pid == step => {
                let _ = nix::unistd::write(&status, &raw.to_ne_bytes());
                exit_now(0);
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => exit_now(1),
        }
    }
}

/// The step's mounts, in the init's new mount namespace.
fn mounts(workspace: Option<&Workspace>, hide: &[PathBuf]) -> Result<(), String> {
    let none: Option<&str> = None;
    let at = |what: &str, path: &Path, e: Errno| format!("{what} {}: {e}", path.display());
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| at("cannot make private", Path::new("/"), e))?;
    // Opened in this namespace (a bind's source must be), before anything
    // hides it; the very directory the agent sent.
    let workspace = match workspace {
        Some(w) => {
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd =
                open(w.path, flags, Mode::empty()).map_err(|e| at("cannot open", w.path, e))?;
            let (here, sent) = (
                fstat(&fd).map_err(|e| at("cannot read", w.path, e))?,
                fstat(w.fd).map_err(|e| at("cannot read", w.path, e))?,
            );
            if (here.st_dev, here.st_ino) != (sent.st_dev, sent.st_ino) {
                return Err(format!("{} changed under the agent", w.path.display()));
            }
            Some((w.path, fd))
        }
        None => None,
    };
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        quiet | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| at("cannot mount a /proc on", Path::new("/proc"), e))?;
    // Under each: nothing of the host's.
    let mut covered: Vec<&Path> = Vec::new();
    for shared in ["/tmp", "/var/tmp", "/dev/shm"].map(Path::new) {
        if shared.is_dir() {
            mount(
                Some("tmpfs"),
                shared,
                Some("tmpfs"),
                quiet,
                Some("mode=1777"),
            )
            .map_err(|e| at("cannot mount a tmpfs on", shared, e))?;
            covered.push(shared);
        }
    }
    let holds_workspace =
        |path: &Path| workspace.as_ref().is_some_and(|(w, _)| w.starts_with(path));
    for path in hide {
        if covered.iter().any(|c| path.starts_with(c)) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.is_dir() {
            // Root's and empty; passable (not readable) where the workspace is
            // bound below it.
            let mode = if holds_workspace(path) {
                "mode=0711"
            } else {
                "mode=0700"
            };
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                quiet | MsFlags::MS_NOEXEC,
                Some(mode),
            )
            .map_err(|e| at("cannot hide", path, e))?;
        } else {
            mount(Some("/dev/null"), path, none, MsFlags::MS_BIND, none)
                .map_err(|e| at("cannot hide", path, e))?;
        }
        covered.push(path);
    }
    if let Some((path, fd)) = workspace
        && covered.iter().any(|c| path.starts_with(c))
    {
        // Its path made again in the tmpfs over it, passable by the step.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(path)
            .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(Some(source.as_str()), path, none, MsFlags::MS_BIND, none)
            .map_err(|e| at("cannot bind the workspace onto", path, e))?;
    }
    Ok(())
}

/// The step's own process: enters the workspace, drops to the attempt's user
/// in a user namespace of its own, and execs `sh -c`.
fn step(l: &Launch, confined: &Confined) -> ! {
    let report = l.report;
    // Entered as root, by its path in this namespace (the directory the agent
    // sent is in the agent's): its parents may not be passable by the step.
    let dir = l.workspace.as_ref().map_or(Path::new("/"), |w| w.path);
    if let Err(e) = nix::unistd::chdir(dir) {
        fail(report, "cannot enter its directory", e);
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "0") {
        fail(report, "cannot let the OOM killer at the step", e);
    }
    let (uid, gid) = (Uid::from_raw(confined.uid), Gid::from_raw(confined.gid));
    let dropped = nix::unistd::setgroups(&[])
        .and_then(|()| nix::unistd::setgid(gid))
        .and_then(|()| nix::unistd::setuid(uid));
    if let Err(e) = dropped {
        fail(report, "cannot become the step's user", e);
    }
    // A changed uid makes its /proc files root's: they are its own again, so
    // it can write its maps.
    if let Err(e) = prctl::set_dumpable(true) {
        fail(report, "cannot own its /proc files", e);
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
        fail(report, "cannot make a user namespace", e);
    }
    let maps = [
        ("setgroups", "deny".to_string()),
        ("uid_map", format!("{uid} {uid} 1")),
        ("gid_map", format!("{gid} {gid} 1")),
    ];
    for (file, map) in maps {
        if let Err(e) = std::fs::write(format!("/proc/self/{file}"), map) {
            fail(report, &format!("cannot write /proc/self/{file}"), e);
        }
    }
    if let Err(e) = prctl::set_no_new_privs() {
        fail(report, "cannot set no_new_privs", e);
    }
    exec(l)
}

/// Execs the program with nothing blocked, SIGPIPE back to its default (Rust
/// programs ignore it), its input and outputs, and no other descriptor; a
/// probe ends here instead.
#[allow(unsafe_code)]
fn exec(l: &Launch) -> ! {
    let report = l.report;
    let Some(program) = &l.program else {
        exit_now(0)
    };
    // SAFETY: the default action involves no handler of this process.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        fail(report, "cannot reset SIGPIPE", e);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        fail(report, "cannot unblock signals", e);
    }
    let [stdin, stdout, stderr] = program.stdio;
    let dup = nix::unistd::dup2_stdin(stdin)
        .and_then(|()| nix::unistd::dup2_stdout(stdout))
        .and_then(|()| nix::unistd::dup2_stderr(stderr));
    if let Err(e) = dup {
        fail(report, "cannot set its input and outputs", e);
    }
    crate::supervisor::close_on_exec_from(3);
    let e = nix::unistd::execvpe(c"sh", &program.argv, program.envp).unwrap_err();
    fail(report, "cannot start sh", e)
}

/// Closes every descriptor but `keep`.
#[allow(unsafe_code)]
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 0u32;
    let mut ranges = Vec::new();
    for fd in keep {
        if fd > from {
            ranges.push((from, fd - 1));
        }
        from = fd + 1;
    }
    ranges.push((from, u32::MAX));
    for (first, last) in ranges {
        // SAFETY: the descriptors closed belong to no object of this process
        // that is used after (it execs or exits).
        if unsafe { libc::close_range(first, last, 0) } == 0 {
            continue;
        }
        // A kernel before 5.11: each descriptor `/proc/self/fd` lists.
        let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        for fd in open {
            if u32::try_from(fd).is_ok_and(|fd| (first..=last).contains(&fd)) {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Hands the workspace to the attempt's user: the directory itself, and what
/// earlier attempts (uids of `confined.earlier`) left in it, so a later step
/// of the run may change it. Nothing is followed: entries are opened below
/// their directory with `O_NOFOLLOW`, so a link a step left leads nowhere, and
/// only files of earlier attempts change owner, so a hard link to anyone
/// else's file is left as it is.
fn reown(workspace: BorrowedFd, confined: &Confined) -> Result<(), Errno> {
    let (uid, gid) = (Uid::from_raw(confined.uid), Gid::from_raw(confined.gid));
    nix::unistd::fchown(workspace, Some(uid), Some(gid))?;
    let Some((first, last)) = confined.earlier else {
        return Ok(());
    };
    let earlier = |owner: u32| (first..=last).contains(&owner) && owner != confined.uid;
    // Each directory entered, with the subdirectories it has left to enter.
    let mut stack: Vec<(OwnedFd, Vec<std::ffi::CString>)> = Vec::new();
    let root = workspace.try_clone_to_owned().map_err(|_| Errno::EMFILE)?;
    let names = reown_entries(&root, uid, gid, &earlier)?;
    stack.push((root, names));
    while let Some((dir, pending)) = stack.last_mut() {
        let Some(name) = pending.pop() else {
            stack.pop();
            continue;
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let Ok(sub) = openat(&*dir, name.as_c_str(), flags, Mode::empty()) else {
            continue;
        };
        let names = reown_entries(&sub, uid, gid, &earlier)?;
        // Deeper than that, its subdirectories are left as they are.
        if stack.len() < REOWN_DEPTH {
            stack.push((sub, names));
        }
    }
    Ok(())
}

/// Hands the entries of `dir` that earlier attempts own to `uid`; returns the
/// names of its subdirectories.
fn reown_entries(
    dir: &OwnedFd,
    uid: Uid,
    gid: Gid,
    earlier: &impl Fn(u32) -> bool,
) -> Result<Vec<std::ffi::CString>, Errno> {
    let mut listing = nix::dir::Dir::from_fd(dir.try_clone().map_err(|_| Errno::EMFILE)?)?;
    let mut subdirs = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let Ok(stat) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if earlier(stat.st_uid) {
            nix::unistd::fchownat(
                dir,
                name,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            subdirs.push(name.to_owned());
        }
    }
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_are_read_and_bad_ones_refused() {
        assert_eq!(
            StepUser::parse_uids("2000000000-2000065535"),
            Ok(StepUser::Uids {
                first: 2_000_000_000,
                last: 2_000_065_535
            })
        );
        assert_eq!(
            StepUser::parse_uids("5-5"),
            Ok(StepUser::Uids { first: 5, last: 5 })
        );
        for bad in ["0-10", "10-5", "a-b", "10", "1-4294967295", ""] {
            let Err(message) = StepUser::parse_uids(bad) else {
                panic!("{bad:?} is taken");
            };
            assert!(message.contains("example"), "{message}");
        }
        assert_eq!(StepUser::Uids { first: 7, last: 9 }.describe(), "uids 7-9");
    }
}

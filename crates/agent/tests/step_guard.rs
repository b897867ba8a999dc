//! The step guard on real processes: a step never outlives its agent (even a
//! `kill -9` of it), a stop kills all it started, and the guard ends as the
//! step's shell did. This binary is the guard it tests, as `corral` is the
//! agent's: started with `__step-guard`, it is one.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use corral_agent::STEP_GUARD;
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Starts processes that try to outlive the step: one in the background, one
/// in a session of its own, one orphaned at once. Each writes its pid to `pids`.
const LEAVES_PROCESSES: &str = "
echo $$ >> pids
sleep 300 & echo $! >> pids
setsid sh -c 'echo $$ >> pids; exec sleep 300' &
( sh -c 'echo $$ >> pids; exec sleep 300' & )
";

/// The pids `LEAVES_PROCESSES` writes.
const LEFT: usize = 4;

/// Then runs one more in the foreground, and waits.
fn long_step() -> String {
    format!("{LEAVES_PROCESSES} sh -c 'echo $$ >> pids; exec sleep 300'; wait")
}

/// A directory of its own for a test, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("corral-step-guard-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug)]
struct Process {
    pid: i32,
    start: String,
}

impl Process {
    fn start_of(pid: i32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields follow the command name's last `)`; the start time is the 22nd.
        Some(
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(19)?
                .to_string(),
        )
    }

    /// Still there: running, stopped, or a zombie nobody reaped.
    fn exists(&self) -> bool {
        Process::start_of(self.pid).as_ref() == Some(&self.start)
    }
}

/// Waits (for long) until `done`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps the processes orphaned to this one.
fn reap_orphans() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// How `guard` ended, once it has.
fn ended(guard: &mut Child) -> ExitStatus {
    let mut status = None;
    wait_for("the guard to end", || {
        status = guard.try_wait().expect("the guard can be waited for");
        status.is_some()
    });
    status.expect("the guard ended")
}

/// Processes a test started through a guard; those a failed test leaves are
/// killed.
#[must_use = "dropped, it kills the processes"]
struct Recorded(Vec<Process>);

impl Recorded {
    fn left(&self) -> Vec<&Process> {
        self.0.iter().filter(|p| p.exists()).collect()
    }

    fn assert_all_gone(&self) {
        let left = self.left();
        assert!(left.is_empty(), "still there: {left:?}");
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        for process in self.left() {
            let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
        }
    }
}

/// The `count` processes that wrote their pids to `file`, once all have.
fn recorded(file: &Path, count: usize) -> Recorded {
    let mut pids = Vec::new();
    wait_for(&format!("{count} pids in {}", file.display()), || {
        pids = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(|line| line.trim().parse::<i32>().expect("a pid"))
            .collect();
        pids.len() >= count
    });
    Recorded(
        pids.into_iter()
            .map(|pid| Process {
                pid,
                start: Process::start_of(pid).unwrap_or_else(|| panic!("process {pid} runs")),
            })
            .collect(),
    )
}

/// A guard of `step` in `dir`, started as an agent with pid `agent` starts it.
fn guard_of(agent: u32, step: &str, dir: &Scratch) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this test's binary"));
    command
        .arg(STEP_GUARD)
        .arg(agent.to_string())
        .arg(step)
        .current_dir(&dir.0)
        .stdin(Stdio::null());
    command
}

/// A guard whose agent is this process.
fn guard(step: &str, dir: &Scratch) -> Command {
    guard_of(std::process::id(), step, dir)
}

fn start(command: &mut Command) -> Child {
    command.spawn().expect("the guard starts")
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("a pid"))
}

/// Runs a guard to its end; returns how it ended and its output (small: the
/// pipes hold it all).
fn run(command: &mut Command) -> (ExitStatus, String, String) {
    let mut guard = start(command.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let status = ended(&mut guard);
    let (mut out, mut err) = (String::new(), String::new());
    let stdout = guard.stdout.take().expect("piped");
    let stderr = guard.stderr.take().expect("piped");
    std::io::BufReader::new(stdout)
        .read_to_string(&mut out)
        .expect("its output");
    std::io::BufReader::new(stderr)
        .read_to_string(&mut err)
        .expect("its errors");
    (status, out, err)
}

/// The regression: `kill -9` of an agent left its steps running, while the
/// server ran them again elsewhere.
fn a_killed_agent_takes_its_steps_with_it() {
    let dir = Scratch::new("killed-agent");
    // Plays the agent: starts the guard, says its pid, and waits.
    let mut agent = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" "$1" $$ "$2" & echo $! >> pids; wait"#)
        .arg(std::env::current_exe().expect("this test's binary"))
        .arg(STEP_GUARD)
        .arg(long_step())
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .spawn()
        .expect("the agent starts");
    let processes = recorded(&dir.path("pids"), LEFT + 2);
    kill(pid_of(&agent), Signal::SIGKILL).expect("the agent can be killed");
    agent.wait().expect("the agent is reaped");
    let killed = Instant::now();
    wait_for("every process of the step to end", || {
        reap_orphans();
        processes.left().is_empty()
    });
    println!(
        "    {} processes ended {:?} after their agent",
        processes.0.len(),
        killed.elapsed()
    );
}

fn a_stopped_guard_kills_every_process_of_its_step() {
    let dir = Scratch::new("stopped");
    let mut guard = start(&mut guard(&long_step(), &dir));
    let processes = recorded(&dir.path("pids"), LEFT + 1);
    kill(pid_of(&guard), Signal::SIGTERM).expect("the guard can be signalled");
    let status = ended(&mut guard);
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    processes.assert_all_gone();
}

fn what_a_step_leaves_behind_ends_with_it() {
    let dir = Scratch::new("left-behind");
    let step = format!("{LEAVES_PROCESSES} while [ ! -e go ]; do sleep 0.01; done; exit 4");
    let mut guard = start(&mut guard(&step, &dir));
    let processes = recorded(&dir.path("pids"), LEFT);
    std::fs::write(dir.path("go"), "").expect("go");
    let status = ended(&mut guard);
    assert_eq!(status.code(), Some(4), "{status}");
    processes.assert_all_gone();
}

fn the_guard_ends_as_its_shell_did() {
    let dir = Scratch::new("ends");
    let signal = |s: Signal| (None, Some(s as i32));
    for (step, (code, killed_by)) in [
        ("exit 0", (Some(0), None)),
        ("exit 3", (Some(3), None)),
        ("kill -TERM $$", signal(Signal::SIGTERM)),
        ("kill -KILL $$", signal(Signal::SIGKILL)),
        ("kill -SEGV $$", signal(Signal::SIGSEGV)),
    ] {
        let status = ended(&mut start(&mut guard(step, &dir)));
        assert_eq!(
            (status.code(), status.signal()),
            (code, killed_by),
            "{step}: {status}"
        );
        assert!(!status.core_dumped(), "{step}: the guard dumped core");
    }
}

fn the_step_has_the_guards_directory_environment_and_output() {
    let dir = Scratch::new("inherits");
    let (status, out, err) = run(guard(
        "echo out; echo err >&2; pwd; printf %s \"$STEP_VALUE\"",
        &dir,
    )
    .env("STEP_VALUE", "a value"));
    assert!(status.success(), "{status}");
    let real = dir.0.canonicalize().expect("the scratch directory");
    assert_eq!(out, format!("out\n{}\na value", real.display()));
    assert_eq!(err, "err\n");
}

/// The guard blocks the signals it waits for, and Rust programs ignore SIGPIPE:
/// none of that is the step's.
fn the_step_starts_with_no_signal_blocked_and_sigpipe_not_ignored() {
    let dir = Scratch::new("signals");
    let (ended, status, _) = run(&mut guard("exec cat /proc/self/status", &dir));
    assert!(ended.success(), "{ended}");
    let mask = |name: &str| {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"));
        u64::from_str_radix(line.trim(), 16).expect("a signal mask")
    };
    assert_eq!(mask("SigBlk:"), 0, "blocked signals");
    let pipe = 1 << (Signal::SIGPIPE as u32 - 1);
    assert_eq!(mask("SigIgn:") & pipe, 0, "SIGPIPE is ignored");
}

/// The kernel also signals a guard when the thread that started it ends: the
/// agent lives on, and so does the step.
fn a_guard_started_by_a_thread_that_ended_keeps_its_step() {
    let dir = Scratch::new("thread");
    let (started_tx, started) = std::sync::mpsc::channel();
    let (end_tx, end) = std::sync::mpsc::channel::<()>();
    let step = "echo $$ >> pids; while [ ! -e go ]; do sleep 0.01; done; exit 7";
    let mut command = guard(step, &dir);
    let thread = std::thread::spawn(move || {
        let _ = started_tx.send((start(&mut command), nix::unistd::gettid()));
        let _ = end.recv();
    });
    let (mut guard, tid) = started.recv().expect("the thread starts the guard");
    // The step runs: the guard has asked for its parent's death signal.
    let _step = recorded(&dir.path("pids"), 1);
    drop(end_tx);
    thread.join().expect("the thread ends");
    let task = format!("/proc/self/task/{tid}");
    wait_for("the thread to be gone", || !Path::new(&task).exists());
    // The kernel sent the signal as the thread went; once the guard has taken
    // it, nothing is pending.
    let status = format!("/proc/{}/status", guard.id());
    wait_for("the guard to take the signal", || {
        std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
            .all(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|m| m.trim_start_matches('0').is_empty())
            })
    });
    std::fs::write(dir.path("go"), "").expect("go");
    let status = ended(&mut guard);
    assert_eq!(status.code(), Some(7), "{status}");
}

/// An agent that died before its guard asked to hear of it is seen all the same.
fn a_guard_whose_agent_is_gone_starts_nothing() {
    let dir = Scratch::new("orphan");
    // Its parent is not that agent, as if the agent had died and the guard
    // been handed to init.
    let status = ended(&mut start(&mut guard_of(1, "touch started", &dir)));
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    assert!(!dir.path("started").exists(), "the step ran");
}

/// Tests by name.
macro_rules! tests {
    ($($test:ident),* $(,)?) => {
        [$((stringify!($test), $test as fn())),*]
    };
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == OsStr::new(STEP_GUARD)) {
        corral_agent::step_guard(args);
    }
    // What a test's guard leaves orphaned comes here, not to init, so a test
    // sees it end (and reaps it) or sees it left.
    prctl::set_child_subreaper(true).expect("a subreaper");
    let tests = tests![
        a_killed_agent_takes_its_steps_with_it,
        a_stopped_guard_kills_every_process_of_its_step,
        what_a_step_leaves_behind_ends_with_it,
        the_guard_ends_as_its_shell_did,
        the_step_has_the_guards_directory_environment_and_output,
        the_step_starts_with_no_signal_blocked_and_sigpipe_not_ignored,
        a_guard_started_by_a_thread_that_ended_keeps_its_step,
        a_guard_whose_agent_is_gone_starts_nothing,
    ];
    // Arguments that are not flags select tests by substring, as with libtest.
    let filters: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut passed = 0;
    for (name, test) in tests
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
    {
        println!("test {name} ...");
        if std::panic::catch_unwind(test).is_ok() {
            println!("test {name} ... ok");
            passed += 1;
        } else {
            println!("test {name} ... FAILED");
            failed.push(name);
        }
    }
    println!(
        "\ntest result: {passed} passed; {} failed {failed:?}",
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

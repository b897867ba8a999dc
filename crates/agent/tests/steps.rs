//! Steps on real processes, through the agent's step supervisor: a step never
//! outlives its agent or its supervisor (even a `kill -9` of either), a stop
//! kills all it started, a step ends as its shell did, and many steps at once
//! keep their own output. Unconfined steps (as an agent that is not root runs
//! them), twice: tracked by their sessions alone, then with cgroups too (where
//! this runs as root). This binary is the supervisor it tests, as `corral` is
//! the agent's: started with `__step-supervisor`, it is one.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corral_agent::STEP_SUPERVISOR;
use corral_agent::steps::{Ended, Limits, Setup, Step, StepUser, Steps};
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

/// Makes this binary an agent that runs the step given and waits.
const PLAY_AGENT: &str = "__play-agent";

/// A variable of the agent's own, hidden from its steps.
const HIDDEN: &str = "CORRAL_STEPS_TEST_SECRET";

/// Whether the supervisors of this round give steps cgroups.
static CGROUPS: AtomicBool = AtomicBool::new(false);

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
        let dir = std::env::temp_dir().join(format!("corral-steps-{}-{test}", std::process::id()));
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
fn wait_for(what: &str, done: impl FnMut() -> bool) {
    assert!(eventually(done), "gave up waiting for {what}");
}

/// Polls `done` until it holds (true) or 30 s have passed (false).
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Reaps the processes orphaned to this one.
fn reap_orphans() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Processes a test started through a step; those a failed test leaves are
/// killed.
#[derive(Debug)]
#[must_use = "dropped, it kills the processes"]
struct Recorded(Vec<Process>);

impl Recorded {
    fn left(&self) -> Vec<&Process> {
        self.0.iter().filter(|p| p.exists()).collect()
    }

    fn assert_all_gone(&self) {
        let left: Vec<String> = self
            .left()
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default())
            .collect();
        assert!(left.is_empty(), "still there: {left:?}");
    }

    /// Waits (for long) until every process has ended and been reaped, by
    /// this process too if `reap` (which then reaps any child that ended).
    fn wait_all_gone(&self, reap: bool) {
        eventually(|| {
            if reap {
                reap_orphans();
            }
            self.left().is_empty()
        });
        self.assert_all_gone();
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

/// A runtime whose tasks (the supervisor's reader and writer) run while a test
/// blocks its thread waiting for processes.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn supervisor() -> Steps {
    let setup = Setup {
        user: StepUser::Agent,
        hide: Vec::new(),
        pids_max: 4096,
        cgroups: CGROUPS.load(Ordering::Relaxed),
    };
    Steps::start(&[HIDDEN], setup).expect("the supervisor starts")
}

fn start(steps: &Steps, step: &str, dir: &Scratch) -> Step {
    steps
        .run(&dir.0, step, &BTreeMap::new(), Limits::default())
        .expect("the step starts")
}

/// Runs a step to its end: how it ended, and its output and errors.
async fn finish(step: Step) -> (Ended, String, String) {
    let Step {
        mut stdout,
        mut stderr,
        ending,
        ..
    } = step;
    let (mut out, mut err) = (String::new(), String::new());
    let (read_out, read_err, end) = tokio::join!(
        stdout.read_to_string(&mut out),
        stderr.read_to_string(&mut err),
        ending.wait()
    );
    read_out.expect("its output");
    read_err.expect("its errors");
    (end.ended, out, err)
}

/// The pids of `pid`'s children.
fn children_of(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

/// The regression: `kill -9` of an agent left its steps running, while the
/// server ran them again elsewhere.
fn a_killed_agent_takes_its_steps_with_it() {
    let dir = Scratch::new("killed-agent");
    let mut agent = play_agent_in(&dir);
    let mut processes = recorded(&dir.path("pids"), LEFT + 1);
    let supervisors = children_of(agent.id());
    assert_eq!(
        supervisors.len(),
        1,
        "the agent's one child: {supervisors:?}"
    );
    processes
        .0
        .extend(supervisors.into_iter().map(|pid| Process {
            pid,
            start: Process::start_of(pid).expect("the supervisor runs"),
        }));
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGKILL).expect("the agent can be killed");
    agent.wait().expect("the agent is reaped");
    let killed = Instant::now();
    processes.wait_all_gone(true);
    println!(
        "    {} processes ended {:?} after their agent",
        processes.0.len(),
        killed.elapsed()
    );
}

/// The supervisor alone killed (`kill -9`): its steps' processes, handed to
/// the agent, end with it, before the agent says the step failed.
fn a_killed_supervisor_takes_its_steps_with_it() {
    let dir = Scratch::new("killed-supervisor");
    let mut agent = play_agent_in(&dir);
    let processes = recorded(&dir.path("pids"), LEFT + 1);
    let supervisors = children_of(agent.id());
    assert_eq!(
        supervisors.len(),
        1,
        "the agent's one child: {supervisors:?}"
    );
    kill(Pid::from_raw(supervisors[0]), Signal::SIGKILL).expect("the supervisor can be killed");
    let killed = Instant::now();
    processes.wait_all_gone(false);
    println!(
        "    {} processes ended {:?} after their supervisor",
        processes.0.len(),
        killed.elapsed()
    );
    // The agent learns its step failed only then, and goes.
    let status = agent.wait().expect("the agent ends");
    assert!(!status.success(), "{status:?}");
}

/// This binary as an agent running `long_step` in `dir` (what it says when the
/// step fails is not shown).
fn play_agent_in(dir: &Scratch) -> std::process::Child {
    Command::new(std::env::current_exe().expect("this test's binary"))
        .arg(PLAY_AGENT)
        .arg(long_step())
        .arg(CGROUPS.load(Ordering::Relaxed).to_string())
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agent starts")
}

/// Plays the agent of the tests that kill it or its supervisor.
fn play_agent(step: &OsStr, cgroups: &OsStr) -> ! {
    let step = step.to_str().expect("a UTF-8 step");
    CGROUPS.store(cgroups == OsStr::new("true"), Ordering::Relaxed);
    runtime().block_on(async {
        let steps = supervisor();
        let dir = std::env::current_dir().expect("a directory");
        let step = steps
            .run(&dir, step, &BTreeMap::new(), Limits::default())
            .expect("the step starts");
        let ended = step.ending.wait().await.ended;
        // An exit, not a panic: a backtrace takes seconds on a busy machine.
        eprintln!("the step ended first: {ended:?}");
        std::process::exit(1)
    })
}

fn a_stopped_step_has_every_process_it_started_killed() {
    let dir = Scratch::new("stopped");
    runtime().block_on(async {
        let steps = supervisor();
        let step = start(&steps, &long_step(), &dir);
        let processes = recorded(&dir.path("pids"), LEFT + 1);
        step.stop.stop();
        let (ended, _, _) = finish(step).await;
        assert_eq!(ended, Ended::Killed(Signal::SIGKILL as i32));
        processes.assert_all_gone();
    });
}

/// Now on `CLOCK_BOOTTIME`, as the lease is counted, in nanoseconds.
fn boottime_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("a clock");
    u64::try_from(now.tv_sec()).expect("after boot") * 1_000_000_000
        + u64::try_from(now.tv_nsec()).expect("within a second")
}

/// The regression: a paused or cut-off agent's steps ran on after the server
/// had run them again elsewhere.
fn a_lapsed_lease_kills_every_step_and_starts_none_until_renewed() {
    let dir = Scratch::new("lapsed");
    runtime().block_on(async {
        let steps = supervisor();
        steps.renew(boottime_ns() + 1_000_000_000);
        let step = start(&steps, &long_step(), &dir);
        let processes = recorded(&dir.path("pids"), LEFT + 1);
        // Nothing renews it: the step is killed when it lapses.
        let (ended, _, _) = finish(step).await;
        assert_eq!(ended, Ended::Fenced);
        processes.wait_all_gone(false);

        let refused = start(&steps, "echo ran > ran", &dir);
        let (ended, _, _) = finish(refused).await;
        assert_eq!(ended, Ended::Fenced);
        assert!(
            !dir.path("ran").exists(),
            "a step started under a lapsed lease"
        );

        steps.renew(boottime_ns() + 60_000_000_000);
        let renewed = start(&steps, "echo ran > ran", &dir);
        let (ended, _, _) = finish(renewed).await;
        assert_eq!(ended, Ended::Exited(0));
        assert!(dir.path("ran").exists(), "a renewed lease runs steps");
    });
}

fn what_a_step_leaves_behind_ends_with_it() {
    let dir = Scratch::new("left-behind");
    let step = format!("{LEAVES_PROCESSES} while [ ! -e go ]; do sleep 0.01; done; exit 4");
    runtime().block_on(async {
        let steps = supervisor();
        let step = start(&steps, &step, &dir);
        let processes = recorded(&dir.path("pids"), LEFT);
        std::fs::write(dir.path("go"), "").expect("go");
        let (ended, _, _) = finish(step).await;
        assert_eq!(ended, Ended::Exited(4));
        processes.assert_all_gone();
    });
}

fn a_step_ends_as_its_shell_did() {
    let dir = Scratch::new("ends");
    let killed = |s: Signal| Ended::Killed(s as i32);
    runtime().block_on(async {
        let steps = supervisor();
        for (step, expected) in [
            ("exit 0", Ended::Exited(0)),
            ("exit 3", Ended::Exited(3)),
            ("kill -TERM $$", killed(Signal::SIGTERM)),
            ("kill -KILL $$", killed(Signal::SIGKILL)),
            ("kill -SEGV $$", killed(Signal::SIGSEGV)),
        ] {
            let (ended, _, err) = finish(start(&steps, step, &dir)).await;
            assert_eq!(ended, expected, "{step}: {err}");
        }
        // A directory that is gone fails the step, and says why.
        let missing = dir.path("missing");
        let error = steps
            .run(&missing, "true", &BTreeMap::new(), Limits::default())
            .err()
            .expect("no directory, no step");
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
    });
}

fn a_step_has_its_directory_environment_and_output_and_not_the_agents_secrets() {
    let dir = Scratch::new("inherits");
    runtime().block_on(async {
        let steps = supervisor();
        let env = BTreeMap::from([("STEP_VALUE".to_string(), "a value".to_string())]);
        let step = steps
            .run(
                &dir.0,
                &format!(
                    "echo out; echo err >&2; pwd; printf '%s|%s|%s' \"$STEP_VALUE\" \"${{{HIDDEN}-unset}}\" \"$(cat)\""
                ),
                &env,
                Limits::default(),
            )
            .expect("the step starts");
        let (ended, out, err) = finish(step).await;
        assert_eq!(ended, Ended::Exited(0), "{err}");
        let real = dir.0.canonicalize().expect("the scratch directory");
        assert_eq!(out, format!("out\n{}\na value|unset|", real.display()));
        assert_eq!(err, "err\n");
    });
}

/// A step holds nothing but its input and output: not the agent's socket, nor
/// another step's pipes, whose readers would then wait for it.
fn a_step_holds_only_its_input_and_output() {
    let dir = Scratch::new("descriptors");
    // `ls` lists the shell's descriptors (a last command would replace it).
    let (ended, out, err) = runtime()
        .block_on(async { finish(start(&supervisor(), "ls /proc/$$/fd; true", &dir)).await });
    assert_eq!(ended, Ended::Exited(0), "{err}");
    assert_eq!(out, "0\n1\n2\n");
}

/// The supervisor blocks the signals it waits for, and Rust
/// programs ignore SIGPIPE: none of that is the step's.
fn a_step_starts_with_no_signal_blocked_and_sigpipe_not_ignored() {
    let dir = Scratch::new("signals");
    let (ended, status, _) = runtime()
        .block_on(async { finish(start(&supervisor(), "exec cat /proc/self/status", &dir)).await });
    assert_eq!(ended, Ended::Exited(0));
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

/// The kernel also signals a supervisor when the thread that started it ends:
/// the agent lives on, and so do its steps.
fn a_supervisor_started_by_a_thread_that_ended_keeps_its_steps() {
    let dir = Scratch::new("thread");
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let (steps, tid) = std::thread::spawn(move || {
        let _entered = handle.enter();
        (supervisor(), nix::unistd::gettid())
    })
    .join()
    .expect("the thread starts the supervisor");
    let task = format!("/proc/self/task/{tid}");
    wait_for("the thread to be gone", || !Path::new(&task).exists());
    runtime.block_on(async {
        let step = "echo $$ >> pids; while [ ! -e go ]; do sleep 0.01; done; exit 7";
        let step = start(&steps, step, &dir);
        let _step = recorded(&dir.path("pids"), 1);
        std::fs::write(dir.path("go"), "").expect("go");
        let (ended, _, err) = finish(step).await;
        assert_eq!(ended, Ended::Exited(7), "{err}");
    });
}

/// An agent that goes (here: drops its supervisor) takes its steps with it.
fn a_dropped_supervisor_takes_its_steps_with_it() {
    let dir = Scratch::new("dropped");
    runtime().block_on(async {
        let steps = supervisor();
        let step = start(&steps, &long_step(), &dir);
        let processes = recorded(&dir.path("pids"), LEFT + 1);
        drop(steps);
        let (ended, _, _) = finish(step).await;
        assert!(matches!(ended, Ended::Failed(_)), "{ended:?}");
        processes.wait_all_gone(true);
    });
}

/// A supervisor whose agent was gone before it asked to hear of it starts
/// nothing and ends.
fn a_supervisor_whose_agent_is_gone_ends() {
    let (_ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    let mut supervisor = Command::new(std::env::current_exe().expect("this test's binary"))
        .arg(STEP_SUPERVISOR)
        // Its parent is not that agent, as if the agent had died and the
        // supervisor been handed to init.
        .arg("1")
        .stdin(std::os::fd::OwnedFd::from(theirs))
        .spawn()
        .expect("the supervisor starts");
    let mut status = None;
    wait_for("the supervisor to end", || {
        status = supervisor
            .try_wait()
            .expect("the supervisor can be waited for");
        status.is_some()
    });
    assert!(status.expect("ended").success(), "{status:?}");
}

/// Many steps at once, one long: each keeps its own output, and each output
/// ends with its step, not with another step.
fn steps_started_together_keep_their_own_output_and_end_apart() {
    let dir = Scratch::new("together");
    runtime().block_on(async {
        let steps = supervisor();
        let long = start(&steps, "while [ ! -e go ]; do sleep 0.01; done", &dir);
        let quick: Vec<Step> = (0..20)
            .map(|i| {
                let env = BTreeMap::from([("N".to_string(), i.to_string())]);
                steps
                    .run(
                        &dir.0,
                        "echo \"step $N\"; echo \"error $N\" >&2",
                        &env,
                        Limits::default(),
                    )
                    .expect("the step starts")
            })
            .collect();
        for (i, step) in quick.into_iter().enumerate() {
            let (ended, out, err) = finish(step).await;
            assert_eq!(ended, Ended::Exited(0));
            assert_eq!((out, err), (format!("step {i}\n"), format!("error {i}\n")));
        }
        std::fs::write(dir.path("go"), "").expect("go");
        assert_eq!(finish(long).await.0, Ended::Exited(0));
    });
}

/// A step that ends kills nothing of another that runs, not even what that one
/// left orphaned outside its session; all of it ends with its own step.
fn a_step_that_ends_leaves_another_running_steps_processes_alone() {
    let dir = Scratch::new("apart");
    let first = format!(
        "{LEAVES_PROCESSES} ( setsid sh -c 'echo $$ >> pids; exec sleep 300' & )
         while [ ! -e go ]; do sleep 0.01; done"
    );
    runtime().block_on(async {
        let steps = supervisor();
        let first = start(&steps, &first, &dir);
        let processes = recorded(&dir.path("pids"), LEFT + 1);
        let (ended, _, err) = finish(start(&steps, "exit 3", &dir)).await;
        assert_eq!(ended, Ended::Exited(3), "{err}");
        assert_eq!(
            processes.left().len(),
            LEFT + 1,
            "the running step keeps its processes: {processes:?}"
        );
        std::fs::write(dir.path("go"), "").expect("go");
        assert_eq!(finish(first).await.0, Ended::Exited(0));
        processes.assert_all_gone();
    });
}

/// Tests by name.
macro_rules! tests {
    ($($test:ident),* $(,)?) => {
        [$((stringify!($test), $test as fn())),*]
    };
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(a) if a == OsStr::new(STEP_SUPERVISOR) => corral_agent::step_supervisor(args),
        Some(a) if a == OsStr::new(PLAY_AGENT) => {
            let step = args.next().expect("the step to play");
            play_agent(&step, &args.next().expect("whether with cgroups"))
        }
        _ => {}
    }
    // SAFETY: no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(HIDDEN, "a secret")
    };
    // What a test's steps leave orphaned comes here, not to init, so a test
    // sees it end (and reaps it) or sees it left.
    prctl::set_child_subreaper(true).expect("a subreaper");
    let tests = tests![
        a_killed_agent_takes_its_steps_with_it,
        a_killed_supervisor_takes_its_steps_with_it,
        a_stopped_step_has_every_process_it_started_killed,
        a_lapsed_lease_kills_every_step_and_starts_none_until_renewed,
        what_a_step_leaves_behind_ends_with_it,
        a_step_ends_as_its_shell_did,
        a_step_has_its_directory_environment_and_output_and_not_the_agents_secrets,
        a_step_starts_with_no_signal_blocked_and_sigpipe_not_ignored,
        a_step_holds_only_its_input_and_output,
        a_supervisor_started_by_a_thread_that_ended_keeps_its_steps,
        a_dropped_supervisor_takes_its_steps_with_it,
        a_supervisor_whose_agent_is_gone_ends,
        steps_started_together_keep_their_own_output_and_end_apart,
        a_step_that_ends_leaves_another_running_steps_processes_alone,
    ];
    // Arguments that are not flags select tests by substring, as with libtest.
    let filters: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut passed = 0;
    for cgroups in [false, true] {
        CGROUPS.store(cgroups, Ordering::Relaxed);
        let round = if cgroups {
            "with cgroups"
        } else {
            "by sessions"
        };
        for (name, test) in tests.iter().filter(|(name, _)| {
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        }) {
            println!("test {name} ({round}) ...");
            if std::panic::catch_unwind(test).is_ok() {
                println!("test {name} ({round}) ... ok");
                passed += 1;
            } else {
                println!("test {name} ({round}) ... FAILED");
                failed.push(format!("{name} ({round})"));
            }
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

//! Confined steps on real processes, through the agent's step supervisor set up
//! as an agent running as root sets it up: each attempt in namespaces of its
//! own as a fresh uid, in cgroups with its limits. What the kernel holds a step
//! to (a cpu quota, a memory limit, a cap on processes), what it measures of
//! it, and what a hostile step cannot reach. It needs root, namespaces and
//! cgroups: where they are missing, these tests fail. This binary is the
//! supervisor it tests, as `corral` is the agent's.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use corral_agent::STEP_SUPERVISOR;
use corral_agent::steps::{
    DEFAULT_STEP_UIDS, End, Ended, Limits, Setup, Step, StepUser, Steps, Usage,
};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// A variable of the agent's own, hidden from its steps.
const SECRET_VAR: &str = "CORRAL_CONFINEMENT_TEST_SECRET";

/// The agent's secret, in its environment.
fn agent_secret() -> String {
    format!("agent-secret-{}", std::process::id())
}

/// A test's own files, where steps could see them but for their confinement:
/// not in `/tmp`, which each step has a fresh one of. `work` is the agent's
/// work directory (with a file of its own and the workspaces), `data` a
/// directory of root's only (as the server's data directory is), `hidden` one
/// anyone could read but that the agent hides (`--hide`).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("corral-confine-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let scratch = Scratch(root);
        for dir in ["work/workspaces", "data", "hidden"] {
            std::fs::create_dir_all(scratch.0.join(dir)).expect("a scratch directory");
        }
        let write = |path: &Path, text: &str, mode: u32| {
            std::fs::write(path, text).expect("a file");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("a mode");
        };
        std::fs::set_permissions(scratch.data(), std::fs::Permissions::from_mode(0o700))
            .expect("the data dir's mode");
        write(
            &scratch.data().join("secret"),
            &scratch.secret("data"),
            0o644,
        );
        write(
            &scratch.work().join("agent-file"),
            &scratch.secret("work"),
            0o644,
        );
        write(
            &scratch.hidden().join("file"),
            &scratch.secret("hidden"),
            0o644,
        );
        scratch
    }

    fn work(&self) -> PathBuf {
        self.0.join("work")
    }

    fn data(&self) -> PathBuf {
        self.0.join("data")
    }

    fn hidden(&self) -> PathBuf {
        self.0.join("hidden")
    }

    /// The text of a file a step must not read.
    fn secret(&self, what: &str) -> String {
        format!("{what}-secret-{}", std::process::id())
    }

    /// A run's workspace, as the agent makes it.
    fn workspace(&self, name: &str) -> PathBuf {
        let dir = self.work().join("workspaces").join(name);
        std::fs::create_dir_all(&dir).expect("a workspace");
        dir
    }

    /// The agent's setup, with steps capped at `pids_max` processes.
    fn setup(&self, pids_max: u64) -> Setup {
        let (first, last) = DEFAULT_STEP_UIDS;
        Setup {
            user: StepUser::Uids { first, last },
            hide: vec![self.work(), self.hidden()],
            pids_max,
            cgroups: true,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A supervisor as an agent that is root sets it up, once it has: its steps
/// confined, and with cgroups.
async fn confined(scratch: &Scratch, pids_max: u64) -> Steps {
    let steps = Steps::start(&[SECRET_VAR], scratch.setup(pids_max)).expect("the supervisor");
    let confinement = steps.confinement().await.expect("the supervisor sets up");
    assert!(
        confinement.namespaces && confinement.cgroup != "none",
        "steps are not confined here (the tests need root, namespaces and cgroups): {confinement:?}"
    );
    steps
}

fn run(steps: &Steps, dir: &Path, command: &str, limits: Limits) -> Step {
    steps
        .run(dir, command, &BTreeMap::new(), limits)
        .expect("the step starts")
}

/// Runs a step to its end: how it ended, and its output and errors.
async fn finish(step: Step) -> (End, String, String) {
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
    (end, out, err)
}

fn usage(end: &End) -> Usage {
    end.usage.expect("what the step used")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn steps_are_confined_and_the_supervisor_says_so() {
    let scratch = Scratch::new("says");
    runtime().block_on(async {
        let steps = Steps::start(&[SECRET_VAR], scratch.setup(4096)).expect("the supervisor");
        let confinement = steps.confinement().await.expect("the supervisor sets up");
        println!("    {confinement:?}");
        assert!(confinement.namespaces, "{confinement:?}");
        assert!(
            ["v1", "v2"].contains(&confinement.cgroup.as_str()),
            "{confinement:?}"
        );
        assert_eq!(confinement.user, "uids 2000000000-2000065535");
    });
}

fn steps_run_as_the_step_user_when_one_is_given() {
    let scratch = Scratch::new("user");
    let dir = scratch.workspace("ws");
    let nobody = StepUser::from_flags(None, Some("nobody")).expect("a user nobody");
    let StepUser::Named { uid, .. } = nobody else {
        panic!("{nobody:?}");
    };
    let setup = Setup {
        user: nobody,
        ..scratch.setup(4096)
    };
    runtime().block_on(async {
        let steps = Steps::start(&[SECRET_VAR], setup).expect("the supervisor");
        let confinement = steps.confinement().await.expect("the supervisor sets up");
        assert!(confinement.namespaces, "{confinement:?}");
        assert_eq!(confinement.user, "nobody");
        let (end, out, err) =
            finish(run(&steps, &dir, "id -u; touch mine", Limits::default())).await;
        assert_eq!(end.ended, Ended::Exited(0), "{err}");
        assert_eq!(out, format!("{uid}\n"));
        let made = std::fs::metadata(dir.join("mine")).expect("its file");
        assert_eq!(made.uid(), uid);
    });
}

/// What a hostile step tries; each line that works says `ESCAPED`.
const ESCAPES: &str = r#"
escaped() { echo "ESCAPED: $*"; }
cat "$DATA/secret" && escaped reading the data dir
ls "$DATA" && escaped listing the data dir
touch "$DATA/new" && escaped writing into the data dir
cat "$WORK/agent-file" && escaped reading the work dir
ls "$WORK/workspaces" && escaped listing the workspaces
cat "$OTHER/secret" && escaped reading another attempt\'s workspace
ls "$OTHER" && escaped listing another attempt\'s workspace
touch "$WORK/new" && escaped writing into the work dir
cat "$HIDDEN/file" && escaped reading a hidden dir
touch "$HIDDEN/new" && escaped writing into a hidden dir
umount "$HIDDEN" && escaped unmounting a hidden dir
unshare -Urm sh -c "umount $HIDDEN && cat $HIDDEN/file" && escaped unmounting in namespaces of its own
kill -0 "$AGENT" && escaped signalling the agent
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do cat "$f"; echo; done
echo "uid $(id -u) $(id -g)"
echo pids $$ /proc/[0-9]*
echo "host $(cat /proc/sys/kernel/hostname)"
echo mine > mine && cat mine
echo "pwd $(pwd)"
echo done
"#;

fn a_step_reaches_nothing_of_the_agent_nor_of_another_attempt() {
    let scratch = Scratch::new("escapes");
    let (mine, other) = (scratch.workspace("ws-a"), scratch.workspace("ws-b"));
    std::fs::write(other.join("secret"), scratch.secret("other")).expect("the other's file");
    let env = BTreeMap::from([
        ("DATA", scratch.data()),
        ("WORK", scratch.work()),
        ("HIDDEN", scratch.hidden()),
        ("OTHER", other.clone()),
        ("AGENT", PathBuf::from(std::process::id().to_string())),
    ])
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.display().to_string()))
    .collect();
    runtime().block_on(async {
        let steps = confined(&scratch, 4096).await;
        let waiting = "id -u; while [ ! -e go ]; do sleep 0.05; done";
        let running = run(&steps, &other, waiting, Limits::default());
        let step = steps
            .run(&mine, ESCAPES, &env, Limits::default())
            .expect("the step starts");
        let (end, out, err) = finish(step).await;
        std::fs::write(other.join("go"), "").expect("go");
        let (other_end, other_out, _) = finish(running).await;
        let saw = out.rsplit_once("\nuid ").map_or("", |(_, rest)| rest);
        println!("    what the step saw: uid {}", saw.replace('\n', "; "));
        assert_eq!(end.ended, Ended::Exited(0), "{err}");
        assert!(
            out.ends_with("done\n"),
            "the battery ran to its end: {out}\n{err}"
        );
        let escapes: Vec<&str> = out.lines().filter(|l| l.starts_with("ESCAPED: ")).collect();
        assert!(escapes.is_empty(), "{escapes:#?}");
        for secret in ["data", "work", "hidden", "other"]
            .map(|what| scratch.secret(what))
            .into_iter()
            .chain([agent_secret()])
        {
            assert!(
                !out.contains(&secret) && !err.contains(&secret),
                "{secret} leaked"
            );
        }
        for made in [scratch.data(), scratch.work(), scratch.hidden()].map(|d| d.join("new")) {
            assert!(!made.exists(), "{} was made", made.display());
        }

        let field = |prefix: &str| -> Vec<String> {
            let line = out.lines().find_map(|l| l.strip_prefix(prefix));
            let line = line.unwrap_or_else(|| panic!("{prefix} in {out}"));
            line.split_whitespace().map(String::from).collect()
        };
        let ids = field("uid ");
        let uid: u32 = ids[0].parse().expect("a uid");
        let (first, last) = DEFAULT_STEP_UIDS;
        assert!((first..=last).contains(&uid), "uid {uid}");
        assert_eq!(ids[1], ids[0], "its gid is its uid");
        let other_uid: u32 = other_out.trim().parse().expect("the other's uid");
        assert_eq!(other_end.ended, Ended::Exited(0));
        assert_ne!(
            uid, other_uid,
            "two attempts at once have uids of their own"
        );
        // Only its own processes: the namespace's init, and its shell.
        let pids = field("pids ");
        let visible: Vec<&str> = pids[1..]
            .iter()
            .map(|p| p.trim_start_matches("/proc/"))
            .collect();
        assert_eq!(visible, ["1", pids[0].as_str()], "{pids:?}");
        assert_eq!(field("host "), ["corral-step"]);
        // Its workspace is there, at its own path, and its own.
        assert!(out.contains("\nmine\n"), "{out}");
        let real = mine.canonicalize().expect("the workspace");
        assert_eq!(field("pwd "), [real.display().to_string()]);
        let made = std::fs::metadata(mine.join("mine")).expect("the step's file");
        assert_eq!(made.uid(), uid, "made as its user");
    });
}

/// Parallel steps of a run share its workspace: they run as one uid (each as
/// it came alone would have had another, and found the other's files not its
/// own); a later step, as a fresh uid, is handed what they made.
fn the_steps_of_a_run_share_its_workspace_and_what_is_in_it() {
    let scratch = Scratch::new("shared");
    let dir = scratch.workspace("run");
    runtime().block_on(async {
        let steps = confined(&scratch, 4096).await;
        let wait = |mine: &str, other: &str| {
            format!("mkdir {mine}; touch {mine}/made; while [ ! -e {other} ]; do sleep 0.05; done; id -u")
        };
        let a = run(&steps, &dir, &wait("a", "b"), Limits::default());
        let b = run(&steps, &dir, &wait("b", "a"), Limits::default());
        let both = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(finish(a), finish(b))
        });
        let ((a, a_uid, a_err), (b, b_uid, b_err)) = both.await.expect("each sees the other's");
        assert_eq!(a.ended, Ended::Exited(0), "{a_err}");
        assert_eq!(b.ended, Ended::Exited(0), "{b_err}");
        assert_eq!(a_uid, b_uid, "one uid for the run's steps at once");
        let later = "echo more >> a/made && rm -r b && mkdir c && id -u";
        let (end, uid, err) = finish(run(&steps, &dir, later, Limits::default())).await;
        assert_eq!(end.ended, Ended::Exited(0), "{err}");
        println!("    two steps at once as {}, a later one as {}", a_uid.trim(), uid.trim());
    });
}

fn cpu_is_held_to_the_steps_quota() {
    let scratch = Scratch::new("cpu");
    let dir = scratch.workspace("ws");
    let limits = Limits {
        cpu_millis: Some(500),
        memory_mib: None,
    };
    let busy = "for i in 1 2; do timeout 4 sh -c 'while :; do :; done' & done; wait";
    runtime().block_on(async {
        let steps = confined(&scratch, 4096).await;
        let (end, _, err) = finish(run(&steps, &dir, busy, limits)).await;
        assert_eq!(end.ended, Ended::Exited(0), "{err}");
        let used = usage(&end);
        println!(
            "    two busy loops for 4 s at 500m: {:.2} cpu-seconds, throttled {:.2} s",
            used.cpu_seconds, used.throttled_seconds
        );
        assert!(
            (1.0..=2.5).contains(&used.cpu_seconds),
            "at most 2.5 cpu-seconds: {used:?}"
        );
    });
}

fn a_step_over_its_memory_is_killed_and_its_neighbour_runs_on() {
    let scratch = Scratch::new("memory");
    let (hog_dir, neighbour_dir) = (scratch.workspace("hog"), scratch.workspace("neighbour"));
    let limits = Limits {
        cpu_millis: None,
        memory_mib: Some(128),
    };
    runtime().block_on(async {
        let steps = confined(&scratch, 4096).await;
        // `tail` holds what it reads until it sees ten lines: all of it.
        let hog = run(
            &steps,
            &hog_dir,
            "head -c 512M /dev/zero | tail; echo after",
            limits,
        );
        let neighbour = run(&steps, &neighbour_dir, "sleep 2; echo neighbour", limits);
        let ((hog_end, _, hog_err), (neighbour_end, neighbour_out, neighbour_err)) =
            tokio::join!(finish(hog), finish(neighbour));
        let used = usage(&hog_end);
        println!(
            "    512 MiB under 128Mi: {} killed by the OOM killer, peak {:.1} MiB",
            used.oom_kills,
            mib(used.memory_peak_bytes)
        );
        assert!(used.oom_kills >= 1, "{used:?} {hog_err}");
        assert!(
            (100 << 20..=128 << 20).contains(&used.memory_peak_bytes),
            "{used:?}"
        );
        assert_eq!(neighbour_end.ended, Ended::Exited(0), "{neighbour_err}");
        assert_eq!(neighbour_out, "neighbour\n");
        assert_eq!(usage(&neighbour_end).oom_kills, 0);
    });
}

/// How many processes run as `uid`.
fn processes_of(uid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("status")).is_ok_and(|status| {
                status.lines().any(|l| {
                    l.strip_prefix("Uid:")
                        .and_then(|ids| ids.split_whitespace().next())
                        .is_some_and(|id| id == uid.to_string())
                })
            })
        })
        .count()
}

fn a_fork_bomb_is_held_by_the_pids_limit_and_the_supervisor_serves_on() {
    const CAP: u64 = 64;
    let scratch = Scratch::new("bomb");
    let dir = scratch.workspace("ws");
    runtime().block_on(async {
        let steps = confined(&scratch, CAP).await;
        // Each process forks two that do the same, waits for them, and again.
        let bomb = "id -u; b() { while :; do b & b & wait; done; }; b";
        let bomb = run(&steps, &dir, bomb, Limits::default());
        let Step {
            stdout,
            mut stderr,
            ending,
            stop,
        } = bomb;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let uid: u32 = lines
            .next_line()
            .await
            .expect("its output")
            .expect("its uid")
            .parse()
            .expect("a uid");
        // What it writes after is drained, so it never blocks on its pipes.
        let drain = tokio::spawn(async move {
            while let Ok(Some(_)) = lines.next_line().await {}
            let _ = stderr.read_to_end(&mut Vec::new()).await;
        });
        // Held at the cap until it gives up, or stopped after 2 s.
        let mut most = 0;
        let watched = Instant::now();
        let mut ending = std::pin::pin!(ending.wait());
        let end = loop {
            let now = processes_of(uid);
            most = most.max(now);
            if now as u64 > CAP {
                stop.stop();
                panic!("{now} processes, past the cap of {CAP}");
            }
            if watched.elapsed() > Duration::from_secs(2) {
                stop.stop();
            }
            let tick = tokio::time::sleep(Duration::from_millis(10));
            tokio::select! {
                end = &mut ending => break end,
                () = tick => {}
            }
        };
        let _ = drain.await;
        println!(
            "    a fork bomb under a cap of {CAP}: at most {most} processes at once, ended {:?} after {:?}",
            end.ended,
            watched.elapsed()
        );
        // Its shell may give up on a fork that fails (and the namespace ends
        // with it), or be stopped: either way, nothing of it is left.
        assert_eq!(processes_of(uid), 0, "the bomb is gone");
        assert!(most >= (CAP / 4) as usize, "it forked up to the cap: {most}");
        let (after, out, err) = finish(run(&steps, &dir, "echo after", Limits::default())).await;
        assert_eq!((after.ended, out), (Ended::Exited(0), "after\n".into()), "{err}");
    });
}

/// Busy on one core until the shell has used 2 cpu-seconds, by its own
/// `/proc/self/stat` (`read` is a builtin: the shell reads it, no fork).
const BUSY_2S: &str = r#"
ticks=$(getconf CLK_TCK)
while :; do
  read -r stat < /proc/self/stat
  set -- $stat
  [ $(( (${14} + ${15}) / ticks )) -ge 2 ] && break
done
"#;

fn what_a_step_uses_is_measured() {
    let scratch = Scratch::new("measured");
    let dir = scratch.workspace("ws");
    runtime().block_on(async {
        let steps = confined(&scratch, 4096).await;
        let measure = async |command: &str| {
            let (end, _, err) = finish(run(&steps, &dir, command, Limits::default())).await;
            assert_eq!(end.ended, Ended::Exited(0), "{command}: {err}");
            usage(&end)
        };
        let idle = measure("sleep 2").await;
        // Busy until the shell itself has used 2 s of cpu (200 ticks of user
        // and system time, read without a fork), however busy the host is.
        let busy = measure(BUSY_2S).await;
        let touched = measure("head -c 200M /dev/zero | tail").await;
        println!(
            "    sleep 2: {:.3} cpu-s; busy 2 s: {:.2} cpu-s; 200 MiB held: peak {:.1} MiB",
            idle.cpu_seconds,
            busy.cpu_seconds,
            mib(touched.memory_peak_bytes)
        );
        assert!(idle.cpu_seconds < 0.1, "{idle:?}");
        assert!((1.6..=2.4).contains(&busy.cpu_seconds), "{busy:?}");
        let peak = mib(touched.memory_peak_bytes);
        assert!((180.0..=220.0).contains(&peak), "{touched:?}");
    });
}

/// The cgroups of this process (the agent, here) in each hierarchy, from
/// `/proc/self/mountinfo` and `/proc/self/cgroup`.
fn own_cgroups() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let mounted = mounts.lines().find_map(|m| {
            let (fields, rest) = m.split_once(" - ")?;
            let fields: Vec<&str> = fields.split(' ').collect();
            let rest: Vec<&str> = rest.split(' ').collect();
            let fits = match (rest.first(), controllers) {
                (Some(&"cgroup2"), "") => true,
                (Some(&"cgroup"), wanted) if !wanted.is_empty() => {
                    let options: Vec<&str> = rest.get(2)?.split(',').collect();
                    wanted.split(',').all(|c| options.contains(&c))
                }
                _ => false,
            };
            let rel = Path::new(path).strip_prefix(fields.get(3)?).ok()?;
            let point = Path::new(fields.get(4)?);
            fits.then(|| point.join(rel))
        });
        dirs.extend(mounted);
    }
    dirs
}

/// The step supervisors this process (the agent, here) started that run.
fn supervisors() -> Vec<u32> {
    let me = std::process::id();
    let tasks = std::fs::read_dir(format!("/proc/{me}/task")).expect("this process's threads");
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg == STEP_SUPERVISOR.as_bytes())
            })
        })
        .collect()
}

fn an_attempts_cgroups_go_when_it_ends_and_the_supervisors_when_it_does() {
    let scratch = Scratch::new("cgroups");
    let dir = scratch.workspace("ws");
    let mut ours: Vec<PathBuf> = Vec::new();
    runtime().block_on(async {
        let steps = confined(&scratch, 4096).await;
        // The supervisor's cgroups, in each hierarchy it uses.
        ours = supervisors()
            .iter()
            .flat_map(|pid| {
                own_cgroups()
                    .into_iter()
                    .map(move |d| d.join(format!("corral-{pid}")))
            })
            .filter(|d| d.exists())
            .collect();
        assert!(
            ours.len() >= 2,
            "the supervisor has cgroups in v2 and v1: {ours:?}"
        );
        let held = run(&steps, &dir, "echo up; exec sleep 60", Limits::default());
        let Step {
            stdout,
            ending,
            stop,
            ..
        } = held;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        assert_eq!(
            lines.next_line().await.expect("its output").as_deref(),
            Some("up")
        );
        // The first step's cgroups, wherever the supervisor made them.
        let attempts: Vec<PathBuf> = ours
            .iter()
            .map(|d| d.join("s1"))
            .filter(|d| d.exists())
            .collect();
        assert!(
            attempts.len() >= 2,
            "the step has cgroups in v2 and v1: {attempts:?} of {ours:?}"
        );
        stop.stop();
        assert_eq!(
            ending.wait().await.ended,
            Ended::Killed(Signal::SIGKILL as i32)
        );
        // Removed a moment after the end is reported.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = attempts.iter().find(|d| d.exists()) {
            assert!(Instant::now() < deadline, "{} is left", left.display());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(steps);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while ours.iter().any(|d| d.exists()) {
        assert!(
            Instant::now() < deadline,
            "the supervisor's cgroups are left: {ours:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a step takes through the supervisor, confined or not: 200 `true`
/// steps one after another, each set up, run and torn down. Printed, not
/// asserted.
fn what_confinement_costs_a_step() {
    let scratch = Scratch::new("cost");
    let dir = scratch.workspace("ws");
    let plain = |cgroups| Setup {
        user: StepUser::Agent,
        hide: Vec::new(),
        pids_max: 4096,
        cgroups,
    };
    let setups = [
        ("confined", scratch.setup(4096)),
        ("cgroups only", plain(true)),
        ("plain", plain(false)),
    ];
    runtime().block_on(async {
        for (label, setup) in setups {
            let steps = Steps::start(&[SECRET_VAR], setup).expect("the supervisor");
            steps.confinement().await.expect("the supervisor sets up");
            let started = Instant::now();
            for _ in 0..200 {
                let (end, _, err) = finish(run(&steps, &dir, "true", Limits::default())).await;
                assert_eq!(end.ended, Ended::Exited(0), "{err}");
            }
            println!(
                "    200 `true` steps, {label}: {:?} each",
                started.elapsed() / 200
            );
        }
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
    if args.next().as_deref() == Some(OsStr::new(STEP_SUPERVISOR)) {
        corral_agent::step_supervisor(args);
    }
    // SAFETY: no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(SECRET_VAR, agent_secret())
    };
    let tests = tests![
        steps_are_confined_and_the_supervisor_says_so,
        steps_run_as_the_step_user_when_one_is_given,
        a_step_reaches_nothing_of_the_agent_nor_of_another_attempt,
        the_steps_of_a_run_share_its_workspace_and_what_is_in_it,
        cpu_is_held_to_the_steps_quota,
        a_step_over_its_memory_is_killed_and_its_neighbour_runs_on,
        a_fork_bomb_is_held_by_the_pids_limit_and_the_supervisor_serves_on,
        what_a_step_uses_is_measured,
        an_attempts_cgroups_go_when_it_ends_and_the_supervisors_when_it_does,
        what_confinement_costs_a_step,
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

//! The cgroups of attempts: where they are found, what is written into a
//! directory laid out as a cgroupfs, and, on this host's own hierarchies (as
//! root), a whole tree killed in v2 and in v1.

use super::*;

const MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 35 0:32 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
38 35 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 35 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 35 0:35 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 35 0:36 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
42 35 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
43 35 0:38 /outer /sys/fs/cgroup/sys\\040temd rw,relatime - cgroup cgroup rw,name=systemd
";

const CGROUP: &str = "\
9:name=systemd:/outer/x
8:pids:/
7:blkio:/
6:freezer:/
4:memory:/process_api/86acdc
2:cpuacct:/
1:cpu:/
0::/
";

#[test]
fn the_agents_cgroups_are_found_in_each_hierarchy_it_uses() {
    let layout = Layout::parse(MOUNTINFO, CGROUP);
    assert_eq!(layout.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    let v1: Vec<(String, Vec<String>)> = layout
        .v1
        .iter()
        .map(|(d, cs)| (d.display().to_string(), cs.clone()))
        .collect();
    let expected = [
        ("/sys/fs/cgroup/pids", "pids"),
        ("/sys/fs/cgroup/freezer", "freezer"),
        ("/sys/fs/cgroup/memory/process_api/86acdc", "memory"),
        ("/sys/fs/cgroup/cpuacct", "cpuacct"),
        ("/sys/fs/cgroup/cpu", "cpu"),
    ]
    .map(|(d, c)| (d.to_string(), vec![c.to_string()]));
    assert_eq!(v1, expected);
}

#[test]
fn a_combined_hierarchy_and_a_mount_of_a_subtree_are_found() {
    let mountinfo = "\
36 35 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
42 35 0:37 /docker/abc /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    let cgroup = "3:cpu,cpuacct:/a/b\n0::/docker/abc/inner\n";
    let layout = Layout::parse(mountinfo, cgroup);
    assert_eq!(
        layout.v2,
        Some(PathBuf::from("/sys/fs/cgroup/unified/inner"))
    );
    assert_eq!(
        layout.v1,
        vec![(
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a/b"),
            vec!["cpu".to_string(), "cpuacct".to_string()]
        )]
    );
    assert_eq!(unescape("/a\\040b\\134c"), PathBuf::from("/a b\\c"));
}

/// A directory laid out as a v2 cgroupfs whose controllers can be handed
/// down, with the agent in `own`.
struct FakeV2(PathBuf);

impl FakeV2 {
    fn new(test: &str) -> FakeV2 {
        let root =
            std::env::temp_dir().join(format!("corral-cgroup-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let own = root.join("own");
        std::fs::create_dir_all(&own).expect("a fake cgroupfs");
        std::fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("controllers");
        FakeV2(root)
    }

    fn layout(&self) -> Layout {
        Layout {
            v2: Some(self.0.join("own")),
            v1: Vec::new(),
        }
    }

    fn read(&self, path: impl AsRef<Path>) -> String {
        let path = self.0.join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// This process's cgroup (it plays the supervisor) in the fake.
    fn ours(&self) -> String {
        format!("own/corral-{}", std::process::id())
    }
}

impl Drop for FakeV2 {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn v2_limits_are_written_where_the_controllers_are_handed_down() {
    let fake = FakeV2::new("limits");
    let cgroups = Cgroups::setup(&fake.layout(), 4242, 512);
    assert_eq!(cgroups.mode(), "v2");
    assert_eq!(
        fake.read("own/cgroup.subtree_control"),
        "+cpu +memory +pids"
    );
    assert_eq!(
        fake.read(format!("{}/cgroup.subtree_control", fake.ours())),
        "+cpu +memory +pids"
    );
    let limits = Limits {
        cpu_millis: Some(500),
        memory_mib: Some(128),
    };
    let attempt = cgroups
        .attempt("s7", &limits)
        .expect("the attempt's cgroup");
    assert_eq!(
        fake.read(format!("{}/s7/cpu.max", fake.ours())),
        "50000 100000"
    );
    assert_eq!(
        fake.read(format!("{}/s7/memory.max", fake.ours())),
        "134217728"
    );
    assert_eq!(
        fake.read(format!("{}/s7/memory.swap.max", fake.ours())),
        "0"
    );
    assert_eq!(fake.read(format!("{}/s7/pids.max", fake.ours())), "512");
    assert_eq!(
        attempt.procs(),
        vec![fake.0.join(format!("{}/s7/cgroup.procs", fake.ours()))]
    );

    // A tiny quota is raised to the kernel's least; no memory, no limit.
    let tiny = Limits {
        cpu_millis: Some(1),
        memory_mib: None,
    };
    cgroups.attempt("s8", &tiny).expect("another");
    assert_eq!(
        fake.read(format!("{}/s8/cpu.max", fake.ours())),
        "1000 100000"
    );
    assert!(
        !fake
            .0
            .join(format!("{}/s8/memory.max", fake.ours()))
            .exists()
    );
    assert_eq!(fake.read(format!("{}/s8/pids.max", fake.ours())), "512");
}

#[test]
fn an_agent_in_a_cgroup_that_cannot_hand_controllers_down_moves_to_a_leaf_first() {
    let fake = FakeV2::new("leaf");
    // A write that fails, as the kernel's does where the cgroup holds
    // processes.
    std::fs::create_dir(fake.0.join("own/cgroup.subtree_control")).expect("a refusal");
    let cgroups = Cgroups::setup(&fake.layout(), 4246, 4096);
    let moved = fake.read(format!("{}/agent/cgroup.procs", fake.ours()));
    assert_eq!(
        moved,
        std::process::id().to_string(),
        "the supervisor moved"
    );
    assert_eq!(cgroups.mode(), "none", "refused again: no limits in v2");
    assert!(cgroups.any(), "still tracked in v2");
}

#[test]
fn v2_counters_are_read_back() {
    let fake = FakeV2::new("counters");
    let cgroups = Cgroups::setup(&fake.layout(), 4243, 4096);
    let attempt = cgroups
        .attempt("s1", &Limits::default())
        .expect("the attempt's cgroup");
    let dir = fake.0.join(format!("{}/s1", fake.ours()));
    std::fs::write(
        dir.join("cpu.stat"),
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 20\nthrottled_usec 1250000\n",
    )
    .expect("cpu.stat");
    std::fs::write(dir.join("memory.peak"), "209715200\n").expect("memory.peak");
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .expect("memory.events");
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").expect("events");
    assert_eq!(
        attempt.measured(),
        Measured {
            cpu_seconds: Some(2.5),
            memory_peak_bytes: Some(209_715_200),
            throttled_seconds: Some(1.25),
            oom_kills: 1,
        }
    );
    assert!(!attempt.is_empty());
    std::fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").expect("events");
    assert!(attempt.is_empty());
}

#[test]
fn without_controllers_v2_tracks_but_sets_no_limits() {
    let fake = FakeV2::new("tracking");
    std::fs::write(fake.0.join("own/cgroup.controllers"), "").expect("no controllers");
    let cgroups = Cgroups::setup(&fake.layout(), 4244, 4096);
    assert_eq!(cgroups.mode(), "none");
    assert!(cgroups.any());
    let limits = Limits {
        cpu_millis: Some(500),
        memory_mib: Some(128),
    };
    let mut attempt = cgroups
        .attempt("s1", &limits)
        .expect("the attempt's cgroup");
    let dir = fake.0.join(format!("{}/s1", fake.ours()));
    assert!(!dir.join("cpu.max").exists());
    assert!(!dir.join("memory.max").exists());
    std::fs::write(dir.join("cpu.stat"), "usage_usec 100\nthrottled_usec 7\n").expect("cpu.stat");
    let measured = attempt.measured();
    assert_eq!(measured.cpu_seconds, Some(0.0001));
    assert_eq!(measured.throttled_seconds, None, "no quota, no throttling");
    assert_eq!(measured.memory_peak_bytes, None);
    std::fs::remove_file(dir.join("cpu.stat")).expect("emptied");
    assert!(attempt.remove(), "an empty cgroup is removed");
    assert!(!dir.exists());
}

#[test]
fn the_cgroups_of_supervisors_that_are_gone_are_removed_and_live_ones_kept() {
    let fake = FakeV2::new("stale");
    let own = fake.0.join("own");
    // No process has a pid this high.
    let gone = own.join(format!("corral-{}", u32::MAX - 1));
    std::fs::create_dir_all(gone.join("s3")).expect("a stale attempt");
    let live = own.join(format!("corral-{}", std::process::id()));
    std::fs::create_dir_all(live.join("s1")).expect("a live attempt");
    let _cgroups = Cgroups::setup(&fake.layout(), 4245, 4096);
    assert!(!gone.exists(), "a gone supervisor's cgroups are removed");
    assert!(live.join("s1").exists(), "a live one's are kept");
}

/// A shell in `attempt` that leaves processes behind: in the background,
/// in a session of their own, orphaned at once. Their pids, once all run.
fn tree_in(attempt: &Attempt) -> (std::process::Child, Vec<Pid>) {
    use std::io::BufRead;
    let join: String = attempt
        .procs()
        .iter()
        .map(|p| format!("echo $$ > {};", p.display()))
        .collect();
    let script = format!(
        "{join} sleep 300 & echo $!; setsid sh -c 'echo $$; exec sleep 300' & \
         ( sh -c 'echo $$; exec sleep 300' & ); sleep 0.2; echo $$; wait"
    );
    let mut shell = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("a shell");
    let out = std::io::BufReader::new(shell.stdout.take().expect("its output"));
    let pids = out
        .lines()
        .take(4)
        .map(|l| Pid::from_raw(l.expect("a line").trim().parse().expect("a pid")))
        .collect();
    (shell, pids)
}

fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, s)| s.starts_with('Z'))
    })
}

/// Kills what `attempt` holds and waits until it is empty; the shell is
/// this process's to reap.
fn kill_and_empty(attempt: &Attempt, mut shell: std::process::Child, pids: &[Pid]) {
    assert!(!attempt.is_empty(), "the tree runs in its cgroup");
    attempt.kill();
    shell.wait().expect("the shell is reaped");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !attempt.is_empty() || pids.iter().any(|&p| alive(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the tree {pids:?} is still there"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn cgroup_kill_in_v2_ends_a_whole_tree_and_populated_goes_to_0() {
    let layout = Layout::of_this_process();
    assert!(layout.v2.is_some(), "no cgroup v2 hierarchy: {layout:?}");
    let own = Layout {
        v2: layout.v2,
        v1: Vec::new(),
    };
    let cgroups = Cgroups::setup(&own, std::process::id(), 64);
    let mut attempt = cgroups
        .attempt("s-real-v2", &Limits::default())
        .expect("an attempt's cgroup below this process's (needs root)");
    let dir = attempt.v2.clone().expect("in v2").0;
    let (shell, pids) = tree_in(&attempt);
    assert_eq!(keyed(&dir, "cgroup.events", "populated"), Some(1));
    kill_and_empty(&attempt, shell, &pids);
    assert_eq!(keyed(&dir, "cgroup.events", "populated"), Some(0));
    let measured = attempt.measured();
    assert!(
        measured.cpu_seconds.is_some_and(|s| s > 0.0),
        "{measured:?}"
    );
    assert!(attempt.remove(), "an emptied cgroup is removed");
    assert!(!dir.exists());
    cgroups.remove();
}

#[test]
fn without_v2_a_tree_is_frozen_then_killed_in_v1() {
    let layout = Layout::of_this_process();
    let own = Layout {
        v2: None,
        v1: layout.v1,
    };
    let cgroups = Cgroups::setup(&own, std::process::id(), 64);
    assert_eq!(cgroups.mode(), "v1", "v1 cpu and memory: {own:?}");
    let limits = Limits {
        cpu_millis: Some(250),
        memory_mib: Some(64),
    };
    let mut attempt = cgroups
        .attempt("s-real-v1", &limits)
        .expect("an attempt's cgroup below this process's (needs root)");
    assert!(attempt.v1("freezer").is_some(), "a freezer: {attempt:?}");
    let cpu = attempt.v1("cpu").expect("cpu").to_path_buf();
    assert_eq!(number(&cpu, "cpu.cfs_quota_us"), Some(25_000));
    let memory = attempt.v1("memory").expect("memory").to_path_buf();
    assert_eq!(number(&memory, "memory.limit_in_bytes"), Some(64 << 20));
    let (shell, pids) = tree_in(&attempt);
    kill_and_empty(&attempt, shell, &pids);
    let freezer = attempt.v1("freezer").expect("freezer").to_path_buf();
    let state = std::fs::read_to_string(freezer.join("freezer.state")).expect("its state");
    assert_eq!(state.trim(), "THAWED", "thawed to die");
    assert!(attempt.remove(), "emptied cgroups are removed");
    assert!(!cpu.exists() && !memory.exists() && !freezer.exists());
    cgroups.remove();
}

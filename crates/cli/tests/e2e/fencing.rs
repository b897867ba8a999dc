//! Fencing: a step runs only while its agent holds the lease its polls renew.
//! An agent paused (`SIGSTOP`), cut off from the server (the link of its
//! network namespace down), or paused with its step supervisor and its step
//! (a paused host) never leaves two attempts of one step alive at once: the
//! lines the attempts themselves write do not interleave (a paused host's old
//! attempt writes for at most a second after it resumes). And an outage of
//! the server's PostgreSQL runs no finished step again and loses no agent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::{Agent, Server, StoreKind, descendants, eventually};

/// How long each fault lasts.
const FAULT: Duration = Duration::from_secs(30);

/// A step that appends `ATTEMPT MILLIS` to `ticks` in its workspace every
/// 100 ms: for a minute in its first attempt (long past any fault), for 3 s in
/// later ones.
const TICKING: &str = "kind: Pipeline\nname: ticking\ntenant: t\nsteps:\n  - name: tick\n    pool: metal\n    retries: 1\n    resources: {cpu: 2, memory: 1Gi}\n    run: |\n      n=30; [ \"$CORRAL_ATTEMPT\" = 1 ] && n=600\n      i=0\n      while [ $i -lt $n ]; do echo \"$CORRAL_ATTEMPT $(date +%s%3N)\" >> ticks; i=$((i+1)); sleep 0.1; done\n";

/// A line a ticking step wrote.
#[derive(Debug, Clone, Copy)]
struct Tick {
    attempt: u32,
    millis: i64,
}

/// What the attempts of run `id` wrote, in each agent's workspace of it.
fn ticks(server: &Server, id: i64) -> Vec<Tick> {
    server
        .workspaces(id)
        .iter()
        .flat_map(|dir| {
            let text = std::fs::read_to_string(dir.join("ticks")).unwrap_or_default();
            text.lines()
                .filter_map(|line| {
                    let mut fields = line.split_whitespace();
                    Some(Tick {
                        attempt: fields.next()?.parse().ok()?,
                        millis: fields.next()?.parse().ok()?,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The first and the last line of each attempt, in milliseconds.
fn spans(ticks: &[Tick]) -> BTreeMap<u32, (i64, i64)> {
    let mut spans: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    for t in ticks {
        let span = spans.entry(t.attempt).or_insert((t.millis, t.millis));
        span.0 = span.0.min(t.millis);
        span.1 = span.1.max(t.millis);
    }
    spans
}

/// How long an earlier attempt went on writing after a later one began; 0
/// when their lines do not interleave.
fn overlap_ms(spans: &BTreeMap<u32, (i64, i64)>) -> i64 {
    let mut overlap = 0;
    for (a, (_, last)) in spans {
        for (_, (first, _)) in spans.range(a + 1..) {
            overlap = overlap.max(last - first);
        }
    }
    overlap
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

fn signal(pids: &[i32], signal: Signal) {
    for &pid in pids {
        // One may have ended meanwhile (a `sleep` between two lines).
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "ip {}: {status:?}",
        args.join(" ")
    );
}

/// A network namespace joined to this one by a veth pair: the agent runs in
/// it, reaching the server through the host side's address. Its names are
/// this test process's own; removed when dropped.
struct Netns {
    name: String,
    host_link: String,
    host: Ipv4Addr,
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let name = format!("corral-fence-{pid}");
        let host_link = format!("cfh{pid}");
        let inner_link = format!("cfn{pid}");
        // A /30 of 10.231.0.0/16 of this process's own.
        let net = (pid % 16384) * 4;
        let octets = |last: u32| {
            Ipv4Addr::new(
                10,
                231,
                u8::try_from(net >> 8).expect("under 256"),
                u8::try_from((net & 0xff) + last).expect("under 256"),
            )
        };
        let (host, inner) = (octets(1), octets(2));
        let netns = Netns {
            name: name.clone(),
            host_link: host_link.clone(),
            host,
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{inner}/30"), "dev", &inner_link]);
        inside(&["link", "set", &inner_link, "up"]);
        inside(&["link", "set", "lo", "up"]);
        netns
    }

    /// Runs a command in the namespace: `ip netns exec NAME`, which execs it
    /// in the same process.
    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Packets to and from the namespace are dropped, silently.
    fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]);
    }

    fn restore(&self) {
        ip(&["link", "set", &self.host_link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of the pair deletes the other.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connections being forwarded, and whether new ones are.
#[derive(Default)]
struct Forwarding {
    cut: bool,
    connections: Vec<JoinHandle<()>>,
}

/// A TCP forwarder the test owns, from its own address to `to`. Cut, it
/// closes every connection and closes new ones at once, until restored.
struct Forward {
    addr: SocketAddr,
    state: Arc<Mutex<Forwarding>>,
    accepting: JoinHandle<()>,
}

impl Forward {
    async fn start(bind: SocketAddr, to: SocketAddr) -> Forward {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {bind}: {e}"));
        let addr = listener.local_addr().expect("a bound address");
        let state = Arc::new(Mutex::new(Forwarding::default()));
        let accepting = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut state = state.lock().expect("not poisoned");
                    if state.cut {
                        continue;
                    }
                    state.connections.push(tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            }
        });
        Forward {
            addr,
            state,
            accepting,
        }
    }

    fn cut(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        state.cut = true;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.state.lock().expect("not poisoned").cut = false;
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

async fn pool_has_agents(server: &Server, count: u64) {
    eventually(
        &format!("{count} agents in pool metal"),
        Duration::from_secs(20),
        || async {
            let pool: Value = server.get("/api/v1/pools/metal").await;
            (pool["agents"] == count).then_some(())
        },
    )
    .await;
}

/// How the agent running the first attempt is kept from the server.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The agent alone is stopped.
    PausedAgent,
    /// The link of the agent's network namespace is down.
    CutLink,
    /// The agent, its step supervisor and its step are all stopped.
    PausedHost,
}

/// Runs the ticking step on a first agent, starts a second one, keeps the
/// first from the server for [`FAULT`], and checks that the run succeeds with
/// its attempts' lines apart; prints the overlap measured.
async fn fenced(label: &str, fault: Fault) {
    let netns = matches!(fault, Fault::CutLink).then(Netns::new);
    let mut server = Server::start(label, StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: t\n")
        .await;
    // Started before the server is dropped, so dropped after it.
    let mut forward = None;
    let first: Agent = match &netns {
        Some(netns) => {
            let port = server.url.rsplit(':').next().expect("a port");
            let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
            let f = Forward::start(SocketAddr::from((netns.host, 0)), to).await;
            let url = format!("http://{}", f.addr);
            forward = Some(f);
            server
                .start_agent_through(&netns.wrapper(), &url, "metal", "first")
                .await
        }
        None => server.start_agent("metal", "first", "2", "2Gi").await,
    };
    pool_has_agents(&server, 1).await;

    let run = server.submit(TICKING).await;
    let id = run["id"].as_i64().expect("id");
    eventually("the first attempt to tick", Duration::from_secs(20), || {
        std::future::ready((ticks(&server, id).len() >= 3).then_some(()))
    })
    .await;
    let _second = server.start_agent("metal", "second", "2", "2Gi").await;
    pool_has_agents(&server, 2).await;

    let mut resumed = None;
    match fault {
        Fault::PausedAgent => {
            signal(&[first.pid()], Signal::SIGSTOP);
            tokio::time::sleep(FAULT).await;
            signal(&[first.pid()], Signal::SIGCONT);
        }
        Fault::CutLink => {
            let netns = netns.as_ref().expect("a namespace");
            netns.cut();
            tokio::time::sleep(FAULT).await;
            netns.restore();
        }
        Fault::PausedHost => {
            let supervisor = descendants(first.pid())
                .into_iter()
                .find(|&pid| cmdline(pid).contains("__step-supervisor"))
                .expect("the agent's step supervisor");
            let mut stopped = vec![first.pid(), supervisor];
            signal(&stopped, Signal::SIGSTOP);
            // The step's processes, once their supervisor no longer changes them.
            let step = descendants(supervisor);
            assert!(!step.is_empty(), "the step runs under its supervisor");
            signal(&step, Signal::SIGSTOP);
            stopped.extend(step);
            tokio::time::sleep(FAULT).await;
            // The step first: the supervisor runs last of all.
            stopped.reverse();
            resumed = Some(now_ms());
            signal(&stopped, Signal::SIGCONT);
        }
    }

    let done = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let attempts = done["steps"][0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts[0]["state"], "lost", "{done:#}");
    // Every attempt's processes have ended: nothing more will be written.
    server.no_step_processes().await;
    drop(forward);

    let ticks = ticks(&server, id);
    let spans = spans(&ticks);
    assert!(
        spans.len() >= 2 && spans.contains_key(&1),
        "the first attempt and another wrote lines: {spans:?}"
    );
    let overlap = overlap_ms(&spans);
    println!("{label}: attempts' first and last lines {spans:?}, overlap {overlap} ms");
    match resumed {
        None => assert_eq!(overlap, 0, "the attempts ran at once: {spans:?}"),
        Some(resumed) => {
            // The old attempt may have written only in the second after the
            // host resumed, when its lease was found lapsed.
            let later = spans.range(2..).map(|(_, (first, _))| *first).min();
            let later = later.expect("a later attempt");
            let late: Vec<&Tick> = ticks
                .iter()
                .filter(|t| t.attempt == 1 && t.millis >= later)
                .collect();
            assert!(
                late.iter().all(|t| t.millis <= resumed + 1_000),
                "the first attempt wrote more than 1 s after the host resumed at {resumed}: {late:?}"
            );
            println!(
                "{label}: the old attempt's last line {} ms after the host resumed ({} lines after the new attempt began)",
                spans[&1].1 - resumed,
                late.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_agent_leaves_no_two_attempts_running_at_once() {
    fenced("fence-paused", Fault::PausedAgent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_agent_leaves_no_two_attempts_running_at_once() {
    fenced("fence-cut", Fault::CutLink).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_host_stops_its_old_attempt_within_a_second_of_resuming() {
    fenced("fence-host", Fault::PausedHost).await;
}

/// `url` with its host and port replaced by `addr`, and the address it named.
async fn through(url: &str, addr: SocketAddr) -> (String, SocketAddr) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    let target = tokio::net::lookup_host(&host)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}"));
    (format!("{scheme}://{user}{addr}/{path}"), target)
}

/// The server reaches its PostgreSQL through a forwarder the test cuts for
/// 20 s while steps run (every connection closed, new ones closed at once):
/// this outage is the server's alone, starts and ends when the test says, and
/// is seen as PostgreSQL going away is, whatever the server does meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_runs_no_finished_step_again_and_loses_no_agent() {
    let direct = corral_store::testing::fresh_postgres_database("outage").await;
    let (_, target) = through(&direct, SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let forward = Forward::start(SocketAddr::from(([127, 0, 0, 1], 0)), target).await;
    let (proxied, _) = through(&direct, forward.addr).await;
    let mut server = Server::start("outage", StoreKind::Postgres(proxied)).await;
    let _agents = server.static_pool_of_two("metal").await;

    // Each step notes its start in its run's workspace, on its agent.
    let step = |name: &str, needs: &str| {
        format!(
            "  - name: {name}\n    pool: metal\n    resources: {{cpu: 1, memory: 256Mi}}\n{needs}    run: echo \"$CORRAL_RUN_ID $CORRAL_STEP\" >> starts; sleep 2\n"
        )
    };
    let pipeline = format!(
        "kind: Pipeline\nname: work\ntenant: t\nsteps:\n{}{}{}",
        step("a", ""),
        step("b", "    needs: [a]\n"),
        step("c", "    needs: [b]\n"),
    );
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(server.submit(&pipeline).await["id"].as_i64().expect("id"));
    }
    let starts = |server: &Server| -> String {
        runs.iter()
            .flat_map(|&id| server.workspaces(id))
            .map(|dir| std::fs::read_to_string(dir.join("starts")).unwrap_or_default())
            .collect()
    };
    eventually("steps to start", Duration::from_secs(20), || {
        std::future::ready((starts(&server).lines().count() >= 4).then_some(()))
    })
    .await;
    forward.cut();
    tokio::time::sleep(Duration::from_secs(20)).await;
    forward.restore();

    let mut workers = BTreeSet::new();
    for &id in &runs {
        let done = server.wait_run_ended(id, Duration::from_secs(120)).await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        for step in done["steps"].as_array().expect("steps") {
            for attempt in step["attempts"].as_array().expect("attempts") {
                assert_eq!(attempt["state"], "succeeded", "{done:#}");
                workers.insert(attempt["worker_id"].to_string());
            }
        }
    }
    let text = starts(&server);
    let mut started: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        *started.entry(line).or_default() += 1;
    }
    let again: Vec<_> = started.iter().filter(|(_, n)| **n > 1).collect();
    assert!(again.is_empty(), "steps started more than once: {again:?}");
    assert_eq!(started.len(), runs.len() * 3, "every step ran: {started:?}");

    // Both agents are the workers they were: each runs one of two runs that
    // need a whole agent, under the same worker ids as before.
    let whole = "kind: Pipeline\nname: whole\ntenant: t\nsteps:\n  - name: x\n    pool: metal\n    resources: {cpu: 2, memory: 256Mi}\n    run: sleep 2\n";
    let pair = [server.submit(whole).await, server.submit(whole).await];
    let mut after = BTreeSet::new();
    for run in pair {
        let id = run["id"].as_i64().expect("id");
        let done = server.wait_run_ended(id, Duration::from_secs(30)).await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        let attempt = &done["steps"][0]["attempts"][0];
        after.insert(attempt["worker_id"].to_string());
    }
    assert_eq!(after.len(), 2, "both agents ran a run: {after:?}");
    assert_eq!(
        after, workers,
        "the agents kept their workers through the outage"
    );
}

//! Provisioning across a crash: a server killed with a spawn pending finds,
//! after its restart, what its local provider holds and reconciles it with
//! the worker requests it stored: no duplicate worker, no orphan agent, no
//! allocation left unbound past its deadline.
//!
//! The local agents are started through a wrapper that waits for a gate file
//! before it execs `corral agent`, so each test holds its agents "spawned,
//! not registered" exactly as long as it needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Scratch, Server, StoreKind, eventually};

const CLUSTER: &str = r#"
kind: Pool
name: Spawn_Pool
capacity: {cpu: 2, memory: 2Gi}
max_workers: 2
---
kind: Tenant
name: spawners
quota: {cpu: 2}
allowed_pools: [Spawn_Pool]
"#;

const PIPELINE: &str = r#"
kind: Pipeline
name: once
tenant: spawners
steps:
  - {name: only, run: "echo done", resources: {cpu: 1, memory: 512Mi}}
"#;

/// A wrapper the local provider starts as its agents: it waits for `gate`,
/// then becomes the real agent.
fn gated_agent_exe(scratch: &Scratch) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let gate = scratch.join("gate");
    let exe = scratch.join("gated-agent");
    std::fs::write(
        &exe,
        format!(
            "#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.05; done\nexec '{BIN}' \"$@\"\n",
            gate.display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (exe, gate)
}

/// The live processes started as local agents of the server whose data
/// directory is `data_dir` (their command line names its workers directory),
/// by `--name`, with their pids. Zombies have ended and do not count.
fn local_agents(data_dir: &Path) -> Vec<(String, i32)> {
    let work_dir = data_dir.join("workers");
    let work_dir = work_dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let after = |flag: &[u8]| args.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
        if !zombie
            && args.iter().any(|a| *a == b"agent")
            && after(b"--work-dir") == Some(work_dir)
            && let Some(name) = after(b"--name")
        {
            found.push((String::from_utf8_lossy(name).into_owned(), pid));
        }
    }
    found.sort();
    found
}

async fn allocations(server: &Server) -> Vec<Value> {
    server.get("/api/v1/allocations?tenant=spawners").await
}

/// The one agent of the test's pool, once it is there, with its pid.
async fn one_spawned_agent(server: &Server) -> (String, i32) {
    eventually(
        "the local agent to be spawned",
        Duration::from_secs(20),
        || async {
            let agents = local_agents(&server.data_dir);
            (agents.len() == 1).then(|| agents[0].clone())
        },
    )
    .await
}

/// Opens the gate and checks the end: the run succeeded on exactly one
/// worker, registered once for its one allocation, and one agent process of
/// its name is all there is. Returns that name.
async fn succeeds_on_one_worker(server: &Server, gate: &Path, run: i64) -> String {
    std::fs::write(gate, "").expect("open the gate");
    let ended = server.wait_run_ended(run, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}\n{}", server.log());
    let held = allocations(server).await;
    assert_eq!(
        held.len(),
        1,
        "one allocation, never released and opened again: {held:#?}"
    );
    let worker = held[0]["worker_id"]
        .as_i64()
        .expect("the allocation was bound");
    let pool: Value = server.get("/api/v1/pools/Spawn_Pool").await;
    let agents = pool["live_agents"].as_array().expect("live agents");
    assert_eq!(agents.len(), 1, "one worker registered: {agents:#?}");
    assert_eq!(agents[0]["worker_id"].as_i64(), Some(worker));
    let name = agents[0]["name"].as_str().expect("a name").to_string();
    let processes = local_agents(&server.data_dir);
    assert_eq!(processes.len(), 1, "{processes:?}");
    assert_eq!(processes[0].0, name);
    name
}

/// Kill -9 with the agent spawned and not registered: the restarted server
/// finds it alive and waits for it (no second one), deletes an orphan agent
/// that nobody asked for, and the run ends on the first agent.
async fn a_pending_spawn_is_waited_for_and_an_orphan_deleted(store: StoreKind) {
    let scratch = Scratch::new("spawn-pending");
    let (exe, gate) = gated_agent_exe(&scratch);
    let exe = exe.display().to_string();
    let mut server = Server::start_with("spawn-pending", store, &["--local-agent-exe", &exe]).await;
    server.apply(CLUSTER).await;
    let run = server.submit(PIPELINE).await["id"].as_i64().expect("id");
    let (name, pid) = one_spawned_agent(&server).await;
    let unbound = allocations(&server).await;
    assert_eq!(unbound.len(), 1, "{unbound:#?}");
    assert!(
        unbound[0]["worker_id"].is_null(),
        "not bound yet: {unbound:#?}"
    );
    server.kill9();
    // While the server is down, an agent of its work directory appears that
    // no request asked for (as one left by an earlier crash would be).
    let mut orphan = std::process::Command::new("sh")
        .args([
            "-c",
            "sleep 120; true",
            "agent",
            "--name",
            "spawn-pool-999-0",
        ])
        .arg("--work-dir")
        .arg(server.data_dir.join("workers"))
        .spawn()
        .expect("start the orphan");
    server.restart().await;
    let status = eventually("the orphan to be deleted", Duration::from_secs(20), || {
        let ended = orphan.try_wait().expect("the orphan's status");
        async move { ended }
    })
    .await;
    assert!(
        !status.success(),
        "the orphan was ended by a signal: {status:?}"
    );
    assert_eq!(
        local_agents(&server.data_dir),
        vec![(name.clone(), pid)],
        "the pending agent is waited for, not spawned again"
    );
    assert_eq!(succeeds_on_one_worker(&server, &gate, run).await, name);
    assert_eq!(local_agents(&server.data_dir)[0].1, pid, "the same process");
}

/// Kill -9 with the agent spawned and not registered, and the agent dies
/// with it: the restarted server creates it again under the same name.
async fn a_spawn_lost_in_the_crash_is_made_again_under_its_name(store: StoreKind) {
    let scratch = Scratch::new("spawn-lost");
    let (exe, gate) = gated_agent_exe(&scratch);
    let exe = exe.display().to_string();
    let mut server = Server::start_with("spawn-lost", store, &["--local-agent-exe", &exe]).await;
    server.apply(CLUSTER).await;
    let run = server.submit(PIPELINE).await["id"].as_i64().expect("id");
    let (name, pid) = one_spawned_agent(&server).await;
    server.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the agent the server spawned");
    eventually("the agent to be gone", Duration::from_secs(10), || async {
        local_agents(&server.data_dir).is_empty().then_some(())
    })
    .await;
    server.restart().await;
    let (again, new_pid) = one_spawned_agent(&server).await;
    assert_eq!(again, name, "created again under the same name");
    assert_ne!(new_pid, pid);
    assert_eq!(succeeds_on_one_worker(&server, &gate, run).await, name);
}

/// An agent that does not register by the request's deadline is deleted and
/// the allocation is asked a new worker for, under a new name: nothing stays
/// unbound past a deadline, and the late agent is gone.
async fn an_agent_past_its_deadline_is_replaced(store: StoreKind) {
    let scratch = Scratch::new("spawn-deadline");
    let (exe, gate) = gated_agent_exe(&scratch);
    let exe = exe.display().to_string();
    let server = Server::start_with(
        "spawn-deadline",
        store,
        &["--local-agent-exe", &exe, "--spawn-timeout", "2s"],
    )
    .await;
    server.apply(CLUSTER).await;
    let run = server.submit(PIPELINE).await["id"].as_i64().expect("id");
    let (first, _) = one_spawned_agent(&server).await;
    let (second, _) = eventually("a second request", Duration::from_secs(20), || async {
        let agents = local_agents(&server.data_dir);
        (agents.len() == 1 && agents[0].0 != first).then(|| agents[0].clone())
    })
    .await;
    assert!(
        first.ends_with("-0") && second.ends_with("-1"),
        "{first} then {second}"
    );
    // The agent of the second request waits at the gate too, and is
    // replaced in turn until the gate opens: then one registers in time.
    let registered = succeeds_on_one_worker(&server, &gate, run).await;
    assert_ne!(registered, first, "the late agent never serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_spawn_is_waited_for_and_an_orphan_deleted_sqlite() {
    a_pending_spawn_is_waited_for_and_an_orphan_deleted(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_spawn_is_waited_for_and_an_orphan_deleted_postgres() {
    a_pending_spawn_is_waited_for_and_an_orphan_deleted(StoreKind::postgres("spawn_pending").await)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spawn_lost_in_the_crash_is_made_again_under_its_name_sqlite() {
    a_spawn_lost_in_the_crash_is_made_again_under_its_name(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_past_its_deadline_is_replaced_sqlite() {
    an_agent_past_its_deadline_is_replaced(StoreKind::Sqlite).await;
}

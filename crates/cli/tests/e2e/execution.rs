//! Execution on real agents: parallel steps within the envelope, timeouts that
//! kill the process group, retries, failure skipping, cancellation, logs.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, eventually, processes_end};

const POOL: &str = "kind: Pool\nname: exec\ncapacity: {cpu: 4, memory: 4Gi}\n---\nkind: Tenant\nname: t\nallowed_pools: [exec]\n";

fn attempts(run: &Value, step: usize) -> Vec<Value> {
    run["steps"][step]["attempts"]
        .as_array()
        .expect("attempts")
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn independent_steps_run_in_parallel_and_dependents_wait() {
    let server = Server::start("parallel", StoreKind::Sqlite).await;
    server.apply(POOL).await;
    // a and b each wait for the other's marker: they only both succeed together.
    let wait_for = |me: &str, other: &str| {
        format!(
            "touch {me}.started; for i in $(seq 100); do [ -f {other}.started ] && exit 0; sleep 0.1; done; exit 1"
        )
    };
    let doc = format!(
        r#"
kind: Pipeline
name: fan
tenant: t
steps:
  - {{name: a, run: "{}", resources: {{cpu: 1, memory: 256Mi}}}}
  - {{name: b, run: "{}", resources: {{cpu: 1, memory: 256Mi}}}}
  - {{name: c, run: "ls *.started | wc -l", needs: [a, b], resources: {{cpu: 2, memory: 128Mi}}}}
"#,
        wait_for("a", "b"),
        wait_for("b", "a")
    );
    let run = server.submit(&doc).await;
    assert_eq!(
        run["request"]["groups"][0]["resources"],
        serde_json::json!({"cpu_millis": 2000, "memory_mib": 512, "gpu": 0}),
        "the envelope is the peak concurrent demand"
    );
    let id = run["id"].as_i64().expect("id");
    let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{id}/logs?step=c"))
        .await;
    assert_eq!(
        logs.trim(),
        "2",
        "c ran after a and b, in the same workspace"
    );
    let (_, all) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
    assert_eq!(all, "c | 2\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_kill_the_process_group_and_retries_rerun() {
    let server = Server::start("timeout", StoreKind::Sqlite).await;
    server.apply(POOL).await;
    let doc = r#"
kind: Pipeline
name: flaky
tenant: t
steps:
  - {name: slow, run: "sleep 60 & echo up; sleep 60; echo never", timeout: 1s, retries: 1}
  - {name: after, run: "echo unreachable", needs: [slow]}
"#;
    let id = server.submit(doc).await["id"].as_i64().expect("id");
    let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let tries = attempts(&run, 0);
    assert_eq!(tries.len(), 2, "one retry: {run:#}");
    assert!(tries.iter().all(|a| a["state"] == "timedout"), "{tries:#?}");
    assert_eq!(run["steps"][1]["state"], "skipped");
    assert!(run["allocations"][0]["closed_at"].is_string(), "released");
    // Each attempt's shell, and the `sleep` it left in the background, were
    // killed too.
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{id}/logs?step=slow"))
        .await;
    assert_eq!(logs.matches("up\n").count(), 2, "both attempts ran: {logs}");
    server.no_step_processes().await;

    // A step that fails twice then succeeds, with retries: 2.
    let doc = r#"
kind: Pipeline
name: third-time
tenant: t
steps:
  - {name: s, run: "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo try $n; [ $n -ge 3 ]", retries: 2}
"#;
    let id = server.submit(doc).await["id"].as_i64().expect("id");
    let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let tries = attempts(&run, 0);
    assert_eq!(
        tries
            .iter()
            .map(|a| a["exit_code"].as_i64())
            .collect::<Vec<_>>(),
        vec![Some(1), Some(1), Some(0)]
    );
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{id}/logs?step=s"))
        .await;
    assert_eq!(
        logs,
        "--- attempt 1 ---\ntry 1\n--- attempt 2 ---\ntry 2\n--- attempt 3 ---\ntry 3\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_run_kills_it_and_releases_at_once() {
    let server = Server::start("cancel", StoreKind::Sqlite).await;
    server.apply(POOL).await;
    let doc = "kind: Pipeline\nname: long\ntenant: t\nsteps:\n  - {name: s, run: 'echo up; exec sleep 120', resources: {cpu: 4, memory: 1Gi}}\n";
    let id = server.submit(doc).await["id"].as_i64().expect("id");
    let waiting = server.submit(doc).await["id"].as_i64().expect("id");
    server
        .wait_for_output(id, "up", Duration::from_secs(20))
        .await;
    let mut running = server.running_steps(1).await;
    let (status, run) = server
        .send("POST", &format!("/api/v1/runs/{id}/cancel"), "")
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["state"], "cancelled");
    assert!(
        run["allocations"][0]["closed_at"].is_string(),
        "released at once: {run:#}"
    );
    // The next run gets the room.
    eventually(
        "the waiting run to start",
        Duration::from_secs(20),
        || async { (server.run(waiting).await["state"] == "running").then_some(()) },
    )
    .await;
    let (status, body) = server
        .send("POST", &format!("/api/v1/runs/{id}/cancel"), "")
        .await;
    assert_eq!(status, 409, "cancelling an ended run conflicts: {body}");
    let (status, _) = server.send("POST", "/api/v1/runs/999999/cancel", "").await;
    assert_eq!(status, 404);
    server
        .wait_for_output(waiting, "up", Duration::from_secs(20))
        .await;
    running.extend(server.running_steps(1).await);
    let (status, run) = server
        .send("POST", &format!("/api/v1/runs/{waiting}/cancel"), "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(run["state"], "cancelled");
    // Both processes are gone, and nothing of either step is left.
    processes_end(&running).await;
    server.no_step_processes().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_worker_is_replaced_and_its_step_retried() {
    let server = Server::start_with("lost", StoreKind::Sqlite, &["--heartbeat-timeout", "2"]).await;
    server.apply(POOL).await;
    let doc = r#"
kind: Pipeline
name: survivor
tenant: t
steps:
  - {name: s, run: "if [ -f tried ]; then echo second; else touch tried; echo first; sleep 61; fi", retries: 1}
"#;
    let id = server.submit(doc).await["id"].as_i64().expect("id");
    server
        .wait_for_output(id, "first", Duration::from_secs(20))
        .await;
    // Its agent dies, and its step with it; the step runs again on a new one.
    let agents = server.local_agents();
    assert_eq!(agents.len(), 1, "one local agent: {agents:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agents[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the agent");
    let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let tries = attempts(&run, 0);
    assert_eq!(tries.len(), 2, "{run:#}");
    assert_eq!(tries[0]["state"], "lost");
    assert_eq!(tries[0]["error"], "worker lost");
    assert_eq!(tries[1]["state"], "succeeded");
    assert_ne!(
        tries[0]["worker_id"], tries[1]["worker_id"],
        "another worker ran it"
    );
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{id}/logs?step=s"))
        .await;
    assert_eq!(
        logs,
        "--- attempt 1 ---\nfirst\n--- attempt 2 ---\nsecond\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn steps_on_different_pools_run_on_a_worker_per_group() {
    let server = Server::start("groups", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: one\ncapacity: {cpu: 2, memory: 2Gi}\n---\nkind: Pool\nname: two\ncapacity: {cpu: 2, memory: 2Gi}\n")
        .await;
    let doc = r#"
kind: Pipeline
name: split
steps:
  - {name: a, run: "echo on $CORRAL_POOL $GREETING", pool: one, env: {GREETING: hi}, resources: {cpu: 1, memory: 256Mi}}
  - {name: b, run: "echo on $CORRAL_POOL step $CORRAL_STEP", pool: two, needs: [a], resources: {cpu: 2, memory: 512Mi}}
"#;
    let run = server.submit(doc).await;
    let groups = run["request"]["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2);
    let id = run["id"].as_i64().expect("id");
    let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let pools: Vec<&str> = run["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|a| a["pool"].as_str().expect("pool"))
        .collect();
    assert_eq!(pools, vec!["one", "two"]);
    assert_ne!(
        attempts(&run, 0)[0]["worker_id"],
        attempts(&run, 1)[0]["worker_id"]
    );
    let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
    assert_eq!(
        logs, "a | on one hi\nb | on two step b\n",
        "the worker's and the step's env"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_with_nul_bytes_is_kept_on_postgres() {
    let server = Server::start("nul", StoreKind::postgres("nul").await).await;
    server.apply(POOL).await;
    let doc = "kind: Pipeline\nname: nul\ntenant: t\nsteps:\n  - {name: s, run: \"printf 'a\\\\000b\\\\n'\"}\n";
    let id = server.submit(doc).await["id"].as_i64().expect("id");
    let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{id}/logs?step=s"))
        .await;
    assert_eq!(logs, "a\u{FFFD}b\n");
}

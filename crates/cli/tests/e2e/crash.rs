//! Crash safety: `kill -9` the server with runs queued and running; after the
//! restart everything is there, running steps finish, nothing leaks or doubles.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, check_history};

const CLUSTER: &str = r#"
kind: Pool
name: crashpool
capacity: {cpu: 2, memory: 4Gi}
max_workers: 4
labels: {tier: test}
---
kind: Tenant
name: crashers
weight: 3
quota: {cpu: 2, runs: 5}
allowed_pools: [crashpool]
"#;

fn pipeline(name: &str) -> String {
    format!(
        r#"
kind: Pipeline
name: {name}
tenant: crashers
steps:
  - name: work
    run: "echo started; sleep 3; echo finished"
    resources: {{cpu: 1, memory: 512Mi}}
"#
    )
}

async fn crash_and_recover(store: StoreKind) {
    let mut server = Server::start("crash", store).await;
    server.apply(CLUSTER).await;
    // One run has ended before the crash.
    let done = server
        .submit(&pipeline("done").replace("sleep 3", "exit 0"))
        .await["id"]
        .as_i64()
        .expect("id");
    let done_before = server.wait_run_ended(done, Duration::from_secs(30)).await;
    assert_eq!(done_before["state"], "succeeded", "{done_before:#}");
    // Two runs fill the pool; two more wait.
    let mut ids = Vec::new();
    for i in 0..4 {
        let run = server.submit(&pipeline(&format!("crash-{i}"))).await;
        ids.push(run["id"].as_i64().expect("id"));
    }
    // Wait until two steps are running and have printed their first line.
    let first = ids[0];
    server
        .wait_for_output(first, "started", Duration::from_secs(20))
        .await;
    let pools_before: Value = server.get("/api/v1/pools").await;
    let tenants_before: Value = server.get("/api/v1/tenants").await;
    let allocations_before: Vec<Value> = server.get("/api/v1/allocations?tenant=crashers").await;
    let running_before: Vec<i64> = {
        let runs: Vec<Value> = server.get("/api/v1/runs?state=running").await;
        runs.iter().filter_map(|r| r["id"].as_i64()).collect()
    };
    assert!(
        running_before.contains(&first),
        "run {first} is running before the crash"
    );

    server.restart().await;

    // Everything is as it was.
    assert_eq!(
        server.run(done).await,
        done_before,
        "an ended run is kept whole"
    );
    let (_, done_logs) = server.get_text(&format!("/api/v1/runs/{done}/logs")).await;
    assert_eq!(done_logs, "work | started\n");
    let pools_after: Value = server.get("/api/v1/pools").await;
    let tenants_after: Value = server.get("/api/v1/tenants").await;
    // Which agents are live right now is not state: a restart may find a
    // worker spawned again for an allocation.
    let without_agents = |mut pools: Value| {
        for p in pools.as_array_mut().expect("pools") {
            p.as_object_mut().expect("a pool").remove("live_agents");
        }
        pools
    };
    assert_eq!(without_agents(pools_after), without_agents(pools_before));
    assert_eq!(tenants_after, tenants_before);
    let allocations_after: Vec<Value> = server.get("/api/v1/allocations?tenant=crashers").await;
    for a in &allocations_before {
        assert!(
            allocations_after
                .iter()
                .any(|b| b["id"] == a["id"] && b["opened_at"] == a["opened_at"]),
            "allocation {a} survived"
        );
    }
    for id in &ids {
        let run = server.run(*id).await;
        assert_ne!(run["state"], "failed", "run {id} after restart: {run:#}");
    }

    // The running steps finish on their original attempt: the agents kept them.
    for id in &ids {
        let run = server.wait_run_ended(*id, Duration::from_secs(60)).await;
        assert_eq!(run["state"], "succeeded", "run {id}: {run:#}");
        let attempts = run["steps"][0]["attempts"].as_array().expect("attempts");
        if running_before.contains(id) {
            assert_eq!(attempts.len(), 1, "run {id} was not re-run: {run:#}");
        }
        let (_, logs) = server
            .get_text(&format!("/api/v1/runs/{id}/logs?step=work"))
            .await;
        assert_eq!(
            logs, "started\nfinished\n",
            "run {id} kept its acknowledged output"
        );
    }

    // No allocation leaked or doubled; the quota and the pool were never exceeded.
    let history: Vec<Value> = server.get("/api/v1/allocations?tenant=crashers").await;
    assert_eq!(
        history.len(),
        ids.len() + 1,
        "one allocation per run: {history:#?}"
    );
    assert!(
        history.iter().all(|a| !a["closed_at"].is_null()),
        "all released: {history:#?}"
    );
    check_history(&history, "crashers", 2000, &[("crashpool", 2000)]);
    let pools: Vec<Value> = server.get("/api/v1/pools").await;
    let pool = pools
        .iter()
        .find(|p| p["name"] == "crashpool")
        .expect("pool");
    assert_eq!(pool["used"]["cpu_millis"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_safety_sqlite() {
    crash_and_recover(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_safety_postgres() {
    crash_and_recover(StoreKind::postgres("crash").await).await;
}

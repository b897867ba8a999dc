//! Governance with real processes: static agents that come and go, and the
//! reason a queued run gives for each kind of limit.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, millis, processes_end};

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_static_agent_is_lost_and_its_step_retried_on_the_other() {
    let mut server = Server::start_with(
        "static-loss",
        StoreKind::Sqlite,
        &["--heartbeat-timeout", "4"],
    )
    .await;
    let mut agents = server.static_pool_of_two("metal").await;

    // Prints where it runs, then works long enough to be caught mid-step.
    let run = server
        .submit(
            "kind: Pipeline\nname: job\ntenant: t\nsteps:\n  - {name: work, run: 'pwd; sleep 4; echo finished', pool: metal, retries: 1, resources: {cpu: 2, memory: 1Gi}}\n",
        )
        .await;
    let id = run["id"].as_i64().expect("id");
    let victim = server.agent_running(id, &agents).await;
    let killed_at = chrono::Utc::now().timestamp_millis();
    agents[victim].kill9();

    let done = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let attempts = done["steps"][0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{done:#}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[0]["error"], "worker lost");
    assert_eq!(attempts[1]["state"], "succeeded");
    assert_ne!(attempts[0]["worker_id"], attempts[1]["worker_id"]);
    // The lost agent's allocation was released; the retry had its own.
    let allocations = done["allocations"].as_array().expect("allocations");
    assert_eq!(allocations.len(), 2, "{done:#}");
    assert_eq!(allocations[0]["worker_id"], attempts[0]["worker_id"]);
    assert!(allocations[0]["closed_at"].is_string());
    assert_eq!(allocations[1]["worker_id"], attempts[1]["worker_id"]);
    // The acceptance bound, from the server's own timestamps: from the kill to
    // the run's end (a 4 s heartbeat timeout, then a 4 s step) within 15 s.
    let took = millis(&done["finished_at"]) - killed_at;
    assert!(took < 15_000, "recovered in {took} ms");
    let pool: Value = server.get("/api/v1/pools/metal").await;
    assert_eq!(pool["agents"], 1, "the lost agent's capacity left the pool");
    assert_eq!(pool["capacity"]["cpu_millis"], 2000);
    assert_eq!(pool["used"]["cpu_millis"], 0);
}

/// Submits a pipeline of one step and returns the run id.
async fn submit(server: &Server, name: &str, tenant: &str, steps: &str) -> i64 {
    let yaml = format!("kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n{steps}");
    server.submit(&yaml).await["id"].as_i64().expect("id")
}

fn step(name: &str, pool: &str, cpu: &str, run: &str) -> String {
    format!(
        "  - {{name: {name}, run: '{run}', pool: {pool}, resources: {{cpu: {cpu}, memory: 256Mi}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_limit_is_named_in_the_reason_with_its_numbers() {
    let server = Server::start("reasons", StoreKind::Sqlite).await;
    server
        .apply(
            r#"
kind: Pool
name: shared
capacity: {cpu: 8, memory: 8Gi}
---
kind: Pool
name: full
capacity: {cpu: 1, memory: 8Gi}
---
kind: Pool
name: single
capacity: {cpu: 8, memory: 8Gi}
max_workers: 1
---
kind: Pool
name: closing
capacity: {cpu: 8, memory: 8Gi}
state: draining
---
kind: Pool
name: zone-a
capacity: {cpu: 1, memory: 8Gi}
labels: {zone: z}
---
kind: Pool
name: zone-b
capacity: {cpu: 8, memory: 8Gi}
labels: {zone: z}
---
kind: Tenant
name: capped
quota: {cpu: 1}
---
kind: Tenant
name: limited
pool_limits: {shared: {cpu: 1}}
---
kind: Tenant
name: fenced
allowed_pools: [zone-a, full, shared]
---
kind: Tenant
name: open
"#,
        )
        .await;
    // Holders keep their room until cancelled at the end.
    let hold = "echo held; exec sleep 97";
    let mut holders = Vec::new();

    // Tenant quota, summed across pools.
    let first = submit(&server, "q1", "capped", &step("s", "shared", "1", hold)).await;
    server.admitted(first).await;
    holders.push(first);
    let waiting = submit(&server, "q2", "capped", &step("s", "shared", "1", "true")).await;
    let r = server.waits_with(waiting, "tenant_quota").await;
    assert_eq!(r["message"], "tenant capped: cpu 1/1 in use, run needs 1");
    assert_eq!(r["limits"][0]["scope"], "tenant capped");
    assert_eq!(r["limits"][0]["in_use"], 1000);
    assert_eq!(r["limits"][0]["limit"], 1000);
    assert_eq!(r["limits"][0]["needs"], 1000);

    // The tenant's limit in one pool.
    let first = submit(&server, "l1", "limited", &step("s", "shared", "1", hold)).await;
    server.admitted(first).await;
    holders.push(first);
    let waiting = submit(&server, "l2", "limited", &step("s", "shared", "1", "true")).await;
    let r = server.waits_with(waiting, "pool_limit").await;
    assert_eq!(
        r["message"],
        "tenant limited in pool shared: cpu 1/1 in use, run needs 1"
    );

    // A full pool.
    let first = submit(&server, "f1", "open", &step("s", "full", "1", hold)).await;
    server.admitted(first).await;
    holders.push(first);
    let waiting = submit(&server, "f2", "open", &step("s", "full", "1", "true")).await;
    let r = server.waits_with(waiting, "pool_full").await;
    assert_eq!(r["message"], "pool full: cpu 1/1 in use, run needs 1");
    assert_eq!(r["limits"][0]["scope"], "pool full");

    // max_workers.
    let first = submit(&server, "w1", "open", &step("s", "single", "1", hold)).await;
    server.admitted(first).await;
    holders.push(first);
    let waiting = submit(&server, "w2", "open", &step("s", "single", "1", "true")).await;
    let r = server.waits_with(waiting, "pool_max_workers").await;
    assert_eq!(r["message"], "pool single: workers 1/1 in use, run needs 1");

    // A draining pool.
    let waiting = submit(&server, "d", "open", &step("s", "closing", "1", "true")).await;
    let r = server.waits_with(waiting, "pool_draining").await;
    assert_eq!(
        r["message"],
        "pool closing is draining: it admits nothing new"
    );

    // Selected by labels: one pool is full, the other not allowed.
    let first = submit(&server, "z1", "open", &step("s", "zone-a", "1", hold)).await;
    server.admitted(first).await;
    holders.push(first);
    let labelled = "{labels: {zone: z}}";
    let waiting = submit(&server, "z2", "fenced", &step("s", labelled, "1", "true")).await;
    let r = server.waits_with(waiting, "pool_full").await;
    let message = r["message"].as_str().expect("message");
    assert!(
        message.contains("pool zone-a: cpu 1/1 in use, run needs 1"),
        "{message}"
    );
    assert!(
        message.contains("pool zone-b: tenant fenced is not allowed to use it (allowed pools: zone-a, full, shared)"),
        "{message}"
    );

    // A gang whose partner group's pool is full: nothing is held meanwhile.
    let gang = format!(
        "{}{}",
        step("a", "shared", "1", "true"),
        step("b", "full", "1", "true")
    );
    let waiting = submit(&server, "g", "open", &gang).await;
    let r = server.waits_with(waiting, "gang_partner_full").await;
    let message = r["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "gang partner group 1 (pool full) has no room: pool full: cpu 1/1 in use, run needs 1"
        ),
        "{message}"
    );
    let run = server.run(waiting).await;
    assert!(
        run["allocations"].as_array().expect("list").is_empty(),
        "{run:#}"
    );

    // The queue lists them all, in admission order, with positions.
    let queue: Vec<Value> = server.get("/api/v1/queue").await;
    assert_eq!(queue.len(), 7, "{queue:#?}");
    for (i, entry) in queue.iter().enumerate() {
        assert_eq!(entry["queue"]["position"], i + 1);
        assert!(entry["reason"]["code"].is_string(), "{entry:#}");
    }
    let open: Vec<&Value> = queue.iter().filter(|e| e["tenant"] == "open").collect();
    for (i, entry) in open.iter().enumerate() {
        assert_eq!(entry["queue"]["tenant_position"], i + 1);
    }
    let described = server.run(waiting).await;
    let text = described["explanation"].as_str().expect("explanation");
    assert!(
        text.contains("admitted together or not at all") && text.contains("in the queue"),
        "{text}"
    );
    for &id in &holders {
        server
            .wait_for_output(id, "held", Duration::from_secs(20))
            .await;
    }
    let running = server.running_steps(holders.len()).await;
    for &id in &holders {
        let (status, run) = server
            .send("POST", &format!("/api/v1/runs/{id}/cancel"), "")
            .await;
        assert_eq!(status, 200, "{run}");
    }
    processes_end(&running).await;
    server.no_step_processes().await;
}

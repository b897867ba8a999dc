//! The kill campaign: `kill -9` of the server at seeded random moments during
//! a workload of 100 runs over two tenants with quotas. Steps have no retries,
//! so a restart that failed a step would fail its run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, check_history, eventually};

const CLUSTER: &str = r#"
kind: Pool
name: campaign
capacity: {cpu: 4, memory: 8Gi}
max_workers: 8
---
kind: Tenant
name: alpha
quota: {cpu: 2}
allowed_pools: [campaign]
---
kind: Tenant
name: beta
quota: {cpu: 2}
allowed_pools: [campaign]
"#;

const RUNS: usize = 100;
const KILLS: usize = 10;

fn pipeline(i: usize) -> String {
    let tenant = if i.is_multiple_of(2) { "alpha" } else { "beta" };
    format!(
        r#"
kind: Pipeline
name: campaign-{i}
tenant: {tenant}
steps:
  - name: work
    run: "echo start {i}; sleep 0.{pause}; echo end {i}"
    retries: 0
    resources: {{cpu: 500m, memory: 256Mi}}
"#,
        pause = 2 + i % 7
    )
}

/// A small deterministic generator (xorshift), so that a failure replays.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn count_ended(server: &Server) -> usize {
    let runs: Vec<Value> = server.get("/api/v1/runs?limit=1000").await;
    runs.iter()
        .filter(|r| r["state"].as_str().is_some_and(ended))
        .count()
}

fn ended(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "rejected")
}

/// What must hold after every restart: every acknowledged run is there and
/// none failed; an ended run holds no open allocation and one closed per
/// group; no quota or capacity was exceeded at any instant.
async fn check_invariants(server: &Server, submitted: &BTreeSet<i64>, when: &str) {
    let runs: Vec<Value> = server.get("/api/v1/runs?limit=1000").await;
    let states: BTreeMap<i64, String> = runs
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().expect("id"),
                r["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    for id in submitted {
        let state = states
            .get(id)
            .unwrap_or_else(|| panic!("{when}: run {id} was lost"));
        assert!(
            state != "failed" && state != "rejected",
            "{when}: run {id} is {state}; log:\n{}",
            server.log()
        );
    }
    let history: Vec<Value> = server.get("/api/v1/allocations?limit=10000").await;
    let mut per_run: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
    for a in &history {
        per_run
            .entry(a["run_id"].as_i64().expect("run"))
            .or_default()
            .push(a);
    }
    for (id, state) in &states {
        if !ended(state) {
            continue;
        }
        let held = per_run.get(id).map(Vec::as_slice).unwrap_or_default();
        assert!(
            held.iter().all(|a| !a["closed_at"].is_null()),
            "{when}: ended run {id} holds an open allocation: {held:#?}"
        );
        if state == "succeeded" {
            assert_eq!(
                held.len(),
                1,
                "{when}: run {id} (one group) has exactly one allocation: {held:#?}"
            );
        }
    }
    for tenant in ["alpha", "beta"] {
        check_history(&history, tenant, 2000, &[("campaign", 4000)]);
    }
}

async fn campaign(store: StoreKind, seed: u64) {
    let mut server = Server::start("campaign", store).await;
    server.apply(CLUSTER).await;
    let mut rng = Seeded(seed);
    let mut submitted = BTreeSet::new();
    let mut next = 0;
    for kill in 0..KILLS {
        // A wave of submissions, then the kill at a random moment after it.
        let wave = RUNS / KILLS;
        for _ in 0..wave {
            let run = server.submit(&pipeline(next)).await;
            submitted.insert(run["id"].as_i64().expect("id"));
            next += 1;
        }
        // The moment: once a random number of further runs have ended (none:
        // right after the submissions).
        let ended_before = count_ended(&server).await;
        let more = rng.below(8) as usize;
        eventually(
            &format!("{more} more runs to end"),
            Duration::from_secs(120),
            || async { (count_ended(&server).await >= ended_before + more).then_some(()) },
        )
        .await;
        server.restart().await;
        check_invariants(
            &server,
            &submitted,
            &format!("after kill {kill} ({more} runs after a wave)"),
        )
        .await;
    }
    for id in &submitted {
        let run = server.wait_run_ended(*id, Duration::from_secs(180)).await;
        assert_eq!(
            run["state"],
            "succeeded",
            "run {id}: {run:#}; log:\n{}",
            server.log()
        );
        let attempts = run["steps"][0]["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "run {id} ran once: {run:#}");
    }
    check_invariants(&server, &submitted, "at the end").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_campaign_sqlite() {
    campaign(StoreKind::Sqlite, 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_campaign_postgres() {
    campaign(StoreKind::postgres("campaign").await, 0x5eed_0002).await;
}

//! Admission: quotas under concurrency, waiting with a reason, rejection.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, check_history};

#[tokio::test(flavor = "multi_thread")]
async fn quota_holds_under_concurrency() {
    let server = Server::start("quota", StoreKind::Sqlite).await;
    server
        .apply(
            r#"
kind: Pool
name: burst
capacity: {cpu: 8, memory: 16Gi}
max_workers: 16
---
kind: Tenant
name: acme
quota: {cpu: 4}
allowed_pools: [burst]
"#,
        )
        .await;
    let pipeline = |i: usize| {
        format!(
            "kind: Pipeline\nname: q{i}\ntenant: acme\nsteps:\n  - {{name: s, run: 'sleep 0.3', resources: {{cpu: 1, memory: 256Mi}}}}\n"
        )
    };
    let submissions = (0..50).map(|i| {
        let body = pipeline(i);
        let server = &server;
        async move { server.submit(&body).await["id"].as_i64().expect("id") }
    });
    let ids: Vec<i64> = futures::future::join_all(submissions).await;
    assert_eq!(ids.len(), 50);
    for id in &ids {
        let run = server.wait_run_ended(*id, Duration::from_secs(120)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
    }
    let history: Vec<Value> = server.get("/api/v1/allocations?tenant=acme").await;
    assert_eq!(history.len(), 50);
    let peak = check_history(&history, "acme", 4000, &[("burst", 8000)]);
    assert_eq!(peak, 4000, "the quota, not something else, was the limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn waits_with_a_reason_and_rejects_what_never_fits() {
    let server = Server::start("admission", StoreKind::Sqlite).await;
    server
        .apply(
            r#"
kind: Pool
name: small
capacity: {cpu: 2, memory: 4Gi}
---
kind: Tenant
name: team
allowed_pools: [small]
"#,
        )
        .await;
    let job = |name: &str, cpu: &str, run: &str| {
        format!(
            "kind: Pipeline\nname: {name}\ntenant: team\nsteps:\n  - {{name: s, run: '{run}', resources: {{cpu: {cpu}, memory: 1Gi}}}}\n"
        )
    };

    // Larger than every pool: rejected at submit, with the reason.
    let huge = server.submit(&job("huge", "5", "true")).await;
    assert_eq!(huge["state"], "rejected");
    assert_eq!(huge["reason"]["code"], "larger_than_pools");
    let message = huge["reason"]["message"].as_str().expect("message");
    assert!(
        message.contains("cpu 5") && message.contains("small"),
        "{message}"
    );
    assert!(huge["allocations"].as_array().expect("list").is_empty());

    // Fills the pool.
    let first = server.submit(&job("first", "2", "sleep 2")).await["id"]
        .as_i64()
        .expect("id");
    // Must wait, and says why with the numbers.
    let second = server.submit(&job("second", "2", "true")).await["id"]
        .as_i64()
        .expect("id");
    let reason = crate::harness::eventually(
        "a reason for the waiting run",
        Duration::from_secs(10),
        || async {
            let run = server.run(second).await;
            (run["state"] == "queued" && run["reason"].is_object()).then(|| run["reason"].clone())
        },
    )
    .await;
    assert_eq!(reason["code"], "pool_full");
    assert_eq!(reason["message"], "pool small: cpu 2/2 in use, run needs 2");

    // Deleting the pool is refused while its allocation is open.
    let (status, body) = server.send("DELETE", "/api/v1/pools/small", "").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    // Admitted when room frees.
    for id in [first, second] {
        let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
    }
    let history: Vec<Value> = server.get("/api/v1/allocations?pool=small").await;
    check_history(&history, "team", u64::MAX, &[("small", 2000)]);
    let second_alloc = history
        .iter()
        .find(|a| a["run_id"] == second)
        .expect("granted");
    let first_alloc = history
        .iter()
        .find(|a| a["run_id"] == first)
        .expect("granted");
    assert!(
        second_alloc["opened_at"].as_str() >= first_alloc["closed_at"].as_str(),
        "the second run waited for the first: {history:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_quota_reason_names_the_numbers() {
    let server = Server::start("tenantquota", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: mid\ncapacity: {cpu: 4, memory: 4Gi}\n---\nkind: Tenant\nname: acme\nquota: {cpu: 3, runs: 5}\nallowed_pools: [mid]\n")
        .await;
    let job = |cpu: &str, run: &str| {
        format!(
            "kind: Pipeline\nname: j\ntenant: acme\nsteps:\n  - {{name: s, run: '{run}', resources: {{cpu: {cpu}, memory: 64Mi}}}}\n"
        )
    };
    let big = server.submit(&job("4", "true")).await;
    assert_eq!(big["state"], "rejected");
    assert_eq!(big["reason"]["code"], "larger_than_quota");
    let first = server.submit(&job("1500m", "sleep 2")).await["id"]
        .as_i64()
        .expect("id");
    crate::harness::eventually(
        "the first run to start",
        Duration::from_secs(10),
        || async { (server.run(first).await["state"] == "running").then_some(()) },
    )
    .await;
    let second = server.submit(&job("2", "true")).await["id"]
        .as_i64()
        .expect("id");
    let reason = crate::harness::eventually("a reason", Duration::from_secs(10), || async {
        let run = server.run(second).await;
        run["reason"].is_object().then(|| run["reason"].clone())
    })
    .await;
    assert_eq!(reason["code"], "tenant_quota");
    assert_eq!(
        reason["message"],
        "tenant acme: cpu 1500m/3 in use, run needs 2"
    );
    let run = server.wait_run_ended(second, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_run_that_can_no_longer_fit_is_rejected() {
    let server = Server::start("shrink", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: shrinking\ncapacity: {cpu: 2, memory: 2Gi}\n---\nkind: Tenant\nname: s\nallowed_pools: [shrinking]\n")
        .await;
    let job = |run: &str| {
        format!(
            "kind: Pipeline\nname: j\ntenant: s\nsteps:\n  - {{name: a, run: '{run}', resources: {{cpu: 2, memory: 1Gi}}}}\n  - {{name: b, run: 'true', needs: [a]}}\n"
        )
    };
    let first = server.submit(&job("sleep 2")).await["id"]
        .as_i64()
        .expect("id");
    let waiting = server.submit(&job("true")).await["id"]
        .as_i64()
        .expect("id");
    let (status, body) = server
        .send(
            "PUT",
            "/api/v1/pools/shrinking",
            "name: shrinking\ncapacity: {cpu: 1, memory: 2Gi}\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = server
        .wait_run_ended(waiting, Duration::from_secs(20))
        .await;
    assert_eq!(run["state"], "rejected", "{run:#}");
    assert_eq!(run["reason"]["code"], "larger_than_pools");
    for step in run["steps"].as_array().expect("steps") {
        assert_eq!(step["state"], "cancelled", "{run:#}");
    }
    assert!(run["allocations"].as_array().expect("list").is_empty());
    // The running one keeps its place: shrinking never kills running work.
    let run = server.wait_run_ended(first, Duration::from_secs(20)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
}

//! The governance time series on real processes: sampled while runs hold
//! allocations and wait, kept across a `kill -9` of the server with no
//! duplicate and no gap beyond the time it was down, and scoped by tenant (a
//! tenant token asking for another tenant's or pool's series gets a 403; its
//! unfiltered reads leave them out); admission waits counted once.

use std::time::Duration;

use corral_core::history::waits;
use serde_json::Value;

use crate::harness::{Server, StoreKind, eventually, millis};

const INTERVAL_MS: i64 = 200;

const CLUSTER: &str = r#"
kind: Pool
name: histpool
capacity: {cpu: 4, memory: 4Gi}
max_workers: 4
---
kind: Tenant
name: blue
quota: {cpu: 2}
allowed_pools: [histpool]
---
kind: Tenant
name: green
"#;

/// Submits a run of blue with one step on histpool and returns it.
async fn submit(server: &Server, name: &str, cpu: &str, run: &str) -> Value {
    server
        .submit(&format!(
            "kind: Pipeline\nname: {name}\ntenant: blue\nsteps:\n  - {{name: s, run: '{run}', pool: histpool, resources: {{cpu: {cpu}, memory: 512Mi}}}}\n"
        ))
        .await
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `GET /api/v1/history?{query}` with `token`.
async fn history(server: &Server, token: &str, query: &str) -> (u16, Value) {
    server
        .send_as(token, "GET", &format!("/api/v1/history?{query}"), "", None)
        .await
}

/// The points (time, value) of one series of one subject in an answer.
fn points(answer: &Value, series: &str, subject: &str) -> Vec<(i64, f64)> {
    answer["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter(|e| e["series"] == series && e["subject"] == subject)
        .flat_map(|e| e["points"].as_array().expect("points").iter())
        .map(|p| (millis(&p["at"]), p["value"].as_f64().expect("value")))
        .collect()
}

/// The subjects of an answer's entries.
fn subjects(answer: &Value) -> Vec<String> {
    let mut names: Vec<String> = answer["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|e| e["subject"].as_str().expect("subject").to_string())
        .collect();
    names.dedup();
    names
}

/// Reads blue's and histpool's series since `from` until one point is later
/// than `after`, and returns that answer.
async fn sampled_after(server: &Server, from: i64, after: i64) -> Value {
    let query = format!(
        "series=pool.utilization.cpu,pool.saturation.cpu,pool.held.cpu,tenant.holdings.cpu,tenant.queued_runs,tenant.admission_wait_seconds&from={}&step=raw",
        rfc3339(from)
    );
    eventually(
        &format!("a sample after {}", rfc3339(after)),
        Duration::from_secs(20),
        || async {
            let (status, answer) = history(server, &server.admin_token, &query).await;
            assert_eq!(status, 200, "{answer}");
            points(&answer, "pool.utilization.cpu", "histpool")
                .iter()
                .any(|(at, _)| *at > after)
                .then_some(answer)
        },
    )
    .await
}

/// Checks the samples taken after `since` against what the API shows now: a
/// sample was taken after its time and stored before it was read, and the
/// allocation and the queued run are still there, so they were when it was.
async fn check_against_the_api(server: &Server, answer: &Value, since: i64, waiter: &Value) {
    let pool: Value = server.get("/api/v1/pools/histpool").await;
    let used = pool["used"]["cpu_millis"].as_f64().expect("used");
    let capacity = pool["capacity"]["cpu_millis"].as_f64().expect("capacity");
    assert_eq!((used, capacity), (2000.0, 4000.0), "{pool:#}");
    let waiting = server.run(waiter["id"].as_i64().expect("id")).await;
    assert_eq!(waiting["state"], "queued", "{waiting:#}");
    let queued_at = millis(&waiter["created_at"]);
    let after = |series: &str, subject: &str| -> Vec<(i64, f64)> {
        points(answer, series, subject)
            .into_iter()
            .filter(|(at, _)| *at > since)
            .collect()
    };
    let utilization = after("pool.utilization.cpu", "histpool");
    assert!(!utilization.is_empty(), "{answer:#}");
    for (at, value) in utilization {
        assert_eq!(value, used / capacity, "utilization at {}", rfc3339(at));
    }
    // The waiting run's 1 cpu could use the pool, but blue's quota holds it:
    // more capacity would admit nothing, so the pool is no more saturated
    // than it is used, and the run's cpu is held demand (1 / 4).
    assert_eq!(waiting["reason"]["code"], "tenant_quota", "{waiting:#}");
    let saturation = after("pool.saturation.cpu", "histpool");
    let held = after("pool.held.cpu", "histpool");
    assert!(!saturation.is_empty() && !held.is_empty(), "{answer:#}");
    for (at, value) in saturation {
        assert_eq!(value, used / capacity, "saturation at {}", rfc3339(at));
    }
    for (at, value) in held {
        assert_eq!(value, 0.25, "held demand at {}", rfc3339(at));
    }
    for (at, value) in after("tenant.holdings.cpu", "blue") {
        assert_eq!(value, used, "blue's holdings at {}", rfc3339(at));
    }
    for (at, value) in after("tenant.queued_runs", "blue") {
        assert_eq!(value, 1.0, "blue's queued runs at {}", rfc3339(at));
    }
    for (at, value) in after("tenant.admission_wait_seconds", "blue") {
        let waited = (at - queued_at) as f64 / 1000.0;
        assert!(
            (value - waited).abs() < 1e-9,
            "wait {value} at {}",
            rfc3339(at)
        );
    }
    for (at, value) in after("tenant.holdings.cpu", "green") {
        assert_eq!(value, 0.0, "green's holdings at {}", rfc3339(at));
    }
}

/// The admission waits since `from`: blue's one admitted run (the holder,
/// after `holder_wait_ms`), counted once across the crash, its percentiles in
/// the histogram bucket of that wait; scoped like the series.
async fn check_waits(server: &Server, blue_token: &str, from: i64, holder_wait_ms: i64) {
    let path = format!("/api/v1/history/waits?from={}", rfc3339(from));
    let (status, answer) = server
        .send_as(&server.admin_token, "GET", &path, "", None)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["step"], "1h", "{answer:#}");
    let tenants = answer["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), 1, "only blue had a run admitted: {answer:#}");
    let blue = &tenants[0];
    assert_eq!(
        (&blue["tenant"], &blue["runs"]),
        (&"blue".into(), &1.into())
    );
    let k = waits::bucket_of(holder_wait_ms);
    for p in ["p50_seconds", "p99_seconds"] {
        let seconds = blue[p].as_f64().expect("a percentile");
        assert!(
            waits::lower_ms(k) <= seconds * 1000.0 && seconds * 1000.0 <= waits::upper_ms(k),
            "{p} {seconds} for a wait of {holder_wait_ms} ms"
        );
    }
    let (status, own) = server.send_as(blue_token, "GET", &path, "", None).await;
    assert_eq!(
        (status, &own["tenants"]),
        (200, &answer["tenants"]),
        "{own}"
    );
    let (status, other) = server
        .send_as(blue_token, "GET", &format!("{path}&tenant=green"), "", None)
        .await;
    assert_eq!(status, 403, "{other}");
    for (query, field) in [
        ("step=raw", "step"),
        ("step=90m", "step"),
        ("to=soon", "to"),
    ] {
        let (status, answer) = server
            .send_as(
                &server.admin_token,
                "GET",
                &format!("/api/v1/history/waits?{query}"),
                "",
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(
            answer["error"]["details"]["path"], field,
            "{query}: {answer}"
        );
    }
}

async fn sampled_across_a_crash(store: StoreKind) {
    let mut server = Server::start_with(
        "history",
        store,
        &["--sample-interval", &format!("{INTERVAL_MS}ms")],
    )
    .await;
    let started = now_ms() - 5_000;
    server.apply(CLUSTER).await;
    // The holder keeps 2 cpu of the pool's 4 for longer than the test lasts;
    // the waiter waits for blue's quota.
    let holder = submit(&server, "holder", "2", "sleep 120").await;
    let holder_id = holder["id"].as_i64().expect("id");
    let opened_at = eventually(
        "the holder's allocation",
        Duration::from_secs(20),
        || async {
            let allocations: Vec<Value> = server
                .get(&format!("/api/v1/allocations?run={holder_id}"))
                .await;
            allocations
                .iter()
                .find(|a| a["closed_at"].is_null())
                .map(|a| millis(&a["opened_at"]))
        },
    )
    .await;
    let waiter = submit(&server, "waiter", "1", "true").await;
    let waiter_id = waiter["id"].as_i64().expect("id");
    // Once the controller has said why it waits (the samples split demand by
    // reason).
    server.waits_with(waiter_id, "tenant_quota").await;
    let since = opened_at.max(now_ms());
    // A second of samples (five) after both were in place.
    let answer = sampled_after(&server, started, since + 1_000).await;
    check_against_the_api(&server, &answer, since, &waiter).await;

    // Tenant scoping: blue's token reads blue and the pools blue may use.
    let blue = server
        .create_token("blue-reader", "tenant", Some(("tenant", "blue")))
        .await;
    let (status, own) = history(
        &server,
        &blue,
        "series=tenant.holdings.cpu,pool.utilization.cpu",
    )
    .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(subjects(&own), vec!["histpool", "blue"], "{own:#}");
    for query in [
        "series=tenant.queued_runs&tenant=green",
        "series=pool.utilization.cpu&pool=local",
    ] {
        let (status, answer) = history(&server, &blue, query).await;
        assert_eq!(status, 403, "{query}: {answer}");
    }
    let viewer = server.create_token("dashboard", "viewer", None).await;
    let (status, all) = history(
        &server,
        &viewer,
        "series=tenant.holdings.cpu,pool.utilization.cpu",
    )
    .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        subjects(&all),
        vec!["histpool", "local", "blue", "default", "green"],
        "{all:#}"
    );
    // A bad input names its field.
    for (query, field) in [
        ("series=pool.nothing", "series"),
        ("series=tenant.queued_runs&from=yesterday", "from"),
        ("series=tenant.queued_runs&step=90m&from=1d", "step"),
        ("series=tenant.queued_runs&pool=histpool", "pool"),
        ("series=tenant.queued_runs&limit=3", "limit"),
    ] {
        let (status, answer) = history(&server, &viewer, query).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(
            answer["error"]["details"]["path"], field,
            "{query}: {answer}"
        );
    }

    // kill -9, and a restart: sampling resumes at once.
    let killed = now_ms();
    server.restart().await;
    server.waits_with(waiter_id, "tenant_quota").await;
    let up = now_ms();
    let answer = sampled_after(&server, started, up + 1_000).await;
    // The allocation and the queue were restored: the samples say so too.
    check_against_the_api(&server, &answer, up, &waiter).await;

    check_waits(
        &server,
        &blue,
        started,
        opened_at - millis(&holder["created_at"]),
    )
    .await;

    // No duplicate and no gap: one interval apart while the server runs, and
    // across the crash no more than the time it was down, one interval, and
    // the one tick that may have been in flight when it was killed.
    let (status, every) = history(
        &server,
        &viewer,
        &format!("from={}&step=raw&series=pool.utilization.cpu,pool.saturation.cpu,tenant.holdings.cpu,tenant.queued_runs,tenant.admission_wait_seconds", rfc3339(started)),
    )
    .await;
    assert_eq!(status, 200, "{every}");
    let entries = every["series"].as_array().expect("series");
    assert!(entries.len() >= 2 * 2 + 3 * 3, "{every:#}");
    for entry in entries {
        let name = format!("{} of {}", entry["series"], entry["subject"]);
        let at: Vec<i64> = entry["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| millis(&p["at"]))
            .collect();
        let mut crossed = 0;
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap > 0, "{name}: two points at {}", rfc3339(pair[0]));
            if pair[0] < killed && pair[1] > killed {
                crossed += 1;
                let down = up - killed;
                assert!(
                    gap <= down + 2 * INTERVAL_MS,
                    "{name}: a gap of {gap} ms across a restart that took {down} ms"
                );
            } else {
                assert_eq!(gap, INTERVAL_MS, "{name}: at {}", rfc3339(pair[0]));
            }
        }
        // Series of objects made after the test started begin later; all
        // of them were sampled on both sides of the crash.
        assert_eq!(crossed, 1, "{name}: {at:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_is_sampled_kept_across_a_crash_and_scoped_sqlite() {
    sampled_across_a_crash(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_is_sampled_kept_across_a_crash_and_scoped_postgres() {
    sampled_across_a_crash(StoreKind::postgres("history").await).await;
}

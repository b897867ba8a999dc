//! Metering with real processes: usage that reconciles with the allocation
//! history and the price history, budgets that hold runs back, and estimates
//! that learn from a pipeline's history.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, eventually, millis};

/// A pool's price from a time on, as `/api/v1/prices` lists it.
struct Price {
    at: i64,
    cpu_hour: f64,
    memory_gib_hour: f64,
}

/// Each pool's price history, by time.
async fn price_history(server: &Server) -> BTreeMap<String, Vec<Price>> {
    let listed: Vec<Value> = server.get("/api/v1/prices").await;
    let mut prices: BTreeMap<String, Vec<Price>> = BTreeMap::new();
    for p in listed {
        prices
            .entry(p["pool"].as_str().expect("pool").to_string())
            .or_default()
            .push(Price {
                at: millis(&p["at"]),
                cpu_hour: p["cpu_hour"].as_f64().expect("price"),
                memory_gib_hour: p["memory_gib_hour"].as_f64().expect("price"),
            });
    }
    prices
}

/// What holding `cpu_millis` and `memory_mib` over `[from, to)` costs at the
/// pool's prices in force, computed here from the price history alone.
fn cost(prices: &[Price], cpu_millis: f64, memory_mib: f64, from: i64, to: i64) -> f64 {
    let mut total = 0.0;
    for (i, p) in prices.iter().enumerate() {
        let end = prices.get(i + 1).map_or(i64::MAX, |next| next.at);
        let (a, b) = (from.max(p.at), to.min(end));
        if b > a {
            let hours = (b - a) as f64 / 3_600_000.0;
            total += hours
                * (cpu_millis / 1000.0 * p.cpu_hour + memory_mib / 1024.0 * p.memory_gib_hour);
        }
    }
    total
}

async fn submit_all(server: &Server, runs: &[(String, String, String)]) {
    let mut ids = Vec::new();
    for (tenant, pipeline, pool) in runs {
        let yaml = format!(
            "kind: Pipeline\nname: {pipeline}\ntenant: {tenant}\nsteps:\n  - {{name: s, run: 'sleep 0.3', pool: {pool}, resources: {{cpu: 1, memory: 512Mi}}}}\n"
        );
        ids.push(server.submit(&yaml).await["id"].as_i64().expect("id"));
    }
    for id in ids {
        let run = server.wait_run_ended(id, Duration::from_secs(60)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
    }
}

fn workload(round: usize) -> Vec<(String, String, String)> {
    (0..6)
        .map(|i| {
            (
                format!("t{}", (i + round) % 3 + 1),
                format!("p{}", i % 2),
                ["alpha", "beta"][(i / 2 + round) % 2].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_by_every_key_reconciles_with_allocations_and_prices() {
    let server = Server::start("metering", StoreKind::Sqlite).await;
    let from = chrono::Utc::now() - chrono::Duration::minutes(1);
    let pools = |beta_cpu_hour: u32| {
        format!(
            "kind: Pool\nname: alpha\ncapacity: {{cpu: 4, memory: 4Gi}}\nprice: {{cpu_hour: 36, memory_gib_hour: 3.6}}\n---\nkind: Pool\nname: beta\ncapacity: {{cpu: 2, memory: 2Gi}}\nprice: {{cpu_hour: {beta_cpu_hour}, memory_gib_hour: 1}}\n"
        )
    };
    server
        .apply(&format!(
            "{}---\nkind: Tenant\nname: t1\n---\nkind: Tenant\nname: t2\n---\nkind: Tenant\nname: t3\n",
            pools(72)
        ))
        .await;
    submit_all(&server, &workload(0)).await;
    // A price change in the middle: beta's allocations after it cost more.
    server.apply(&pools(144)).await;
    submit_all(&server, &workload(1)).await;
    let to = chrono::Utc::now();
    let window = |by: &str| {
        format!(
            "/api/v1/usage?by={by}&from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
        .replace('+', "%2B")
    };

    // Every grouping adds up to one total, and its rows to it.
    let mut totals = Vec::new();
    for by in ["tenant", "pool", "pipeline", "day", "month", "tenant,day"] {
        let report: Value = server.get(&window(by)).await;
        let rows = report["rows"].as_array().expect("rows");
        let sum: i64 = rows
            .iter()
            .map(|r| r["usage"]["cost_micros"].as_i64().expect("cost"))
            .sum();
        let total = report["total"]["cost_micros"].as_i64().expect("total");
        assert_eq!(sum, total, "by {by}: {report:#}");
        totals.push(total);
        if by == "tenant" {
            let tenants: Vec<&str> = rows
                .iter()
                .map(|r| r["key"]["tenant"].as_str().expect("tenant"))
                .collect();
            assert_eq!(tenants, ["t1", "t2", "t3"]);
        }
    }
    assert!(totals.windows(2).all(|w| w[0] == w[1]), "{totals:?}");

    // The same total, computed here from the allocations and the price history.
    let prices = price_history(&server).await;
    assert_eq!(prices["beta"].len(), 2, "beta's price changed once");
    let allocations: Vec<Value> = server.get("/api/v1/allocations?limit=1000").await;
    assert_eq!(allocations.len(), 12);
    let mut by_pool: BTreeMap<String, f64> = BTreeMap::new();
    for a in &allocations {
        let pool = a["pool"].as_str().expect("pool");
        let closed = millis(&a["closed_at"]);
        let c = cost(
            &prices[pool],
            a["resources"]["cpu_millis"].as_f64().expect("cpu"),
            a["resources"]["memory_mib"].as_f64().expect("memory"),
            millis(&a["opened_at"]),
            closed,
        );
        *by_pool.entry(pool.to_string()).or_default() += c;
    }
    let independent: f64 = by_pool.values().sum();
    let reported = totals[0] as f64 / 1e6;
    assert!(
        (independent - reported).abs() < 0.005,
        "reported {reported}, computed {independent}"
    );
    assert!(reported > 0.0);

    // Per pool, allocated + idle = capacity x time x price, and capacity is
    // what the pool offered since it was made (its first price change).
    let report: Value = server.get(&window("pool")).await;
    let capacities = [("alpha", 4000.0, 4096.0), ("beta", 2000.0, 2048.0)];
    let mut checked = 0;
    for row in report["idle"].as_array().expect("idle") {
        let pool = row["pool"].as_str().expect("pool");
        let part = |k: &str| row[k]["cost_micros"].as_i64().expect("cost");
        assert_eq!(
            part("allocated") + part("idle"),
            part("capacity"),
            "{row:#}"
        );
        // The server's own local pool, unused here, is in the report too.
        let Some((_, cpu, memory)) = capacities.iter().find(|(name, _, _)| *name == pool) else {
            assert_eq!(part("allocated"), 0, "{row:#}");
            continue;
        };
        checked += 1;
        let made = prices[pool][0].at;
        let expected = cost(&prices[pool], *cpu, *memory, made, to.timestamp_millis());
        let capacity = part("capacity") as f64 / 1e6;
        assert!(
            (capacity - expected).abs() < 0.005,
            "{pool}: {capacity} vs {expected}"
        );
        assert!((part("allocated") as f64 / 1e6 - by_pool[pool]).abs() < 0.005);
    }
    assert_eq!(checked, 2, "{report:#}");

    // CSV carries the same rows.
    let (status, csv) = server.get_text_accepting(&window("pool"), "text/csv").await;
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "pool,cpu_core_seconds,memory_gib_seconds,gpu_seconds,cost,used_cpu_core_seconds,used_memory_gib_seconds,cpu_efficiency,memory_efficiency"
    );
    assert!(lines.iter().any(|l| l.starts_with("alpha,")), "{csv}");
    assert!(lines.iter().any(|l| l.starts_with("beta,")), "{csv}");

    // The CLI: the same report as a table and as CSV, and a tenant's summary
    // whose month-to-date spend is its usage this month.
    let table = corral(&server, &["usage", "--by", "pool", "--since", "1h"]);
    assert!(table.contains("POOL") && table.contains("TOTAL"), "{table}");
    assert!(table.contains("alpha") && table.contains("beta"), "{table}");
    let csv = corral(
        &server,
        &["usage", "--by", "tenant,day", "--since", "7d", "-o", "csv"],
    );
    assert!(
        csv.starts_with("tenant,day,cpu_core_seconds,memory_gib_seconds,gpu_seconds,cost,used_cpu_core_seconds,used_memory_gib_seconds,cpu_efficiency,memory_efficiency\n"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("t1,")).count(),
        1,
        "{csv}"
    );
    let summary: Value = serde_json::from_str(&corral(
        &server,
        &["describe", "tenant", "t1", "-o", "json"],
    ))
    .expect("a JSON summary");
    let month: Value = server.get("/api/v1/usage?by=tenant&tenant=t1").await;
    let spent = summary["spent"].as_f64().expect("spent");
    assert!(spent > 0.0, "{summary:#}");
    assert!(
        (spent - month["total"]["cost"].as_f64().expect("cost")).abs() < 0.005,
        "{summary:#} vs {month:#}"
    );
    assert_eq!(
        summary["usage_by_pool"].as_array().map(Vec::len),
        Some(2),
        "{summary:#}"
    );
    let described = corral(&server, &["describe", "tenant", "t1"]);
    assert!(
        described.contains("Spend:") && described.contains("no budget"),
        "{described}"
    );
}

/// Runs the CLI against the server as its admin; its standard output.
fn corral(server: &Server, args: &[&str]) -> String {
    let out = std::process::Command::new(crate::harness::BIN)
        .args(args)
        .env("CORRAL_SERVER", &server.url)
        .env("CORRAL_TOKEN", &server.admin_token)
        .output()
        .expect("corral runs");
    assert!(
        out.status.success(),
        "corral {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_budget_holds_the_run_that_would_pass_it_until_it_is_raised() {
    let server = Server::start("budget", StoreKind::Sqlite).await;
    // One cpu-second costs 1.00, and a step's timeout of 60 s makes its
    // estimate 60.00 (a pipeline without history) and its upper bound 65.00
    // (the timeout and 5 s of slack around the attempt).
    let tenants = |monthly: u32| {
        format!(
            "kind: Tenant\nname: lean\nbudget: {{monthly: {monthly}, enforce: hard}}\n---\nkind: Tenant\nname: rich\n"
        )
    };
    server
        .apply(&format!(
            "kind: Pool\nname: dear\ncapacity: {{cpu: 8, memory: 8Gi}}\nprice: {{cpu_hour: 3600}}\n---\n{}",
            tenants(100)
        ))
        .await;
    let job = |tenant: &str, name: &str| {
        format!(
            "kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n  - {{name: s, run: 'sleep 300', timeout: 60, pool: dear, resources: {{cpu: 1, memory: 64Mi}}}}\n"
        )
    };
    // The tenant shows its budget, defaults filled in.
    let lean: Value = server.get("/api/v1/tenants/lean").await;
    assert_eq!(
        lean["budget"],
        serde_json::json!({"monthly": 100.0, "enforce": "hard", "alert_at": [0.8, 1.0]}),
        "{lean:#}"
    );
    let rich: Value = server.get("/api/v1/tenants/rich").await;
    assert!(rich["budget"].is_null(), "{rich:#}");
    let first = server.submit(&job("lean", "first")).await;
    assert_eq!(first["estimated_cost"], 60.0, "{first:#}");
    let first = first["id"].as_i64().expect("id");
    server.admitted(first).await;
    // Spent so far + what the first may still cost + 65.00 is past 100.00.
    let second = server.submit(&job("lean", "second")).await["id"]
        .as_i64()
        .expect("id");
    let reason = server.waits_with(second, "tenant_budget").await;
    let message = reason["message"].as_str().expect("message");
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    assert!(
        message.starts_with(&format!("tenant lean: budget 100.00 for {month}, spent ")),
        "{message}"
    );
    assert!(message.ends_with("run may cost 65.00"), "{message}");
    // Another tenant's run is admitted meanwhile.
    let other = server.submit(&job("rich", "other")).await["id"]
        .as_i64()
        .expect("id");
    server.admitted(other).await;
    assert_eq!(server.run(second).await["state"], "queued");
    // Raising the budget admits it on the next cycle.
    server.apply(&tenants(1000)).await;
    server.admitted(second).await;
    for id in [first, second, other] {
        let (status, body) = server
            .send("POST", &format!("/api/v1/runs/{id}/cancel"), "")
            .await;
        assert_eq!(status, 200, "{body:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_estimate_follows_its_pipelines_history() {
    let server = Server::start("estimates", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: dear\ncapacity: {cpu: 4, memory: 4Gi}\nprice: {cpu_hour: 3600}\n---\nkind: Tenant\nname: t\n")
        .await;
    let yaml = "kind: Pipeline\nname: learn\ntenant: t\nsteps:\n  - {name: s, run: 'sleep 0.5', pool: dear, resources: {cpu: 2, memory: 64Mi}}\n";
    // Without history or timeouts: the server's default of 10 minutes.
    let mut durations = Vec::new();
    for i in 0..3 {
        let run = server.submit(yaml).await;
        if i == 0 {
            assert_eq!(run["estimated_cost"], 2.0 * 600.0, "{run:#}");
        }
        let id = run["id"].as_i64().expect("id");
        let done = server.wait_run_ended(id, Duration::from_secs(30)).await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        let opened = millis(&done["allocations"][0]["opened_at"]);
        durations.push(millis(&done["finished_at"]) - opened);
    }
    // With three runs behind it: the p90 of their durations (the longest of
    // three), at 2 cpu x 1.00 per cpu-second.
    let p90 = *durations.iter().max().expect("durations");
    let run = server.submit(yaml).await;
    let expected = 2.0 * p90 as f64 / 1000.0;
    let estimate = run["estimated_cost"].as_f64().expect("estimate");
    assert!(
        (estimate - expected).abs() < 0.005,
        "estimate {estimate}, expected {expected} from {durations:?}"
    );
    let id = run["id"].as_i64().expect("id");
    server.wait_run_ended(id, Duration::from_secs(30)).await;
}

/// A webhook receiver: answers 200 to every POST and keeps the bodies.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    kept.lock()
                        .expect("bodies")
                        .push(serde_json::from_str(body).expect("a JSON body"));
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (url, bodies)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_budget_crossing_80_percent_alerts_once_through_the_webhook() {
    let (url, received) = receiver().await;
    let server = Server::start_with("alerts", StoreKind::Sqlite, &["--alert-webhook", &url]).await;
    // One cpu-second costs 10.00: a step of 1.5 s passes 8.00, 80% of 10.00.
    server
        .apply("kind: Pool\nname: dear\ncapacity: {cpu: 2, memory: 2Gi}\nprice: {cpu_hour: 36000}\n---\nkind: Tenant\nname: soft\nbudget: {monthly: 10, enforce: soft, alert_at: [0.8]}\n")
        .await;
    let run = server
        .submit("kind: Pipeline\nname: spend\ntenant: soft\nsteps:\n  - {name: s, run: 'sleep 1.5', pool: dear, resources: {cpu: 1, memory: 64Mi}}\n")
        .await;
    let id = run["id"].as_i64().expect("id");
    // A soft budget holds nothing back.
    let done = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let alerts: Vec<Value> = eventually("the alert delivered", Duration::from_secs(20), || async {
        let alerts: Vec<Value> = server.get("/api/v1/alerts").await;
        alerts
            .iter()
            .all(|a| a["delivered_at"].is_string())
            .then_some(alerts)
            .filter(|a| !a.is_empty())
    })
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(
        (alert["tenant"].as_str(), alert["threshold"].as_f64()),
        (Some("soft"), Some(0.8))
    );
    assert_eq!(alert["attempts"], 1);
    let message = alert["message"].as_str().expect("message");
    assert!(message.starts_with("tenant soft: spend "), "{message}");
    let month = chrono::Utc::now().format("%Y-%m");
    assert!(
        message.ends_with(&format!("reached 80% of the budget 10.00 for {month}")),
        "{message}"
    );
    let bodies = received.lock().expect("bodies").clone();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert_eq!(bodies[0]["kind"], "budget_alert");
    assert_eq!(bodies[0]["tenant"], "soft");
    assert_eq!(bodies[0]["threshold"], 0.8);
    assert!(
        bodies[0]["spent"].as_f64().expect("spent") >= 8.0,
        "{:#}",
        bodies[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_and_spend_survive_a_kill_of_the_server_and_count_nothing_twice() {
    let mut server = Server::start("metering-kill", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: dear\ncapacity: {cpu: 4, memory: 4Gi}\nprice: {cpu_hour: 3600}\n---\nkind: Tenant\nname: t\nbudget: {monthly: 100000, enforce: hard}\n")
        .await;
    let step = |name: &str| {
        format!(
            "kind: Pipeline\nname: {name}\ntenant: t\nsteps:\n  - {{name: s, run: 'sleep 1', pool: dear, resources: {{cpu: 1, memory: 64Mi}}}}\n"
        )
    };
    let first = server.submit(&step("before")).await["id"]
        .as_i64()
        .expect("id");
    server.wait_run_ended(first, Duration::from_secs(30)).await;
    let second = server.submit(&step("across")).await["id"]
        .as_i64()
        .expect("id");
    server.admitted(second).await;
    // Killed while the second run holds its allocation; it ends after the restart.
    server.restart().await;
    let done = server.wait_run_ended(second, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");

    let prices = price_history(&server).await;
    let allocations: Vec<Value> = server.get("/api/v1/allocations?limit=100").await;
    assert!(
        allocations.iter().all(|a| a["closed_at"].is_string()),
        "{allocations:#?}"
    );
    let independent: f64 = allocations
        .iter()
        .map(|a| {
            cost(
                &prices["dear"],
                a["resources"]["cpu_millis"].as_f64().expect("cpu"),
                a["resources"]["memory_mib"].as_f64().expect("memory"),
                millis(&a["opened_at"]),
                millis(&a["closed_at"]),
            )
        })
        .sum();
    let report: Value = server.get("/api/v1/usage?by=pipeline").await;
    let reported = report["total"]["cost"].as_f64().expect("cost");
    assert!(
        (reported - independent).abs() < 0.005,
        "reported {reported}, computed {independent}: {report:#}"
    );
    assert_eq!(
        report["rows"].as_array().map(Vec::len),
        Some(2),
        "{report:#}"
    );
    // The spend the budget counts, rebuilt on start, is the same.
    let summary: Value = server.get("/api/v1/tenants/t/summary").await;
    let spent = summary["spent"].as_f64().expect("spent");
    assert!((spent - independent).abs() < 0.005, "{summary:#}");
    // The forecast goes on at the last days' burn rate, a tenant made seconds
    // ago counting as a day old: at most a month's worth of days more.
    let forecast = summary["forecast"].as_f64().expect("forecast");
    assert!(forecast >= spent && forecast <= spent * 32.0, "{summary:#}");
    // Restarting again changes nothing.
    server.restart().await;
    let again: Value = server.get("/api/v1/tenants/t/summary").await;
    assert_eq!(again["spent"], summary["spent"]);
    let prices_again = price_history(&server).await;
    assert_eq!(
        prices_again["dear"].len(),
        1,
        "a restart adds no price change"
    );
}

/// The `column`th cell of the line of `table` that starts with `first`.
fn cell(table: &str, first: &str, column: usize) -> String {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .and_then(|l| l.split_whitespace().nth(column))
        .unwrap_or_else(|| panic!("no {first} row with {column} cells in\n{table}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_cost_shared_back_sums_to_each_pools_idle_cost_in_json_csv_and_the_cli() {
    let server = Server::start("idle-share", StoreKind::Sqlite).await;
    let from = chrono::Utc::now() - chrono::Duration::seconds(30);
    server
        .apply("kind: Pool\nname: alpha\ncapacity: {cpu: 4, memory: 4Gi}\nprice: {cpu_hour: 36, memory_gib_hour: 3.6}\n---\nkind: Pool\nname: beta\ncapacity: {cpu: 2, memory: 2Gi}\nprice: {cpu_hour: 72, memory_gib_hour: 1}\n---\nkind: Pool\nname: unused\ncapacity: {cpu: 1, memory: 1Gi}\nprice: {cpu_hour: 1}\n---\nkind: Tenant\nname: t1\n---\nkind: Tenant\nname: t2\n---\nkind: Tenant\nname: t3\n")
        .await;
    submit_all(&server, &workload(0)).await;
    submit_all(&server, &workload(1)).await;
    let to = chrono::Utc::now();
    let (since, until) = (
        from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    let window = |by: &str| {
        format!("/api/v1/usage?by={by}&idle=share&from={since}&to={until}").replace('+', "%2B")
    };

    // JSON: each used pool's idle cost is shared whole; the rows' shares sum
    // to it, and each row's total is its cost and its share.
    let report: Value = server.get(&window("tenant")).await;
    assert_eq!(report["idle_mode"], "share");
    assert_eq!(report["currency"], "USD");
    let mut idle_of_used = 0;
    for row in report["idle"].as_array().expect("idle") {
        let idle = row["idle"]["cost_micros"].as_i64().expect("idle cost");
        let shared = row["shared_micros"].as_i64().expect("shared");
        if row["allocated"]["cost_micros"].as_i64() > Some(0) {
            assert_eq!(shared, idle, "{row:#}");
            assert!(idle > 0, "{row:#}");
            idle_of_used += idle;
        } else {
            assert_eq!(shared, 0, "nobody used it: {row:#}");
        }
    }
    let rows = report["rows"].as_array().expect("rows");
    let mut shares = 0;
    for row in rows {
        let share = row["idle_share_micros"].as_i64().expect("a share");
        let cost = row["usage"]["cost_micros"].as_i64().expect("cost");
        assert_eq!(
            row["total_with_idle_micros"].as_i64(),
            Some(cost + share),
            "{row:#}"
        );
        assert!(share > 0, "{row:#}");
        shares += share;
    }
    assert_eq!(shares, idle_of_used, "{report:#}");
    // By tenant and day, and by pool, the same idle cost is shared.
    for by in ["tenant,day", "pool"] {
        let other: Value = server.get(&window(by)).await;
        let sum: i64 = other["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["idle_share_micros"].as_i64().expect("share"))
            .sum();
        assert_eq!(sum, idle_of_used, "by {by}: {other:#}");
    }
    // Without idle=share, rows have no share.
    let separate: Value = server
        .get(&window("tenant").replace("idle=share", "idle=separate"))
        .await;
    assert_eq!(separate["idle_mode"], "separate");
    assert!(separate["rows"][0]["idle_share"].is_null(), "{separate:#}");

    // A tenant's own report shares against everyone's use: the same share.
    let t1 = server
        .create_token("t1", "tenant", Some(("tenant", "t1")))
        .await;
    let (status, own) = server
        .send_as(&t1, "GET", &window("tenant"), "", None)
        .await;
    assert_eq!(status, 200, "{own}");
    let t1_share = |r: &Value| {
        r["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|row| row["key"]["tenant"] == "t1")
            .map(|row| row["idle_share_micros"].clone())
    };
    assert_eq!(t1_share(&own), t1_share(&report), "{own:#}");
    assert_eq!(own["idle"].as_array().map(Vec::len), Some(0));

    // CSV: the same shares to the micro-unit.
    let (status, csv) = server
        .get_text_accepting(&window("tenant"), "text/csv")
        .await;
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    assert_eq!(
        header[header.len() - 2..],
        ["idle_share", "total_with_idle"]
    );
    let micros = |text: &str| -> i64 {
        let (units, fraction) = text.split_once('.').expect("a decimal");
        units.parse::<i64>().expect("units") * 1_000_000 + fraction.parse::<i64>().expect("micros")
    };
    let csv_shares: i64 = lines
        .map(|l| micros(l.split(',').nth(header.len() - 2).expect("idle_share")))
        .sum();
    assert_eq!(csv_shares, idle_of_used, "{csv}");

    // The CLI: the TOTAL row's idle share is the pools' idle cost, and each
    // pool's SHARED column says all of it was shared.
    let table = corral(
        &server,
        &[
            "usage", "--by", "tenant", "--idle", "share", "--since", &since, "--until", &until,
        ],
    );
    let money = |micros: i64| corral_core::money::Money::from_micros(micros).to_string();
    assert!(
        table.contains("IDLE SHARE") && table.contains("COST (USD)"),
        "{table}"
    );
    assert_eq!(cell(&table, "TOTAL", 5), money(idle_of_used), "{table}");
    for row in report["idle"].as_array().expect("idle") {
        let pool = row["pool"].as_str().expect("pool");
        let shared = row["shared_micros"].as_i64().expect("shared");
        assert_eq!(cell(&table, pool, 5), money(shared), "{table}");
    }
    let plain = corral(
        &server,
        &[
            "usage", "--by", "tenant", "--since", &since, "--until", &until,
        ],
    );
    assert!(
        plain.contains("Idle capacity") && !plain.contains("IDLE SHARE"),
        "{plain}"
    );

    // The tenant summary: its share of this month's idle cost, by pool too.
    let summary: Value = server.get("/api/v1/tenants/t1/summary").await;
    let share = summary["idle_share_micros"].as_i64().expect("idle share");
    assert!(share > 0, "{summary:#}");
    let by_pool: i64 = summary["usage_by_pool"]
        .as_array()
        .expect("by pool")
        .iter()
        .map(|r| r["idle_share_micros"].as_i64().expect("share"))
        .sum();
    assert_eq!(by_pool, share, "{summary:#}");
    let described = corral(&server, &["describe", "tenant", "t1"]);
    assert!(
        described.contains("Idle share:") && described.contains("USD"),
        "{described}"
    );
}

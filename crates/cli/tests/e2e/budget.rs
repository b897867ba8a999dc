//! Budgets that cannot be beaten and money that cannot overflow, against a real
//! server and its local agents: a hard budget admits on each run's upper bound
//! (its steps' timeouts, the server's `--max-step-duration` for a step without
//! one, at the dearest pool), so no history of cheap runs lets dear ones
//! through; prices are bounded at apply; and a month of the largest price at
//! the largest capacity reads back without an error, on SQLite and PostgreSQL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_core::clock::Timestamp;
use corral_core::ids::{AllocationId, RunId};
use corral_core::manifest::{Document, parse_documents};
use corral_core::metering::{PriceChange, Span, slot_pieces};
use corral_core::money::Money;
use corral_core::pool::MAX_PRICE;
use corral_core::request::ResourceRequest;
use corral_core::resources::{MAX_QUANTITY, Resources};
use corral_core::run::RunState;
use corral_store::{
    AllocationRecord, Metered, PoolRecord, RunRecord, SqlStore, Store, TenantRecord, Write,
};
use serde_json::Value;

use crate::harness::{Server, StoreKind, temp_dir};

/// The server's longest step: the timeout of a step that sets none.
const MAX_STEP: &str = "3s";
/// One cpu-second costs 1.00; an attempt of one cpu may cost at most its 3 s
/// timeout and 5 s of slack around it: 8.00.
const CLUSTER: &str = "kind: Pool\nname: dear\ncapacity: {cpu: 4, memory: 4Gi}\nprice: {cpu_hour: 3600}\n---\nkind: Tenant\nname: lean\nbudget: {monthly: 64, enforce: hard}\n";

/// A run of `command` under the one pipeline name the tenant trains.
fn gamed(command: &str, retries: u32) -> String {
    format!(
        "kind: Pipeline\nname: gamed\ntenant: lean\nsteps:\n  - {{name: s, run: '{command}', retries: {retries}, pool: dear, resources: {{cpu: 1, memory: 64Mi}}}}\n"
    )
}

/// What the server says the tenant spent this month (open allocations up to now).
async fn spent(server: &Server) -> f64 {
    let summary: Value = server.get("/api/v1/tenants/lean/summary").await;
    summary["spent"].as_f64().expect("spent")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_budget_cannot_be_trained_by_cheap_runs_and_a_run_past_it_is_refused() {
    let server = Server::start_with(
        "budget-gaming",
        StoreKind::Sqlite,
        &["--max-step-duration", MAX_STEP],
    )
    .await;
    server.apply(CLUSTER).await;
    let month = chrono::Utc::now().format("%Y-%m").to_string();

    // A run that may cost more than the whole budget: nine attempts of 8.00.
    let (status, body) = server.send("POST", "/api/v1/runs", &gamed("true", 8)).await;
    assert_eq!(status, 409, "{body:#}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("may cost up to 72.00")
            && message.contains("whole monthly budget of 64.00"),
        "{message}"
    );
    // Eight attempts, 64.00, fit the budget exactly.
    let eight = server.submit(&gamed("true", 7)).await["id"]
        .as_i64()
        .expect("id");
    server.wait_run_ended(eight, Duration::from_secs(30)).await;

    // Training: twenty cheap runs under the name.
    let mut cheap = Vec::new();
    for _ in 0..20 {
        cheap.push(
            server.submit(&gamed("true", 0)).await["id"]
                .as_i64()
                .expect("id"),
        );
    }
    for id in &cheap {
        let run = server.wait_run_ended(*id, Duration::from_secs(60)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
    }
    // Then dear ones under the same name; the step sets no timeout.
    let mut dear = Vec::new();
    for _ in 0..20 {
        dear.push(
            server.submit(&gamed("sleep 40", 0)).await["id"]
                .as_i64()
                .expect("id"),
        );
    }
    // Until every dear run has ended or waits for money, with nothing running
    // and no room left for another: the spend the server meters never passes
    // the budget.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (runs, settled) = loop {
        let now = spent(&server).await;
        assert!(now <= 64.0, "spent {now} of a budget of 64");
        let mut runs = BTreeMap::new();
        for id in &dear {
            runs.insert(*id, server.run(*id).await);
        }
        let quiet = runs.values().all(|r| {
            r["state"] == "failed"
                || (r["state"] == "queued" && r["reason"]["code"] == "tenant_budget")
        });
        // Once nothing runs, what is spent leaves no room for another bound.
        if quiet && now + 8.0 > 64.0 {
            break (runs, now);
        }
        assert!(
            Instant::now() < deadline,
            "the dear runs never settled: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ended: Vec<&Value> = runs.values().filter(|r| r["state"] == "failed").collect();
    let waiting: Vec<&Value> = runs.values().filter(|r| r["state"] == "queued").collect();
    assert!(!ended.is_empty() && !waiting.is_empty(), "{runs:#?}");
    // The step without a timeout was killed at the server's longest step.
    for run in &ended {
        let attempt = &run["steps"][0]["attempts"][0];
        assert_eq!(
            (attempt["state"].as_str(), attempt["error"].as_str()),
            (Some("timedout"), Some("timed out after 3s")),
            "{run:#}"
        );
    }
    let reason = waiting[0]["reason"]["message"].as_str().expect("message");
    assert!(
        reason.starts_with(&format!("tenant lean: budget 64.00 for {month}, spent "))
            && reason.ends_with("run may cost 8.00"),
        "{reason}"
    );
    let usage: Value = server.get("/api/v1/usage?by=tenant&tenant=lean").await;
    let cost = usage["total"]["cost"].as_f64().expect("cost");
    assert!(cost <= 64.0 && settled <= 64.0, "{settled} {usage:#}");
    for run in waiting {
        let id = run["id"].as_i64().expect("id");
        let (status, body) = server
            .send("POST", &format!("/api/v1/runs/{id}/cancel"), "")
            .await;
        assert_eq!(status, 200, "{body:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_price_past_the_largest_is_refused_naming_the_field_and_the_bound() {
    let server = Server::start("price-bound", StoreKind::Sqlite).await;
    let (status, body) = server
        .send(
            "POST",
            "/api/v1/apply",
            "kind: Pool\nname: gold\ncapacity: {cpu: 1, memory: 1Gi}\nprice: {cpu_hour: 1e300}\n",
        )
        .await;
    assert_eq!(status, 400, "{body:#}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("price.cpu_hour")
            && message.contains("1e300 is above the largest price, 1000000"),
        "{body:#}"
    );
    let pools: Value = server.get("/api/v1/pools").await;
    assert!(
        !pools.to_string().contains("gold"),
        "nothing was applied: {pools:#}"
    );
}

/// A month of the largest price at the largest capacity, written to the store
/// as the server would have: a pool, a tenant and a run that held the whole
/// pool from 31 days ago to a minute ago, metered.
async fn seed_a_month_of_full_use(store: &SqlStore) {
    let now = chrono::Utc::now().timestamp_millis();
    let opened = now - 31 * 86_400_000;
    let yaml = format!(
        "kind: Pool\nname: gold\ncapacity: {{cpu: '{MAX_QUANTITY}m', memory: '{MAX_QUANTITY}Mi', gpu: {MAX_QUANTITY}}}\nprice: {{cpu_hour: {MAX_PRICE}, memory_gib_hour: {MAX_PRICE}, gpu_hour: {MAX_PRICE}}}\n---\nkind: Tenant\nname: lavish\n---\nkind: Pipeline\nname: forever\ntenant: lavish\nsteps:\n  - {{name: s, run: 'true', pool: gold}}\n"
    );
    let mut docs = parse_documents(&yaml).expect("valid").into_iter();
    let (
        Some(Document::Pool(pool)),
        Some(Document::Tenant(tenant)),
        Some(Document::Pipeline(spec)),
    ) = (docs.next(), docs.next(), docs.next())
    else {
        panic!("a pool, a tenant and a pipeline")
    };
    pool.validate()
        .expect("the largest price and capacity are accepted");
    let whole = pool.capacity();
    assert_eq!(
        whole,
        Resources::new(MAX_QUANTITY, MAX_QUANTITY, MAX_QUANTITY)
    );
    let price = PriceChange {
        pool: "gold".into(),
        at_ms: opened - 1,
        price: pool.price,
    };
    let request = ResourceRequest::for_pipeline(&spec.clone().compile().expect("compiles"));
    let run = |id: i64, state: RunState, finished: Option<i64>| RunRecord {
        id: RunId(id),
        pipeline: "forever".into(),
        tenant: "lavish".into(),
        priority: 0,
        state,
        reason: None,
        spec: spec.clone(),
        request: request.clone(),
        estimate: Money::ZERO,
        created_at: Timestamp(opened),
        updated_at: Timestamp(opened),
        finished_at: finished.map(Timestamp),
    };
    let allocation = |id: i64, closed: Option<i64>| AllocationRecord {
        id: AllocationId(id),
        run_id: RunId(id),
        group: 0,
        tenant: "lavish".into(),
        pool: "gold".into(),
        resources: whole,
        worker_id: None,
        opened_at: Timestamp(opened),
        closed_at: closed.map(Timestamp),
    };
    let closed = now - 60_000;
    let span = Span {
        allocation: AllocationId(1),
        run: RunId(1),
        tenant: "lavish".into(),
        pool: "gold".into(),
        pipeline: "forever".into(),
        resources: whole,
        start_ms: opened,
        end_ms: Some(closed),
    };
    let pieces = slot_pieces(&span, std::slice::from_ref(&price));
    assert!(!pieces.is_empty());
    store
        .commit(&[
            Write::PutPool(PoolRecord {
                spec: pool,
                created_at: Timestamp(opened - 1),
                updated_at: Timestamp(opened - 1),
            }),
            Write::PutPrice(price),
            Write::PutTenant(TenantRecord {
                spec: tenant,
                created_at: Timestamp(opened - 1),
                updated_at: Timestamp(opened - 1),
            }),
            Write::PutRun(run(1, RunState::Succeeded, Some(closed))),
            Write::PutAllocation(allocation(1, Some(closed))),
            Write::Meter(Metered { span, pieces }),
        ])
        .await
        .expect("the month is written");
}

/// Reads what a month of the largest price costs, through the server: every
/// read answers, with amounts at the largest a sum holds.
async fn reads_back_a_month_of_full_use(server: &Server) {
    let most = Money::MAX.to_units_f64();
    for path in [
        "/api/v1/usage?by=tenant,pool,day&from=32d",
        "/api/v1/usage?by=month&from=32d",
        "/api/v1/usage?by=pipeline",
    ] {
        let (status, body) = server.send("GET", path, "").await;
        assert_eq!(status, 200, "{path}: {body:#}");
        assert_eq!(
            body["total"]["cost"].as_f64(),
            Some(most),
            "{path}: {body:#}"
        );
    }
    let (status, csv) = server
        .get_text_accepting("/api/v1/usage?by=day&from=32d", "text/csv")
        .await;
    assert_eq!(status, 200, "{csv}");
    let (status, summary) = server
        .send("GET", "/api/v1/tenants/lavish/summary", "")
        .await;
    assert_eq!(status, 200, "{summary:#}");
    assert_eq!(summary["spent"].as_f64(), Some(most), "{summary:#}");
    let (status, metrics) = server.get_text("/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("tenant=\"lavish\""),
        "the tenant's spend is exported: {metrics}"
    );
    // The console's page of the tenant, in a session of the admin.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = client
        .post(format!("{}/login", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.admin_token))
        .send()
        .await
        .expect("login");
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let page = client
        .get(format!("{}/tenants/lavish", server.url))
        .header("cookie", cookie)
        .send()
        .await
        .expect("tenant page");
    let status = page.status().as_u16();
    let text = page.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("lavish"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_of_the_largest_price_reads_back_on_sqlite() {
    let dir = temp_dir("money-month-sqlite");
    std::fs::create_dir_all(&dir).expect("data dir");
    {
        let store = SqlStore::open_sqlite(&dir).await.expect("store");
        seed_a_month_of_full_use(&store).await;
    }
    let server = Server::start_in(dir, &[]).await;
    reads_back_a_month_of_full_use(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_of_the_largest_price_reads_back_on_postgres() {
    let url = match StoreKind::postgres("money_month").await {
        StoreKind::Postgres(url) => url,
        StoreKind::Sqlite => unreachable!("a PostgreSQL database"),
    };
    {
        let store = SqlStore::connect(&url).await.expect("store");
        seed_a_month_of_full_use(&store).await;
    }
    let server = Server::start("money-month-pg", StoreKind::Postgres(url)).await;
    reads_back_a_month_of_full_use(&server).await;
}

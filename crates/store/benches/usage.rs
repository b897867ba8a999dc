//! Time of a usage report by tenant and day over many allocation records, on
//! SQLite and PostgreSQL. Run with `cargo bench -p corral-store --bench usage`.
//!
//! Seeds a fresh store with `CORRAL_BENCH_ALLOCATIONS` closed allocations
//! (default 1,000,000) of 1,000 runs over 10 tenants, 50 pipelines and 2 pools
//! with a price change, spread over 30 days, each metered as it closes (as the
//! server does), and 100 allocations still open; then prints, over
//! `CORRAL_BENCH_REPS` reports (default 5), the median time of
//! `GET /api/v1/usage?by=tenant,day` (reading and grouping, idle capacity
//! included) over the 30 days, and over the last 7 days cut at an arbitrary
//! millisecond (`--since 7d`). PostgreSQL is measured when
//! `CORRAL_BENCH_POSTGRES` is set (it needs 127.0.0.1:5432), and SQLite unless
//! `CORRAL_BENCH_SKIP_SQLITE` is.

use std::time::{Duration, Instant};

use corral_core::clock::Timestamp;
use corral_core::ids::{AllocationId, RunId};
use corral_core::manifest::{Document, parse_documents};
use corral_core::metering::{
    CapacityChange, Grouping, Key, PriceChange, Span, group, idle, slot_pieces,
};
use corral_core::money::Money;
use corral_core::pool::Price;
use corral_core::request::ResourceRequest;
use corral_core::resources::Resources;
use corral_core::run::RunState;
use corral_store::testing::fresh_postgres_database;
use corral_store::{
    AllocationRecord, Metered, RunRecord, SpanFilter, SqlStore, Store, Write, metered_usage,
};

const DAY_MS: i64 = 86_400_000;
const START_MS: i64 = 1_790_000_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(id: i64) -> RunRecord {
    let text = format!(
        "kind: Pipeline\nname: p{}\ntenant: t{}\nsteps:\n  - {{name: s, run: 'true', resources: {{cpu: 1, memory: 1Gi}}}}\n",
        id % 50,
        id % 10
    );
    let Some(Document::Pipeline(spec)) = parse_documents(&text)
        .expect("a pipeline")
        .into_iter()
        .next()
    else {
        panic!("a pipeline")
    };
    let request = ResourceRequest::for_pipeline(&spec.clone().compile().expect("compiles"));
    RunRecord {
        id: RunId(id),
        pipeline: spec.name.clone(),
        tenant: spec.tenant.clone(),
        priority: 0,
        state: RunState::Succeeded,
        reason: None,
        spec,
        request,
        estimate: Money::ZERO,
        created_at: Timestamp(START_MS),
        updated_at: Timestamp(START_MS),
        finished_at: Some(Timestamp(START_MS + 30 * DAY_MS)),
    }
}

fn prices() -> Vec<PriceChange> {
    let price = |pool: &str, at_ms: i64, cpu_hour: f64| PriceChange {
        pool: pool.into(),
        at_ms,
        price: Price {
            cpu_hour,
            memory_gib_hour: 0.005,
            gpu_hour: 0.0,
        },
    };
    vec![
        price("alpha", START_MS, 0.04),
        price("beta", START_MS, 0.08),
        price("beta", START_MS + 15 * DAY_MS, 0.1),
    ]
}

async fn seed(store: &dyn Store, allocations: usize) -> Duration {
    let started = Instant::now();
    let prices = prices();
    let mut writes: Vec<Write> = prices.iter().cloned().map(Write::PutPrice).collect();
    writes.extend((1..=1000).map(|id| Write::PutRun(run(id))));
    store.commit(&writes).await.expect("runs");
    let spacing = (30 * DAY_MS) / allocations.max(1) as i64;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..allocations + 100 {
        let run = (i % 1000) as i64 + 1;
        let open = i >= allocations;
        let opened = START_MS + (i % allocations.max(1)) as i64 * spacing;
        let a = AllocationRecord {
            id: AllocationId(i as i64 + 1),
            run_id: RunId(run),
            group: i as u32,
            tenant: format!("t{}", run % 10),
            pool: ["alpha", "beta"][i % 2].to_string(),
            resources: Resources::new(1000 + (i % 4) as u64 * 500, 1024, 0),
            worker_id: None,
            opened_at: Timestamp(opened),
            closed_at: (!open).then_some(Timestamp(opened + 60_000)),
        };
        let span = Span {
            allocation: a.id,
            run: a.run_id,
            tenant: a.tenant.clone(),
            pool: a.pool.clone(),
            pipeline: format!("p{}", run % 50),
            resources: a.resources,
            start_ms: a.opened_at.0,
            end_ms: a.closed_at.map(|t| t.0),
        };
        batch.push(Write::PutAllocation(a));
        if !open {
            let pieces = slot_pieces(&span, &prices);
            batch.push(Write::Meter(Metered { span, pieces }));
        }
        if batch.len() >= 10_000 {
            store.commit(&batch).await.expect("allocations");
            batch.clear();
        }
    }
    store.commit(&batch).await.expect("allocations");
    started.elapsed()
}

/// One report by tenant and day over `[from, to)`, as the API makes it: its
/// time and its number of rows.
async fn report(store: &dyn Store, from: i64, to: i64, now: i64) -> (Duration, usize) {
    let t = Instant::now();
    let by = [Key::Tenant, Key::Day];
    let filter = SpanFilter {
        from: Timestamp(from),
        to: Timestamp(to),
        tenant: None,
        pool: None,
        unmetered: false,
    };
    let prices = store.prices().await.expect("prices");
    let held = metered_usage(store, &filter, Grouping::of(&by, true), &prices, now)
        .await
        .expect("usage");
    let rows = group(&held, &by).rows.len();
    let capacities: Vec<CapacityChange> = store.capacities().await.expect("capacities");
    let idle = idle(
        &capacities,
        &held,
        &prices,
        corral_core::metering::Window::new(from, to),
        now,
        true,
    );
    assert!(!idle.is_empty());
    (t.elapsed(), rows)
}

/// Seeds the store, then, on PostgreSQL (`url`), vacuums and analyzes it as
/// autovacuum would after such a load (the test server runs with autovacuum
/// off, and a million dead row versions would be measured instead).
async fn measure(
    label: &str,
    store: &dyn Store,
    url: Option<&str>,
    allocations: usize,
    reps: usize,
) {
    let seeded = seed(store, allocations).await;
    if let Some(url) = url {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
        sqlx::raw_sql("VACUUM ANALYZE")
            .execute(&mut conn)
            .await
            .expect("vacuum");
    }
    let end = START_MS + 30 * DAY_MS;
    // Now is a little after the last allocation; `--since 7d` starts at an
    // arbitrary millisecond.
    let now = end + 1_234_567;
    for (what, from, to) in [
        ("30 days", START_MS, end),
        ("since 7d", now - 7 * DAY_MS, now),
    ] {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..reps {
            let (t, r) = report(store, from, to, now).await;
            times.push(t);
            rows = r;
        }
        times.sort();
        println!(
            "{label}: {allocations} allocations (seeded in {seeded:.1?}): report by tenant and day over {what} ({rows} rows), idle included: median {:.1?}, max {:.1?}",
            times[reps / 2],
            times[reps - 1],
        );
    }
}

fn main() {
    let allocations = env("CORRAL_BENCH_ALLOCATIONS", 1_000_000);
    let reps = env("CORRAL_BENCH_REPS", 5).max(1);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("corral-usage-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqlStore::open_sqlite(&dir).await.expect("sqlite");
        if std::env::var_os("CORRAL_BENCH_SKIP_SQLITE").is_none() {
            measure("sqlite", &store, None, allocations, reps).await;
        }
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        if std::env::var_os("CORRAL_BENCH_POSTGRES").is_some() {
            let url = fresh_postgres_database("usage_bench").await;
            let store = SqlStore::connect(&url).await.expect("postgres");
            measure("postgres", &store, Some(&url), allocations, reps).await;
        }
    });
}

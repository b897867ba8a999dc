//! Time of a usage report by tenant and day over many allocation records, on
//! SQLite and PostgreSQL. Run with `cargo bench -p corral-store --bench usage`.
//!
//! Seeds a fresh store with `CORRAL_BENCH_ALLOCATIONS` closed allocations
//! (default 1,000,000) of 1,000 runs over 10 tenants, 50 pipelines and 2 pools
//! with a price change, spread over 30 days; then prints, over
//! `CORRAL_BENCH_REPS` reports (default 3), the median time to read the spans
//! of the 30 days and to price and group them by tenant and day, as
//! `GET /api/v1/usage?by=tenant,day` does. PostgreSQL is measured when
//! `CORRAL_BENCH_POSTGRES` is set (it needs 127.0.0.1:5432).

use std::time::{Duration, Instant};

use corral_core::clock::Timestamp;
use corral_core::ids::{AllocationId, RunId};
use corral_core::manifest::{Document, parse_documents};
use corral_core::metering::{Key, PriceChange, Window, usage};
use corral_core::money::Money;
use corral_core::pool::Price;
use corral_core::request::ResourceRequest;
use corral_core::resources::Resources;
use corral_core::run::RunState;
use corral_store::testing::fresh_postgres_database;
use corral_store::{AllocationRecord, RunRecord, SpanFilter, SqlStore, Store, Write};

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

async fn seed(store: &dyn Store, allocations: usize) -> Duration {
    let started = Instant::now();
    let runs: Vec<Write> = (1..=1000).map(|id| Write::PutRun(run(id))).collect();
    store.commit(&runs).await.expect("runs");
    let spacing = (30 * DAY_MS) / allocations.max(1) as i64;
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..allocations {
        let run = (i % 1000) as i64 + 1;
        let opened = START_MS + i as i64 * spacing;
        batch.push(Write::PutAllocation(AllocationRecord {
            id: AllocationId(i as i64 + 1),
            run_id: RunId(run),
            group: 0,
            tenant: format!("t{}", run % 10),
            pool: ["alpha", "beta"][i % 2].to_string(),
            resources: Resources::new(1000 + (i % 4) as u64 * 500, 1024, 0),
            worker_id: None,
            opened_at: Timestamp(opened),
            closed_at: Some(Timestamp(opened + 60_000)),
        }));
        if batch.len() == 10_000 {
            store.commit(&batch).await.expect("allocations");
            batch.clear();
        }
    }
    store.commit(&batch).await.expect("allocations");
    let price = |pool: &str, at_ms: i64, cpu_hour: f64| {
        Write::PutPrice(PriceChange {
            pool: pool.into(),
            at_ms,
            price: Price {
                cpu_hour,
                memory_gib_hour: 0.005,
                gpu_hour: 0.0,
            },
        })
    };
    store
        .commit(&[
            price("alpha", START_MS, 0.04),
            price("beta", START_MS, 0.08),
            price("beta", START_MS + 15 * DAY_MS, 0.1),
        ])
        .await
        .expect("prices");
    started.elapsed()
}

async fn measure(label: &str, store: &dyn Store, allocations: usize, reps: usize) {
    let seeded = seed(store, allocations).await;
    let (from, to) = (START_MS, START_MS + 30 * DAY_MS);
    let mut read = Vec::new();
    let mut priced = Vec::new();
    let mut rows = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let spans = store
            .spans(&SpanFilter {
                from: Timestamp(from),
                to: Timestamp(to),
                tenant: None,
                pool: None,
            })
            .await
            .expect("spans");
        let prices = store.prices().await.expect("prices");
        read.push(t.elapsed());
        let t = Instant::now();
        let report = usage(
            &spans,
            &prices,
            Window::new(from, to),
            to,
            &[Key::Tenant, Key::Day],
        );
        priced.push(t.elapsed());
        rows = report.rows.len();
        assert_eq!(spans.len(), allocations);
    }
    read.sort();
    priced.sort();
    let (r, p) = (read[reps / 2], priced[reps / 2]);
    println!(
        "{label}: {allocations} allocations (seeded in {:.1?}): report by tenant and day ({rows} rows) in {:.0?} median = read {:.0?} + price and group {:.0?}",
        seeded,
        r + p,
        r,
        p
    );
}

fn main() {
    let allocations = env("CORRAL_BENCH_ALLOCATIONS", 1_000_000);
    let reps = env("CORRAL_BENCH_REPS", 3).max(1);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("corral-usage-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqlStore::open_sqlite(&dir).await.expect("sqlite");
        measure("sqlite", &store, allocations, reps).await;
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        if std::env::var_os("CORRAL_BENCH_POSTGRES").is_some() {
            let url = fresh_postgres_database("usage_bench").await;
            let store = SqlStore::connect(&url).await.expect("postgres");
            measure("postgres", &store, allocations, reps).await;
        }
    });
}

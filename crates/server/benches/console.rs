//! How long each console page takes the server, and how large its charts'
//! data is, with 1,000 runs, 50 pools, 10 tenants and 30 days of governance
//! history (admission waits included) in a SQLite store. Run with
//! `cargo bench -p corral-server --bench console`.
//!
//! The engine and the console's router run in this process, served on a port
//! of 127.0.0.1; each page is asked for `CORRAL_BENCH_REPS` times (default 7)
//! with an admin session, and the median and the largest time are printed
//! (time to the whole answer, on loopback: the server's time plus a few tens
//! of microseconds), with the bytes of chart data on the page.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_core::access::Role;
use corral_core::clock::{Clock, Timestamp};
use corral_core::history::{Rollup, Sample, Series, SubjectKind};
use corral_core::manifest::{Document, parse_documents};
use corral_core::resources::{Dimension, Resources};
use corral_server::SystemClock;
use corral_server::auth::Principal;
use corral_server::console::SESSION_COOKIE;
use corral_server::engine::{Engine, EngineConfig};
use corral_server::provider::{LocalProvider, Providers};
use corral_store::{AdmissionWait, SqlStore, Store, Write};

const POOLS: usize = 50;
const TENANTS: usize = 10;
const RUNS: usize = 1000;
const HOUR_MS: i64 = 3_600_000;

fn admin() -> Principal {
    Principal {
        name: "bench".into(),
        role: Role::Admin,
    }
}

async fn seed(engine: &Engine, store: &dyn Store) {
    let mut yaml = String::new();
    for p in 0..POOLS {
        yaml.push_str(&format!(
            "kind: Pool\nname: pool-{p:02}\ncapacity: {{cpu: 4, memory: 16Gi}}\nmax_workers: 4\nlabels: {{zone: z{}}}\nprice: {{cpu_hour: 0.0{}}}\n---\n",
            p % 5,
            1 + p % 9
        ));
    }
    for t in 0..TENANTS {
        yaml.push_str(&format!(
            "kind: Tenant\nname: team-{t}\nquota: {{cpu: 40}}\nbudget: {{monthly: 1000, enforce: soft, alert_at: [0.8]}}\n---\n"
        ));
    }
    for doc in parse_documents(&yaml).expect("yaml") {
        match doc {
            Document::Pool(p) => {
                engine.put_pool(&admin(), p, false).await.expect("pool");
            }
            Document::Tenant(t) => {
                engine.put_tenant(&admin(), t, false).await.expect("tenant");
            }
            Document::Pipeline(_) => unreachable!("no pipelines here"),
        }
    }
    for r in 0..RUNS {
        let pipeline = format!(
            "kind: Pipeline\nname: build-{}\ntenant: team-{}\nsteps:\n  - {{name: fetch, run: 'true', pool: pool-{:02}, resources: {{cpu: 1, memory: 1Gi}}}}\n  - {{name: build, run: 'true', needs: [fetch], pool: pool-{:02}, resources: {{cpu: 1, memory: 2Gi}}}}\n  - {{name: test, run: 'true', needs: [build], pool: pool-{:02}, resources: {{cpu: 1, memory: 1Gi}}}}\n",
            r % 40,
            r % TENANTS,
            r % POOLS,
            r % POOLS,
            r % POOLS
        );
        engine.submit(&admin(), &pipeline).await.expect("submit");
    }
    // Admissions: some runs hold allocations, the rest wait with reasons.
    engine.cycle().await.expect("cycle");
    // Thirty days of samples, hourly, for every pool and tenant series.
    let now = SystemClock.now().0;
    let start = now - 30 * 24 * HOUR_MS;
    let mut batch = Vec::new();
    for hour in 0..30 * 24 {
        let at = Timestamp(start + hour * HOUR_MS);
        let wave = ((hour % 24) as f64 / 24.0 * std::f64::consts::TAU)
            .sin()
            .abs();
        for p in 0..POOLS {
            for series in Series::ALL
                .into_iter()
                .filter(|s| s.subject() == SubjectKind::Pool)
            {
                batch.push(Sample {
                    series,
                    subject: format!("pool-{p:02}"),
                    at,
                    value: wave * (p % 7) as f64 / 7.0,
                });
            }
        }
        for t in 0..TENANTS {
            for (series, value) in [
                (Series::TenantHoldings(Dimension::Cpu), wave * 20.0),
                (Series::TenantQueuedRuns, wave * 30.0),
                (Series::TenantAdmissionWait, wave * 120.0),
            ] {
                batch.push(Sample {
                    series,
                    subject: format!("team-{t}"),
                    at,
                    value,
                });
            }
        }
        // Twenty admissions an hour per tenant, waiting up to ten minutes.
        let waits: Vec<Write> = (0..TENANTS)
            .flat_map(|t| {
                (0..20).map(move |i| {
                    Write::CountWait(AdmissionWait {
                        tenant: format!("team-{t}"),
                        at,
                        wait_ms: (i * i * 1_500 + t as i64 * 700) % 600_000,
                    })
                })
            })
            .collect();
        store.commit(&waits).await.expect("waits");
        if batch.len() > 20_000 {
            store.append_samples(&batch).await.expect("samples");
            batch.clear();
        }
    }
    store.append_samples(&batch).await.expect("samples");
    store
        .roll_up_history(&Rollup::at(Timestamp(now)))
        .await
        .expect("rollup");
}

/// The bytes of chart data embedded in a page.
fn chart_bytes(page: &str) -> usize {
    page.split("data-chart=")
        .skip(1)
        .filter_map(|rest| {
            let start = rest.find('>')? + 1;
            let end = rest[start..].find("</script>")?;
            Some(end)
        })
        .sum()
}

fn main() {
    let reps = std::env::var("CORRAL_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7usize)
        .max(1);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("corral-console-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(SqlStore::open_sqlite(&dir).await.expect("store"));
        let provider = LocalProvider::new("/bin/true".into(), dir.join("workers"), dir.clone());
        let engine = Arc::new(
            Engine::load(store.clone(), Arc::new(SystemClock), EngineConfig::default(), Providers::standard(Arc::new(provider)))
                .await
                .expect("engine"),
        );
        let committer = engine.clone();
        tokio::spawn(async move { committer.run_committer().await });
        let mut secret = String::new();
        engine
            .bootstrap(Resources::new(4000, 8192, 0), |s| {
                secret = s.to_string();
                Ok(())
            })
            .await
            .expect("bootstrap");
        let seeding = Instant::now();
        seed(&engine, store.as_ref()).await;
        println!(
            "seeded {POOLS} pools, {TENANTS} tenants, {RUNS} runs and 30 days of hourly history in {:.1?}",
            seeding.elapsed()
        );
        let session = engine
            .open_session(&corral_server::auth::hash(&secret))
            .await
            .expect("a console session");
        let router = corral_server::console::router(engine.clone(), Duration::from_secs(10), false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("port");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let run = engine
            .read()
            .await
            .runs
            .keys()
            .next()
            .map(|r| r.0)
            .expect("a run");
        let pages = [
            "/".to_string(),
            "/pools".into(),
            "/pools/pool-07?range=30d".into(),
            "/pools/new".into(),
            "/tenants".into(),
            "/tenants/team-3?range=30d".into(),
            "/tenants/team-3?range=7d".into(),
            "/queue".into(),
            format!("/runs/{run}"),
            "/dashboards?range=30d".into(),
            "/dashboards?range=7d".into(),
            "/dashboards?range=24h".into(),
            "/agents".into(),
            "/prices".into(),
            "/tokens".into(),
            "/audit".into(),
        ];
        println!("{:<28} {:>10} {:>10} {:>10} {:>12}", "page", "median", "max", "bytes", "chart data");
        for page in pages {
            let mut times = Vec::new();
            let mut body = String::new();
            for _ in 0..reps {
                let t = Instant::now();
                let answer = http
                    .get(format!("http://{addr}{page}"))
                    .header("cookie", format!("{SESSION_COOKIE}={session}"))
                    .send()
                    .await
                    .expect("page");
                assert_eq!(answer.status().as_u16(), 200, "{page}");
                body = answer.text().await.expect("body");
                times.push(t.elapsed());
            }
            times.sort();
            let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
            println!(
                "{page:<28} {:>10} {:>10} {:>10} {:>9} KB",
                ms(times[reps / 2]),
                ms(times[reps - 1]),
                body.len(),
                chart_bytes(&body) / 1024
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

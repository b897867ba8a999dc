//! `corral bench`: starts a server on a fresh SQLite store in a temporary
//! directory, with local workers, and measures (1) submit-to-succeeded latency
//! of one-step `true` pipelines on warm workers and (2) the throughput of many
//! such runs from 4 tenants. Times come from the server's own records (created
//! at submit, finished at the final report), in milliseconds. With `--bulk-runs`,
//! (3) that many runs submitted in one request beside `corral submit`
//! processes, one run each, timed on a sample and extrapolated.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::RunSummary;
use corral_server::engine::EngineConfig;
use futures::StreamExt;

use crate::client::Client;

pub struct BenchConfig {
    pub latency_runs: usize,
    pub throughput_runs: usize,
    pub workers: u32,
    /// Give every tenant a hard budget (one that is never reached), so that
    /// each admission is checked against it.
    pub budgets: bool,
    /// Runs of the bulk comparison (0: none).
    pub bulk_runs: u32,
    /// `corral submit` processes timed for it.
    pub sample_submits: u32,
}

const TENANTS: [&str; 4] = ["t1", "t2", "t3", "t4"];

fn pipeline(tenant: &str, i: usize) -> String {
    format!(
        "kind: Pipeline\nname: bench-{i}\ntenant: {tenant}\nsteps:\n  - {{name: s, run: 'true', resources: {{cpu: 100m, memory: 64Mi}}}}\n"
    )
}

fn millis(text: &str) -> Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("bad time {text}"))?
        .timestamp_millis())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Waits for the last run (the queue is FIFO within a priority, so it ends about
/// last) with cheap single-run reads, then checks every run with one listing.
async fn wait_all_ended(client: &Client, ids: &[i64]) -> Result<Vec<RunSummary>> {
    let wanted: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    if let Some(&last) = wanted.last() {
        wait_one(client, last, Duration::from_millis(50)).await?;
    }
    loop {
        let ended: Vec<RunSummary> = client
            .runs(None, None, Some(10_000))
            .await?
            .0
            .into_iter()
            .filter(|r| wanted.contains(&r.id) && r.finished_at.is_some())
            .collect();
        if let Some(bad) = ended.iter().find(|r| r.state != "succeeded") {
            bail!("run {} ended {}", bad.id, bad.state);
        }
        if ended.len() == wanted.len() {
            return Ok(ended);
        }
        if Instant::now() > deadline {
            bail!(
                "{} runs did not end within 10 minutes",
                wanted.len() - ended.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn run(config: BenchConfig) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let server_config = corral_server::ServerConfig {
        listen: addr,
        data_dir: dir.clone(),
        database_url: None,
        exe: std::env::current_exe()?,
        engine: EngineConfig::default(),
        tick: Duration::from_millis(500),
        cors_origins: Vec::new(),
        tls: None,
        http: corral_server::http::HttpLimits::default(),
        metrics_public: false,
        alert_webhook: None,
        lost_worker_retention: Duration::from_secs(24 * 3600),
        kubernetes: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(corral_server::serve(server_config, async {
        let _ = stop_rx.await;
    }));
    // Authentication is on, as always: the bench calls with the admin token
    // the server wrote on its first start.
    let token_file = dir.join(corral_server::ADMIN_TOKEN_FILE);
    let start = Instant::now();
    while !token_file.exists() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the bench server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = crate::client::resolve_token(None, Some(&token_file), None)?;
    let client = Client::new(&format!("http://{addr}"), token, None)?;
    while client.pools().await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the bench server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut cluster = format!(
        "kind: Pool\nname: bench\ncapacity: {{cpu: 64, memory: 128Gi}}\nmax_workers: {}\n---\nkind: Pool\nname: local\ncapacity: {{cpu: 1, memory: 1Gi}}\nstate: disabled\n",
        config.workers
    );
    // With budgets, the pool has a price and every tenant a hard budget far
    // above what the bench spends, so that admissions pay for the check.
    if config.budgets {
        cluster = cluster.replacen(
            "max_workers:",
            "price: {cpu_hour: 0.04, memory_gib_hour: 0.005}\nmax_workers:",
            1,
        );
    }
    let budget = if config.budgets {
        "budget: {monthly: 1000000, enforce: hard}\n"
    } else {
        ""
    };
    for t in TENANTS {
        cluster.push_str(&format!("---\nkind: Tenant\nname: {t}\n{budget}"));
    }
    client.apply(&cluster).await?;

    // Warm up: one run per worker, at once, so every worker is spawned.
    eprintln!("warming up {} workers...", config.workers);
    let warm: Vec<i64> = futures::future::try_join_all((0..config.workers as usize).map(|i| {
        let client = &client;
        async move {
            client
                .submit(&pipeline("t1", i))
                .await
                .map(|r| r.summary.id)
        }
    }))
    .await?;
    wait_all_ended(&client, &warm).await?;

    eprintln!("latency: {} runs, one at a time...", config.latency_runs);
    let mut latencies = Vec::with_capacity(config.latency_runs);
    let wall = Instant::now();
    for i in 0..config.latency_runs {
        let run = client.submit(&pipeline(TENANTS[i % 4], i)).await?;
        let ended = wait_one(&client, run.summary.id, Duration::from_millis(1)).await?;
        let finished = ended.finished_at.context("finished run has finished_at")?;
        latencies.push(millis(&finished)? - millis(&ended.created_at)?);
    }
    let client_side = wall.elapsed();
    latencies.sort_unstable();
    println!(
        "latency (submit to succeeded, server clock, {} runs, warm workers): median {} ms, p99 {} ms, max {} ms; client round trip incl. polling {:.1} ms/run",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        client_side.as_secs_f64() * 1000.0 / config.latency_runs as f64
    );

    eprintln!(
        "throughput: {} runs from 4 tenants...",
        config.throughput_runs
    );
    let wall = Instant::now();
    let ids: Vec<i64> = futures::stream::iter(0..config.throughput_runs)
        .map(|i| {
            let client = &client;
            async move {
                client
                    .submit(&pipeline(TENANTS[i % 4], i))
                    .await
                    .map(|r| r.summary.id)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let submitted = wall.elapsed();
    let ended = wait_all_ended(&client, &ids).await?;
    let first = ended
        .iter()
        .map(|r| millis(&r.created_at))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .min()
        .unwrap_or(0);
    let last = ended
        .iter()
        .filter_map(|r| r.finished_at.as_deref().map(millis))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let span = (last - first).max(1) as f64 / 1000.0;
    println!(
        "throughput: {} runs in {:.2} s (first submit to last success) = {:.0} runs/s; submitting took {:.2} s ({:.0} submits/s); {} workers",
        ids.len(),
        span,
        ids.len() as f64 / span,
        submitted.as_secs_f64(),
        ids.len() as f64 / submitted.as_secs_f64(),
        config.workers
    );
    if config.bulk_runs > 0 {
        bulk(&client, &format!("http://{addr}"), &dir, &config).await?;
    }
    // Retire the bench's workers before the server goes, so none is left polling.
    client.delete_pool("bench").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Times `corral submit` processes (a sample of `sample_submits`, one run
/// each) and one request of `bulk_runs` runs (`--count`), each until its runs
/// have succeeded, and prints both, the processes' time extrapolated.
async fn bulk(
    client: &Client,
    url: &str,
    dir: &std::path::Path,
    config: &BenchConfig,
) -> Result<()> {
    let runs = config.bulk_runs as usize;
    let sample = config.sample_submits as usize;
    let file = dir.join("bulk.yaml");
    std::fs::write(&file, pipeline("t2", 0))?;
    let token = dir.join(corral_server::ADMIN_TOKEN_FILE);
    let exe = std::env::current_exe()?;
    eprintln!("bulk: {sample} `corral submit` processes, one at a time...");
    let wall = Instant::now();
    let mut singles = Vec::with_capacity(sample);
    for _ in 0..sample {
        let out = std::process::Command::new(&exe)
            .arg("submit")
            .arg(&file)
            .arg("--server")
            .arg(url)
            .arg("--token-file")
            .arg(&token)
            .env_remove("CORRAL_CA_CERT")
            .output()?;
        if !out.status.success() {
            bail!("corral submit: {}", String::from_utf8_lossy(&out.stderr));
        }
        singles.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<i64>()
                .context("corral submit prints the run's id")?,
        );
    }
    let per_call = wall.elapsed().as_secs_f64() / sample as f64;
    wait_all_ended(client, &singles).await?;

    eprintln!("bulk: {runs} runs in one request...");
    let wall = Instant::now();
    let answer = client
        .submit_runs(&pipeline("t3", 0), Some(config.bulk_runs))
        .await?;
    let submitted = wall.elapsed().as_secs_f64();
    let ids: Vec<i64> = match answer {
        corral_api::Submitted::Runs(bulk) => bulk.runs.iter().map(|r| r.id).collect(),
        corral_api::Submitted::Run(_) => bail!("a bulk submit answered one run"),
    };
    if ids.len() != runs {
        bail!("{} runs asked, {} made", runs, ids.len());
    }
    wait_all_ended(client, &ids).await?;
    let ran = wall.elapsed().as_secs_f64();
    let calls = per_call * runs as f64;
    println!(
        "bulk: {runs} runs in one request (--count): submitted in {submitted:.3} s, all succeeded after {ran:.2} s ({:.0} runs/s)",
        runs as f64 / ran
    );
    println!(
        "bulk: {runs} `corral submit` calls: {calls:.1} s of submitting alone (extrapolated from {sample} processes at {:.1} ms each): {:.0}x the bulk submit, {:.1}x its submit-to-last-success",
        per_call * 1000.0,
        calls / submitted,
        calls / ran
    );
    Ok(())
}

async fn wait_one(client: &Client, id: i64, every: Duration) -> Result<RunSummary> {
    loop {
        let run = client.run(id).await?;
        match run.summary.state.as_str() {
            "succeeded" => return Ok(run.summary),
            "failed" | "cancelled" | "rejected" => bail!("run {id} ended {}", run.summary.state),
            _ => tokio::time::sleep(every).await,
        }
    }
}

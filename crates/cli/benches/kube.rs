//! `kubernetes` pools through the fake API server of `corral-kubefake` (issue
//! 22's "Measure"), on the real `corral server` (the release binary built with
//! this bench) and real agents in the fake's pods. Run as root (the fake
//! kubelet mounts each pod's secret volume) with
//! `cargo bench -p corral --features kubernetes --bench kube`. No figure is
//! asserted: the bench prints them.
//!
//! 1. Submit to first output, `CORRAL_KUBE_SAMPLES` (20) one-step runs one
//!    after the other, each of a shape no idle worker fits, so that each gets
//!    a new pod: the time until the pod is created (corral's own share: its
//!    cycle, commit and the provider's calls) and until the step's first
//!    output is stored (the fake starts the pod's process at once; the rest is
//!    the agent starting, registering and running the step).
//! 2. Pods created per second: `CORRAL_KUBE_PODS` (50) runs in one bulk
//!    submit, each needing a worker of its own, timed from the submit until
//!    the fake has created every pod.

// Shared with the scale bench, which uses all of it; this one, a part.
#[allow(dead_code)]
#[path = "support/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::{RunSummary, SubmittedRuns};
use corral_kubefake::{FakeCluster, Options};

use server::{Api, ServerProcess};

/// The `corral` binary this bench was built with: the image of the fake's pods.
const BIN: &str = env!("CARGO_BIN_EXE_corral");

fn setting(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}: a count")),
        Err(_) => Ok(default),
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until `check` holds, polling every millisecond, for at most `within`.
async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn line(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms ({} runs)",
        quantile(&samples, 0.5).as_secs_f64() * 1e3,
        quantile(&samples, 0.9).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        samples.len()
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    // reqwest is built with no TLS provider of its own: ring, as the server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let samples = setting("CORRAL_KUBE_SAMPLES", 20)?;
    let pods = setting("CORRAL_KUBE_PODS", 50)?;
    let dir = std::env::temp_dir().join(format!("corral-kube-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin_dir = Path::new(BIN).parent().context("the binary's directory")?;
    let fake = FakeCluster::start(Options {
        bin_dir: bin_dir.to_path_buf(),
        work_dir: dir.join("pods"),
    })
    .await;
    fake.add_node(
        "node-1",
        BTreeMap::new(),
        map(&[("cpu", "512"), ("memory", "2Ti")]),
    );
    let kubeconfig = dir.join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig);
    let kubeconfig = kubeconfig.display().to_string();
    let server = ServerProcess::start(
        "kube-server",
        &["--kubeconfig", &kubeconfig, "--idle-ttl", "600"],
    )
    .await?;
    let api = Api::new(&server.url, &server.admin_token)?;
    let _: serde_json::Value = api
        .post_yaml(
            "/api/v1/apply",
            format!(
                "kind: Pool\nname: k8s\nprovider: kubernetes\ncapacity: {{cpu: 500, memory: 1Ti}}\nmax_workers: {}\nkubernetes: {{namespace: bench, image: 'corral:bench'}}\n---\nkind: Tenant\nname: bench\n",
                samples + pods + 1
            ),
        )
        .await?;
    println!(
        "corral kube bench: server pid {}, fake API server {}",
        server.pid,
        fake.url()
    );

    // 1. One run at a time, each of a shape larger than every idle worker.
    let mut to_pod = Vec::new();
    let mut to_output = Vec::new();
    for i in 0..samples {
        let pipeline = format!(
            "kind: Pipeline\nname: first-output\ntenant: bench\nsteps:\n  - {{name: s, run: 'echo first output', pool: k8s, resources: {{cpu: {}m, memory: 64Mi}}}}\n",
            1000 + i
        );
        let created = fake.pods_created();
        let start = Instant::now();
        let run: RunSummary = api.post_yaml("/api/v1/runs", pipeline).await?;
        until("the run's pod", Duration::from_secs(60), || {
            fake.pods_created() > created
        })
        .await?;
        to_pod.push(start.elapsed());
        let logs = format!("/api/v1/runs/{}/logs", run.id);
        loop {
            if api.get_text(&logs).await?.contains("first output") {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("run {} printed nothing within 60 s", run.id);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        to_output.push(start.elapsed());
    }
    line("submit to pod created", to_pod);
    line("submit to the step's first output", to_output);

    // 2. Many at once, each needing a pod.
    let pipeline = "kind: Pipeline\nname: many\ntenant: bench\nsteps:\n  - {name: s, run: 'sleep 600', pool: k8s, resources: {cpu: 3, memory: 64Mi}}\n";
    let created = fake.pods_created();
    let start = Instant::now();
    let runs: SubmittedRuns = api
        .post_yaml(&format!("/api/v1/runs?count={pods}"), pipeline.to_string())
        .await?;
    let wanted = created + pods as u64;
    until("every pod", Duration::from_secs(600), || {
        fake.pods_created() >= wanted
    })
    .await?;
    let took = start.elapsed();
    println!(
        "{pods} pods created in {:.2} s: {:.1} pods/s",
        took.as_secs_f64(),
        pods as f64 / took.as_secs_f64()
    );
    assert_eq!(runs.runs.len(), pods, "one run a pod");
    // The fake's pods (and their agents) end with it.
    server.stop()?;
    fake.shutdown().await;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
}

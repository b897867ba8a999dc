//! `GET /metrics` on a real server: the Prometheus text format (checked by
//! `promtool`), values that agree with the API's during and after a workload,
//! the access rule, and the Grafana dashboard's queries.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, eventually, workspace_root};

const CLUSTER: &str = "\
kind: Pool
name: work
capacity: {cpu: 4, memory: 4Gi}
---
kind: Tenant
name: alpha
quota: {cpu: 1}
allowed_pools: [work]
budget: {monthly: 500}
---
kind: Tenant
name: beta
allowed_pools: [work]
";

/// One sample of a scrape.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape in the text format, as samples (comments and blank lines left out).
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}').expect("labels close")),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                Sample {
                    name: name.to_string(),
                    labels,
                    value: value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
                }
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sum of `name`'s samples whose labels include `labels`; none when no sample matches.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// `name`'s sample with exactly these labels, which must exist.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.text))
            .value
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

/// GET /metrics with `token` (none when empty): status, media type and body.
async fn get_metrics(server: &Server, token: &str) -> (u16, String, String) {
    let mut request = crate::harness::http_client(None).get(format!("{}/metrics", server.url));
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.expect("an answer from /metrics");
    let status = answer.status().as_u16();
    let media = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, media, answer.text().await.expect("a body"))
}

async fn scrape(server: &Server) -> Scrape {
    let (status, media, text) = get_metrics(server, &server.admin_token).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        media.starts_with("text/plain; version=0.0.4"),
        "content type {media:?}"
    );
    promtool_check(&text);
    Scrape::parse(text)
}

/// `promtool check metrics` over a scrape: the format parses and follows the
/// naming conventions. Without promtool this check fails under CI and is
/// skipped elsewhere (Debian's `prometheus` package has it; `.ci/run` installs it).
fn promtool_check(text: &str) {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join("promtool").is_file());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed (apt-get install prometheus, as .ci/run does)"
        );
        eprintln!("promtool is not installed: the scrape's format is not checked");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool's answer");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pools' capacity, allocations and worker slots in the scrape are the API's.
async fn pools_agree(server: &Server, scrape: &Scrape) {
    let pools: Vec<Value> = server.get("/api/v1/pools").await;
    assert!(pools.len() >= 2, "{pools:?}");
    for pool in &pools {
        let name = pool["name"].as_str().expect("name");
        let label = [("pool", name)];
        let of = |r: &Value| {
            let n = |f: &str| r[f].as_u64().expect("an amount") as f64;
            [
                n("cpu_millis") / 1000.0,
                n("memory_mib") * 1048576.0,
                n("gpu"),
            ]
        };
        let (capacity, used) = (of(&pool["capacity"]), of(&pool["used"]));
        for (i, unit) in ["cpu_cores", "memory_bytes", "gpus"].iter().enumerate() {
            let metric = |what: &str| scrape.value(&format!("corral_pool_{what}_{unit}"), &label);
            assert_eq!(metric("capacity"), capacity[i], "{name} {unit}");
            assert_eq!(metric("allocated"), used[i], "{name} {unit}");
            assert_eq!(metric("free"), capacity[i] - used[i], "{name} {unit}");
        }
        assert_eq!(
            scrape.value("corral_pool_workers", &label),
            pool["workers"].as_f64().expect("workers"),
            "{name}"
        );
    }
}

/// Each tenant's queued runs and holdings in the scrape are the API's.
async fn tenants_agree(server: &Server, scrape: &Scrape) {
    for tenant in ["alpha", "beta"] {
        let label = [("tenant", tenant)];
        let queued: Vec<Value> = server
            .get(&format!("/api/v1/runs?tenant={tenant}&state=queued"))
            .await;
        assert_eq!(
            scrape.value("corral_tenant_queued_runs", &label),
            queued.len() as f64,
            "{tenant}"
        );
        let view: Value = server.get(&format!("/api/v1/tenants/{tenant}")).await;
        assert_eq!(
            scrape.value("corral_tenant_allocated_cpu_cores", &label),
            view["used"]["cpu_millis"].as_f64().expect("cpu") / 1000.0,
            "{tenant}"
        );
        assert_eq!(
            scrape.value("corral_tenant_allocated_memory_bytes", &label),
            view["used"]["memory_mib"].as_f64().expect("memory") * 1048576.0,
            "{tenant}"
        );
    }
}

/// Every metric the dashboard's queries (and its variables) name is in one of
/// `scrapes`.
fn dashboard_queries_exist(scrapes: &[&Scrape]) {
    let path = workspace_root().join("deploy/grafana/corral.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    let mut named = BTreeSet::new();
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("corral_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            named.insert(name);
        }
    }
    assert!(named.len() >= 20, "the dashboard queries {named:?}");
    let present: BTreeSet<&str> = scrapes.iter().flat_map(|s| s.names()).collect();
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !present.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}\n{}",
        scrapes.iter().map(|s| s.text.as_str()).collect::<String>()
    );
}

/// The PromQL of every panel target (`expr`) and variable (`definition`).
fn collect_queries(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", Value::String(q)) => into.push(q.clone()),
                    _ => collect_queries(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_queries(v, into)),
        _ => {}
    }
}

/// A run of one step on pool `work` that lasts until `gate` is in its
/// workspace.
fn gated(name: &str, tenant: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n  - {{name: s, pool: work, run: 'while [ ! -e gate ]; do sleep 0.1; done', resources: {{cpu: 1, memory: 256Mi}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_agree_with_the_api_during_and_after_a_workload() {
    let server = Server::start("metrics", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    let mut ids = Vec::new();
    // alpha's quota holds one of its three runs at a time; beta's two both fit.
    for (i, tenant) in ["alpha", "alpha", "alpha", "beta", "beta"]
        .iter()
        .enumerate()
    {
        ids.push(
            server.submit(&gated(&format!("job{i}"), tenant)).await["id"]
                .as_i64()
                .expect("id"),
        );
    }
    let huge = server
        .submit("kind: Pipeline\nname: huge\ntenant: beta\nsteps:\n  - {name: s, run: 'true', pool: work, resources: {cpu: 64}}\n")
        .await;
    assert_eq!(huge["state"], "rejected", "{huge}");

    // While the gate is shut nothing ends: one run of alpha's and both of
    // beta's run, and two of alpha's wait for its quota.
    eventually(
        "three runs running and two waiting for alpha's quota",
        Duration::from_secs(60),
        || async {
            let runs: Vec<Value> = server.get("/api/v1/runs").await;
            let running = runs.iter().filter(|r| r["state"] == "running").count();
            let waiting = runs
                .iter()
                .filter(|r| r["state"] == "queued" && r["reason"]["code"] == "tenant_quota")
                .count();
            (running == 3 && waiting == 2).then_some(())
        },
    )
    .await;
    let during = scrape(&server).await;
    pools_agree(&server, &during).await;
    tenants_agree(&server, &during).await;
    let alpha = [("tenant", "alpha")];
    assert_eq!(during.value("corral_tenant_queued_runs", &alpha), 2.0);
    assert_eq!(
        during.value("corral_tenant_queued_demand_cpu_cores", &alpha),
        2.0
    );
    assert_eq!(
        during.value("corral_tenant_queued_demand_memory_bytes", &alpha),
        2.0 * 256.0 * 1048576.0
    );
    assert_eq!(
        during.value("corral_tenant_allocated_cpu_cores", &alpha),
        1.0
    );
    // alpha is at its quota with two runs waiting for it: a gauge of the
    // queue as it is, not a count of cycles.
    assert_eq!(
        during.value(
            "corral_queued_runs",
            &[("tenant", "alpha"), ("code", "tenant_quota")]
        ),
        2.0
    );
    assert_eq!(
        during.sum("corral_queued_runs", &[("tenant", "beta")]),
        None
    );
    let alpha_cpu = [("tenant", "alpha"), ("resource", "cpu")];
    assert_eq!(during.value("corral_tenant_quota", &alpha_cpu), 1.0);
    assert_eq!(
        during.value("corral_tenant_allocated", &alpha_cpu),
        during.value("corral_tenant_quota", &alpha_cpu),
        "alpha holds its whole quota"
    );
    assert_eq!(
        during.value(
            "corral_tenant_allocated",
            &[("tenant", "alpha"), ("resource", "runs")]
        ),
        1.0
    );
    assert_eq!(
        during.value(
            "corral_tenant_allocated",
            &[("tenant", "beta"), ("resource", "cpu")]
        ),
        2.0
    );
    assert_eq!(
        during.value(
            "corral_tenant_allocated",
            &[("tenant", "alpha"), ("resource", "memory")]
        ),
        256.0 * 1048576.0
    );
    assert_eq!(
        during.sum(
            "corral_tenant_quota",
            &[("tenant", "alpha"), ("resource", "memory")]
        ),
        None,
        "an unlimited quota has no sample"
    );
    assert_eq!(
        during.sum("corral_tenant_quota", &[("tenant", "beta")]),
        None
    );
    assert_eq!(
        during.value(
            "corral_pool_reserved",
            &[("pool", "work"), ("resource", "cpu")]
        ),
        0.0
    );
    assert_eq!(
        during.value("corral_pool_allocated_cpu_cores", &[("pool", "work")]),
        3.0
    );
    assert!(during.value("corral_pool_agents", &[("pool", "work")]) >= 3.0);
    assert_eq!(during.value("corral_tenant_budget_monthly", &alpha), 500.0);
    assert_eq!(
        during.sum("corral_tenant_budget_monthly", &[("tenant", "beta")]),
        None,
        "a tenant without a budget has no budget metric"
    );
    assert_eq!(
        during.value(
            "corral_rejections_total",
            &[("tenant", "beta"), ("code", "larger_than_pools")]
        ),
        1.0
    );
    // Counted by the cycles that leave alpha's runs waiting.
    eventually(
        "waits counted for alpha's quota",
        Duration::from_secs(20),
        || async {
            let s = scrape(&server).await;
            let waits = s.sum(
                "corral_waits_total",
                &[("tenant", "alpha"), ("code", "tenant_quota")],
            );
            waits.is_some_and(|w| w >= 2.0).then_some(())
        },
    )
    .await;

    for &id in &ids {
        server.open_gate(id, "gate");
    }
    for id in &ids {
        let run = server.wait_run_ended(*id, Duration::from_secs(60)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
    }
    let succeeded: Vec<Value> = server.get("/api/v1/runs?state=succeeded").await;
    assert_eq!(succeeded.len(), 5);
    // Ends are counted once committed, maybe just after the API shows them.
    let after = eventually("the five ends counted", Duration::from_secs(20), || async {
        let s = scrape(&server).await;
        let ended = s.sum("corral_runs_finished_total", &[("state", "succeeded")]);
        (ended == Some(5.0)).then_some(s)
    })
    .await;
    pools_agree(&server, &after).await;
    tenants_agree(&server, &after).await;
    let admissions = after
        .sum("corral_admissions_total", &[])
        .expect("admissions");
    assert!(admissions >= succeeded.len() as f64, "{admissions}");
    assert_eq!(after.value("corral_admissions_total", &alpha), 3.0);
    assert_eq!(
        after.sum("corral_admission_wait_seconds_count", &[]),
        Some(admissions)
    );
    assert_eq!(
        after.sum(
            "corral_run_duration_seconds_count",
            &[("state", "succeeded")]
        ),
        Some(5.0)
    );
    // Every controller cycle is timed; the workload took several.
    let cycles = after
        .sum("corral_cycle_duration_seconds_count", &[])
        .expect("cycles timed");
    assert!(cycles >= 2.0, "{cycles} cycles");
    assert_eq!(
        after.value("corral_cycle_duration_seconds_bucket", &[("le", "+Inf")]),
        cycles
    );
    assert_eq!(
        after.sum("corral_runs_finished_total", &[("state", "rejected")]),
        Some(1.0)
    );
    assert_eq!(after.value("corral_tenant_queued_runs", &alpha), 0.0);
    assert_eq!(after.sum("corral_queued_runs", &[]), None, "nothing waits");
    assert_eq!(after.value("corral_tenant_allocated", &alpha_cpu), 0.0);
    // Waiting runs have samples only while some wait: the dashboard's
    // queries are found in one scrape or the other.
    dashboard_queries_exist(&[&during, &after]);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_take_a_viewer_token_unless_public() {
    let server = Server::start("metrics-access", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    let viewer = server.create_token("dash", "viewer", None).await;
    let tenant = server
        .create_token("team-a", "tenant", Some(("tenant", "alpha")))
        .await;
    let (status, _, body) = get_metrics(&server, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = get_metrics(&server, &tenant).await;
    assert_eq!(
        status, 403,
        "a tenant token may not see every tenant's metrics: {body}"
    );
    let (status, media, body) = get_metrics(&server, &viewer).await;
    assert_eq!(status, 200, "{body}");
    assert!(media.starts_with("text/plain; version=0.0.4"), "{media}");
    assert!(body.contains("corral_pool_capacity_cpu_cores{pool=\"work\"} 4\n"));
    drop(server);

    let public =
        Server::start_with("metrics-public", StoreKind::Sqlite, &["--metrics-public"]).await;
    let (status, _, body) = get_metrics(&public, "").await;
    assert_eq!(status, 200, "{body}");
    promtool_check(&body);
    // The rest of the API still takes a token.
    let (status, _) = public.send_as("", "GET", "/api/v1/pools", "", None).await;
    assert_eq!(status, 401);
}

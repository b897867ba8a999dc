//! The CLI's client commands against a real server: stdin manifests, structured
//! output, waiting reasons in `describe`, `cancel`, errors that name the field.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{BIN, Server, StoreKind};

fn corral(server: &Server, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("CORRAL_SERVER", &server.url)
        .env("CORRAL_TOKEN", &server.admin_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corral");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("corral output")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_commands() {
    let server = Server::start("cli", StoreKind::Sqlite).await;
    let manifest = "kind: Pool\nname: tiny\ncapacity: {cpu: 1, memory: 1Gi}\n---\nkind: Tenant\nname: solo\nallowed_pools: [tiny]\n";
    let out = corral(&server, &["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "pool tiny created\ntenant solo created\n");
    let again = corral(&server, &["apply", "-f", "-"], Some(manifest));
    assert_eq!(
        stdout(&again),
        "pool tiny unchanged\ntenant solo unchanged\n"
    );

    let pools: Vec<Value> = serde_json::from_str(&stdout(&corral(
        &server,
        &["get", "pools", "-o", "json"],
        None,
    )))
    .expect("json");
    assert!(
        pools
            .iter()
            .any(|p| p["name"] == "tiny" && p["capacity"]["cpu_millis"] == 1000)
    );
    let yaml = stdout(&corral(&server, &["get", "tenants", "-o", "yaml"], None));
    assert!(yaml.contains("name: solo"), "{yaml}");
    let table = stdout(&corral(&server, &["get", "pools"], None));
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table.contains("tiny   local     active  cpu 0/1, mem 0Mi/1Gi"),
        "{table}"
    );

    let long = "kind: Pipeline\nname: long\ntenant: solo\nsteps:\n  - {name: s, run: 'sleep 30', resources: {cpu: 1, memory: 128Mi}}\n";
    let dir = crate::harness::temp_dir("cli-files");
    let file = dir.join("long.yaml");
    std::fs::write(&file, long).expect("write pipeline");
    let path = file.to_str().expect("utf-8 path");
    let first = stdout(&corral(&server, &["submit", path], None))
        .trim()
        .to_string();
    let second = stdout(&corral(&server, &["submit", path], None))
        .trim()
        .to_string();
    let described = crate::harness::eventually(
        "a waiting reason",
        std::time::Duration::from_secs(15),
        || async {
            let text = stdout(&corral(&server, &["describe", "run", &second], None));
            text.contains("Waiting:").then_some(text)
        },
    )
    .await;
    assert!(
        described.contains("Waiting:   pool tiny: cpu 1/1 in use, run needs 1 (pool_full)"),
        "{described}"
    );
    assert!(
        described.contains("Queue:     number 1 overall, 1 for tenant solo"),
        "{described}"
    );
    // The explanation says, in sentences, what would let it in.
    let prose = described.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        prose.contains("It waits for room in a pool")
            && prose.contains("it gets in when 1 cpu is released there"),
        "{described}"
    );
    let queue = stdout(&corral(&server, &["get", "queue"], None));
    let entry = queue.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = entry.split_whitespace().collect();
    assert_eq!(
        cells.get(..3),
        Some(&["1", second.as_str(), "solo"][..]),
        "{queue}"
    );
    assert!(entry.contains("pool_full"), "{queue}");
    let runs = stdout(&corral(&server, &["get", "runs"], None));
    assert!(
        runs.lines().next().is_some_and(|h| h.contains("REASON")),
        "{runs}"
    );
    assert!(
        runs.contains("pool tiny: cpu 1/1 in use, run needs 1"),
        "{runs}"
    );

    let cancelled = corral(&server, &["cancel", &first], None);
    assert_eq!(stdout(&cancelled), format!("run {first} cancelled\n"));
    let cancel_again = corral(&server, &["cancel", &first], None);
    assert!(!cancel_again.status.success());
    let err = String::from_utf8_lossy(&cancel_again.stderr);
    assert!(
        err.contains("has already ended (cancelled)") && err.contains("409"),
        "{err}"
    );
    corral(&server, &["cancel", &second], None);

    let bad = corral(
        &server,
        &["submit", "-"],
        Some("kind: Pipeline\nname: x\nsteps:\n  - {name: a, run: 'true', resources: {cpu: 2x}}\n"),
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("steps[0].resources.cpu: \"2x\" is not a cpu quantity"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Data rows of a table (its header left out).
fn rows(table: &str) -> usize {
    table.lines().count().saturating_sub(1)
}

#[tokio::test(flavor = "multi_thread")]
async fn get_runs_and_the_queue_say_when_there_are_more_and_page_through_all() {
    let server = Server::start("cli-paging", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: tiny\ncapacity: {cpu: 1, memory: 1Gi}\n---\nkind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: many\n")
        .await;
    // Rejected at once (larger than any pool): many runs, no worker.
    for i in 0..130 {
        let run = server
            .submit(&format!("kind: Pipeline\nname: big{i}\ntenant: many\nsteps:\n  - {{name: s, run: 'true', pool: tiny, resources: {{cpu: 64}}}}\n"))
            .await;
        assert_eq!(run["state"], "rejected", "{run}");
    }
    // Waiting for an agent of the static pool that never comes.
    for i in 0..5 {
        server
            .submit(&format!("kind: Pipeline\nname: wait{i}\ntenant: many\nsteps:\n  - {{name: s, run: 'true', pool: metal, resources: {{cpu: 1, gpu: 1}}}}\n"))
            .await;
    }

    let first = corral(&server, &["get", "runs"], None);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(rows(&stdout(&first)), 100);
    assert_eq!(
        stderr(&first),
        "showing the newest 100 runs; there are more: --limit N or --all for more\n"
    );
    let all = corral(&server, &["get", "runs", "--all"], None);
    assert_eq!(rows(&stdout(&all)), 135, "{}", stdout(&all));
    assert_eq!(stderr(&all), "");
    let exact = corral(&server, &["get", "runs", "--limit", "135"], None);
    assert_eq!(rows(&stdout(&exact)), 135);
    assert_eq!(stderr(&exact), "", "no note when nothing is left out");
    // Structured output holds only the items; the note is still on stderr.
    let json = corral(
        &server,
        &["get", "runs", "--limit", "120", "-o", "json"],
        None,
    );
    let items: Vec<Value> = serde_json::from_str(&stdout(&json)).expect("a JSON list");
    assert_eq!(items.len(), 120);
    assert!(
        stderr(&json).starts_with("showing the newest 120 runs"),
        "{}",
        stderr(&json)
    );
    let ids: Vec<i64> = items
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // The API's pages: each `before` the last id of the one before, together
    // the whole list.
    let mut paged: Vec<i64> = Vec::new();
    loop {
        let mut path = "/api/v1/runs?limit=50".to_string();
        if let Some(last) = paged.last() {
            path.push_str(&format!("&before={last}"));
        }
        let page: Vec<Value> = server.get(&path).await;
        paged.extend(page.iter().map(|r| r["id"].as_i64().expect("id")));
        if page.len() < 50 {
            break;
        }
    }
    let every: Vec<Value> = server.get("/api/v1/runs?limit=1000").await;
    let every: Vec<i64> = every
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(paged, every);
    assert_eq!(every.len(), 135);

    // The queue: a note with the total, pages after a position.
    let queue = corral(&server, &["get", "queue", "--limit", "2"], None);
    assert_eq!(rows(&stdout(&queue)), 2, "{}", stdout(&queue));
    assert_eq!(
        stderr(&queue),
        "showing 2 of 5 queued runs: --limit N or --all for more\n"
    );
    // Its demand, gpus included.
    assert!(
        stdout(&queue).contains("cpu 1, mem 256Mi, gpu 1"),
        "{}",
        stdout(&queue)
    );
    let whole = corral(&server, &["get", "queue", "--all"], None);
    assert_eq!(rows(&stdout(&whole)), 5);
    assert_eq!(stderr(&whole), "");
    let (status, body) = server.get_text("/api/v1/queue?limit=2&after=3").await;
    assert_eq!(status, 200, "{body}");
    let after: Vec<Value> = serde_json::from_str(&body).expect("a list");
    let positions: Vec<u64> = after
        .iter()
        .map(|r| r["queue"]["position"].as_u64().expect("position"))
        .collect();
    assert_eq!(positions, [4, 5]);
    let bad = corral(&server, &["get", "runs", "--limit", "0"], None);
    assert!(!bad.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_pools_and_tenants_as_yaml_apply_back_unchanged() {
    let server = Server::start("cli-roundtrip", StoreKind::Sqlite).await;
    let manifest = "\
kind: Pool
name: gpus
capacity: {cpu: 8, memory: 32Gi, gpu: 4}
max_workers: 3
labels: {zone: a, kind: gpu}
price: {cpu_hour: 0.04, memory_gib_hour: 0.005, gpu_hour: 2.5}
state: draining
---
kind: Pool
name: metal
provider: static
max_agent: {cpu: 16, memory: 64Gi, gpu: 2}
require_confinement: true
---
kind: Tenant
name: research
weight: 3
quota: {cpu: 6, memory: 24Gi, gpu: 2, runs: 5}
allowed_pools: [gpus, metal]
pool_limits:
  gpus: {gpu: 1, runs: 2}
  metal: {cpu: 1500m}
budget: {monthly: 1234.5, enforce: hard, alert_at: [0.5, 0.9, 1.0]}
---
kind: Tenant
name: open
";
    let applied = corral(&server, &["apply", "-f", "-"], Some(manifest));
    assert!(applied.status.success(), "{applied:?}");
    let before: (Value, Value, Value) = (
        server.get("/api/v1/pools").await,
        server.get("/api/v1/tenants").await,
        server.get("/api/v1/audit").await,
    );

    let pools = stdout(&corral(&server, &["get", "pools", "-o", "yaml"], None));
    let tenants = stdout(&corral(&server, &["get", "tenants", "-o", "yaml"], None));
    assert!(pools.starts_with("kind: Pool\n"), "{pools}");
    assert!(tenants.contains("---\nkind: Tenant\n"), "{tenants}");
    for status in ["used", "workers", "created_at", "live_agents", "held"] {
        assert!(
            !pools.contains(&format!("\n{status}:")),
            "{status} in\n{pools}"
        );
        assert!(
            !tenants.contains(&format!("\n{status}:")),
            "{status} in\n{tenants}"
        );
    }
    let dir = crate::harness::temp_dir("cli-roundtrip");
    let file = dir.join("tenants.yaml");
    std::fs::write(&file, &tenants).expect("write the tenants");
    let back = corral(&server, &["apply", "-f", "-"], Some(&pools));
    assert!(back.status.success(), "{back:?}\n{pools}");
    let back_tenants = corral(
        &server,
        &["apply", "-f", file.to_str().expect("utf-8")],
        None,
    );
    assert!(back_tenants.status.success(), "{back_tenants:?}\n{tenants}");
    let said = stdout(&back) + &stdout(&back_tenants);
    assert!(
        said.lines().all(|l| l.ends_with(" unchanged")),
        "every document applies back unchanged:\n{said}\n{pools}{tenants}"
    );
    assert!(said.contains("pool gpus unchanged") && said.contains("tenant research unchanged"));
    let after: (Value, Value, Value) = (
        server.get("/api/v1/pools").await,
        server.get("/api/v1/tenants").await,
        server.get("/api/v1/audit").await,
    );
    assert_eq!(before.0, after.0, "the pools are unchanged");
    assert_eq!(before.1, after.1, "the tenants are unchanged");
    assert_eq!(before.2, after.2, "the audit log records no change");

    // The tables: gpus beside cpu and memory, quotas as set, an unlimited
    // one never as an integer.
    let pools = stdout(&corral(&server, &["get", "pools"], None));
    assert!(pools.contains("cpu 0/8, mem 0Mi/32Gi, gpu 0/4"), "{pools}");
    let tenants = stdout(&corral(&server, &["get", "tenants"], None));
    assert!(
        tenants.contains("cpu 6, mem 24Gi, gpu 2, runs 5"),
        "{tenants}"
    );
    let open = tenants
        .lines()
        .find(|l| l.starts_with("open "))
        .unwrap_or_default();
    assert!(open.contains("unlimited"), "{tenants}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unlimited_quota_reads_unlimited_never_its_integer() {
    let server = Server::start("cli-unlimited", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: gpus\ncapacity: {cpu: 4, memory: 4Gi, gpu: 2}\n---\nkind: Tenant\nname: capped\nquota: {cpu: 1}\npool_limits:\n  gpus: {memory: 1Gi}\n")
        .await;
    let run = server
        .submit("kind: Pipeline\nname: over\ntenant: capped\nsteps:\n  - {name: s, run: 'true', pool: gpus, resources: {cpu: 2, memory: 2Gi, gpu: 1}}\n")
        .await;
    assert_eq!(run["state"], "rejected", "{run}");
    let id = run["id"].to_string();
    let mut texts = vec![run.to_string()];
    for args in [
        vec!["describe", "run", id.as_str()],
        vec!["describe", "tenant", "capped"],
        vec!["get", "tenants"],
        vec!["get", "runs"],
    ] {
        let out = corral(&server, &args, None);
        assert!(out.status.success(), "{args:?}: {out:?}");
        texts.push(stdout(&out));
    }
    let (_, summary) = server.get_text("/api/v1/tenants/capped/summary").await;
    texts.push(summary);
    for text in &texts {
        assert!(!text.contains("18446744073709551615"), "{text}");
        assert!(!text.contains("9223372036854775807"), "{text}");
    }
    assert!(texts[1].contains("Rejected:"), "{}", texts[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_workers_lists_the_servers_background_workers() {
    let server = Server::start("cli-workers", StoreKind::Sqlite).await;
    let out = corral(&server, &["get", "workers", "-o", "json"], None);
    assert!(out.status.success(), "{out:?}");
    let workers: Vec<Value> = serde_json::from_str(&stdout(&out)).expect("json");
    let controller = workers
        .iter()
        .find(|w| w["name"] == "controller")
        .unwrap_or_else(|| panic!("no controller in {workers:?}"));
    assert_eq!(controller["vital"], true);
    assert_eq!(controller["restarts"], 0);
    assert!(
        workers
            .iter()
            .all(|w| w["status"] == "running" || w["status"] == "idle"),
        "{workers:?}"
    );
    let yaml = stdout(&corral(&server, &["get", "workers", "-o", "yaml"], None));
    assert!(yaml.contains("name: committer"), "{yaml}");
    let table = stdout(&corral(&server, &["get", "workers"], None));
    assert!(
        table.starts_with("NAME ") && table.contains("LAST ERROR"),
        "{table}"
    );
    let committer = table
        .lines()
        .find(|l| l.starts_with("committer "))
        .unwrap_or_else(|| panic!("no committer row in {table}"));
    assert_eq!(
        committer.split_whitespace().take(2).collect::<Vec<_>>(),
        ["committer", "yes"],
        "{table}"
    );
}

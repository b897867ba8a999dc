//! Hostile input: every bound answers with its 4xx and the JSON envelope,
//! nothing is stored, the server keeps answering others, and its peak memory
//! stays small throughout.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, StoreKind};

/// The server's peak resident memory so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Asserts a refusal: its status, the envelope's code, and that the message
/// or the field path names `names`.
fn refused(answer: &(u16, Value), status: u16, names: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body:#}");
    let error = &body["error"];
    assert!(error["code"].is_string(), "the JSON envelope: {body:#}");
    let text = format!("{} {}", error["message"], error["details"]);
    assert!(text.contains(names), "{names:?} is named in {body:#}");
}

fn pipeline_with_steps(n: usize, selector: impl Fn(usize) -> String) -> String {
    let steps: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("s{i}"), "run": "true", "pool": selector(i)}))
        .collect();
    json!({"kind": "Pipeline", "name": "big", "tenant": "acme", "steps": steps}).to_string()
}

const CLUSTER: &str = r#"
kind: Pool
name: local2
capacity: {cpu: 2, memory: 2Gi}
---
kind: Tenant
name: acme
quota: {cpu: 2}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_its_refusal_and_the_server_stays_small() {
    let server = Server::start("hostile", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    let json_type = Some("application/json");
    let token = server.admin_token.clone();
    let send = |method: &'static str, path: &str, body: String| {
        let server = &server;
        let token = token.clone();
        let path = path.to_string();
        async move {
            server
                .send_as(&token, method, &path, &body, json_type)
                .await
        }
    };

    // A body over the limit (1 MiB by default).
    let huge = format!(
        "{{\"kind\": \"Pipeline\", \"name\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    refused(&send("POST", "/api/v1/runs", huge).await, 413, "body");

    // More steps than a pipeline may have, with a linear cost to refuse.
    let many = pipeline_with_steps(1001, |_| "local".into());
    refused(&send("POST", "/api/v1/runs", many).await, 400, "1000");
    // The most steps allowed, as a chain, is taken (and cancelled).
    let chain: Vec<Value> = (0..1000)
        .map(|i| {
            let needs: Vec<String> = (i > 0).then(|| format!("s{}", i - 1)).into_iter().collect();
            json!({"name": format!("s{i}"), "run": "true", "needs": needs,
                "resources": {"cpu": "100m", "memory": "16Mi"}})
        })
        .collect();
    let chain = json!({"kind": "Pipeline", "name": "chain", "tenant": "acme", "steps": chain});
    let (status, run) = send("POST", "/api/v1/runs", chain.to_string()).await;
    assert_eq!(status, 201, "{run:#}");
    let chain_id = run["id"].as_i64().expect("id");
    let (status, cancelled) = send(
        "POST",
        &format!("/api/v1/runs/{chain_id}/cancel"),
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{cancelled:#}");
    // As many pool selectors as steps.
    let selectors = pipeline_with_steps(400, |i| format!("pool-{i}"));
    refused(
        &send("POST", "/api/v1/runs", selectors).await,
        400,
        "selector",
    );

    // NUL bytes and an environment exec would refuse.
    let nul_run = json!({"kind": "Pipeline", "name": "nul", "tenant": "acme",
        "steps": [{"name": "a", "run": "echo \u{0}oops"}]});
    refused(
        &send("POST", "/api/v1/runs", nul_run.to_string()).await,
        400,
        "steps[0].run",
    );
    let nul_env = json!({"kind": "Pipeline", "name": "nul", "tenant": "acme",
        "steps": [{"name": "a", "run": "true", "env": {"K": "v\u{0}"}}]});
    refused(
        &send("POST", "/api/v1/runs", nul_env.to_string()).await,
        400,
        "steps[0].env.K",
    );
    let big_env = json!({"kind": "Pipeline", "name": "env", "tenant": "acme",
        "steps": [{"name": "a", "run": "true", "env": {"K": "v".repeat(300 * 1024)}}]});
    refused(
        &send("POST", "/api/v1/runs", big_env.to_string()).await,
        400,
        "env",
    );
    let nul_label = json!({"kind": "Pool", "name": "nul", "capacity": {"cpu": 1, "memory": "1Gi"},
        "labels": {"tier": "a\u{0}b"}});
    refused(
        &send("POST", "/api/v1/pools", nul_label.to_string()).await,
        400,
        "labels.tier",
    );

    // YAML alias bombs and deep nesting.
    let bomb = "kind: Pipeline\na: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
    let (status, body) = server
        .send_as(
            &token,
            "POST",
            "/api/v1/runs",
            bomb,
            Some("application/yaml"),
        )
        .await;
    assert_eq!(status, 400, "{body:#}");
    let deep_yaml = format!(
        "kind: Pipeline\nx: {}{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (status, body) = server
        .send_as(
            &token,
            "POST",
            "/api/v1/runs",
            &deep_yaml,
            Some("application/yaml"),
        )
        .await;
    assert_eq!(status, 400, "{body:#}");
    let deep_json = format!(
        "{{\"kind\": \"Pipeline\", \"x\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (status, body) = server
        .send_as(&token, "POST", "/api/v1/runs", &deep_json, json_type)
        .await;
    assert_eq!(status, 400, "{body:#}");

    // An agent may not declare more than the server's (or its pool's) bound.
    let agent = |cpu_millis: u64| {
        json!({"pool": "local2", "name": "greedy",
            "capacity": {"cpu_millis": cpu_millis, "memory_mib": 1024, "gpu": 0}})
        .to_string()
    };
    refused(
        &send("POST", "/api/v1/agents/register", agent(i64::MAX as u64)).await,
        400,
        "capacity.cpu",
    );
    let (status, registered) = send("POST", "/api/v1/agents/register", agent(1000)).await;
    assert_eq!(status, 200, "{registered:#}");
    let worker = registered["worker_id"].as_i64().expect("worker id");
    let secret = registered["worker_secret"].as_str().expect("secret");
    // A chunk of output over the limit (256 KiB by default).
    let chunk = json!({"offset": 0, "data": "x".repeat(300 * 1024)}).to_string();
    let (status, body) = server
        .send_as(
            secret,
            "POST",
            &format!("/api/v1/agents/{worker}/attempts/1/logs"),
            &chunk,
            json_type,
        )
        .await;
    refused(&(status, body), 400, "data");

    // Nothing refused was stored, and the server still answers.
    let runs: Vec<Value> = server.get("/api/v1/runs").await;
    let ids: Vec<i64> = runs.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(ids, vec![chain_id], "only the chain was stored: {runs:#?}");
    let peak = peak_rss_kib(server.pid());
    assert!(
        peak < 200 * 1024,
        "the server's peak memory stayed under 200 MiB: {peak} KiB"
    );
}

/// The longest allowed pool name works end to end: the local provider's
/// worker names, work dirs and environment all hold.
#[tokio::test(flavor = "multi_thread")]
async fn a_pool_with_the_longest_name_runs_pipelines() {
    let server = Server::start("longname", StoreKind::Sqlite).await;
    let pool = format!("p{}", "o".repeat(62));
    server
        .apply(&format!(
            "kind: Pool\nname: {pool}\ncapacity: {{cpu: 1, memory: 1Gi}}\nlabels: {{tier: a-b.c_d}}\n\
             ---\nkind: Tenant\nname: longest\nquota: {{cpu: 1}}\n"
        ))
        .await;
    let run = server
        .submit(&format!(
            "kind: Pipeline\nname: long\ntenant: longest\nsteps:\n  - name: hello\n    run: echo on $CORRAL_TENANT\n    pool: {pool}\n    resources: {{cpu: 500m, memory: 128Mi}}\n"
        ))
        .await;
    let id = run["id"].as_i64().expect("id");
    let ended = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}\n{}", server.log());
    let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
    assert_eq!(logs, "hello | on longest\n");
}

/// A 64 MiB log is read as a stream: the read adds little to the server's
/// memory; output past the cap is cut with a marker and the step goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_log_is_cut_at_the_cap_and_streamed() {
    let server = Server::start("hugelog", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    // 70 MiB of 1 KiB lines, then a line after the cap.
    let run = server
        .submit(
            "kind: Pipeline\nname: loud\ntenant: acme\nsteps:\n  - name: loud\n    run: \"yes $(head -c 1023 /dev/zero | tr '\\\\0' a) | head -n 71680; echo still running\"\n    resources: {cpu: 500m, memory: 128Mi}\n",
        )
        .await;
    let id = run["id"].as_i64().expect("id");
    let ended = server.wait_run_ended(id, Duration::from_secs(240)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");

    let pid = server.pid();
    // Resets the peak (VmHWM) to the current size, so the read's own peak shows.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak");
    let before = status_kib(pid, "VmRSS:");
    let response = crate::harness::http_client(None)
        .get(format!("{}/api/v1/runs/{id}/logs?step=loud", server.url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("logs");
    assert_eq!(response.status(), 200);
    let mut response = response;
    let (mut bytes, mut tail) = (0usize, Vec::new());
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        bytes += chunk.len();
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(4096);
        tail.drain(..keep);
    }
    let grown = peak_rss_kib(pid).saturating_sub(before);
    println!("64 MiB log read: {bytes} bytes, server peak grew by {grown} KiB");
    assert!(
        grown < 50 * 1024,
        "a 64 MiB read adds under 50 MiB: {grown} KiB"
    );
    let cap = 64 << 20;
    assert!(
        (cap..cap + 4096).contains(&bytes),
        "the output is cut at 64 MiB: {bytes} bytes"
    );
    let tail = String::from_utf8_lossy(&tail);
    let last = &tail[tail.len().saturating_sub(200)..];
    assert!(tail.contains("output cut"), "a marker line ends it: {last}");
    assert!(
        !tail.contains("still running"),
        "nothing after the cap is kept"
    );
}

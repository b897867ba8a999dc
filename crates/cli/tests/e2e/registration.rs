//! Registration that cannot storm: a second agent from one work directory is
//! refused and exits, instead of taking the first one's place again and
//! again; and every field an agent sends is bounded.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Server, StoreKind, eventually};

/// The value of the sample `name` (with its labels) in `/metrics`, 0 when the
/// counter has not been counted yet.
pub async fn metric(server: &Server, name: &str) -> f64 {
    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_from_one_work_dir_is_refused_and_exits() {
    let mut server = Server::start("one-work-dir", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: edge\nprovider: static\n---\nkind: Tenant\nname: t\n")
        .await;
    let mut first = server.start_agent("edge", "box", "2", "2Gi").await;
    eventually(
        "the first agent to join",
        Duration::from_secs(20),
        || async {
            let pool: Value = server.get("/api/v1/pools/edge").await;
            (pool["agents"] == 1).then_some(())
        },
    )
    .await;
    let token = server
        .create_token("agent-box-again", "agent", Some(("pool", "edge")))
        .await;
    let work_dir = first.work_dir.clone();
    let token_file = server.data_dir.join("agent-box-again.token");
    std::fs::write(&token_file, &token).expect("the token file");
    let second = tokio::process::Command::new(BIN)
        .args([
            "agent",
            "--server",
            &server.url,
            "--pool",
            "edge",
            "--name",
            "box",
        ])
        .args(["--cpu", "2", "--memory", "2Gi"])
        .arg("--work-dir")
        .arg(&work_dir)
        .arg("--token-file")
        .arg(&token_file)
        .env_remove("CORRAL_TOKEN")
        .env("CORRAL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the second agent");
    let ended = tokio::time::timeout(Duration::from_secs(5), second.wait_with_output())
        .await
        .expect("the second agent exits within 5 s")
        .expect("the second agent's status");
    assert!(
        !ended.status.success(),
        "the second agent exits with an error"
    );
    let said = String::from_utf8_lossy(&ended.stderr);
    assert!(
        said.contains("another agent") && said.contains(&*work_dir.to_string_lossy()),
        "the refusal names the work directory: {said}"
    );
    // Had the two taken each other's place, registrations would pile up by
    // the hundred a second; the first agent's one is the only one.
    let run = server
        .submit("kind: Pipeline\nname: p\ntenant: t\nsteps:\n  - {name: s, run: 'echo ran', pool: edge, resources: {cpu: 1, memory: 1Gi}}\n")
        .await;
    let id = run["id"].as_i64().expect("run id");
    let ended = server.wait_run_ended(id, Duration::from_secs(30)).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let registrations = metric(&server, "corral_agent_registrations_total{pool=\"edge\"}").await;
    assert!(
        (1.0..10.0).contains(&registrations),
        "{registrations} registrations"
    );
    let pool: Value = server.get("/api/v1/pools/edge").await;
    assert_eq!(pool["agents"], 1, "{pool}");
    first.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_of_a_registration_is_bounded_and_named() {
    let server = Server::start("agent-fields", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: edge\nprovider: static\n")
        .await;
    let token = server
        .create_token("agent-edge", "agent", Some(("pool", "edge")))
        .await;
    let valid = json!({
        "pool": "edge", "name": "a", "instance": "17f3-42", "incarnation": "0f0f",
        "capacity": {"cpu_millis": 1000, "memory_mib": 1024, "gpu": 0},
        "labels": {"os": "linux"},
    });
    let long = "x".repeat(200_000);
    let many: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (field, value, bound) in [
        ("instance", json!(long), "at most 128"),
        ("incarnation", json!(long), "at most 128"),
        ("name", json!(long), "at most 63"),
        ("pool", json!(long), "at most 63"),
        ("labels", json!(many), "at most 64"),
    ] {
        let mut body = valid.clone();
        body[field] = value;
        let (status, answer) = server
            .send_as(
                &token,
                "POST",
                "/api/v1/agents/register",
                &body.to_string(),
                Some("application/json"),
            )
            .await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["error"]["details"]["path"], field, "{answer}");
        let message = answer["error"]["message"].as_str().expect("a message");
        assert!(message.contains(bound), "{field}: {message}");
        assert!(
            message.len() < 300,
            "{field}: the value is not echoed whole"
        );
    }
    let (status, answer) = server
        .send_as(
            &token,
            "POST",
            "/api/v1/agents/register",
            &valid.to_string(),
            Some("application/json"),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

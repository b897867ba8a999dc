//! The per-run output cap: a run's steps together store at most
//! `--max-run-output` bytes, then one marker line; the steps go on and the run
//! ends as its steps do. The count survives a restart of the server.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Server, StoreKind, eventually};

/// The run's cap in the tests, set with the flag.
const CAP: usize = 64 * 1024;
/// What each step prints: more than half the cap.
const PRINTED: usize = 40 * 1024;
const MARKER: &str = "[corral: the run's output was cut at 64.0 KiB; the rest of it is dropped]";

const CLUSTER: &str = "\
kind: Pool
name: local2
capacity: {cpu: 2, memory: 2Gi}
---
kind: Tenant
name: acme
";

/// A step that prints `PRINTED` bytes of lines once `gate` is in its
/// workspace.
fn loud_step(name: &str, needs: &[&str], gate: Option<&str>) -> serde_json::Value {
    let wait = gate.map_or(String::new(), |g| {
        format!("while [ ! -e {g} ]; do sleep 0.1; done; ")
    });
    json!({
        "name": name,
        "needs": needs,
        "run": format!("{wait}yes {name}-output-line | head -c {PRINTED}"),
        "resources": {"cpu": "500m", "memory": "64Mi"},
    })
}

/// The run's stored output, step by step.
async fn stored(server: &Server, id: i64, steps: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for step in steps {
        let (status, text) = server
            .get_text(&format!("/api/v1/runs/{id}/logs?step={step}"))
            .await;
        assert_eq!(status, 200, "{text}");
        out.push(text);
    }
    out
}

/// The stored output of `steps` holds exactly `CAP` bytes of what the steps
/// printed, then the marker line once.
fn cut_at_the_cap(steps: &[&str], logs: &[String]) {
    let all: String = logs.concat();
    assert_eq!(all.matches(MARKER).count(), 1, "one marker line: {logs:?}");
    let mut kept = 0;
    for (step, log) in steps.iter().zip(logs) {
        let printed = log.replace(&format!("\n{MARKER}\n"), "");
        let line = format!("{step}-output-line");
        assert!(
            printed.lines().all(|l| line.starts_with(l)),
            "only what step {step} printed: {printed:?}"
        );
        kept += printed.len();
    }
    assert_eq!(
        kept,
        CAP,
        "the steps' output is kept up to the cap: {:?} bytes",
        logs.iter().map(String::len).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runs_output_stops_at_its_cap_with_one_marker() {
    let cap = CAP.to_string();
    let server =
        Server::start_with("run-output", StoreKind::Sqlite, &["--max-run-output", &cap]).await;
    server.apply(CLUSTER).await;
    let steps = ["a", "b", "c", "d"];
    let pipeline = json!({
        "kind": "Pipeline", "name": "loud", "tenant": "acme",
        "steps": [loud_step("a", &[], None), loud_step("b", &[], None),
            loud_step("c", &["a", "b"], None), loud_step("d", &["c"], None)],
    });
    let id = server.submit(&pipeline.to_string()).await["id"]
        .as_i64()
        .expect("id");
    let ended = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "the steps go on: {ended:#}");
    let logs = stored(&server, id, &steps).await;
    cut_at_the_cap(&steps, &logs);
    assert_eq!(logs[3], "", "nothing of the last step is kept");
    // Another run has a cap of its own.
    let single = json!({
        "kind": "Pipeline", "name": "quiet", "tenant": "acme",
        "steps": [loud_step("a", &[], None)],
    });
    let other = server.submit(&single.to_string()).await["id"]
        .as_i64()
        .expect("id");
    server.wait_run_ended(other, Duration::from_secs(60)).await;
    let logs = stored(&server, other, &["a"]).await;
    assert_eq!(logs[0].len(), PRINTED, "under the cap, all of it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runs_output_count_survives_a_restart_of_the_server() {
    let cap = CAP.to_string();
    let mut server = Server::start_with(
        "run-output-restart",
        StoreKind::Sqlite,
        &["--max-run-output", &cap],
    )
    .await;
    server.apply(CLUSTER).await;
    let pipeline = json!({
        "kind": "Pipeline", "name": "loud", "tenant": "acme",
        "steps": [loud_step("a", &[], None), loud_step("b", &["a"], Some("gate"))],
    });
    let id = server.submit(&pipeline.to_string()).await["id"]
        .as_i64()
        .expect("id");
    eventually(
        "step a's output stored",
        Duration::from_secs(30),
        || async {
            let logs = stored(&server, id, &["a"]).await;
            (logs[0].len() == PRINTED).then_some(())
        },
    )
    .await;
    server.restart().await;
    server.open_gate(id, "gate");
    let ended = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    cut_at_the_cap(&["a", "b"], &stored(&server, id, &["a", "b"]).await);
}

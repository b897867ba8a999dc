//! Terminal escapes in what steps print and agents report reach the terminal
//! neutralised: `corral logs` (followed or not, and `submit --follow`) and
//! `corral describe` show them, `corral logs --raw` passes them as they were.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Server, StoreKind, eventually};

const CLUSTER: &str = "\
kind: Pool
name: local1
capacity: {cpu: 1, memory: 1Gi}
---
kind: Pool
name: metal
provider: static
---
kind: Tenant
name: acme
";

/// What a hostile step prints: a window title (OSC), a colour (CSI), a bidi
/// override and a C1 CSI, then plain text.
const HOSTILE_PRINTF: &str =
    r"printf '\033]0;pwned\007\033[31mred\342\200\256rtl\302\2332J done\n'";
/// How the CLI shows it.
const SHOWN: &str = r"^[]0;pwned^G^[[31mred\u202ertl\u009b2J done";
/// The bytes as the step printed them.
const RAW: &str = "\x1b]0;pwned\x07\x1b[31mred\u{202e}rtl\u{9b}2J done";

fn corral(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CORRAL_SERVER", &server.url)
        .env("CORRAL_TOKEN", &server.admin_token)
        .output()
        .expect("run corral")
}

/// Whether `text` holds anything a terminal would act on: a control
/// character but newline and tab, or a bidi control.
fn actionable(text: &str) -> Option<char> {
    text.chars().find(|&c| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

fn shows_neutralised(what: &str, out: &Output) {
    assert!(out.status.success(), "{what}: {out:?}");
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8 output");
    assert!(!out.stdout.contains(&0x1b), "{what}: no ESC byte: {text:?}");
    assert_eq!(actionable(&text), None, "{what}: {text:?}");
    assert!(text.contains(SHOWN), "{what} shows the escapes: {text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn step_output_reaches_the_terminal_neutralised_unless_raw() {
    let server = Server::start("escapes-logs", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    let pipeline = json!({
        "kind": "Pipeline", "name": "loud", "tenant": "acme",
        "steps": [{"name": "s", "run": HOSTILE_PRINTF, "pool": "local1",
            "resources": {"cpu": "500m", "memory": "128Mi"}}],
    })
    .to_string();
    let id = server.submit(&pipeline).await["id"].as_i64().expect("id");
    let ended = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    let (_, stored) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        stored.contains(RAW),
        "the server keeps the bytes: {stored:?}"
    );

    let id = id.to_string();
    shows_neutralised("logs", &corral(&server, &["logs", &id]));
    shows_neutralised("logs of the step", &corral(&server, &["logs", &id, "s"]));
    shows_neutralised(
        "logs --follow",
        &corral(&server, &["logs", &id, "--follow"]),
    );
    let raw = corral(&server, &["logs", &id, "--raw"]);
    assert!(raw.status.success(), "{raw:?}");
    let raw = String::from_utf8(raw.stdout).expect("utf-8 output");
    assert!(raw.contains(RAW), "--raw keeps the escapes: {raw:?}");

    // Followed while it runs, from `submit --follow`.
    let dir = crate::harness::Scratch::new("escapes-submit");
    let file = dir.join("loud.json");
    std::fs::write(&file, &pipeline).expect("write the pipeline");
    let followed = corral(
        &server,
        &["submit", "--follow", file.to_str().expect("utf-8 path")],
    );
    shows_neutralised("submit --follow", &followed);
}

/// A hostile agent: it takes the step and reports an error full of escapes.
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_error_reaches_the_terminal_neutralised() {
    let server = Server::start("escapes-describe", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    let token = server
        .create_token("metal-agents", "agent", Some(("pool", "metal")))
        .await;
    let (status, registered) = server
        .send_as(
            &token,
            "POST",
            "/api/v1/agents/register",
            &json!({"pool": "metal", "name": "evil", "capacity": {"cpu_millis": 1000, "memory_mib": 1024, "gpu": 0}}).to_string(),
            Some("application/json"),
        )
        .await;
    assert_eq!(status, 200, "{registered}");
    let worker = registered["worker_id"].as_i64().expect("worker id");
    let secret = registered["worker_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let run = server
        .submit(
            "kind: Pipeline\nname: victim\ntenant: acme\nsteps:\n  - {name: s, run: 'true', pool: metal, resources: {cpu: 500m, memory: 128Mi}}\n",
        )
        .await;
    let id = run["id"].as_i64().expect("id");
    let attempt = eventually(
        "the step handed to the agent",
        Duration::from_secs(20),
        || async {
            let (status, polled) = server
                .send_as(
                    &secret,
                    "POST",
                    &format!("/api/v1/agents/{worker}/poll"),
                    &json!({"running": [], "wait_ms": 0}).to_string(),
                    Some("application/json"),
                )
                .await;
            assert_eq!(status, 200, "{polled}");
            polled["assignments"][0]["attempt_id"].as_i64()
        },
    )
    .await;
    let (status, body) = server
        .send_as(
            &secret,
            "POST",
            &format!("/api/v1/agents/{worker}/attempts/{attempt}/report"),
            &json!({"outcome": "failed", "exit_code": 1, "error": RAW}).to_string(),
            Some("application/json"),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let ended = server.wait_run_ended(id, Duration::from_secs(20)).await;
    assert_eq!(ended["state"], "failed", "{ended:#}");
    let stored: Value = ended["steps"][0]["attempts"][0]["error"].clone();
    assert_eq!(stored, RAW, "the server keeps the error as reported");

    let id = id.to_string();
    shows_neutralised("describe", &corral(&server, &["describe", "run", &id]));
    for format in ["json", "yaml"] {
        let out = corral(&server, &["describe", "run", &id, "-o", format]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8 output");
        assert_eq!(actionable(&text), None, "describe -o {format}: {text:?}");
    }
}

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

//! Bulk submission: a `matrix:` or `--count` makes many runs in one request,
//! each admitted under quota like a run submitted alone; matrix values reach
//! the steps; bad matrices are refused with the field's path. And a client
//! command against an `http://` server reads no certificate.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Server, StoreKind, check_history, corral, eventually};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const RUNS: usize = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_matrix_of_10000_runs_is_one_request_and_each_is_admitted_under_quota() {
    let server = Server::start("bulk-matrix", StoreKind::Sqlite).await;
    // The quota (8 runs of 100m at once) binds before the pool does.
    server
        .apply(
            "kind: Pool\nname: array\ncapacity: {cpu: 4, memory: 8Gi}\nmax_workers: 8\n---\nkind: Tenant\nname: bulk\nquota: {cpu: 800m}\nallowed_pools: [array]\n",
        )
        .await;
    let values: Vec<String> = (0..RUNS).map(|i| i.to_string()).collect();
    let pipeline = format!(
        "kind: Pipeline\nname: sweep\ntenant: bulk\nmatrix: {{i: [{}]}}\nsteps:\n  - {{name: s, run: 'true', resources: {{cpu: 100m, memory: 64Mi}}}}\n",
        values.join(", ")
    );
    let answer = server.submit(&pipeline).await;
    let runs = answer["runs"]
        .as_array()
        .expect("the runs of a bulk submit");
    assert_eq!(runs.len(), RUNS);
    let ids: Vec<i64> = runs.iter().map(|r| r["id"].as_i64().expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids in order");
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["state"], "queued", "{run}");
        assert_eq!(run["matrix"]["i"], i.to_string(), "{run}");
    }
    let one = server.run(ids[4_321]).await;
    assert_eq!(one["matrix"]["i"], "4321", "{one:#}");

    let last = server
        .wait_run_ended(ids[RUNS - 1], Duration::from_secs(900))
        .await;
    assert_eq!(last["state"], "succeeded", "{last:#}");
    let ended: Vec<Value> =
        eventually("every run to succeed", Duration::from_secs(120), || async {
            let ended: Vec<Value> = server
                .get("/api/v1/runs?tenant=bulk&state=succeeded&limit=10000")
                .await;
            (ended.len() == RUNS).then_some(ended)
        })
        .await;
    assert_eq!(ended.len(), RUNS);
    let history: Vec<Value> = server
        .get("/api/v1/allocations?tenant=bulk&limit=20000")
        .await;
    // One allocation a run, and one more only for each attempt lost with its
    // worker (its run then waits for a new one): never two at once, never a
    // second admission of a run that kept its worker.
    let mut per_run: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
    for a in &history {
        *per_run
            .entry(a["run_id"].as_i64().expect("run_id"))
            .or_default() += 1;
    }
    assert_eq!(per_run.len(), RUNS, "every run held an allocation");
    for (&id, &allocations) in per_run.iter().filter(|(_, n)| **n > 1) {
        let run = server.run(id).await;
        let lost = run["steps"][0]["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .filter(|a| a["state"] == "lost")
            .count();
        assert_eq!(allocations, 1 + lost, "run {id}: {run:#}");
    }
    let peak = check_history(&history, "bulk", 800, &[("array", 4000)]);
    assert_eq!(peak, 800, "the quota, not something else, was the limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn count_and_matrix_runs_from_the_cli_and_their_steps_see_their_values() {
    let server = Server::start("bulk-count", StoreKind::Sqlite).await;
    server
        .apply(
            "kind: Pool\nname: box\ncapacity: {cpu: 2, memory: 2Gi}\n---\nkind: Tenant\nname: t\n",
        )
        .await;
    let dir = server.data_dir.join("pipelines");
    std::fs::create_dir_all(&dir).expect("a directory");
    let plain = dir.join("plain.yaml");
    std::fs::write(
        &plain,
        "kind: Pipeline\nname: plain\ntenant: t\nsteps:\n  - {name: s, run: 'echo plain', resources: {cpu: 100m, memory: 64Mi}}\n",
    )
    .expect("write");
    let out = corral(
        &server,
        &["submit", &plain.display().to_string(), "--count", "3"],
    );
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<i64> = stdout(&out)
        .lines()
        .map(|l| l.parse().expect("an id a line"))
        .collect();
    assert_eq!(ids.len(), 3, "{out:?}");
    for id in &ids {
        let run = server.wait_run_ended(*id, Duration::from_secs(60)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
        assert_eq!(run["pipeline"], "plain");
        assert!(run.get("matrix").is_none(), "{run:#}");
    }
    // Without --count a plain pipeline answers its run, as it always did.
    let out = corral(&server, &["submit", &plain.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).lines().count(), 1);

    let matrix = dir.join("matrix.yaml");
    std::fs::write(
        &matrix,
        "kind: Pipeline\nname: grid\ntenant: t\nmatrix: {os: [linux, mac], n: [1, 2]}\nsteps:\n  - {name: s, run: 'echo \"os=$CORRAL_MATRIX_OS n=$CORRAL_MATRIX_N\"', resources: {cpu: 100m, memory: 64Mi}}\n",
    )
    .expect("write");
    let out = corral(
        &server,
        &["submit", &matrix.display().to_string(), "--count", "2"],
    );
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<i64> = stdout(&out)
        .lines()
        .map(|l| l.parse().expect("an id a line"))
        .collect();
    assert_eq!(ids.len(), 8, "2 x 2 combinations, twice each: {out:?}");
    // The first axis by name (n) varies slowest; each combination twice.
    let expected = [
        ("1", "linux"),
        ("1", "linux"),
        ("1", "mac"),
        ("1", "mac"),
        ("2", "linux"),
        ("2", "linux"),
        ("2", "mac"),
        ("2", "mac"),
    ];
    for (id, (n, os)) in ids.iter().zip(expected) {
        let run = server.wait_run_ended(*id, Duration::from_secs(60)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
        assert_eq!(run["matrix"]["os"], os, "{run:#}");
        assert_eq!(run["matrix"]["n"], n, "{run:#}");
        let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
        assert!(logs.contains(&format!("os={os} n={n}")), "{logs}");
    }
    let out = corral(&server, &["describe", "run", &ids[7].to_string()]);
    assert!(stdout(&out).contains("Matrix:    n=2, os=mac"), "{out:?}");

    // A matrix without --count answers the list too.
    let out = corral(&server, &["submit", &matrix.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).lines().count(), 4, "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bulk_submits_are_refused_with_the_field_and_store_nothing() {
    let server = Server::start("bulk-bad", StoreKind::Sqlite).await;
    server.apply("kind: Tenant\nname: t\n").await;
    let doc = |matrix: &str| {
        format!(
            "kind: Pipeline\nname: p\ntenant: t\nmatrix: {matrix}\nsteps:\n  - {{name: s, run: 'true'}}\n"
        )
    };
    let big: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let cases = [
        (doc("{os: [linux, mac, linux]}"), "", "matrix.os[2]"),
        (doc("{os: [linux, 1.5]}"), "", "matrix.os[1]"),
        (doc("{os: linux}"), "", "matrix.os"),
        (doc("{os: []}"), "", "matrix.os"),
        (doc("{'my-os': [a]}"), "", "matrix.my-os"),
        (
            doc(&format!("{{a: [{0}], b: [{0}]}}", big.join(", "))),
            "",
            "matrix",
        ),
        (doc("{a: [1, 2]}"), "?count=5001", "count"),
        (doc("{a: [1]}"), "?count=0", "count"),
        (doc("{a: [1]}"), "?count=many", "count"),
        (doc("{a: [1]}"), "?copies=2", "copies"),
    ];
    for (body, query, path) in cases {
        let (status, answer) = server
            .send("POST", &format!("/api/v1/runs{query}"), &body)
            .await;
        assert_eq!(status, 400, "{body}{query}: {answer}");
        assert_eq!(
            answer["error"]["details"]["path"], path,
            "{body}{query}: {answer}"
        );
    }
    let runs: Vec<Value> = server.get("/api/v1/runs").await;
    assert!(runs.is_empty(), "nothing stored: {runs:?}");
    // The CLI bounds --count before it asks.
    let out = corral(&server, &["submit", "-", "--count", "0"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_command_reads_no_certificate() {
    let server = Server::start("bulk-plain", StoreKind::Sqlite).await;
    assert!(server.url.starts_with("http://"));
    // Certificates would come from here, and there are none: a client that
    // loaded them would fail to start.
    let nowhere = server.data_dir.join("no-such-certs");
    let run = |url: &str| {
        Command::new(BIN)
            .args(["get", "pools", "-o", "json"])
            .env("CORRAL_SERVER", url)
            .env("CORRAL_TOKEN", &server.admin_token)
            .env("SSL_CERT_DIR", &nowhere)
            .env("SSL_CERT_FILE", nowhere.join("ca.pem"))
            .env_remove("CORRAL_CA_CERT")
            .output()
            .expect("run corral")
    };
    let out = run(&server.url);
    assert!(out.status.success(), "{out:?}");
    let pools: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(pools.iter().any(|p| p["name"] == "local"), "{pools:?}");
    // The same over https loads them, and says so.
    let https = server.url.replacen("http://", "https://", 1);
    let out = run(&https);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificates"), "{stderr}");
}

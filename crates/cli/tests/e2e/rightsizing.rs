//! Used against requested: each attempt carries what its agent measured, the
//! usage report sets it against what was allocated, and a pipeline that asks
//! for far more than it uses gets a smaller recommendation with a saving.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind};

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_that_asks_much_and_sleeps_is_recommended_little_with_a_saving() {
    let server = Server::start("rightsizing", StoreKind::Sqlite).await;
    server
        .apply(
            "kind: Pool\nname: roomy\ncapacity: {cpu: 4, memory: 4Gi}\nprice: {cpu_hour: 1, memory_gib_hour: 0.5}\n---\nkind: Tenant\nname: lazy\n",
        )
        .await;
    let nap = "kind: Pipeline\nname: nap\ntenant: lazy\nsteps:\n  - {name: doze, run: 'sleep 1', pool: roomy, resources: {cpu: 2, memory: 1Gi}}\n";
    let mut last = 0;
    for _ in 0..5 {
        let id = server.submit(nap).await["id"].as_i64().expect("id");
        let ended = server.wait_run_ended(id, Duration::from_secs(60)).await;
        assert_eq!(ended["state"], "succeeded", "{ended:#}");
        last = id;
    }
    // Each attempt says what it really used: a sleep uses next to no cpu.
    let run = server.run(last).await;
    let usage = &run["steps"][0]["attempts"][0]["usage"];
    let cpu = usage["cpu_seconds"].as_f64().expect("measured cpu");
    assert!(cpu < 0.1, "a sleep used {cpu} cpu-seconds: {run:#}");
    let peak = usage["memory_peak_bytes"].as_u64().expect("measured peak");
    assert!(peak > 0 && peak < 64 << 20, "{usage}");

    let rec: Value = server
        .get("/api/v1/pipelines/nap/recommendation?tenant=lazy")
        .await;
    let step = &rec["steps"][0];
    assert_eq!(step["step"], "doze", "{rec:#}");
    assert_eq!(step["samples"], 5, "{rec:#}");
    assert_eq!(step["current"]["cpu_millis"], 2000, "{rec:#}");
    let cpu = step["recommended"]["cpu_millis"].as_u64().expect("cpu");
    let memory = step["recommended"]["memory_mib"].as_u64().expect("memory");
    assert!(cpu <= 500 && memory <= 256, "{rec:#}");
    let saving = rec["monthly_saving"].as_f64().expect("saving");
    assert!(saving > 0.0, "{rec:#}");

    // The usage report puts used next to allocated.
    let report: Value = server.get("/api/v1/usage?by=pipeline").await;
    let row = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["key"]["pipeline"] == "nap")
        .unwrap_or_else(|| panic!("a row for nap: {report:#}"));
    let allocated = row["usage"]["cpu_core_seconds"]
        .as_f64()
        .expect("allocated");
    let used = row["used"]["cpu_core_seconds"].as_f64().expect("used");
    assert!(
        allocated >= 10.0,
        "5 runs of 2 cores for a second at least: {row:#}"
    );
    assert!(used < 0.5, "{row:#}");
    let efficiency = row["efficiency"]["cpu"].as_f64().expect("cpu efficiency");
    assert!(efficiency < 0.05, "{row:#}");
    let csv = server
        .get_text_accepting("/api/v1/usage?by=pipeline", "text/csv")
        .await
        .1;
    assert!(
        csv.lines()
            .next()
            .is_some_and(|h| h.ends_with("cpu_efficiency,memory_efficiency")),
        "{csv}"
    );

    // The CLI says the same.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["recommend", "nap", "--tenant", "lazy"])
        .env("CORRAL_SERVER", &server.url)
        .env("CORRAL_TOKEN", &server.admin_token)
        .output()
        .expect("corral runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("RECOMMENDED") && text.contains("doze"),
        "{text}"
    );
    // Nothing measured yet is said so, not made up.
    let (status, _) = server
        .get_text("/api/v1/pipelines/never-ran/recommendation?tenant=lazy")
        .await;
    assert_eq!(status, 404);
}

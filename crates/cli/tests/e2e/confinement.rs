//! Confined steps end to end, as a tenant runs hostile code. On a local pool
//! and on a static pool, no agent holds a credential in its environment or
//! command line; a step that tries to read the server's admin token and
//! store, every process's environment and command line, another running
//! attempt's workspace, to write into the data directory and to signal its
//! agent, gets none of it; and no string it printed in the form of a corral
//! secret opens the API. A step over its memory limit fails, saying so, while
//! its neighbour runs on. (The tests run as root, as agents that confine their
//! steps do.)

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, StoreKind, descendants, eventually, secrets_in};

/// What a hostile step tries; each line that works says `ESCAPED`. What it
/// reads, it prints, for the test to look for secrets in.
const BATTERY: &str = r#"
escaped() { echo "ESCAPED: $*"; }
for f in $FILES; do cat "$f" && escaped reading "$f"; done
ls "$DATA" && escaped listing the data dir
touch "$DATA/pwned" && escaped writing into the data dir
cat "$OTHER/secret" && escaped reading another attempt\'s workspace
ls "$OTHER" && escaped listing another attempt\'s workspace
for a in $AGENTS; do kill -0 "$a" && escaped signalling agent "$a"; done
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do echo "== $f"; tr '\0' '\n' < "$f"; echo; done
echo battery done
"#;

/// The files of the server's data directory (the admin token, the store, the
/// logs), but for the workspaces, where steps belong.
fn data_files(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut next = vec![dir.to_path_buf()];
    while let Some(dir) = next.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "workspaces") {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => next.push(path),
                Ok(t) if t.is_file() => files.push(path.display().to_string()),
                _ => {}
            }
        }
    }
    files
}

/// Runs the battery as tenant `t` on `pool`, beside another of the tenant's
/// attempts that holds a secret in its workspace; `agents` are the pids of
/// the agents its steps may run on.
async fn battery(server: &Server, pool: &str, agents: impl Fn() -> Vec<i32>) {
    let tenant = server
        .create_token("hostile", "tenant", Some(("tenant", "t")))
        .await;
    let submit = async |pipeline: Value| {
        let (status, run) = server
            .send_as(
                &tenant,
                "POST",
                "/api/v1/runs",
                &pipeline.to_string(),
                Some("application/json"),
            )
            .await;
        assert_eq!(status, 201, "{run}");
        run["id"].as_i64().expect("id")
    };
    let step = |name: &str, run: &str, env: Value| {
        json!({"kind": "Pipeline", "name": name, "tenant": "t", "steps": [{
            "name": "s", "pool": pool, "run": run, "env": env,
            "resources": {"cpu": "500m", "memory": "256Mi"},
        }]})
    };
    let nonce = format!("other-secret-{}", std::process::id());
    let holder = submit(step(
        "holder",
        "echo \"$NONCE\" > secret; echo held; while [ ! -e go ]; do sleep 0.1; done",
        json!({"NONCE": nonce}),
    ))
    .await;
    server
        .wait_for_output(holder, "held", Duration::from_secs(30))
        .await;
    let other = server.workspaces(holder);
    let other = other.first().expect("the holder's workspace");
    let pids = agents();
    assert!(!pids.is_empty(), "the agents run");
    // The API says how each live agent of the pool confines its steps.
    let listed: Value = server.get(&format!("/api/v1/pools/{pool}")).await;
    let live = listed["live_agents"].as_array().expect("live agents");
    assert!(!live.is_empty(), "{listed:#}");
    for agent in live {
        assert_eq!(agent["confinement"]["namespaces"], true, "{listed:#}");
        assert_ne!(agent["confinement"]["cgroup"], "none", "{listed:#}");
    }
    // No credential in what the host's processes may read of the agents and
    // of what runs below them (their supervisors, the holder's step).
    for pid in pids
        .iter()
        .flat_map(|&a| std::iter::once(a).chain(descendants(a)))
    {
        for file in ["environ", "cmdline"] {
            let text = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
            let found = secrets_in(&String::from_utf8_lossy(&text));
            assert!(found.is_empty(), "/proc/{pid}/{file} holds {found:?}");
        }
    }
    let agents: Vec<String> = pids.iter().map(i32::to_string).collect();
    let files = data_files(&server.data_dir);
    assert!(
        files.iter().any(|f| f.ends_with("/admin.token")),
        "{files:?}"
    );
    let env = json!({
        "DATA": server.data_dir.display().to_string(),
        "OTHER": other.display().to_string(),
        "AGENTS": agents.join(" "),
        "FILES": files.join(" "),
    });
    let hostile = submit(step("hostile", BATTERY, env)).await;
    let ended = server
        .wait_run_ended(hostile, Duration::from_secs(60))
        .await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{hostile}/logs"))
        .await;
    assert!(logs.contains("battery done"), "{logs}");
    assert!(
        logs.contains("CORRAL_RUN_ID="),
        "it read its own environment at least: {logs}"
    );
    let escapes: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("ESCAPED: "))
        .collect();
    assert!(escapes.is_empty(), "{escapes:#?}");
    assert!(
        !logs.contains(&server.admin_token),
        "the admin token leaked"
    );
    assert!(!logs.contains(&nonce), "the other attempt's secret leaked");
    assert!(!server.data_dir.join("pwned").exists());

    // Whatever it printed in the form of a secret opens nothing.
    assert_eq!(
        secrets_in(&format!("a {} b", server.admin_token)),
        std::slice::from_ref(&server.admin_token),
        "a secret in the text is found"
    );
    let found = secrets_in(&logs);
    println!(
        "{pool}: {} strings in the form of a secret printed",
        found.len()
    );
    for secret in &found {
        let (status, body) = server
            .send_as(secret, "GET", "/api/v1/tokens", "", None)
            .await;
        assert!(
            !(200..300).contains(&status),
            "{secret} lists tokens: {body}"
        );
        let agent = json!({"pool": "metal", "name": "stolen",
            "capacity": {"cpu_millis": 1000, "memory_mib": 1024, "gpu": 0}});
        let (status, body) = server
            .send_as(
                secret,
                "POST",
                "/api/v1/agents/register",
                &agent.to_string(),
                Some("application/json"),
            )
            .await;
        assert!(!(200..300).contains(&status), "{secret} registers: {body}");
    }

    server.open_gate(holder, "go");
    let held = server.wait_run_ended(holder, Duration::from_secs(30)).await;
    assert_eq!(held["state"], "succeeded", "{held:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_step_on_a_static_pool_reaches_nothing() {
    let mut server = Server::start("confine-static", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: t\n")
        .await;
    let agent = server.start_agent("metal", "box", "4", "4Gi").await;
    eventually("the agent to join", Duration::from_secs(20), || async {
        let pool: Value = server.get("/api/v1/pools/metal").await;
        (pool["agents"] == 1).then_some(())
    })
    .await;
    battery(&server, "metal", || vec![agent.pid()]).await;
    let log = std::fs::read_to_string(&agent.log).expect("the agent's log");
    assert!(
        log.contains("steps are confined") && !log.contains("NOT CONFINED"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_step_on_a_local_pool_reaches_nothing() {
    let server = Server::start("confine-local", StoreKind::Sqlite).await;
    server
        .apply(
            "kind: Pool\nname: work\ncapacity: {cpu: 4, memory: 4Gi}\n---\nkind: Tenant\nname: t\n",
        )
        .await;
    battery(&server, "work", || server.local_agents()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_over_its_memory_limit_fails_and_says_so_beside_a_neighbour() {
    let mut server = Server::start("confine-memory", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: t\n")
        .await;
    let _agent = server.start_agent("metal", "box", "4", "4Gi").await;
    // `tail` holds what it reads until it has ten lines: all of it.
    let pipeline = json!({"kind": "Pipeline", "name": "hungry", "tenant": "t", "steps": [
        {"name": "hog", "pool": "metal", "run": "head -c 512M /dev/zero | tail; echo carried on",
         "resources": {"cpu": "1", "memory": "128Mi"}},
        {"name": "calm", "pool": "metal", "run": "sleep 3; echo calm",
         "resources": {"cpu": "1", "memory": "128Mi"}},
    ]});
    let id = server.submit(&pipeline.to_string()).await["id"]
        .as_i64()
        .expect("id");
    let run = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let why = "exceeded its memory limit 128Mi (peak 128Mi)";
    let hog = &run["steps"][0]["attempts"][0];
    assert_eq!(hog["state"], "failed", "{run:#}");
    assert_eq!(hog["error"], why, "{run:#}");
    let calm = &run["steps"][1]["attempts"][0];
    assert_eq!(calm["state"], "succeeded", "{run:#}");
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{id}/logs?step=hog"))
        .await;
    assert!(logs.contains(&format!("\n[corral: {why}]\n")), "{logs}");
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{id}/logs?step=calm"))
        .await;
    assert_eq!(logs, "calm\n");
}

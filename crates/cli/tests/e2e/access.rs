//! Who may do what, on a real server: every route against every kind of
//! caller, browsers' drive-by requests, the agent protocol's secrets, TLS and
//! the audit log.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use corral_core::access::Access;
use corral_server::api::routes::{RouteSpec, openapi_document, route_table};
use serde_json::{Value, json};

use crate::console_sessions;
use crate::harness::{BIN, Server, StoreKind, eventually};

const CLUSTER: &str = "\
kind: Pool
name: shared
capacity: {cpu: 2, memory: 2Gi}
---
kind: Pool
name: parked
capacity: {cpu: 1, memory: 1Gi}
state: draining
---
kind: Pool
name: metal
provider: static
---
kind: Tenant
name: alpha
---
kind: Tenant
name: beta
";

/// A run of `tenant` that waits forever (its pool is draining).
fn parked_run(tenant: &str) -> String {
    format!(
        "kind: Pipeline\nname: parked\ntenant: {tenant}\nsteps:\n  - {{name: s, run: 'true', pool: parked, resources: {{cpu: 1, memory: 1Gi}}}}\n"
    )
}

/// The callers of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    NoToken,
    Malformed,
    Unknown,
    Expired,
    Revoked,
    TenantA,
    TenantB,
    Viewer,
    Agent,
    Admin,
}

const EVERYONE: [Who; 10] = [
    Who::NoToken,
    Who::Malformed,
    Who::Unknown,
    Who::Expired,
    Who::Revoked,
    Who::TenantA,
    Who::TenantB,
    Who::Viewer,
    Who::Agent,
    Who::Admin,
];

/// What a caller gets: a 2xx answer, 401, 403, or 404 (another tenant's run
/// is not found, exactly as one that does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Unauthorized,
    Forbidden,
    NotFound,
}

/// Whether `path` names one run (its id in the path).
fn run_scoped(path: &str) -> bool {
    path.contains("/runs/{id}")
}

/// Which valid callers a route lets through; the rest of the valid ones get 403.
fn allowed(method: &str, path: &str) -> Option<&'static [Who]> {
    use Who::*;
    const ALL: &[Who] = &[TenantA, TenantB, Viewer, Agent, Admin];
    const READERS: &[Who] = &[TenantA, TenantB, Viewer, Admin];
    const OWNER_READERS: &[Who] = &[TenantA, Viewer, Admin];
    const AUDITORS: &[Who] = &[Viewer, Admin];
    const ADMIN: &[Who] = &[Admin];
    const OWNER: &[Who] = &[TenantA, Admin];
    const REGISTRARS: &[Who] = &[Agent, Admin];
    const NOBODY: &[Who] = &[];
    Some(match (method, path) {
        ("GET", "/healthz" | "/api/v1/openapi.json") => ALL,
        ("POST", "/api/v1/apply") => ADMIN,
        ("GET", "/api/v1/pools" | "/api/v1/pools/{name}") => READERS,
        ("POST", "/api/v1/pools") => ADMIN,
        ("PUT" | "DELETE", "/api/v1/pools/{name}") => ADMIN,
        ("GET", "/api/v1/tenants") => READERS,
        ("GET", "/api/v1/tenants/{name}" | "/api/v1/tenants/{name}/summary") => OWNER_READERS,
        ("POST", "/api/v1/tenants") => ADMIN,
        ("PUT" | "DELETE", "/api/v1/tenants/{name}") => ADMIN,
        ("GET", "/api/v1/runs" | "/api/v1/allocations" | "/api/v1/queue") => READERS,
        ("GET", "/api/v1/usage" | "/api/v1/prices" | "/api/v1/alerts") => READERS,
        ("POST", "/api/v1/runs") => OWNER,
        ("GET", "/api/v1/runs/{id}" | "/api/v1/runs/{id}/logs") => OWNER_READERS,
        ("POST", "/api/v1/runs/{id}/cancel") => OWNER,
        ("GET", "/api/v1/tokens" | "/api/v1/audit") => AUDITORS,
        // The server's own background workers: server-wide, like the audit.
        ("GET", "/api/v1/workers") => AUDITORS,
        ("GET", "/metrics") => AUDITORS,
        ("POST", "/api/v1/tokens") => ADMIN,
        ("DELETE", "/api/v1/tokens/{name}") => ADMIN,
        ("POST", "/api/v1/agents/register") => REGISTRARS,
        // Only a worker's own secret, which no token is.
        ("POST", "/api/v1/agents/{worker}/poll")
        | ("POST", "/api/v1/agents/{worker}/attempts/{attempt}/logs")
        | ("POST", "/api/v1/agents/{worker}/attempts/{attempt}/report") => NOBODY,
        ("GET", "/api/v1/history" | "/api/v1/history/waits") => READERS,
        // Asked for tenant alpha's pipeline.
        ("GET", "/api/v1/pipelines/{name}/recommendation") => OWNER_READERS,
        _ => return None,
    })
}

fn expected(route: &RouteSpec, who: Who) -> Outcome {
    if route.access == Access::Public {
        return Outcome::Ok;
    }
    if matches!(
        who,
        Who::NoToken | Who::Malformed | Who::Unknown | Who::Expired | Who::Revoked
    ) {
        return Outcome::Unauthorized;
    }
    let allowed = allowed(route.method, route.path).expect("checked before");
    if allowed.contains(&who) && route.path == "/api/v1/pipelines/{name}/recommendation" {
        // Let through, and told that nothing of it was measured yet.
        Outcome::NotFound
    } else if allowed.contains(&who) {
        Outcome::Ok
    } else if who == Who::TenantB && run_scoped(route.path) {
        Outcome::NotFound
    } else {
        Outcome::Forbidden
    }
}

struct Matrix {
    server: Server,
    tokens: BTreeMap<Who, String>,
    /// A worker registered for the agent routes, and a run of tenant A.
    worker: i64,
    run: i64,
    fresh: std::cell::Cell<u32>,
}

impl Matrix {
    fn fresh(&self, prefix: &str) -> String {
        self.fresh.set(self.fresh.get() + 1);
        format!("{prefix}-{}", self.fresh.get())
    }

    /// The concrete request for `route`, made so that an allowed caller succeeds:
    /// objects it deletes or cancels are made first, names are fresh.
    async fn request(&self, route: &RouteSpec) -> (String, String, Option<&'static str>) {
        let yaml = Some("application/yaml");
        let jsn = Some("application/json");
        let admin = &self.tokens[&Who::Admin];
        match (route.method, route.path) {
            ("POST", "/api/v1/apply") => ("/api/v1/apply".into(), CLUSTER.into(), yaml),
            ("GET", "/api/v1/pipelines/{name}/recommendation") => (
                "/api/v1/pipelines/parked/recommendation?tenant=alpha".into(),
                String::new(),
                None,
            ),
            ("POST", "/api/v1/pools") => (
                "/api/v1/pools".into(),
                format!(
                    "kind: Pool\nname: {}\ncapacity: {{cpu: 1, memory: 1Gi}}\n",
                    self.fresh("pool")
                ),
                yaml,
            ),
            ("PUT", "/api/v1/pools/{name}") => (
                "/api/v1/pools/shared".into(),
                "kind: Pool\nname: shared\ncapacity: {cpu: 2, memory: 2Gi}\n".into(),
                yaml,
            ),
            ("DELETE", "/api/v1/pools/{name}") => {
                let name = self.fresh("doomed");
                let (status, body) = self
                    .server
                    .send_as(
                        admin,
                        "POST",
                        "/api/v1/pools",
                        &format!("kind: Pool\nname: {name}\ncapacity: {{cpu: 1, memory: 1Gi}}\n"),
                        yaml,
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                (format!("/api/v1/pools/{name}"), String::new(), None)
            }
            ("POST", "/api/v1/tenants") => (
                "/api/v1/tenants".into(),
                format!("kind: Tenant\nname: {}\n", self.fresh("tenant")),
                yaml,
            ),
            ("PUT", "/api/v1/tenants/{name}") => (
                "/api/v1/tenants/alpha".into(),
                "kind: Tenant\nname: alpha\n".into(),
                yaml,
            ),
            ("DELETE", "/api/v1/tenants/{name}") => {
                let name = self.fresh("gone");
                let (status, body) = self
                    .server
                    .send_as(
                        admin,
                        "POST",
                        "/api/v1/tenants",
                        &format!("kind: Tenant\nname: {name}\n"),
                        yaml,
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                (format!("/api/v1/tenants/{name}"), String::new(), None)
            }
            ("POST", "/api/v1/runs") => ("/api/v1/runs".into(), parked_run("alpha"), yaml),
            ("POST", "/api/v1/runs/{id}/cancel") => {
                let (status, run) = self
                    .server
                    .send_as(admin, "POST", "/api/v1/runs", &parked_run("alpha"), yaml)
                    .await;
                assert_eq!(status, 201, "{run}");
                (
                    format!("/api/v1/runs/{}/cancel", run["id"]),
                    String::new(),
                    None,
                )
            }
            ("POST", "/api/v1/tokens") => (
                "/api/v1/tokens".into(),
                json!({"name": self.fresh("tok"), "role": "viewer"}).to_string(),
                jsn,
            ),
            ("DELETE", "/api/v1/tokens/{name}") => {
                let name = self.fresh("short");
                self.server.create_token(&name, "viewer", None).await;
                (format!("/api/v1/tokens/{name}"), String::new(), None)
            }
            ("POST", "/api/v1/agents/register") => (
                "/api/v1/agents/register".into(),
                json!({
                    "pool": "metal",
                    "name": self.fresh("box"),
                    "capacity": {"cpu_millis": 1000, "memory_mib": 1024, "gpu": 0}
                })
                .to_string(),
                jsn,
            ),
            ("POST", "/api/v1/agents/{worker}/poll") => (
                format!("/api/v1/agents/{}/poll", self.worker),
                json!({"running": [], "wait_ms": 0}).to_string(),
                jsn,
            ),
            ("POST", "/api/v1/agents/{worker}/attempts/{attempt}/logs") => (
                format!("/api/v1/agents/{}/attempts/1/logs", self.worker),
                json!({"offset": 0, "data": "forged\n"}).to_string(),
                jsn,
            ),
            ("POST", "/api/v1/agents/{worker}/attempts/{attempt}/report") => (
                format!("/api/v1/agents/{}/attempts/1/report", self.worker),
                json!({"outcome": "succeeded", "exit_code": 0}).to_string(),
                jsn,
            ),
            ("GET", "/api/v1/history") => (
                "/api/v1/history?series=pool.utilization.cpu,tenant.queued_runs".into(),
                String::new(),
                None,
            ),
            (_, path) => (
                path.replace(
                    "{name}",
                    if path.contains("pools") {
                        "shared"
                    } else {
                        "alpha"
                    },
                )
                .replace("{id}", &self.run.to_string()),
                String::new(),
                None,
            ),
        }
    }
}

/// A well-formed token this server never issued.
const UNKNOWN: &str = "corral_00000000000000000000000000000000000000000000000000000000deadbeef";

async fn matrix_server() -> Matrix {
    let server = Server::start("access-matrix", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    let mut tokens = BTreeMap::new();
    tokens.insert(Who::NoToken, String::new());
    tokens.insert(Who::Malformed, "not-a-corral-token".to_string());
    tokens.insert(Who::Unknown, UNKNOWN.to_string());
    tokens.insert(
        Who::TenantA,
        server
            .create_token("team-a", "tenant", Some(("tenant", "alpha")))
            .await,
    );
    tokens.insert(
        Who::TenantB,
        server
            .create_token("team-b", "tenant", Some(("tenant", "beta")))
            .await,
    );
    tokens.insert(
        Who::Viewer,
        server.create_token("dash", "viewer", None).await,
    );
    tokens.insert(
        Who::Agent,
        server
            .create_token("metal-agents", "agent", Some(("pool", "metal")))
            .await,
    );
    tokens.insert(Who::Admin, server.admin_token.clone());
    let revoked = server.create_token("old", "admin", None).await;
    let (status, body) = server.send("DELETE", "/api/v1/tokens/old", "").await;
    assert_eq!(status, 200, "{body}");
    tokens.insert(Who::Revoked, revoked);
    let (status, expiring) = server
        .send_as(
            &server.admin_token,
            "POST",
            "/api/v1/tokens",
            &json!({"name": "brief", "role": "admin", "expires": "1s"}).to_string(),
            Some("application/json"),
        )
        .await;
    assert_eq!(status, 201, "{expiring}");
    tokens.insert(
        Who::Expired,
        expiring["secret"].as_str().expect("secret").to_string(),
    );
    let (status, registered) = server
        .send_as(
            &tokens[&Who::Agent],
            "POST",
            "/api/v1/agents/register",
            &json!({"pool": "metal", "name": "probe", "capacity": {"cpu_millis": 1000, "memory_mib": 1024, "gpu": 0}}).to_string(),
            Some("application/json"),
        )
        .await;
    assert_eq!(status, 200, "{registered}");
    let run = server.submit(&parked_run("alpha")).await["id"]
        .as_i64()
        .expect("id");
    // The expiring token lived one second.
    let expired = tokens[&Who::Expired].clone();
    eventually(
        "the one-second token to expire",
        Duration::from_secs(10),
        || async {
            let (status, _) = server
                .send_as(&expired, "GET", "/api/v1/pools", "", None)
                .await;
            (status == 401).then_some(())
        },
    )
    .await;
    Matrix {
        server,
        tokens,
        worker: registered["worker_id"].as_i64().expect("worker id"),
        run,
        fresh: std::cell::Cell::new(0),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_every_kind_of_caller_as_its_rule_says() {
    let routes = route_table();
    // Every route has an expectation here: a route added without one fails.
    for route in &routes {
        assert!(
            allowed(route.method, route.path).is_some(),
            "route {} {} has no expected access in this test",
            route.method,
            route.path
        );
    }
    // And every route but the two public ones is in the OpenAPI document.
    let doc = serde_json::to_value(openapi_document()).expect("openapi json");
    for route in routes.iter().filter(|r| r.access != Access::Public) {
        let documented = &doc["paths"][route.path][route.method.to_lowercase()];
        assert!(
            documented.is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
    }
    let m = matrix_server().await;
    let mut failures = Vec::new();
    for route in &routes {
        for who in EVERYONE {
            let (path, body, content_type) = m.request(route).await;
            let token = &m.tokens[&who];
            let (status, answer) = m
                .server
                .send_as(token, route.method, &path, &body, content_type)
                .await;
            let got = match status {
                200..=299 => Outcome::Ok,
                401 => Outcome::Unauthorized,
                403 => Outcome::Forbidden,
                404 => Outcome::NotFound,
                _ => {
                    failures.push(format!(
                        "{} {path} as {who:?}: {status} {answer}",
                        route.method
                    ));
                    continue;
                }
            };
            let want = expected(route, who);
            if got != want {
                failures.push(format!(
                    "{} {path} as {who:?}: expected {want:?}, got {status} {answer}",
                    route.method
                ));
            }
            if got == Outcome::Unauthorized {
                assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A tenant's lists hold its own only.
    let beta_run = m
        .server
        .send_as(
            &m.tokens[&Who::TenantB],
            "POST",
            "/api/v1/runs",
            &parked_run("beta").replace("tenant: beta\n", ""),
            Some("application/yaml"),
        )
        .await;
    assert_eq!(beta_run.0, 201, "{}", beta_run.1);
    assert_eq!(
        beta_run.1["tenant"], "beta",
        "a tenant token's run is its tenant's"
    );
    for (who, own) in [(Who::TenantA, "alpha"), (Who::TenantB, "beta")] {
        for list in ["/api/v1/runs", "/api/v1/queue", "/api/v1/allocations"] {
            let (status, items) = m
                .server
                .send_as(&m.tokens[&who], "GET", list, "", None)
                .await;
            assert_eq!(status, 200, "{items}");
            let items = items.as_array().expect("a list");
            assert!(
                items.iter().all(|i| i["tenant"] == own),
                "{who:?} sees others' in {list}: {items:?}"
            );
            if list != "/api/v1/allocations" {
                assert!(!items.is_empty(), "{who:?} sees none of its own in {list}");
            }
        }
        // Usage: its own tenant's rows only, and no idle capacity.
        let (status, usage) = m
            .server
            .send_as(
                &m.tokens[&who],
                "GET",
                "/api/v1/usage?by=tenant,pool",
                "",
                None,
            )
            .await;
        assert_eq!(status, 200, "{usage}");
        let rows = usage["rows"].as_array().expect("rows");
        assert!(
            rows.iter().all(|r| r["key"]["tenant"] == own),
            "{who:?} sees others' usage: {usage}"
        );
        assert_eq!(usage["idle"], serde_json::json!([]), "{usage}");
        let (_, tenants) = m
            .server
            .send_as(&m.tokens[&who], "GET", "/api/v1/tenants", "", None)
            .await;
        let names: Vec<&str> = tenants
            .as_array()
            .expect("tenants")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(names, vec![own]);
        let other = if own == "alpha" { "beta" } else { "alpha" };
        for list in ["/api/v1/runs", "/api/v1/usage"] {
            let (status, _) = m
                .server
                .send_as(
                    &m.tokens[&who],
                    "GET",
                    &format!("{list}?tenant={other}"),
                    "",
                    None,
                )
                .await;
            assert_eq!(status, 403, "{who:?} asked for {other}'s {list}");
        }
    }
    // The viewer sees both tenants' runs.
    let (_, all) = m
        .server
        .send_as(&m.tokens[&Who::Viewer], "GET", "/api/v1/runs", "", None)
        .await;
    let tenants: std::collections::BTreeSet<&str> = all
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["tenant"].as_str())
        .collect();
    assert_eq!(tenants, ["alpha", "beta"].into_iter().collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_drive_by_runs_nothing_and_stores_nothing() {
    let server = Server::start_with(
        "access-driveby",
        StoreKind::Sqlite,
        &["--cors-origin", "https://console.example"],
    )
    .await;
    // What it would leave in its workspace, had it run.
    let pipeline = "kind: Pipeline\nname: pwn\nsteps:\n  - {name: s, run: 'touch pwned'}\n";
    let http = crate::harness::http_client(None);
    let runs_url = format!("{}/api/v1/runs", server.url);
    for token in [None, Some(server.admin_token.as_str())] {
        let mut request = http
            .post(&runs_url)
            .header("content-type", "text/plain")
            .header("origin", "http://evil.example")
            .header("host", "evil.example")
            .body(pipeline);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let answer = request.send().await.expect("answer");
        let status = answer.status().as_u16();
        assert!(
            !answer.headers().contains_key("access-control-allow-origin"),
            "no CORS grant for a foreign origin"
        );
        let body: Value = answer.json().await.expect("json error");
        match token {
            None => assert_eq!(status, 401, "{body}"),
            Some(_) => {
                assert_eq!(status, 415, "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("application/json or application/yaml")),
                    "{body}"
                );
            }
        }
    }
    // A browser's preflight from a foreign origin is not granted; from the
    // configured one it is.
    for (origin, granted) in [
        ("http://evil.example", false),
        ("https://console.example", true),
    ] {
        let answer = http
            .request(reqwest::Method::OPTIONS, &runs_url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .expect("preflight");
        let allow = answer
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or("").to_string());
        assert_eq!(
            allow.as_deref() == Some(origin),
            granted,
            "{origin}: {allow:?}"
        );
    }
    // A proper submit after them runs to its end: by then the controller has
    // seen everything there was, and it is the only run there is.
    let proper = server.submit(&pipeline.replace("pwned", "proper")).await["id"]
        .as_i64()
        .expect("id");
    let ended = server.wait_run_ended(proper, Duration::from_secs(30)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    let workspaces = server.workspaces(proper);
    assert!(
        workspaces.iter().any(|w| w.join("proper").exists()),
        "the proper run ran: {workspaces:?}"
    );
    let runs: Vec<Value> = server.get("/api/v1/runs").await;
    assert_eq!(runs.len(), 1, "nothing of the drive-by stored: {runs:?}");
    let all = std::fs::read_dir(server.data_dir.join("workers/workspaces"))
        .expect("the workspaces")
        .flatten()
        .map(|w| w.path())
        .collect::<Vec<_>>();
    assert_eq!(all, workspaces, "the drive-by ran nothing");
}

/// Registers through the protocol as an agent of `pool`, as an attacker with a
/// valid agent token would; returns the worker id and its secret.
async fn register(server: &Server, token: &str, pool: &str, name: &str) -> (u16, Value) {
    server
        .send_as(
            token,
            "POST",
            "/api/v1/agents/register",
            &json!({"pool": pool, "name": name, "instance": format!("{name}-dir"),
                "capacity": {"cpu_millis": 1000, "memory_mib": 1024, "gpu": 0}})
            .to_string(),
            Some("application/json"),
        )
        .await
}

/// Runs an agent with `token` on its standard input (none: nothing there).
fn run_agent(server: &Server, token: Option<&str>, name: &str) -> std::process::Output {
    let mut agent = Command::new(BIN)
        .args(["agent", "--server", &server.url, "--pool", "metal"])
        .args(["--name", name, "--cpu", "1", "--memory", "1Gi"])
        .args(["--token-file", "-"])
        .arg("--work-dir")
        .arg(server.data_dir.join(format!("refused-{name}")))
        .env_remove("CORRAL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run corral agent");
    let mut stdin = agent.stdin.take().expect("its input");
    if let Some(t) = token {
        std::io::Write::write_all(&mut stdin, format!("{t}\n").as_bytes()).expect("the token");
    }
    drop(stdin);
    agent.wait_with_output().expect("the agent's end")
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_act_only_on_their_own_attempts_and_register_only_with_a_credential() {
    let mut server = Server::start("access-agents", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: t\n")
        .await;
    let _left = server.start_agent("metal", "left", "1", "1Gi").await;
    let _right = server.start_agent("metal", "right", "1", "1Gi").await;
    eventually("both agents to join", Duration::from_secs(20), || async {
        let pool: Value = server.get("/api/v1/pools/metal").await;
        (pool["agents"] == 2).then_some(())
    })
    .await;
    let job = |name: &str| {
        format!(
            "kind: Pipeline\nname: {name}\ntenant: t\nsteps:\n  - {{name: s, run: 'echo {name} started token=[${{CORRAL_TOKEN:-}}]; sleep 3; echo {name} done', pool: metal, resources: {{cpu: 1, memory: 1Gi}}}}\n"
        )
    };
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        ids.push(server.submit(&job(name)).await["id"].as_i64().expect("id"));
    }
    for (id, name) in ids.iter().zip(["one", "two"]) {
        server
            .wait_for_output(*id, &format!("{name} started"), Duration::from_secs(20))
            .await;
    }
    // Both real agents run one attempt each.
    let mut attempts = Vec::new();
    for id in &ids {
        let run = server.run(*id).await;
        let attempt = &run["steps"][0]["attempts"][0];
        attempts.push((
            attempt["id"].as_i64().expect("attempt"),
            attempt["worker_id"].as_i64().expect("worker"),
        ));
    }
    assert_ne!(attempts[0].1, attempts[1].1, "one attempt per agent");

    // A third agent with a valid agent token of the pool...
    let agent_token = server
        .create_token("intruder", "agent", Some(("pool", "metal")))
        .await;
    let (status, me) = register(&server, &agent_token, "metal", "intruder").await;
    assert_eq!(status, 200, "{me}");
    let my_id = me["worker_id"].as_i64().expect("id");
    let my_secret = me["worker_secret"].as_str().expect("secret").to_string();
    let json_ct = Some("application/json");
    for (attempt, worker) in &attempts {
        // ...cannot poll as another worker (its id is no credential),
        let (status, body) = server
            .send_as(
                &my_secret,
                "POST",
                &format!("/api/v1/agents/{worker}/poll"),
                r#"{"running":[],"wait_ms":0}"#,
                json_ct,
            )
            .await;
        assert_eq!(status, 403, "poll as {worker}: {body}");
        for path in [
            format!("/api/v1/agents/{worker}/attempts/{attempt}"),
            format!("/api/v1/agents/{my_id}/attempts/{attempt}"),
        ] {
            // ...nor report its attempt succeeded,
            let (status, body) = server
                .send_as(
                    &my_secret,
                    "POST",
                    &format!("{path}/report"),
                    r#"{"outcome":"succeeded","exit_code":0}"#,
                    json_ct,
                )
                .await;
            assert_eq!(status, 403, "report {path}: {body}");
            // ...nor overwrite its output.
            let (status, body) = server
                .send_as(
                    &my_secret,
                    "POST",
                    &format!("{path}/logs"),
                    r#"{"offset":0,"data":"forged\n"}"#,
                    json_ct,
                )
                .await;
            assert_eq!(status, 403, "log {path}: {body}");
        }
        // Nor can an admin, nor anyone without a secret.
        for token in [server.admin_token.as_str(), ""] {
            let (status, body) = server
                .send_as(
                    token,
                    "POST",
                    &format!("/api/v1/agents/{worker}/attempts/{attempt}/report"),
                    r#"{"outcome":"succeeded","exit_code":0}"#,
                    json_ct,
                )
                .await;
            assert!(matches!(status, 401 | 403), "{status} {body}");
        }
    }
    // The runs end as their real processes do, with their own output only.
    for (id, name) in ids.iter().zip(["one", "two"]) {
        let run = server.wait_run_ended(*id, Duration::from_secs(30)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
        let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
        assert!(logs.contains(&format!("{name} done")), "{logs}");
        assert!(!logs.contains("forged"), "{logs}");
        assert!(
            logs.contains("token=[]"),
            "the agent's token reached its step: {logs}"
        );
    }

    // Registering needs a credential of the pool: none, a tenant's, a revoked
    // agent token and an unknown one are all refused, and no agent joins.
    let tenant_token = server
        .create_token("team", "tenant", Some(("tenant", "t")))
        .await;
    let revoked = server
        .create_token("retired-agents", "agent", Some(("pool", "metal")))
        .await;
    let (status, body) = server
        .send("DELETE", "/api/v1/tokens/retired-agents", "")
        .await;
    assert_eq!(status, 200, "{body}");
    for (token, why) in [
        (None, "no token"),
        (Some(tenant_token.as_str()), "may not do this"),
        (Some(revoked.as_str()), "revoked"),
        (Some(UNKNOWN), "not known"),
    ] {
        let out = run_agent(&server, token, "sneaky");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{why}: the agent must not run: {stderr}"
        );
        assert!(stderr.contains(why), "{why}: {stderr}");
    }
    let (status, _) = register(&server, &revoked, "metal", "sneaky").await;
    assert_eq!(status, 401);
    let pool: Value = server.get("/api/v1/pools/metal").await;
    assert_eq!(pool["agents"], 3, "left, right and the intruder: {pool}");
    // An agent token joins its own pool only.
    let (status, body) = register(&server, &agent_token, "local", "elsewhere").await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_keep_their_identity_across_a_server_kill() {
    let mut server = Server::start("access-restart", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: t\n")
        .await;
    let token = server
        .create_token("metal-agents", "agent", Some(("pool", "metal")))
        .await;
    let first_dir = server.data_dir.join("box-here");
    let _first = server.start_agent_with("metal", "box", "1", "1Gi", &first_dir, &token);
    eventually("the agent to join", Duration::from_secs(20), || async {
        let pool: Value = server.get("/api/v1/pools/metal").await;
        (pool["agents"] == 1).then_some(())
    })
    .await;
    // A local step and a static step are running when the server is killed.
    let local = server
        .submit("kind: Pipeline\nname: loc\nsteps:\n  - {name: s, run: 'echo before token=[${CORRAL_TOKEN:-}]; sleep 4; echo after'}\n")
        .await["id"]
        .as_i64()
        .expect("id");
    let remote = server
        .submit("kind: Pipeline\nname: rem\ntenant: t\nsteps:\n  - {name: s, run: 'echo before token=[${CORRAL_TOKEN:-}]; sleep 4; echo after', pool: metal, resources: {cpu: 1, memory: 1Gi}}\n")
        .await["id"]
        .as_i64()
        .expect("id");
    for id in [local, remote] {
        server
            .wait_for_output(id, "before", Duration::from_secs(20))
            .await;
    }
    server.restart().await;
    // A namesake from another work directory is refused while the first lives.
    let mut namesake = server.start_agent_with(
        "metal",
        "box",
        "1",
        "1Gi",
        &server.data_dir.join("box-elsewhere"),
        &token,
    );
    let code = namesake.exited(Duration::from_secs(20)).await;
    assert_ne!(code, 0);
    let log = std::fs::read_to_string(&namesake.log).expect("namesake log");
    assert!(log.contains("already live"), "{log}");
    // Both steps finish on the agents that started them, whose secrets the
    // restarted server still knows.
    for id in [local, remote] {
        let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}\n{}", server.log());
        let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
        assert!(logs.contains("after"), "{logs}");
        assert!(
            logs.contains("token=[]"),
            "an agent's credential reached its step: {logs}"
        );
        assert_eq!(
            run["steps"][0]["attempts"].as_array().map(Vec::len),
            Some(1)
        );
    }
    let pool: Value = server.get("/api/v1/pools/metal").await;
    assert_eq!(pool["agents"], 1, "{pool}");
}

fn corral(server: &Server, args: &[&str], ca: bool) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("CORRAL_SERVER", &server.url)
        .env("CORRAL_TOKEN", &server.admin_token);
    if ca {
        cmd.env(
            "CORRAL_CA_CERT",
            server.ca_cert.as_ref().expect("a TLS server"),
        );
    } else {
        cmd.env_remove("CORRAL_CA_CERT");
    }
    cmd.output().expect("run corral")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_local_and_static_agents_work_over_tls() {
    let mut server = Server::start_tls("access-tls", StoreKind::Sqlite).await;
    assert!(server.url.starts_with("https://"));
    let manifest = server.data_dir.join("cluster.yaml");
    std::fs::write(
        &manifest,
        "kind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: t\n",
    )
    .expect("manifest");
    let out = corral(
        &server,
        &["apply", "-f", &manifest.display().to_string()],
        true,
    );
    assert!(out.status.success(), "{out:?}");
    // Without the CA the CLI refuses the server's certificate.
    let out = corral(&server, &["get", "pools"], false);
    assert!(!out.status.success());
    let _agent = server.start_agent("metal", "tls-box", "1", "1Gi").await;
    for (name, pool) in [("on-metal", "metal"), ("on-local", "local")] {
        let pipeline = server.data_dir.join(format!("{name}.yaml"));
        std::fs::write(
            &pipeline,
            format!("kind: Pipeline\nname: {name}\ntenant: t\nsteps:\n  - {{name: s, run: 'echo hello over tls', pool: {pool}}}\n"),
        )
        .expect("pipeline");
        let out = corral(
            &server,
            &["submit", &pipeline.display().to_string(), "--follow"],
            true,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {out:?}\nserver:\n{}",
            server.log()
        );
        assert!(stdout.contains("hello over tls"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_are_audited_with_who_when_before_and_after_and_survive_a_restart() {
    let mut server = Server::start("access-audit", StoreKind::Sqlite).await;
    let ops_a = server.create_token("ops-a", "admin", None).await;
    let ops_b = server.create_token("ops-b", "admin", None).await;
    let yaml = Some("application/yaml");
    let pool = |workers: u32| {
        format!(
            "kind: Pool\nname: audited\ncapacity: {{cpu: 1, memory: 1Gi}}\nmax_workers: {workers}\nstate: draining\n"
        )
    };
    let steps: [(&str, &str, &str, String); 4] = [
        (ops_a.as_str(), "POST", "/api/v1/pools", pool(2)),
        (ops_b.as_str(), "PUT", "/api/v1/pools/audited", pool(5)),
        (ops_a.as_str(), "POST", "/api/v1/tenants", "kind: Tenant\nname: watched\n".into()),
        (ops_b.as_str(), "POST", "/api/v1/runs", "kind: Pipeline\nname: w\ntenant: watched\nsteps:\n  - {name: s, run: 'true', pool: audited}\n".into()),
    ];
    let mut run = Value::Null;
    for (token, method, path, body) in &steps {
        let (status, answer) = server.send_as(token, method, path, body, yaml).await;
        assert!((200..300).contains(&status), "{path}: {answer}");
        run = answer;
    }
    let (status, body) = server
        .send_as(
            &ops_b,
            "POST",
            &format!("/api/v1/runs/{}/cancel", run["id"]),
            "",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .send_as(&ops_a, "DELETE", "/api/v1/tokens/ops-b", "", None)
        .await;
    assert_eq!(status, 200, "{body}");

    let check = |entries: &[Value]| {
        let find = |who: &str, action: &str, object: &str| {
            entries
                .iter()
                .find(|e| {
                    e["who"] == who
                        && e["action"] == action
                        && format!(
                            "{} {}",
                            e["kind"].as_str().unwrap_or(""),
                            e["name"].as_str().unwrap_or("")
                        ) == object
                })
                .unwrap_or_else(|| panic!("no {who} {action} {object} in {entries:#?}"))
                .clone()
        };
        let created = find("ops-a", "create", "pool audited");
        assert!(created["before"].is_null());
        assert_eq!(created["after"]["max_workers"], 2);
        let updated = find("ops-b", "update", "pool audited");
        assert_eq!(updated["before"]["max_workers"], 2);
        assert_eq!(updated["after"]["max_workers"], 5);
        assert!(updated["at"].as_str().is_some_and(|t| t.starts_with("20")));
        find("ops-a", "create", "tenant watched");
        let cancelled = find("ops-b", "cancel", &format!("run {}", run["id"]));
        assert_eq!(cancelled["before"]["state"], "queued");
        assert_eq!(cancelled["after"]["state"], "cancelled");
        let revoked = find("ops-a", "revoke", "token ops-b");
        assert!(revoked["before"]["revoked_at"].is_null());
        assert!(revoked["after"]["revoked_at"].is_i64());
        assert!(
            entries.iter().all(|e| !e.to_string().contains("hash")),
            "no secret or hash is audited"
        );
    };
    let before: Vec<Value> = server.get("/api/v1/audit").await;
    check(&before);
    server.restart().await;
    let after: Vec<Value> = server.get("/api/v1/audit").await;
    check(&after);
    assert_eq!(before, after);
    // Filters, and the CLI.
    let only_b: Vec<Value> = server.get("/api/v1/audit?who=ops-b&kind=pool").await;
    assert_eq!(only_b.len(), 1, "{only_b:#?}");
    let (status, body) = server.get_text("/api/v1/audit?kind=planet").await;
    assert_eq!(status, 400, "{body}");
    let out = Command::new(BIN)
        .args(["audit", "--who", "ops-a", "--since", "1h", "-o", "json"])
        .env("CORRAL_SERVER", &server.url)
        .env("CORRAL_TOKEN", &server.admin_token)
        .output()
        .expect("corral audit");
    assert!(out.status.success(), "{out:?}");
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert!(entries.iter().all(|e| e["who"] == "ops-a"));
}

/// Which valid callers a console page or form lets through.
fn console_allowed(method: &str, path: &str) -> Option<&'static [Who]> {
    use Who::*;
    const READERS: &[Who] = &[TenantA, TenantB, Viewer, Admin];
    const OWNER_READERS: &[Who] = &[TenantA, Viewer, Admin];
    const ADMIN: &[Who] = &[Admin];
    const OWNER: &[Who] = &[TenantA, Admin];
    Some(match (method, path) {
        (
            "GET",
            "/"
            | "/events"
            | "/pools"
            | "/pools/{name}"
            | "/tenants"
            | "/queue"
            | "/dashboards"
            | "/dashboards/usage.csv"
            | "/dashboards/waits.csv"
            | "/pipelines/{name}/recommendation"
            | "/agents"
            | "/prices",
        ) => READERS,
        ("GET", "/tenants/{name}" | "/runs/{id}" | "/runs/{id}/log") => OWNER_READERS,
        ("GET", "/tokens" | "/audit") => &[Viewer, Admin],
        ("GET", "/pools/new" | "/tenants/new") => ADMIN,
        ("POST", "/tokens" | "/tokens/{name}/revoke") => ADMIN,
        (
            "POST",
            "/pools"
            | "/pools/{name}"
            | "/pools/{name}/state"
            | "/pools/{name}/delete"
            | "/tenants"
            | "/tenants/{name}"
            | "/tenants/{name}/delete",
        ) => ADMIN,
        ("POST", "/runs/{id}/cancel") => OWNER,
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_console_page_answers_every_kind_of_visitor_as_its_rule_says() {
    use corral_server::console::{SESSION_COOKIE, csrf_of, page_table};
    let pages: Vec<_> = page_table()
        .into_iter()
        .filter(|p| p.access != Access::Public)
        .collect();
    for page in &pages {
        assert!(
            console_allowed(page.method, page.path).is_some(),
            "console page {} {} has no expected access in this test",
            page.method,
            page.path
        );
    }
    let m = matrix_server().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Valid tokens log in; the others' cookie is their token, which is no session.
    let mut sessions = BTreeMap::new();
    for who in [Who::TenantA, Who::TenantB, Who::Viewer, Who::Admin] {
        sessions.insert(
            who,
            console_sessions::login(&m.server, &m.tokens[&who]).await,
        );
    }
    // Forms go last (and cancel, which ends the run, after every other one):
    // each one's target is harmless where it passes (a pool or tenant that
    // does not exist, a form the validation refuses).
    let mut ordered = pages.clone();
    ordered.sort_by_key(|p| (p.method == "POST", p.path == "/runs/{id}/cancel"));
    let mut failures = Vec::new();
    for page in &ordered {
        let path = page.path.replace("{id}", &m.run.to_string()).replace(
            "{name}",
            match (page.method, page.path) {
                ("GET", "/tenants/{name}") => "alpha",
                ("GET", _) => "shared",
                _ => "nope",
            },
        );
        for who in EVERYONE {
            let token = &m.tokens[&who];
            let (cookie, csrf) = match sessions.get(&who) {
                Some(s) => (s.id.clone(), s.csrf.clone()),
                None => (token.clone(), csrf_of(token)),
            };
            let mut request = match page.method {
                "GET" => http.get(format!("{}{path}", m.server.url)),
                _ => http
                    .post(format!("{}{path}", m.server.url))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!(
                        "csrf={csrf}&capacity.memory=lots&quota.memory=lots&name=nope"
                    )),
            };
            if who != Who::NoToken {
                request = request.header("cookie", format!("{SESSION_COOKIE}={cookie}"));
            }
            let answer = request.send().await.expect("request");
            let status = answer.status().as_u16();
            let location = answer
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("")
                .to_string();
            let valid = matches!(who, Who::TenantA | Who::TenantB | Who::Viewer | Who::Admin);
            let allowed = console_allowed(page.method, page.path)
                .expect("an expectation")
                .contains(&who);
            let refused = status == 403 || (status == 303 && location.starts_with("/login"));
            let ok = match (valid, allowed) {
                // Without a session: to the login page, or a form refused.
                (false, _) => {
                    if page.method == "GET" {
                        status == 303 && location.starts_with("/login")
                    } else {
                        status == 403
                    }
                }
                // Another tenant's run is not found, as one that does not exist.
                (true, false) if who == Who::TenantB && page.path.starts_with("/runs/{id}") => {
                    status == 404
                }
                (true, false) => status == 403,
                (true, true) => !refused && status < 500,
            };
            if !ok {
                failures.push(format!(
                    "{} {path} as {who:?}: got {status} {location}",
                    page.method
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A form with the session but not its CSRF token is refused, and did nothing.
    let (status, _) = m.server.send("GET", "/api/v1/pools/parked", "").await;
    assert_eq!(status, 200);
    let forged = http
        .post(format!("{}/pools/parked/delete", m.server.url))
        .header(
            "cookie",
            format!("{SESSION_COOKIE}={}", sessions[&Who::Admin].id),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=0123456789abcdef0123456789abcdef")
        .send()
        .await
        .expect("request");
    assert_eq!(forged.status().as_u16(), 403);
    let (status, _) = m.server.send("GET", "/api/v1/pools/parked", "").await;
    assert_eq!(status, 200, "the forged delete did nothing");
    // A form, the login's too, is at most 64 KiB.
    let huge = http
        .post(format!("{}/login", m.server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "x".repeat(70 * 1024)))
        .send()
        .await
        .expect("request");
    assert_eq!(huge.status().as_u16(), 413);
}

/// `text` with every mention of run `id` (`run 7`, `/runs/7`: the whole
/// number, no digit after it) replaced by `{id}`.
fn with_id_replaced(text: &str, id: i64) -> String {
    let id = id.to_string();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let whole = text[i..].starts_with(&id)
            && (text[..i].ends_with("run ") || text[..i].ends_with("/runs/"))
            && bytes.get(i + id.len()).is_none_or(|b| !b.is_ascii_digit());
        if whole {
            out.push_str("{id}");
            i += id.len();
        } else {
            let c = text[i..].chars().next().expect("inside the text");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[test]
fn with_id_replaced_replaces_mentions_of_the_run_only() {
    assert_eq!(
        with_id_replaced("run 7 of 17, run 77, h7 at /runs/7/log, run 7x", 7),
        "run {id} of 17, run 77, h7 at /runs/{id}/log, run {id}x"
    );
}

/// Another tenant's run answers every route that takes a run id, in the API
/// and in the console, exactly as a run that does not exist: the same status
/// and the same bytes once the id is replaced, so ids cannot be probed for
/// runs and their owners.
#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_run_answers_exactly_as_a_run_that_does_not_exist() {
    use corral_server::console::{SESSION_COOKIE, page_table};
    let server = Server::start("access-hidden", StoreKind::Sqlite).await;
    server.apply(CLUSTER).await;
    let beta = server
        .create_token("team-b", "tenant", Some(("tenant", "beta")))
        .await;
    let live = server.submit(&parked_run("alpha")).await["id"]
        .as_i64()
        .expect("id");
    let ended = server.submit(&parked_run("alpha")).await["id"]
        .as_i64()
        .expect("id");
    let (status, body) = server
        .send("POST", &format!("/api/v1/runs/{ended}/cancel"), "")
        .await;
    assert_eq!(status, 200, "{body}");
    let missing = 987_654_321;
    let beta_session = console_sessions::login(&server, &beta).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // (method, path with `{id}`, whether it is a console page)
    let mut requests: Vec<(&str, String, bool)> = Vec::new();
    for route in route_table().iter().filter(|r| run_scoped(r.path)) {
        requests.push((route.method, route.path.to_string(), false));
        if route.path.ends_with("/logs") {
            for query in [
                "?follow=true",
                "?step=s",
                "?step=nope",
                "?follow=true&step=s",
            ] {
                requests.push((route.method, format!("{}{query}", route.path), false));
            }
        }
    }
    for page in page_table()
        .iter()
        .filter(|p| p.path.starts_with("/runs/{id}"))
    {
        requests.push((page.method, page.path.to_string(), true));
    }
    let api_routes = requests.iter().filter(|r| !r.2).count();
    assert!(
        api_routes >= 3 && requests.len() > api_routes + 1,
        "the run routes were found: {requests:?}"
    );
    let answer = |method: &str, path: &str, console: bool| {
        let url = format!("{}{path}", server.url);
        let mut request = match method {
            "GET" => http.get(url),
            "POST" => http.post(url),
            other => panic!("no run route is {other}"),
        };
        request = if console {
            request.header("cookie", format!("{SESSION_COOKIE}={}", beta_session.id))
        } else {
            request.bearer_auth(&beta)
        };
        if console && method == "POST" {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("csrf={}", beta_session.csrf));
        }
        async move {
            let answer = request.send().await.expect("answer");
            let status = answer.status().as_u16();
            let content_type = answer
                .headers()
                .get("content-type")
                .map(|v| v.to_str().expect("ascii").to_string());
            let body = answer.text().await.expect("body");
            (status, content_type, body)
        }
    };
    let mut failures = Vec::new();
    for (method, path, console) in &requests {
        let (status, content_type, body) = answer(
            method,
            &path.replace("{id}", &missing.to_string()),
            *console,
        )
        .await;
        assert_eq!(status, 404, "{method} {path} for no run: {body}");
        let unknown = (status, content_type, with_id_replaced(&body, missing));
        for id in [live, ended] {
            let (status, content_type, body) =
                answer(method, &path.replace("{id}", &id.to_string()), *console).await;
            let hidden = (status, content_type, with_id_replaced(&body, id));
            if hidden != unknown {
                failures.push(format!(
                    "{method} {path} for alpha's run {id}: {hidden:?}\n  for no run: {unknown:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And what was asked for did nothing: the live run still waits.
    assert_eq!(server.run(live).await["state"], "queued");
}

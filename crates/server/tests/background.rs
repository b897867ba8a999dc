//! The server's background workers seen from outside: a server started in
//! process with a fault hook, a panic injected into its controller, and what
//! `/healthz` and `GET /api/v1/workers` say about it over HTTP, until the
//! controller runs again and admits a run.

use std::path::PathBuf;
use std::time::Duration;

use corral_server::background::Faults;
use corral_server::engine::EngineConfig;
use corral_server::{ServerConfig, serve_with_faults};
use serde_json::Value;

/// A test's own directory, removed at the end unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "corral-background-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// How long anything the test waits for may take.
const PATIENCE: Duration = Duration::from_secs(30);

struct Api {
    http: reqwest::Client,
    url: String,
    admin: String,
}

impl Api {
    /// The status and JSON body of a call; `token` is the admin's unless none.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: bool,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if token {
            request = request.bearer_auth(&self.admin);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, true).await
    }

    async fn worker(&self, name: &str) -> Value {
        let (status, workers) = self.get("/api/v1/workers").await;
        assert_eq!(status, 200, "{workers}");
        workers
            .as_array()
            .expect("a list")
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no background worker {name} in {workers}"))
            .clone()
    }

    /// Polls `check` with what `path` answers until it holds.
    async fn until(&self, what: &str, path: &str, check: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.get(path).await;
            if check(status, &body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never: {what} (last: {status} {body})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const PIPELINE: &str = "kind: Pipeline\nname: after-the-panic\ntenant: default\nsteps:\n  - {name: s, run: \"true\", resources: {cpu: 100m, memory: 64Mi}}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_controller_is_restarted_and_readiness_says_so_meanwhile() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = Scratch::new("panic");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let config = ServerConfig {
        listen: ([127, 0, 0, 1], port).into(),
        data_dir: dir.0.clone(),
        database_url: None,
        // Local agents that exit at once: the run only has to be admitted.
        exe: PathBuf::from("/bin/true"),
        engine: EngineConfig::default(),
        tick: Duration::from_millis(200),
        cors_origins: Vec::new(),
        tls: None,
        http: corral_server::http::HttpLimits::default(),
        metrics_public: false,
        alert_webhook: None,
        lost_worker_retention: Duration::from_secs(3600),
        kubernetes: Default::default(),
    };
    let faults = Faults::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_faults(
        config,
        async move {
            let _ = stopped.await;
        },
        Some(faults.clone()),
    ));
    let token_file = dir.0.join(corral_server::ADMIN_TOKEN_FILE);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let admin = loop {
        if let Ok(text) = std::fs::read_to_string(&token_file) {
            break text.trim().to_string();
        }
        assert!(
            !server.is_finished(),
            "the server stopped: {:?}",
            server.await
        );
        assert!(tokio::time::Instant::now() < deadline, "no admin token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let api = Api {
        http: reqwest::Client::new(),
        url: format!("http://127.0.0.1:{port}"),
        admin,
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while api
        .http
        .get(format!("{}/healthz", api.url))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, workers) = api.get("/api/v1/workers").await;
    assert_eq!(status, 200, "{workers}");
    let names: Vec<&str> = workers
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    for expected in [
        "committer",
        "store-watch",
        "metering-backlog",
        "history-sampler",
        "history-rollup",
        "controller",
        "metrics-upkeep",
        "lost-worker-prune",
        "refusal-report",
    ] {
        assert!(names.contains(&expected), "{expected} is not in {names:?}");
    }
    let controller = api.worker("controller").await;
    assert_eq!(controller["vital"], true);
    assert_eq!(controller["restarts"], 0);
    assert_eq!(controller["last_error"], Value::Null);

    faults.panic_next("controller");
    let health = api
        .until(
            "not ready while the controller is down",
            "/healthz",
            |status, _| status == 503,
        )
        .await;
    let down = &health["background_workers_down"];
    assert_eq!(down[0]["name"], "controller", "{health}");
    assert_eq!(down[0]["status"], "backing_off", "{health}");
    assert!(
        down[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked")),
        "{health}"
    );
    assert_eq!(
        health["store_error"],
        Value::Null,
        "the store is fine: {health}"
    );
    // Without a token: not ready, and nothing more.
    let (status, public) = api.call("GET", "/healthz", None, false).await;
    assert_eq!(status, 503);
    assert_eq!(public, serde_json::json!({"status": "unavailable"}));
    let controller = api.worker("controller").await;
    assert_eq!(controller["status"], "backing_off", "{controller}");
    assert_eq!(controller["restarts"], 0, "held down until released");
    assert!(
        controller["last_error"].as_str().is_some_and(
            |e| e.contains("panicked: a fault injected into the background worker controller")
        ),
        "{controller}"
    );
    assert!(controller["last_error_at"].is_string(), "{controller}");
    // The other workers carry on.
    assert_eq!(api.worker("committer").await["status"], "idle");

    // A run submitted meanwhile waits: nothing admits it.
    let (status, run) = api.call("POST", "/api/v1/runs", Some(PIPELINE), true).await;
    assert_eq!(status, 201, "{run}");
    let run_path = format!("/api/v1/runs/{}", run["id"]);
    let (_, queued) = api.get(&run_path).await;
    assert_eq!(queued["state"], "queued", "{queued}");

    faults.release("controller");
    let controller = api
        .until(
            "the controller runs again",
            "/api/v1/workers",
            |_, workers| {
                workers.as_array().is_some_and(|list| {
                    list.iter().any(|w| {
                        w["name"] == "controller"
                            && w["restarts"] == 1
                            && (w["status"] == "running" || w["status"] == "idle")
                    })
                })
            },
        )
        .await;
    api.until("ready again", "/healthz", |status, _| status == 200)
        .await;
    api.until("the run is admitted", &run_path, |_, run| {
        matches!(
            run["state"].as_str(),
            Some("admitted" | "provisioning" | "running")
        )
    })
    .await;
    let again = api.worker("controller").await;
    assert!(
        again["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked")),
        "the failure is still told after the recovery: {controller}"
    );

    stop.send(()).expect("the server listens for its shutdown");
    let served = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server stops within its deadline")
        .expect("the server's task");
    assert!(served.is_ok(), "{served:?}");
}

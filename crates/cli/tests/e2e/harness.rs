//! Real processes for end-to-end tests: a `corral server` (with its local agents)
//! on 127.0.0.1, driven over HTTP; killed with its process group when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// Which store a test server uses.
#[derive(Debug, Clone)]
pub enum StoreKind {
    Sqlite,
    Postgres(String),
}

impl StoreKind {
    pub async fn postgres(label: &str) -> StoreKind {
        StoreKind::Postgres(corral_store::testing::fresh_postgres_database(label).await)
    }
}

pub fn temp_dir(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("corral-e2e-{label}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A test's own directory, removed when dropped unless the test failed (it is
/// then left to look at).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        Scratch(temp_dir(label))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    /// The admin token the server wrote on its first start.
    pub admin_token: String,
    /// The CA the server's TLS certificate is signed by, when it serves TLS.
    pub ca_cert: Option<PathBuf>,
    port: u16,
    store: StoreKind,
    child: Option<Child>,
    /// Process groups started by this server (it and its local agents).
    groups: Vec<i32>,
    http: reqwest::Client,
    extra_args: Vec<String>,
}

impl Server {
    pub async fn start(label: &str, store: StoreKind) -> Server {
        Server::start_with(label, store, &[]).await
    }

    pub async fn start_with(label: &str, store: StoreKind, extra_args: &[&str]) -> Server {
        Server::start_full(temp_dir(label), store, extra_args, None).await
    }

    /// Starts a server whose data directory (and log) is `data_dir`.
    pub async fn start_in(data_dir: PathBuf, extra_args: &[&str]) -> Server {
        Server::start_full(data_dir, StoreKind::Sqlite, extra_args, None).await
    }

    /// Starts a server over TLS with certificates made for the test: a CA and
    /// a server certificate for 127.0.0.1 and localhost that it signed.
    pub async fn start_tls(label: &str, store: StoreKind) -> Server {
        Server::start_tls_with(label, store, &[]).await
    }

    /// [`Server::start_tls`] with more arguments.
    pub async fn start_tls_with(label: &str, store: StoreKind, extra_args: &[&str]) -> Server {
        // In the data directory, which goes with the server.
        let data_dir = temp_dir(label);
        let dir = data_dir.join("certs");
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        let certs = crate::harness::make_certs(&dir);
        let (cert, key) = (
            certs.cert.display().to_string(),
            certs.key.display().to_string(),
        );
        let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        args.extend_from_slice(extra_args);
        Server::start_full(data_dir, store, &args, Some(certs.ca)).await
    }

    async fn start_full(
        data_dir: PathBuf,
        store: StoreKind,
        extra_args: &[&str],
        ca_cert: Option<PathBuf>,
    ) -> Server {
        let port = free_port();
        let scheme = if ca_cert.is_some() { "https" } else { "http" };
        let mut server = Server {
            url: format!("{scheme}://127.0.0.1:{port}"),
            data_dir,
            admin_token: String::new(),
            http: http_client(ca_cert.as_deref()),
            ca_cert,
            port,
            store,
            child: None,
            groups: Vec::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn().await;
        server.admin_token = std::fs::read_to_string(server.data_dir.join("admin.token"))
            .expect("the first start writes admin.token")
            .trim()
            .to_string();
        server
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("CORRAL_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.data_dir.join("server.log"))
                    .expect("server log"),
            );
        if let StoreKind::Postgres(url) = &self.store {
            cmd.arg("--database-url").arg(url);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn corral server");
        self.groups
            .push(i32::try_from(child.id()).expect("pid fits"));
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits until `/healthz` answers 200; fails at once, with the log, if
    /// the server exits first.
    async fn wait_ready(&mut self) {
        let url = format!("{}/healthz", self.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.http.get(&url).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "the server exited ({status}) before it came up; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the server to come up; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// `kill -9` the server process only: its agents and their steps live on.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
            kill(pid, Signal::SIGKILL).expect("kill -9 the server");
            let _ = child.wait();
        }
    }

    /// The pids of the local agents the server spawned (its children running
    /// `corral agent`).
    pub fn local_agents(&self) -> Vec<i32> {
        let server = self.pid();
        let tasks =
            std::fs::read_dir(format!("/proc/{server}/task")).expect("the server's threads");
        tasks
            .filter_map(|t| {
                let tid = t.ok()?.file_name().into_string().ok()?;
                std::fs::read_to_string(format!("/proc/{server}/task/{tid}/children")).ok()
            })
            .flat_map(|list| {
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"agent"))
            })
            .collect()
    }

    /// Creates a token with the admin token and returns its secret.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        bound: Option<(&str, &str)>,
    ) -> String {
        let mut body = serde_json::json!({"name": name, "role": role});
        if let Some((field, value)) = bound {
            body[field] = value.into();
        }
        let (status, answer) = self
            .send_as(
                &self.admin_token,
                "POST",
                "/api/v1/tokens",
                &body.to_string(),
                Some("application/json"),
            )
            .await;
        assert_eq!(status, 201, "create token {name}: {answer}");
        answer["secret"].as_str().expect("secret").to_string()
    }

    /// Starts a `corral agent` that joins static pool `pool` from its own work
    /// directory, with an agent token of the pool made for it; killed with the
    /// server's processes when the test ends.
    pub async fn start_agent(&mut self, pool: &str, name: &str, cpu: &str, memory: &str) -> Agent {
        let token = self
            .create_token(&format!("agent-{name}"), "agent", Some(("pool", pool)))
            .await;
        let work_dir = self.data_dir.join("agents").join(name);
        self.start_agent_with(pool, name, cpu, memory, &work_dir, &token)
    }

    /// Makes `pool` a static pool (with tenant `t`) of two agents, `left` and
    /// `right` (2 cpu, 2Gi each), and waits until both have joined.
    pub async fn static_pool_of_two(&mut self, pool: &str) -> [Agent; 2] {
        self.apply(&format!(
            "kind: Pool\nname: {pool}\nprovider: static\n---\nkind: Tenant\nname: t\n"
        ))
        .await;
        let agents = [
            self.start_agent(pool, "left", "2", "2Gi").await,
            self.start_agent(pool, "right", "2", "2Gi").await,
        ];
        let path = format!("/api/v1/pools/{pool}");
        eventually("both agents to join", Duration::from_secs(20), || async {
            let pool: Value = self.get(&path).await;
            (pool["agents"] == 2 && pool["capacity"]["cpu_millis"] == 4000).then_some(())
        })
        .await;
        agents
    }

    /// Which of `agents` runs run `id`, once its step has printed its working
    /// directory (`pwd`).
    pub async fn agent_running(&self, id: i64, agents: &[Agent]) -> usize {
        let path = format!("/api/v1/runs/{id}/logs");
        eventually("the step to start", Duration::from_secs(20), || async {
            let (_, logs) = self.get_text(&path).await;
            agents
                .iter()
                .position(|a| logs.contains(&*a.work_dir.to_string_lossy()))
        })
        .await
    }

    /// Starts a `corral agent` from `work_dir` with `token`.
    pub fn start_agent_with(
        &mut self,
        pool: &str,
        name: &str,
        cpu: &str,
        memory: &str,
        work_dir: &Path,
        token: &str,
    ) -> Agent {
        let url = self.url.clone();
        self.start_agent_via(&[], &url, pool, name, (cpu, memory), work_dir, token)
    }

    /// Starts a `corral agent` of static pool `pool` through `wrapper` (a
    /// command that runs the rest of its arguments, as `ip netns exec NS`
    /// does, in the same process), reaching the server at `url`; with an
    /// agent token of the pool made for it, from its own work directory.
    pub async fn start_agent_through(
        &mut self,
        wrapper: &[&str],
        url: &str,
        pool: &str,
        name: &str,
    ) -> Agent {
        let token = self
            .create_token(&format!("agent-{name}"), "agent", Some(("pool", pool)))
            .await;
        let work_dir = self.data_dir.join("agents").join(name);
        self.start_agent_via(wrapper, url, pool, name, ("2", "2Gi"), &work_dir, &token)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_agent_via(
        &mut self,
        wrapper: &[&str],
        url: &str,
        pool: &str,
        name: &str,
        (cpu, memory): (&str, &str),
        work_dir: &Path,
        token: &str,
    ) -> Agent {
        std::fs::create_dir_all(work_dir).expect("agent work dir");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.args(["agent", "--server", url, "--pool", pool, "--name", name])
            .args(["--cpu", cpu, "--memory", memory])
            .arg("--work-dir")
            .arg(work_dir)
            .args(
                self.ca_cert
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("--ca-cert"), c.as_os_str()]),
            )
            // The token on its standard input, as the server hands local
            // agents theirs: never in its environment or command line.
            .args(["--token-file", "-"])
            .env_remove("CORRAL_TOKEN")
            .env("CORRAL_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.data_dir.join(format!("agent-{name}.log")))
                    .expect("agent log"),
            );
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn corral agent");
        let mut stdin = child.stdin.take().expect("the agent's input");
        std::io::Write::write_all(&mut stdin, format!("{token}\n").as_bytes())
            .expect("the token written to the agent");
        let pid = i32::try_from(child.id()).expect("pid fits");
        self.groups.push(pid);
        Agent {
            child,
            work_dir: work_dir.to_path_buf(),
            log: self.data_dir.join(format!("agent-{name}.log")),
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        let (status, text) = self.get_text(path).await;
        assert!((200..300).contains(&status), "GET {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        self.get_text_accepting(path, "*/*").await
    }

    /// A GET with the admin token asking for the media type `accept`.
    pub async fn get_text_accepting(&self, path: &str, accept: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    }

    /// Sends a request with the admin token and returns the status with the
    /// JSON body (null when empty); a body goes as YAML.
    pub async fn send(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let content_type = (!body.is_empty()).then_some("application/yaml");
        self.send_as(&self.admin_token, method, path, body, content_type)
            .await
    }

    /// Sends a request with `token` (none when empty) and `content_type`.
    pub async fn send_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
        content_type: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body.to_string());
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn apply(&self, yaml: &str) {
        let (status, body) = self.send("POST", "/api/v1/apply", yaml).await;
        assert_eq!(status, 200, "apply: {body}");
    }

    /// Submits a pipeline and returns the run (answer of POST /runs).
    pub async fn submit(&self, yaml: &str) -> Value {
        let (status, body) = self.send("POST", "/api/v1/runs", yaml).await;
        assert_eq!(status, 201, "submit: {body}");
        body
    }

    pub async fn run(&self, id: i64) -> Value {
        self.get(&format!("/api/v1/runs/{id}")).await
    }

    /// Waits until the run's output contains `text` (it was acknowledged).
    pub async fn wait_for_output(&self, id: i64, text: &str, within: Duration) {
        let path = format!("/api/v1/runs/{id}/logs");
        eventually(&format!("run {id} to print {text:?}"), within, || async {
            self.get_text(&path).await.1.contains(text).then_some(())
        })
        .await;
    }

    /// Waits until the run has ended and returns it.
    /// Waits until the run is admitted (holds its allocations); the run then.
    pub async fn admitted(&self, id: i64) -> Value {
        eventually(
            &format!("run {id} admitted"),
            Duration::from_secs(20),
            || async {
                let run = self.run(id).await;
                (run["state"] != "queued").then_some(run)
            },
        )
        .await
    }

    /// Waits until the queued run waits with reason `code`; the reason then.
    pub async fn waits_with(&self, id: i64, code: &str) -> Value {
        eventually(
            &format!("run {id} to wait with {code}"),
            Duration::from_secs(20),
            || async {
                let run = self.run(id).await;
                assert_eq!(run["state"], "queued", "{run:#}");
                (run["reason"]["code"] == code).then(|| run["reason"].clone())
            },
        )
        .await
    }

    pub async fn wait_run_ended(&self, id: i64, within: Duration) -> Value {
        eventually(&format!("run {id} to end"), within, || async {
            let run = self.run(id).await;
            let ended = matches!(
                run["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "rejected")
            );
            ended.then_some(run)
        })
        .await
    }
}

/// A `corral agent` process of a static pool.
pub struct Agent {
    child: Child,
    pub work_dir: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// The agent's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    /// `kill -9` the agent only; its steps' guards then kill the steps.
    pub fn kill9(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"));
        kill(pid, Signal::SIGKILL).expect("kill -9 the agent");
        let _ = self.child.wait();
    }

    /// Waits for the agent to exit by itself and returns its exit code.
    pub async fn exited(&mut self, within: Duration) -> i32 {
        let child = &mut self.child;
        eventually("the agent to exit", within, || {
            let status = child.try_wait().expect("agent status");
            std::future::ready(status.map(|s| s.code().unwrap_or(-1)))
        })
        .await
    }
}

/// An HTTP client for tests: ring as rustls's provider, trusting `ca_cert`.
/// Runs the `corral` CLI against `server` as its admin, over plain HTTP.
pub fn corral(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("CORRAL_SERVER", &server.url)
        .env("CORRAL_TOKEN", &server.admin_token)
        .env_remove("CORRAL_CA_CERT")
        .output()
        .expect("run corral")
}

pub fn http_client(ca_cert: Option<&Path>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ca) = ca_cert {
        let pem = std::fs::read(ca).expect("read the test CA");
        let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("PEM certificates");
        builder = builder.tls_certs_only(certs);
    }
    builder.build().expect("http client")
}

/// Certificates for a TLS test server.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA, and a server certificate for 127.0.0.1 and localhost signed by
/// it, as PEM files in `dir` (the certificate file holds the chain).
pub fn make_certs(dir: &Path) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name
        .push(DnType::CommonName, "corral test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = server.signed_by(&key, &issuer).expect("signed server cert");
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&certs.ca, ca_cert.pem()).expect("write CA");
    // The full chain, as servers are given it: local agents trust its CA.
    std::fs::write(&certs.cert, cert.pem() + &ca_cert.pem()).expect("write cert");
    std::fs::write(&certs.key, key.serialize_pem()).expect("write key");
    certs
}

impl Drop for Server {
    fn drop(&mut self) {
        for g in &self.groups {
            let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A live process's start time (which tells it from a later one with its pid);
/// `None` once it has ended or is a zombie.
fn start_of(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    (fields.first() != Some(&"Z")).then(|| fields.get(19).map(|s| s.to_string()))?
}

/// An RFC 3339 time of the API in milliseconds since the epoch.
pub fn millis(time: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// Polls `check` until it returns `Some`, failing with `what` after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the persisted allocation history: at no instant do the open
/// allocations of `tenant` exceed `limit_cpu` millicores, nor those of each pool
/// its capacity; every run holds at most one open allocation per group at once.
/// Returns the tenant's peak.
pub fn check_history(
    allocations: &[Value],
    tenant: &str,
    limit_cpu: u64,
    capacities: &[(&str, u64)],
) -> u64 {
    #[derive(Debug)]
    struct Event {
        at: String,
        open: bool,
        cpu: u64,
        tenant: String,
        pool: String,
    }
    let mut events = Vec::new();
    for a in allocations {
        let cpu = a["resources"]["cpu_millis"].as_u64().expect("cpu");
        let t = a["tenant"].as_str().expect("tenant").to_string();
        let p = a["pool"].as_str().expect("pool").to_string();
        events.push(Event {
            at: a["opened_at"].as_str().expect("opened").into(),
            open: true,
            cpu,
            tenant: t.clone(),
            pool: p.clone(),
        });
        if let Some(closed) = a["closed_at"].as_str() {
            events.push(Event {
                at: closed.into(),
                open: false,
                cpu,
                tenant: t,
                pool: p,
            });
        }
    }
    // RFC 3339 in UTC with milliseconds sorts as text; at the same millisecond a
    // release is counted before a grant.
    events.sort_by(|a, b| a.at.cmp(&b.at).then(a.open.cmp(&b.open)));
    let mut tenant_use: u64 = 0;
    let mut peak = 0;
    let mut pool_use: std::collections::BTreeMap<String, u64> = Default::default();
    for e in &events {
        let pool = pool_use.entry(e.pool.clone()).or_default();
        if e.open {
            *pool += e.cpu;
            if e.tenant == tenant {
                tenant_use += e.cpu;
            }
        } else {
            *pool -= e.cpu;
            if e.tenant == tenant {
                tenant_use -= e.cpu;
            }
        }
        peak = peak.max(tenant_use);
        assert!(
            tenant_use <= limit_cpu,
            "tenant {tenant} above its quota at {}: {tenant_use}m",
            e.at
        );
        for (name, cap) in capacities {
            if *name == e.pool {
                assert!(
                    *pool <= *cap,
                    "pool {name} above capacity at {}: {pool}m",
                    e.at
                );
            }
        }
    }
    // One open allocation per run and group at a time: a group granted again
    // (after its worker was lost) only once the earlier grant was closed.
    type Spans<'a> = Vec<(&'a str, Option<&'a str>)>;
    let mut grants: std::collections::BTreeMap<(Option<i64>, Option<u64>), Spans> =
        std::collections::BTreeMap::new();
    for a in allocations {
        grants
            .entry((a["run_id"].as_i64(), a["group"].as_u64()))
            .or_default()
            .push((
                a["opened_at"].as_str().expect("opened_at"),
                a["closed_at"].as_str(),
            ));
    }
    for (key, mut spans) in grants {
        spans.sort();
        for pair in spans.windows(2) {
            let ((_, closed), (opened, _)) = (pair[0], pair[1]);
            assert!(
                closed.is_some_and(|closed| closed <= opened),
                "run {:?} group {:?} was granted twice at once: {spans:?}",
                key.0,
                key.1
            );
        }
    }
    peak
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("the workspace root")
}

impl Server {
    /// The workspaces of run `id` on this server's agents (local and static)
    /// that exist: a step's directory, which the test may read and write
    /// whether the step is confined or not.
    pub fn workspaces(&self, id: i64) -> Vec<PathBuf> {
        let name = format!("run-{id}");
        let local = self.data_dir.join("workers");
        let statics = std::fs::read_dir(self.data_dir.join("agents"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|agent| agent.path());
        std::iter::once(local)
            .chain(statics)
            .map(|dir| dir.join("workspaces").join(&name))
            .filter(|dir| dir.is_dir())
            .collect()
    }

    /// Writes `name` into run `id`'s workspace, where its step waits for it
    /// (`while [ ! -e go ]`): into each it has, or, for a run not started
    /// yet, into the one its local agent will use.
    pub fn open_gate(&self, id: i64, name: &str) {
        let mut dirs = self.workspaces(id);
        if dirs.is_empty() {
            let local = self
                .data_dir
                .join("workers/workspaces")
                .join(format!("run-{id}"));
            std::fs::create_dir_all(&local).expect("the run's workspace");
            dirs.push(local);
        }
        for dir in dirs {
            std::fs::write(dir.join(name), "").expect("the gate opened");
        }
    }

    /// The processes of this server's steps that run now: those working in
    /// its data directory, where every workspace is (steps' pids are their
    /// own when they are confined; where they work is not).
    pub fn step_processes(&self) -> Vec<(i32, String)> {
        let dir = self
            .data_dir
            .canonicalize()
            .unwrap_or(self.data_dir.clone());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(&dir))
            })
            .filter_map(|pid| Some((pid, start_of(pid)?)))
            .collect()
    }

    /// Waits until at least `count` processes of this server's steps run;
    /// those, to wait for their end with [`processes_end`].
    pub async fn running_steps(&self, count: usize) -> Vec<(i32, String)> {
        eventually(
            &format!("{count} processes of steps"),
            Duration::from_secs(20),
            || async {
                let running = self.step_processes();
                (running.len() >= count).then_some(running)
            },
        )
        .await
    }

    /// Waits until no process of this server's steps runs.
    pub async fn no_step_processes(&self) {
        eventually(
            "no process of a step left",
            Duration::from_secs(10),
            || async { self.step_processes().is_empty().then_some(()) },
        )
        .await;
    }
}

/// Waits until each of `processes` (pids with their start times) has ended (a
/// zombie counts as ended: it runs nothing).
pub async fn processes_end(processes: &[(i32, String)]) {
    eventually(
        &format!("the processes {processes:?} to end"),
        Duration::from_secs(10),
        || async {
            processes
                .iter()
                .all(|(pid, start)| start_of(*pid).as_ref() != Some(start))
                .then_some(())
        },
    )
    .await;
}

/// Every process below `pid`, parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{parent}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in list.split_whitespace().filter_map(|p| p.parse().ok()) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// Every string of `text` in the form of a corral secret: `corral_`,
/// `corralw_` or `corrals_` and 64 hexadecimal digits.
pub fn secrets_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("corral") {
        let rest = &text[at + "corral".len()..];
        for prefix in ["_", "w_", "s_"] {
            let Some(digits) = rest.strip_prefix(prefix) else {
                continue;
            };
            let hex = digits.bytes().take_while(u8::is_ascii_hexdigit).count();
            if hex >= 64 {
                found.push(format!("corral{prefix}{}", &digits[..64]));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

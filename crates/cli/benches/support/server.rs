//! The server under measurement, shared by the benches: the release `corral
//! server` as a child process on a fresh SQLite data dir (killed by its pid
//! when dropped), HTTP calls to it, and what is read from outside the process
//! (its RSS).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;

/// The `corral` binary this bench was built with (release, like the bench).
const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// How long the server may take to come up.
const START_WITHIN: Duration = Duration::from_secs(60);

/// A `corral server` child process in a process group of its own.
pub struct ServerProcess {
    pub url: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub admin_token: String,
    child: Child,
}

impl ServerProcess {
    /// Starts the server on a free port of 127.0.0.1 in a fresh data dir
    /// named after `label`;
    /// answers once `/healthz` does.
    pub async fn start(label: &str, extra_args: &[&str]) -> Result<ServerProcess> {
        let data_dir =
            std::env::temp_dir().join(format!("corral-{label}-bench-{}", std::process::id()));
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)
                .with_context(|| format!("removing the stale {}", data_dir.display()))?;
        }
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let log = std::fs::File::create(data_dir.join("server.log")).context("the server log")?;
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra_args)
            .env("CORRAL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("starting {BIN}"))?;
        let mut server = ServerProcess {
            url: format!("http://127.0.0.1:{port}"),
            pid: child.id(),
            data_dir,
            admin_token: String::new(),
            child,
        };
        server.wait_ready().await?;
        server.admin_token = std::fs::read_to_string(server.data_dir.join("admin.token"))
            .context("the first start writes admin.token")?
            .trim()
            .to_string();
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", self.url);
        let start = Instant::now();
        loop {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("the server's status")? {
                bail!(
                    "the server exited ({status}) before it came up; see {}",
                    self.data_dir.join("server.log").display()
                );
            }
            if start.elapsed() > START_WITHIN {
                bail!("the server did not come up within {START_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's resident set and its peak, in KiB (`VmRSS`, `VmHWM`).
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("reading /proc/{}/status", self.pid))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{name} in /proc/{}/status", self.pid))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and removes its
    /// data dir.
    pub fn stop(mut self) -> Result<()> {
        self.signal(Signal::SIGTERM);
        let start = Instant::now();
        while self
            .child
            .try_wait()
            .context("the server's status")?
            .is_none()
        {
            if start.elapsed() > Duration::from_secs(10) {
                self.signal(Signal::SIGKILL);
                self.child.wait().context("waiting for the killed server")?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::remove_dir_all(&self.data_dir)
            .with_context(|| format!("removing {}", self.data_dir.display()))
    }

    fn signal(&self, signal: Signal) {
        // The server leads its own group (it spawns no local agents here, but
        // anything it started goes with it).
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
            eprintln!(
                "the server was killed; its data dir is left in {}",
                self.data_dir.display()
            );
        }
    }
}

/// HTTP calls with one bearer token (the admin's, an agent token or a
/// worker's secret).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .context("an HTTP client")?;
        Ok(Api::with_client(http, base, token))
    }

    /// Calls sharing `http`'s connections.
    pub fn with_client(http: reqwest::Client, base: &str, token: &str) -> Api {
        Api {
            http,
            base: base.to_string(),
            token: token.to_string(),
        }
    }

    /// The same connections with another bearer token.
    pub fn as_bearer(&self, token: &str) -> Api {
        Api::with_client(self.http.clone(), &self.base, token)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, String)>,
    ) -> Result<(u16, String)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        let answer = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = answer.status().as_u16();
        let text = answer
            .text()
            .await
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {text}");
        }
        Ok((status, text))
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self.send(reqwest::Method::GET, path, None).await?.1)
    }

    /// How many items a list has in all (its `X-Total-Count` header).
    pub async fn total_count(&self, path: &str) -> Result<u64> {
        let answer = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        answer
            .headers()
            .get("x-total-count")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .with_context(|| format!("GET {path}: no X-Total-Count"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let text = self.get_text(path).await?;
        serde_json::from_str(&text).with_context(|| format!("GET {path}: {text}"))
    }

    pub async fn post_yaml<T: DeserializeOwned>(&self, path: &str, yaml: String) -> Result<T> {
        let (_, text) = self
            .send(
                reqwest::Method::POST,
                path,
                Some(("application/yaml", yaml)),
            )
            .await?;
        serde_json::from_str(&text).with_context(|| format!("POST {path}: {text}"))
    }

    /// POSTs `body` as JSON; the answer's text (empty for a 204).
    pub async fn post_json(&self, path: &str, body: &impl serde::Serialize) -> Result<String> {
        let body = serde_json::to_string(body).context("a JSON body")?;
        Ok(self
            .send(
                reqwest::Method::POST,
                path,
                Some(("application/json", body)),
            )
            .await?
            .1)
    }
}

//! The CLI's HTTP client for the corral API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use corral_api::{
    Applied, AuditView, BackgroundWorkerView, ErrorBody, PoolView, RecommendationView, RunSummary,
    RunView, Submitted, TenantSummary, TenantView, TokenCreate, TokenCreated, TokenView, UsageView,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::de::DeserializeOwned;

/// Where the server's first start leaves the admin token, under the default
/// data directory: the CLI's last resort when no token is given.
pub const DEFAULT_TOKEN_FILE: &str = "./.corral/admin.token";

/// How the CLI finds its token: `--token`, then `--token-file`, then
/// `$CORRAL_TOKEN`, then (for client commands) the admin token file.
pub fn resolve_token(
    token: Option<String>,
    token_file: Option<&Path>,
    fallback: Option<&Path>,
) -> Result<String> {
    if let Some(t) = token {
        return Ok(t.trim().to_string());
    }
    let read = |path: &Path| -> Result<String> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        Ok(text.trim().to_string())
    };
    if let Some(path) = token_file {
        return read(path);
    }
    if let Ok(t) = std::env::var("CORRAL_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    match fallback {
        Some(path) if path.exists() => read(path),
        _ => Err(anyhow!(
            "no token: pass --token or --token-file, or set $CORRAL_TOKEN \
             (`corral token create`; the server's first start wrote an admin token to <data-dir>/admin.token)"
        )),
    }
}

/// How the CLI's clients talk to the server. Certificates are read only for an
/// `https://` server, and then once for all its clients: the platform's roots are
/// hundreds of files (`/etc/ssl/certs`), which would cost each command several
/// times what the command itself does.
#[derive(Clone)]
pub enum Tls {
    /// An `http://` server: no certificate is read (`--ca-cert` included).
    Plain,
    /// An `https://` server: ring as rustls's provider, the platform's roots and
    /// those of `--ca-cert`, loaded into one verifier that every client shares.
    Verified(Box<rustls::ClientConfig>),
}

impl Tls {
    /// The set-up for talking to `server`.
    pub fn for_server(server: &str, ca_cert: Option<&Path>) -> Result<Tls> {
        // reqwest takes rustls's default provider even for a client that never
        // talks TLS; installing twice is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !server
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        {
            return Ok(Tls::Plain);
        }
        let mut extra = Vec::new();
        if let Some(path) = ca_cert {
            let pem =
                std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                extra.push(cert.with_context(|| {
                    format!("--ca-cert {}: not PEM certificates", path.display())
                })?);
            }
            if extra.is_empty() {
                bail!("--ca-cert {}: holds no PEM certificate", path.display());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                .context("loading the trusted certificates")?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Tls::Verified(Box::new(config)))
    }

    /// A reqwest client builder with this set-up.
    pub fn builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        match self {
            // No roots at all, so reqwest does not load the platform's either: the
            // client never talks TLS.
            Tls::Plain => builder.tls_certs_only(Vec::new()),
            Tls::Verified(config) => builder.tls_backend_preconfigured(config.as_ref().clone()),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    /// For answers that last as long as a run: no overall deadline.
    stream: reqwest::Client,
    base: String,
    token: String,
}

/// The most runs the CLI asks for in one request; longer lists are paged.
pub const PAGE: usize = 1000;

/// Bodies of YAML documents (JSON is YAML too).
const YAML: &str = "application/yaml";

impl Client {
    pub fn new(server: &str, token: String, ca_cert: Option<PathBuf>) -> Result<Client> {
        let tls = Tls::for_server(server, ca_cert.as_deref())?;
        let http = tls
            .builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()?;
        let stream = tls
            .builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Duration::from_secs(30))
            .build()?;
        Ok(Client {
            http,
            stream,
            base: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the corral server at {}: {e}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(anyhow!("{} ({})", body.error.message, status)),
            Err(_) => Err(anyhow!("the server answered {status}: {text}")),
        }
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        Ok(self.send(request).await?.json().await?)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub async fn apply(&self, text: &str) -> Result<Vec<Applied>> {
        self.json(
            self.http
                .post(self.url("/apply"))
                .header(reqwest::header::CONTENT_TYPE, YAML)
                .body(text.to_string()),
        )
        .await
    }

    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        self.send(self.http.delete(self.url(&format!("/pools/{name}"))))
            .await?;
        Ok(())
    }

    pub async fn submit(&self, text: &str) -> Result<RunView> {
        self.json(
            self.http
                .post(self.url("/runs"))
                .header(reqwest::header::CONTENT_TYPE, YAML)
                .body(text.to_string()),
        )
        .await
    }

    /// Submits `count` runs of each combination of the pipeline's matrix (a bulk
    /// submit), or without `count` the pipeline as it is: its run, or its matrix's runs.
    pub async fn submit_runs(&self, text: &str, count: Option<u32>) -> Result<Submitted> {
        let mut request = self
            .http
            .post(self.url("/runs"))
            .header(reqwest::header::CONTENT_TYPE, YAML)
            .body(text.to_string());
        if let Some(count) = count {
            request = request.query(&[("count", count)]);
        }
        self.json(request).await
    }

    pub async fn create_token(&self, req: &TokenCreate) -> Result<TokenCreated> {
        self.json(self.http.post(self.url("/tokens")).json(req))
            .await
    }

    /// The server's background workers (not agents).
    pub async fn background_workers(&self) -> Result<Vec<BackgroundWorkerView>> {
        self.json(self.http.get(self.url("/workers"))).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        self.json(self.http.get(self.url("/tokens"))).await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<TokenView> {
        self.json(self.http.delete(self.url(&format!("/tokens/{name}"))))
            .await
    }

    pub async fn audit(&self, query: &[(&str, String)]) -> Result<Vec<AuditView>> {
        self.json(self.http.get(self.url("/audit")).query(query))
            .await
    }

    /// A usage report: JSON, or the server's CSV as text.
    pub async fn usage(&self, query: &[(&str, String)]) -> Result<UsageView> {
        self.json(self.http.get(self.url("/usage")).query(query))
            .await
    }

    pub async fn usage_csv(&self, query: &[(&str, String)]) -> Result<String> {
        let request = self
            .http
            .get(self.url("/usage"))
            .query(query)
            .header(reqwest::header::ACCEPT, "text/csv");
        Ok(self.send(request).await?.text().await?)
    }

    pub async fn recommendation(
        &self,
        pipeline: &str,
        tenant: Option<&str>,
    ) -> Result<RecommendationView> {
        let query: Vec<(&str, &str)> = tenant.map(|t| ("tenant", t)).into_iter().collect();
        self.json(
            self.http
                .get(self.url(&format!("/pipelines/{pipeline}/recommendation")))
                .query(&query),
        )
        .await
    }

    pub async fn tenant_summary(&self, name: &str) -> Result<TenantSummary> {
        self.json(self.http.get(self.url(&format!("/tenants/{name}/summary"))))
            .await
    }

    pub async fn pools(&self) -> Result<Vec<PoolView>> {
        self.json(self.http.get(self.url("/pools"))).await
    }

    pub async fn tenants(&self) -> Result<Vec<TenantView>> {
        self.json(self.http.get(self.url("/tenants"))).await
    }

    /// Runs, newest first: `want` of them (all, without), a page of at most
    /// [`PAGE`] per request; and whether there are more than `want`.
    pub async fn runs(
        &self,
        tenant: Option<&str>,
        state: Option<&str>,
        want: Option<u32>,
    ) -> Result<(Vec<RunSummary>, bool)> {
        let mut runs: Vec<RunSummary> = Vec::new();
        loop {
            // One more than wanted says whether there are more.
            let ask = want.map_or(PAGE, |n| (n as usize + 1 - runs.len()).min(PAGE));
            let mut query = vec![("limit", ask.to_string())];
            for (key, value) in [("tenant", tenant), ("state", state)] {
                if let Some(v) = value {
                    query.push((key, v.to_string()));
                }
            }
            if let Some(last) = runs.last() {
                query.push(("before", last.id.to_string()));
            }
            let page: Vec<RunSummary> = self
                .json(self.http.get(self.url("/runs")).query(&query))
                .await?;
            let ended = page.len() < ask;
            runs.extend(page);
            if ended || want.is_some_and(|n| runs.len() > n as usize) {
                break;
            }
        }
        let more = want.is_some_and(|n| runs.len() > n as usize);
        runs.truncate(want.map_or(usize::MAX, |n| n as usize));
        Ok((runs, more))
    }

    /// Queued runs in admission order: `want` of them (all, without), a page
    /// of at most [`PAGE`] per request; and how many wait in all.
    pub async fn queue(
        &self,
        tenant: Option<&str>,
        want: Option<u32>,
    ) -> Result<(Vec<RunSummary>, u64)> {
        let mut runs: Vec<RunSummary> = Vec::new();
        loop {
            let ask = want.map_or(PAGE, |n| (n as usize - runs.len()).min(PAGE));
            let mut query = vec![("limit", ask.to_string())];
            if let Some(t) = tenant {
                query.push(("tenant", t.to_string()));
            }
            if let Some(place) = runs.last().and_then(|r| r.queue.as_ref()) {
                query.push(("after", place.position.to_string()));
            }
            let answer = self
                .send(self.http.get(self.url("/queue")).query(&query))
                .await?;
            let total = answer
                .headers()
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .context("the server's queue answer has no X-Total-Count")?;
            let page: Vec<RunSummary> = answer.json().await?;
            let ended = page.len() < ask;
            runs.extend(page);
            if ended || want.is_some_and(|n| runs.len() >= n as usize) {
                return Ok((runs, total));
            }
        }
    }

    pub async fn run(&self, id: i64) -> Result<RunView> {
        self.json(self.http.get(self.url(&format!("/runs/{id}"))))
            .await
    }

    pub async fn cancel(&self, id: i64) -> Result<RunView> {
        self.json(self.http.post(self.url(&format!("/runs/{id}/cancel"))))
            .await
    }

    /// Writes a run's output to stdout as it arrives: what is stored now, or
    /// (following) everything until the run ends, pushed by the server as it
    /// is stored. Returns the run's state once the output is all written.
    /// Prints a run's output as it streams, escapes neutralised unless `raw`
    /// (see `escapes`); answers the run's state at the end.
    pub async fn print_logs(
        &self,
        id: i64,
        step: Option<&str>,
        follow: bool,
        raw: bool,
    ) -> Result<String> {
        use std::io::Write;
        let mut request = self.stream.get(self.url(&format!("/runs/{id}/logs")));
        if let Some(step) = step {
            request = request.query(&[("step", step)]);
        }
        if follow {
            request = request.query(&[("follow", "true")]);
        }
        let mut response = self.send(request).await?;
        let mut stdout = std::io::stdout().lock();
        let mut shown = crate::escapes::Stream::default();
        while let Some(bytes) = response
            .chunk()
            .await
            .map_err(|e| anyhow!("the log stream from {} broke off: {e}", self.base))?
        {
            if raw {
                stdout.write_all(&bytes)?;
            } else {
                stdout.write_all(shown.push(&bytes).as_bytes())?;
            }
            stdout.flush()?;
        }
        stdout.write_all(shown.finish().as_bytes())?;
        drop(stdout);
        Ok(self.run(id).await?.summary.state)
    }
}

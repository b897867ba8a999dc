//! The agent's side of the HTTP protocol, with retries: a server restart is
//! ridden out, not fatal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral_api::{
    LogAppend, PollRequest, PollResponse, RegisterRequest, RegisterResponse, ReportRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AgentError;
use crate::backoff::Backoff;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// The bearer token of every call: the agent token for registration, then
    /// the worker's secret.
    bearer: Arc<str>,
}

/// What a failed call means for the caller.
pub enum CallError {
    /// The server could not be reached or failed: try again.
    Retry(String),
    /// The server refused the call (4xx): trying again will not help.
    Refused(u16, String),
}

impl Client {
    pub fn new(server: &str, token: &str, ca_cert: Option<&Path>) -> Result<Client, AgentError> {
        // ring is rustls's provider; installing twice is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| AgentError::Http(format!("--ca-cert {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AgentError::Http(format!("--ca-cert {}: {e}", path.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| AgentError::Http(e.to_string()))?;
        Ok(Client {
            http,
            base: server.trim_end_matches('/').to_string(),
            bearer: token.into(),
        })
    }

    /// The same client, calling with `secret`.
    pub fn with_bearer(&self, secret: &str) -> Client {
        Client {
            bearer: secret.into(),
            ..self.clone()
        }
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Option<R>, CallError> {
        self.post_within(path, body, None).await
    }

    /// Posts, giving up after `within` when given (the client's own timeout
    /// otherwise).
    async fn post_within<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        within: Option<Duration>,
    ) -> Result<Option<R>, CallError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.bearer)
            .json(body);
        if let Some(within) = within {
            request = request.timeout(within);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Retry(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return Ok(None);
            }
            return response
                .json::<R>()
                .await
                .map(Some)
                .map_err(|e| CallError::Retry(e.to_string()));
        }
        let text = response.text().await.unwrap_or_default();
        if status.is_client_error() {
            Err(CallError::Refused(status.as_u16(), text))
        } else {
            Err(CallError::Retry(format!("{status}: {text}")))
        }
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, CallError> {
        self.post("/api/v1/agents/register", req)
            .await?
            .ok_or_else(|| CallError::Retry("empty register answer".into()))
    }

    /// Polls; a poll unanswered after its wait and `lease` could renew
    /// nothing any more, and is given up for a new one.
    pub async fn poll(
        &self,
        worker: i64,
        req: &PollRequest,
        lease: Duration,
    ) -> Result<PollResponse, CallError> {
        let within = Duration::from_millis(req.wait_ms) + lease;
        self.post_within(&format!("/api/v1/agents/{worker}/poll"), req, Some(within))
            .await?
            .ok_or_else(|| CallError::Retry("empty poll answer".into()))
    }

    pub async fn append_log(
        &self,
        worker: i64,
        attempt: i64,
        req: &LogAppend,
    ) -> Result<(), CallError> {
        self.post::<_, serde_json::Value>(
            &format!("/api/v1/agents/{worker}/attempts/{attempt}/logs"),
            req,
        )
        .await
        .map(|_| ())
    }

    pub async fn report(
        &self,
        worker: i64,
        attempt: i64,
        req: &ReportRequest,
    ) -> Result<(), CallError> {
        self.post::<_, serde_json::Value>(
            &format!("/api/v1/agents/{worker}/attempts/{attempt}/report"),
            req,
        )
        .await
        .map(|_| ())
    }
}

/// Retries `call` with a growing pause (jittered, at most a second) until it
/// succeeds or is refused.
pub async fn with_retry<T, F, Fut>(what: &str, call: F) -> Result<T, (u16, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    with_backoff(what, backoff, call).await
}

/// Retries `call`, pausing as `backoff` says, until it succeeds or is refused.
pub async fn with_backoff<T, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    mut call: F,
) -> Result<T, (u16, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(CallError::Refused(status, text)) => return Err((status, text)),
            Err(CallError::Retry(e)) => {
                let pause = backoff.next_pause();
                tracing::debug!(what, error = %e, ?pause, "retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

//! Simulated agents: tokio tasks of the bench speaking the agent protocol
//! over HTTP (register with an `agent` token, long-poll, report), with no
//! process and no step behind them. An attempt "runs" until the bench reports
//! it succeeded.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use corral_api::{
    Assignment, PollRequest, PollResponse, RegisterRequest, RegisterResponse, ReportRequest,
    ResourcesView,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::server::Api;

/// What a pool's agents did, counted across them.
#[derive(Default)]
pub struct PollCounts {
    pub polls: AtomicU64,
    pub errors: AtomicU64,
    pub shutdowns: AtomicU64,
}

/// A registered simulated agent.
pub struct SimAgent {
    pub worker: i64,
    /// Calls with the worker's secret.
    api: Api,
    /// Attempts handed to it and not reported yet: every poll says them.
    running: Mutex<BTreeSet<i64>>,
    /// How long the server may hold a poll: a third of the lease, as the
    /// real agent asks.
    wait_ms: u64,
}

impl SimAgent {
    /// Registers agent `name` into `pool` with `token` (an agent token of
    /// the pool), declaring `capacity`.
    pub async fn register(
        api: &Api,
        pool: &str,
        name: &str,
        capacity: ResourcesView,
    ) -> Result<Arc<SimAgent>> {
        let request = RegisterRequest {
            pool: pool.to_string(),
            name: name.to_string(),
            instance: Some(name.to_string()),
            incarnation: Some(format!("{name}-{}", std::process::id())),
            capacity,
            labels: Default::default(),
            confinement: None,
        };
        let text = api
            .post_json("/api/v1/agents/register", &request)
            .await
            .with_context(|| format!("registering agent {name} into pool {pool}"))?;
        let registered: RegisterResponse =
            serde_json::from_str(&text).with_context(|| format!("a registration: {text}"))?;
        Ok(Arc::new(SimAgent {
            worker: registered.worker_id,
            api: api.as_bearer(&registered.worker_secret),
            running: Mutex::new(BTreeSet::new()),
            wait_ms: (registered.lease_ms / 3).clamp(200, 10_000),
        }))
    }

    /// Polls until `stop` turns true, sending each assignment to `handed`
    /// (dropped when nobody listens).
    pub fn spawn_polls(
        self: &Arc<Self>,
        handed: Option<mpsc::UnboundedSender<Assignment>>,
        counts: Arc<PollCounts>,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            let path = format!("/api/v1/agents/{}/poll", agent.worker);
            while !*stop.borrow() {
                let request = PollRequest {
                    running: agent.running().into_iter().collect(),
                    wait_ms: agent.wait_ms,
                };
                let answer = tokio::select! {
                    answer = agent.api.post_json(&path, &request) => answer,
                    _ = stop.changed() => break,
                };
                counts.polls.fetch_add(1, Ordering::Relaxed);
                let poll = answer.and_then(|text| {
                    serde_json::from_str::<PollResponse>(&text)
                        .with_context(|| format!("a poll's answer: {text}"))
                });
                match poll {
                    Ok(poll) if poll.shutdown => {
                        counts.shutdowns.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(poll) => {
                        for assignment in poll.assignments {
                            agent.hold(assignment.attempt_id);
                            if let Some(handed) = &handed {
                                let _ = handed.send(assignment);
                            }
                        }
                    }
                    Err(e) => {
                        if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("agent {}: {e:#}", agent.worker);
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    }

    fn running(&self) -> BTreeSet<i64> {
        self.running
            .lock()
            .expect("no holder of the running set panics")
            .clone()
    }

    fn hold(&self, attempt: i64) {
        self.running
            .lock()
            .expect("no holder of the running set panics")
            .insert(attempt);
    }

    /// Reports that `attempt` succeeded; the server has committed its end
    /// when this returns.
    pub async fn succeed(&self, attempt: i64) -> Result<()> {
        let report = ReportRequest {
            outcome: "succeeded".into(),
            exit_code: Some(0),
            error: None,
            usage: None,
        };
        self.api
            .post_json(
                &format!("/api/v1/agents/{}/attempts/{attempt}/report", self.worker),
                &report,
            )
            .await?;
        self.running
            .lock()
            .expect("no holder of the running set panics")
            .remove(&attempt);
        Ok(())
    }
}

//! The server's health as it sees it: readiness (`/healthz`) is a write read
//! back on another connection than the writer's, so it says what the store
//! really keeps, not what the writer's own transaction would show; and no
//! vital background worker (the committer, the controller) may be down. The
//! public answer is a status alone; the store's error (which may name the
//! database) and the workers down go only to `viewer` and `admin` tokens.

use std::sync::Mutex;
use std::time::Instant;

use corral_core::access::Access;
use serde::Serialize;

use super::*;
use crate::background::{Job, JobError, Progress};

/// How long the committer tries to rebuild the state from a failing store
/// before the server gives up and exits.
pub const RELOAD_PATIENCE: Duration = Duration::from_secs(60);

/// How often the store is probed in the background (the `store-watch`
/// background worker, [`StoreWatch`]), so that a readiness check answers at
/// once, however many there are.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long a probe may take before it counts as failed: long enough that a
/// store busy with a burst of commits (the probe waits for the writer) is not
/// called unavailable, short enough that a load balancer hears of a hung one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a probe's answer stands; an older one (or none since a commit
/// failed) is replaced by a probe made for the check. It outlasts the
/// background probe's period and timeout together, so that checks do not
/// start probes of their own while the background one is merely slow.
const PROBE_REUSE: Duration = PROBE_EVERY
    .saturating_add(PROBE_TIMEOUT)
    .saturating_add(Duration::from_secs(1));

#[derive(Default)]
pub struct StoreHealth {
    /// Since when, and why, writes fail; none while they go through.
    failing: Mutex<Option<(Timestamp, String)>>,
    /// The last probe: when, and what it found.
    probed: Mutex<Option<(Instant, Result<(), String>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StoreHealth {
    pub fn committed(&self) {
        *lock(&self.failing) = None;
    }

    /// A write failed: readiness probes again before it answers.
    pub fn failed(&self, now: Timestamp, error: String) {
        let mut failing = lock(&self.failing);
        let since = failing.as_ref().map_or(now, |(since, _)| *since);
        *failing = Some((since, error));
        *lock(&self.probed) = None;
    }
}

/// Probes the store every [`PROBE_EVERY`], for readiness to read. A failed
/// probe is the store's failure, not this worker's: readiness tells it.
pub struct StoreWatch(pub Arc<Engine>);

impl Job for StoreWatch {
    async fn work(&mut self) -> std::result::Result<Progress, JobError> {
        // Kept for readiness, which reads it.
        let _ = self.0.probe().await;
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Whether the server can take work: `/healthz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok`, or `unavailable` while the store cannot write or a vital
    /// background worker is down.
    pub status: &'static str,
    /// What the store last said, when it failed (to `viewer` and `admin` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// Since when writes fail (milliseconds since the epoch; to `viewer` and
    /// `admin` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<i64>,
    /// The vital background workers that are down (to `viewer` and `admin`
    /// only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub background_workers_down: Vec<BackgroundWorkerDown>,
}

/// A vital background worker that is down, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackgroundWorkerDown {
    pub name: &'static str,
    /// `backing_off` (it runs again after a pause) or `failed` (for good).
    pub status: &'static str,
    /// What its last failure said.
    pub last_error: Option<String>,
}

impl Engine {
    /// Readiness as told to the bearer of `authorization`: the details only
    /// to a `viewer` or `admin` token; anyone else (no token, or any other)
    /// learns only whether the server is ready.
    pub async fn readiness_for(&self, authorization: Option<&str>) -> Readiness {
        let detailed = auth::bearer(authorization)
            .ok()
            .and_then(|secret| self.credentials().resolve(secret, self.now()).ok())
            .is_some_and(|caller| {
                matches!(caller, auth::Caller::Token(p) if Access::ReadAll.allows(&p.role))
            });
        let mut readiness = self.readiness().await;
        if !detailed {
            readiness.store_error = None;
            readiness.failing_since_ms = None;
            readiness.background_workers_down.clear();
        }
        readiness
    }

    /// Ready when a probe write is seen committed from another connection,
    /// and no vital background worker is down.
    pub async fn readiness(&self) -> Readiness {
        let recent = lock(&self.health.probed)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < PROBE_REUSE)
            .map(|(_, found)| found.clone());
        let found = match recent {
            Some(found) => found,
            None => self.probe().await,
        };
        let background_workers_down: Vec<BackgroundWorkerDown> = self
            .background
            .vital_down()
            .into_iter()
            .map(|w| BackgroundWorkerDown {
                name: w.name,
                status: w.status.as_str(),
                last_error: w.last_error.map(|(_, e)| e),
            })
            .collect();
        let (store_error, failing_since_ms) = match found {
            Ok(()) => (None, None),
            Err(e) => (
                Some(e),
                lock(&self.health.failing)
                    .as_ref()
                    .map(|(since, _)| since.0),
            ),
        };
        let ready = store_error.is_none() && background_workers_down.is_empty();
        Readiness {
            status: if ready { "ok" } else { "unavailable" },
            store_error,
            failing_since_ms,
            background_workers_down,
        }
    }

    /// Writes and reads back a probe; the outcome is kept for readiness.
    async fn probe(&self) -> Result<(), String> {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, self.store.probe_write()).await;
        let found = probe
            .unwrap_or_else(|_| Err(StoreError::Timeout("a probe write".into())))
            .map_err(|e| e.to_string());
        match &found {
            Ok(()) => self.health.committed(),
            Err(e) => {
                let now = self.now();
                let mut failing = lock(&self.health.failing);
                let since = failing.as_ref().map_or(now, |(since, _)| *since);
                *failing = Some((since, e.clone()));
            }
        }
        *lock(&self.health.probed) = Some((Instant::now(), found.clone()));
        found
    }
}

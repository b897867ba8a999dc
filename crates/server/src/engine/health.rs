//! The store's health as the server sees it: whether its last write went
//! through, and (asked while it is failing) whether it takes a write now.

use std::sync::Mutex;

use serde::Serialize;

use super::*;

/// How long the committer tries to rebuild the state from a failing store
/// before the server gives up and exits.
pub const RELOAD_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct StoreHealth {
    /// Since when, and why, writes fail; none while they go through.
    failing: Mutex<Option<(Timestamp, String)>>,
}

impl StoreHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Timestamp, String)>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn committed(&self) {
        *self.lock() = None;
    }

    pub fn failed(&self, now: Timestamp, error: String) {
        let mut failing = self.lock();
        let since = failing.as_ref().map_or(now, |(since, _)| *since);
        *failing = Some((since, error));
    }
}

/// Whether the server can take work: `/healthz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ok`, or `unavailable` while the store cannot write.
    pub status: &'static str,
    /// What the store last said, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// Since when writes fail (milliseconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<i64>,
}

impl Engine {
    /// Ready unless the store's last write failed and a probe write fails too.
    pub async fn readiness(&self) -> Readiness {
        let failing = self.health.lock().clone();
        let Some((since, _)) = failing else {
            return Readiness {
                status: "ok",
                store_error: None,
                failing_since_ms: None,
            };
        };
        let probe = tokio::time::timeout(Duration::from_secs(2), self.store.probe_write()).await;
        match probe.unwrap_or_else(|_| Err(StoreError::Timeout("a probe write".into()))) {
            Ok(()) => {
                self.health.committed();
                Readiness {
                    status: "ok",
                    store_error: None,
                    failing_since_ms: None,
                }
            }
            Err(e) => {
                self.health.failed(self.now(), e.to_string());
                Readiness {
                    status: "unavailable",
                    store_error: Some(e.to_string()),
                    failing_since_ms: Some(since.0),
                }
            }
        }
    }
}

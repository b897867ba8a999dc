//! `capacity: auto`: a pool sized by its provider (a Kubernetes pool from the
//! allocatable resources of the nodes it may use, less what other pods
//! request). The pool-capacity worker asks every so often, off the lock, and
//! records a change as the pool's capacity history, which the snapshot and
//! metering read: the pool offers what was last found.

use corral_core::metering::CapacityChange;

use super::*;
use crate::background::{Job, JobError, Progress};

/// The longest a provider may take to size a pool.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Engine {
    /// Records `capacity` as what auto pool `pool` offers from now on, if it
    /// is still such a pool and that is a change; the controller is woken.
    pub(super) async fn set_auto_capacity(&self, pool: &str, capacity: Resources) -> Result<()> {
        let mut state = self.state.lock().await;
        let auto = state
            .pools
            .get(pool)
            .is_some_and(|p| p.spec.auto_capacity());
        if !auto || state.spend.capacity(pool) == Some(capacity) {
            return Ok(());
        }
        tracing::info!(pool, %capacity, "the pool's provider found a new capacity");
        let now = self.now();
        let mut fx = Effects {
            controller: true,
            ..Effects::default()
        };
        let change = Write::PutCapacity(CapacityChange {
            pool: pool.to_string(),
            at_ms: now.0,
            capacity,
        });
        self.stage(&mut state, vec![change], &mut fx);
        drop(state);
        self.finish(fx).await
    }
}

/// How often the worker looks for auto pools to size: a pool just applied is
/// sized within this.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The pool-capacity worker (a background worker): sizes each `capacity:
/// auto` pool through its provider when it appears and then every `every`.
pub struct PoolCapacity {
    engine: Arc<Engine>,
    every: Duration,
    /// When each pool was last sized (its spec then: a changed spec, a new
    /// node selector say, is sized again at once).
    sized: BTreeMap<String, (std::time::Instant, PoolSpec)>,
}

impl PoolCapacity {
    pub fn new(engine: Arc<Engine>, every: Duration) -> PoolCapacity {
        PoolCapacity {
            engine,
            every,
            sized: BTreeMap::new(),
        }
    }
}

impl Job for PoolCapacity {
    async fn work(&mut self) -> Result<Progress, JobError> {
        let auto: Vec<PoolSpec> = self
            .engine
            .read_model()
            .view()
            .pools
            .values()
            .filter(|p| p.spec.auto_capacity())
            .filter(|p| {
                self.sized
                    .get(&p.spec.name)
                    .is_none_or(|(at, spec)| at.elapsed() >= self.every || *spec != p.spec)
            })
            .map(|p| p.spec.clone())
            .collect();
        let mut failed = Vec::new();
        for spec in auto {
            let Some(provider) = self.engine.providers.of(spec.provider).cloned() else {
                continue;
            };
            self.sized
                .insert(spec.name.clone(), (std::time::Instant::now(), spec.clone()));
            match tokio::time::timeout(CALL_TIMEOUT, provider.capacity(&spec)).await {
                Ok(Ok(Some(capacity))) => {
                    self.engine.set_auto_capacity(&spec.name, capacity).await?
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => failed.push(format!("pool {}: {e}", spec.name)),
                Err(_) => failed.push(format!("pool {}: no answer within 30s", spec.name)),
            }
        }
        // A pool its provider cannot size keeps what was last found; the
        // worker says so in its status.
        if failed.is_empty() {
            Ok(Progress::Idle)
        } else {
            Err(format!("cannot size {}", failed.join("; ")).into())
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

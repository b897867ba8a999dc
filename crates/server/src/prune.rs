//! Forgetting lost workers. Every registration leaves a worker row; a lost one
//! is kept for a retention (to tell what ran where), then deleted, a bounded
//! batch per tick, so that a flood of registrations cannot grow the store for
//! ever. Nothing refers to a lost worker: attempts and allocations keep its id
//! as a plain value, and the state holds only live workers.

use std::sync::Arc;
use std::time::Duration;

use corral_store::StoreError;

use crate::background::{Job, JobError, Progress};
use crate::engine::Engine;

/// Lost workers deleted at most per statement.
pub const BATCH: u32 = 500;

/// The pause between batches while there is a backlog, and when there is none.
const BUSY_TICK: Duration = Duration::from_secs(1);
const IDLE_TICK: Duration = Duration::from_secs(60);

/// Deletes one batch of workers lost for longer than `retention`; returns how
/// many.
pub async fn prune_lost_workers(engine: &Engine, retention: Duration) -> Result<u64, StoreError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let before = corral_core::clock::Timestamp(engine.now().0.saturating_sub(retention_ms));
    engine.store().prune_lost_workers(before, BATCH).await
}

/// The background worker: a batch at a time, sooner while there is a backlog.
pub struct LostWorkerPrune {
    engine: Arc<Engine>,
    retention: Duration,
    /// Until the next batch.
    pause: Duration,
}

impl LostWorkerPrune {
    pub fn new(engine: Arc<Engine>, retention: Duration) -> LostWorkerPrune {
        LostWorkerPrune {
            engine,
            retention,
            pause: IDLE_TICK,
        }
    }
}

impl Job for LostWorkerPrune {
    async fn work(&mut self) -> Result<Progress, JobError> {
        // Failed, it is tried again after the supervisor's pause.
        self.pause = IDLE_TICK;
        let pruned = prune_lost_workers(&self.engine, self.retention).await?;
        if pruned >= u64::from(BATCH) {
            tracing::info!(
                pruned,
                "lost workers past the retention deleted; more to go"
            );
            self.pause = BUSY_TICK;
        } else if pruned > 0 {
            tracing::info!(pruned, "lost workers past the retention deleted");
        }
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.pause).await;
    }
}

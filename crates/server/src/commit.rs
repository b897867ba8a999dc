//! Group commit: state changes are applied in memory and queued here in order;
//! one task writes everything queued in a single transaction, so that many
//! concurrent operations share one commit. An operation answers, and acts (wakes
//! agents, spawns workers), only once its writes are settled.

use std::sync::Mutex;

use corral_store::Write;
use tokio::sync::{Notify, watch};

use crate::background::{Job, JobError, Progress};

/// Writes staged by one operation, numbered in staging order.
pub struct Batch {
    pub seq: u64,
    pub writes: Vec<Write>,
}

/// A span of batches whose transaction failed.
struct Failure {
    first: u64,
    last: u64,
    message: String,
}

pub struct CommitQueue {
    queue: Mutex<Vec<Batch>>,
    wake: Notify,
    /// Every batch up to this number is settled: committed, or failed.
    settled: watch::Sender<u64>,
    failures: Mutex<Vec<Failure>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CommitQueue {
    pub fn new(settled: u64) -> CommitQueue {
        CommitQueue {
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            settled: watch::Sender::new(settled),
            failures: Mutex::new(Vec::new()),
        }
    }

    /// Queues a batch; batches must come in increasing `seq`.
    pub fn enqueue(&self, batch: Batch) {
        lock(&self.queue).push(batch);
        self.wake.notify_one();
    }

    /// Everything queued so far, waiting until there is something.
    pub async fn next(&self) -> Vec<Batch> {
        loop {
            let batches = std::mem::take(&mut *lock(&self.queue));
            if !batches.is_empty() {
                return batches;
            }
            self.wake.notified().await;
        }
    }

    /// Takes what is queued without waiting.
    pub fn drain(&self) -> Vec<Batch> {
        std::mem::take(&mut *lock(&self.queue))
    }

    pub fn settled(&self) -> u64 {
        *self.settled.borrow()
    }

    pub fn mark_committed(&self, last: u64) {
        self.settled.send_replace(last);
    }

    pub fn mark_failed(&self, first: u64, last: u64, message: String) {
        let mut failures = lock(&self.failures);
        // Waiters read a failure as soon as it is marked; old ones are not needed.
        if failures.len() >= 1000 {
            failures.remove(0);
        }
        failures.push(Failure {
            first,
            last,
            message,
        });
        self.settled.send_replace(last);
    }

    /// Waits until batch `seq` is settled; fails if its transaction failed.
    pub async fn settle(&self, seq: u64) -> Result<(), String> {
        let mut rx = self.settled.subscribe();
        rx.wait_for(|s| *s >= seq)
            .await
            .map_err(|_| "the committer stopped".to_string())?;
        let failures = lock(&self.failures);
        match failures.iter().find(|f| f.first <= seq && seq <= f.last) {
            Some(f) => Err(f.message.clone()),
            None => Ok(()),
        }
    }
}

/// The committer as a background worker: idle until batches are queued, then
/// one round writes them all. Its failure (the store cannot even be read back)
/// is for good: the server exits.
pub(crate) struct Committer {
    engine: std::sync::Arc<crate::engine::Engine>,
    batches: Vec<Batch>,
}

impl Committer {
    pub fn new(engine: std::sync::Arc<crate::engine::Engine>) -> Committer {
        Committer {
            engine,
            batches: Vec::new(),
        }
    }
}

impl Job for Committer {
    async fn work(&mut self) -> Result<Progress, JobError> {
        let batches = std::mem::take(&mut self.batches);
        if !batches.is_empty() {
            self.engine.commit_batches(batches).await?;
        }
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        // Taken whole once `next_batches` returns: nothing is lost if this
        // wait is dropped.
        self.batches = self.engine.next_batches().await;
    }
}

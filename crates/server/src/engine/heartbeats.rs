//! When each worker last polled, kept apart from the state: a poll is recorded
//! here before it waits for the engine's lock, so a poll that cannot have the
//! lock (the committer holds it while it reloads the state from a failing
//! store) still counts as a heartbeat. Such a poll renews the agent's lease
//! without anything else, and the lost-worker sweep, which holds the lock,
//! reads both this and the state's `last_seen`.

use std::collections::HashMap;
use std::sync::Mutex;

use corral_core::clock::Timestamp;
use corral_core::ids::WorkerId;

#[derive(Debug, Default)]
pub(super) struct Heartbeats(Mutex<HashMap<WorkerId, Timestamp>>);

impl Heartbeats {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Timestamp>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `worker` polled at `now`.
    pub(super) fn beat(&self, worker: WorkerId, now: Timestamp) {
        let mut map = self.map();
        let last = map.entry(worker).or_insert(now);
        *last = (*last).max(now);
    }

    /// When `worker` last polled, as recorded here.
    pub(super) fn last(&self, worker: WorkerId) -> Option<Timestamp> {
        self.map().get(&worker).copied()
    }

    /// Forgets the workers `live` does not keep.
    pub(super) fn retain(&self, live: impl Fn(WorkerId) -> bool) {
        self.map().retain(|w, _| live(*w));
    }
}

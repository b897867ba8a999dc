//! The governance time series at run time (what each series means is in
//! `corral_core::history`): a sampler that takes the samples of the state every
//! `--sample-interval` and stores them, and a rollup that turns raw samples into
//! hourly aggregates and deletes what is past retention.
//!
//! Samples never go through the commit queue: they are written on the store's
//! history connection (for SQLite, its own file), so a slow or failed sample
//! write never delays an admission. Each sample is stamped with its tick's
//! scheduled time (the sampler's start plus a whole number of intervals; a late
//! tick reads the state a little after its stamp), so the points of one run of
//! the server are exactly one interval apart, and sampling starts with the
//! server: after a restart the gap is the time it was down plus at most an
//! interval. A batch that cannot be written is kept and retried with the next
//! tick's, up to `MAX_PENDING` samples (then the oldest are dropped).

use std::sync::Arc;
use std::time::Duration;

use corral_core::history::{Rollup, Sample, sample};

use crate::background::{Job, JobError, Progress};
use crate::engine::Engine;

/// Samples kept while the store does not take them.
const MAX_PENDING: usize = 100_000;

/// How often the rollup runs (it recomputes only the hours since its last run).
const ROLLUP_EVERY: Duration = Duration::from_secs(600);

/// The sampler: a round takes the sample of a tick that came (the first at
/// once) and stores what is pending.
pub struct Sampler {
    engine: Arc<Engine>,
    interval_ms: i64,
    start: corral_core::clock::Timestamp,
    /// Late ticks fire as soon as they can, each with its own stamp (tokio's
    /// default, `Burst`).
    ticks: tokio::time::Interval,
    next_tick: i64,
    /// The stamp of a tick not sampled yet.
    due: Option<corral_core::clock::Timestamp>,
    pending: Vec<Sample>,
}

impl Sampler {
    pub fn new(engine: Arc<Engine>) -> Sampler {
        let interval = engine.config().sample_interval;
        let start = engine.now();
        Sampler {
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            start,
            ticks: tokio::time::interval_at(tokio::time::Instant::now() + interval, interval),
            next_tick: 1,
            due: Some(start),
            pending: Vec::new(),
            engine,
        }
    }
}

impl Job for Sampler {
    /// A batch that cannot be written is kept and retried by the next round
    /// (after the supervisor's pause, or with the next tick's).
    async fn work(&mut self) -> Result<Progress, JobError> {
        if let Some(at) = self.due.take() {
            // The committed view, and the queue as of its last positions.
            let view = self.engine.read_model().view();
            let positions = self.engine.read_model().positions();
            self.pending.extend(sample(
                &view.snapshot,
                positions.queue(),
                positions.waiting(),
                at,
            ));
        }
        if self.pending.len() > MAX_PENDING {
            let dropped = self.pending.len() - MAX_PENDING;
            self.pending.drain(..dropped);
            tracing::warn!(dropped, "history: samples dropped while the store fails");
        }
        self.engine.store().append_samples(&self.pending).await?;
        self.pending.clear();
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.ticks.tick().await;
        let tick = self.next_tick;
        self.next_tick += 1;
        self.due = Some(
            self.start
                .plus_millis(tick.saturating_mul(self.interval_ms)),
        );
    }
}

/// The rollup: raw samples into hourly aggregates, and retention, at start and
/// then every `ROLLUP_EVERY`.
pub struct HistoryRollup {
    engine: Arc<Engine>,
    ticks: tokio::time::Interval,
}

impl HistoryRollup {
    pub fn new(engine: Arc<Engine>) -> HistoryRollup {
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + ROLLUP_EVERY, ROLLUP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        HistoryRollup { engine, ticks }
    }
}

impl Job for HistoryRollup {
    async fn work(&mut self) -> Result<Progress, JobError> {
        self.engine
            .store()
            .roll_up_history(&Rollup::at(self.engine.now()))
            .await?;
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.ticks.tick().await;
    }
}

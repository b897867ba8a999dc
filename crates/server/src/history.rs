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

use crate::engine::Engine;

/// Samples kept while the store does not take them.
const MAX_PENDING: usize = 100_000;

/// How often the rollup runs (it recomputes only the hours since its last run).
const ROLLUP_EVERY: Duration = Duration::from_secs(600);

/// Samples the state every sampling interval, for ever.
pub async fn sample_loop(engine: Arc<Engine>) {
    let interval = engine.config().sample_interval;
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let start = engine.now();
    // The first tick is at once; late ticks fire as soon as they can, each
    // with its own stamp (tokio's default, `Burst`).
    let mut ticks = tokio::time::interval(interval);
    let mut pending: Vec<Sample> = Vec::new();
    let mut failing = false;
    for tick in 0i64.. {
        ticks.tick().await;
        let at = start.plus_millis(tick.saturating_mul(interval_ms));
        {
            // The committed view, and the queue as of its last positions.
            let view = engine.read_model().view();
            let positions = engine.read_model().positions();
            pending.extend(sample(
                &view.snapshot,
                positions.queue(),
                positions.waiting(),
                at,
            ));
        }
        if pending.len() > MAX_PENDING {
            let dropped = pending.len() - MAX_PENDING;
            pending.drain(..dropped);
            tracing::warn!(dropped, "history: samples dropped while the store fails");
        }
        match engine.store().append_samples(&pending).await {
            Ok(()) => {
                pending.clear();
                if failing {
                    tracing::info!("history: samples are stored again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "history: cannot store samples; retrying with the next");
                    failing = true;
                }
            }
        }
    }
}

/// Rolls raw samples up into hourly aggregates and applies retention, at
/// start and then every `ROLLUP_EVERY`, for ever.
pub async fn rollup_loop(engine: Arc<Engine>) {
    let mut ticks = tokio::time::interval(ROLLUP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = engine
            .store()
            .roll_up_history(&Rollup::at(engine.now()))
            .await
        {
            tracing::warn!(error = %e, "history: the rollup failed; it runs again later");
        }
    }
}

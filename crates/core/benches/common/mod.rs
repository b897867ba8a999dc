//! What the core's benches share.

/// Repetitions of each measurement: `CORRAL_BENCH_REPS`, 7 by default.
pub fn reps() -> usize {
    std::env::var("CORRAL_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7)
        .max(1)
}

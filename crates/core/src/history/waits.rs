//! Admission waits: how long runs waited from submission to their first
//! admission, kept per tenant and hour as a histogram so that any range of
//! hours, merged, still gives its percentiles.
//!
//! The buckets grow by a quarter octave (2^(1/4), about 19%): bucket 0 holds
//! waits up to 1 ms, bucket k > 0 those in (2^((k-1)/4), 2^(k/4)] ms. A
//! percentile is read by interpolating linearly within the bucket that holds
//! its rank, as Prometheus' `histogram_quantile` does, so it is off by less
//! than a bucket's width: under 19% of the true value above 1 ms.
//!
//! Pure: the waits come in.

use std::collections::BTreeMap;

use super::{HOUR_MS, LADDER_MS, MAX_BUCKETS, Step};
use crate::clock::Timestamp;
use crate::error::FieldError;

/// Buckets per doubling of the wait.
const PER_OCTAVE: f64 = 4.0;

/// The largest bucket: waits beyond 2^(200/4) ms (35 000 years) fall in it.
const LAST_BUCKET: u32 = 200;

/// The upper bound of bucket `k`, in milliseconds.
pub fn upper_ms(k: u32) -> f64 {
    (f64::from(k) / PER_OCTAVE).exp2()
}

/// The lower bound (excluded) of bucket `k`, in milliseconds.
pub fn lower_ms(k: u32) -> f64 {
    match k {
        0 => 0.0,
        k => upper_ms(k - 1),
    }
}

/// The bucket of a wait of `wait_ms` (a negative wait, from a clock that went
/// back, counts as none).
pub fn bucket_of(wait_ms: i64) -> u32 {
    if wait_ms <= 1 {
        return 0;
    }
    let w = wait_ms as f64;
    // The estimate from the logarithm, corrected where rounding put it off by one.
    let mut k = ((w.log2() * PER_OCTAVE).ceil() as u32).min(LAST_BUCKET);
    while k < LAST_BUCKET && upper_ms(k) < w {
        k += 1;
    }
    while k > 0 && upper_ms(k - 1) >= w {
        k -= 1;
    }
    k
}

/// Counts of runs per bucket, merged from any number of hours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    counts: BTreeMap<u32, u64>,
}

impl WaitHistogram {
    /// Counts `runs` more runs in bucket `k`.
    pub fn add(&mut self, k: u32, runs: u64) {
        *self.counts.entry(k.min(LAST_BUCKET)).or_default() += runs;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &WaitHistogram) {
        for (&k, &n) in &other.counts {
            self.add(k, n);
        }
    }

    /// How many runs it counts.
    pub fn runs(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The wait, in seconds, that a fraction `q` (in (0, 1]) of the runs did
    /// not exceed; none when it counts no run.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.runs();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (&k, &n) in &self.counts {
            if (below + n) as f64 >= rank {
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                let (lo, hi) = (lower_ms(k), upper_ms(k));
                return Some((lo + (hi - lo) * within) / 1000.0);
            }
            below += n;
        }
        self.counts.keys().last().map(|&k| upper_ms(k) / 1000.0)
    }
}

/// The length of the time buckets of a read of `[from, to]`: `step` when it
/// is whole hours (the waits are kept per hour) and gives at most
/// `MAX_BUCKETS` buckets, else, with no step, the shortest of 1h, 6h, 1d or
/// 7d that does.
pub fn step_ms(from: Timestamp, to: Timestamp, step: Option<Step>) -> Result<i64, FieldError> {
    let buckets = |ms: i64| to.millis_since(from) / ms;
    match step {
        Some(Step::Every(ms)) if ms % HOUR_MS != 0 => Err(FieldError::new(
            "step",
            "admission waits are kept per hour: give whole hours (1h, 6h, 1d)",
        )),
        Some(Step::Raw) => Err(FieldError::new(
            "step",
            "admission waits are kept per hour, not raw: give whole hours (1h, 6h, 1d)",
        )),
        Some(Step::Every(ms)) if buckets(ms) > MAX_BUCKETS => Err(FieldError::new(
            "step",
            format!(
                "{} buckets from `from` to `to`; at most {MAX_BUCKETS}: give a longer step or a shorter range",
                buckets(ms)
            ),
        )),
        Some(Step::Every(ms)) => Ok(ms),
        None => LADDER_MS
            .into_iter()
            .find(|&ms| ms >= HOUR_MS && buckets(ms) <= MAX_BUCKETS)
            .ok_or_else(|| {
                FieldError::new(
                    "from",
                    "the range is too long for any step (at most 1000 weeks)",
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_wait_falls_in_the_bucket_whose_bounds_hold_it() {
        assert_eq!(bucket_of(-5), 0);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 4);
        assert_eq!(bucket_of(3), 7);
        assert_eq!(bucket_of(1024), 40);
        assert_eq!(bucket_of(1025), 41);
        for w in [2, 3, 17, 999, 1000, 1001, 60_000, 86_400_000, i64::MAX] {
            let k = bucket_of(w);
            assert!(lower_ms(k) < w as f64, "{w} above bucket {k}'s lower bound");
            assert!(
                w as f64 <= upper_ms(k) || k == LAST_BUCKET,
                "{w} within bucket {k}"
            );
        }
    }

    #[test]
    fn a_read_of_waits_steps_by_whole_hours() {
        let day = 24 * HOUR_MS;
        let (from, to) = (Timestamp(0), Timestamp(30 * day));
        assert_eq!(step_ms(from, to, None), Ok(HOUR_MS));
        assert_eq!(step_ms(from, Timestamp(60 * day), None), Ok(6 * HOUR_MS));
        assert_eq!(step_ms(from, to, Some(Step::Every(day))), Ok(day));
        for bad in [Step::Raw, Step::Every(90 * 60_000), Step::Every(60_000)] {
            assert_eq!(
                step_ms(from, to, Some(bad)).expect_err("a bad step").path,
                "step"
            );
        }
        let too_far = Timestamp(2000 * 7 * day);
        assert_eq!(
            step_ms(from, too_far, None).expect_err("too long").path,
            "from"
        );
    }

    #[test]
    fn an_empty_histogram_has_no_percentile() {
        assert_eq!(WaitHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn percentiles_interpolate_within_the_bucket_of_their_rank() {
        let mut h = WaitHistogram::default();
        // 99 runs admitted at once, one after 1024 ms (bucket 40: (861, 1024]).
        h.add(0, 99);
        h.add(bucket_of(1024), 1);
        assert_eq!(h.runs(), 100);
        assert!(h.quantile(0.5).expect("a p50") <= 0.001);
        assert!(h.quantile(0.99).expect("a p99") <= 0.001);
        assert_eq!(h.quantile(1.0), Some(1.024));
    }

    proptest! {
        /// The estimate of any percentile lies in the same bucket as the true
        /// value, so within 19% of it (above 1 ms), however the runs are split
        /// into hours and merged.
        #[test]
        fn merged_hours_give_percentiles_within_a_bucket_of_the_truth(
            waits in proptest::collection::vec(0i64..100_000_000, 1..400),
            hours in 1usize..24,
            q in 0.01f64..=1.0,
        ) {
            let mut parts = vec![WaitHistogram::default(); hours];
            for (i, &w) in waits.iter().enumerate() {
                parts[i % hours].add(bucket_of(w), 1);
            }
            let mut merged = WaitHistogram::default();
            for part in &parts {
                merged.merge(part);
            }
            let mut sorted = waits.clone();
            sorted.sort_unstable();
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let truth = sorted[rank - 1];
            let estimate_ms = merged.quantile(q).expect("a percentile") * 1000.0;
            let k = bucket_of(truth);
            prop_assert!(estimate_ms >= lower_ms(k) - 1e-9, "{estimate_ms} below bucket {k} of {truth}");
            prop_assert!(estimate_ms <= upper_ms(k) + 1e-9, "{estimate_ms} above bucket {k} of {truth}");
        }
    }
}

//! Used against requested: the efficiency of what was allocated, and
//! right-sizing recommendations from what steps really used.
//!
//! A recommendation for a step is the 95th percentile (nearest rank) of its
//! measured memory peaks and of its average cores (cpu time over duration)
//! across its recent successful attempts, plus a 20% margin, rounded up to
//! 50 millicores and 16 MiB, never below those. The 95th percentile keeps the
//! occasional heavy run inside the request; the margin covers peaks between
//! the agent's samples and growth. It may be above the current request, when
//! a step was throttled or came close to its memory limit.

use std::collections::BTreeMap;

use crate::money::Money;
use crate::pool::Price;
use crate::resources::Resources;

/// The percentile of measured peaks a recommendation covers.
pub const PERCENTILE: f64 = 0.95;
/// Head room on top of that percentile, in percent.
pub const MARGIN_PERCENT: u64 = 20;
/// A recommended cpu is a multiple of this, in millicores.
pub const CPU_STEP_MILLIS: u64 = 50;
/// A recommended memory is a multiple of this, in MiB.
pub const MEMORY_STEP_MIB: u64 = 16;
/// The window whose attempts the monthly saving is computed from.
pub const SAVING_WINDOW_MS: i64 = 30 * 86_400_000;

/// One measured, successful attempt of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub run: i64,
    pub step: String,
    pub pool: String,
    pub requested: Resources,
    pub ended_at_ms: i64,
    pub duration_ms: i64,
    pub cpu_micros: u64,
    pub memory_peak_bytes: u64,
}

impl Sample {
    /// Average cores over the attempt, in millicores.
    fn cpu_millis(&self) -> u64 {
        if self.duration_ms <= 0 {
            return 0;
        }
        // cpu µs / duration ms = millicores.
        self.cpu_micros / self.duration_ms as u64
    }

    fn memory_mib(&self) -> u64 {
        self.memory_peak_bytes.div_ceil(1 << 20)
    }
}

/// A step's recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecommendation {
    pub step: String,
    pub current: Resources,
    pub recommended: Resources,
    pub samples: u32,
    pub runs: Vec<i64>,
    pub peak_memory_mib: u64,
    pub peak_cpu_millis: u64,
    pub monthly_saving: Money,
}

/// Recommendations per step (in the order of their names) from `samples`,
/// newest first; savings at the prices `price_of` gives each pool, from the
/// samples that ended within [`SAVING_WINDOW_MS`] before `now_ms`.
pub fn recommend(
    samples: &[Sample],
    price_of: impl Fn(&str) -> Price,
    now_ms: i64,
) -> Vec<StepRecommendation> {
    let mut by_step: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_step.entry(&s.step).or_default().push(s);
    }
    by_step
        .into_iter()
        .map(|(step, samples)| {
            let current = samples[0].requested;
            let cpu = covered(
                samples.iter().map(|s| s.cpu_millis()).collect(),
                CPU_STEP_MILLIS,
            );
            let memory = covered(
                samples.iter().map(|s| s.memory_mib()).collect(),
                MEMORY_STEP_MIB,
            );
            let recommended = Resources::new(cpu, memory, current.gpu);
            let mut runs: Vec<i64> = samples.iter().map(|s| s.run).collect();
            runs.sort_unstable();
            runs.dedup();
            let saving = samples
                .iter()
                .filter(|s| now_ms - s.ended_at_ms <= SAVING_WINDOW_MS)
                .fold(Money::ZERO, |total, s| {
                    let price = price_of(&s.pool);
                    let now = price.cost(&current, s.duration_ms);
                    let then = price.cost(&recommended, s.duration_ms);
                    total.saturating_add(now.saturating_sub(then))
                });
            StepRecommendation {
                step: step.to_string(),
                current,
                recommended,
                samples: u32::try_from(samples.len()).unwrap_or(u32::MAX),
                runs,
                peak_memory_mib: samples.iter().map(|s| s.memory_mib()).max().unwrap_or(0),
                peak_cpu_millis: samples.iter().map(|s| s.cpu_millis()).max().unwrap_or(0),
                monthly_saving: saving,
            }
        })
        .collect()
}

/// The [`PERCENTILE`] of `values` (nearest rank) with the margin, rounded up
/// to a multiple of `step`, at least `step`.
fn covered(mut values: Vec<u64>, step: u64) -> u64 {
    values.sort_unstable();
    let rank = ((values.len() as f64) * PERCENTILE).ceil() as usize;
    let p = values[rank.clamp(1, values.len()) - 1];
    let with_margin = p.saturating_mul(100 + MARGIN_PERCENT).div_ceil(100);
    with_margin.div_ceil(step).saturating_mul(step).max(step)
}

/// Used over allocated, where something was allocated.
pub fn efficiency(used: f64, allocated: f64) -> Option<f64> {
    (allocated > 0.0).then(|| used / allocated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn sample(run: i64, step: &str, cpu_micros: u64, peak_mib: u64) -> Sample {
        Sample {
            run,
            step: step.into(),
            pool: "linux".into(),
            requested: Resources::new(2000, 1024, 0),
            ended_at_ms: 10 * HOUR,
            duration_ms: 1000,
            cpu_micros,
            memory_peak_bytes: peak_mib << 20,
        }
    }

    #[test]
    fn a_sleeping_step_is_recommended_the_least_with_a_saving() {
        let samples: Vec<Sample> = (1..=5).map(|r| sample(r, "wait", 2_000, 3)).collect();
        let price = Price {
            cpu_hour: 1.0,
            memory_gib_hour: 1.0,
            gpu_hour: 0.0,
        };
        let found = recommend(&samples, |_| price, 11 * HOUR);
        assert_eq!(found.len(), 1);
        let r = &found[0];
        assert_eq!(r.recommended, Resources::new(50, 16, 0));
        assert_eq!((r.samples, r.runs.clone()), (5, vec![1, 2, 3, 4, 5]));
        // 5 attempts of 1 s, each priced as asked and as recommended.
        let each = price.cost(&Resources::new(2000, 1024, 0), 1000).micros()
            - price.cost(&Resources::new(50, 16, 0), 1000).micros();
        let expected = 5 * each;
        assert_eq!(r.monthly_saving.micros(), expected);
        assert!(expected > 0);
    }

    #[test]
    fn the_percentile_covers_all_but_the_rare_outlier_and_adds_a_margin() {
        // 19 attempts at 100 MiB and one at 900: the 95th percentile is 100.
        let mut samples: Vec<Sample> = (1..=19).map(|r| sample(r, "s", 500_000, 100)).collect();
        samples.push(sample(20, "s", 500_000, 900));
        let r = &recommend(&samples, |_| Price::default(), 0)[0];
        // 100 MiB + 20% = 120, up to a multiple of 16: 128; 500m + 20% = 600m.
        assert_eq!(r.recommended, Resources::new(600, 128, 0));
        assert_eq!(r.peak_memory_mib, 900);
        // 21 of them: the 95th percentile is now the outlier.
        samples.push(sample(21, "s", 500_000, 900));
        let r = &recommend(&samples, |_| Price::default(), 0)[0];
        assert_eq!(r.recommended.memory_mib, 1088);
    }

    #[test]
    fn a_starved_step_is_recommended_more_and_saves_nothing() {
        let samples = vec![sample(1, "build", 1_000_000 * 2, 1000)];
        let price = Price {
            cpu_hour: 1.0,
            memory_gib_hour: 0.0,
            gpu_hour: 0.0,
        };
        let r = &recommend(&samples, |_| price, 10 * HOUR)[0];
        assert_eq!(r.recommended.cpu_millis, 2400);
        assert!(r.monthly_saving.micros() < 0, "{:?}", r.monthly_saving);
    }

    #[test]
    fn only_the_last_thirty_days_count_toward_the_saving() {
        let mut old = sample(1, "s", 0, 1);
        old.ended_at_ms = 0;
        let price = Price {
            cpu_hour: 1.0,
            memory_gib_hour: 1.0,
            gpu_hour: 0.0,
        };
        let r = &recommend(&[old], |_| price, SAVING_WINDOW_MS + 1)[0];
        assert_eq!(r.monthly_saving, Money::ZERO);
    }

    #[test]
    fn efficiency_is_none_without_an_allocation() {
        assert_eq!(efficiency(1.0, 0.0), None);
        assert_eq!(efficiency(1.0, 4.0), Some(0.25));
    }
}

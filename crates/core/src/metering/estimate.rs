//! A run's estimated cost at submit: its groups' envelopes at the dearest price
//! they may be placed at, for the pipeline's expected duration.

use crate::money::Money;
use crate::pool::Price;
use crate::resources::Resources;

/// How long a run of a pipeline is expected to take, in ms:
///
/// 1. the 90th percentile (nearest rank) of `successful_durations`, the
///    durations of the pipeline's last successful runs, when there are any;
/// 2. else the critical path of its steps' timeouts
///    ([`crate::pipeline::Pipeline::critical_path_timeouts_ms`]), when every
///    step has a timeout;
/// 3. else `default_ms`.
pub fn expected_duration_ms(
    successful_durations: &[i64],
    critical_path_timeouts_ms: Option<i64>,
    default_ms: i64,
) -> i64 {
    if successful_durations.is_empty() {
        return critical_path_timeouts_ms.unwrap_or(default_ms);
    }
    let mut sorted = successful_durations.to_vec();
    sorted.sort_unstable();
    // Nearest rank: the smallest value with at least 90% of them at or below it.
    let rank = (sorted.len() * 9).div_ceil(10);
    sorted
        .get(rank.saturating_sub(1))
        .copied()
        .unwrap_or(default_ms)
}

/// A run's estimated cost: for each group, its envelope held for `duration_ms`
/// at the most expensive of the prices of the pools it may land on (for that
/// envelope), summed over the groups.
///
/// An upper bound for that duration: the controller places each group on one of
/// those pools, and none costs more. A group with no candidate pool adds nothing
/// (it cannot be admitted anyway).
pub fn estimate_cost(groups: &[(Resources, &[Price])], duration_ms: i64) -> Money {
    groups
        .iter()
        .map(|(envelope, prices)| {
            prices
                .iter()
                .map(|price| price.cost(envelope, duration_ms))
                .max()
                .unwrap_or(Money::ZERO)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn the_expected_duration_is_the_p90_then_the_timeouts_then_the_default() {
        let ten: Vec<i64> = (1..=10).rev().map(|m| m * MIN).collect();
        assert_eq!(expected_duration_ms(&ten, Some(MIN), 5), 9 * MIN);
        let eleven: Vec<i64> = (1..=11).map(|m| m * MIN).collect();
        assert_eq!(expected_duration_ms(&eleven, None, 5), 10 * MIN);
        assert_eq!(expected_duration_ms(&[7], None, 5), 7);
        assert_eq!(expected_duration_ms(&[3, 9], None, 5), 9);
        assert_eq!(expected_duration_ms(&[], Some(30 * MIN), 5), 30 * MIN);
        assert_eq!(expected_duration_ms(&[], None, 5), 5);
    }

    #[test]
    fn the_estimate_takes_the_dearest_pool_of_each_group() {
        let cheap = Price {
            cpu_hour: 0.04,
            memory_gib_hour: 0.005,
            gpu_hour: 0.0,
        };
        // Dearer for memory, cheaper for cpu.
        let memory_dear = Price {
            cpu_hour: 0.01,
            memory_gib_hour: 0.1,
            gpu_hour: 0.0,
        };
        let gpu = Price {
            gpu_hour: 2.5,
            ..cheap
        };
        let hour = 3_600_000;
        let cpu_heavy = Resources::new(8000, 1024, 0);
        let memory_heavy = Resources::new(1000, 16 * 1024, 0);
        let estimate = estimate_cost(
            &[
                (cpu_heavy, &[cheap, memory_dear][..]),
                (memory_heavy, &[cheap, memory_dear][..]),
                (Resources::new(1000, 1024, 1), &[gpu][..]),
                (Resources::new(1000, 1024, 0), &[][..]),
            ],
            2 * hour,
        );
        // cpu_heavy: cheap 0.325/h, memory_dear 0.18/h; memory_heavy: cheap
        // 0.12/h, memory_dear 1.61/h; gpu 2.545/h. For two hours: 8.96.
        assert_eq!(estimate, Money::from_micros(8_960_000));
        assert_eq!(estimate_cost(&[], hour), Money::ZERO);
    }
}

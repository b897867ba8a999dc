//! Exponential backoff with jitter, for whatever retries after a failure (an
//! agent's calls, the server's background workers): each pause is drawn at
//! random between half and all of a ceiling that doubles per failure up to a
//! cap, so that callers failing together (a server restart, say) do not come
//! back together. Pure: the caller draws the random number.

use std::time::Duration;

/// The pauses between tries of one call.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Pauses start near `base` and never pass `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// The pause after one more failure: in [ceiling / 2, ceiling], placed by
    /// `random` (any `u64`, uniformly drawn), where the ceiling is
    /// `base * 2^failures`, at most `cap`.
    pub fn next_pause(&mut self, random: u64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(random % spread.saturating_add(1))
    }

    /// Starts again from `base`, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_within_jitter_up_to_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for random in [0, 1, 77_777, u64::MAX / 3, u64::MAX] {
            let mut backoff = Backoff::new(base, cap);
            for ceiling in [100, 200, 400, 800, 1600, 2000, 2000, 2000] {
                let ceiling = Duration::from_millis(ceiling);
                let pause = backoff.next_pause(random);
                assert!(
                    pause >= ceiling / 2 && pause <= ceiling,
                    "{pause:?} is not within [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
            backoff.reset();
            assert!(backoff.next_pause(random) <= base);
        }
    }

    #[test]
    fn the_random_number_spreads_the_pause_over_the_upper_half() {
        let pause = |random| {
            Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_pause(random)
        };
        assert_eq!(pause(0), Duration::from_millis(500));
        assert_eq!(pause(500_000), Duration::from_secs(1));
        assert_eq!(pause(250_000), Duration::from_millis(750));
    }
}

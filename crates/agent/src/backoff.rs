//! Exponential backoff with jitter, for calls the agent retries: each pause is
//! drawn at random between half and all of a ceiling that doubles per failure
//! up to a cap, so that agents failing together (a server restart, say) do not
//! come back together.

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

    /// The pause after one more failure: at random in [ceiling / 2, ceiling],
    /// where the ceiling is `base * 2^failures`, at most `cap`.
    pub fn next_pause(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(random_u64() % spread.saturating_add(1))
    }

    /// Starts again from `base`, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_within_jitter_up_to_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut backoff = Backoff::new(base, cap);
        for ceiling in [100, 200, 400, 800, 1600, 2000, 2000, 2000] {
            let ceiling = Duration::from_millis(ceiling);
            let pause = backoff.next_pause();
            assert!(
                pause >= ceiling / 2 && pause <= ceiling,
                "{pause:?} is not within [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= base);
    }

    #[test]
    fn agents_failing_together_do_not_pause_alike() {
        let pauses: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_pause())
            .collect();
        assert!(pauses.len() > 10, "{pauses:?}");
    }
}

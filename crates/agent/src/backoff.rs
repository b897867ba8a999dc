//! The agent's retries: [`corral_core::backoff::Backoff`] (exponential, with
//! jitter) drawing its random numbers from the operating system, so that
//! agents failing together do not come back together.

use std::time::Duration;

/// The pauses between tries of one call.
#[derive(Debug, Clone)]
pub struct Backoff(corral_core::backoff::Backoff);

impl Backoff {
    /// Pauses start near `base` and never pass `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff(corral_core::backoff::Backoff::new(base, cap))
    }

    /// The pause after one more failure, at random in the upper half of a
    /// ceiling that doubles per failure.
    pub fn next_pause(&mut self) -> Duration {
        self.0.next_pause(random_u64())
    }

    /// Starts again from `base`, after a success.
    pub fn reset(&mut self) {
        self.0.reset();
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
    fn agents_failing_together_do_not_pause_alike() {
        let pauses: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_pause())
            .collect();
        assert!(pauses.len() > 10, "{pauses:?}");
    }
}

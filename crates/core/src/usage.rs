//! Recent usage for fair share: each tenant's resource-time, decayed with a
//! half-life, so that a tenant that just ran a burst yields to one that ran
//! nothing, and forgets it as time passes.
//!
//! An allocation of `R` held over `[a, b]` contributes, at time `t >= b`,
//! `R * tau * (2^(-(t-b)/H) - 2^(-(t-a)/H))` resource-milliseconds, where `H`
//! is the half-life and `tau = H / ln 2`. Divided by `tau` this is a resource
//! amount: a tenant that has held `R` forever has a recent usage of `R`.

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use crate::resources::{Dimension, Resources};

/// A resource vector in floating point, in base units (millicores, MiB, gpus).
pub type Amount = [f64; 3];

/// `2^(-dt/H)`.
fn decay(half_life_ms: i64, dt_ms: i64) -> f64 {
    if half_life_ms <= 0 {
        return if dt_ms <= 0 { 1.0 } else { 0.0 };
    }
    (-(dt_ms.max(0) as f64) / half_life_ms as f64).exp2()
}

fn amount(r: &Resources) -> Amount {
    Dimension::ALL.map(|d| r.get(d) as f64)
}

/// Decayed resource-time of closed allocations, per tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageLedger {
    half_life_ms: i64,
    /// Per tenant: resource-ms decayed to the timestamp beside it.
    closed: BTreeMap<String, (Timestamp, Amount)>,
}

impl UsageLedger {
    /// `half_life_ms` of zero or less forgets usage at once.
    pub fn new(half_life_ms: i64) -> UsageLedger {
        UsageLedger {
            half_life_ms,
            closed: BTreeMap::new(),
        }
    }

    fn decay(&self, dt_ms: i64) -> f64 {
        decay(self.half_life_ms, dt_ms)
    }

    fn tau(&self) -> f64 {
        self.half_life_ms.max(1) as f64 / std::f64::consts::LN_2
    }

    /// Records an allocation of `resources` held from `opened` to `closed`.
    pub fn record(
        &mut self,
        tenant: &str,
        resources: &Resources,
        opened: Timestamp,
        closed: Timestamp,
    ) {
        let held = closed.millis_since(opened).max(0);
        let weight = self.tau() * (1.0 - self.decay(held));
        let add = amount(resources).map(|x| x * weight);
        let h = self.half_life_ms;
        let decay = |dt| decay(h, dt);
        let entry = self
            .closed
            .entry(tenant.to_string())
            .or_insert((closed, [0.0; 3]));
        let (at, value) = *entry;
        let (new_at, mut sum) = if closed.0 >= at.0 {
            let f = decay(closed.millis_since(at));
            (closed, value.map(|x| x * f))
        } else {
            (at, value)
        };
        let f = decay(new_at.millis_since(closed));
        for (s, a) in sum.iter_mut().zip(add) {
            *s += a * f;
        }
        *entry = (new_at, sum);
    }

    /// Recent usage of `tenant` at `now`, as a resource amount: its closed
    /// allocations plus the open ones given (with the time they opened).
    pub fn recent<'a>(
        &self,
        tenant: &str,
        open: impl IntoIterator<Item = (&'a Resources, Timestamp)>,
        now: Timestamp,
    ) -> Amount {
        let tau = self.tau();
        let mut total = match self.closed.get(tenant) {
            Some((at, value)) => {
                let f = self.decay(now.millis_since(*at));
                value.map(|x| x * f / tau)
            }
            None => [0.0; 3],
        };
        for (r, opened) in open {
            let f = 1.0 - self.decay(now.millis_since(opened));
            for (t, a) in total.iter_mut().zip(amount(r)) {
                *t += a * f;
            }
        }
        total
    }

    /// Forgets tenants whose usage has decayed below one part in a million of
    /// `reference` (e.g. the total capacity).
    pub fn prune(&mut self, now: Timestamp, reference: &Resources) {
        let tau = self.tau();
        let floor = amount(reference).map(|x| x * 1e-6);
        let h = self.half_life_ms;
        self.closed.retain(|_, (at, value)| {
            let f = decay(h, now.millis_since(*at));
            value.iter().zip(floor).any(|(v, fl)| v * f / tau > fl)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn holding_forever_converges_to_what_is_held() {
        let ledger = UsageLedger::new(HOUR);
        let r = Resources::new(4000, 1024, 0);
        let recent = ledger.recent("a", [(&r, Timestamp(0))], Timestamp(50 * HOUR));
        assert!((recent[0] - 4000.0).abs() < 1e-3, "{recent:?}");
    }

    #[test]
    fn usage_halves_every_half_life() {
        let mut ledger = UsageLedger::new(HOUR);
        let r = Resources::new(1000, 0, 0);
        ledger.record("a", &r, Timestamp(0), Timestamp(HOUR));
        let at_end = ledger.recent("a", [], Timestamp(HOUR))[0];
        let later = ledger.recent("a", [], Timestamp(2 * HOUR))[0];
        // Held one half-life: half of what holding forever would give.
        assert!((at_end - 500.0).abs() < 1e-6, "{at_end}");
        assert!((later - 250.0).abs() < 1e-6, "{later}");
        assert_eq!(ledger.recent("b", [], Timestamp(HOUR)), [0.0; 3]);
    }

    #[test]
    fn order_of_recording_does_not_matter() {
        let r = Resources::new(1000, 512, 1);
        let mut a = UsageLedger::new(HOUR);
        a.record("t", &r, Timestamp(0), Timestamp(10));
        a.record("t", &r, Timestamp(100), Timestamp(5000));
        let mut b = UsageLedger::new(HOUR);
        b.record("t", &r, Timestamp(100), Timestamp(5000));
        b.record("t", &r, Timestamp(0), Timestamp(10));
        let (x, y) = (
            a.recent("t", [], Timestamp(9000)),
            b.recent("t", [], Timestamp(9000)),
        );
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-9);
        }
        a.prune(Timestamp(1000 * HOUR), &Resources::new(1000, 1000, 1));
        assert_eq!(a.recent("t", [], Timestamp(1000 * HOUR)), [0.0; 3]);
    }
}

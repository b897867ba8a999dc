//! Idle cost shared back: each pool's idle cost divided among those who used
//! the pool, in proportion to what their use of it cost over the same window.
//!
//! Proportional to cost (the pool's own prices), not to one resource's time,
//! so a tenant pays for the pool's idle room in the mix it bought. Shares are
//! exact to the micro-unit: each row of a pool gets the floor of its exact
//! share and the micro-units left over go one each to the largest remainders,
//! so a pool's shares sum to its idle cost exactly. A pool nobody used in the
//! window (or used only at no cost) has no one to share with: its idle cost
//! stays unshared.

use std::collections::BTreeMap;

use crate::money::Money;

use super::{Date, IdleRow, SlotUsage};

/// `amount` divided in proportion to `weights` by largest remainder: the parts
/// sum to `amount` exactly, and each is within one micro-unit of its exact
/// share. A weight below zero counts as zero; ties of remainders go to the
/// earlier weight. All parts are zero when no weight is positive.
pub fn apportion(amount: Money, weights: &[Money]) -> Vec<Money> {
    let weight = |w: &Money| i128::from(w.micros().max(0));
    let total: i128 = weights.iter().map(weight).sum();
    if total == 0 {
        return vec![Money::ZERO; weights.len()];
    }
    // A negative idle cost (allocations above a capacity history) is shared
    // like a positive one, with its sign.
    let whole = i128::from(amount.micros()).abs();
    // At most 2^63 * 2^63 = 2^126: inside i128.
    let mut parts: Vec<(i128, i128)> = weights
        .iter()
        .map(|w| {
            let exact = whole * weight(w);
            (exact / total, exact % total)
        })
        .collect();
    let mut left = whole - parts.iter().map(|p| p.0).sum::<i128>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].1.cmp(&parts[a].1).then(a.cmp(&b)));
    // The remainders sum to `left * total`, each below `total`: more than
    // `left` of them are non-zero, so every micro-unit left finds one.
    for i in order {
        if left == 0 {
            break;
        }
        parts[i].0 += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .map(|(part, _)| {
            let signed = if amount.micros() < 0 { -part } else { part };
            Money::saturating_from_i128(signed)
        })
        .collect()
}

/// The idle cost of a report shared among its rows (see the module's
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleShares<K> {
    /// Each key's shares, summed over pools (and days); keys that used no
    /// pool with idle cost are left out.
    pub by_key: BTreeMap<K, Money>,
    /// For each idle row, in the order given, what of its idle cost was
    /// shared: all of it when anyone used the pool then at some cost, else
    /// zero.
    pub shared: Vec<Money>,
}

/// Shares each row of `idle` (a pool over the window, or over one UTC day
/// when the row has one) among the keys of the usage `held` on that pool (and
/// day), in proportion to its cost. `held` must be the usage of every tenant
/// on the pools of `idle` over the same window, by pool and slot (the usage
/// [`super::idle`] was given); `key` names the row of the report each piece
/// counts in.
pub fn share_idle<K: Ord + Clone>(
    idle: &[IdleRow],
    held: &[SlotUsage],
    key: impl Fn(&SlotUsage) -> K,
) -> IdleShares<K> {
    let by_day = idle.iter().any(|r| r.day.is_some());
    let mut used: BTreeMap<(&str, Option<String>), BTreeMap<K, Money>> = BTreeMap::new();
    for piece in held {
        let day = by_day.then(|| Date::containing(piece.slot_ms).to_string());
        let cost = used
            .entry((piece.pool.as_str(), day))
            .or_default()
            .entry(key(piece))
            .or_default();
        *cost = cost.saturating_add(piece.usage.cost);
    }
    let mut by_key: BTreeMap<K, Money> = BTreeMap::new();
    let mut shared = Vec::with_capacity(idle.len());
    for row in idle {
        let Some(users) = used.get(&(row.pool.as_str(), row.day.clone())) else {
            shared.push(Money::ZERO);
            continue;
        };
        let weights: Vec<Money> = users.values().copied().collect();
        let parts = apportion(row.idle.cost, &weights);
        let mut sum = Money::ZERO;
        for (k, part) in users.keys().zip(parts) {
            if part != Money::ZERO {
                let share = by_key.entry(k.clone()).or_default();
                *share = share.saturating_add(part);
            }
            sum = sum.saturating_add(part);
        }
        shared.push(sum);
    }
    IdleShares { by_key, shared }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::metering::Usage;

    fn m(micros: i64) -> Money {
        Money::from_micros(micros)
    }

    #[test]
    fn largest_remainders_get_the_micro_units_left() {
        // 10 in thirds: 3.333.. each, the one left to the first of the ties.
        assert_eq!(
            apportion(m(10), &[m(1), m(1), m(1)]),
            vec![m(4), m(3), m(3)]
        );
        // 100 at 1:2:7 is exact.
        assert_eq!(
            apportion(m(100), &[m(1), m(2), m(7)]),
            vec![m(10), m(20), m(70)]
        );
        // 7 at 5:3 is 4.375 and 2.625: the larger remainder, the second's, gets it.
        assert_eq!(apportion(m(7), &[m(5), m(3)]), vec![m(4), m(3)]);
        assert_eq!(apportion(m(-7), &[m(5), m(3)]), vec![m(-4), m(-3)]);
        assert_eq!(apportion(m(9), &[m(0), m(-2)]), vec![m(0), m(0)]);
        assert_eq!(apportion(m(9), &[m(0), m(3)]), vec![m(0), m(9)]);
        assert_eq!(
            apportion(Money::MAX, &[Money::MAX, Money::MAX]),
            vec![m(i64::MAX / 2 + 1), m(i64::MAX / 2)]
        );
    }

    fn piece(tenant: &str, pool: &str, slot_ms: i64, cost: i64) -> SlotUsage {
        SlotUsage {
            tenant: tenant.into(),
            pool: pool.into(),
            pipeline: "p".into(),
            slot_ms,
            usage: Usage {
                cost: m(cost),
                ..Usage::ZERO
            },
        }
    }

    fn idle_row(pool: &str, day: Option<&str>, idle: i64) -> IdleRow {
        IdleRow {
            pool: pool.into(),
            day: day.map(str::to_string),
            capacity: Usage::ZERO,
            allocated: Usage::ZERO,
            idle: Usage {
                cost: m(idle),
                ..Usage::ZERO
            },
        }
    }

    #[test]
    fn each_pool_is_shared_among_its_own_users_and_an_unused_pool_keeps_its_idle() {
        let held = [
            piece("a", "big", 0, 300),
            piece("b", "big", 0, 100),
            piece("a", "big", 3_600_000, 600),
            piece("b", "small", 0, 50),
        ];
        let idle = [
            idle_row("big", None, 1_000),
            idle_row("small", None, 7),
            idle_row("empty", None, 500),
        ];
        let shares = share_idle(&idle, &held, |p| p.tenant.clone());
        // big: a used 900 of 1000, b 100 of it; small is b's alone.
        assert_eq!(
            shares.by_key,
            BTreeMap::from([("a".to_string(), m(900)), ("b".to_string(), m(107))])
        );
        assert_eq!(shares.shared, vec![m(1_000), m(7), m(0)]);
    }

    #[test]
    fn by_day_each_day_is_shared_among_that_days_users() {
        let day = 86_400_000;
        let held = [piece("a", "big", 0, 10), piece("b", "big", day, 10)];
        let idle = [
            idle_row("big", Some("1970-01-01"), 40),
            idle_row("big", Some("1970-01-02"), 60),
        ];
        let shares = share_idle(&idle, &held, |p| p.tenant.clone());
        assert_eq!(
            shares.by_key,
            BTreeMap::from([("a".to_string(), m(40)), ("b".to_string(), m(60))])
        );
    }

    proptest! {
        #[test]
        fn shares_sum_to_the_idle_cost_and_stay_within_a_micro_unit_of_proportion(
            amount in -1_000_000_000_000i64..1_000_000_000_000_000,
            weights in prop::collection::vec(0i64..1_000_000_000_000, 1..12),
        ) {
            let weights: Vec<Money> = weights.into_iter().map(m).collect();
            let parts = apportion(m(amount), &weights);
            let total: i128 = weights.iter().map(|w| i128::from(w.micros())).sum();
            let sum: i128 = parts.iter().map(|p| i128::from(p.micros())).sum();
            if total == 0 {
                prop_assert_eq!(sum, 0);
            } else {
                prop_assert_eq!(sum, i128::from(amount));
                for (w, p) in weights.iter().zip(&parts) {
                    let exact = i128::from(amount) * i128::from(w.micros());
                    let off = (i128::from(p.micros()) * total - exact).abs();
                    prop_assert!(off < total, "{p:?} of {amount} at {w:?}/{total}");
                }
            }
        }

        #[test]
        fn a_used_pools_shares_sum_to_its_idle_cost(
            costs in prop::collection::vec((0usize..4, 0usize..2, 0i64..1_000_000), 0..20),
            idle in prop::collection::vec(-1_000i64..10_000_000, 2),
        ) {
            let pools = ["x", "y"];
            let held: Vec<SlotUsage> = costs
                .iter()
                .map(|&(t, p, c)| piece(&format!("t{t}"), pools[p], 0, c))
                .collect();
            let rows: Vec<IdleRow> = pools.iter().zip(&idle).map(|(p, i)| idle_row(p, None, *i)).collect();
            let shares = share_idle(&rows, &held, |p| p.tenant.clone());
            for (i, row) in rows.iter().enumerate() {
                let used: i64 = held.iter().filter(|h| h.pool == row.pool).map(|h| h.usage.cost.micros()).sum();
                let expected = if used > 0 { row.idle.cost } else { Money::ZERO };
                prop_assert_eq!(shares.shared[i], expected);
            }
            let all: Money = shares.by_key.values().copied().sum();
            prop_assert_eq!(all, shares.shared.iter().copied().sum::<Money>());
        }
    }
}

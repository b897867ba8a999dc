//! Who is held back, and by what: each tenant's waiting runs counted by the
//! kind of limit their class was last given as a reason (quota, budget,
//! capacity, reservation, gang, placement), for the overview's "blocked by"
//! and a tenant's budget health. Read from the queue's classes and their
//! reasons: O(classes), never a walk of the runs.

use std::collections::BTreeMap;

use corral_core::controller::{Blocker, Reason};
use corral_core::queue::{ClassId, RunQueue};

/// A tenant's waiting runs (first admissions and readmissions alike), by
/// what holds them; `undecided` ones came after the last cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocked {
    pub by: BTreeMap<Blocker, u64>,
    pub undecided: u64,
}

impl Blocked {
    /// Runs held by `blocker`.
    pub fn count(&self, blocker: Blocker) -> u64 {
        self.by.get(&blocker).copied().unwrap_or(0)
    }

    /// Runs held by anything.
    pub fn total(&self) -> u64 {
        self.by.values().sum()
    }

    /// `quota 3 · budget 1`, the largest first (ties in `Blocker` order).
    pub fn summary(&self) -> String {
        let mut parts: Vec<(Blocker, u64)> = self.by.iter().map(|(b, n)| (*b, *n)).collect();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        parts
            .iter()
            .map(|(b, n)| format!("{} {n}", b.name()))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// Every tenant with runs waiting in `queue`, and what holds them, by the
/// reasons given to its classes.
pub fn blocked_by_tenant(
    queue: &RunQueue,
    waiting: &BTreeMap<ClassId, std::sync::Arc<Reason>>,
) -> BTreeMap<String, Blocked> {
    let mut blocked: BTreeMap<String, Blocked> = BTreeMap::new();
    for class in queue.classes() {
        let entry = blocked.entry(class.tenant.clone()).or_default();
        let runs = class.runs.len() as u64;
        match waiting.get(&class.id) {
            Some(reason) => *entry.by.entry(reason.code.blocker()).or_default() += runs,
            None => entry.undecided += runs,
        }
    }
    blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_puts_the_largest_first() {
        let blocked = Blocked {
            by: BTreeMap::from([
                (Blocker::Capacity, 1),
                (Blocker::Quota, 3),
                (Blocker::Budget, 1),
            ]),
            undecided: 2,
        };
        assert_eq!(blocked.summary(), "quota 3 · capacity 1 · budget 1");
        assert_eq!(blocked.total(), 5);
        assert_eq!(blocked.count(Blocker::Gang), 0);
        assert_eq!(Blocked::default().summary(), "");
    }
}

//! The incremental controller: [`decide`](super::decide) with a memory of the
//! verdicts classes got, so that a cycle re-evaluates only the classes whose
//! inputs changed.
//!
//! A class that is not admitted gets a verdict (wait with a reason, or reject)
//! that is a function of a few things only: the class's shape, the run it was
//! tried with (and that run's bound when its tenant has a budget), the fields
//! of its tenant's view that the checks read, the dynamic state of the pools
//! it may be placed on, and what of all pools is fixed for a cycle (names,
//! labels, prices, `max_workers`, which are static) together with the default
//! placement policy. The memo keeps each class's last verdict under a key of
//! fingerprints of those inputs, taken from the cycle's *working* snapshot at
//! the moment the class is tried: the walk is the very walk of `decide` (same
//! order, same fair share), and a verdict is reused only when the key it was
//! evaluated under matches, so the outcome is the full decision's by
//! construction. Fingerprints that an admission or a reservation changes are
//! taken again at once.
//!
//! What follows a verdict is decided afresh every cycle: the admission of a
//! run that fits, and the reservation of a starving run that must wait (with
//! its message, which says how long it waited).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::ids::RunId;
use crate::money::Money;
use crate::pool::PoolState;
use crate::queue::{Class, ClassId, RunQueue};
use crate::tenant::Enforce;

use super::{FastMap, FxHasher, Matching, Outcome, Policy, PoolView, Reason, Snapshot, TenantView};

/// The controller kept across cycles: decides as [`super::decide`] does, and
/// reuses the verdict of every class whose inputs did not change since it last
/// got one. The caller owns it and passes every cycle's snapshot and queue.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    memo: Memo,
}

/// How one cycle of the incremental controller went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleStats {
    /// Classes whose remembered verdict was reused.
    pub reused: usize,
    /// Classes tried with their verdict evaluated (admitted ones included).
    pub evaluated: usize,
}

impl Controller {
    pub fn new() -> Controller {
        Controller::default()
    }

    /// The same outcome as [`super::decide`] on the same input.
    pub fn decide(
        &mut self,
        snapshot: &Snapshot,
        queue: &RunQueue,
        now: Timestamp,
        policy: &Policy,
    ) -> Outcome {
        super::walk(snapshot, queue, now, policy, Some(&mut self.memo))
    }

    /// What the last cycle reused and evaluated.
    pub fn last_cycle(&self) -> CycleStats {
        self.memo.stats
    }
}

/// The verdicts of classes, by class, with the key each was evaluated under.
#[derive(Debug, Clone, Default)]
pub(super) struct Memo {
    entries: FastMap<ClassId, Entry>,
    /// Counts cycles: entries not seen in the last one are dropped.
    cycle: u64,
    stats: CycleStats,
}

/// What a class that was not admitted got.
#[derive(Debug, Clone)]
pub(super) enum Verdict {
    Wait(Arc<Reason>),
    Reject(Arc<Reason>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    /// Positions of the pools the verdict read (see [`pools_read`]).
    pools: Vec<usize>,
    verdict: Verdict,
    seen: u64,
}

/// Everything a verdict is a function of, as fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    shape: u64,
    head: RunId,
    bound: Money,
    tenant: u64,
    fixed: u64,
    pools: u64,
}

/// A class's key before its pools' part is known: the pools a verdict reads
/// are known once it is evaluated.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    key: Key,
}

/// The memo during one cycle, with the fingerprints of the working snapshot.
pub(super) struct Keys<'m> {
    memo: &'m mut Memo,
    /// What is fixed for the cycle of all pools, and the default policy.
    fixed: u64,
    /// Pool names in snapshot order, to find a pool's position.
    names: Vec<String>,
    /// Per pool in snapshot order, its dynamic state's fingerprint.
    pools: Vec<u64>,
    /// Per tenant, its fingerprint, taken when first needed in the cycle.
    tenants: FastMap<String, u64>,
}

impl<'m> Keys<'m> {
    pub(super) fn new(memo: &'m mut Memo, work: &Snapshot, policy: &Policy) -> Keys<'m> {
        memo.cycle += 1;
        memo.stats = CycleStats::default();
        let mut h = FxHasher::default();
        policy.placement.hash(&mut h);
        for pool in work.pools.values() {
            fixed_of_pool(pool, &mut h);
        }
        Keys {
            memo,
            fixed: h.finish(),
            names: work.pools.keys().cloned().collect(),
            pools: work.pools.values().map(pool_fingerprint).collect(),
            tenants: FastMap::default(),
        }
    }

    /// The remembered verdict of `class` tried with `run` (whose bound is
    /// `bound`, zero when its tenant has no budget), if its inputs are those it
    /// was evaluated under; else the probe to store the new verdict with.
    pub(super) fn lookup(
        &mut self,
        tenant: &TenantView,
        class: &Class,
        run: RunId,
        bound: Money,
    ) -> Result<Verdict, Probe> {
        let tenant_fp = match self.tenants.get(tenant.name.as_str()) {
            Some(&fp) => fp,
            None => {
                let fp = tenant_fingerprint(tenant);
                self.tenants.insert(tenant.name.clone(), fp);
                fp
            }
        };
        let mut key = Key {
            shape: shape_fingerprint(class),
            head: run,
            bound,
            tenant: tenant_fp,
            fixed: self.fixed,
            pools: 0,
        };
        let cycle = self.memo.cycle;
        if let Some(entry) = self.memo.entries.get_mut(&class.id) {
            key.pools = combine(&self.pools, &entry.pools);
            if entry.key == key {
                entry.seen = cycle;
                self.memo.stats.reused += 1;
                return Ok(entry.verdict.clone());
            }
        }
        self.memo.stats.evaluated += 1;
        Err(Probe { key })
    }

    /// Remembers the verdict `class` got under `probe`; `matching` is the
    /// class's [`super::Masks::matching`] in this cycle.
    pub(super) fn store(
        &mut self,
        class: ClassId,
        probe: Probe,
        matching: &Matching,
        verdict: Verdict,
    ) {
        let pools = pools_read(matching);
        let key = Key {
            pools: combine(&self.pools, &pools),
            ..probe.key
        };
        self.memo.entries.insert(
            class,
            Entry {
                key,
                pools,
                verdict,
                seen: self.memo.cycle,
            },
        );
    }

    /// Takes the fingerprint of pool `name` again: the cycle charged it.
    pub(super) fn pool_changed(&mut self, work: &Snapshot, name: &str) {
        if let (Ok(i), Some(pool)) = (
            self.names.binary_search_by(|n| n.as_str().cmp(name)),
            work.pools.get(name),
        ) && let Some(fp) = self.pools.get_mut(i)
        {
            *fp = pool_fingerprint(pool);
        }
    }

    /// Forgets the fingerprint of tenant `name`: the cycle charged it.
    pub(super) fn tenant_changed(&mut self, name: &str) {
        self.tenants.remove(name);
    }

    /// Drops the verdicts of classes the cycle did not try: they left the queue.
    pub(super) fn finish(self) {
        let cycle = self.memo.cycle;
        self.memo.entries.retain(|_, e| e.seen == cycle);
    }
}

/// The positions of the pools a class's verdict reads: those a group's
/// selector matches and its tenant may use. A pool the tenant may not use
/// blocks with a reason of names only, fixed for the cycle and the tenant.
fn pools_read(matching: &Matching) -> Vec<usize> {
    let mut pools: Vec<usize> = matching
        .iter()
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .filter(|(_, m)| **m == Some(true))
                .map(|(i, _)| i)
        })
        .collect();
    pools.sort_unstable();
    pools.dedup();
    pools
}

fn combine(fingerprints: &[u64], pools: &[usize]) -> u64 {
    let mut h = FxHasher::default();
    for &i in pools {
        h.write_usize(i);
        h.write_u64(fingerprints.get(i).copied().unwrap_or(u64::MAX));
    }
    h.finish()
}

/// What the verdict reads of the class: its tenant, level and groups. Class ids
/// are not reused within a queue, but a queue built afresh (a server that
/// reloads) numbers its classes from zero again.
fn shape_fingerprint(class: &Class) -> u64 {
    let mut h = FxHasher::default();
    class.tenant.hash(&mut h);
    class.priority.hash(&mut h);
    class.readmit.hash(&mut h);
    for g in &class.groups {
        g.index.hash(&mut h);
        g.selector.hash(&mut h);
        g.resources.hash(&mut h);
    }
    h.finish()
}

/// What of a pool stays as it is for a cycle and across cycles until an
/// operator changes it: what the selectors, `ever_fits` and the placement
/// scores read besides the pool's use.
fn fixed_of_pool(pool: &PoolView, h: &mut FxHasher) {
    pool.name.hash(h);
    pool.labels.hash(h);
    h.write_u64(pool.price.cpu_hour.to_bits());
    h.write_u64(pool.price.memory_gib_hour.to_bits());
    h.write_u64(pool.price.gpu_hour.to_bits());
    h.write_u32(pool.max_workers);
    pool.agents.is_some().hash(h);
    pool.elastic.hash(h);
}

/// A pool's state, capacity, use and reservation, its agents' included.
fn pool_fingerprint(pool: &PoolView) -> u64 {
    let mut h = FxHasher::default();
    h.write_u8(match pool.state {
        PoolState::Active => 0,
        PoolState::Draining => 1,
        PoolState::Disabled => 2,
    });
    pool.capacity.hash(&mut h);
    pool.used.hash(&mut h);
    h.write_u32(pool.workers);
    pool.reserved.hash(&mut h);
    if let Some(agents) = &pool.agents {
        h.write_usize(agents.len());
        for a in agents {
            a.id.hash(&mut h);
            a.capacity.hash(&mut h);
            a.used.hash(&mut h);
        }
    }
    h.finish()
}

/// What the checks and placement read of a tenant: not its weight nor its
/// recent usage, which only order the tenants.
fn tenant_fingerprint(t: &TenantView) -> u64 {
    let mut h = FxHasher::default();
    t.name.hash(&mut h);
    t.quota.resources.hash(&mut h);
    h.write_u64(t.quota.runs);
    t.allowed_pools.hash(&mut h);
    h.write_usize(t.pool_limits.len());
    for (pool, limit) in &t.pool_limits {
        pool.hash(&mut h);
        limit.resources.hash(&mut h);
        h.write_u64(limit.runs);
        // What it holds counts only where it has a limit.
        let held = t.held.get(pool).copied().unwrap_or_default();
        held.resources.hash(&mut h);
        h.write_u64(held.runs);
    }
    t.used.hash(&mut h);
    h.write_u64(t.runs);
    t.reserved.hash(&mut h);
    match &t.budget {
        None => h.write_u8(0),
        Some(b) => {
            h.write_u8(match b.enforce {
                Enforce::Hard => 1,
                Enforce::Soft => 2,
            });
            b.monthly.hash(&mut h);
            b.month.hash(&mut h);
            b.spent.hash(&mut h);
            b.running.hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests;

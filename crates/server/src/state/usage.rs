//! What the open allocations use, kept current as each allocation opens, is
//! bound to a worker and closes: per pool (and per static agent), per tenant
//! (in all and per pool, with the runs holding them) and per worker. A
//! snapshot then charges pools and tenants in O(pools + tenants + agents)
//! instead of walking every live run.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use corral_core::clock::Timestamp;
use corral_core::controller::{Held, Snapshot};
use corral_core::ids::{AllocationId, RunId, WorkerId};
use corral_core::resources::Resources;
use corral_store::AllocationRecord;

/// An exact sum of resources: kept wide so that taking a part away again is
/// exact; read back clamped, as the snapshot's saturating sums are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Total([u128; 3]);

impl Total {
    fn parts(r: &Resources) -> [u128; 3] {
        [
            u128::from(r.cpu_millis),
            u128::from(r.memory_mib),
            u128::from(r.gpu),
        ]
    }

    fn add(&mut self, r: &Resources) {
        for (t, x) in self.0.iter_mut().zip(Self::parts(r)) {
            *t += x;
        }
    }

    fn sub(&mut self, r: &Resources) {
        for (t, x) in self.0.iter_mut().zip(Self::parts(r)) {
            *t = t.saturating_sub(x);
        }
    }

    fn resources(&self) -> Resources {
        let clamp = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
        Resources {
            cpu_millis: clamp(self.0[0]),
            memory_mib: clamp(self.0[1]),
            gpu: clamp(self.0[2]),
        }
    }
}

/// Counts per run: how many of the open allocations counted belong to each.
type RunCounts = BTreeMap<RunId, u32>;

fn count_in(runs: &mut RunCounts, run: RunId) {
    *runs.entry(run).or_insert(0) += 1;
}

fn count_out(runs: &mut RunCounts, run: RunId) {
    if let Some(n) = runs.get_mut(&run) {
        *n -= 1;
        if *n == 0 {
            runs.remove(&run);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct PoolUsage {
    used: Total,
    allocations: u64,
    /// What is bound to each worker of the pool.
    agents: BTreeMap<WorkerId, Total>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct HeldUsage {
    used: Total,
    runs: RunCounts,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct TenantUsage {
    used: Total,
    runs: RunCounts,
    held: BTreeMap<String, HeldUsage>,
    /// Its open allocations with when they opened, for fair share's recent
    /// usage; in the order of their runs, as the live runs list them.
    open: BTreeMap<(RunId, AllocationId), (Resources, Timestamp)>,
}

/// The open allocations of live runs, and their sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    open: HashMap<AllocationId, AllocationRecord>,
    by_run: BTreeMap<RunId, BTreeSet<AllocationId>>,
    pools: BTreeMap<String, PoolUsage>,
    tenants: BTreeMap<String, TenantUsage>,
    bound: HashMap<WorkerId, BTreeSet<AllocationId>>,
}

impl Usage {
    /// Counts an open allocation, in place of what was counted under its id.
    pub fn hold(&mut self, a: &AllocationRecord) {
        self.release(a.id);
        self.by_run.entry(a.run_id).or_default().insert(a.id);
        let pool = self.pools.entry(a.pool.clone()).or_default();
        pool.used.add(&a.resources);
        pool.allocations += 1;
        if let Some(w) = a.worker_id {
            pool.agents.entry(w).or_default().add(&a.resources);
            self.bound.entry(w).or_default().insert(a.id);
        }
        let tenant = self.tenants.entry(a.tenant.clone()).or_default();
        tenant.used.add(&a.resources);
        count_in(&mut tenant.runs, a.run_id);
        let held = tenant.held.entry(a.pool.clone()).or_default();
        held.used.add(&a.resources);
        count_in(&mut held.runs, a.run_id);
        tenant
            .open
            .insert((a.run_id, a.id), (a.resources, a.opened_at));
        self.open.insert(a.id, a.clone());
    }

    /// Stops counting allocation `id` (closed, or its run ended); idempotent.
    pub fn release(&mut self, id: AllocationId) {
        let Some(a) = self.open.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_run.get_mut(&a.run_id) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_run.remove(&a.run_id);
            }
        }
        if let Some(pool) = self.pools.get_mut(&a.pool) {
            pool.used.sub(&a.resources);
            pool.allocations -= 1;
            if let Some(w) = a.worker_id
                && let Some(agent) = pool.agents.get_mut(&w)
            {
                agent.sub(&a.resources);
                if !self.bound.get(&w).is_some_and(|ids| {
                    ids.iter()
                        .any(|x| *x != id && self.open.get(x).is_some_and(|o| o.pool == a.pool))
                }) {
                    pool.agents.remove(&w);
                }
            }
            if pool.allocations == 0 {
                self.pools.remove(&a.pool);
            }
        }
        if let Some(w) = a.worker_id
            && let Some(ids) = self.bound.get_mut(&w)
        {
            ids.remove(&id);
            if ids.is_empty() {
                self.bound.remove(&w);
            }
        }
        if let Some(tenant) = self.tenants.get_mut(&a.tenant) {
            tenant.used.sub(&a.resources);
            count_out(&mut tenant.runs, a.run_id);
            if let Some(held) = tenant.held.get_mut(&a.pool) {
                held.used.sub(&a.resources);
                count_out(&mut held.runs, a.run_id);
                if held.runs.is_empty() {
                    tenant.held.remove(&a.pool);
                }
            }
            tenant.open.remove(&(a.run_id, id));
            if tenant.open.is_empty() {
                self.tenants.remove(&a.tenant);
            }
        }
    }

    /// Stops counting every allocation of run `run` (it ended).
    pub fn release_run(&mut self, run: RunId) {
        for id in self.by_run.remove(&run).unwrap_or_default() {
            self.release(id);
        }
    }

    /// The runs holding open allocations, by id.
    pub fn runs_holding(&self) -> impl Iterator<Item = RunId> {
        self.by_run.keys().copied()
    }

    /// Whether an open allocation is bound to worker `w`.
    pub fn is_bound(&self, w: WorkerId) -> bool {
        self.bound.contains_key(&w)
    }

    /// The open allocations bound to worker `w`, by id.
    pub fn bound_to(&self, w: WorkerId) -> impl Iterator<Item = &AllocationRecord> {
        self.bound
            .get(&w)
            .into_iter()
            .flatten()
            .filter_map(|id| self.open.get(id))
    }

    /// How many open allocations are on pool `name`.
    pub fn on_pool(&self, name: &str) -> u64 {
        self.pools.get(name).map_or(0, |p| p.allocations)
    }

    /// Tenant `name`'s open allocations with when they opened.
    pub fn opened_by(&self, name: &str) -> impl Iterator<Item = (&Resources, Timestamp)> {
        self.tenants
            .get(name)
            .into_iter()
            .flat_map(|t| t.open.values().map(|(r, at)| (r, *at)))
    }

    /// Adds what is counted to the pools, agents and tenants of `snapshot`,
    /// as `Snapshot::charge` does with every open allocation.
    pub fn charge(&self, snapshot: &mut Snapshot) {
        for (name, pool) in &mut snapshot.pools {
            let Some(usage) = self.pools.get(name) else {
                continue;
            };
            pool.used = usage.used.resources();
            pool.workers = u32::try_from(usage.allocations).unwrap_or(u32::MAX);
            for agent in pool.agents.iter_mut().flatten() {
                if let Some(used) = usage.agents.get(&agent.id) {
                    agent.used = used.resources();
                }
            }
        }
        for (name, tenant) in &mut snapshot.tenants {
            let Some(usage) = self.tenants.get(name) else {
                continue;
            };
            tenant.used = usage.used.resources();
            tenant.runs = usage.runs.len() as u64;
            tenant.held = usage
                .held
                .iter()
                .map(|(pool, h)| {
                    (
                        pool.clone(),
                        Held {
                            resources: h.used.resources(),
                            runs: h.runs.len() as u64,
                        },
                    )
                })
                .collect();
        }
    }
}

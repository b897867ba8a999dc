//! The resource controller: a pure function from a snapshot of pools, tenants
//! and open allocations, the queue and the time to admission decisions.
//!
//! One cycle, in phases:
//! 1. order the queue: priority (higher first), then FIFO (enqueued time, id);
//! 2. for each run: reject it if it can never fit; else check the tenant's quota
//!    summed across pools; else place every group (gang: all or none);
//! 3. an admitted run's grant is charged to the working snapshot at once, so
//!    later runs in the same cycle see it. A run that must wait never blocks the
//!    runs behind it.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::RunId;
use crate::pool::{PoolSpec, PoolState};
use crate::request::GroupRequest;
use crate::resources::{Dimension, Resources};
use crate::tenant::{Quota, TenantSpec};

/// A pool as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    pub name: String,
    pub state: PoolState,
    pub capacity: Resources,
    pub max_workers: u32,
    /// Sum of the open allocations on the pool.
    pub used: Resources,
    /// Open allocations on the pool; each is served by one worker.
    pub workers: u32,
}

/// A tenant as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantView {
    pub name: String,
    pub quota: Quota,
    pub allowed_pools: Option<Vec<String>>,
    /// Sum of the tenant's open allocations across all pools.
    pub used: Resources,
    /// Runs holding allocations.
    pub runs: u64,
}

impl TenantView {
    fn allows(&self, pool: &str) -> bool {
        self.allowed_pools
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| x == pool))
    }
}

/// An open allocation, as far as the snapshot needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAllocation {
    pub run: RunId,
    pub tenant: String,
    pub pool: String,
    pub resources: Resources,
}

/// What the controller decides from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub pools: BTreeMap<String, PoolView>,
    pub tenants: BTreeMap<String, TenantView>,
}

impl Snapshot {
    /// Builds the snapshot from the stored specs and the open allocations.
    pub fn build(pools: &[PoolSpec], tenants: &[TenantSpec], open: &[OpenAllocation]) -> Snapshot {
        let mut snapshot = Snapshot {
            pools: pools
                .iter()
                .map(|p| {
                    let view = PoolView {
                        name: p.name.clone(),
                        state: p.state,
                        capacity: p.capacity(),
                        max_workers: p.max_workers,
                        used: Resources::ZERO,
                        workers: 0,
                    };
                    (p.name.clone(), view)
                })
                .collect(),
            tenants: tenants
                .iter()
                .map(|t| {
                    let view = TenantView {
                        name: t.name.clone(),
                        quota: t.quota(),
                        allowed_pools: t.allowed_pools.clone(),
                        used: Resources::ZERO,
                        runs: 0,
                    };
                    (t.name.clone(), view)
                })
                .collect(),
        };
        snapshot.charge(open);
        snapshot
    }

    /// Adds open allocations to what pools and tenants use.
    pub fn charge(&mut self, open: &[OpenAllocation]) {
        let mut runs_by_tenant: BTreeMap<&str, std::collections::BTreeSet<RunId>> = BTreeMap::new();
        for a in open {
            if let Some(pool) = self.pools.get_mut(&a.pool) {
                pool.used = pool.used.saturating_add(&a.resources);
                pool.workers = pool.workers.saturating_add(1);
            }
            if let Some(tenant) = self.tenants.get_mut(&a.tenant) {
                tenant.used = tenant.used.saturating_add(&a.resources);
            }
            runs_by_tenant.entry(&a.tenant).or_default().insert(a.run);
        }
        for (tenant, runs) in runs_by_tenant {
            if let Some(t) = self.tenants.get_mut(tenant) {
                t.runs = t.runs.saturating_add(runs.len() as u64);
            }
        }
    }
}

/// A run waiting for admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRun {
    pub id: RunId,
    pub tenant: String,
    pub priority: i32,
    pub enqueued_at: Timestamp,
    pub groups: Vec<GroupRequest>,
}

/// Why a run waits or was rejected: a stable code and a sentence with numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    UnknownTenant,
    NoMatchingPool,
    LargerThanPools,
    LargerThanQuota,
    TenantQuota,
    TenantRuns,
    PoolNotActive,
    PoolFull,
    PoolMaxWorkers,
}

impl Reason {
    fn new(code: ReasonCode, message: impl Into<String>) -> Reason {
        Reason {
            code,
            message: message.into(),
        }
    }
}

/// One group's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub group: u32,
    pub pool: String,
    pub resources: Resources,
}

/// The controller's verdict on one queued run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admit {
        run: RunId,
        placements: Vec<Placement>,
    },
    Reject {
        run: RunId,
        reason: Reason,
    },
    Wait {
        run: RunId,
        reason: Reason,
        /// How long the run has waited so far, in milliseconds.
        waited_ms: i64,
    },
}

impl Decision {
    pub fn run(&self) -> RunId {
        match self {
            Decision::Admit { run, .. }
            | Decision::Reject { run, .. }
            | Decision::Wait { run, .. } => *run,
        }
    }
}

/// What a verdict depends on besides the snapshot: the tenant and, per group, the
/// pool selector and resources.
type Shape<'a> = (&'a str, Vec<(Option<&'a str>, Resources)>);

/// Decides, for every queued run, whether it is admitted (and where), rejected,
/// or left waiting with a reason. Deterministic: same input, same output.
pub fn decide(snapshot: &Snapshot, queue: &[QueuedRun], now: Timestamp) -> Vec<Decision> {
    let mut work = snapshot.clone();
    let mut order: Vec<&QueuedRun> = queue.iter().collect();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.enqueued_at.cmp(&b.enqueued_at))
            .then(a.id.cmp(&b.id))
    });
    // Runs of the same tenant and shape get the same verdict until something is
    // admitted: remember it instead of recomputing (and reformatting) it.
    let mut verdicts: HashMap<Shape<'_>, Decision> = HashMap::new();
    let mut decisions = Vec::with_capacity(order.len());
    for run in order {
        let shape = (
            run.tenant.as_str(),
            run.groups
                .iter()
                .map(|g| (g.pool.as_deref(), g.resources))
                .collect::<Vec<_>>(),
        );
        let decision = match verdicts.get(&shape) {
            Some(Decision::Reject { reason, .. }) => Decision::Reject {
                run: run.id,
                reason: reason.clone(),
            },
            Some(Decision::Wait { reason, .. }) => Decision::Wait {
                run: run.id,
                reason: reason.clone(),
                waited_ms: now.millis_since(run.enqueued_at),
            },
            _ => {
                let decision = decide_one(&mut work, run, now);
                if matches!(decision, Decision::Admit { .. }) {
                    verdicts.clear();
                } else {
                    verdicts.insert(shape, decision.clone());
                }
                decision
            }
        };
        decisions.push(decision);
    }
    decisions
}

fn decide_one(work: &mut Snapshot, run: &QueuedRun, now: Timestamp) -> Decision {
    let wait = |reason| Decision::Wait {
        run: run.id,
        reason,
        waited_ms: now.millis_since(run.enqueued_at),
    };
    let Some(tenant) = work.tenants.get(&run.tenant) else {
        return Decision::Reject {
            run: run.id,
            reason: Reason::new(
                ReasonCode::UnknownTenant,
                format!("tenant {} does not exist", run.tenant),
            ),
        };
    };
    if let Err(reason) = check_ever_fits(work, tenant, &run.groups) {
        return Decision::Reject {
            run: run.id,
            reason,
        };
    }
    if let Err(reason) = check_quota(tenant, &run.groups) {
        return wait(reason);
    }
    let placements = match place(work, tenant, &run.groups, false) {
        Ok(p) => p,
        Err(reason) => return wait(reason),
    };
    for p in &placements {
        if let Some(pool) = work.pools.get_mut(&p.pool) {
            pool.used = pool.used.saturating_add(&p.resources);
            pool.workers = pool.workers.saturating_add(1);
        }
    }
    if let Some(t) = work.tenants.get_mut(&run.tenant) {
        for p in &placements {
            t.used = t.used.saturating_add(&p.resources);
        }
        t.runs = t.runs.saturating_add(1);
    }
    Decision::Admit {
        run: run.id,
        placements,
    }
}

fn total(groups: &[GroupRequest]) -> Resources {
    groups
        .iter()
        .fold(Resources::ZERO, |acc, g| acc.saturating_add(&g.resources))
}

/// `cpu 6/6 in use, run needs 3; memory ...` for each dimension that does not fit.
fn shortfall(used: &Resources, limit: &Resources, need: &Resources) -> Option<String> {
    let parts: Vec<String> = Dimension::ALL
        .into_iter()
        .filter(|&d| need.get(d) > 0 && used.get(d).saturating_add(need.get(d)) > limit.get(d))
        .map(|d| {
            format!(
                "{} {}/{} in use, run needs {}",
                d.name(),
                d.format(used.get(d)),
                d.format(limit.get(d)),
                d.format(need.get(d))
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn matching_pools<'a>(
    work: &'a Snapshot,
    tenant: &'a TenantView,
    group: &'a GroupRequest,
) -> impl Iterator<Item = &'a PoolView> + 'a {
    work.pools.values().filter(move |p| {
        group.pool.as_ref().is_none_or(|name| &p.name == name) && tenant.allows(&p.name)
    })
}

/// Can the run be admitted at all, were everything free? Used at submit and on
/// every cycle (pools and quotas may have shrunk since).
pub fn check_ever_fits(
    work: &Snapshot,
    tenant: &TenantView,
    groups: &[GroupRequest],
) -> Result<(), Reason> {
    let need = total(groups);
    let over: Vec<String> = need
        .exceeding(&tenant.quota.resources)
        .into_iter()
        .map(|d| {
            format!(
                "{} {} (quota {})",
                d.name(),
                d.format(need.get(d)),
                d.format(tenant.quota.resources.get(d))
            )
        })
        .collect();
    if !over.is_empty() {
        return Err(Reason::new(
            ReasonCode::LargerThanQuota,
            format!(
                "larger than tenant {}'s quota: needs {}",
                tenant.name,
                over.join(", ")
            ),
        ));
    }
    if tenant.quota.runs == 0 {
        return Err(Reason::new(
            ReasonCode::LargerThanQuota,
            format!("tenant {} has a quota of 0 runs", tenant.name),
        ));
    }
    for g in groups {
        let mut candidates = matching_pools(work, tenant, g).peekable();
        if candidates.peek().is_none() {
            let what = match &g.pool {
                Some(name) if work.pools.contains_key(name) => {
                    format!("tenant {} is not allowed to use pool {name}", tenant.name)
                }
                Some(name) => format!("no pool named {name}"),
                None => format!("no pool that tenant {} may use", tenant.name),
            };
            return Err(Reason::new(
                ReasonCode::NoMatchingPool,
                format!("group {}: {what}", g.index),
            ));
        }
        if !candidates.any(|p| g.resources.fits_in(&p.capacity)) {
            let largest = matching_pools(work, tenant, g)
                .map(|p| format!("{} ({})", p.name, p.capacity))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Reason::new(
                ReasonCode::LargerThanPools,
                format!(
                    "group {} needs {}, more than the capacity of every matching pool: {largest}",
                    g.index, g.resources
                ),
            ));
        }
    }
    // Groups that share a pool add up: the gang must fit its pools when empty.
    if groups.len() > 1
        && let Err(reason) = place(work, tenant, groups, true)
    {
        return Err(Reason::new(
            ReasonCode::LargerThanPools,
            format!(
                "the groups together never fit, even in empty pools: {}",
                reason.message
            ),
        ));
    }
    Ok(())
}

fn check_quota(tenant: &TenantView, groups: &[GroupRequest]) -> Result<(), Reason> {
    if tenant.runs >= tenant.quota.runs {
        return Err(Reason::new(
            ReasonCode::TenantRuns,
            format!(
                "tenant {}: {}/{} runs in use",
                tenant.name, tenant.runs, tenant.quota.runs
            ),
        ));
    }
    match shortfall(&tenant.used, &tenant.quota.resources, &total(groups)) {
        Some(text) => Err(Reason::new(
            ReasonCode::TenantQuota,
            format!("tenant {}: {text}", tenant.name),
        )),
        None => Ok(()),
    }
}

/// Why `pool` cannot take `need` now, if it cannot.
/// With `empty`, the pool is taken as active with nothing in use: would it ever fit?
fn pool_blocker(
    pool: &PoolView,
    need: &Resources,
    extra: Resources,
    extra_workers: u32,
    empty: bool,
) -> Option<Reason> {
    let (in_use, workers_in_use) = if empty {
        (Resources::ZERO, 0)
    } else {
        (pool.used, pool.workers)
    };
    if !empty && pool.state != PoolState::Active {
        return Some(Reason::new(
            ReasonCode::PoolNotActive,
            format!("pool {} is {}", pool.name, pool.state.as_str()),
        ));
    }
    let workers = workers_in_use.saturating_add(extra_workers);
    if workers >= pool.max_workers {
        return Some(Reason::new(
            ReasonCode::PoolMaxWorkers,
            format!(
                "pool {}: {}/{} workers in use",
                pool.name, workers, pool.max_workers
            ),
        ));
    }
    let used = in_use.saturating_add(&extra);
    shortfall(&used, &pool.capacity, need)
        .map(|text| Reason::new(ReasonCode::PoolFull, format!("pool {}: {text}", pool.name)))
}

/// Places every group (binpack: the fullest pool that has room), or explains
/// which group cannot be placed. Groups of the same run placed on one pool add up.
/// With `empty`, every pool is taken as active and unused.
fn place(
    work: &Snapshot,
    tenant: &TenantView,
    groups: &[GroupRequest],
    empty: bool,
) -> Result<Vec<Placement>, Reason> {
    let mut extra: BTreeMap<&str, (Resources, u32)> = BTreeMap::new();
    let mut placements = Vec::with_capacity(groups.len());
    for g in groups {
        let mut best: Option<(&PoolView, u128)> = None;
        let mut blockers: Vec<String> = Vec::new();
        let mut first_code = None;
        for pool in matching_pools(work, tenant, g) {
            let (more, more_workers) = extra
                .get(pool.name.as_str())
                .copied()
                .unwrap_or((Resources::ZERO, 0));
            match pool_blocker(pool, &g.resources, more, more_workers, empty) {
                Some(reason) => {
                    first_code.get_or_insert(reason.code);
                    blockers.push(reason.message);
                }
                None => {
                    let score = fullness(
                        pool,
                        &pool.used.saturating_add(&more).saturating_add(&g.resources),
                    );
                    if best.is_none_or(|(_, s)| score > s) {
                        best = Some((pool, score));
                    }
                }
            }
        }
        let Some((pool, _)) = best else {
            let prefix = if groups.len() > 1 {
                format!("group {}: ", g.index)
            } else {
                String::new()
            };
            return Err(Reason::new(
                first_code.unwrap_or(ReasonCode::NoMatchingPool),
                format!("{prefix}{}", blockers.join("; ")),
            ));
        };
        let entry = extra
            .entry(pool.name.as_str())
            .or_insert((Resources::ZERO, 0));
        entry.0 = entry.0.saturating_add(&g.resources);
        entry.1 = entry.1.saturating_add(1);
        placements.push(Placement {
            group: g.index,
            pool: pool.name.clone(),
            resources: g.resources,
        });
    }
    Ok(placements)
}

/// How full a pool would be, as the largest share over dimensions, in parts per 2^32.
fn fullness(pool: &PoolView, used: &Resources) -> u128 {
    Dimension::ALL
        .into_iter()
        .filter(|&d| pool.capacity.get(d) > 0)
        .map(|d| (u128::from(used.get(d)) << 32) / u128::from(pool.capacity.get(d)))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;

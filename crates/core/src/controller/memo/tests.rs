use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::controller::{AgentView, BudgetView, OpenAllocation, decide, queue_of};
use crate::ids::WorkerId;
use crate::pool::{PoolSpec, Price, Provider};
use crate::queue::QueuedRun;
use crate::request::GroupRequest;
use crate::resources::Resources;
use crate::selector::{PlacementPolicy, PoolSelector};
use crate::tenant::{Quota, TenantSpec};

const GI: u64 = 1024;

fn pool(name: &str, cpu: u64) -> PoolView {
    let spec = PoolSpec {
        name: name.into(),
        provider: Provider::Local,
        capacity: Resources::new(cpu * 1000, 64 * GI, 0).into(),
        max_workers: 100,
        labels: BTreeMap::new(),
        price: Price::default(),
        state: PoolState::Active,
        max_agent: Default::default(),
        require_confinement: false,
        kubernetes: None,
    };
    PoolView::new(&spec, Vec::new())
}

fn agent(id: i64, cpu: u64) -> AgentView {
    AgentView {
        id: WorkerId(id),
        capacity: Resources::new(cpu * 1000, 16 * GI, 0),
        used: Resources::ZERO,
    }
}

fn tenant(name: &str) -> TenantView {
    TenantView::new(&TenantSpec::unlimited(name), [0.0; 3])
}

fn run(id: i64, tenant: &str, cpu: u64, selector: PoolSelector) -> QueuedRun {
    QueuedRun {
        id: RunId(id),
        tenant: tenant.into(),
        priority: 0,
        enqueued_at: Timestamp(id),
        groups: vec![GroupRequest {
            index: 0,
            selector,
            resources: Resources::new(cpu * 1000, GI, 0),
            steps: vec![0],
        }],
        readmit: false,
        bound: Money::ZERO,
    }
}

/// A cluster the way a server keeps it: pools and tenants, open allocations
/// (with the bounds their runs were admitted on) and the queue. Each cycle
/// decides on the snapshot it builds, and its outcome is applied.
#[derive(Debug, Clone)]
struct World {
    base: Snapshot,
    open: Vec<(OpenAllocation, Money)>,
    runs: BTreeMap<RunId, QueuedRun>,
    queue: RunQueue,
    now: i64,
    next_run: i64,
}

impl World {
    fn snapshot(&self) -> Snapshot {
        let mut snap = self.base.clone();
        let open: Vec<OpenAllocation> = self.open.iter().map(|(a, _)| a.clone()).collect();
        snap.charge(&open);
        snap
    }

    fn enqueue(&mut self, mut run: QueuedRun) {
        self.next_run += 1;
        run.id = RunId(self.next_run);
        self.runs.insert(run.id, run.clone());
        self.queue.insert(run);
    }

    /// What a server does with a cycle's decisions.
    fn apply(&mut self, outcome: &Outcome) {
        for admission in &outcome.admitted {
            let Some(run) = self.runs.remove(&admission.run) else {
                continue;
            };
            self.queue.remove(run.id);
            if !run.readmit
                && let Some(budget) = self
                    .base
                    .tenants
                    .get_mut(&run.tenant)
                    .and_then(|t| t.budget.as_mut())
            {
                budget.running = budget.running.saturating_add(run.bound);
            }
            for p in &admission.placements {
                let open = OpenAllocation {
                    run: run.id,
                    tenant: run.tenant.clone(),
                    pool: p.pool.clone(),
                    resources: p.resources,
                    worker: p.worker,
                };
                self.open.push((open, run.bound));
            }
        }
        for (run, _) in &outcome.rejected {
            self.runs.remove(run);
            self.queue.remove(*run);
        }
    }

    /// The run holding the `n`th open allocation (modulo their number) ends:
    /// what it was bound to cost is now spent, at half its bound.
    fn end(&mut self, n: usize) {
        let Some((first, bound)) = self.open.get(n % self.open.len().max(1)).cloned() else {
            return;
        };
        self.open.retain(|(a, _)| a.run != first.run);
        if let Some(budget) = self
            .base
            .tenants
            .get_mut(&first.tenant)
            .and_then(|t| t.budget.as_mut())
        {
            budget.running = Money::from_micros(
                budget
                    .running
                    .micros()
                    .saturating_sub(bound.micros())
                    .max(0),
            );
            budget.spent = budget
                .spent
                .saturating_add(Money::from_micros(bound.micros() / 2));
        }
    }

    fn tenant_mut(&mut self, n: usize) -> Option<&mut TenantView> {
        let len = self.base.tenants.len().max(1);
        self.base.tenants.values_mut().nth(n % len)
    }

    fn pool_mut(&mut self, n: usize) -> Option<&mut PoolView> {
        let len = self.base.pools.len().max(1);
        self.base.pools.values_mut().nth(n % len)
    }
}

/// What changes between two cycles.
#[derive(Debug, Clone)]
enum Step {
    /// Only the clock moves on, by this many milliseconds.
    Wait(i64),
    /// The run holding the nth open allocation ends.
    End(usize),
    /// Runs arrive.
    Arrive(Vec<QueuedRun>),
    /// The nth queued run is cancelled.
    Cancel(usize),
    /// Prices changed: the queued runs of the nth tenant are estimated
    /// again, their bounds scaled by this many per mille.
    Rebound {
        tenant: usize,
        permille: i64,
    },
    Quota {
        tenant: usize,
        cpu: u64,
        runs: u64,
    },
    PoolLimit {
        tenant: usize,
        cpu: u64,
        runs: u64,
    },
    Budget {
        tenant: usize,
        monthly: u64,
    },
    /// Recent usage: changes the fair-share order only.
    Recent {
        tenant: usize,
        cpu: u64,
    },
    Capacity {
        pool: usize,
        cpu: u64,
    },
    State {
        pool: usize,
        state: u8,
    },
    MaxWorkers {
        pool: usize,
        workers: u32,
    },
    /// An agent joins a static pool, or (`None`) its last one leaves.
    Agent {
        pool: usize,
        cpu: Option<u64>,
    },
}

impl Step {
    fn apply(&self, world: &mut World) {
        match self {
            Step::Wait(ms) => world.now += ms,
            Step::End(n) => world.end(*n),
            Step::Arrive(runs) => {
                for r in runs {
                    let mut r = r.clone();
                    r.enqueued_at = Timestamp(world.now - r.enqueued_at.0);
                    world.enqueue(r);
                }
            }
            Step::Cancel(n) => {
                let ids: Vec<RunId> = world.runs.keys().copied().collect();
                if let Some(&id) = ids.get(n % ids.len().max(1)) {
                    world.runs.remove(&id);
                    world.queue.remove(id);
                }
            }
            Step::Rebound { tenant, permille } => {
                let name = format!("t{}", tenant % world.base.tenants.len().max(1));
                for run in world.runs.values_mut().filter(|r| r.tenant == name) {
                    run.bound = Money::from_micros(run.bound.micros() * permille / 1000);
                    world.queue.insert(run.clone());
                }
            }
            Step::Quota { tenant, cpu, runs } => {
                if let Some(t) = world.tenant_mut(*tenant) {
                    t.quota.resources.cpu_millis = cpu * 1000;
                    t.quota.runs = *runs;
                }
            }
            Step::PoolLimit { tenant, cpu, runs } => {
                if let Some(t) = world.tenant_mut(*tenant) {
                    t.pool_limits.insert(
                        "p0".into(),
                        Quota {
                            resources: Resources::new(cpu * 1000, u64::MAX, u64::MAX),
                            runs: *runs,
                        },
                    );
                }
            }
            Step::Budget { tenant, monthly } => {
                if let Some(b) = world.tenant_mut(*tenant).and_then(|t| t.budget.as_mut()) {
                    b.monthly = Money::from_whole_units(*monthly as i64);
                }
            }
            Step::Recent { tenant, cpu } => {
                if let Some(t) = world.tenant_mut(*tenant) {
                    t.recent[0] = (*cpu * 1000) as f64;
                }
            }
            Step::Capacity { pool, cpu } => {
                if let Some(p) = world.pool_mut(*pool)
                    && p.agents.is_none()
                {
                    p.capacity.cpu_millis = cpu * 1000;
                }
            }
            Step::State { pool, state } => {
                if let Some(p) = world.pool_mut(*pool) {
                    p.state = match state {
                        0 => PoolState::Draining,
                        1 => PoolState::Disabled,
                        _ => PoolState::Active,
                    };
                }
            }
            Step::MaxWorkers { pool, workers } => {
                if let Some(p) = world.pool_mut(*pool) {
                    p.max_workers = *workers;
                }
            }
            Step::Agent { pool, cpu } => {
                if let Some(p) = world.pool_mut(*pool)
                    && let Some(agents) = p.agents.as_mut()
                {
                    match cpu {
                        Some(cpu) => {
                            let id = agents.iter().map(|a| a.id.0).max().unwrap_or(0) + 1;
                            agents.push(agent(id, *cpu));
                        }
                        None => {
                            agents.pop();
                        }
                    }
                    p.capacity = agents
                        .iter()
                        .fold(Resources::ZERO, |acc, a| acc.saturating_add(&a.capacity));
                }
            }
        }
    }
}

/// Runs of a few shapes (so that classes hold several runs): a tenant, cpu,
/// a selector (any pool, by name, by label, or a gang with a group on p0),
/// priority, how long before arrival it was enqueued, its bound, readmission.
fn arb_runs(max: usize) -> impl Strategy<Value = Vec<QueuedRun>> {
    prop::collection::vec(
        (
            0usize..4,
            1u64..5,
            0usize..5,
            -1i32..2,
            0i64..2500,
            0i64..6_000_000,
            prop::bool::weighted(0.05),
        ),
        0..max,
    )
    .prop_map(|runs| {
        runs.into_iter()
            .map(|(t, cpu, kind, priority, ago, bound, readmit)| {
                let mut r = run(0, &format!("t{t}"), cpu, PoolSelector::default());
                r.priority = priority;
                r.enqueued_at = Timestamp(ago);
                r.bound = Money::from_micros(bound);
                r.readmit = readmit;
                let g = &mut r.groups[0];
                match kind {
                    1 => g.selector = PoolSelector::named("p1"),
                    2 => {
                        g.selector.labels.insert("kind".into(), "k0".into());
                    }
                    3 => {
                        g.selector.placement = Some(PlacementPolicy::Spread);
                        r.groups.push(GroupRequest {
                            index: 1,
                            selector: PoolSelector::named("p0"),
                            resources: Resources::new(1000, GI, 0),
                            steps: vec![1],
                        });
                    }
                    4 => g.selector = PoolSelector::named("p2"),
                    _ => {}
                }
                r
            })
            .collect()
    })
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0i64..1500).prop_map(Step::Wait),
        4 => (0usize..64).prop_map(Step::End),
        2 => arb_runs(8).prop_map(Step::Arrive),
        1 => (0usize..64).prop_map(Step::Cancel),
        1 => (0usize..4, 0i64..3000)
            .prop_map(|(tenant, permille)| Step::Rebound { tenant, permille }),
        1 => (0usize..4, 0u64..14, 0u64..7)
            .prop_map(|(tenant, cpu, runs)| Step::Quota { tenant, cpu, runs }),
        1 => (0usize..4, 0u64..6, 0u64..4)
            .prop_map(|(tenant, cpu, runs)| Step::PoolLimit { tenant, cpu, runs }),
        1 => (0usize..4, 0u64..40).prop_map(|(tenant, monthly)| Step::Budget { tenant, monthly }),
        1 => (0usize..4, 0u64..20).prop_map(|(tenant, cpu)| Step::Recent { tenant, cpu }),
        1 => (0usize..4, 0u64..16).prop_map(|(pool, cpu)| Step::Capacity { pool, cpu }),
        1 => (0usize..4, 0u8..4).prop_map(|(pool, state)| Step::State { pool, state }),
        1 => (0usize..4, 0u32..8).prop_map(|(pool, workers)| Step::MaxWorkers { pool, workers }),
        1 => (0usize..4, prop::option::of(1u64..6)).prop_map(|(pool, cpu)| Step::Agent { pool, cpu }),
    ]
}

/// Pools p0..p3 (some static, with agents; labelled k0 or k1; some draining or
/// disabled), tenants t0..t3 with quotas, a limit in p0, allowed pools and
/// hard or soft budgets, and the runs queued at the start.
fn arb_world() -> impl Strategy<Value = World> {
    let pools = prop::collection::vec(
        (
            1u64..16,
            1u32..8,
            0u8..5,
            prop::option::of(prop::collection::vec(1u64..6, 0..3)),
        ),
        1..5,
    );
    let tenants = prop::collection::vec(
        (
            0u64..14,
            1u64..7,
            0u64..6,
            prop::option::of((0u64..30, 0u64..10, prop::bool::ANY)),
            prop::option::of(prop::collection::btree_set(0usize..4, 0..3)),
        ),
        1..5,
    );
    (pools, tenants, arb_runs(40)).prop_map(|(pools, tenants, runs)| {
        let mut next_agent = 0;
        let pools = pools
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, workers, state, agents))| {
                let mut p = pool(&format!("p{i}"), cpu);
                if let Some(agents) = agents {
                    let agents: Vec<AgentView> = agents
                        .into_iter()
                        .map(|cpu| {
                            next_agent += 1;
                            agent(next_agent, cpu)
                        })
                        .collect();
                    p.capacity = agents
                        .iter()
                        .fold(Resources::ZERO, |acc, a| acc.saturating_add(&a.capacity));
                    p.agents = Some(agents);
                }
                p.max_workers = workers;
                p.labels.insert("kind".into(), format!("k{}", i % 2));
                if i > 0 {
                    p.state = match state {
                        0 => PoolState::Draining,
                        1 => PoolState::Disabled,
                        _ => PoolState::Active,
                    };
                }
                (p.name.clone(), p)
            })
            .collect();
        let tenants = tenants
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, runs, pool_cpu, budget, allowed))| {
                let mut t = tenant(&format!("t{i}"));
                t.weight = (i + 1) as u32;
                t.quota.resources.cpu_millis = cpu * 1000;
                t.quota.runs = runs;
                if pool_cpu > 0 {
                    t.pool_limits.insert(
                        "p0".into(),
                        Quota {
                            resources: Resources::new(pool_cpu * 1000, u64::MAX, u64::MAX),
                            runs: pool_cpu,
                        },
                    );
                }
                t.allowed_pools = allowed.map(|a| a.iter().map(|p| format!("p{p}")).collect());
                t.budget = budget.map(|(monthly, spent, hard)| BudgetView {
                    monthly: Money::from_whole_units(monthly as i64),
                    enforce: if hard { Enforce::Hard } else { Enforce::Soft },
                    month: "2026-11".into(),
                    spent: Money::from_whole_units(spent as i64),
                    running: Money::ZERO,
                });
                (t.name.clone(), t)
            })
            .collect();
        let mut world = World {
            base: Snapshot { pools, tenants },
            open: Vec::new(),
            runs: BTreeMap::new(),
            queue: RunQueue::new(),
            now: 3000,
            next_run: 0,
        };
        Step::Arrive(runs).apply(&mut world);
        world
    })
}

/// Decides every cycle with the full decision and with one incremental
/// controller carried across cycles; fails at the first difference.
fn check_same_decisions(mut world: World, steps: &[Step]) -> Result<CycleStats, TestCaseError> {
    let policy = Policy {
        starvation_after_ms: 1000,
        ..Policy::default()
    };
    let mut controller = Controller::new();
    let mut total = CycleStats::default();
    for (i, step) in std::iter::once(None)
        .chain(steps.iter().map(Some))
        .enumerate()
    {
        if let Some(step) = step {
            step.apply(&mut world);
        }
        let snap = world.snapshot();
        let now = Timestamp(world.now);
        let full = decide(&snap, &world.queue, now, &policy);
        let incremental = controller.decide(&snap, &world.queue, now, &policy);
        prop_assert_eq!(&incremental, &full, "cycle {} after {:?}", i, step);
        let stats = controller.last_cycle();
        total.reused += stats.reused;
        total.evaluated += stats.evaluated;
        world.apply(&full);
    }
    Ok(total)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn the_incremental_controller_decides_what_the_full_one_decides(
        world in arb_world(),
        steps in prop::collection::vec(arb_step(), 1..16),
    ) {
        check_same_decisions(world, &steps)?;
    }
}

/// Two pools, each named by the runs of one tenant and full; a third tenant
/// whose runs may go anywhere, too large for what is free.
fn two_full_pools() -> World {
    let mut a = pool("a", 4);
    a.used = Resources::new(4000, 0, 0);
    a.workers = 1;
    let mut b = pool("b", 4);
    b.used = Resources::new(3000, 0, 0);
    b.workers = 1;
    let tenants = ["ta", "tb", "any"].map(|t| (t.to_string(), tenant(t)));
    let mut world = World {
        base: Snapshot {
            pools: [a, b].into_iter().map(|p| (p.name.clone(), p)).collect(),
            tenants: tenants.into_iter().collect(),
        },
        open: Vec::new(),
        runs: BTreeMap::new(),
        queue: RunQueue::new(),
        now: 100,
        next_run: 0,
    };
    for cpu in 2..5 {
        world.enqueue(run(0, "ta", cpu, PoolSelector::named("a")));
        world.enqueue(run(0, "tb", cpu, PoolSelector::named("b")));
    }
    world.enqueue(run(0, "any", 4, PoolSelector::default()));
    world
}

#[test]
fn a_cycle_with_nothing_changed_reuses_every_verdict() {
    let world = two_full_pools();
    let snap = world.snapshot();
    let now = Timestamp(world.now);
    let policy = Policy::default();
    let mut controller = Controller::new();
    let first = controller.decide(&snap, &world.queue, now, &policy);
    assert!(first.admitted.is_empty());
    assert_eq!(first.waiting.len(), 7);
    assert_eq!(
        controller.last_cycle(),
        CycleStats {
            reused: 0,
            evaluated: 7
        }
    );
    let again = controller.decide(&snap, &world.queue, Timestamp(now.0 + 60_000), &policy);
    assert_eq!(again, first);
    assert_eq!(
        controller.last_cycle(),
        CycleStats {
            reused: 7,
            evaluated: 0
        }
    );
}

#[test]
fn room_freed_in_a_pool_re_evaluates_only_the_classes_that_may_use_it() {
    let mut world = two_full_pools();
    let policy = Policy::default();
    let mut controller = Controller::new();
    controller.decide(
        &world.snapshot(),
        &world.queue,
        Timestamp(world.now),
        &policy,
    );
    // One cpu more in b: tb's three classes and the one of `any` read b, ta's
    // three read only a.
    if let Some(b) = world.base.pools.get_mut("b") {
        b.used = Resources::new(2000, 0, 0);
    }
    let snap = world.snapshot();
    let outcome = controller.decide(&snap, &world.queue, Timestamp(world.now), &policy);
    assert_eq!(
        outcome,
        decide(&snap, &world.queue, Timestamp(world.now), &policy)
    );
    assert_eq!(outcome.admitted.len(), 1, "tb's 2-cpu run fits b now");
    assert_eq!(
        controller.last_cycle(),
        CycleStats {
            reused: 3,
            evaluated: 4
        }
    );
}

#[test]
fn a_queue_built_afresh_does_not_take_the_verdicts_of_other_classes() {
    // A server that reloads builds its queue again, numbering classes from
    // zero: class 0 is another shape now.
    let world = two_full_pools();
    let snap = world.snapshot();
    let now = Timestamp(world.now);
    let policy = Policy::default();
    let mut controller = Controller::new();
    controller.decide(&snap, &world.queue, now, &policy);
    // Class 0 was ta's 2-cpu run 1 on pool a; now it is a 1-cpu run 1 of ta
    // on pool a: same tenant, run and pool, another need.
    let reloaded = queue_of([run(1, "ta", 1, PoolSelector::named("a"))]);
    let outcome = controller.decide(&snap, &reloaded, now, &policy);
    assert_eq!(outcome, decide(&snap, &reloaded, now, &policy));
    assert_eq!(
        outcome.waiting[&ClassId(0)].message,
        "pool a: cpu 4/4 in use, run needs 1"
    );
}

#[test]
fn verdicts_of_classes_that_left_the_queue_are_forgotten() {
    let mut world = two_full_pools();
    let policy = Policy::default();
    let mut controller = Controller::new();
    controller.decide(
        &world.snapshot(),
        &world.queue,
        Timestamp(world.now),
        &policy,
    );
    assert_eq!(controller.memo.entries.len(), 7);
    let ids: BTreeSet<RunId> = world.runs.keys().copied().collect();
    for id in ids.into_iter().take(4) {
        world.queue.remove(id);
    }
    controller.decide(
        &world.snapshot(),
        &world.queue,
        Timestamp(world.now),
        &policy,
    );
    assert_eq!(controller.memo.entries.len(), 3);
}

use super::*;
use crate::selector::PoolSelector;
use crate::tenant::{BudgetSpec, Enforce};
use proptest::prelude::*;

const GI: u64 = 1024;

fn pool(name: &str, cpu: u64, mem_gi: u64) -> PoolView {
    let spec = PoolSpec {
        name: name.into(),
        provider: Provider::Local,
        capacity: Resources::new(cpu * 1000, mem_gi * GI, 0).into(),
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

fn tenant(name: &str) -> TenantView {
    TenantView::new(&TenantSpec::unlimited(name), [0.0; 3])
}

fn snapshot(pools: Vec<PoolView>, tenants: Vec<TenantView>) -> Snapshot {
    Snapshot {
        pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
        tenants: tenants.into_iter().map(|t| (t.name.clone(), t)).collect(),
    }
}

fn run(id: i64, tenant: &str, cpu: u64) -> QueuedRun {
    QueuedRun {
        id: RunId(id),
        tenant: tenant.into(),
        priority: 0,
        enqueued_at: Timestamp(id),
        groups: vec![GroupRequest {
            index: 0,
            selector: PoolSelector::default(),
            resources: Resources::new(cpu * 1000, GI, 0),
            steps: vec![0],
        }],
        readmit: false,
        bound: Money::ZERO,
    }
}

/// Decides on `runs` and keeps the queue to look reasons up.
struct Decided {
    queue: RunQueue,
    outcome: Outcome,
}

impl Decided {
    fn admitted(&self) -> Vec<i64> {
        self.outcome.admitted.iter().map(|a| a.run.0).collect()
    }

    fn reason(&self, id: i64) -> Reason {
        if let Some((_, r)) = self.outcome.rejected.iter().find(|(r, _)| r.0 == id) {
            return r.clone();
        }
        let class = self.queue.class_of(RunId(id)).expect("queued").id;
        self.outcome
            .waiting
            .get(&class)
            .map(|r| Reason::clone(r))
            .expect("the run has a reason")
    }

    fn pools(&self) -> Vec<String> {
        self.outcome
            .admitted
            .iter()
            .map(|a| a.placements[0].pool.clone())
            .collect()
    }
}

fn decide_at(snap: &Snapshot, runs: Vec<QueuedRun>, now: i64, policy: &Policy) -> Decided {
    let queue = queue_of(runs);
    let outcome = decide(snap, &queue, Timestamp(now), policy);
    Decided { queue, outcome }
}

fn decide_list(snap: &Snapshot, runs: Vec<QueuedRun>) -> Decided {
    decide_at(snap, runs, 100, &Policy::default())
}

#[test]
fn tenant_quota_limits_admission_with_numbers() {
    let mut acme = tenant("acme");
    acme.quota.resources.cpu_millis = 6000;
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let d = decide_list(&snap, (1..=3).map(|i| run(i, "acme", 3)).collect());
    assert_eq!(d.admitted(), vec![1, 2]);
    let reason = d.reason(3);
    assert_eq!(reason.code, ReasonCode::TenantQuota);
    assert_eq!(reason.message, "tenant acme: cpu 6/6 in use, run needs 3");
    assert_eq!(
        reason.limits,
        vec![Limit {
            scope: "tenant acme".into(),
            dimension: "cpu".into(),
            in_use: 6000,
            limit: 6000,
            needs: 3000
        }]
    );
    assert!(
        reason
            .explain()
            .contains("Tenant acme has 6 of 6 cpu in use and the run needs 3: it gets in when 3 cpu are released"),
        "{}",
        reason.explain()
    );
}

#[test]
fn every_limit_in_the_way_is_named() {
    let mut acme = tenant("acme");
    acme.quota.resources.cpu_millis = 2000;
    acme.used = Resources::new(2000, 0, 0);
    let mut p = pool("p", 4, 64);
    p.used = Resources::new(4000, 0, 0);
    let d = decide_list(&snapshot(vec![p], vec![acme]), vec![run(1, "acme", 1)]);
    let reason = d.reason(1);
    assert_eq!(reason.code, ReasonCode::TenantQuota);
    assert_eq!(
        reason.message,
        "tenant acme: cpu 2/2 in use, run needs 1; also pool p: cpu 4/4 in use, run needs 1"
    );
    let scopes: Vec<&str> = reason.limits.iter().map(|l| l.scope.as_str()).collect();
    assert_eq!(scopes, vec!["tenant acme", "pool p"]);
}

#[test]
fn remedies_count_in_words() {
    let mut runs = Limit::runs(4, 4);
    runs.scope = "tenant acme in pool gpu".into();
    assert_eq!(
        runs.remedy(),
        "Tenant acme in pool gpu has 4 of 4 runs in use and the run needs 1: it gets in when 1 run is released there, or when the limit is raised by that much."
    );
    let mut memory = Limit::shortfall(
        &Resources::new(0, 3072, 0),
        &Resources::new(0, 4096, 0),
        &Resources::new(0, 2048, 0),
    )
    .expect("over")
    .remove(0);
    memory.scope = "pool p".into();
    assert!(
        memory.remedy().contains("when 1Gi of memory is released"),
        "{}",
        memory.remedy()
    );
}

#[test]
fn small_runs_pass_a_waiting_large_one() {
    let snap = snapshot(vec![pool("p", 4, 64)], vec![tenant("a")]);
    let d = decide_list(&snap, vec![run(1, "a", 3), run(2, "a", 3), run(3, "a", 1)]);
    assert_eq!(d.admitted(), vec![1, 3]);
    let reason = d.reason(2);
    assert_eq!(reason.code, ReasonCode::PoolFull);
    assert_eq!(reason.message, "pool p: cpu 3/4 in use, run needs 3");
}

#[test]
fn rejects_what_can_never_fit() {
    let mut small = tenant("small");
    small.quota.resources.cpu_millis = 2000;
    let snap = snapshot(vec![pool("p", 4, 64)], vec![tenant("a"), small]);
    let d = decide_list(
        &snap,
        vec![run(1, "a", 5), run(2, "small", 3), run(3, "ghost", 1)],
    );
    assert_eq!(d.reason(1).code, ReasonCode::LargerThanPools);
    assert_eq!(d.reason(2).code, ReasonCode::LargerThanQuota);
    assert_eq!(
        d.reason(2).message,
        "larger than tenant small's quota: needs cpu 3 (quota 2)"
    );
    assert_eq!(
        d.reason(1).message,
        "group 0 needs cpu 5, memory 1Gi, more than every pool it may use allows: p (cpu 4, memory 64Gi)"
    );
    assert_eq!(d.reason(3).code, ReasonCode::UnknownTenant);
    assert_eq!(d.outcome.rejected.len(), 3);
    assert!(d.outcome.admitted.is_empty());
}

#[test]
fn placement_policies() {
    let mut busy = pool("busy", 8, 64);
    busy.used = Resources::new(6000, GI, 0);
    busy.workers = 1;
    busy.price.cpu_hour = 0.10;
    let mut idle = pool("idle", 8, 64);
    idle.price.cpu_hour = 0.05;
    let mut draining = pool("draining", 8, 64);
    draining.state = PoolState::Draining;
    let snap = snapshot(vec![busy, idle, draining], vec![tenant("a")]);
    let runs = || vec![run(1, "a", 2), run(2, "a", 2)];
    let binpack = decide_list(&snap, runs());
    assert_eq!(binpack.pools(), vec!["busy", "idle"]);
    let spread = Policy {
        placement: PlacementPolicy::Spread,
        ..Policy::default()
    };
    assert_eq!(
        decide_at(&snap, runs(), 0, &spread).pools(),
        vec!["idle", "idle"]
    );
    let cheapest = Policy {
        placement: PlacementPolicy::Cheapest,
        ..Policy::default()
    };
    assert_eq!(
        decide_at(&snap, runs(), 0, &cheapest).pools(),
        vec!["idle", "idle"]
    );
    // The group's own policy overrides the server's.
    let mut mine = runs();
    for r in &mut mine {
        r.groups[0].selector.placement = Some(PlacementPolicy::Binpack);
    }
    assert_eq!(
        decide_at(&snap, mine, 0, &spread).pools(),
        vec!["busy", "idle"]
    );
}

#[test]
fn max_workers_and_pool_states_are_reasons() {
    let mut one = pool("one", 8, 64);
    one.max_workers = 1;
    let snap = snapshot(vec![one], vec![tenant("a")]);
    let d = decide_list(&snap, vec![run(1, "a", 1), run(2, "a", 2)]);
    assert_eq!(d.admitted(), vec![1]);
    assert_eq!(d.reason(2).code, ReasonCode::PoolMaxWorkers);
    assert_eq!(
        d.reason(2).message,
        "pool one: workers 1/1 in use, run needs 1"
    );

    for (state, code) in [
        (PoolState::Draining, ReasonCode::PoolDraining),
        (PoolState::Disabled, ReasonCode::PoolDisabled),
    ] {
        let mut p = pool("p", 8, 64);
        p.state = state;
        let d = decide_list(&snapshot(vec![p], vec![tenant("a")]), vec![run(1, "a", 1)]);
        assert!(d.admitted().is_empty());
        assert_eq!(d.reason(1).code, code);
        assert!(
            d.reason(1).message.starts_with("pool p is"),
            "{:?}",
            d.reason(1)
        );
    }
}

#[test]
fn per_pool_limits_and_allowed_pools() {
    let mut acme = tenant("acme");
    acme.pool_limits.insert(
        "gpu".into(),
        Quota {
            resources: Resources::new(2000, u64::MAX, u64::MAX),
            runs: u64::MAX,
        },
    );
    let snap = snapshot(vec![pool("gpu", 16, 64)], vec![acme.clone()]);
    let d = decide_list(&snap, vec![run(1, "acme", 2), run(2, "acme", 1)]);
    assert_eq!(d.admitted(), vec![1]);
    assert_eq!(d.reason(2).code, ReasonCode::PoolLimit);
    assert_eq!(
        d.reason(2).message,
        "tenant acme in pool gpu: cpu 2/2 in use, run needs 1"
    );

    // Labels select two pools; the tenant may use one, which is full.
    let mut a = pool("a", 2, 64);
    a.labels.insert("os".into(), "linux".into());
    a.used = Resources::new(2000, 0, 0);
    let mut b = pool("b", 8, 64);
    b.labels.insert("os".into(), "linux".into());
    acme.allowed_pools = Some(vec!["a".into()]);
    let snap = snapshot(vec![a, b], vec![acme]);
    let mut r = run(1, "acme", 1);
    r.groups[0]
        .selector
        .labels
        .insert("os".into(), "linux".into());
    let d = decide_list(&snap, vec![r.clone()]);
    assert!(d.admitted().is_empty());
    let reason = d.reason(1);
    assert_eq!(reason.code, ReasonCode::PoolFull);
    assert!(
        reason.message.contains("pool a: cpu 2/2 in use"),
        "{reason:?}"
    );
    assert!(
        reason
            .message
            .contains("pool b: tenant acme is not allowed to use it (allowed pools: a)"),
        "{reason:?}"
    );
    // Selecting only a pool it may not use can never work.
    r.groups[0].selector = PoolSelector::named("b");
    let d = decide_list(&snap, vec![r]);
    assert_eq!(d.reason(1).code, ReasonCode::PoolNotAllowed);
}

#[test]
fn priority_goes_first_then_fifo() {
    let snap = snapshot(vec![pool("p", 2, 64)], vec![tenant("a")]);
    let mut urgent = run(5, "a", 2);
    urgent.priority = 10;
    let d = decide_list(&snap, vec![run(1, "a", 2), urgent]);
    assert_eq!(d.admitted(), vec![5]);
}

#[test]
fn fair_share_goes_to_the_lowest_weighted_share() {
    let mut heavy = tenant("heavy");
    heavy.used = Resources::new(4000, 0, 0);
    let mut light = tenant("light");
    light.used = Resources::new(1000, 0, 0);
    let mut burst = tenant("burst");
    // Holds nothing now but used a lot recently.
    burst.recent = [6000.0, 0.0, 0.0];
    let snap = snapshot(vec![pool("p", 10, 64)], vec![heavy, light, burst]);
    // Room for one more run: the oldest is heavy's, then burst's, then light's.
    let mut p = snap.clone();
    p.pools.get_mut("p").expect("pool").used = Resources::new(8000, 0, 0);
    let d = decide_list(
        &p,
        vec![run(1, "heavy", 2), run(2, "burst", 2), run(3, "light", 2)],
    );
    assert_eq!(d.admitted(), vec![3]);
    // Weight: heavy with weight 8 has a lower weighted share than light.
    p.tenants.get_mut("heavy").expect("tenant").weight = 8;
    let d = decide_list(
        &p,
        vec![run(1, "heavy", 2), run(2, "burst", 2), run(3, "light", 2)],
    );
    assert_eq!(d.admitted(), vec![1]);
    assert_eq!(
        admission_order(
            &p,
            &queue_of(vec![
                run(1, "heavy", 2),
                run(2, "burst", 2),
                run(3, "light", 2)
            ])
        ),
        vec![RunId(1), RunId(3), RunId(2)]
    );
}

#[test]
fn a_starving_run_reserves_the_pool() {
    let mut p = pool("p", 4, 64);
    p.used = Resources::new(3000, 0, 0);
    p.workers = 3;
    let snap = snapshot(vec![p], vec![tenant("a"), tenant("b")]);
    let policy = Policy {
        starvation_after_ms: 1000,
        ..Policy::default()
    };
    let big = run(1, "a", 4);
    let small = run(2, "b", 1);
    // Before the deadline the small run takes the free cpu.
    let d = decide_at(&snap, vec![big.clone(), small.clone()], 500, &policy);
    assert_eq!(d.admitted(), vec![2]);
    // After it, the big run holds the pool and the small one waits behind it.
    let d = decide_at(&snap, vec![big, small], 5000, &policy);
    assert!(d.admitted().is_empty());
    assert_eq!(
        d.outcome.reservations,
        vec![Reservation {
            run: RunId(1),
            pools: vec!["p".into()]
        }]
    );
    assert!(
        d.reason(1).message.contains("room is held for it"),
        "{:?}",
        d.reason(1)
    );
    assert_eq!(d.reason(2).code, ReasonCode::Reserved);
    assert!(
        d.reason(2).message.contains("held for run 1"),
        "{:?}",
        d.reason(2)
    );
}

#[test]
fn static_pools_place_on_agents() {
    let spec = PoolSpec {
        name: "metal".into(),
        provider: Provider::Static,
        capacity: Default::default(),
        max_workers: 100,
        labels: BTreeMap::new(),
        price: Price::default(),
        state: PoolState::Active,
        max_agent: Default::default(),
        require_confinement: false,
        kubernetes: None,
    };
    let agents = vec![
        AgentView {
            id: WorkerId(1),
            capacity: Resources::new(4000, 8 * GI, 0),
            used: Resources::ZERO,
        },
        AgentView {
            id: WorkerId(2),
            capacity: Resources::new(4000, 8 * GI, 0),
            used: Resources::ZERO,
        },
    ];
    let snap = snapshot(vec![PoolView::new(&spec, agents)], vec![tenant("a")]);
    assert_eq!(
        snap.pools["metal"].capacity,
        Resources::new(8000, 16 * GI, 0)
    );
    let d = decide_list(&snap, vec![run(1, "a", 3), run(2, "a", 1), run(3, "a", 2)]);
    let workers: Vec<Option<WorkerId>> = d
        .outcome
        .admitted
        .iter()
        .map(|a| a.placements[0].worker)
        .collect();
    // Binpack: 3 then 1 fill agent 1; 2 goes to agent 2.
    assert_eq!(
        workers,
        vec![Some(WorkerId(1)), Some(WorkerId(1)), Some(WorkerId(2))]
    );
    // Larger than any one agent: waits (agents may join), never rejected.
    let d = decide_list(&snap, vec![run(4, "a", 5)]);
    assert_eq!(d.reason(4).code, ReasonCode::NoAgents);
    let empty = snapshot(vec![PoolView::new(&spec, Vec::new())], vec![tenant("a")]);
    let d = decide_list(&empty, vec![run(5, "a", 1)]);
    assert_eq!(d.reason(5).code, ReasonCode::NoAgents);
    assert_eq!(d.reason(5).message, "pool metal has no live agent");
}

#[test]
fn gang_is_all_or_nothing() {
    let mut gpu = pool("gpu", 8, 64);
    gpu.used = Resources::new(8000, 0, 0);
    let snap = snapshot(vec![pool("cpu", 8, 64), gpu], vec![tenant("a")]);
    let mut r = run(1, "a", 1);
    r.groups.push(GroupRequest {
        index: 1,
        selector: PoolSelector::named("gpu"),
        resources: Resources::new(1000, GI, 0),
        steps: vec![1],
    });
    let d = decide_list(&snap, vec![r]);
    assert!(d.admitted().is_empty());
    let reason = d.reason(1);
    assert_eq!(reason.code, ReasonCode::GangPartnerFull);
    assert!(
        reason
            .message
            .starts_with("gang partner group 1 (pool gpu) has no room: pool gpu: cpu 8/8 in use"),
        "{reason:?}"
    );
}

#[test]
fn a_gang_that_only_fits_group_by_group_is_rejected() {
    let snap = snapshot(vec![pool("p", 4, 64)], vec![tenant("a")]);
    let mut r = run(1, "a", 3);
    r.groups.push(GroupRequest {
        index: 1,
        selector: PoolSelector::named("p"),
        resources: Resources::new(3000, GI, 0),
        steps: vec![1],
    });
    let d = decide_list(&snap, vec![r]);
    let reason = d.reason(1);
    assert_eq!(d.outcome.rejected.len(), 1);
    assert_eq!(reason.code, ReasonCode::LargerThanPools);
    assert!(
        reason.message.starts_with(
            "the groups together never fit, even in empty pools: gang partner group 1"
        ),
        "{reason:?}"
    );
}

#[test]
fn readmissions_go_first_and_do_not_count_runs_twice() {
    let mut a = tenant("a");
    a.quota.runs = 1;
    a.runs = 1;
    let snap = snapshot(vec![pool("p", 2, 64)], vec![a]);
    let mut again = run(9, "a", 2);
    again.readmit = true;
    let d = decide_list(&snap, vec![run(1, "a", 1), again]);
    assert_eq!(d.admitted(), vec![9]);
    assert_eq!(d.reason(1).code, ReasonCode::TenantRuns);
}

fn units(text: &str) -> Money {
    Money::from_units(text.parse().expect("a number")).expect("money")
}

/// A tenant with a budget for 2026-11 that has spent and runs what is given.
fn budgeted(name: &str, enforce: Enforce, monthly: &str, spent: &str, running: &str) -> TenantView {
    let mut t = tenant(name);
    let spec = BudgetSpec {
        monthly: units(monthly),
        enforce,
        alert_at: vec![1.0],
    };
    let november = crate::metering::Month {
        year: 2026,
        month: 11,
    };
    t.budget = Some(BudgetView::new(
        &spec,
        november,
        units(spent),
        units(running),
    ));
    t
}

fn costing(mut run: QueuedRun, estimate: &str) -> QueuedRun {
    run.bound = units(estimate);
    run
}

#[test]
fn a_hard_budget_holds_a_run_whose_estimate_would_pass_it() {
    let acme = budgeted("acme", Enforce::Hard, "500", "483.10", "9.20");
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme, tenant("beta")]);
    let d = decide_list(
        &snap,
        vec![
            costing(run(1, "acme", 1), "12.40"),
            costing(run(2, "beta", 1), "900"),
        ],
    );
    assert_eq!(d.admitted(), vec![2]);
    let reason = d.reason(1);
    assert_eq!(reason.code, ReasonCode::TenantBudget);
    assert_eq!(
        reason.message,
        "tenant acme: budget 500.00 for 2026-11, spent 483.10, running runs may cost 9.20 more, run may cost 12.40"
    );
    assert_eq!(
        reason.limits,
        vec![Limit {
            scope: "tenant acme".into(),
            dimension: "budget".into(),
            in_use: 492_300_000,
            limit: 500_000_000,
            needs: 12_400_000,
        }]
    );
    assert_eq!(
        reason.explain(),
        "It waits for its tenant's monthly budget, which is enforced (hard): tenant acme: budget 500.00 for 2026-11, spent 483.10, running runs may cost 9.20 more, run may cost 12.40. \
         Tenant acme has 492.30 of its budget of 500.00 spent or held for what its running runs may cost at most, and the run may cost up to 12.40: \
         it gets in when the budget is raised by 4.70, when running runs end, or when the next month begins."
    );
    // Exactly up to the budget is within it.
    let d = decide_list(&snap, vec![costing(run(1, "acme", 1), "7.70")]);
    assert_eq!(d.admitted(), vec![1]);
}

/// Cycle after cycle, each admitted run spends anything up to its bound
/// (here all of it, over two cycles) and then ends: whatever the runs cost,
/// the spend never passes a hard budget, and the runs that no longer fit wait.
#[test]
fn spend_never_passes_a_hard_budget_admitting_on_bounds() {
    let monthly = units("40");
    let bound = units("8");
    let mut spent = units("3");
    // Running runs: (id, what each has spent so far).
    let mut running: Vec<(i64, Money)> = Vec::new();
    let mut queue: Vec<QueuedRun> = (1..=12).map(|i| costing(run(i, "acme", 1), "8")).collect();
    let mut admitted = 0;
    for _cycle in 0..20 {
        let left: Money = running
            .iter()
            .map(|(_, so_far)| bound.saturating_sub(*so_far))
            .sum();
        let acme = {
            let mut t = budgeted("acme", Enforce::Hard, "40", "0", "0");
            let view = t.budget.as_mut().expect("a budget");
            view.spent = spent;
            view.running = left;
            t.runs = running.len() as u64;
            t
        };
        let snap = snapshot(vec![pool("p", 64, 64)], vec![acme]);
        let d = decide_list(&snap, queue.clone());
        for id in d.admitted() {
            queue.retain(|r| r.id.0 != id);
            running.push((id, Money::ZERO));
            admitted += 1;
        }
        // Half its bound per cycle: it ends after two.
        for (_, so_far) in &mut running {
            let half = Money::from_micros(bound.micros() / 2);
            *so_far = so_far.saturating_add(half);
            spent = spent.saturating_add(half);
        }
        running.retain(|(_, so_far)| *so_far < bound);
        assert!(spent <= monthly, "spent {spent} of {monthly}");
    }
    // 37.00 of room: four runs of 8.00, then nothing more fits.
    assert_eq!((admitted, spent), (4, units("35")));
    let acme = budgeted("acme", Enforce::Hard, "40", "35", "0");
    let d = decide_list(&snapshot(vec![pool("p", 64, 64)], vec![acme]), queue);
    assert_eq!(
        d.reason(5).message,
        "tenant acme: budget 40.00 for 2026-11, spent 35.00, running runs may cost 0.00 more, run may cost 8.00"
    );
}

#[test]
fn a_spent_hard_budget_holds_even_runs_of_no_known_cost() {
    let acme = budgeted("acme", Enforce::Hard, "500", "500.01", "0");
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let d = decide_list(&snap, vec![run(1, "acme", 1)]);
    assert_eq!(d.reason(1).code, ReasonCode::TenantBudget);
    assert!(
        d.reason(1).message.ends_with("run may cost 0.00"),
        "{}",
        d.reason(1).message
    );
}

#[test]
fn admissions_add_their_estimates_for_the_rest_of_the_cycle() {
    let acme = budgeted("acme", Enforce::Hard, "10", "1", "0");
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let runs = (1..=4).map(|i| costing(run(i, "acme", 1), "3")).collect();
    let d = decide_list(&snap, runs);
    assert_eq!(d.admitted(), vec![1, 2, 3]);
    assert_eq!(
        d.reason(4).message,
        "tenant acme: budget 10.00 for 2026-11, spent 1.00, running runs may cost 9.00 more, run may cost 3.00"
    );
}

#[test]
fn soft_budgets_never_block() {
    let acme = budgeted("acme", Enforce::Soft, "10", "50", "20");
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let d = decide_list(&snap, vec![costing(run(1, "acme", 1), "30")]);
    assert_eq!(d.admitted(), vec![1]);
}

#[test]
fn raising_the_budget_admits_the_run_on_the_next_decide() {
    let mut snap = snapshot(
        vec![pool("p", 16, 64)],
        vec![budgeted("acme", Enforce::Hard, "10", "8", "0")],
    );
    let runs = vec![costing(run(1, "acme", 1), "3")];
    assert_eq!(
        decide_list(&snap, runs.clone()).reason(1).code,
        ReasonCode::TenantBudget
    );
    snap.tenants.insert(
        "acme".into(),
        budgeted("acme", Enforce::Hard, "11", "8", "0"),
    );
    assert_eq!(decide_list(&snap, runs).admitted(), vec![1]);
}

#[test]
fn each_run_is_admitted_on_its_own_estimate() {
    // One class (same tenant, priority and shape), estimates that differ.
    let acme = budgeted("acme", Enforce::Hard, "10", "0", "0");
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let d = decide_list(
        &snap,
        vec![
            costing(run(1, "acme", 1), "2"),
            costing(run(2, "acme", 1), "7"),
            costing(run(3, "acme", 1), "4"),
            costing(run(4, "acme", 1), "1"),
        ],
    );
    assert_eq!(d.queue.classes().count(), 1);
    // Run 3 would pass the budget; run 4, behind it in its class, waits behind
    // it (FIFO within a class), and the class's reason gives run 3's numbers.
    assert_eq!(d.admitted(), vec![1, 2]);
    assert_eq!(
        d.reason(4).message,
        "tenant acme: budget 10.00 for 2026-11, spent 0.00, running runs may cost 9.00 more, run may cost 4.00"
    );
    // A run of another shape is its own class and gets its own turn.
    let mut small = costing(run(5, "acme", 2), "1");
    small.enqueued_at = Timestamp(50);
    let d = decide_list(
        &snap,
        vec![
            costing(run(1, "acme", 1), "2"),
            costing(run(2, "acme", 1), "7"),
            costing(run(3, "acme", 1), "4"),
            small,
        ],
    );
    assert_eq!(d.admitted(), vec![1, 2, 5]);
}

#[test]
fn the_budget_is_named_with_the_other_limits_in_the_way() {
    let mut acme = budgeted("acme", Enforce::Hard, "10", "10", "0");
    acme.quota.resources.cpu_millis = 1000;
    acme.used = Resources::new(1000, 0, 0);
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let d = decide_list(&snap, vec![costing(run(1, "acme", 1), "1")]);
    let reason = d.reason(1);
    assert_eq!(reason.code, ReasonCode::TenantBudget);
    assert_eq!(
        reason.message,
        "tenant acme: budget 10.00 for 2026-11, spent 10.00, running runs may cost 0.00 more, run may cost 1.00; also tenant acme: cpu 1/1 in use, run needs 1"
    );
    let dimensions: Vec<&str> = reason.limits.iter().map(|l| l.dimension.as_str()).collect();
    assert_eq!(dimensions, vec!["budget", "cpu"]);
}

#[test]
fn readmissions_and_starving_runs_are_not_held_by_money() {
    let acme = budgeted("acme", Enforce::Hard, "10", "10", "5");
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let mut again = costing(run(9, "acme", 2), "3");
    again.readmit = true;
    let policy = Policy {
        starvation_after_ms: 10,
        ..Policy::default()
    };
    let d = decide_at(
        &snap,
        vec![costing(run(1, "acme", 1), "3"), again],
        1000,
        &policy,
    );
    assert_eq!(d.admitted(), vec![9]);
    // Run 1 has starved, but room is held for no run its budget holds back.
    assert_eq!(d.reason(1).code, ReasonCode::TenantBudget);
    assert!(d.outcome.reservations.is_empty());
}

#[test]
fn snapshot_counts_open_allocations() {
    let mut snap = snapshot(vec![pool("p", 4, 4)], vec![tenant("a")]);
    let alloc = OpenAllocation {
        run: RunId(1),
        tenant: "a".into(),
        pool: "p".into(),
        resources: Resources::new(1000, 10, 0),
        worker: None,
    };
    snap.charge(&[alloc.clone(), alloc]);
    assert_eq!(snap.pools["p"].used, Resources::new(2000, 20, 0));
    assert_eq!(snap.pools["p"].workers, 2);
    assert_eq!(snap.tenants["a"].runs, 1);
    assert_eq!(snap.tenants["a"].held["p"].runs, 1);
}

fn arb_case() -> impl Strategy<Value = (Snapshot, Vec<QueuedRun>, i64)> {
    let pools = prop::collection::vec((1u64..16, 1u64..8, 0u8..4), 1..4);
    let tenants = prop::collection::vec(
        (
            0u64..12,
            1u64..6,
            0u64..6,
            prop::option::of((0u64..30, 0u64..10)),
        ),
        1..4,
    );
    let runs = prop::collection::vec(
        (
            0usize..4,
            1u64..6,
            0usize..4,
            -1i32..2,
            0i64..3000,
            0i64..8_000_000,
        ),
        0..60,
    );
    (pools, tenants, runs, 0i64..4000).prop_map(|(pools, tenants, runs, now)| {
        let pool_views: Vec<PoolView> = pools
            .iter()
            .enumerate()
            .map(|(i, &(cpu, workers, state))| {
                let mut p = pool(&format!("p{i}"), cpu, 64);
                p.max_workers = workers as u32;
                p.labels.insert("kind".into(), format!("k{}", i % 2));
                if i > 0 {
                    p.state = match state {
                        0 => PoolState::Draining,
                        1 => PoolState::Disabled,
                        _ => PoolState::Active,
                    };
                }
                p
            })
            .collect();
        let tenant_views: Vec<TenantView> = tenants
            .iter()
            .enumerate()
            .map(|(i, &(cpu, runs, pool_cpu, budget))| {
                let mut t = tenant(&format!("t{i}"));
                t.budget = budget.map(|(monthly, spent)| BudgetView {
                    monthly: Money::from_whole_units(monthly as i64),
                    enforce: if i % 2 == 0 {
                        Enforce::Hard
                    } else {
                        Enforce::Soft
                    },
                    month: "2026-11".into(),
                    spent: Money::from_whole_units(spent as i64),
                    running: Money::from_micros(spent as i64 * 100_000),
                });
                t.quota.resources.cpu_millis = cpu * 1000;
                t.quota.runs = runs;
                t.weight = (i + 1) as u32;
                if pool_cpu > 0 {
                    t.pool_limits.insert(
                        "p0".into(),
                        Quota {
                            resources: Resources::new(pool_cpu * 1000, u64::MAX, u64::MAX),
                            runs: pool_cpu,
                        },
                    );
                }
                t
            })
            .collect();
        let queue = runs
            .iter()
            .enumerate()
            .map(|(i, &(t, cpu, p, prio, at, estimate))| {
                let mut r = run(i as i64, &format!("t{}", t % tenant_views.len()), cpu);
                r.bound = Money::from_micros(estimate);
                r.priority = prio;
                r.enqueued_at = Timestamp(at);
                match p {
                    1 => r.groups[0].selector = PoolSelector::named("p1"),
                    2 => {
                        r.groups[0]
                            .selector
                            .labels
                            .insert("kind".into(), "k0".into());
                    }
                    3 => r.groups.push(GroupRequest {
                        index: 1,
                        selector: PoolSelector::named("p0"),
                        resources: Resources::new(1000, GI, 0),
                        steps: vec![1],
                    }),
                    _ => {}
                }
                r
            })
            .collect();
        (snapshot(pool_views, tenant_views), queue, now)
    })
}

proptest! {
    #[test]
    fn never_exceeds_limits_and_is_deterministic((snap, runs, now) in arb_case()) {
        let policy = Policy { starvation_after_ms: 1000, ..Policy::default() };
        let d = decide_at(&snap, runs.clone(), now, &policy);
        let again = decide_at(&snap, runs.clone(), now, &policy);
        prop_assert_eq!(&d.outcome, &again.outcome);
        let mut pools = snap.pools.clone();
        let mut tenants = snap.tenants.clone();
        let mut seen = std::collections::BTreeSet::new();
        for (run, _) in &d.outcome.rejected {
            prop_assert!(seen.insert(*run), "run decided twice");
        }
        for admission in &d.outcome.admitted {
            prop_assert!(seen.insert(admission.run), "run decided twice");
            let q = runs.iter().find(|q| q.id == admission.run).expect("queued");
            prop_assert_eq!(admission.placements.len(), q.groups.len());
            let t = tenants.get_mut(&q.tenant).expect("tenant exists");
            t.runs += 1;
            let mut in_pool = BTreeSet::new();
            for p in &admission.placements {
                let pool = pools.get_mut(&p.pool).expect("pool exists");
                prop_assert_eq!(pool.state, PoolState::Active);
                pool.used = pool.used.checked_add(&p.resources).expect("no overflow");
                pool.workers += 1;
                prop_assert!(pool.used.fits_in(&pool.capacity));
                prop_assert!(pool.workers <= pool.max_workers);
                t.used = t.used.checked_add(&p.resources).expect("no overflow");
                let held = t.held.entry(p.pool.clone()).or_default();
                held.resources = held.resources.saturating_add(&p.resources);
                if in_pool.insert(p.pool.clone()) {
                    held.runs += 1;
                }
                if let Some(limit) = t.pool_limits.get(&p.pool) {
                    prop_assert!(held.resources.fits_in(&limit.resources));
                    prop_assert!(held.runs <= limit.runs);
                }
            }
            prop_assert!(t.used.fits_in(&t.quota.resources));
            prop_assert!(t.runs <= t.quota.runs);
            if let Some(budget) = t.budget.as_mut() {
                budget.running = budget.running.saturating_add(q.bound);
                if budget.enforce == Enforce::Hard {
                    prop_assert!(budget.committed() <= budget.monthly, "over budget: {budget:?}");
                }
            }
        }
        // Every run still queued has a reason.
        for r in &runs {
            if !seen.contains(&r.id) {
                let class = d.queue.class_of(r.id).expect("queued").id;
                prop_assert!(d.outcome.waiting.contains_key(&class), "run {} has no reason", r.id);
            }
        }
    }
}

fn static_pool(name: &str, agents: &[(i64, u64)]) -> PoolView {
    let spec = PoolSpec {
        name: name.into(),
        provider: Provider::Static,
        capacity: Default::default(),
        max_workers: 100,
        labels: BTreeMap::new(),
        price: Price::default(),
        state: PoolState::Active,
        max_agent: Default::default(),
        require_confinement: false,
        kubernetes: None,
    };
    let agents = agents
        .iter()
        .map(|&(id, cpu)| AgentView {
            id: WorkerId(id),
            capacity: Resources::new(cpu * 1000, 8 * GI, 0),
            used: Resources::ZERO,
        })
        .collect();
    PoolView::new(&spec, agents)
}

#[test]
fn blocked_pools_are_explained_for_each_tenant_and_need() {
    // Both pools full; a and d may use p, b may use q, c both. The reasons of
    // one cycle share the words for a full pool, never a tenant's.
    let mut p = pool("p", 4, 64);
    p.used = Resources::new(4000, 0, 0);
    let mut q = pool("q", 4, 64);
    q.used = Resources::new(4000, 0, 0);
    let mut a = tenant("a");
    a.allowed_pools = Some(vec!["p".into()]);
    let mut b = tenant("b");
    b.allowed_pools = Some(vec!["q".into()]);
    let mut d = tenant("d");
    d.allowed_pools = Some(vec!["p".into()]);
    // Selected by label: pools the tenant may not use are named too.
    p.labels.insert("zone".into(), "z".into());
    q.labels.insert("zone".into(), "z".into());
    let snap = snapshot(vec![p, q], vec![a, b, tenant("c"), d]);
    let labelled = |id: i64, t: &str, cpu: u64| {
        let mut r = run(id, t, cpu);
        r.groups[0]
            .selector
            .labels
            .insert("zone".into(), "z".into());
        r
    };
    let d = decide_list(
        &snap,
        vec![
            labelled(1, "a", 1),
            labelled(2, "b", 1),
            labelled(3, "c", 1),
            labelled(4, "a", 2),
            labelled(5, "c", 2),
            labelled(6, "d", 1),
        ],
    );
    assert!(d.admitted().is_empty());
    let full = |pool: &str, cpu: u64| format!("pool {pool}: cpu 4/4 in use, run needs {cpu}");
    let barred = |pool: &str, t: &str, allowed: &str| {
        format!("pool {pool}: tenant {t} is not allowed to use it (allowed pools: {allowed})")
    };
    let expected = [
        (1, format!("{}; {}", full("p", 1), barred("q", "a", "p"))),
        (2, format!("{}; {}", barred("p", "b", "q"), full("q", 1))),
        (3, format!("{}; {}", full("p", 1), full("q", 1))),
        (4, format!("{}; {}", full("p", 2), barred("q", "a", "p"))),
        (5, format!("{}; {}", full("p", 2), full("q", 2))),
        (6, format!("{}; {}", full("p", 1), barred("q", "d", "p"))),
    ];
    for (id, message) in expected {
        let reason = d.reason(id);
        assert_eq!(reason.code, ReasonCode::PoolFull, "run {id}: {reason:?}");
        assert_eq!(reason.message, message, "run {id}");
    }
    let scopes: Vec<String> = d.reason(3).limits.into_iter().map(|l| l.scope).collect();
    assert_eq!(scopes, vec!["pool p", "pool q"]);
    // When any pool will do, the pools it may not use are left out.
    let any = decide_list(&snap, vec![run(7, "a", 1)]);
    assert_eq!(any.reason(7).message, full("p", 1));
}

#[test]
fn a_lone_groups_reason_is_shared_only_where_it_reads_nothing_of_the_tenant_or_the_run() {
    // Pool p has cpu 2 free, held for run 3; b uses the rest. Runs of a, b
    // and c need 2 cpu each and are tried in that order with the pool as it
    // is: a's waits behind the hold, b's would pass b's limit in p, c's
    // holds the room.
    let mut p = pool("p", 4, 64);
    p.used = Resources::new(2000, 0, 0);
    p.workers = 1;
    p.reserved = Some((RunId(3), Resources::new(2000, 0, 0)));
    let mut b = tenant("b");
    b.pool_limits.insert(
        "p".into(),
        Quota {
            resources: Resources::new(3000, u64::MAX, u64::MAX),
            runs: 10,
        },
    );
    b.used = p.used;
    b.runs = 1;
    b.held.insert(
        "p".into(),
        Held {
            resources: p.used,
            runs: 1,
        },
    );
    // In fair share b goes before c: c has used more of late.
    let mut c = tenant("c");
    c.recent = [3000.0, 0.0, 0.0];
    let snap = snapshot(vec![p], vec![tenant("a"), b, c]);
    let d = decide_list(&snap, vec![run(1, "a", 2), run(2, "b", 2), run(3, "c", 2)]);
    assert_eq!(d.admitted(), vec![3]);
    assert_eq!(d.reason(1).code, ReasonCode::Reserved, "{:?}", d.reason(1));
    assert_eq!(d.reason(2).code, ReasonCode::PoolLimit, "{:?}", d.reason(2));
}

#[test]
fn a_group_that_names_its_pools_is_told_those_its_tenant_may_not_use() {
    // Both runs may only use q of the pools they select, both full; the one
    // whose group would take any pool is tried first.
    let mut p = pool("p", 4, 64);
    p.used = Resources::new(4000, 0, 0);
    p.labels.insert("zone".into(), "z".into());
    let mut q = pool("q", 4, 64);
    q.used = Resources::new(4000, 0, 0);
    q.labels.insert("zone".into(), "z".into());
    let mut a = tenant("a");
    a.allowed_pools = Some(vec!["q".into()]);
    let snap = snapshot(vec![p, q], vec![a]);
    let mut labelled = run(2, "a", 1);
    labelled.groups[0]
        .selector
        .labels
        .insert("zone".into(), "z".into());
    let d = decide_list(&snap, vec![run(1, "a", 1), labelled]);
    let full = "pool q: cpu 4/4 in use, run needs 1";
    assert_eq!(d.reason(1).message, full);
    assert_eq!(
        d.reason(2).message,
        format!("pool p: tenant a is not allowed to use it (allowed pools: q); {full}")
    );
}

#[test]
fn no_agent_room_is_told_as_agents_are_after_earlier_admissions() {
    let snap = snapshot(
        vec![static_pool("metal", &[(1, 4), (2, 3)])],
        vec![tenant("a"), tenant("b"), tenant("c")],
    );
    // Same share: a, b, c in turn. a's run fits no agent; b's goes to agent 1
    // (spread); c's, as large as a's, now finds less room on the agents.
    let mut spread = run(2, "b", 1);
    spread.groups[0].selector.placement = Some(PlacementPolicy::Spread);
    let d = decide_list(&snap, vec![run(1, "a", 5), spread, run(3, "c", 5)]);
    assert_eq!(d.admitted(), vec![2]);
    assert_eq!(
        d.outcome.admitted[0].placements[0].worker,
        Some(WorkerId(1))
    );
    let message = |most: &str| {
        format!(
            "pool metal: no live agent has cpu 5, memory 1Gi free (the most free on one agent: {most})"
        )
    };
    assert_eq!(d.reason(1).code, ReasonCode::NoAgents);
    assert_eq!(d.reason(1).message, message("cpu 4, memory 8Gi"));
    assert_eq!(d.reason(3).message, message("cpu 3, memory 8Gi"));
}

#[test]
fn check_ever_fits_names_the_pools_a_tenant_may_not_use() {
    let mut a = tenant("a");
    a.allowed_pools = Some(vec!["p".into()]);
    let snap = snapshot(vec![pool("p", 4, 64), pool("q", 4, 64)], vec![a.clone()]);
    let groups = run(1, "a", 1).groups;
    assert_eq!(check_ever_fits(&snap, &a, &groups), Ok(()));
    let mut on_q = groups.clone();
    on_q[0].selector = PoolSelector::named("q");
    let reason = check_ever_fits(&snap, &a, &on_q).expect_err("q is not allowed");
    assert_eq!(reason.code, ReasonCode::PoolNotAllowed);
    assert_eq!(
        reason.message,
        "group 0: tenant a is not allowed to use pool q (allowed pools: p)"
    );
}

#[test]
fn fullness_is_exact_on_both_sides_of_32_bits() {
    let cap = Resources::new(3, 7, 0);
    for used in [
        0,
        1,
        2,
        u64::from(u32::MAX) - 1,
        u64::from(u32::MAX),
        1 << 32,
        (1 << 40) + 3,
    ] {
        let u = Resources::new(used, used / 2, 5);
        let expected = [
            (u.cpu_millis, cap.cpu_millis),
            (u.memory_mib, cap.memory_mib),
        ]
        .into_iter()
        .map(|(x, c)| (u128::from(x) << 32) / u128::from(c))
        .max()
        .unwrap_or(0);
        assert_eq!(fullness(&cap, &u), expected, "used {used}");
    }
}

/// `admission_order` as first written: every run of a tenant copied into one
/// ordered set per level.
fn admission_order_reference(snapshot: &Snapshot, queue: &RunQueue) -> Vec<RunId> {
    let total = snapshot.total_capacity();
    let mut tenants = snapshot.tenants.clone();
    let mut order = Vec::new();
    for (_, level) in queue.levels() {
        let mut fifo: BTreeMap<&str, BTreeSet<(Timestamp, RunId, ClassId)>> = BTreeMap::new();
        for (tenant, classes) in level {
            let set = fifo.entry(tenant.as_str()).or_default();
            for &c in classes {
                if let Some(class) = queue.class(c) {
                    set.extend(class.runs.iter().map(|(at, r)| (*at, *r, c)));
                }
            }
        }
        let share = |tenants: &BTreeMap<String, TenantView>, t: &str| {
            Share(
                tenants
                    .get(t)
                    .map_or(0.0, |v| snapshot.weighted_share(v, &total)),
            )
        };
        let mut turn: BinaryHeap<std::cmp::Reverse<(Share, &str)>> = fifo
            .keys()
            .map(|&t| std::cmp::Reverse((share(&tenants, t), t)))
            .collect();
        while let Some(std::cmp::Reverse((_, t))) = turn.pop() {
            let Some(runs) = fifo.get_mut(t) else {
                continue;
            };
            let Some((_, run, class)) = runs.pop_first() else {
                continue;
            };
            order.push(run);
            if let (Some(view), Some(class)) = (tenants.get_mut(t), queue.class(class)) {
                view.used = view.used.saturating_add(&class.total());
            }
            if !runs.is_empty() {
                turn.push(std::cmp::Reverse((share(&tenants, t), t)));
            }
        }
    }
    order
}

proptest! {
    #[test]
    fn admission_order_merges_classes_as_one_fifo_per_tenant((snap, mut runs, _) in arb_case()) {
        // Some runs of tenants the snapshot does not know.
        for r in runs.iter_mut().step_by(7) {
            r.tenant = "ghost".into();
        }
        let queue = queue_of(runs.clone());
        let order = admission_order(&snap, &queue);
        prop_assert_eq!(&order, &admission_order_reference(&snap, &queue));
        prop_assert_eq!(order.len(), runs.len());
    }
}

use super::*;
use proptest::prelude::*;

const GI: u64 = 1024;

fn pool(name: &str, cpu: u64, mem_gi: u64) -> PoolView {
    PoolView {
        name: name.into(),
        state: PoolState::Active,
        capacity: Resources::new(cpu * 1000, mem_gi * GI, 0),
        max_workers: 100,
        used: Resources::ZERO,
        workers: 0,
    }
}

fn tenant(name: &str) -> TenantView {
    TenantView {
        name: name.into(),
        quota: Quota::UNLIMITED,
        allowed_pools: None,
        used: Resources::ZERO,
        runs: 0,
    }
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
            pool: None,
            resources: Resources::new(cpu * 1000, GI, 0),
            steps: vec![0],
        }],
    }
}

fn admitted(decisions: &[Decision]) -> Vec<i64> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Admit { run, .. } => Some(run.0),
            _ => None,
        })
        .collect()
}

fn reason_of(decisions: &[Decision], id: i64) -> Reason {
    decisions
        .iter()
        .find_map(|d| match d {
            Decision::Wait { run, reason, .. } | Decision::Reject { run, reason }
                if run.0 == id =>
            {
                Some(reason.clone())
            }
            _ => None,
        })
        .expect("the run has a reason")
}

#[test]
fn tenant_quota_limits_admission_with_numbers() {
    let mut acme = tenant("acme");
    acme.quota.resources.cpu_millis = 6000;
    let snap = snapshot(vec![pool("p", 16, 64)], vec![acme]);
    let queue: Vec<QueuedRun> = (1..=3).map(|i| run(i, "acme", 3)).collect();
    let d = decide(&snap, &queue, Timestamp(100));
    assert_eq!(admitted(&d), vec![1, 2]);
    let reason = reason_of(&d, 3);
    assert_eq!(reason.code, ReasonCode::TenantQuota);
    assert_eq!(reason.message, "tenant acme: cpu 6/6 in use, run needs 3");
}

#[test]
fn small_runs_pass_a_waiting_large_one() {
    let snap = snapshot(vec![pool("p", 4, 64)], vec![tenant("a")]);
    let queue = vec![run(1, "a", 3), run(2, "a", 3), run(3, "a", 1)];
    let d = decide(&snap, &queue, Timestamp(0));
    assert_eq!(admitted(&d), vec![1, 3]);
    let reason = reason_of(&d, 2);
    assert_eq!(reason.code, ReasonCode::PoolFull);
    assert_eq!(reason.message, "pool p: cpu 3/4 in use, run needs 3");
}

#[test]
fn rejects_what_can_never_fit() {
    let mut small = tenant("small");
    small.quota.resources.cpu_millis = 2000;
    let snap = snapshot(vec![pool("p", 4, 64)], vec![tenant("a"), small]);
    let d = decide(
        &snap,
        &[run(1, "a", 5), run(2, "small", 3), run(3, "ghost", 1)],
        Timestamp(0),
    );
    assert_eq!(reason_of(&d, 1).code, ReasonCode::LargerThanPools);
    assert_eq!(reason_of(&d, 2).code, ReasonCode::LargerThanQuota);
    assert_eq!(
        reason_of(&d, 2).message,
        "larger than tenant small's quota: needs cpu 3 (quota 2)"
    );
    assert_eq!(
        reason_of(&d, 1).message,
        "group 0 needs cpu 5, memory 1Gi, more than the capacity of every matching pool: p (cpu 4, memory 64Gi)"
    );
    assert_eq!(reason_of(&d, 3).code, ReasonCode::UnknownTenant);
    assert!(d.iter().all(|x| matches!(x, Decision::Reject { .. })));
}

#[test]
fn binpack_prefers_the_fullest_pool_and_respects_state_and_workers() {
    let mut busy = pool("busy", 8, 64);
    busy.used = Resources::new(6000, GI, 0);
    busy.workers = 1;
    let idle = pool("idle", 8, 64);
    let mut draining = pool("draining", 8, 64);
    draining.state = PoolState::Draining;
    let snap = snapshot(vec![busy, idle, draining], vec![tenant("a")]);
    let d = decide(&snap, &[run(1, "a", 2), run(2, "a", 2)], Timestamp(0));
    let pools: Vec<String> = d
        .iter()
        .filter_map(|x| match x {
            Decision::Admit { placements, .. } => Some(placements[0].pool.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(pools, vec!["busy", "idle"]);

    let mut one = pool("one", 8, 64);
    one.max_workers = 1;
    let snap = snapshot(vec![one], vec![tenant("a")]);
    let d = decide(&snap, &[run(1, "a", 1), run(2, "a", 1)], Timestamp(0));
    assert_eq!(admitted(&d), vec![1]);
    assert_eq!(reason_of(&d, 2).message, "pool one: 1/1 workers in use");
}

#[test]
fn priority_goes_first_then_fifo() {
    let snap = snapshot(vec![pool("p", 2, 64)], vec![tenant("a")]);
    let mut urgent = run(5, "a", 2);
    urgent.priority = 10;
    let d = decide(&snap, &[run(1, "a", 2), urgent], Timestamp(0));
    assert_eq!(admitted(&d), vec![5]);
}

#[test]
fn gang_is_all_or_nothing() {
    let mut gpu = pool("gpu", 8, 64);
    gpu.used = Resources::new(8000, 0, 0);
    let snap = snapshot(vec![pool("cpu", 8, 64), gpu], vec![tenant("a")]);
    let mut r = run(1, "a", 1);
    r.groups.push(GroupRequest {
        index: 1,
        pool: Some("gpu".into()),
        resources: Resources::new(1000, GI, 0),
        steps: vec![1],
    });
    let d = decide(&snap, &[r], Timestamp(0));
    assert!(admitted(&d).is_empty());
    assert!(
        reason_of(&d, 1)
            .message
            .starts_with("group 1: pool gpu: cpu 8/8 in use")
    );
}

#[test]
fn a_gang_that_only_fits_group_by_group_is_rejected() {
    let snap = snapshot(vec![pool("p", 4, 64)], vec![tenant("a")]);
    let mut r = run(1, "a", 3);
    r.groups.push(GroupRequest {
        index: 1,
        pool: Some("p".into()),
        resources: Resources::new(3000, GI, 0),
        steps: vec![1],
    });
    let d = decide(&snap, &[r], Timestamp(0));
    let reason = reason_of(&d, 1);
    assert!(matches!(d[0], Decision::Reject { .. }), "{d:?}");
    assert_eq!(reason.code, ReasonCode::LargerThanPools);
    assert_eq!(
        reason.message,
        "the groups together never fit, even in empty pools: group 1: pool p: cpu 3/4 in use, run needs 3"
    );
}

#[test]
fn snapshot_counts_open_allocations() {
    let pools = [crate::pool::PoolSpec {
        name: "p".into(),
        provider: crate::pool::Provider::Local,
        capacity: Resources::new(4000, 4096, 0).into(),
        max_workers: 4,
        labels: Default::default(),
        price: Default::default(),
        state: PoolState::Active,
    }];
    let tenants = [TenantSpec::unlimited("a")];
    let open = [
        OpenAllocation {
            run: RunId(1),
            tenant: "a".into(),
            pool: "p".into(),
            resources: Resources::new(1000, 10, 0),
        },
        OpenAllocation {
            run: RunId(1),
            tenant: "a".into(),
            pool: "p".into(),
            resources: Resources::new(1000, 10, 0),
        },
    ];
    let snap = Snapshot::build(&pools, &tenants, &open);
    assert_eq!(snap.pools["p"].used, Resources::new(2000, 20, 0));
    assert_eq!(snap.pools["p"].workers, 2);
    assert_eq!(snap.tenants["a"].runs, 1);
}

fn arb_case() -> impl Strategy<Value = (Snapshot, Vec<QueuedRun>)> {
    let pools = prop::collection::vec((1u64..16, 1u64..8, any::<bool>()), 1..4);
    let tenants = prop::collection::vec((0u64..12, 1u64..6), 1..4);
    let runs = prop::collection::vec((0usize..4, 1u64..6, 0usize..4, -1i32..2), 0..60);
    (pools, tenants, runs).prop_map(|(pools, tenants, runs)| {
        let pool_views: Vec<PoolView> = pools
            .iter()
            .enumerate()
            .map(|(i, &(cpu, workers, draining))| {
                let mut p = pool(&format!("p{i}"), cpu, 64);
                p.max_workers = workers as u32;
                if draining && i > 0 {
                    p.state = PoolState::Draining;
                }
                p
            })
            .collect();
        let tenant_views: Vec<TenantView> = tenants
            .iter()
            .enumerate()
            .map(|(i, &(cpu, runs))| {
                let mut t = tenant(&format!("t{i}"));
                t.quota.resources.cpu_millis = cpu * 1000;
                t.quota.runs = runs;
                t
            })
            .collect();
        let queue = runs
            .iter()
            .enumerate()
            .map(|(i, &(t, cpu, p, prio))| {
                let mut r = run(i as i64, &format!("t{}", t % tenant_views.len()), cpu);
                r.priority = prio;
                if p < pool_views.len() && p % 2 == 1 {
                    r.groups[0].pool = Some(format!("p{p}"));
                }
                r
            })
            .collect();
        (snapshot(pool_views, tenant_views), queue)
    })
}

proptest! {
    #[test]
    fn never_exceeds_limits_and_is_deterministic((snap, queue) in arb_case()) {
        let d = decide(&snap, &queue, Timestamp(1000));
        prop_assert_eq!(&d, &decide(&snap, &queue, Timestamp(1000)));
        prop_assert_eq!(d.len(), queue.len());
        let mut pools = snap.pools.clone();
        let mut tenants = snap.tenants.clone();
        let mut seen = std::collections::BTreeSet::new();
        for decision in &d {
            prop_assert!(seen.insert(decision.run()), "run decided twice");
            if let Decision::Admit { run, placements } = decision {
                let q = queue.iter().find(|q| q.id == *run).expect("queued");
                prop_assert_eq!(placements.len(), q.groups.len());
                let t = tenants.get_mut(&q.tenant).expect("tenant exists");
                t.runs += 1;
                for p in placements {
                    let pool = pools.get_mut(&p.pool).expect("pool exists");
                    prop_assert_eq!(pool.state, PoolState::Active);
                    pool.used = pool.used.checked_add(&p.resources).expect("no overflow");
                    pool.workers += 1;
                    prop_assert!(pool.used.fits_in(&pool.capacity));
                    prop_assert!(pool.workers <= pool.max_workers);
                    t.used = t.used.checked_add(&p.resources).expect("no overflow");
                }
                prop_assert!(t.used.fits_in(&t.quota.resources));
                prop_assert!(t.runs <= t.quota.runs);
            }
        }
    }
}

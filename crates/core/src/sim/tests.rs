use super::*;
use crate::controller::ReasonCode;
use crate::pipeline::Priority;
use crate::pool::{PoolSpec, Price};
use crate::resources::ResourceSpec;
use crate::selector::{PlacementPolicy, PoolSelector};
use crate::tenant::{BudgetSpec, Enforce, QuotaSpec, TenantSpec};
use rand::RngExt;

const MIN: i64 = 60_000;

fn sim(yaml: &str) -> SimSpec {
    SimSpec::from_yaml(yaml).expect("a valid simulation")
}

fn run_to_end(mut sim: Simulation) -> (Simulation, Vec<CycleLog>) {
    let mut logs = Vec::new();
    while let Some(log) = sim.step() {
        logs.push(log);
    }
    (sim, logs)
}

/// Runs a simulation to its end with the incremental controller, after
/// checking that every cycle decides what the full decision does.
fn run_all(spec: &SimSpec) -> (Simulation, Vec<CycleLog>) {
    let (sim, logs) = run_to_end(Simulation::new(spec).expect("a valid simulation"));
    let (full, full_logs) = run_to_end(
        Simulation::new(spec)
            .expect("a valid simulation")
            .with_full_decision(),
    );
    if let Some((i, (a, b))) = logs
        .iter()
        .zip(&full_logs)
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        panic!("cycle {i}: the incremental controller decided\n{a:#?}\nthe full one\n{b:#?}");
    }
    assert_eq!(logs.len(), full_logs.len());
    assert_eq!(sim.report(), full.report());
    (sim, logs)
}

fn tenant<'a>(report: &'a SimReport, name: &str) -> &'a TenantReport {
    report
        .tenants
        .iter()
        .find(|t| t.name == name)
        .expect("the tenant is in the report")
}

/// Cpu-milliseconds `tenant` held within `[from, to)`.
fn cpu_ms_within(sim: &Simulation, tenant: &str, from: i64, to: i64) -> u128 {
    sim.runs()
        .iter()
        .filter(|r| r.tenant == tenant)
        .map(|r| {
            let ms = r.held_within(Timestamp(from), Timestamp(to));
            u128::from(r.resources().cpu_millis) * u128::try_from(ms).unwrap_or(0)
        })
        .sum()
}

#[test]
fn errors_name_the_field() {
    let base =
        "duration: 1h\npools: [{name: p, capacity: {cpu: 4, memory: 8Gi}}]\ntenants: [{name: a}]\n";
    let cases = [
        (
            "workload: [{tenant: b, arrival: {every: 10s}, duration: {min: 1m}}]",
            "workload[0].tenant",
        ),
        (
            "workload: [{tenant: a, arrival: {every: 10s}, duration: {min: 1m, max: 30s}}]",
            "workload[0].duration.max",
        ),
        (
            "workload: [{tenant: a, arrival: {every: 1x}, duration: {min: 1m}}]",
            "workload[0].arrival.every",
        ),
        (
            "workload: [{tenant: a, arrival: {hourly: 1}, duration: {min: 1m}}]",
            "workload[0].arrival",
        ),
        (
            "workload: [{tenant: a, arrival: {backlog: 5}, count: 2, duration: {min: 1m}}]",
            "workload[0].count",
        ),
        (
            "workload: [{tenant: a, arrival: {every: 10s}, duration: {min: 1m}, resources: {cpu: 2x}}]",
            "workload[0].resources.cpu",
        ),
        (
            "workload: [{tenant: a, priority: urgent, arrival: {every: 10s}, duration: {min: 1m}}]",
            "workload[0].priority",
        ),
        (
            "workload: [{tenant: a, arrival: {every: 10s}, duration: {min: 1m}, colour: red}]",
            "workload[0].colour",
        ),
        (
            "agents: {p: [{cpu: 1, memory: 1Gi}]}\nworkload: [{tenant: a, arrival: {every: 10s}, duration: {min: 1m}}]",
            "agents.p",
        ),
        (
            "cycle: 0s\nworkload: [{tenant: a, arrival: {every: 10s}, duration: {min: 1m}}]",
            "cycle",
        ),
    ];
    for (extra, path) in cases {
        let err = SimSpec::from_yaml(&format!("{base}{extra}")).expect_err(extra);
        assert_eq!(err.path, path, "{extra}: {err}");
    }
    let err = SimSpec::from_yaml(
        "duration: 1h\npools: [{name: p, capacity: {cpu: 0, memory: 8Gi}}]\ntenants: [{name: a}]\nworkload: []",
    )
    .expect_err("zero cpu");
    assert_eq!(err.path, "pools[0].capacity.cpu", "{err}");
    let err = SimSpec::from_yaml(
        "duration: 1h\npools: [{name: m, provider: static}]\nagents: {m: [{cpu: 4}]}\ntenants: [{name: a}]\nworkload: []",
    )
    .expect_err("agent without memory");
    assert_eq!(err.path, "agents.m[0].memory", "{err}");
}

#[test]
fn arrivals_follow_the_spec_and_not_the_decisions() {
    let yaml = r#"
kind: Simulation
seed: 9
duration: 1h
pools: [{name: p, capacity: {cpu: 4, memory: 8Gi}}]
tenants: [{name: a, quota: {cpu: 500m}}, {name: b}]
workload:
  - {tenant: a, arrival: {every: 10s}, count: 5, start: 1m, duration: {min: 1m}}
  - {tenant: a, arrival: {backlog: 3}, start: 2m, duration: {min: 30s, max: 5m}}
  - {tenant: b, arrival: {rate_per_min: 6}, duration: {min: 30s, max: 5m}}
"#;
    let (sim_a, _) = run_all(&sim(yaml));
    let arrived = |w: usize| -> Vec<i64> {
        sim_a
            .runs()
            .iter()
            .filter(|r| r.workload == w)
            .map(|r| r.arrived.0)
            .collect()
    };
    assert_eq!(arrived(0), vec![60_000, 70_000, 80_000, 90_000, 100_000]);
    assert_eq!(arrived(1), vec![120_000; 3]);
    let poisson = arrived(2).len();
    assert!(
        (300..=420).contains(&poisson),
        "6 a minute for an hour: {poisson} arrivals"
    );
    assert!(
        sim_a
            .runs()
            .iter()
            .all(|r| (30_000..=300_000).contains(&r.duration_ms) || r.workload == 0)
    );
    // A bigger quota changes what is decided, not which runs arrive when.
    let (sim_b, _) = run_all(&sim(&yaml.replace("quota: {cpu: 500m}", "quota: {cpu: 4}")));
    let shape = |s: &Simulation| -> Vec<(i64, i64, String)> {
        s.runs()
            .iter()
            .map(|r| (r.arrived.0, r.duration_ms, r.tenant.clone()))
            .collect()
    };
    assert_eq!(shape(&sim_a), shape(&sim_b));
    assert_ne!(sim_a.report(), sim_b.report());
}

#[test]
fn the_checker_catches_what_the_controller_must_never_decide() {
    let spec = sim(r#"
duration: 1h
pools:
  - {name: p, capacity: {cpu: 4, memory: 8Gi}, max_workers: 2, labels: {zone: a}}
  - {name: closed, capacity: {cpu: 4, memory: 8Gi}, state: draining}
  - {name: metal, provider: static}
agents: {metal: [{cpu: 2, memory: 4Gi}]}
tenants:
  - {name: a, quota: {cpu: 3}, pool_limits: {p: {runs: 1}}, allowed_pools: [p, closed]}
workload:
  - {tenant: a, arrival: {backlog: 3}, resources: {cpu: 2, memory: 1Gi}, duration: {min: 10m},
     pool: {labels: {zone: a}}, gang: {resources: {cpu: 1, memory: 1Gi}}}
"#);
    let mut sim = Simulation::new(&spec).expect("valid");
    sim.arrive(Timestamp(0));
    assert_eq!(sim.queue().len(), 3);
    let place = |group: u32, pool: &str, cpu: u64| Placement {
        group,
        pool: pool.into(),
        resources: Resources::new(cpu * 1000, 1024, 0),
        worker: (pool == "metal").then_some(WorkerId(1)),
    };
    let admit = |run: i64, placements: Vec<Placement>| Admission {
        run: RunId(run),
        placements,
    };
    let gang = |run: i64| admit(run, vec![place(0, "p", 2), place(1, "p", 1)]);
    let cases: Vec<(Vec<Admission>, Vec<&str>)> = vec![
        (
            vec![admit(1, vec![place(0, "p", 2)])],
            vec!["a gang of 2 groups needs each placed once"],
        ),
        (vec![gang(1), gang(1)], vec!["admitted twice"]),
        (
            vec![gang(1), gang(2)],
            vec![
                "tenant a holds cpu 6, memory 4Gi, over its quota",
                "over its limit there",
                "pool p holds cpu 6, memory 4Gi, over its capacity",
                "over its max_workers",
            ],
        ),
        (
            vec![admit(1, vec![place(0, "closed", 2), place(1, "p", 1)])],
            vec!["which is not pools labelled zone=a"],
        ),
        (
            vec![admit(1, vec![place(0, "p", 2), place(1, "closed", 1)])],
            vec!["which is draining"],
        ),
        (
            vec![admit(1, vec![place(0, "p", 2), place(1, "metal", 1)])],
            vec!["which tenant a may not use"],
        ),
        (
            vec![admit(1, vec![place(0, "metal", 2), place(1, "metal", 1)])],
            vec!["agent 1 of pool metal holds cpu 3, memory 2Gi, over its capacity"],
        ),
        (
            vec![admit(1, vec![place(0, "p", 3), place(1, "p", 1)])],
            vec!["asked for cpu 2"],
        ),
        (
            vec![admit(7, vec![place(0, "p", 2)])],
            vec!["it never arrived"],
        ),
    ];
    for (admitted, expected) in cases {
        let violations = sim.check(Timestamp(0), &admitted, &[]);
        for e in expected {
            assert!(
                violations.iter().any(|v| v.message.contains(e)),
                "expected {e:?} in {violations:#?}"
            );
        }
    }
    let reason = Reason::simple(crate::controller::ReasonCode::PoolFull, "full");
    let violations = sim.check(Timestamp(0), &[gang(1)], &[(RunId(1), reason)]);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(sim.check(Timestamp(0), &[gang(1)], &[]), Vec::new());
}

/// A small random cluster and workload, drawn from `seed`: pools with random
/// states, sizes, `max_workers` and labels (some static with agents), tenants
/// with random quotas, per-pool limits, allowed pools and weights, and
/// workloads of every arrival kind, priorities, label selectors and gangs.
fn random_spec(seed: u64) -> SimSpec {
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let mut pools = Vec::new();
    let mut agents = BTreeMap::new();
    for i in 0..rng.random_range(1..=4) {
        let name = format!("p{i}");
        let provider = if rng.random_bool(0.2) {
            Provider::Static
        } else {
            Provider::Local
        };
        let gpu = if rng.random_bool(0.3) {
            rng.random_range(1..=4)
        } else {
            0
        };
        let capacity = match provider {
            Provider::Static => {
                let n = rng.random_range(0..=3);
                let list: Vec<ResourceSpec> = (0..n)
                    .map(|_| {
                        Resources::new(
                            rng.random_range(2..=8) * 1000,
                            rng.random_range(4..=16) * 1024,
                            gpu,
                        )
                        .into()
                    })
                    .collect();
                agents.insert(name.clone(), list);
                ResourceSpec::default()
            }
            _ => Resources::new(
                rng.random_range(4..=32) * 1000,
                rng.random_range(8..=64) * 1024,
                gpu,
            )
            .into(),
        };
        let mut labels = BTreeMap::from([(
            "zone".to_string(),
            ["a", "b"][rng.random_range(0..2)].to_string(),
        )]);
        if gpu > 0 {
            labels.insert("gpu".into(), "yes".into());
        }
        pools.push(PoolSpec {
            name,
            provider,
            capacity: capacity.into(),
            max_workers: rng.random_range(2..=20),
            labels,
            price: Price {
                cpu_hour: rng.random_range(1..=5) as f64 / 100.0,
                ..Price::default()
            },
            state: match rng.random_range(0..10) {
                0 => PoolState::Draining,
                1 => PoolState::Disabled,
                _ => PoolState::Active,
            },
            max_agent: Default::default(),
            require_confinement: false,
            kubernetes: None,
        });
    }
    let pool_names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
    let mut tenants = Vec::new();
    for i in 0..rng.random_range(1..=5) {
        let quota = QuotaSpec {
            cpu: rng
                .random_bool(0.6)
                .then(|| rng.random_range(2..=40) * 1000),
            memory: rng
                .random_bool(0.3)
                .then(|| rng.random_range(4..=64) * 1024),
            gpu: rng.random_bool(0.2).then(|| rng.random_range(0..=4)),
            runs: rng.random_bool(0.4).then(|| rng.random_range(0..=20)),
        };
        let allowed_pools = rng.random_bool(0.3).then(|| {
            pool_names
                .iter()
                .filter(|_| rng.random_bool(0.6))
                .cloned()
                .collect()
        });
        let mut pool_limits = BTreeMap::new();
        for p in &pool_names {
            if rng.random_bool(0.25) {
                let limit = QuotaSpec {
                    cpu: Some(rng.random_range(1..=16) * 1000),
                    runs: rng.random_bool(0.5).then(|| rng.random_range(0..=6)),
                    ..QuotaSpec::default()
                };
                pool_limits.insert(p.clone(), limit);
            }
        }
        tenants.push(TenantSpec {
            name: format!("t{i}"),
            weight: rng.random_range(1..=4),
            quota,
            allowed_pools,
            pool_limits,
            budget: None,
        });
    }
    let duration = rng.random_range(8..=18) * MIN;
    let gpus = pools.iter().any(|p| p.labels.contains_key("gpu"));
    let selector = |rng: &mut rand::rngs::ChaCha8Rng| match rng.random_range(0..5) {
        0 => Some(PoolSelector::named(&format!(
            "p{}",
            rng.random_range(0..=pools.len())
        ))),
        1 => Some(PoolSelector {
            labels: BTreeMap::from([("zone".into(), ["a", "b"][rng.random_range(0..2)].into())]),
            placement: rng.random_bool(0.5).then_some(PlacementPolicy::Spread),
            ..PoolSelector::default()
        }),
        2 if gpus => Some(PoolSelector {
            labels: BTreeMap::from([("gpu".into(), "yes".into())]),
            ..PoolSelector::default()
        }),
        _ => None,
    };
    let size = |rng: &mut rand::rngs::ChaCha8Rng, gpu: bool| -> ResourceSpec {
        Resources::new(
            rng.random_range(1..=8) * 500,
            rng.random_range(1..=16) * 512,
            if gpu { rng.random_range(1..=2) } else { 0 },
        )
        .into()
    };
    let workload = (0..rng.random_range(1..=6))
        .map(|_| {
            let arrival = match rng.random_range(0..3) {
                0 => Arrival::Every(Span::secs(rng.random_range(10..=120))),
                1 => Arrival::RatePerMin(rng.random_range(1..=8) as f64),
                _ => Arrival::Backlog(rng.random_range(1..=20)),
            };
            let min = rng.random_range(10..=120);
            let pool = selector(&mut rng);
            let gpu = pool.as_ref().is_some_and(|p| p.labels.contains_key("gpu"));
            WorkloadSpec {
                tenant: format!("t{}", rng.random_range(0..tenants.len())),
                priority: match rng.random_range(0..4) {
                    0 => Priority::Class("high".into()),
                    1 => Priority::Class("low".into()),
                    2 => Priority::Value(rng.random_range(-5..=5)),
                    _ => Priority::default(),
                },
                count: (!matches!(arrival, Arrival::Backlog(_)) && rng.random_bool(0.3))
                    .then(|| rng.random_range(1..=30)),
                arrival,
                start: rng
                    .random_bool(0.3)
                    .then(|| Span::secs(rng.random_range(0..duration / 2000))),
                stop: None,
                duration: RunDuration {
                    min: Span::secs(min),
                    max: Some(Span::secs(min + rng.random_range(0..=300))),
                },
                resources: size(&mut rng, gpu),
                gang: rng.random_bool(0.25).then(|| GangSpec {
                    pool: selector(&mut rng),
                    resources: size(&mut rng, false),
                }),
                pool,
            }
        })
        .collect();
    // Budgets from a stream of their own: the draws above stay as they were.
    let mut money = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    money.set_stream(1);
    for t in &mut tenants {
        t.budget = money.random_bool(0.3).then(|| BudgetSpec {
            monthly: Money::from_micros(money.random_range(1..=50) * 10_000),
            enforce: if money.random_bool(0.6) {
                Enforce::Hard
            } else {
                Enforce::Soft
            },
            alert_at: vec![0.8, 1.0],
        });
    }
    SimSpec {
        seed,
        duration: Span(duration),
        cycle: Span::secs(rng.random_range(10..=30)),
        half_life: Span::secs(rng.random_range(0..=7200)),
        starvation_after: Span::secs(rng.random_range(30..=900)),
        placement: [
            PlacementPolicy::Binpack,
            PlacementPolicy::Spread,
            PlacementPolicy::Cheapest,
        ][rng.random_range(0..3)],
        pools,
        agents,
        tenants,
        workload,
    }
}

#[test]
fn invariants_hold_and_runs_are_deterministic_over_random_workloads() {
    let (mut admitted, mut rejected, mut gangs, mut reservations) = (0, 0, 0, 0);
    let mut budget_waits = 0;
    for seed in 0..2000 {
        let spec = random_spec(seed);
        let repro = || {
            format!(
                "seed {seed}; reproduce with `corral sim` on:\n{}",
                serde_saphyr::to_string(&spec).unwrap_or_default()
            )
        };
        let (first, logs) = run_all(&spec);
        for log in &logs {
            assert!(
                log.violations.is_empty(),
                "{:#?}\n{}",
                log.violations,
                repro()
            );
            reservations += log.reservations.len();
            budget_waits += log
                .waiting
                .values()
                .filter(|r| r.code == ReasonCode::TenantBudget)
                .count();
        }
        let report = first.report();
        assert!(report.violations.is_empty(), "{}", repro());
        let runs = report.total.runs;
        assert_eq!(
            runs.submitted,
            runs.admitted + runs.rejected + runs.queued,
            "{}",
            repro()
        );
        assert_eq!(runs.admitted, runs.completed + runs.running, "{}", repro());
        assert_eq!(runs.queued as usize, first.queue().len(), "{}", repro());
        admitted += runs.admitted;
        rejected += runs.rejected;
        gangs += first
            .runs()
            .iter()
            .filter(|r| r.placements.len() == 2)
            .count();
        let (second, again) = run_to_end(Simulation::new(&spec).expect("a valid simulation"));
        assert_eq!(logs, again, "{}", repro());
        assert_eq!(report, second.report(), "{}", repro());
    }
    // The workloads exercise what the invariants are about.
    assert!(admitted > 30_000, "{admitted} runs admitted");
    assert!(rejected > 10_000, "{rejected} runs rejected");
    assert!(gangs > 3_000, "{gangs} gangs admitted");
    assert!(reservations > 10_000, "{reservations} reservations made");
    assert!(budget_waits > 1_000, "{budget_waits} waits for a budget");
}

const ONE_POOL: &str =
    "pools: [{name: shared, capacity: {cpu: 60, memory: 240Gi}, max_workers: 100}]\n";

#[test]
fn weights_one_two_three_get_one_two_three_of_the_resource_time() {
    // With demand that never runs out every queued run soon waits longer than
    // `starvation_after` (the default 5m): fair share must hold all the same.
    let spec = sim(&format!(
        r#"
seed: 1
duration: 1h
{ONE_POOL}
tenants: [{{name: one, weight: 1}}, {{name: two, weight: 2}}, {{name: three, weight: 3}}]
workload:
  - {{tenant: one, arrival: {{backlog: 3000}}, resources: {{cpu: 1, memory: 1Gi}}, duration: {{min: 30s, max: 3m}}}}
  - {{tenant: two, arrival: {{backlog: 3000}}, resources: {{cpu: 1, memory: 1Gi}}, duration: {{min: 30s, max: 3m}}}}
  - {{tenant: three, arrival: {{backlog: 3000}}, resources: {{cpu: 1, memory: 1Gi}}, duration: {{min: 30s, max: 3m}}}}
"#
    ));
    let report = run_all(&spec).0.report();
    assert!(report.violations.is_empty());
    let cpu: Vec<f64> = ["one", "two", "three"]
        .iter()
        .map(|t| tenant(&report, t).received.cpu_seconds)
        .collect();
    let all: f64 = cpu.iter().sum();
    assert!(
        all > 0.99 * 60.0 * 3600.0,
        "the pool is kept busy: {all} cpu-seconds"
    );
    for (i, (name, got)) in ["one", "two", "three"].iter().zip(&cpu).enumerate() {
        let want = (i + 1) as f64 / 6.0;
        let share = got / all;
        assert!(
            (share / want - 1.0).abs() < 0.05,
            "{name} (weight {}) received {got:.0} of {all:.0} cpu-seconds, {:.2}%, want {:.2}% within 5% (cpu-seconds: {cpu:?})",
            i + 1,
            share * 100.0,
            want * 100.0
        );
        let reported = tenant(&report, name);
        assert!((reported.share - share).abs() < 1e-9);
        assert_eq!(reported.weight_share, Some(want));
    }
}

#[test]
fn a_tenant_that_just_burst_yields_to_a_fresh_one() {
    let yaml = |half_life: &str| {
        format!(
            r#"
seed: 2
duration: 1h
half_life: {half_life}
{ONE_POOL}
tenants: [{{name: bursty}}, {{name: fresh}}]
workload:
  - {{tenant: bursty, arrival: {{backlog: 5000}}, resources: {{cpu: 1, memory: 1Gi}}, duration: {{min: 30s, max: 2m}}}}
  - {{tenant: fresh, start: 30m, arrival: {{backlog: 5000}}, resources: {{cpu: 1, memory: 1Gi}}, duration: {{min: 30s, max: 2m}}}}
"#
        )
    };
    let (burst, window) = (30 * MIN, 15 * MIN);
    let (sim_, logs) = run_all(&sim(&yaml("1h")));
    assert!(sim_.violations().is_empty());
    let alone = cpu_ms_within(&sim_, "bursty", 0, burst);
    let whole = 60_000 * burst as u128;
    assert!(
        alone > whole * 98 / 100,
        "bursty ran alone on the whole pool for 30 minutes: {} of {} cpu-seconds",
        alone / 1_000_000,
        whole / 1_000_000
    );
    // Every run admitted in the first minutes after fresh arrives is fresh's.
    let after: Vec<&str> = logs
        .iter()
        .filter(|l| l.at.0 >= burst)
        .flat_map(|l| &l.admitted)
        .take(30)
        .filter_map(|a| sim_.run(a.run).map(|r| r.tenant.as_str()))
        .collect();
    assert!(after.iter().all(|t| *t == "fresh"), "{after:?}");
    let fresh = cpu_ms_within(&sim_, "fresh", burst, burst + window);
    let bursty = cpu_ms_within(&sim_, "bursty", burst, burst + window);
    assert!(
        fresh > bursty,
        "over the 15 minutes after the burst, fresh got {} cpu-seconds, bursty {}",
        fresh / 1_000_000,
        bursty / 1_000_000
    );
    // Without a memory of recent usage, the burst counts for nothing: fresh
    // only catches up to an even split.
    let (forgetful, _) = run_all(&sim(&yaml("0s")));
    let fresh0 = cpu_ms_within(&forgetful, "fresh", burst, burst + window);
    let bursty0 = cpu_ms_within(&forgetful, "bursty", burst, burst + window);
    assert!(
        fresh0 < bursty0,
        "with a half-life of 0, fresh got {} cpu-seconds, bursty {}",
        fresh0 / 1_000_000,
        bursty0 / 1_000_000
    );
}

#[test]
fn a_large_run_is_not_starved_by_small_ones() {
    // Two tenants keep 5 to 8 of the pool's 8 cpus busy all the time with 1-cpu
    // runs of 40 to 60 s; a run needing the whole pool arrives at 2m.
    let yaml = |starvation_after: &str| {
        format!(
            r#"
seed: 3
duration: 1h
starvation_after: {starvation_after}
pools: [{{name: shared, capacity: {{cpu: 8, memory: 32Gi}}}}]
tenants: [{{name: web}}, {{name: api}}, {{name: batch}}]
workload:
  - {{tenant: web, arrival: {{every: 15s}}, resources: {{cpu: 1, memory: 1Gi}}, duration: {{min: 40s, max: 60s}}}}
  - {{tenant: api, start: 7s, arrival: {{every: 15s}}, resources: {{cpu: 1, memory: 1Gi}}, duration: {{min: 40s, max: 60s}}}}
  - {{tenant: batch, start: 2m, arrival: {{backlog: 1}}, resources: {{cpu: 8, memory: 8Gi}}, duration: {{min: 10m}}}}
"#
        )
    };
    let large = |s: &Simulation| {
        s.runs()
            .iter()
            .find(|r| r.tenant == "batch")
            .cloned()
            .expect("the large run arrived")
    };
    let (with, _) = run_all(&sim(&yaml("5m")));
    assert!(with.violations().is_empty());
    let run = large(&with);
    let waited = run
        .admitted
        .map(|a| a.millis_since(run.arrived))
        .expect("the large run is admitted");
    // The reservation is made in the first cycle after 5m of waiting; the small
    // runs holding the pool end within 60s; the next cycle admits it.
    let bound = 5 * MIN + 60_000 + 2 * 1000;
    assert!(
        (5 * MIN..=bound).contains(&waited),
        "waited {waited} ms, bound {bound} ms"
    );
    let (without, _) = run_all(&sim(&yaml("24h")));
    let run = large(&without);
    assert_eq!(
        run.admitted, None,
        "without a reservation the small runs always leave some of the 8 cpus taken"
    );
    assert_eq!(
        tenant(&without.report(), "batch").wait.oldest_queued_ms,
        Some(58 * MIN)
    );
}

#[test]
fn random_specs_round_trip_through_yaml() {
    // The property test prints a failing spec as YAML for `corral sim`.
    for seed in 0..200 {
        let spec = random_spec(seed);
        let yaml = serde_saphyr::to_string(&spec).expect("serializable");
        let back = SimSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, spec, "{yaml}");
    }
}

#[test]
fn the_example_simulation_runs_clean() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sim.yaml");
    let text = std::fs::read_to_string(&path).expect("examples/sim.yaml");
    let report = simulate(&sim(&text)).expect("valid");
    assert_eq!(report, run_all(&sim(&text)).0.report());
    assert!(report.violations.is_empty(), "{report}");
    for t in &report.tenants {
        assert!(t.runs.admitted > 0, "{report}");
    }
    assert!(report.total.received.gpu_seconds > 0.0);
}

/// The run of `tenant` that arrived at `minute`.
fn arrived_at(sim: &Simulation, tenant: &str, minute: i64) -> RunId {
    sim.runs()
        .iter()
        .find(|r| r.tenant == tenant && r.arrived == Timestamp(minute * MIN))
        .expect("arrived")
        .id
}

const BUDGETS: &str = r#"
duration: 1h
cycle: 10s
pools: [{name: p, capacity: {cpu: 8, memory: 16Gi}, price: {cpu_hour: 36}}]
tenants:
  - {name: acme, budget: {monthly: 5, enforce: hard}}
  - {name: beta}
workload:
  - {tenant: acme, arrival: {every: 1m}, resources: {cpu: 1, memory: 1Gi}, duration: {min: 2m}}
  - {tenant: beta, arrival: {every: 1m}, resources: {cpu: 1, memory: 1Gi}, duration: {min: 2m}}
"#;

#[test]
fn a_hard_budget_holds_its_tenant_while_others_run_until_it_is_raised() {
    let spec = sim(BUDGETS);
    let mut sim = Simulation::new(&spec).expect("valid");
    let mut logs = Vec::new();
    while sim.now < Timestamp(6 * MIN) {
        logs.push(sim.step().expect("an hour to go"));
    }
    // A run of acme is expected to cost 1 cpu for 2 minutes at 36.00 an hour:
    // four fit in a budget of 5.00; the fifth, at 4m, waits.
    let fifth = arrived_at(&sim, "acme", 4);
    assert_eq!(
        sim.run(fifth).expect("a run").estimate,
        Money::from_micros(1_200_000)
    );
    let acme_admitted: Vec<i64> = sim
        .runs()
        .iter()
        .filter(|r| r.tenant == "acme" && r.admitted.is_some())
        .map(|r| r.arrived.0 / MIN)
        .collect();
    assert_eq!(acme_admitted, vec![0, 1, 2, 3]);
    let class = sim.queue().class_of(fifth).expect("queued").id;
    let waited: Vec<&CycleLog> = logs.iter().filter(|l| l.at.0 >= 4 * MIN).collect();
    assert_eq!(waited.len(), 12);
    for log in &waited {
        let reason = log.waiting.get(&class).expect("a reason");
        assert_eq!(reason.code, ReasonCode::TenantBudget, "{}", reason.message);
    }
    // At 4m three runs have ended (3.60) and the fourth has run a minute of its two.
    assert_eq!(
        waited[0].waiting[&class].message,
        "tenant acme: budget 5.00 for 1970-01, spent 4.20, running runs may cost 0.60 more, run may cost 1.20"
    );
    // Meanwhile beta's runs are admitted as they come.
    let beta_admitted: Vec<RunId> = waited
        .iter()
        .flat_map(|l| &l.admitted)
        .map(|a| a.run)
        .collect();
    assert_eq!(
        beta_admitted,
        vec![arrived_at(&sim, "beta", 4), arrived_at(&sim, "beta", 5)]
    );
    // The operator raises the budget: the next cycle admits what waited.
    let mut acme = spec.tenants[0].clone();
    if let Some(budget) = acme.budget.as_mut() {
        budget.monthly = Money::from_whole_units(10);
    }
    sim.set_tenant(acme).expect("a valid tenant");
    let log = sim.step().expect("an hour to go");
    assert_eq!(log.at, Timestamp(6 * MIN));
    let admitted: Vec<RunId> = log.admitted.iter().map(|a| a.run).collect();
    for run in [
        fifth,
        arrived_at(&sim, "acme", 5),
        arrived_at(&sim, "acme", 6),
    ] {
        assert!(admitted.contains(&run), "{run} in {admitted:?}");
    }
    assert!(sim.violations().is_empty(), "{:#?}", sim.violations());
    // The checker would have caught a run admitted past the budget: at 4.80
    // committed of 5.00, another 1.20 is too much.
    let mut sim = Simulation::new(&spec).expect("valid");
    while sim.now < Timestamp(4 * MIN) {
        sim.step();
    }
    sim.arrive(sim.now);
    let over = Admission {
        run: arrived_at(&sim, "acme", 4),
        placements: vec![Placement {
            group: 0,
            pool: "p".into(),
            resources: Resources::new(1000, 1024, 0),
            worker: None,
        }],
    };
    let violations = sim.check(sim.now, &[over], &[]);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(
        violations[0].message,
        "tenant acme is committed to 6.00, over its hard budget of 5.00 for 1970-01"
    );
    let missing = sim
        .set_tenant(TenantSpec::unlimited("gamma"))
        .expect_err("unknown");
    assert_eq!(
        missing.to_string(),
        "name: there is no tenant \"gamma\" in the simulation"
    );
}

#[test]
fn a_tenant_changed_mid_simulation_is_decided_on_as_the_full_decision_does() {
    // The budget is raised at 6m: verdicts remembered under the old one must
    // not be reused.
    let spec = sim(BUDGETS);
    let mut incremental = Simulation::new(&spec).expect("valid");
    let mut full = Simulation::new(&spec).expect("valid").with_full_decision();
    let mut raised = spec.tenants[0].clone();
    if let Some(budget) = raised.budget.as_mut() {
        budget.monthly = Money::from_whole_units(10);
    }
    let mut budget_waits = 0;
    while !incremental.is_done() {
        if incremental.now == Timestamp(6 * MIN) {
            incremental
                .set_tenant(raised.clone())
                .expect("a valid tenant");
            full.set_tenant(raised.clone()).expect("a valid tenant");
        }
        let (a, b) = (incremental.step(), full.step());
        assert_eq!(a, b);
        budget_waits += a
            .iter()
            .flat_map(|log| log.waiting.values())
            .filter(|r| r.code == ReasonCode::TenantBudget)
            .count();
    }
    assert!(budget_waits >= 12, "{budget_waits} waits for the budget");
    assert_eq!(incremental.report(), full.report());
}

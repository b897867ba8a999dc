//! The kept aggregates against the ones recomputed from scratch, after any
//! sequence of applied writes.

use std::collections::{BTreeMap, BTreeSet};

use corral_core::clock::Timestamp;
use corral_core::controller::{OpenAllocation, Snapshot};
use corral_core::ids::{AllocationId, RunId, WorkerId};
use corral_core::limits::Limits;
use corral_core::manifest::{from_value, parse_single};
use corral_core::money::Money;
use corral_core::pipeline::PipelineSpec;
use corral_core::pool::PoolSpec;
use corral_core::request::ResourceRequest;
use corral_core::resources::Resources;
use corral_core::run::{RunState, WorkerState};
use corral_core::tenant::TenantSpec;
use corral_core::usage::UsageLedger;
use corral_store::{
    AllocationRecord, Live, PoolRecord, RunRecord, TenantRecord, WorkerRecord, Write,
};
use proptest::prelude::*;
use serde_json::json;

use super::{State, Usage};
use crate::meter::SpendBook;

const POOLS: [&str; 3] = ["local", "metal", "gone"];
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// One step of a generated history.
#[derive(Debug, Clone)]
enum Op {
    /// Run `run` of tenant `tenant` is put, queued or admitted.
    PutRun {
        run: u8,
        tenant: u8,
        admitted: bool,
    },
    EndRun {
        run: u8,
    },
    /// An allocation opens for `run` on `pool`, bound to `worker` or not.
    Open {
        run: u8,
        pool: u8,
        worker: Option<u8>,
        cpu: u8,
    },
    /// The `nth` allocation opened so far is bound to `worker` (or unbound).
    Bind {
        nth: u8,
        worker: Option<u8>,
    },
    Close {
        nth: u8,
    },
    PutWorker {
        worker: u8,
        pool: u8,
        ready: bool,
    },
    PutPool {
        pool: u8,
        static_: bool,
    },
    DeletePool {
        pool: u8,
    },
    PutTenant {
        tenant: u8,
    },
    DeleteTenant {
        tenant: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8u8, 0..3u8, any::<bool>()).prop_map(|(run, tenant, admitted)| Op::PutRun {
            run,
            tenant,
            admitted
        }),
        (0..8u8).prop_map(|run| Op::EndRun { run }),
        (0..8u8, 0..3u8, proptest::option::of(0..4u8), 0..4u8).prop_map(
            |(run, pool, worker, cpu)| Op::Open {
                run,
                pool,
                worker,
                cpu
            }
        ),
        (0..16u8, proptest::option::of(0..4u8)).prop_map(|(nth, worker)| Op::Bind { nth, worker }),
        (0..16u8).prop_map(|nth| Op::Close { nth }),
        (0..4u8, 0..3u8, any::<bool>()).prop_map(|(worker, pool, ready)| Op::PutWorker {
            worker,
            pool,
            ready
        }),
        (0..3u8, any::<bool>()).prop_map(|(pool, static_)| Op::PutPool { pool, static_ }),
        (0..3u8).prop_map(|pool| Op::DeletePool { pool }),
        (0..3u8).prop_map(|tenant| Op::PutTenant { tenant }),
        (0..3u8).prop_map(|tenant| Op::DeleteTenant { tenant }),
    ]
}

fn t(ms: i64) -> Timestamp {
    Timestamp(1_700_000_000_000 + ms)
}

fn pool(name: &str, static_: bool) -> PoolRecord {
    let spec = if static_ {
        json!({"name": name, "provider": "static"})
    } else {
        json!({"name": name, "capacity": {"cpu": 8, "memory": "16Gi"}})
    };
    PoolRecord {
        spec: PoolSpec::parse(spec).expect("a pool"),
        created_at: t(0),
        updated_at: t(0),
    }
}

fn tenant(name: &str) -> TenantRecord {
    TenantRecord {
        spec: TenantSpec::parse(json!({"name": name})).expect("a tenant"),
        created_at: t(0),
        updated_at: t(0),
    }
}

fn run(id: RunId, tenant: &str, state: RunState, at: Timestamp) -> RunRecord {
    let text = format!(
        "kind: Pipeline\nname: p\ntenant: {tenant}\nsteps:\n  - {{name: s, run: 'true', resources: {{cpu: 1, memory: 1Gi}}}}\n"
    );
    let spec: PipelineSpec =
        from_value(parse_single(&text, "Pipeline").expect("yaml"), "").expect("a pipeline");
    let pipeline = spec.compile_with(&Limits::default()).expect("valid");
    let request = ResourceRequest::for_pipeline(&pipeline);
    RunRecord {
        id,
        pipeline: "p".into(),
        tenant: tenant.into(),
        priority: 0,
        state,
        reason: None,
        spec: pipeline.spec,
        request,
        estimate: Money::ZERO,
        created_at: at,
        updated_at: at,
        finished_at: state.is_terminal().then_some(at),
    }
}

fn worker(id: u8, pool: &str, state: WorkerState, at: Timestamp) -> WorkerRecord {
    WorkerRecord {
        id: WorkerId(i64::from(id) + 1),
        pool: pool.into(),
        name: format!("w{id}"),
        capacity: Resources::new(4000, 4096, 0),
        labels: BTreeMap::new(),
        state,
        registered_at: at,
        updated_at: at,
        instance: None,
        incarnation: None,
        secret_hash: None,
        confinement: None,
        token_name: None,
        spawn_hash: None,
    }
}

/// The writes of a generated history, stamped one millisecond apart.
fn writes(ops: &[Op]) -> Vec<(Write, Timestamp)> {
    let mut runs: BTreeMap<u8, RunRecord> = BTreeMap::new();
    let mut opened: Vec<AllocationRecord> = Vec::new();
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let now = t(i as i64 + 1);
        let write = match op.clone() {
            Op::PutRun {
                run: n,
                tenant,
                admitted,
            } => {
                let state = if admitted {
                    RunState::Admitted
                } else {
                    RunState::Queued
                };
                let record = run(
                    RunId(i64::from(n) + 1),
                    TENANTS[tenant as usize],
                    state,
                    now,
                );
                runs.insert(n, record.clone());
                Write::PutRun(record)
            }
            Op::EndRun { run: n } => {
                let Some(mut record) = runs.remove(&n) else {
                    continue;
                };
                record.state = RunState::Succeeded;
                record.finished_at = Some(now);
                Write::PutRun(record)
            }
            Op::Open {
                run: n,
                pool,
                worker,
                cpu,
            } => {
                let Some(record) = runs.get(&n) else { continue };
                let a = AllocationRecord {
                    id: AllocationId(opened.len() as i64 + 1),
                    run_id: record.id,
                    group: 0,
                    tenant: record.tenant.clone(),
                    pool: POOLS[pool as usize].into(),
                    resources: Resources::new(u64::from(cpu) * 500, 512, 0),
                    worker_id: worker.map(|w| WorkerId(i64::from(w) + 1)),
                    opened_at: now,
                    closed_at: None,
                };
                opened.push(a.clone());
                Write::PutAllocation(a)
            }
            Op::Bind { nth, worker } => {
                let Some(a) = opened.get_mut(nth as usize) else {
                    continue;
                };
                a.worker_id = worker.map(|w| WorkerId(i64::from(w) + 1));
                Write::PutAllocation(a.clone())
            }
            Op::Close { nth } => {
                let Some(a) = opened.get(nth as usize) else {
                    continue;
                };
                Write::PutAllocation(AllocationRecord {
                    closed_at: Some(now),
                    ..a.clone()
                })
            }
            Op::PutWorker {
                worker: w,
                pool,
                ready,
            } => {
                let state = if ready {
                    WorkerState::Ready
                } else {
                    WorkerState::Gone
                };
                Write::PutWorker(worker(w, POOLS[pool as usize], state, now))
            }
            Op::PutPool { pool: p, static_ } => Write::PutPool(pool(POOLS[p as usize], static_)),
            Op::DeletePool { pool } => Write::DeletePool(POOLS[pool as usize].into()),
            Op::PutTenant { tenant: n } => Write::PutTenant(tenant(TENANTS[n as usize])),
            Op::DeleteTenant { tenant } => Write::DeleteTenant(TENANTS[tenant as usize].into()),
        };
        out.push((write, now));
    }
    out
}

fn empty() -> State {
    let live = Live {
        pools: vec![pool("local", false), pool("metal", true)],
        tenants: vec![tenant("acme"), tenant("globex")],
        ..Live::default()
    };
    State::from_live(
        live,
        UsageLedger::new(3_600_000),
        SpendBook::default(),
        t(0),
    )
}

/// The snapshot as it was computed before usage was kept: from every live
/// run's open allocations.
fn snapshot_from_scratch(state: &State, now: Timestamp) -> Snapshot {
    let open: Vec<OpenAllocation> = state
        .runs
        .values()
        .flat_map(|r| r.allocations.iter())
        .map(|a| OpenAllocation {
            run: a.run_id,
            tenant: a.tenant.clone(),
            pool: a.pool.clone(),
            resources: a.resources,
            worker: a.worker_id,
        })
        .collect();
    let mut snapshot = state.capacities();
    let mut budgets = state.budgets(now);
    for (name, view) in &mut snapshot.tenants {
        let mine = state
            .runs
            .values()
            .flat_map(|r| r.allocations.iter())
            .filter(|a| &a.tenant == name)
            .map(|a| (&a.resources, a.opened_at));
        view.recent = state.ledger.recent(name, mine, now);
        view.budget = budgets.remove(name);
    }
    snapshot.charge(&open);
    snapshot
}

fn check(state: &State, now: Timestamp) -> Result<(), TestCaseError> {
    prop_assert_eq!(state.snapshot(now), snapshot_from_scratch(state, now));
    let mut usage = Usage::default();
    for a in state.runs.values().flat_map(|r| r.allocations.iter()) {
        usage.hold(a);
    }
    prop_assert_eq!(&state.usage, &usage);
    let busy: BTreeSet<WorkerId> = state
        .runs
        .values()
        .flat_map(|r| r.allocations.iter().filter_map(|a| a.worker_id))
        .collect();
    for (id, w) in &state.workers {
        prop_assert_eq!(state.usage.is_bound(*id), busy.contains(id));
        prop_assert_eq!(w.idle_since.is_none(), busy.contains(id));
    }
    let mut by_pool: BTreeMap<String, BTreeSet<WorkerId>> = BTreeMap::new();
    for w in state.workers.values() {
        by_pool
            .entry(w.record.pool.clone())
            .or_default()
            .insert(w.record.id);
    }
    prop_assert_eq!(&state.pool_workers, &by_pool);
    for name in POOLS {
        let scratch = state
            .runs
            .values()
            .flat_map(|r| r.allocations.iter())
            .filter(|a| a.pool == name)
            .count() as u64;
        prop_assert_eq!(state.usage.on_pool(name), scratch);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every write of any history, what is kept equals what the live
    /// runs and workers say when recomputed from scratch.
    #[test]
    fn kept_usage_equals_usage_recomputed_from_the_runs(ops in proptest::collection::vec(op(), 1..60)) {
        let mut state = empty();
        for (seq, (write, now)) in writes(&ops).into_iter().enumerate() {
            state.apply_all(std::slice::from_ref(&write), now, seq as u64 + 1);
            check(&state, now)?;
        }
    }

    /// Writes applied in batches end where the same writes applied one by one do.
    #[test]
    fn batches_keep_what_single_writes_keep(ops in proptest::collection::vec(op(), 1..60), cut in 1..8usize) {
        let writes = writes(&ops);
        let mut state = empty();
        let last = writes.last().map_or(t(0), |(_, at)| *at);
        for (seq, batch) in writes.chunks(cut).enumerate() {
            let batch: Vec<Write> = batch.iter().map(|(w, _)| w.clone()).collect();
            state.apply_all(&batch, last, seq as u64 + 1);
        }
        check(&state, last)?;
    }
}

#[test]
fn an_allocation_closed_after_its_run_ended_is_no_longer_counted() {
    let mut state = empty();
    let at = t(5);
    let record = run(RunId(1), "acme", RunState::Admitted, at);
    let a = AllocationRecord {
        id: AllocationId(1),
        run_id: RunId(1),
        group: 0,
        tenant: "acme".into(),
        pool: "local".into(),
        resources: Resources::new(1000, 1024, 0),
        worker_id: None,
        opened_at: at,
        closed_at: None,
    };
    state.apply_all(
        &[
            Write::PutRun(record.clone()),
            Write::PutAllocation(a.clone()),
        ],
        at,
        1,
    );
    assert_eq!(state.usage.on_pool("local"), 1);
    let ended = RunRecord {
        state: RunState::Cancelled,
        finished_at: Some(at),
        ..record
    };
    state.apply_all(
        &[
            Write::PutRun(ended),
            Write::PutAllocation(AllocationRecord {
                closed_at: Some(at),
                ..a
            }),
        ],
        at,
        2,
    );
    assert_eq!(state.usage, Usage::default());
    assert_eq!(state.snapshot(at).pools["local"].used, Resources::ZERO);
}

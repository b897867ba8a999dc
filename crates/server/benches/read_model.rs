//! What the committed read model costs at 100,000 queued runs in 10,000
//! classes (200 tenants, 50 shapes each) with 1,000 open allocations: the
//! view built for each staged batch, the queue's positions computed from a
//! view (in the background for a queue this long), and a reader's look-ups.
//! Run with `cargo bench -p corral-server --bench read_model`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_core::clock::Timestamp;
use corral_core::ids::{AllocationId, RunId};
use corral_core::limits::Limits;
use corral_core::manifest::{from_value, parse_single};
use corral_core::money::Money;
use corral_core::pipeline::PipelineSpec;
use corral_core::pool::PoolSpec;
use corral_core::request::ResourceRequest;
use corral_core::run::RunState;
use corral_core::tenant::TenantSpec;
use corral_core::usage::UsageLedger;
use corral_server::SpendBook;
use corral_server::read_model::{QueueModel, View};
use corral_server::state::State;
use corral_store::{AllocationRecord, Live, PoolRecord, RunRecord, TenantRecord, Write};
use serde_json::json;

const RUNS: i64 = 100_000;
const TENANTS: i64 = 200;
const SHAPES: i64 = 50;
const HELD: i64 = 1_000;

fn record(id: i64, now: Timestamp, shapes: &[(PipelineSpec, ResourceRequest)]) -> RunRecord {
    let tenant = id % TENANTS;
    let (spec, request) = &shapes[((id / TENANTS) % SHAPES) as usize];
    RunRecord {
        id: RunId(id),
        pipeline: spec.name.clone(),
        tenant: format!("t{tenant}"),
        priority: 0,
        state: RunState::Queued,
        reason: None,
        spec: PipelineSpec {
            tenant: format!("t{tenant}"),
            ..spec.clone()
        },
        request: request.clone(),
        estimate: Money::ZERO,
        created_at: Timestamp(now.0 - RUNS + id),
        updated_at: now,
        finished_at: None,
    }
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let p99 = samples[samples.len() * 99 / 100];
    println!(
        "{what}: mean {:.3} ms, p99 {:.3} ms ({} samples)",
        mean.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.len()
    );
}

fn main() {
    let now = Timestamp(1_700_000_000_000);
    let shapes: Vec<(PipelineSpec, ResourceRequest)> = (0..SHAPES)
        .map(|i| {
            let text = format!(
                "kind: Pipeline\nname: p{i}\ntenant: t0\nsteps:\n  - {{name: s, run: 'true', resources: {{cpu: {}m, memory: 1Gi}}}}\n",
                100 + i
            );
            let spec: PipelineSpec =
                from_value(parse_single(&text, "Pipeline").expect("yaml"), "").expect("spec");
            let pipeline = spec.compile_with(&Limits::default()).expect("valid");
            let request = ResourceRequest::for_pipeline(&pipeline);
            (pipeline.spec, request)
        })
        .collect();
    let pool = PoolRecord {
        spec: PoolSpec::parse(json!({"name": "big", "capacity": {"cpu": 100000, "memory": "100000Gi"}, "max_workers": 100000}))
            .expect("pool"),
        created_at: now,
        updated_at: now,
    };
    let tenants = (0..TENANTS)
        .map(|t| TenantRecord {
            spec: TenantSpec::parse(json!({"name": format!("t{t}")})).expect("tenant"),
            created_at: now,
            updated_at: now,
        })
        .collect();
    let live = Live {
        pools: vec![pool],
        tenants,
        runs: (1..=RUNS).map(|id| record(id, now, &shapes)).collect(),
        ..Live::default()
    };
    let started = Instant::now();
    let mut state = State::from_live(live, UsageLedger::new(3_600_000), SpendBook::default(), now);
    println!(
        "loaded {} queued runs in {} classes: {:.0} ms",
        state.queue.len(),
        state.queue.classes().count(),
        started.elapsed().as_secs_f64() * 1e3
    );
    // The first runs are admitted: each holds one allocation.
    let mut writes = Vec::new();
    for id in 1..=HELD {
        let mut run = record(id, now, &shapes);
        run.state = RunState::Running;
        writes.push(Write::PutAllocation(AllocationRecord {
            id: AllocationId(id),
            run_id: RunId(id),
            group: 0,
            tenant: run.tenant.clone(),
            pool: "big".into(),
            resources: run.request.total(),
            worker_id: None,
            opened_at: now,
            closed_at: None,
        }));
        writes.insert(0, Write::PutRun(run));
    }
    state.apply_all(&writes, now, 1);

    // Per batch: one run ends, one is submitted, and the view is built.
    let mut snapshots = Vec::new();
    let mut views = Vec::new();
    for i in 0..500 {
        let ended = HELD + 1 + i;
        let mut run = record(ended, now, &shapes);
        run.state = RunState::Cancelled;
        run.finished_at = Some(now);
        state.apply_all(
            &[
                Write::PutRun(run),
                Write::PutRun(record(RUNS + 1 + i, now, &shapes)),
            ],
            now,
            2 + i as u64,
        );
        let t = Instant::now();
        std::hint::black_box(state.snapshot(now));
        snapshots.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(View::of(&state, now));
        views.push(t.elapsed());
    }
    report("snapshot", &mut snapshots);
    report("view per staged batch", &mut views);

    let view = Arc::new(View::of(&state, now));
    let mut positions = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(QueueModel::of(view.clone()));
        positions.push(t.elapsed());
    }
    report("queue positions of a view (background)", &mut positions);

    let model = QueueModel::of(view.clone());
    let mut pages = Vec::new();
    let mut places = Vec::new();
    for i in 0..10_000 {
        let t = Instant::now();
        std::hint::black_box(model.page(None, 0, 10, now));
        pages.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(model.place(RunId(RUNS - i), now));
        places.push(t.elapsed());
    }
    report("a reader's first page of 10", &mut pages);
    report("a reader's place of one run", &mut places);
}

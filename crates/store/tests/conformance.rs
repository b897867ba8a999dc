//! The store conformance suite, run against every backend: SQLite and PostgreSQL.

use std::collections::BTreeMap;

use corral_core::access::Role;
use corral_core::clock::Timestamp;
use corral_core::controller::{Reason, ReasonCode};
use corral_core::ids::{AllocationId, AttemptId, RunId, WorkerId};
use corral_core::manifest::{Document, parse_documents};
use corral_core::metering::{
    CapacityChange, Grouping, Key, PriceChange, Span, Window, group, idle, pieces, slot_pieces,
    usage,
};
use corral_core::money::Money;
use corral_core::pool::Price;
use corral_core::request::ResourceRequest;
use corral_core::resources::Resources;
use corral_core::run::{AttemptState, RunState, StepState, WorkerState};
use corral_core::tenant::TenantSpec;
use corral_store::testing::fresh_postgres_database;
use corral_store::*;

fn pool_record() -> PoolRecord {
    let docs = parse_documents(
        "kind: Pool\nname: linux\ncapacity: {cpu: 8, memory: 16Gi}\nlabels: {os: linux}\nprice: {cpu_hour: 0.04}\n",
    )
    .expect("valid pool");
    let Some(Document::Pool(spec)) = docs.into_iter().next() else {
        panic!("expected a pool")
    };
    PoolRecord {
        spec,
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
    }
}

fn run_record(id: i64, tenant: &str, state: RunState) -> RunRecord {
    let docs = parse_documents(
        "kind: Pipeline\nname: p\nsteps:\n  - {name: a, run: 'true', resources: {cpu: 1, memory: 1Gi}}\n  - {name: b, run: 'echo hi', needs: [a]}\n",
    )
    .expect("valid pipeline");
    let Some(Document::Pipeline(spec)) = docs.into_iter().next() else {
        panic!("expected a pipeline")
    };
    let request = ResourceRequest::for_pipeline(&spec.clone().compile().expect("compiles"));
    RunRecord {
        id: RunId(id),
        pipeline: spec.name.clone(),
        tenant: tenant.to_string(),
        priority: 0,
        state,
        reason: Some(Reason::simple(
            ReasonCode::TenantQuota,
            "tenant acme: cpu 6/6 in use, run needs 3",
        )),
        spec,
        request,
        estimate: Money::from_micros(1_234_567 * id),
        created_at: Timestamp(10 + id),
        updated_at: Timestamp(10 + id),
        finished_at: None,
    }
}

fn allocation(id: i64, run: i64, group: u32, closed: Option<i64>) -> AllocationRecord {
    AllocationRecord {
        id: AllocationId(id),
        run_id: RunId(run),
        group,
        tenant: "acme".into(),
        pool: "linux".into(),
        resources: Resources::new(1500, 1024, 0),
        worker_id: None,
        opened_at: Timestamp(100),
        closed_at: closed.map(Timestamp),
    }
}

async fn suite(store: &dyn Store) {
    // An empty store has nothing live.
    let live = store.load_live().await.expect("load");
    assert_eq!(live, Live::default());

    // Pools and tenants round-trip and are updated in place.
    let mut pool = pool_record();
    let tenant = TenantRecord {
        spec: TenantSpec::unlimited("acme"),
        created_at: Timestamp(2),
        updated_at: Timestamp(2),
    };
    store
        .commit(&[
            Write::PutPool(pool.clone()),
            Write::PutTenant(tenant.clone()),
        ])
        .await
        .expect("commit pool and tenant");
    pool.spec.max_workers = 3;
    pool.updated_at = Timestamp(5);
    store
        .commit(&[Write::PutPool(pool.clone())])
        .await
        .expect("update pool");
    let live = store.load_live().await.expect("load");
    assert_eq!(live.pools, vec![pool.clone()]);
    assert_eq!(live.tenants, vec![tenant.clone()]);

    // Runs, steps, attempts, allocations, workers.
    let run = run_record(1, "acme", RunState::Running);
    let done = RunRecord {
        finished_at: Some(Timestamp(50)),
        reason: None,
        ..run_record(2, "acme", RunState::Succeeded)
    };
    let step = StepRecord {
        run_id: RunId(1),
        idx: 0,
        name: "a".into(),
        group: 0,
        state: StepState::Running,
        attempts: 1,
    };
    let worker = WorkerRecord {
        id: WorkerId(7),
        pool: "linux".into(),
        name: "local-7".into(),
        capacity: Resources::new(1500, 1024, 0),
        labels: BTreeMap::from([("os".into(), "linux".into())]),
        state: WorkerState::Ready,
        registered_at: Timestamp(90),
        updated_at: Timestamp(90),
        instance: Some("17f3-42".into()),
        secret_hash: Some("ab".repeat(32)),
        incarnation: Some("first".into()),
        confinement: Some(WorkerConfinement {
            namespaces: true,
            cgroup: "v1".into(),
            user: "uids 2000000000-2000065535".into(),
        }),
        token_name: Some("linux-agents".into()),
        spawn_hash: Some("ef".repeat(32)),
    };
    let attempt = AttemptRecord {
        id: AttemptId(3),
        run_id: RunId(1),
        step_idx: 0,
        number: 1,
        worker_id: WorkerId(7),
        state: AttemptState::Running,
        exit_code: None,
        error: None,
        created_at: Timestamp(101),
        started_at: Some(Timestamp(102)),
        finished_at: None,
        usage: None,
    };
    let mut open = allocation(4, 1, 0, None);
    open.worker_id = Some(WorkerId(7));
    store
        .commit(&[
            Write::PutRun(run.clone()),
            Write::PutRun(done.clone()),
            Write::PutStep(step.clone()),
            Write::PutWorker(worker.clone()),
            Write::PutAttempt(attempt.clone()),
            Write::PutAllocation(open.clone()),
            Write::PutAllocation(allocation(5, 2, 0, Some(60))),
        ])
        .await
        .expect("commit run");
    let live = store.load_live().await.expect("load");
    assert_eq!(
        live.runs,
        vec![run.clone()],
        "only unfinished runs are live"
    );
    assert_eq!(live.steps, vec![step.clone()]);
    assert_eq!(live.attempts, vec![attempt.clone()]);
    assert_eq!(live.open_allocations, vec![open.clone()]);
    assert_eq!(live.workers, vec![worker.clone()]);
    // A registration retried by its agent hands the worker a new secret.
    let rotated = WorkerRecord {
        secret_hash: Some("cd".repeat(32)),
        incarnation: Some("second".into()),
        ..worker.clone()
    };
    store
        .commit(&[Write::PutWorker(rotated.clone())])
        .await
        .expect("rotate");
    assert_eq!(
        store.load_live().await.expect("load").workers,
        vec![rotated]
    );
    store
        .commit(&[Write::PutWorker(worker.clone())])
        .await
        .expect("restore");
    assert_eq!(
        live.max_ids,
        MaxIds {
            run: 2,
            attempt: 3,
            allocation: 5,
            worker: 7,
            audit: 0,
        }
    );

    // A transaction that breaks an invariant leaves nothing behind: a second open
    // allocation for the same group is refused, and the run update with it.
    let finished = RunRecord {
        state: RunState::Failed,
        ..run.clone()
    };
    let err = store
        .commit(&[
            Write::PutRun(finished),
            Write::PutAllocation(allocation(6, 1, 0, None)),
        ])
        .await;
    assert!(
        err.is_err(),
        "two open allocations for one group must be refused"
    );
    let detail = store.run(RunId(1)).await.expect("read").expect("exists");
    assert_eq!(detail.run.state, RunState::Running);
    assert_eq!(detail.allocations, vec![open.clone()]);
    assert_eq!(detail.steps, vec![step.clone()]);
    assert_eq!(detail.attempts, vec![attempt.clone()]);

    // Releasing is idempotent: closing twice leaves one closed allocation.
    let closed = AllocationRecord {
        closed_at: Some(Timestamp(200)),
        ..open.clone()
    };
    for _ in 0..2 {
        store
            .commit(&[Write::PutAllocation(closed.clone())])
            .await
            .expect("close");
    }
    let history = store
        .allocations(&AllocationFilter {
            run: Some(RunId(1)),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("history");
    assert_eq!(history, vec![closed]);
    assert!(
        store
            .load_live()
            .await
            .expect("load")
            .open_allocations
            .is_empty()
    );

    // Filters.
    let by_pool = store
        .allocations(&AllocationFilter {
            pool: Some("linux".into()),
            tenant: Some("acme".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("by pool");
    assert_eq!(by_pool.len(), 2);
    let none = store
        .allocations(&AllocationFilter {
            tenant: Some("other".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("by tenant");
    assert!(none.is_empty());
    for (since, expected) in [(200, 1), (201, 0)] {
        let closed = store
            .allocations(&AllocationFilter {
                closed_since: Some(Timestamp(since)),
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("closed since");
        assert_eq!(closed.len(), expected, "closed since {since}");
    }
    let runs = store
        .runs(&RunFilter {
            tenant: Some("acme".into()),
            state: None,
            limit: 10,
        })
        .await
        .expect("runs");
    assert_eq!(runs.iter().map(|r| r.id.0).collect::<Vec<_>>(), vec![2, 1]);
    let succeeded = store
        .runs(&RunFilter {
            tenant: None,
            state: Some(RunState::Succeeded),
            limit: 10,
        })
        .await
        .expect("runs");
    assert_eq!(succeeded, vec![done]);
    let limited = store
        .runs(&RunFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("runs");
    assert_eq!(limited.len(), 1);
    // Paging: the runs before the last of a page, newest first.
    let all = store
        .runs(&RunFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("runs");
    let first = store
        .runs(&RunFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("runs");
    let rest = store
        .runs_before(
            &RunFilter {
                limit: 100,
                ..Default::default()
            },
            Some(first[0].id),
        )
        .await
        .expect("runs before");
    assert!(all.len() >= 2, "{all:?}");
    assert_eq!([first, rest].concat(), all);
    let acme_before_2 = store
        .runs_before(
            &RunFilter {
                tenant: Some("acme".into()),
                state: None,
                limit: 10,
            },
            Some(RunId(2)),
        )
        .await
        .expect("runs before");
    assert_eq!(
        acme_before_2.iter().map(|r| r.id.0).collect::<Vec<_>>(),
        vec![1]
    );

    // Logs: appends are idempotent per offset and come back in order.
    let chunk = |offset: u64, data: &str| LogChunk {
        attempt_id: AttemptId(3),
        run_id: RunId(1),
        step_idx: 0,
        offset,
        data: data.into(),
    };
    for c in [chunk(6, "world\n"), chunk(0, "hello ")] {
        store.append_log(&c).await.expect("log chunk");
    }
    store
        .append_log(&chunk(0, "again "))
        .await
        .expect("duplicate");
    let other_step = LogChunk {
        attempt_id: AttemptId(4),
        step_idx: 1,
        ..chunk(0, "step two\n")
    };
    store.append_log(&other_step).await.expect("log chunk");
    let logs = store
        .logs(RunId(1), Some(0), None, 100)
        .await
        .expect("logs");
    let text: String = logs.iter().map(|c| c.data.as_str()).collect();
    assert_eq!(text, "hello world\n");
    assert_eq!(
        store
            .logs(RunId(1), Some(1), None, 100)
            .await
            .expect("logs"),
        vec![other_step.clone()]
    );
    // Paged: each page goes on after the last chunk of the one before.
    let first = store.logs(RunId(1), None, None, 2).await.expect("page");
    assert_eq!(first, vec![chunk(0, "hello "), chunk(6, "world\n")]);
    let rest = store
        .logs(RunId(1), None, Some(first[1].cursor()), 2)
        .await
        .expect("page");
    assert_eq!(rest, vec![other_step]);
    assert_eq!(
        store
            .attempt_log(AttemptId(3), 1, 10)
            .await
            .expect("attempt log"),
        vec![chunk(6, "world\n")]
    );
    // Where each attempt's output ends, in bytes (not characters).
    store
        .append_log(&LogChunk {
            attempt_id: AttemptId(5),
            step_idx: 2,
            ..chunk(4, "é€\n")
        })
        .await
        .expect("log chunk");
    assert_eq!(
        store.log_ends(RunId(1)).await.expect("log ends"),
        vec![(AttemptId(3), 12), (AttemptId(4), 9), (AttemptId(5), 10)]
    );
    assert_eq!(store.log_ends(RunId(99)).await.expect("log ends"), vec![]);
    store.probe_write().await.expect("probe");

    // Tokens: replaced by name, touched, listed with the live state.
    let token = TokenRecord {
        name: "ci".into(),
        hash: "cd".repeat(32),
        role: Role::Tenant {
            tenant: "acme".into(),
        },
        created_at: Timestamp(300),
        expires_at: Some(Timestamp(10_000)),
        revoked_at: None,
        last_used_at: None,
    };
    let admin = TokenRecord {
        name: "admin".into(),
        hash: "ef".repeat(32),
        role: Role::Admin,
        expires_at: None,
        ..token.clone()
    };
    store
        .commit(&[
            Write::PutToken(token.clone()),
            Write::PutToken(admin.clone()),
            Write::TouchToken {
                name: "ci".into(),
                at: Timestamp(301),
            },
        ])
        .await
        .expect("tokens");
    let revoked = TokenRecord {
        revoked_at: Some(Timestamp(302)),
        last_used_at: Some(Timestamp(301)),
        ..token.clone()
    };
    store
        .commit(&[Write::PutToken(revoked.clone())])
        .await
        .expect("revoke");
    assert_eq!(
        store.load_live().await.expect("load").tokens,
        vec![admin.clone(), revoked]
    );
    // Two tokens never share a hash.
    let twin = TokenRecord {
        name: "twin".into(),
        ..admin.clone()
    };
    assert!(store.commit(&[Write::PutToken(twin)]).await.is_err());

    // The audit log: filtered by time, author and kind, oldest first.
    let entry = |id: i64, who: &str, kind: &str| AuditRecord {
        id,
        at: Timestamp(400 + id),
        who: who.into(),
        kind: kind.into(),
        name: "linux".into(),
        action: "update".into(),
        before: Some(serde_json::json!({"max_workers": 16})),
        after: Some(serde_json::json!({"max_workers": 3})),
    };
    store
        .commit(&[
            Write::AppendAudit(entry(1, "admin", "pool")),
            Write::AppendAudit(AuditRecord {
                before: None,
                ..entry(2, "ops", "tenant")
            }),
            Write::AppendAudit(entry(3, "ops", "pool")),
        ])
        .await
        .expect("audit");
    let all = store
        .audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(all.iter().map(|a| a.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(all[0], entry(1, "admin", "pool"));
    assert_eq!(all[1].before, None);
    let ops_pools = store
        .audit(&AuditFilter {
            since: Some(Timestamp(402)),
            who: Some("ops".into()),
            kind: Some("pool".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(ops_pools, vec![entry(3, "ops", "pool")]);
    // Newest first, a page at a time, by object and time range.
    let ids = |entries: Vec<AuditRecord>| entries.iter().map(|a| a.id).collect::<Vec<_>>();
    let page = |before_id: Option<i64>, after_id: Option<i64>, newest_first: bool| AuditFilter {
        before_id,
        after_id,
        newest_first,
        limit: 2,
        ..Default::default()
    };
    let first = store.audit(&page(None, None, true)).await.expect("audit");
    assert_eq!(ids(first), vec![3, 2]);
    let older = store
        .audit(&page(Some(2), None, true))
        .await
        .expect("audit");
    assert_eq!(ids(older), vec![1]);
    let newer = store
        .audit(&page(None, Some(1), false))
        .await
        .expect("audit");
    assert_eq!(ids(newer), vec![2, 3]);
    let in_range = store
        .audit(&AuditFilter {
            since: Some(Timestamp(402)),
            until: Some(Timestamp(403)),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(ids(in_range), vec![2]);
    let named = |name: &str| AuditFilter {
        name: Some(name.into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(store.audit(&named("linux")).await.expect("audit")),
        vec![1, 2, 3]
    );
    assert!(
        store
            .audit(&named("other"))
            .await
            .expect("audit")
            .is_empty()
    );
    assert_eq!(store.load_live().await.expect("load").max_ids.audit, 3);

    // Deletes.
    store
        .commit(&[
            Write::DeletePool("linux".into()),
            Write::DeleteTenant("acme".into()),
        ])
        .await
        .expect("delete");
    let live = store.load_live().await.expect("load");
    assert!(live.pools.is_empty() && live.tenants.is_empty());
    assert!(store.run(RunId(99)).await.expect("read").is_none());
}

/// Price and capacity histories, the spans usage is computed from, and the
/// durations estimates learn from.
async fn metering(store: &dyn Store) {
    let price = |pool: &str, at_ms: i64, cpu_hour: f64| PriceChange {
        pool: pool.into(),
        at_ms,
        price: Price {
            cpu_hour,
            memory_gib_hour: 0.005,
            gpu_hour: 0.0,
        },
    };
    let capacity = |pool: &str, at_ms: i64, cpu: u64| CapacityChange {
        pool: pool.into(),
        at_ms,
        capacity: Resources::new(cpu, 4096, 0),
    };
    store
        .commit(&[
            Write::PutPrice(price("linux", 200, 0.05)),
            Write::PutPrice(price("linux", 100, 0.04)),
            Write::PutPrice(price("gpu", 100, 2.0)),
            // A later change at the same time wins.
            Write::PutPrice(price("linux", 200, 0.06)),
            Write::PutCapacity(capacity("linux", 100, 8000)),
            Write::PutCapacity(capacity("linux", 300, 16000)),
            Write::PutCapacity(capacity("gpu", 100, 4000)),
        ])
        .await
        .expect("histories");
    assert_eq!(
        store.prices().await.expect("prices"),
        vec![
            price("gpu", 100, 2.0),
            price("linux", 100, 0.04),
            price("linux", 200, 0.06)
        ]
    );
    assert_eq!(store.capacities().await.expect("capacities").len(), 3);
    let live = store.load_live().await.expect("load");
    assert_eq!(live.prices.len(), 3);
    assert_eq!(
        live.capacities,
        vec![capacity("gpu", 100, 4000), capacity("linux", 300, 16000)],
        "the latest capacity of each pool"
    );

    // Two succeeded runs of one pipeline and an open allocation of another
    // tenant's run: spans carry their run's pipeline.
    let done = |id: i64, finished: i64| RunRecord {
        state: RunState::Succeeded,
        finished_at: Some(Timestamp(finished)),
        ..run_record(id, "acme", RunState::Succeeded)
    };
    let held =
        |id: i64, run: i64, tenant: &str, opened: i64, closed: Option<i64>| AllocationRecord {
            tenant: tenant.into(),
            opened_at: Timestamp(opened),
            ..allocation(id, run, 0, closed)
        };
    let other = RunRecord {
        pipeline: "nightly".into(),
        ..run_record(52, "globex", RunState::Running)
    };
    store
        .commit(&[
            Write::PutRun(done(50, 1_500)),
            Write::PutRun(done(51, 5_000)),
            Write::PutRun(other),
            Write::PutAllocation(held(50, 50, "acme", 1_000, Some(1_500))),
            Write::PutAllocation(held(51, 51, "acme", 2_000, Some(5_000))),
            Write::PutAllocation(held(52, 52, "globex", 3_000, None)),
        ])
        .await
        .expect("runs");
    assert_eq!(
        store
            .run(RunId(51))
            .await
            .expect("read")
            .expect("exists")
            .run
            .estimate,
        Money::from_micros(1_234_567 * 51)
    );
    let spans = |from: i64, to: i64, tenant: Option<&str>| SpanFilter {
        from: Timestamp(from),
        to: Timestamp(to),
        tenant: tenant.map(str::to_string),
        pool: None,
        unmetered: false,
    };
    // (The suite's own allocations, ids under 50, are left out.)
    let ids = |found: Vec<Span>| {
        found
            .iter()
            .map(|s| s.allocation.0)
            .filter(|&id| id >= 50)
            .collect::<Vec<_>>()
    };
    let all = store.spans(&spans(0, 10_000, None)).await.expect("spans");
    assert_eq!(ids(all.clone()), vec![50, 51, 52]);
    let last = all.last().expect("spans");
    assert_eq!(last.pipeline, "nightly");
    assert_eq!((last.tenant.as_str(), last.end_ms), ("globex", None));
    let first = all.iter().find(|s| s.allocation.0 == 50).expect("span 50");
    assert_eq!(
        (first.pipeline.as_str(), first.resources),
        ("p", Resources::new(1500, 1024, 0))
    );
    // Held within [from, to): the first ended at 1,500, the open one holds on.
    assert_eq!(
        ids(store
            .spans(&spans(1_500, 10_000, None))
            .await
            .expect("spans")),
        vec![51, 52]
    );
    assert_eq!(
        ids(store.spans(&spans(0, 2_000, None)).await.expect("spans")),
        vec![50]
    );
    assert_eq!(
        ids(store
            .spans(&spans(0, 10_000, Some("globex")))
            .await
            .expect("spans")),
        vec![52]
    );
    // Durations per pipeline: the suite's own succeeded run of `p` (before
    // 1,000) is left out by `since`.
    let recent = store
        .recent_durations(Timestamp(1_000), 20)
        .await
        .expect("durations");
    assert_eq!(
        recent,
        vec![PipelineDurations {
            tenant: "acme".into(),
            pipeline: "p".into(),
            content: run_record(50, "acme", RunState::Succeeded)
                .spec
                .content_key(),
            durations: vec![3_000, 500],
        }],
        "newest first; the open run of nightly has none"
    );
    let last = store
        .recent_durations(Timestamp(1_000), 1)
        .await
        .expect("durations");
    assert_eq!(last[0].durations, vec![3_000]);

    // Budget alerts: once per tenant, month and threshold; deliveries update them.
    let alert = |threshold_milli: i64, at: i64| AlertRecord {
        tenant: "acme".into(),
        month: "2026-11".into(),
        threshold_milli,
        at: Timestamp(at),
        spent: Money::from_micros(400_000_000),
        monthly: Money::from_micros(500_000_000),
        attempts: 0,
        delivered_at: None,
        last_error: None,
    };
    store
        .commit(&[
            Write::PutAlert(alert(800, 10)),
            Write::PutAlert(alert(1000, 20)),
        ])
        .await
        .expect("alerts");
    let delivered = AlertRecord {
        attempts: 2,
        delivered_at: Some(Timestamp(30)),
        last_error: Some("503 once".into()),
        ..alert(800, 10)
    };
    store
        .commit(&[Write::PutAlert(delivered.clone())])
        .await
        .expect("delivered");
    let all = AlertFilter {
        limit: 10,
        ..AlertFilter::default()
    };
    assert_eq!(
        store.alerts(&all).await.expect("alerts"),
        vec![alert(1000, 20), delivered]
    );
    let pending = AlertFilter {
        undelivered: true,
        ..all.clone()
    };
    assert_eq!(
        store.alerts(&pending).await.expect("alerts"),
        vec![alert(1000, 20)]
    );
    let other = AlertFilter {
        month: Some("2026-12".into()),
        ..all
    };
    assert!(store.alerts(&other).await.expect("alerts").is_empty());
}

/// A small deterministic generator (xorshift), so that the workload is the
/// same on every backend and every run.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Reports read from metered usage (whole days from the sums per slot, parts
/// of days from the pieces, open and not yet metered allocations priced live)
/// equal, to the micro-unit, pricing every allocation of the window again;
/// metering twice counts once.
async fn metered_reports(store: &dyn Store) {
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    // 2026-11-23T00:00Z, and five and a half days later.
    let base: i64 = 1_795_392_000_000;
    let now = base + 5 * DAY + 12 * HOUR;
    let pools = ["m-alpha", "m-beta"];
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let mut writes = Vec::new();
    for (i, pool) in pools.iter().enumerate() {
        for (k, at) in [
            base - 10 * DAY,
            base + DAY + 7 * HOUR,
            base + 3 * DAY + 13 * HOUR + 17,
        ]
        .into_iter()
        .enumerate()
        {
            writes.push(Write::PutPrice(PriceChange {
                pool: pool.to_string(),
                at_ms: at,
                price: Price {
                    cpu_hour: 0.013 * (i + k + 1) as f64,
                    memory_gib_hour: 0.0031 * (k + 1) as f64,
                    gpu_hour: 0.7,
                },
            }));
        }
    }
    for run in 0..6i64 {
        writes.push(Write::PutRun(RunRecord {
            pipeline: format!("m-pipe-{}", run % 3),
            ..run_record(
                900 + run,
                ["m-acme", "m-globex"][run as usize % 2],
                RunState::Running,
            )
        }));
    }
    store.commit(&writes).await.expect("prices and runs");
    let prices = store.prices().await.expect("prices");
    let mut unmetered_closed = 0;
    for id in 1000..1300i64 {
        let run = 900 + (id % 6);
        let opened = base - DAY + dice.below(6 * DAY as u64) as i64;
        let length = match dice.below(4) {
            0 => dice.below(60_000) as i64,
            1 => dice.below(6 * HOUR as u64) as i64,
            _ => dice.below(2 * DAY as u64) as i64,
        };
        let closed = (opened + length < now && dice.below(5) > 0).then_some(opened + length);
        let allocation = AllocationRecord {
            id: AllocationId(id),
            run_id: RunId(run),
            // One open allocation per group of a run.
            group: id as u32,
            tenant: ["m-acme", "m-globex"][run as usize % 2].into(),
            pool: pools[dice.below(2) as usize].into(),
            resources: Resources::new(
                250 * (1 + dice.below(8)),
                512 * dice.below(5),
                dice.below(2),
            ),
            worker_id: None,
            opened_at: Timestamp(opened.min(now)),
            closed_at: closed.map(Timestamp),
        };
        let mut batch = vec![Write::PutAllocation(allocation.clone())];
        if closed.is_some() {
            if dice.below(4) == 0 {
                unmetered_closed += 1;
            } else {
                let span = Span {
                    allocation: allocation.id,
                    run: allocation.run_id,
                    tenant: allocation.tenant.clone(),
                    pool: allocation.pool.clone(),
                    pipeline: format!("m-pipe-{}", run % 3),
                    resources: allocation.resources,
                    start_ms: allocation.opened_at.0,
                    end_ms: allocation.closed_at.map(|t| t.0),
                };
                let pieces = slot_pieces(&span, &prices);
                batch.push(Write::Meter(Metered { span, pieces }));
            }
        }
        store.commit(&batch).await.expect("allocation");
    }
    let check = |window: (i64, i64), by: Vec<Key>, tenant: Option<&str>, pool: Option<&str>| {
        let filter = SpanFilter {
            from: Timestamp(window.0),
            to: Timestamp(window.1),
            tenant: tenant.map(str::to_string),
            pool: pool.map(str::to_string),
            unmetered: false,
        };
        let prices = &prices;
        async move {
            let w = Window::new(window.0, window.1);
            let spans = store.spans(&filter).await.expect("spans");
            let expected = usage(&spans, prices, w, now, &by);
            let held = metered_usage(store, &filter, Grouping::of(&by, true), prices, now)
                .await
                .expect("metered usage");
            assert_eq!(group(&held, &by), expected, "{window:?} by {by:?}");
            let capacities = [CapacityChange {
                pool: "m-alpha".into(),
                at_ms: base - 10 * DAY,
                capacity: Resources::new(64_000, 1 << 20, 4),
            }];
            assert_eq!(
                idle(&capacities, &held, prices, w, now, true),
                idle(
                    &capacities,
                    &pieces(&spans, prices, w, now),
                    prices,
                    w,
                    now,
                    true
                ),
                "idle over {window:?}"
            );
        }
    };
    let keys = [
        vec![Key::Tenant, Key::Day],
        vec![Key::Pool, Key::Pipeline],
        vec![Key::Month],
        vec![],
        vec![Key::Tenant, Key::Pool, Key::Pipeline, Key::Day],
    ];
    let mut windows = vec![
        (base, base + 3 * DAY),
        (base - 2 * DAY, now + DAY),
        (base + 5 * DAY, now),
        (base + DAY + 7 * HOUR, base + 3 * DAY + 13 * HOUR + 17),
    ];
    for _ in 0..12 {
        let from = base - 2 * DAY + dice.below(8 * DAY as u64) as i64;
        let to = from + 1 + dice.below(4 * DAY as u64) as i64;
        windows.push((from, to));
    }
    for (i, window) in windows.iter().enumerate() {
        check(*window, keys[i % keys.len()].clone(), None, None).await;
    }
    check(windows[4], vec![Key::Day], Some("m-acme"), None).await;
    check(windows[5], vec![Key::Tenant], None, Some("m-beta")).await;

    // The closed allocations not metered yet are listed, and once metered
    // (twice over) the reports have not changed.
    let backlog = store.unmetered(10_000).await.expect("unmetered");
    let ours: Vec<&Span> = backlog.iter().filter(|s| s.allocation.0 >= 1000).collect();
    assert_eq!(ours.len(), unmetered_closed);
    assert!(
        ours.iter()
            .all(|s| s.end_ms.is_some() && s.pipeline.starts_with("m-pipe-"))
    );
    let meter: Vec<Write> = backlog
        .iter()
        .map(|span| {
            Write::Meter(Metered {
                span: span.clone(),
                pieces: slot_pieces(span, &prices),
            })
        })
        .collect();
    // Each twice in one batch, then again in another: each counts once.
    let twice: Vec<Write> = meter.iter().chain(&meter).cloned().collect();
    store.commit(&twice).await.expect("meter");
    store.commit(&meter).await.expect("meter again");
    assert!(store.unmetered(10).await.expect("unmetered").is_empty());
    for (i, window) in windows.iter().enumerate().take(6) {
        check(*window, keys[i % keys.len()].clone(), None, None).await;
    }
}

/// A batch that moves runs several times (as a group commit of a submit, an
/// admission, a binding and an end does) leaves each row as its last write
/// says, and lists exactly the allocations not metered yet.
async fn rows_moved_within_one_batch(store: &dyn Store) {
    let run = |id: i64, state: RunState, finished: Option<i64>| RunRecord {
        finished_at: finished.map(Timestamp),
        updated_at: Timestamp(finished.unwrap_or(20 + id)),
        ..run_record(id, "acme", state)
    };
    let step = |run: i64, idx: u32, state: StepState, attempts: u32| StepRecord {
        run_id: RunId(run),
        idx,
        name: ["a", "b"][idx as usize].into(),
        group: 0,
        state,
        attempts,
    };
    let attempt = |state: AttemptState, finished: Option<i64>| AttemptRecord {
        id: AttemptId(70_900),
        run_id: RunId(70_900),
        step_idx: 0,
        number: 1,
        worker_id: WorkerId(7),
        state,
        exit_code: finished.map(|_| 0),
        error: None,
        created_at: Timestamp(150),
        started_at: Some(Timestamp(150)),
        finished_at: finished.map(Timestamp),
        usage: finished.map(|_| Measured {
            cpu_micros: 1_500_000,
            memory_peak_bytes: 200 << 20,
            throttled_micros: 250_000,
        }),
    };
    let held = |id: i64, run: i64, worker: Option<i64>, closed: Option<i64>| AllocationRecord {
        id: AllocationId(id),
        worker_id: worker.map(WorkerId),
        opened_at: Timestamp(120),
        ..allocation(id, run, 0, closed)
    };
    let ended = held(70_900, 70_900, Some(7), Some(180));
    let span = Span {
        allocation: ended.id,
        run: ended.run_id,
        tenant: ended.tenant.clone(),
        pool: ended.pool.clone(),
        pipeline: "p".into(),
        resources: ended.resources,
        start_ms: 120,
        end_ms: Some(180),
    };
    let pieces = slot_pieces(&span, &[]);
    store
        .commit(&[
            Write::PutRun(run(70_900, RunState::Queued, None)),
            Write::PutStep(step(70_900, 0, StepState::Pending, 0)),
            Write::PutStep(step(70_900, 1, StepState::Pending, 0)),
            Write::PutRun(run(70_901, RunState::Queued, None)),
            Write::PutRun(run(70_900, RunState::Admitted, None)),
            Write::PutAllocation(held(70_900, 70_900, None, None)),
            Write::PutRun(run(70_902, RunState::Queued, None)),
            Write::PutAllocation(held(70_900, 70_900, Some(7), None)),
            Write::PutAttempt(attempt(AttemptState::Running, None)),
            Write::PutStep(step(70_900, 0, StepState::Running, 1)),
            Write::PutRun(run(70_900, RunState::Running, None)),
            Write::PutRun(run(70_901, RunState::Admitted, None)),
            Write::PutAllocation(held(70_901, 70_901, None, None)),
            // Run 70_902 is admitted and its allocation released at once, never
            // metered: it waits in the backlog.
            Write::PutRun(run(70_902, RunState::Admitted, None)),
            Write::PutAllocation(held(70_902, 70_902, None, None)),
            Write::PutAllocation(held(70_902, 70_902, None, Some(170))),
            Write::PutRun(run(70_902, RunState::Failed, Some(170))),
            Write::PutAttempt(attempt(AttemptState::Succeeded, Some(180))),
            Write::PutStep(step(70_900, 0, StepState::Succeeded, 1)),
            Write::PutStep(step(70_900, 1, StepState::Cancelled, 0)),
            Write::PutAllocation(ended.clone()),
            Write::PutRun(run(70_900, RunState::Succeeded, Some(180))),
            Write::Meter(Metered { span, pieces }),
        ])
        .await
        .expect("one batch");
    let detail = store
        .run(RunId(70_900))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(detail.run, run(70_900, RunState::Succeeded, Some(180)));
    assert_eq!(
        detail.steps,
        vec![
            step(70_900, 0, StepState::Succeeded, 1),
            step(70_900, 1, StepState::Cancelled, 0)
        ]
    );
    assert_eq!(
        detail.attempts,
        vec![attempt(AttemptState::Succeeded, Some(180))]
    );
    assert_eq!(detail.allocations, vec![ended]);
    let admitted = store
        .run(RunId(70_901))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(admitted.run.state, RunState::Admitted);
    assert_eq!(admitted.allocations, vec![held(70_901, 70_901, None, None)]);
    // Not metered yet: the open allocation and the one closed without its
    // metering; not the one metered in the batch.
    let unmetered = store
        .spans(&SpanFilter {
            from: Timestamp(0),
            to: Timestamp(1_000),
            tenant: None,
            pool: None,
            unmetered: true,
        })
        .await
        .expect("spans");
    let mut ids: Vec<i64> = unmetered
        .iter()
        .map(|s| s.allocation.0)
        .filter(|id| (70_900..71_000).contains(id))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![70_901, 70_902]);
    let backlog: Vec<i64> = store
        .unmetered(10_000)
        .await
        .expect("unmetered")
        .iter()
        .map(|s| s.allocation.0)
        .filter(|id| (70_900..71_000).contains(id))
        .collect();
    assert_eq!(backlog, vec![70_902], "closed and not metered");
}

/// Lost workers past the retention go, a bounded batch at a time, oldest
/// first; live and recent ones stay, and so does the highest id, so that an
/// id is never given out again after a restart.
async fn lost_workers_are_pruned(store: &dyn Store) {
    let worker = |id: i64, state: WorkerState, updated: i64| WorkerRecord {
        id: WorkerId(id),
        pool: "linux".into(),
        name: format!("w-{id}"),
        capacity: Resources::new(1000, 1024, 0),
        labels: BTreeMap::new(),
        state,
        registered_at: Timestamp(updated),
        updated_at: Timestamp(updated),
        instance: None,
        secret_hash: None,
        incarnation: None,
        confinement: None,
        token_name: None,
        spawn_hash: None,
    };
    store
        .commit(&[
            Write::PutWorker(worker(80_001, WorkerState::Lost, 100)),
            Write::PutWorker(worker(80_002, WorkerState::Lost, 200)),
            Write::PutWorker(worker(80_003, WorkerState::Lost, 5_000)),
            Write::PutWorker(worker(80_004, WorkerState::Ready, 100)),
            Write::PutWorker(worker(80_005, WorkerState::Lost, 100)),
        ])
        .await
        .expect("workers");
    let prune = |limit| store.prune_lost_workers(Timestamp(1_000), limit);
    assert_eq!(prune(1).await.expect("prune"), 1, "one batch of one");
    assert_eq!(prune(10).await.expect("prune"), 1, "the other old lost one");
    assert_eq!(prune(10).await.expect("prune"), 0, "nothing left to prune");
    let live = store.load_live().await.expect("load");
    assert_eq!(live.max_ids.worker, 80_005, "the highest id is kept");
    assert!(live.workers.iter().any(|w| w.id == WorkerId(80_004)));
    store
        .commit(&[Write::PutWorker(worker(80_006, WorkerState::Ready, 100))])
        .await
        .expect("a newer worker");
    assert_eq!(prune(10).await.expect("prune"), 1, "no longer the highest");
}

/// A commit that fails (here on the unique index of open allocations, after
/// its first statements went through) keeps none of its writes, and the store
/// goes on: the next commit is kept and read back, also by `reopened`, a store
/// opened afresh on the same database.
/// A batch of thousands of rows of each kind (a bulk submit, a drain), written
/// in statements of many rows: every row is there, as written, and a second
/// large batch moves them all on, an allocation closed and its group's next one
/// opened in the same batch included.
async fn a_large_batch(store: &dyn Store) {
    const RUNS: i64 = 5_000;
    const FIRST: i64 = 500_000;
    let ids = || FIRST..FIRST + RUNS;
    let step = |run: i64, idx: u32, state: StepState| StepRecord {
        run_id: RunId(run),
        idx,
        name: ["a", "b"][idx as usize].into(),
        group: 0,
        state,
        attempts: u32::from(state != StepState::Pending),
    };
    let attempt = |run: i64, finished: Option<i64>| AttemptRecord {
        id: AttemptId(run),
        run_id: RunId(run),
        step_idx: 0,
        number: 1,
        worker_id: WorkerId(run % 7),
        state: if finished.is_some() {
            AttemptState::Succeeded
        } else {
            AttemptState::Running
        },
        exit_code: finished.map(|_| 0),
        error: None,
        created_at: Timestamp(150),
        started_at: Some(Timestamp(150)),
        finished_at: finished.map(Timestamp),
        usage: None,
    };
    let mut first = Vec::new();
    for id in ids() {
        first.push(Write::PutRun(run_record(id, "acme", RunState::Running)));
        first.push(Write::PutStep(step(id, 0, StepState::Running)));
        first.push(Write::PutStep(step(id, 1, StepState::Pending)));
        first.push(Write::PutAttempt(attempt(id, None)));
        first.push(Write::PutAllocation(allocation(id, id, 0, None)));
    }
    store.commit(&first).await.expect("a large batch");
    let live = store.load_live().await.expect("load");
    let mine = |id: &RunId| ids().contains(&id.0);
    let runs: Vec<&RunRecord> = live.runs.iter().filter(|r| mine(&r.id)).collect();
    assert_eq!(runs.len(), RUNS as usize);
    assert_eq!(
        runs[4_321],
        &run_record(FIRST + 4_321, "acme", RunState::Running)
    );
    assert_eq!(
        live.steps.iter().filter(|s| mine(&s.run_id)).count(),
        2 * RUNS as usize
    );
    assert_eq!(
        live.attempts.iter().filter(|a| mine(&a.run_id)).count(),
        RUNS as usize
    );
    assert_eq!(
        live.open_allocations
            .iter()
            .filter(|a| mine(&a.run_id))
            .count(),
        RUNS as usize
    );
    let last = store
        .run(RunId(FIRST + RUNS - 1))
        .await
        .expect("read")
        .expect("the last run");
    assert_eq!(
        last.steps,
        vec![
            step(FIRST + RUNS - 1, 0, StepState::Running),
            step(FIRST + RUNS - 1, 1, StepState::Pending)
        ]
    );
    assert_eq!(last.attempts, vec![attempt(FIRST + RUNS - 1, None)]);

    // Every run ends, each allocation closes; the first run's group takes a
    // new allocation in the same batch, after its old one closed.
    let mut second = Vec::new();
    for id in ids() {
        second.push(Write::PutAttempt(attempt(id, Some(300))));
        second.push(Write::PutStep(step(id, 0, StepState::Succeeded)));
        second.push(Write::PutAllocation(allocation(id, id, 0, Some(300))));
        if id != FIRST {
            second.push(Write::PutStep(step(id, 1, StepState::Succeeded)));
            second.push(Write::PutRun(RunRecord {
                finished_at: Some(Timestamp(300)),
                updated_at: Timestamp(300),
                reason: None,
                ..run_record(id, "acme", RunState::Succeeded)
            }));
        }
    }
    second.push(Write::PutAllocation(allocation(
        FIRST + RUNS,
        FIRST,
        0,
        None,
    )));
    store
        .commit(&second)
        .await
        .expect("a large batch of updates");
    let live = store.load_live().await.expect("load");
    assert_eq!(
        live.runs.iter().filter(|r| mine(&r.id)).count(),
        1,
        "only the first run is left"
    );
    let open: Vec<&AllocationRecord> = live
        .open_allocations
        .iter()
        .filter(|a| mine(&a.run_id))
        .collect();
    assert_eq!(open, vec![&allocation(FIRST + RUNS, FIRST, 0, None)]);
    let ended = store
        .run(RunId(FIRST + 2_500))
        .await
        .expect("read")
        .expect("a run");
    assert_eq!(ended.run.state, RunState::Succeeded);
    assert_eq!(ended.run.finished_at, Some(Timestamp(300)));
    assert_eq!(ended.attempts, vec![attempt(FIRST + 2_500, Some(300))]);
    assert_eq!(
        ended.allocations,
        vec![allocation(FIRST + 2_500, FIRST + 2_500, 0, Some(300))]
    );
    assert!(ended.steps.iter().all(|s| s.state == StepState::Succeeded));
}

async fn a_failed_commit_keeps_nothing_and_the_next_is_kept(
    store: &dyn Store,
    reopened: impl AsyncFnOnce() -> SqlStore,
) {
    let failing = [
        Write::PutRun(run_record(80_900, "acme", RunState::Admitted)),
        Write::PutAllocation(allocation(80_901, 80_900, 0, None)),
        Write::PutAllocation(allocation(80_902, 80_900, 0, None)),
    ];
    store
        .commit(&failing)
        .await
        .expect_err("two open allocations of one group are refused");
    assert!(
        store.run(RunId(80_900)).await.expect("read").is_none(),
        "nothing of a failed commit is kept"
    );
    store.probe_write().await.expect("the store writes again");
    store
        .commit(&[Write::PutRun(run_record(80_901, "acme", RunState::Queued))])
        .await
        .expect("the next commit");
    assert!(store.run(RunId(80_901)).await.expect("read").is_some());
    let again = reopened().await;
    assert!(
        again.run(RunId(80_901)).await.expect("read").is_some(),
        "the next commit is in the database"
    );
    assert!(again.run(RunId(80_900)).await.expect("read").is_none());
    again.close().await;
}

/// Measured attempts are kept once each; reports read their sums by tenant,
/// pool, pipeline and day within a window (scoped as asked), and a pipeline's
/// recent successful ones newest first.
async fn measured_usage(store: &dyn Store) {
    const DAY: i64 = 86_400_000;
    let measured =
        |attempt: i64, tenant: &str, pool: &str, ended: i64, succeeded: bool| MeasuredAttempt {
            attempt: AttemptId(attempt),
            run_id: RunId(attempt / 10),
            tenant: tenant.into(),
            pool: pool.into(),
            pipeline: "nightly".into(),
            step: "build".into(),
            succeeded,
            ended_at: Timestamp(ended),
            duration_ms: 2_000,
            requested: Resources::new(2000, 1024, 0),
            usage: Measured {
                cpu_micros: 1_000_000,
                memory_peak_bytes: 256 << 20,
                throttled_micros: 0,
            },
        };
    let first = measured(90_001, "acme", "linux", 10 * DAY + 5, true);
    store
        .commit(&[
            Write::PutMeasured(first.clone()),
            Write::PutMeasured(measured(90_002, "acme", "linux", 10 * DAY + 9, false)),
            Write::PutMeasured(measured(90_003, "acme", "gpu", 11 * DAY, true)),
            Write::PutMeasured(measured(90_004, "globex", "linux", 10 * DAY + 7, true)),
        ])
        .await
        .expect("commit measured");
    // Kept once: the same attempt again changes nothing.
    store
        .commit(&[Write::PutMeasured(first.clone())])
        .await
        .expect("again");
    let query = |tenant: Option<&str>, to: i64| UsageQuery {
        window: Window::new(10 * DAY, to),
        tenant: tenant.map(str::to_string),
        pool: None,
        grouping: Grouping::default(),
    };
    let mut sums = store
        .measured_sums(&query(Some("acme"), 12 * DAY))
        .await
        .expect("sums");
    sums.sort_by_key(|s| (s.day_ms, s.pool.clone()));
    assert_eq!(
        sums,
        vec![
            MeasuredSum {
                tenant: "acme".into(),
                pool: "linux".into(),
                pipeline: "nightly".into(),
                day_ms: 10 * DAY,
                cpu_micros: 2_000_000,
                memory_peak_mib_ms: 2 * 256 * 2_000,
            },
            MeasuredSum {
                tenant: "acme".into(),
                pool: "gpu".into(),
                pipeline: "nightly".into(),
                day_ms: 11 * DAY,
                cpu_micros: 1_000_000,
                memory_peak_mib_ms: 256 * 2_000,
            },
        ]
    );
    let within = store
        .measured_sums(&query(None, 11 * DAY))
        .await
        .expect("sums");
    assert_eq!(
        within.len(),
        2,
        "the end of the window is left out: {within:?}"
    );
    let recent = store
        .measured_attempts("acme", "nightly", Timestamp(0), 10)
        .await
        .expect("recent");
    let ids: Vec<i64> = recent.iter().map(|m| m.attempt.0).collect();
    assert_eq!(ids, vec![90_003, 90_001], "succeeded only, newest first");
    assert_eq!(recent[1], first);
}

/// Console sessions: opened, touched, and ended one at a time, by their
/// token, and when stale; only the hashes are kept, and they load with the
/// live state.
async fn console_sessions(store: &dyn Store) {
    let session = |id: &str, token: &str, at: i64| SessionRecord {
        id_hash: id.repeat(32),
        token_hash: token.repeat(32),
        created_at: Timestamp(at),
        last_used_at: Timestamp(at),
    };
    let loaded = async || store.load_live().await.expect("load").sessions;
    let (a, b, c, d) = (
        session("a1", "t1", 1_000),
        session("b2", "t1", 2_000),
        session("c3", "t2", 3_000),
        session("d4", "t2", 4_000),
    );
    store
        .commit(&[
            Write::Session(SessionWrite::Open(a.clone())),
            Write::Session(SessionWrite::Open(b.clone())),
            Write::Session(SessionWrite::Open(c.clone())),
            Write::Session(SessionWrite::Open(d.clone())),
            Write::Session(SessionWrite::Touch {
                id_hash: c.id_hash.clone(),
                at: Timestamp(9_000),
            }),
        ])
        .await
        .expect("open sessions");
    let touched = SessionRecord {
        last_used_at: Timestamp(9_000),
        ..c.clone()
    };
    assert_eq!(
        loaded().await,
        vec![a.clone(), b.clone(), touched.clone(), d.clone()]
    );
    // One id is never opened twice.
    assert!(
        store
            .commit(&[Write::Session(SessionWrite::Open(a.clone()))])
            .await
            .is_err()
    );
    store
        .commit(&[Write::Session(SessionWrite::End(a.id_hash.clone()))])
        .await
        .expect("logout");
    assert_eq!(loaded().await, vec![b.clone(), touched.clone(), d.clone()]);
    // A revoked token's sessions go with it; the others stay.
    store
        .commit(&[Write::Session(SessionWrite::EndOfToken("t1".repeat(32)))])
        .await
        .expect("revoke");
    assert_eq!(loaded().await, vec![touched.clone(), d.clone()]);
    // Stale: opened too long ago, or unused for too long (at the bounds, kept).
    let sweep = |opened_before: i64, used_before: i64| {
        [Write::Session(SessionWrite::EndStale {
            opened_before: Timestamp(opened_before),
            used_before: Timestamp(used_before),
        })]
    };
    store.commit(&sweep(3_000, 4_000)).await.expect("sweep");
    assert_eq!(loaded().await, vec![touched.clone(), d.clone()]);
    store.commit(&sweep(2_500, 4_500)).await.expect("sweep");
    assert_eq!(loaded().await, vec![touched.clone()]);
    store.commit(&sweep(3_001, 0)).await.expect("sweep");
    assert_eq!(loaded().await, vec![]);
}

/// Worker requests: put with the decision, updated as the provider answers
/// (the name, allocation and generation never change), deleted when done
/// with, and loaded with the live state by name.
async fn worker_requests(store: &dyn Store) {
    let request = |name: &str, allocation: i64| WorkerRequestRecord {
        name: name.into(),
        allocation_id: AllocationId(allocation),
        run_id: RunId(allocation * 10),
        group: 1,
        pool: "local".into(),
        reference: None,
        state: WorkerRequestState::Pending,
        deadline: Timestamp(30_000),
        attempts: 0,
        generation: 0,
        spawn_hash: "ab".repeat(32),
        created_at: Timestamp(1_000),
        updated_at: Timestamp(1_000),
    };
    let loaded = async || store.load_live().await.expect("load").worker_requests;
    let (b, a) = (request("local-2-0", 2), request("local-1-0", 1));
    store
        .commit(&[
            Write::PutWorkerRequest(b.clone()),
            Write::PutWorkerRequest(a.clone()),
        ])
        .await
        .expect("put requests");
    assert_eq!(loaded().await, vec![a.clone(), b.clone()]);
    let created = WorkerRequestRecord {
        reference: Some("local-1-0".into()),
        state: WorkerRequestState::Created,
        attempts: 1,
        deadline: Timestamp(40_000),
        spawn_hash: "cd".repeat(32),
        updated_at: Timestamp(2_000),
        ..a.clone()
    };
    store
        .commit(&[Write::PutWorkerRequest(created.clone())])
        .await
        .expect("update a request");
    assert_eq!(loaded().await, vec![created.clone(), b.clone()]);
    let failed = WorkerRequestRecord {
        state: WorkerRequestState::Failed,
        attempts: u32::MAX,
        ..b.clone()
    };
    store
        .commit(&[
            Write::PutWorkerRequest(failed.clone()),
            Write::DeleteWorkerRequest(created.name.clone()),
        ])
        .await
        .expect("fail one, delete the other");
    assert_eq!(loaded().await, vec![failed.clone()]);
    // Deleting what is not there is no error: a batch may close an
    // allocation whose request a registration already deleted.
    store
        .commit(&[
            Write::DeleteWorkerRequest(failed.name.clone()),
            Write::DeleteWorkerRequest(failed.name),
        ])
        .await
        .expect("delete twice");
    assert_eq!(loaded().await, vec![]);
}

#[tokio::test]
async fn conformance_sqlite() {
    let dir = std::env::temp_dir().join(format!("corral-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqlStore::open_sqlite(&dir).await.expect("open sqlite");
    assert_eq!(store.backend(), Backend::Sqlite);
    suite(&store).await;
    metering(&store).await;
    metered_reports(&store).await;
    rows_moved_within_one_batch(&store).await;
    lost_workers_are_pruned(&store).await;
    measured_usage(&store).await;
    console_sessions(&store).await;
    worker_requests(&store).await;
    a_failed_commit_keeps_nothing_and_the_next_is_kept(&store, async || {
        SqlStore::open_sqlite(&dir).await.expect("open beside")
    })
    .await;
    a_large_batch(&store).await;
    // Reopening finds the same data and does not re-run migrations.
    store.close().await;
    let again = SqlStore::open_sqlite(&dir).await.expect("reopen sqlite");
    assert!(again.run(RunId(1)).await.expect("read").is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn conformance_postgres() {
    let url = fresh_postgres_database("conformance").await;
    let store = SqlStore::connect(&url).await.expect("connect postgres");
    assert_eq!(store.backend(), Backend::Postgres);
    suite(&store).await;
    metering(&store).await;
    metered_reports(&store).await;
    rows_moved_within_one_batch(&store).await;
    lost_workers_are_pruned(&store).await;
    measured_usage(&store).await;
    console_sessions(&store).await;
    worker_requests(&store).await;
    a_failed_commit_keeps_nothing_and_the_next_is_kept(&store, async || {
        SqlStore::connect(&url).await.expect("connect beside")
    })
    .await;
    a_large_batch(&store).await;
}

#[tokio::test]
async fn sqlite_logs_kept_in_the_main_file_move_to_their_own() {
    let dir = std::env::temp_dir().join(format!("corral-logs-move-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let chunk = LogChunk {
        attempt_id: AttemptId(7),
        run_id: RunId(2),
        step_idx: 0,
        offset: 0,
        data: "kept\n".into(),
    };
    // Opened by its URL, a SQLite store keeps logs in its one file, as
    // stores did before logs had their own.
    let url = format!("sqlite://{}?mode=rwc", dir.join("corral.db").display());
    let old = SqlStore::connect(&url).await.expect("open by url");
    old.append_log(&chunk).await.expect("append");
    old.close().await;
    let store = SqlStore::open_sqlite(&dir).await.expect("open");
    assert_eq!(
        store.logs(RunId(2), None, None, 10).await.expect("logs"),
        vec![chunk.clone()]
    );
    store.close().await;
    let main = SqlStore::connect(&url).await.expect("open by url");
    assert!(
        main.logs(RunId(2), None, None, 10)
            .await
            .expect("logs")
            .is_empty(),
        "the main file no longer holds the moved chunks"
    );
    main.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- governance time series ----

mod history {
    use corral_core::clock::Timestamp;
    use corral_core::history::waits;
    use corral_core::history::{HOUR_MS, Rollup, Sample, Series, Source};
    use corral_core::resources::Dimension;
    use corral_store::testing::fresh_postgres_database;
    use corral_store::{
        AdmissionWait, HistoryPoint, HistoryQuery, SqlStore, Store, WaitCount, WaitQuery, Write,
    };

    const MINUTE: i64 = 60_000;
    /// An hour's start.
    const BASE: i64 = 480_000 * HOUR_MS;
    const CPU: Series = Series::PoolUtilization(Dimension::Cpu);
    const HELD: Series = Series::TenantHoldings(Dimension::Cpu);

    fn sample(series: Series, subject: &str, at: i64, value: f64) -> Sample {
        Sample {
            series,
            subject: subject.into(),
            at: Timestamp(at),
            value,
        }
    }

    fn point(subject: &str, at: i64, mean: f64, max: f64, samples: u64) -> HistoryPoint {
        HistoryPoint {
            series: CPU,
            subject: subject.into(),
            at: Timestamp(at),
            mean,
            max,
            samples,
        }
    }

    fn query(source: Source, bucket_ms: Option<i64>) -> HistoryQuery {
        HistoryQuery {
            series: vec![CPU],
            subjects: None,
            from: Timestamp(BASE),
            to: Timestamp(BASE + 10 * HOUR_MS),
            source,
            bucket_ms,
            limit: 100,
        }
    }

    async fn read(store: &dyn Store, q: &HistoryQuery) -> Vec<HistoryPoint> {
        store.history(q).await.expect("read history")
    }

    pub async fn suite(store: &dyn Store) {
        let raw = query(Source::Raw, None);
        assert!(read(store, &raw).await.is_empty());

        // Written in batches; a sample written again is kept once.
        let first = vec![
            sample(CPU, "a", BASE, 0.25),
            sample(CPU, "a", BASE + 20 * MINUTE, 0.5),
            sample(CPU, "a", BASE + 40 * MINUTE, 0.75),
            sample(CPU, "b", BASE + 10 * MINUTE, 1.0),
            sample(HELD, "t", BASE, 1500.0),
        ];
        store.append_samples(&first).await.expect("append");
        store.append_samples(&first[..2]).await.expect("again");
        store
            .append_samples(&[sample(CPU, "a", BASE + HOUR_MS + 5 * MINUTE, 1.0)])
            .await
            .expect("append");

        // Read by range (both ends included), series, subject and limit.
        assert_eq!(
            read(store, &raw).await,
            vec![
                point("a", BASE, 0.25, 0.25, 1),
                point("a", BASE + 20 * MINUTE, 0.5, 0.5, 1),
                point("a", BASE + 40 * MINUTE, 0.75, 0.75, 1),
                point("a", BASE + HOUR_MS + 5 * MINUTE, 1.0, 1.0, 1),
                point("b", BASE + 10 * MINUTE, 1.0, 1.0, 1),
            ]
        );
        let window = HistoryQuery {
            from: Timestamp(BASE + 20 * MINUTE),
            to: Timestamp(BASE + 40 * MINUTE),
            ..raw.clone()
        };
        let at: Vec<i64> = read(store, &window).await.iter().map(|p| p.at.0).collect();
        assert_eq!(at, vec![BASE + 20 * MINUTE, BASE + 40 * MINUTE]);
        let only_b = HistoryQuery {
            subjects: Some(vec!["b".into(), "nobody".into()]),
            ..raw.clone()
        };
        assert_eq!(
            read(store, &only_b).await,
            vec![point("b", BASE + 10 * MINUTE, 1.0, 1.0, 1)]
        );
        let none = HistoryQuery {
            subjects: Some(Vec::new()),
            ..raw.clone()
        };
        assert!(read(store, &none).await.is_empty());
        let held = read(
            store,
            &HistoryQuery {
                series: vec![HELD],
                ..raw.clone()
            },
        )
        .await;
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].series, held[0].mean), (HELD, 1500.0));
        let two = HistoryQuery {
            limit: 2,
            ..raw.clone()
        };
        assert_eq!(read(store, &two).await.len(), 2);

        // Raw samples merged into buckets aligned on the step.
        assert_eq!(
            read(store, &query(Source::Raw, Some(30 * MINUTE))).await,
            vec![
                point("a", BASE, 0.375, 0.5, 2),
                point("a", BASE + 30 * MINUTE, 0.75, 0.75, 1),
                point("a", BASE + HOUR_MS, 1.0, 1.0, 1),
                point("b", BASE, 1.0, 1.0, 1),
            ]
        );

        // Before any rollup, an hourly read merges the raw samples per hour.
        let hourly = query(Source::Hourly, None);
        let by_hour = vec![
            point("a", BASE, 0.5, 0.75, 3),
            point("a", BASE + HOUR_MS, 1.0, 1.0, 1),
            point("b", BASE, 1.0, 1.0, 1),
        ];
        assert_eq!(read(store, &hourly).await, by_hour);
        // The rollup aggregates whole hours, not the one in progress, which
        // an hourly read still takes from the raw samples, once.
        let rollup = Rollup {
            until: Timestamp(BASE + HOUR_MS),
            raw_before: Timestamp(0),
            hourly_before: Timestamp(0),
        };
        store.roll_up_history(&rollup).await.expect("rollup");
        assert_eq!(read(store, &hourly).await, by_hour);
        assert_eq!(
            read(store, &query(Source::Hourly, Some(2 * HOUR_MS))).await,
            vec![
                point("a", BASE, 0.625, 1.0, 4),
                point("b", BASE, 1.0, 1.0, 1)
            ]
        );
        let later = Rollup {
            until: Timestamp(BASE + 2 * HOUR_MS),
            ..rollup
        };
        store.roll_up_history(&later).await.expect("rollup");
        let rolled = vec![
            point("a", BASE, 0.5, 0.75, 3),
            point("a", BASE + HOUR_MS, 1.0, 1.0, 1),
            point("b", BASE, 1.0, 1.0, 1),
        ];
        assert_eq!(read(store, &hourly).await, rolled);
        // Again, as after a crash: nothing is counted twice.
        store.roll_up_history(&later).await.expect("rollup again");
        store.roll_up_history(&later).await.expect("rollup again");
        assert_eq!(read(store, &hourly).await, rolled);
        // A sample of the last hour rolled up that came late is counted once
        // the next rollup recomputes that hour.
        store
            .append_samples(&[sample(CPU, "a", BASE + HOUR_MS + 50 * MINUTE, 0.0)])
            .await
            .expect("late sample");
        store.roll_up_history(&later).await.expect("rollup");
        assert_eq!(
            read(store, &hourly).await,
            vec![
                point("a", BASE, 0.5, 0.75, 3),
                point("a", BASE + HOUR_MS, 0.5, 1.0, 2),
                point("b", BASE, 1.0, 1.0, 1),
            ]
        );
        // Aggregates merged into longer buckets: the mean weighted by samples.
        assert_eq!(
            read(store, &query(Source::Hourly, Some(2 * HOUR_MS))).await,
            vec![point("a", BASE, 0.5, 1.0, 5), point("b", BASE, 1.0, 1.0, 1)]
        );

        // Retention: raw samples and aggregates before their cut-offs go.
        let retention = Rollup {
            until: Timestamp(BASE + 2 * HOUR_MS),
            raw_before: Timestamp(BASE + HOUR_MS),
            hourly_before: Timestamp(BASE + HOUR_MS),
        };
        store.roll_up_history(&retention).await.expect("retention");
        let at: Vec<(String, i64)> = read(store, &raw)
            .await
            .into_iter()
            .map(|p| (p.subject, p.at.0))
            .collect();
        assert_eq!(
            at,
            vec![
                ("a".to_string(), BASE + HOUR_MS + 5 * MINUTE),
                ("a".to_string(), BASE + HOUR_MS + 50 * MINUTE),
            ]
        );
        assert!(
            read(
                store,
                &HistoryQuery {
                    series: vec![HELD],
                    ..raw.clone()
                }
            )
            .await
            .is_empty()
        );
        assert_eq!(
            read(store, &hourly).await,
            vec![point("a", BASE + HOUR_MS, 0.5, 1.0, 2)]
        );
        // And nothing changes when it runs again.
        store
            .roll_up_history(&retention)
            .await
            .expect("retention again");
        assert_eq!(
            read(store, &hourly).await,
            vec![point("a", BASE + HOUR_MS, 0.5, 1.0, 2)]
        );
    }

    /// Admission waits: counted per hour, tenant and wait bucket; read merged
    /// into longer buckets; pruned with the hourly history.
    pub async fn waits(store: &dyn Store) {
        let wait = |tenant: &str, at: i64, wait_ms: i64| {
            Write::CountWait(AdmissionWait {
                tenant: tenant.into(),
                at: Timestamp(at),
                wait_ms,
            })
        };
        store
            .commit(&[
                wait("a", BASE, 1_000),
                wait("a", BASE + 5 * MINUTE, 1_000),
                wait("a", BASE + 50 * MINUTE, 60_000),
                wait("a", BASE + HOUR_MS, 1_000),
                wait("b", BASE + 3 * HOUR_MS, 0),
            ])
            .await
            .expect("count waits");
        let count = |tenant: &str, at: i64, wait_ms: i64, runs: u64| WaitCount {
            tenant: tenant.into(),
            at: Timestamp(at),
            bucket: waits::bucket_of(wait_ms),
            runs,
        };
        let all = WaitQuery {
            tenants: None,
            from: Timestamp(BASE + 30 * MINUTE),
            to: Timestamp(BASE + 10 * HOUR_MS),
            bucket_ms: HOUR_MS,
            limit: 100_000,
        };
        // The range is widened to the hour `from` falls in.
        let read =
            |q: WaitQuery| async move { store.admission_waits(&q).await.expect("read waits") };
        assert_eq!(
            read(all.clone()).await,
            vec![
                count("a", BASE, 1_000, 2),
                count("a", BASE, 60_000, 1),
                count("a", BASE + HOUR_MS, 1_000, 1),
                count("b", BASE + 3 * HOUR_MS, 0, 1),
            ]
        );
        assert_eq!(
            read(WaitQuery {
                tenants: Some(vec!["a".into()]),
                bucket_ms: 2 * HOUR_MS,
                ..all.clone()
            })
            .await,
            vec![count("a", BASE, 1_000, 3), count("a", BASE, 60_000, 1)]
        );
        assert!(
            read(WaitQuery {
                tenants: Some(Vec::new()),
                ..all.clone()
            })
            .await
            .is_empty()
        );
        assert_eq!(
            read(WaitQuery {
                limit: 2,
                ..all.clone()
            })
            .await,
            vec![count("a", BASE, 1_000, 2), count("a", BASE, 60_000, 1)]
        );
        // Pruned with the hourly history.
        store
            .roll_up_history(&Rollup {
                until: Timestamp(BASE + 2 * HOUR_MS),
                raw_before: Timestamp(BASE + HOUR_MS),
                hourly_before: Timestamp(BASE + HOUR_MS),
            })
            .await
            .expect("prune");
        assert_eq!(
            read(all).await,
            vec![
                count("a", BASE + HOUR_MS, 1_000, 1),
                count("b", BASE + 3 * HOUR_MS, 0, 1),
            ]
        );
    }

    /// Reads merged into whole days take the days rolled up from the daily
    /// aggregates and the rest from the hours, and give what merging the
    /// hourly aggregates would; likewise the wait histograms.
    pub async fn daily(store: &dyn Store) {
        const DAY: i64 = 24 * HOUR_MS;
        let start = BASE - BASE % DAY + 100 * DAY;
        // Five days of a sample every 20 minutes for two pools, values varying.
        let samples: Vec<Sample> = (0..5 * 72)
            .flat_map(|i: i64| {
                ["a", "b"].map(|subject| {
                    let value = ((i * 37 + subject.len() as i64 * 11) % 17) as f64 / 16.0;
                    sample(CPU, subject, start + i * 20 * MINUTE, value)
                })
            })
            .collect();
        store.append_samples(&samples).await.expect("append");
        let waits: Vec<Write> = (0..5 * 24)
            .flat_map(|h: i64| {
                (0..(h % 4)).map(move |i| {
                    Write::CountWait(AdmissionWait {
                        tenant: if i % 2 == 0 { "t" } else { "u" }.into(),
                        at: Timestamp(start + h * HOUR_MS + i * MINUTE),
                        wait_ms: (h * 997 + i * 31) % 50_000,
                    })
                })
            })
            .collect();
        store.commit(&waits).await.expect("waits");
        // Rolled up until the middle of the fifth day: four whole days.
        let until = Timestamp(start + 4 * DAY + 7 * HOUR_MS);
        store
            .roll_up_history(&Rollup {
                until,
                raw_before: Timestamp(0),
                hourly_before: Timestamp(0),
            })
            .await
            .expect("rollup");
        // From mid-day and from a midnight; then again once retention has
        // cut the first two days (at a midnight, as `Rollup::at` does). The
        // hours after the rollup's cut-off are read from the raw samples:
        // every hour to the fifth day's end is there.
        compare_days(store, start, start + 5 * HOUR_MS, 2 * (5 * 24 - 5)).await;
        compare_days(store, start, start + DAY, 2 * (4 * 24)).await;
        store
            .roll_up_history(&Rollup {
                until,
                raw_before: Timestamp(0),
                hourly_before: Timestamp(start + 2 * DAY),
            })
            .await
            .expect("retention");
        compare_days(store, start, start + 5 * HOUR_MS, 2 * (3 * 24)).await;
    }

    /// Reads from `from` to the fifth day's end, merged into whole days, give
    /// what merging the hourly aggregates (`hours` of them) gives; the wait
    /// histograms likewise.
    async fn compare_days(store: &dyn Store, start: i64, from: i64, hours: usize) {
        const DAY: i64 = 24 * HOUR_MS;
        let range = HistoryQuery {
            series: vec![CPU],
            subjects: None,
            from: Timestamp(from),
            to: Timestamp(start + 5 * DAY),
            source: Source::Hourly,
            bucket_ms: None,
            limit: 10_000,
        };
        let hourly_points = read(store, &range).await;
        assert_eq!(hourly_points.len(), hours, "hourly aggregates in range");
        for bucket in [DAY, 2 * DAY] {
            let mut expected: Vec<HistoryPoint> = Vec::new();
            for h in &hourly_points {
                let at = Timestamp(h.at.0.div_euclid(bucket) * bucket);
                match expected.last_mut() {
                    Some(e) if e.subject == h.subject && e.at == at => {
                        e.mean = (e.mean * e.samples as f64 + h.mean * h.samples as f64)
                            / (e.samples + h.samples) as f64;
                        e.max = e.max.max(h.max);
                        e.samples += h.samples;
                    }
                    _ => expected.push(HistoryPoint { at, ..h.clone() }),
                }
            }
            let merged = read(
                store,
                &HistoryQuery {
                    bucket_ms: Some(bucket),
                    ..range.clone()
                },
            )
            .await;
            assert_eq!(merged.len(), expected.len(), "buckets of {bucket} ms");
            for (m, e) in merged.iter().zip(&expected) {
                assert_eq!(
                    (&m.subject, m.at, m.max, m.samples),
                    (&e.subject, e.at, e.max, e.samples)
                );
                assert!((m.mean - e.mean).abs() < 1e-9, "{m:?} against {e:?}");
            }
        }
        let hours = WaitQuery {
            tenants: None,
            from: Timestamp(from),
            to: Timestamp(start + 5 * DAY),
            bucket_ms: HOUR_MS,
            limit: 100_000,
        };
        let hourly = store.admission_waits(&hours).await.expect("hours");
        assert!(!hourly.is_empty());
        let mut expected: std::collections::BTreeMap<(String, i64, u32), u64> =
            std::collections::BTreeMap::new();
        for c in &hourly {
            *expected
                .entry((c.tenant.clone(), c.at.0.div_euclid(DAY) * DAY, c.bucket))
                .or_default() += c.runs;
        }
        let daily: std::collections::BTreeMap<(String, i64, u32), u64> = store
            .admission_waits(&WaitQuery {
                bucket_ms: DAY,
                ..hours
            })
            .await
            .expect("days")
            .into_iter()
            .map(|c| ((c.tenant, c.at.0, c.bucket), c.runs))
            .collect();
        assert_eq!(daily, expected);
    }

    #[tokio::test]
    async fn history_sqlite() {
        let dir = std::env::temp_dir().join(format!("corral-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqlStore::open_sqlite(&dir).await.expect("open sqlite");
        suite(&store).await;
        waits(&store).await;
        assert!(
            dir.join("history.db").exists(),
            "samples have their own file"
        );
        store.close().await;
        // Reopened, the history file is found as it was.
        let again = SqlStore::open_sqlite(&dir).await.expect("reopen");
        assert_eq!(read(&again, &query(Source::Hourly, None)).await.len(), 1);
        daily(&again).await;
        again.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        // Opened by its URL, a SQLite store keeps them in its one file.
        let dir = std::env::temp_dir().join(format!("corral-history-url-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.join("corral.db").display());
        let one_file = SqlStore::connect(&url).await.expect("open by url");
        suite(&one_file).await;
        one_file.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn history_postgres() {
        let url = fresh_postgres_database("history").await;
        let store = SqlStore::connect(&url).await.expect("connect postgres");
        suite(&store).await;
        waits(&store).await;
        daily(&store).await;
    }
}

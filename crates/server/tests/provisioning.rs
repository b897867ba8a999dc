//! Provisioning through a fake provider, with a manual clock and explicit
//! cycles: creates that fail or hang, deadlines, and what a restarted engine
//! reconciles with what the provider holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_api::{RegisterRequest, ResourcesView};
use corral_core::clock::{ManualClock, Timestamp};
use corral_core::controller::ReasonCode;
use corral_core::ids::{RunId, WorkerId};
use corral_core::manifest::{Document, parse_documents};
use corral_core::pool::Provider as PoolProvider;
use corral_core::run::RunState;
use corral_server::auth::Principal;
use corral_server::engine::{Engine, EngineConfig};
use corral_server::provider::fake::FakeProvider;
use corral_server::provider::{Problem, Providers};
use corral_store::{SqlStore, WorkerRequestRecord, WorkerRequestState};

const CLUSTER: &str = "kind: Pool\nname: box\ncapacity: {cpu: 4, memory: 8Gi}\nmax_workers: 2\n---\nkind: Tenant\nname: t\n";

fn admin() -> Principal {
    Principal {
        name: "test-admin".into(),
        role: corral_core::access::Role::Admin,
    }
}

/// A test's own directory, removed at the end unless the test failed.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

struct Harness {
    engine: Arc<Engine>,
    committer: tokio::task::JoinHandle<String>,
    clock: Arc<ManualClock>,
    fake: Arc<FakeProvider>,
    /// The provider of `kubernetes` pools: it only sizes auto pools here.
    kube: Arc<FakeProvider>,
    dir: Arc<Scratch>,
}

impl Harness {
    async fn new(label: &str) -> Harness {
        Harness::with(label, Arc::default()).await
    }

    /// A harness whose fake provider says it watches its workers, so that the
    /// engine reads what it says of them every second.
    async fn watching(label: &str) -> Harness {
        let fake = Arc::new(FakeProvider::default());
        fake.watch();
        Harness::with(label, fake).await
    }

    async fn with(label: &str, fake: Arc<FakeProvider>) -> Harness {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "corral-provisioning-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
        let h = Harness::load(Arc::new(Scratch(dir)), clock, fake, Arc::default()).await;
        for doc in parse_documents(CLUSTER).expect("yaml") {
            match doc {
                Document::Pool(p) => {
                    h.engine.put_pool(&admin(), p, false).await.expect("pool");
                }
                Document::Tenant(t) => {
                    h.engine
                        .put_tenant(&admin(), t, false)
                        .await
                        .expect("tenant");
                }
                Document::Pipeline(_) => unreachable!("no pipelines here"),
            }
        }
        h
    }

    /// An engine on `dir`'s store whose local pools are `fake`'s, with its
    /// committer and provisioning worker running, reconciled as at start.
    async fn load(
        dir: Arc<Scratch>,
        clock: Arc<ManualClock>,
        fake: Arc<FakeProvider>,
        kube: Arc<FakeProvider>,
    ) -> Harness {
        let store = Arc::new(SqlStore::open_sqlite(&dir.0).await.expect("store"));
        let providers = Providers::default()
            .with(PoolProvider::Local, fake.clone())
            .with(PoolProvider::Kubernetes, kube.clone());
        let engine = Arc::new(
            Engine::load(
                store,
                clock.clone(),
                EngineConfig {
                    capacity_refresh: Duration::from_secs(1),
                    ..EngineConfig::default()
                },
                providers,
            )
            .await
            .expect("engine"),
        );
        let committer = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.run_committer().await })
        };
        engine.start_provisioner();
        engine.reconcile().await.expect("reconcile");
        Harness {
            engine,
            committer,
            clock,
            fake,
            kube,
            dir,
        }
    }

    /// The engine of a restarted server on the same store and provider.
    async fn restart(&self) -> Harness {
        Harness::load(
            self.dir.clone(),
            self.clock.clone(),
            self.fake.clone(),
            self.kube.clone(),
        )
        .await
    }

    async fn submit(&self) -> RunId {
        let yaml = "kind: Pipeline\nname: job\ntenant: t\nsteps:\n  - {name: s, run: 'true', resources: {cpu: 1, memory: 1Gi}}\n";
        self.engine
            .submit(&admin(), yaml)
            .await
            .expect("submit")
            .run
            .id
    }

    async fn requests(&self) -> Vec<WorkerRequestRecord> {
        self.engine
            .read()
            .await
            .unbound
            .requests()
            .cloned()
            .collect()
    }

    /// Waits until the one worker request is in `state`, and returns it.
    async fn request_in(&self, state: WorkerRequestState) -> WorkerRequestRecord {
        for _ in 0..400 {
            let requests = self.requests().await;
            if let [r] = requests.as_slice()
                && r.state == state
            {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no request in state {state:?}: {:?}", self.requests().await);
    }

    /// Registers the agent of worker `name` with the credential its last
    /// create handed it.
    async fn register_created(&self, name: &str) -> WorkerId {
        let credential = self.fake.credential(name).expect("created");
        let caller = self
            .engine
            .credentials()
            .resolve(&credential, self.engine.now())
            .expect("the created agent's credential");
        let request = RegisterRequest {
            pool: "box".into(),
            name: name.into(),
            instance: Some("workers".into()),
            incarnation: Some(format!("{name}-process")),
            capacity: ResourcesView {
                cpu_millis: 1000,
                memory_mib: 1024,
                gpu: 0,
            },
            labels: Default::default(),
            confinement: None,
        };
        self.engine
            .register(&caller, request)
            .await
            .expect("register")
            .0
    }

    /// Stops the committer (and the provisioning worker): what is staged from
    /// now on stays uncommitted.
    async fn hold(self) -> Arc<Engine> {
        self.engine
            .background()
            .shutdown(Duration::from_secs(5))
            .await;
        self.committer.abort();
        assert!(self.committer.await.is_err_and(|e| e.is_cancelled()));
        self.engine
    }

    async fn bound_to(&self, run: RunId) -> Option<WorkerId> {
        self.engine.read().await.worker_of(run, 0)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_create_is_asked_again_under_its_name_and_its_agent_binds_the_allocation() {
    let h = Harness::new("failed").await;
    h.fake.fail_next(1);
    let run = h.submit().await;
    h.engine.cycle().await.expect("cycle");
    let failed = h.request_in(WorkerRequestState::Failed).await;
    assert_eq!(failed.name, "box-1-0");
    assert_eq!(failed.attempts, 1);
    h.engine.cycle().await.expect("cycle");
    let created = h.request_in(WorkerRequestState::Created).await;
    assert_eq!((created.name.as_str(), created.attempts), ("box-1-0", 2));
    assert_eq!(h.fake.creates(), vec!["box-1-0", "box-1-0"]);
    assert_ne!(
        created.spawn_hash, failed.spawn_hash,
        "each create hands a new credential"
    );
    let worker = h.register_created("box-1-0").await;
    assert_eq!(h.bound_to(run).await, Some(worker));
    assert!(h.requests().await.is_empty(), "done with once registered");
    assert_eq!(h.fake.deletes(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_hanging_past_the_deadline_is_deleted_and_the_allocation_asked_for_again() {
    let h = Harness::new("hang").await;
    h.fake.hang(true);
    let run = h.submit().await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(
        h.engine.read().await.runs[&run].record.state,
        RunState::Provisioning
    );
    // The create hangs; an agent's registration does not wait for it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.fake.creates().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let request = RegisterRequest {
            pool: "box".into(),
            name: "static-looking".into(),
            instance: Some("elsewhere".into()),
            incarnation: None,
            capacity: ResourcesView {
                cpu_millis: 500,
                memory_mib: 512,
                gpu: 0,
            },
            labels: Default::default(),
            confinement: None,
        };
        h.engine
            .register(&corral_server::auth::Caller::Token(admin()), request)
            .await
            .expect("register while a create hangs");
    })
    .await
    .expect("registration answers while the provider hangs");
    let first = h.request_in(WorkerRequestState::Pending).await;
    // Before its deadline, it is waited for.
    h.clock.advance(29_000);
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.requests().await, vec![first.clone()]);
    h.clock.advance(1_000);
    h.fake.hang(false);
    h.engine.cycle().await.expect("cycle");
    let second = h.request_in(WorkerRequestState::Created).await;
    assert_eq!(second.name, "box-1-1", "a new request, under a new name");
    assert_eq!(second.allocation_id, first.allocation_id);
    for _ in 0..400 {
        if !h.fake.deletes().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        h.fake.deletes(),
        vec!["box-1-0"],
        "the late worker is deleted"
    );
    // Its credential is dead with it.
    assert!(
        h.engine
            .credentials()
            .resolve(
                &h.fake.credential("box-1-0").expect("asked"),
                h.engine.now()
            )
            .is_err()
    );
    let worker = h.register_created("box-1-1").await;
    assert_eq!(h.bound_to(run).await, Some(worker));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_waits_for_a_created_worker_creates_a_missing_one_again_and_deletes_orphans() {
    let h = Harness::new("restart").await;
    let first = h.submit().await;
    let second = h.submit().await;
    h.engine.cycle().await.expect("cycle");
    for _ in 0..400 {
        let requests = h.requests().await;
        if requests.len() == 2
            && requests
                .iter()
                .all(|r| r.state == WorkerRequestState::Created)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(h.fake.workers(), vec!["box-1-0", "box-2-0"]);
    // The server dies; one worker dies with it, and one that nobody asked
    // for is left behind.
    h.fake.remove("box-2-0");
    h.fake.insert("box-77-0");
    let restarted = h.restart().await;
    let h = restarted;
    for _ in 0..400 {
        if h.fake.deletes() == vec!["box-77-0"] && h.fake.creates().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(h.fake.deletes(), vec!["box-77-0"], "the orphan is deleted");
    // The first two creates ran at once, in either order.
    let mut creates = h.fake.creates();
    creates[..2].sort();
    assert_eq!(
        creates,
        vec!["box-1-0", "box-2-0", "box-2-0"],
        "only the missing worker is created again, under its name"
    );
    assert_eq!(h.fake.workers(), vec!["box-1-0", "box-2-0"]);
    // The worker created before the restart registers with the credential
    // it was started with; the one created again with its new one.
    let a = h.register_created("box-1-0").await;
    let b = h.register_created("box-2-0").await;
    assert_eq!(h.bound_to(first).await, Some(a));
    assert_eq!(h.bound_to(second).await, Some(b));
    assert!(h.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_request_s_credential_is_refused_before_the_drop_commits() {
    let h = Harness::new("dropped").await;
    h.submit().await;
    h.engine.cycle().await.expect("cycle");
    let request = h.request_in(WorkerRequestState::Created).await;
    let created = h
        .engine
        .credentials()
        .resolve(
            &h.fake.credential(&request.name).expect("created"),
            h.engine.now(),
        )
        .expect("the created agent's credential");
    let idle = |name: &str| RegisterRequest {
        pool: "box".into(),
        name: name.into(),
        instance: Some(format!("{name}-host")),
        incarnation: Some(format!("{name}-process")),
        capacity: ResourcesView {
            cpu_millis: 1000,
            memory_mib: 1024,
            gpu: 0,
        },
        labels: Default::default(),
        confinement: None,
    };
    let engine = h.hold().await;
    // An operator's agent that fits registers: its batch binds the allocation
    // to it and drops the request, and waits for a commit that does not come.
    let operated = {
        let engine = engine.clone();
        let request = idle("operated");
        tokio::spawn(async move {
            engine
                .register(&corral_server::auth::Caller::Token(admin()), request)
                .await
        })
    };
    for _ in 0..400 {
        if engine.read().await.unbound.requests().next().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        engine.read().await.unbound.requests().count(),
        0,
        "the request is dropped in memory"
    );
    // The created agent registers in that window: it is refused at once,
    // rather than joining the pool as an idle worker that its request's
    // delete would kill under a run.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        engine.register(&created, idle(&request.name)),
    )
    .await
    .expect("answered without waiting for the commit");
    assert!(
        matches!(
            refused,
            Err(corral_server::engine::EngineError::Forbidden(_))
        ),
        "{refused:?}"
    );
    assert!(!operated.is_finished());
    operated.abort();
}

/// Waits until `check` holds, polling; panics with `what` after ten seconds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_provider_says_of_a_worker_is_its_run_s_reason_and_a_worker_that_cannot_start_is_replaced_until_the_third()
 {
    let h = Harness::watching("problems").await;
    let run = h.submit().await;
    h.engine.cycle().await.expect("cycle");
    let first = h.request_in(WorkerRequestState::Created).await;
    let reason = async || {
        h.engine.read().await.runs[&run]
            .record
            .reason
            .as_ref()
            .map(|r| (r.code, r.message.clone()))
    };
    let unschedulable = "pod box-1-0: 0/3 nodes are available: 3 Insufficient cpu.";
    h.fake.set_problem(
        &first.name,
        Some(Problem {
            message: unschedulable.into(),
            fatal: false,
        }),
    );
    until("the run says why its worker is not up", async || {
        reason().await == Some((ReasonCode::WorkerPending, unschedulable.into()))
    })
    .await;
    assert_eq!(
        h.engine.read().await.runs[&run].record.state,
        RunState::Provisioning
    );
    // Past its deadline it is waited for, not replaced: another pod would
    // wait for the same nodes.
    h.clock.advance(60_000);
    h.engine.cycle().await.expect("cycle");
    assert_eq!(
        h.requests()
            .await
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>(),
        vec![first.name.clone()]
    );
    // Scheduled at last: the reason goes, and its agent registers.
    h.fake.set_problem(&first.name, None);
    until("the reason is gone", async || reason().await.is_none()).await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.requests().await.len(), 1, "not replaced once going");

    // A worker that will never come up is replaced at once, under a new name,
    // and the third that does not fails the run with the last one's reason.
    for (generation, name) in ["box-1-0", "box-1-1", "box-1-2"].into_iter().enumerate() {
        until("the request of this generation is created", async || {
            h.requests()
                .await
                .first()
                .is_some_and(|r| r.name == name && r.state == WorkerRequestState::Created)
        })
        .await;
        h.fake.set_problem(
            name,
            Some(Problem {
                message: format!("pod {name}: ErrImagePull: image \"nope:1\" not found"),
                fatal: true,
            }),
        );
        until("the worker is deleted", async || {
            h.fake.deletes().iter().any(|d| d == name)
        })
        .await;
        assert_eq!(h.fake.deletes().len(), generation + 1);
    }
    until("the run fails", async || {
        h.engine
            .read()
            .await
            .runs
            .get(&run)
            .is_none_or(|r| r.record.state.is_terminal())
    })
    .await;
    let stored = h
        .engine
        .store()
        .run(run)
        .await
        .expect("read")
        .expect("the run");
    assert_eq!(stored.run.state, RunState::Failed);
    let why = stored.run.reason.expect("a reason");
    assert_eq!(why.code, ReasonCode::WorkerPending);
    assert!(
        why.message.contains("none of the 3 workers")
            && why.message.contains("pod box-1-2: ErrImagePull"),
        "{}",
        why.message
    );
    assert!(h.requests().await.is_empty());
    assert_eq!(h.fake.creates(), vec!["box-1-0", "box-1-1", "box-1-2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_neither_asked_for_nor_registered_is_deleted() {
    let h = Harness::watching("unneeded").await;
    h.fake.insert("box-99-0");
    until("the stray worker is deleted", async || {
        h.fake.deletes() == vec!["box-99-0".to_string()]
    })
    .await;
    // A worker that registered is needed while it lives.
    let run = h.submit().await;
    h.engine.cycle().await.expect("cycle");
    let request = h.request_in(WorkerRequestState::Created).await;
    let worker = h.register_created(&request.name).await;
    assert_eq!(h.bound_to(run).await, Some(worker));
    // Two more rounds of the watch: neither deletes it.
    let seen = h.fake.lists();
    until("two more rounds of the watch", async || {
        h.fake.lists() >= seen + 2
    })
    .await;
    assert_eq!(h.fake.deletes(), vec!["box-99-0".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_pool_offers_what_its_provider_finds_and_a_run_larger_waits_for_it() {
    let h = Harness::new("auto").await;
    let gib = |g: u64| g * 1024;
    h.kube
        .set_capacity(Some(corral_core::resources::Resources::new(
            2000,
            gib(4),
            0,
        )));
    let pool = "kind: Pool\nname: kube\nprovider: kubernetes\ncapacity: auto\nkubernetes: {namespace: workers, image: 'corral:test'}\n";
    for doc in parse_documents(pool).expect("yaml") {
        let Document::Pool(p) = doc else {
            unreachable!("a pool")
        };
        h.engine.put_pool(&admin(), p, false).await.expect("pool");
    }
    let offered = async || {
        h.engine
            .read_model()
            .view()
            .snapshot
            .pools
            .get("kube")
            .map(|p| p.capacity)
    };
    until("the pool is sized", async || {
        offered().await == Some(corral_core::resources::Resources::new(2000, gib(4), 0))
    })
    .await;
    // Larger than the pool is now: it waits (nodes may come), never rejected.
    let yaml = "kind: Pipeline\nname: big\ntenant: t\nsteps:\n  - {name: s, run: 'true', pool: kube, resources: {cpu: 4, memory: 1Gi}}\n";
    let run = h
        .engine
        .submit(&admin(), yaml)
        .await
        .expect("submit")
        .run
        .id;
    h.engine.cycle().await.expect("cycle");
    let waiting = h.engine.read().await.runs[&run].record.clone();
    assert_eq!(waiting.state, RunState::Queued);
    let reason = h
        .engine
        .read_model()
        .view()
        .waiting
        .values()
        .next()
        .map(|r| r.code);
    assert_eq!(reason, Some(ReasonCode::PoolFull));
    h.kube
        .set_capacity(Some(corral_core::resources::Resources::new(
            8000,
            gib(16),
            0,
        )));
    until("the pool is sized again", async || {
        offered().await == Some(corral_core::resources::Resources::new(8000, gib(16), 0))
    })
    .await;
    h.engine.cycle().await.expect("cycle");
    assert_ne!(
        h.engine.read().await.runs[&run].record.state,
        RunState::Queued,
        "admitted on the capacity found"
    );
}

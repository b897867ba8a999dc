//! The engine driven by hand: a manual clock and explicit controller cycles, so
//! each test says exactly which cycle does what.

use std::path::PathBuf;
use std::sync::Arc;

use corral_api::{PollRequest, RegisterRequest, ReportRequest, ResourcesView};
use corral_core::clock::{Clock, ManualClock, Timestamp};
use corral_core::controller::{Policy, ReasonCode};
use corral_core::ids::{AttemptId, RunId, WorkerId};
use corral_core::manifest::{Document, parse_documents};
use corral_core::run::{AttemptState, RunState};
use corral_core::selector::PlacementPolicy;
use corral_server::auth::{self, Caller, Principal};
use corral_server::engine::{Engine, EngineConfig};
use corral_server::provider::{LocalProvider, Providers};
use corral_store::SqlStore;

/// The principal the tests act as.
fn admin() -> Principal {
    Principal {
        name: "test-admin".into(),
        role: corral_core::access::Role::Admin,
    }
}

struct Harness {
    engine: Arc<Engine>,
    clock: Arc<ManualClock>,
    /// Shared with the harness of a restart on the same store.
    dir: Arc<Scratch>,
}

/// A test's own directory, removed when the last harness on it goes, unless
/// the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "corral-engine-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Harness {
    /// An engine on a fresh SQLite store whose local provider spawns nothing
    /// that lasts (`/bin/true`), with `yaml`'s pools and tenants.
    async fn new(label: &str, yaml: &str) -> Harness {
        Harness::with_config(label, yaml, EngineConfig::default()).await
    }

    async fn with_config(label: &str, yaml: &str, config: EngineConfig) -> Harness {
        let dir = Arc::new(Scratch::new(label));
        let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
        let harness = Harness::load(dir, clock, config).await;
        harness.apply(yaml).await;
        harness
    }

    /// A new engine on the same store, as after a restart of the server.
    async fn restart(&self) -> Harness {
        Harness::load(
            self.dir.clone(),
            self.clock.clone(),
            EngineConfig::default(),
        )
        .await
    }

    async fn load(dir: Arc<Scratch>, clock: Arc<ManualClock>, config: EngineConfig) -> Harness {
        let store = Arc::new(SqlStore::open_sqlite(&dir.0).await.expect("store"));
        let provider = LocalProvider::new("/bin/true".into(), dir.0.join("workers"), dir.0.clone());
        let engine = Arc::new(
            Engine::load(
                store,
                clock.clone(),
                config,
                Providers::standard(Arc::new(provider)),
            )
            .await
            .expect("engine"),
        );
        let committer = engine.clone();
        tokio::spawn(async move { committer.run_committer().await });
        Harness { engine, clock, dir }
    }

    async fn apply(&self, yaml: &str) {
        for doc in parse_documents(yaml).expect("yaml") {
            match doc {
                Document::Pool(p) => {
                    self.engine
                        .put_pool(&admin(), p, false)
                        .await
                        .expect("pool");
                }
                Document::Tenant(t) => {
                    self.engine
                        .put_tenant(&admin(), t, false)
                        .await
                        .expect("tenant");
                }
                Document::Pipeline(_) => panic!("pipelines are submitted"),
            }
        }
    }

    async fn submit(&self, name: &str, tenant: &str, cpu: u32, pool: &str) -> RunId {
        let yaml = format!(
            "kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n  - {{name: s, run: 'true', pool: {pool}, retries: 1, resources: {{cpu: {cpu}, memory: 1Gi}}}}\n"
        );
        self.engine
            .submit(&admin(), &yaml)
            .await
            .expect("submit")
            .run
            .id
    }

    async fn state_of(&self, run: RunId) -> (RunState, Option<ReasonCode>, String) {
        let state = self.engine.read().await;
        match state.runs.get(&run) {
            Some(r) => {
                // The reason as readers see it: from the committed read model.
                let reason = self
                    .engine
                    .read_model()
                    .positions()
                    .place(run, self.clock.now())
                    .and_then(|p| p.reason);
                (
                    r.record.state,
                    reason.as_ref().map(|x| x.code),
                    reason.map(|x| x.message).unwrap_or_default(),
                )
            }
            None => {
                drop(state);
                let detail = self
                    .engine
                    .store()
                    .run(run)
                    .await
                    .expect("read")
                    .expect("exists");
                (detail.run.state, None, String::new())
            }
        }
    }

    async fn register(&self, pool: &str, name: &str, cpu: u64) -> WorkerId {
        self.register_from(pool, name, cpu, &format!("{name}-dir"))
            .await
            .expect("register")
    }

    async fn register_from(
        &self,
        pool: &str,
        name: &str,
        cpu: u64,
        instance: &str,
    ) -> Result<WorkerId, corral_server::engine::EngineError> {
        self.register_as(pool, name, cpu, instance, None)
            .await
            .map(|(id, _secret)| id)
    }

    /// Registers as the agent process `incarnation` from `instance`.
    async fn register_as(
        &self,
        pool: &str,
        name: &str,
        cpu: u64,
        instance: &str,
        incarnation: Option<&str>,
    ) -> Result<(WorkerId, String), corral_server::engine::EngineError> {
        self.engine
            .register(
                &Caller::Token(admin()),
                RegisterRequest {
                    instance: Some(instance.into()),
                    incarnation: incarnation.map(String::from),
                    capacity: ResourcesView {
                        cpu_millis: cpu * 1000,
                        memory_mib: 8192,
                        gpu: 0,
                    },
                    ..registration(pool, name, None)
                },
            )
            .await
    }

    async fn heartbeat(&self, worker: WorkerId) {
        self.engine
            .poll(
                worker,
                PollRequest {
                    running: Vec::new(),
                    wait_ms: 0,
                },
            )
            .await
            .expect("poll");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_frees_room_for_the_next_run_in_one_cycle() {
    let h = Harness::new(
        "cancel",
        "kind: Pool\nname: tiny\ncapacity: {cpu: 1, memory: 4Gi}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let first = h.submit("first", "t", 1, "tiny").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(first).await.0, RunState::Provisioning);
    let second = h.submit("second", "t", 1, "tiny").await;
    h.engine.cycle().await.expect("cycle");
    let (state, code, message) = h.state_of(second).await;
    assert_eq!(state, RunState::Queued);
    assert_eq!(code, Some(ReasonCode::PoolFull));
    assert_eq!(message, "pool tiny: cpu 1/1 in use, run needs 1");

    h.engine.cancel(&admin(), first).await.expect("cancel");
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(first).await.0, RunState::Cancelled);
    assert_eq!(h.state_of(second).await.0, RunState::Provisioning);
}

#[tokio::test(flavor = "multi_thread")]
async fn shrinking_a_pool_never_kills_and_admissions_wait_until_it_fits() {
    let h = Harness::new(
        "shrink",
        "kind: Pool\nname: p\ncapacity: {cpu: 4, memory: 8Gi}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let big = h.submit("big", "t", 3, "p").await;
    h.engine.cycle().await.expect("cycle");
    h.apply("kind: Pool\nname: p\ncapacity: {cpu: 2, memory: 8Gi}\n")
        .await;
    let small = h.submit("small", "t", 1, "p").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(
        h.state_of(big).await.0,
        RunState::Provisioning,
        "not killed"
    );
    let (state, code, message) = h.state_of(small).await;
    assert_eq!(
        (state, code),
        (RunState::Queued, Some(ReasonCode::PoolFull))
    );
    assert_eq!(message, "pool p: cpu 3/2 in use, run needs 1");
    h.engine.cancel(&admin(), big).await.expect("cancel");
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(small).await.0, RunState::Provisioning);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_static_agent_releases_its_allocation_and_the_step_moves_to_another() {
    let h = Harness::new("static", METAL).await;
    let run = h.submit("job", "t", 2, "metal").await;
    h.engine.cycle().await.expect("cycle");
    let (state, code, _) = h.state_of(run).await;
    assert_eq!(
        (state, code),
        (RunState::Queued, Some(ReasonCode::NoAgents))
    );

    let a = h.register("metal", "a", 2).await;
    let b = h.register("metal", "b", 2).await;
    {
        let state = h.engine.read().await;
        let snapshot = state.snapshot(h.clock.now());
        assert_eq!(snapshot.pools["metal"].capacity.cpu_millis, 4000);
    }
    h.engine.cycle().await.expect("cycle");
    let first_worker = {
        let state = h.engine.read().await;
        let live = &state.runs[&run];
        assert_eq!(live.record.state, RunState::Running);
        assert_eq!(live.allocations.len(), 1);
        live.allocations[0].worker_id.expect("bound to an agent")
    };
    let (lost, survivor) = if first_worker == a { (a, b) } else { (b, a) };

    // The survivor keeps polling; the other goes silent past the timeout.
    h.clock.advance(31_000);
    h.heartbeat(survivor).await;
    h.engine.cycle().await.expect("cycle: the agent is lost");
    h.engine
        .cycle()
        .await
        .expect("cycle: the group is placed again");
    let state = h.engine.read().await;
    let snapshot = state.snapshot(h.clock.now());
    assert_eq!(
        snapshot.pools["metal"].capacity.cpu_millis, 2000,
        "the lost agent's capacity left the pool"
    );
    let live = &state.runs[&run];
    assert_eq!(live.allocations.len(), 1, "one open allocation per group");
    assert_eq!(live.allocations[0].worker_id, Some(survivor));
    let attempts: Vec<(AttemptState, WorkerId)> = live
        .attempts
        .iter()
        .map(|x| (x.state, x.worker_id))
        .collect();
    assert_eq!(
        attempts,
        vec![
            (AttemptState::Lost, lost),
            (AttemptState::Running, survivor)
        ]
    );
    // What polls look at: the survivor's one running attempt, nothing of the
    // lost agent's.
    let running = live.attempts[1].id;
    let indexed: Vec<(WorkerId, Vec<AttemptId>)> = state
        .running
        .iter()
        .map(|(w, attempts)| (*w, attempts.iter().copied().collect()))
        .collect();
    assert_eq!(indexed, vec![(survivor, vec![running])]);
    drop(state);
    let history = h
        .engine
        .store()
        .allocations(&corral_store::AllocationFilter {
            run: Some(run),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].worker_id, Some(lost));
    assert!(
        history[0].closed_at.is_some(),
        "the lost agent's allocation is released"
    );
    assert_eq!(history[1].closed_at, None);

    // Once the step has succeeded and the run ended, no poll looks at it.
    h.engine
        .report(
            survivor,
            running,
            ReportRequest {
                outcome: "succeeded".into(),
                exit_code: Some(0),
                error: None,
                usage: None,
            },
        )
        .await
        .expect("report");
    assert_eq!(h.state_of(run).await.0, RunState::Succeeded);
    assert!(h.engine.read().await.running.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn priorities_are_named_classes_or_numbers() {
    let h = Harness::new(
        "priority",
        "kind: Pool\nname: p\ncapacity: {cpu: 1, memory: 4Gi}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let job = |name: &str, priority: &str| {
        format!(
            "kind: Pipeline\nname: {name}\ntenant: t\npriority: {priority}\nsteps:\n  - {{name: s, run: 'true', resources: {{cpu: 1, memory: 1Gi}}}}\n"
        )
    };
    let low = h
        .engine
        .submit(&admin(), &job("low", "low"))
        .await
        .expect("low");
    let high = h
        .engine
        .submit(&admin(), &job("high", "high"))
        .await
        .expect("high");
    let seven = h
        .engine
        .submit(&admin(), &job("seven", "7"))
        .await
        .expect("number");
    assert_eq!(
        (low.run.priority, high.run.priority, seven.run.priority),
        (-100, 100, 7)
    );
    let err = h
        .engine
        .submit(&admin(), &job("bad", "urgent"))
        .await
        .expect_err("unknown class");
    let corral_server::engine::EngineError::Invalid(field) = err else {
        panic!("a field error: {err}");
    };
    assert_eq!(field.first().path, "priority");
    // The one free cpu goes to the highest priority, though it came later.
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(high.run.id).await.0, RunState::Provisioning);
    let (state, code, _) = h.state_of(low.run.id).await;
    assert_eq!(
        (state, code),
        (RunState::Queued, Some(ReasonCode::PoolFull))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_pool_admits_nothing_and_retires_its_idle_local_workers() {
    let h = Harness::new(
        "disabled",
        "kind: Pool\nname: p\ncapacity: {cpu: 4, memory: 8Gi}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let warm = h.register("p", "warm", 1).await;
    h.engine.cycle().await.expect("cycle");
    assert!(
        h.engine.read().await.workers.contains_key(&warm),
        "kept warm"
    );
    h.apply("kind: Pool\nname: p\ncapacity: {cpu: 4, memory: 8Gi}\nstate: disabled\n")
        .await;
    let run = h.submit("job", "t", 1, "p").await;
    h.engine.cycle().await.expect("cycle");
    assert!(
        !h.engine.read().await.workers.contains_key(&warm),
        "retired"
    );
    let (state, code, message) = h.state_of(run).await;
    assert_eq!(
        (state, code),
        (RunState::Queued, Some(ReasonCode::PoolDisabled))
    );
    assert_eq!(message, "pool p is disabled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_price_change_steers_cheapest_placement_from_the_next_cycle() {
    let pools = |a_price: &str| {
        format!(
            "kind: Pool\nname: a\ncapacity: {{cpu: 8, memory: 8Gi}}\nlabels: {{tier: batch}}\nprice: {{cpu_hour: {a_price}}}\n---\nkind: Pool\nname: b\ncapacity: {{cpu: 8, memory: 8Gi}}\nlabels: {{tier: batch}}\nprice: {{cpu_hour: 0.10}}\n"
        )
    };
    let config = EngineConfig {
        policy: Policy {
            placement: PlacementPolicy::Cheapest,
            ..Policy::default()
        },
        ..EngineConfig::default()
    };
    let h = Harness::with_config(
        "price",
        &format!("{}---\nkind: Tenant\nname: t\n", pools("0.05")),
        config,
    )
    .await;
    let placed_on = |run: RunId| {
        let engine = h.engine.clone();
        async move {
            let state = engine.read().await;
            state.runs[&run].allocations[0].pool.clone()
        }
    };
    let first = h.submit("first", "t", 1, "{labels: {tier: batch}}").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(placed_on(first).await, "a");
    h.apply(&pools("0.20")).await;
    let second = h.submit("second", "t", 1, "{labels: {tier: batch}}").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(placed_on(second).await, "b");
}

const METAL: &str = "kind: Pool\nname: metal\nprovider: static\n---\nkind: Tenant\nname: t\n";

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restarted_replaces_itself_and_a_namesake_is_refused() {
    let h = Harness::new("namesake", METAL).await;
    let first = h.register("metal", "box", 2).await;
    let err = h
        .register_from("metal", "box", 2, "another-dir")
        .await
        .expect_err("a live namesake");
    assert!(
        err.to_string().contains("already live in pool metal"),
        "{err}"
    );
    let again = h.register("metal", "box", 2).await;
    let state = h.engine.read().await;
    assert!(
        !state.workers.contains_key(&first),
        "the earlier self is gone"
    );
    assert!(state.workers.contains_key(&again));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_registration_keeps_its_worker_and_what_it_runs() {
    let h = Harness::new("retried", METAL).await;
    let (first, secret) = h
        .register_as("metal", "box", 2, "box-dir", Some("process-1"))
        .await
        .expect("register");
    let run = h.submit("job", "t", 1, "metal").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(run).await.0, RunState::Running);
    // The same process sends its registration again (it missed the answer).
    let (again, new_secret) = h
        .register_as("metal", "box", 2, "box-dir", Some("process-1"))
        .await
        .expect("a retry");
    assert_eq!(again, first, "the same worker");
    assert_ne!(new_secret, secret, "with a secret the agent hears now");
    h.engine.cycle().await.expect("cycle");
    assert_eq!(
        h.state_of(run).await.0,
        RunState::Running,
        "its step runs on"
    );
    assert!(h.engine.credentials().worker_holds(first, &new_secret));
    assert!(!h.engine.credentials().worker_holds(first, &secret));
    // A new process from the same directory is a restart: the step is lost.
    let (restarted, _) = h
        .register_as("metal", "box", 2, "box-dir", Some("process-2"))
        .await
        .expect("a restart");
    assert_ne!(restarted, first);
    let state = h.engine.read().await;
    assert!(
        !state.workers.contains_key(&first),
        "the earlier self is gone"
    );
}

const LOCAL: &str =
    "kind: Pool\nname: box\ncapacity: {cpu: 2, memory: 2Gi}\n---\nkind: Tenant\nname: t\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_spawned_agent_retrying_its_registration_finds_its_worker_even_after_a_restart() {
    let h = Harness::new("spawn-retry", LOCAL).await;
    let credential = auth::new_spawn_secret();
    let now = h.engine.now();
    h.engine.credentials().grant_spawn(
        auth::hash(&credential),
        auth::SpawnGrant {
            pool: "box".into(),
            name: "box-1".into(),
            expires_at: now.plus_millis(60_000),
        },
        now,
    );
    let request = || RegisterRequest {
        pool: "box".into(),
        name: "box-1".into(),
        instance: Some("workers".into()),
        incarnation: Some("process-1".into()),
        capacity: ResourcesView {
            cpu_millis: 1000,
            memory_mib: 1024,
            gpu: 0,
        },
        labels: Default::default(),
        confinement: None,
    };
    let caller = h
        .engine
        .credentials()
        .resolve(&credential, now)
        .expect("a spawn credential");
    let (worker, secret) = h
        .engine
        .register(&caller, request())
        .await
        .expect("register");
    assert_ne!(
        secret, credential,
        "the worker keeps a secret of its own, not the credential it was started with"
    );
    let mut secrets = vec![secret];
    // The answer was lost; the agent sends the same registration again, to
    // this server and then to its next incarnation.
    let restarted = h.restart().await;
    for h in [&h, &restarted] {
        let caller = h
            .engine
            .credentials()
            .resolve(&credential, h.engine.now())
            .expect("the used credential retries the registration");
        assert_eq!(caller, Caller::Registering(worker));
        let (again, secret) = h
            .engine
            .register(&caller, request())
            .await
            .expect("a retry");
        assert_eq!(again, worker);
        assert!(!secrets.contains(&secret), "a new secret each time");
        secrets.push(secret);
    }
    let h = restarted;
    let newest = secrets.last().expect("a secret").clone();
    assert_eq!(
        h.engine.credentials().resolve(&newest, h.engine.now()),
        Ok(Caller::Worker(worker))
    );
    // Another process cannot use it to register.
    let caller = Caller::Registering(worker);
    let mut other = request();
    other.incarnation = Some("process-2".into());
    h.engine
        .register(&caller, other)
        .await
        .expect_err("a used credential registers nothing else");
    // Once the worker has polled, the credential is no use at all.
    h.heartbeat(worker).await;
    assert!(
        h.engine
            .credentials()
            .resolve(&credential, h.engine.now())
            .is_err(),
        "the spawn credential is dead after the first poll"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_declares_at_most_its_pools_max_agent() {
    let h = Harness::new(
        "max-agent",
        "kind: Pool\nname: metal\nprovider: static\nmax_agent: {cpu: 4}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let err = h
        .register_from("metal", "big", 8, "big-dir")
        .await
        .expect_err("more cpu than the pool allows");
    let text = err.to_string();
    assert!(
        text.contains("capacity.cpu") && text.contains("pool metal's max_agent"),
        "{text}"
    );
    h.register("metal", "fits", 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_a_static_agent_gets_work_only_once_it_polls() {
    let h = Harness::new("restart-agents", METAL).await;
    let agent = h.register("metal", "box", 2).await;
    let h = h.restart().await;
    let run = h.submit("job", "t", 1, "metal").await;
    h.engine.cycle().await.expect("cycle");
    let (state, code, _) = h.state_of(run).await;
    assert_eq!(
        (state, code),
        (RunState::Queued, Some(ReasonCode::NoAgents))
    );
    h.heartbeat(agent).await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(run).await.0, RunState::Running);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_lost_group_can_no_longer_be_placed_fails() {
    let h = Harness::new("gone", METAL).await;
    h.register("metal", "box", 2).await;
    let run = h.submit("job", "t", 1, "metal").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(run).await.0, RunState::Running);
    h.clock.advance(31_000);
    h.engine.cycle().await.expect("cycle: the agent is lost");
    h.engine
        .delete_pool(&admin(), "metal")
        .await
        .expect("nothing is allocated there");
    h.engine.cycle().await.expect("cycle");
    let detail = h
        .engine
        .store()
        .run(run)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(detail.run.state, RunState::Failed);
    let reason = detail.run.reason.expect("a reason");
    assert_eq!(reason.code, ReasonCode::NoMatchingPool);
}

fn tenant_principal(tenant: &str) -> Principal {
    Principal {
        name: format!("{tenant}-token"),
        role: corral_core::access::Role::Tenant {
            tenant: tenant.into(),
        },
    }
}

#[tokio::test]
async fn tokens_are_checked_against_the_catalog_survive_a_restart_and_the_last_admin_stays() {
    use corral_core::access::Role;
    use corral_server::engine::EngineError;
    let h = Harness::new(
        "tokens",
        "kind: Pool\nname: metal\nprovider: static\n---\nkind: Pool\nname: box\ncapacity: {cpu: 1, memory: 1Gi}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let machine = corral_core::resources::Resources::new(1000, 1024, 0);
    // A secret that cannot be kept is not committed: the next start makes one.
    let lost = h
        .engine
        .bootstrap(machine, |_| Err(std::io::Error::other("disk full")))
        .await;
    assert!(matches!(lost, Err(EngineError::KeepSecret(_))));
    assert!(h.engine.credentials().tokens().is_empty());
    let mut kept = String::new();
    let first = h
        .engine
        .bootstrap(machine, |secret| {
            kept = secret.to_string();
            Ok(())
        })
        .await
        .expect("bootstrap");
    let admin_secret = first
        .admin_secret
        .expect("an admin token on an empty store");
    let field = |e: EngineError| match e {
        EngineError::Invalid(f) => f.first().path.clone(),
        other => panic!("expected a field error, got {other}"),
    };
    let unknown = Role::Tenant {
        tenant: "nobody".into(),
    };
    let e = h.engine.create_token(&admin(), "x", unknown, None).await;
    assert_eq!(field(e.expect_err("unknown tenant")), "tenant");
    let local_agent = Role::Agent { pool: "box".into() };
    let e = h
        .engine
        .create_token(&admin(), "x", local_agent, None)
        .await;
    assert_eq!(field(e.expect_err("not a static pool")), "pool");

    let agent = Role::Agent {
        pool: "metal".into(),
    };
    let (_, old) = h
        .engine
        .create_token(&admin(), "ci", agent.clone(), None)
        .await
        .expect("create");
    let again = h
        .engine
        .create_token(&admin(), "ci", agent.clone(), None)
        .await;
    assert!(matches!(again, Err(EngineError::Conflict(_))));
    h.engine.revoke_token(&admin(), "ci").await.expect("revoke");
    let (_, new) = h
        .engine
        .create_token(&admin(), "ci", agent, None)
        .await
        .expect("a revoked name is taken again");
    let now = h.clock.now();
    assert!(h.engine.credentials().resolve(&old, now).is_err());
    assert!(h.engine.credentials().resolve(&new, now).is_ok());
    let last = h.engine.revoke_token(&admin(), "admin").await;
    assert!(matches!(last, Err(EngineError::Conflict(m)) if m.contains("last admin token")));

    // A restarted engine knows the same tokens, by their hashes.
    let h = h.restart().await;
    let now = h.clock.now();
    assert!(matches!(
        h.engine.credentials().resolve(&admin_secret, now),
        Ok(Caller::Token(p)) if p.name == "admin" && p.role == Role::Admin
    ));
    assert!(h.engine.credentials().resolve(&old, now).is_err());
    assert!(h.engine.credentials().resolve(&new, now).is_ok());
    let again = h
        .engine
        .bootstrap(machine, |_| {
            panic!("a live admin token exists: nothing to keep")
        })
        .await
        .expect("bootstrap");
    assert!(
        again.admin_secret.is_none(),
        "only a store without a live admin gets one"
    );
}

#[tokio::test]
async fn a_tenant_token_submits_and_cancels_for_its_tenant_only_and_cancels_are_audited() {
    use corral_server::engine::EngineError;
    let h = Harness::new(
        "tenant-scope",
        "kind: Pool\nname: p\ncapacity: {cpu: 1, memory: 1Gi}\nstate: draining\n---\nkind: Tenant\nname: a\n---\nkind: Tenant\nname: b\n",
    )
    .await;
    let (a, b) = (tenant_principal("a"), tenant_principal("b"));
    let job = "kind: Pipeline\nname: j\nsteps:\n  - {name: s, run: 'true', pool: p}\n";
    let submitted = h.engine.submit(&a, job).await.expect("submit");
    assert_eq!(
        h.engine.store().run(submitted.run.id).await.expect("read"),
        Some(submitted.clone()),
        "the answer is the run as stored, steps and all"
    );
    assert_eq!(submitted.steps.len(), 1);
    let run = submitted.run;
    assert_eq!(
        run.tenant, "a",
        "a pipeline without tenant gets the token's"
    );
    let named_b = job.replace("name: j\n", "name: j\ntenant: b\n");
    assert!(matches!(
        h.engine.submit(&a, &named_b).await,
        Err(EngineError::Forbidden(_))
    ));
    // Another tenant's run is not found, exactly as one that does not exist.
    let missing = RunId(run.id.0 + 1_000);
    let unknown = h.engine.cancel(&b, missing).await.expect_err("no such run");
    let hidden = h.engine.cancel(&b, run.id).await.expect_err("hidden");
    assert!(matches!(hidden, EngineError::NotFound { what: "run", .. }));
    assert_eq!(
        hidden.to_string().replace(&run.id.to_string(), "ID"),
        unknown.to_string().replace(&missing.to_string(), "ID")
    );
    h.engine.cancel(&a, run.id).await.expect("its own");
    // An ended run of another tenant is hidden too, not reported ended.
    assert!(matches!(
        h.engine.cancel(&b, run.id).await,
        Err(EngineError::NotFound { what: "run", .. })
    ));
    let audit = h
        .engine
        .store()
        .audit(&corral_store::AuditFilter {
            kind: Some("run".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].who, "a-token");
    assert_eq!(audit[0].name, run.id.to_string());
    assert_eq!(
        audit[0].after,
        Some(serde_json::json!({"state": "cancelled"}))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allocation_is_metered_in_the_batch_that_closes_it() {
    let h = Harness::new(
        "metered",
        "kind: Pool\nname: paid\ncapacity: {cpu: 4, memory: 8Gi}\nprice: {cpu_hour: 0.5}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let run = h.submit("hourly", "t", 2, "paid").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(h.state_of(run).await.0, RunState::Provisioning);
    h.clock.advance(3_600_000);
    // The run ends in the very batch that closes its allocation.
    h.engine.cancel(&admin(), run).await.expect("cancel");
    assert_eq!(h.state_of(run).await.0, RunState::Cancelled);
    // The month's spend counts it at once (and fair share its usage).
    let spent = {
        let state = h.engine.read().await;
        state.spend.month_to_date("t", &[], h.clock.now())
    };
    assert_eq!(spent.to_string(), "1.00");
    let store = h.engine.store();
    assert!(
        store.unmetered(10).await.expect("unmetered").is_empty(),
        "nothing is left for the backlog"
    );
    let day = corral_core::metering::day_start(h.clock.now().0);
    let sums = store
        .slot_sums(&corral_store::UsageQuery {
            window: corral_core::metering::Window::new(day - 86_400_000, day + 86_400_000),
            tenant: None,
            pool: None,
            grouping: corral_core::metering::Grouping {
                tenant: true,
                pipeline: true,
                ..Default::default()
            },
        })
        .await
        .expect("sums");
    assert_eq!(sums.len(), 1, "{sums:?}");
    assert_eq!(
        (sums[0].tenant.as_str(), sums[0].pipeline.as_str()),
        ("t", "hourly")
    );
    // 2 cores for an hour at 0.50 a core-hour (memory is free).
    assert_eq!(sums[0].usage.cost.to_string(), "1.00");
    assert_eq!(sums[0].usage.time.cpu_core_seconds(), 7200.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn allocations_closed_before_metering_are_metered_in_the_background() {
    let h = Harness::new(
        "backlog",
        "kind: Pool\nname: paid\ncapacity: {cpu: 4, memory: 8Gi}\nprice: {cpu_hour: 0.5}\n---\nkind: Tenant\nname: t\n",
    )
    .await;
    let run = h.submit("old", "t", 1, "paid").await;
    let store = h.engine.store().clone();
    // As an older version left it: closed, not metered (and after the pool's
    // price was set, when the pool was made).
    h.clock.advance(3 * 3_600_000);
    let now = h.clock.now().0;
    let old = |id: i64| {
        corral_store::Write::PutAllocation(corral_store::AllocationRecord {
            id: corral_core::ids::AllocationId(1_000 + id),
            run_id: run,
            group: id as u32,
            tenant: "t".into(),
            pool: "paid".into(),
            resources: corral_core::resources::Resources::new(1000, 1024, 0),
            worker_id: None,
            opened_at: Timestamp(now - 7_200_000),
            closed_at: Some(Timestamp(now - 3_600_000)),
        })
    };
    store
        .commit(&(0..450).map(old).collect::<Vec<_>>())
        .await
        .expect("old allocations");
    assert_eq!(store.unmetered(1_000).await.expect("backlog").len(), 450);
    let backlog = store.clone();
    h.engine.background().start(
        "metering-backlog",
        false,
        corral_server::background::Restart::WithBackoff,
        move || corral_server::MeterBacklog::new(backlog.clone()),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !store.unmetered(1).await.expect("backlog").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog is metered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    h.engine
        .background()
        .shutdown(std::time::Duration::from_secs(10))
        .await;
    let day = corral_core::metering::day_start(now);
    let sums = store
        .slot_sums(&corral_store::UsageQuery {
            window: corral_core::metering::Window::new(day - 86_400_000, day + 86_400_000),
            tenant: Some("t".into()),
            pool: None,
            grouping: corral_core::metering::Grouping::default(),
        })
        .await
        .expect("sums");
    // 450 core-hours at 0.50, each metered once.
    assert_eq!(sums.len(), 1);
    assert_eq!(sums[0].usage.cost.to_string(), "225.00");
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_workers_are_pruned_after_the_retention_and_what_they_ran_still_reads() {
    let h = Harness::new("prune", METAL).await;
    let run = h.submit("job", "t", 2, "metal").await;
    let lost = h.register("metal", "a", 2).await;
    h.engine.cycle().await.expect("cycle: placed on a");
    // `a` restarts twice from its work directory: each start loses the one
    // before; `b` stays.
    h.register("metal", "a", 2).await;
    let live_a = h.register("metal", "a", 2).await;
    let b = h.register("metal", "b", 2).await;
    let retention = std::time::Duration::from_secs(3600);
    let prune = || corral_server::prune::prune_lost_workers(&h.engine, retention);
    assert_eq!(
        prune().await.expect("prune"),
        0,
        "lost within the retention"
    );
    h.clock.advance(3_600_001);
    h.heartbeat(live_a).await;
    h.heartbeat(b).await;
    assert_eq!(prune().await.expect("prune"), 2, "both earlier selves of a");
    assert_eq!(prune().await.expect("prune"), 0, "nothing more");
    // What the lost worker ran still names it.
    let detail = h
        .engine
        .store()
        .run(run)
        .await
        .expect("read")
        .expect("the run");
    assert!(
        detail.attempts.iter().any(|a| a.worker_id == lost),
        "{:?}",
        detail.attempts
    );
    // Ids go on from the highest, after a restart too.
    let h = h.restart().await;
    let c = h.register("metal", "c", 2).await;
    assert!(c.0 > b.0, "{c:?} after {b:?}");
}

/// A registration into `pool` as `caller`, confining its steps as `confinement`.
fn registration(
    pool: &str,
    name: &str,
    confinement: Option<corral_api::Confinement>,
) -> RegisterRequest {
    RegisterRequest {
        pool: pool.into(),
        name: name.into(),
        instance: Some(format!("{name}-dir")),
        incarnation: None,
        capacity: ResourcesView {
            cpu_millis: 2000,
            memory_mib: 8192,
            gpu: 0,
        },
        labels: Default::default(),
        confinement,
    }
}

/// The one running attempt of `run`, with its worker.
async fn running_attempt(h: &Harness, run: RunId) -> (AttemptId, WorkerId) {
    let state = h.engine.read().await;
    let live = &state.runs[&run];
    let running: Vec<(AttemptId, WorkerId)> = live
        .attempts
        .iter()
        .filter(|a| a.state == AttemptState::Running)
        .map(|a| (a.id, a.worker_id))
        .collect();
    assert_eq!(running.len(), 1, "{:?}", live.attempts);
    running[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn what_an_attempt_measured_is_kept_on_it_and_in_the_usage_facts() {
    let h = Harness::new("measured", METAL).await;
    let worker = h.register("metal", "a", 2).await;
    h.heartbeat(worker).await;
    let run = h.submit("measured-job", "t", 1, "metal").await;
    h.engine.cycle().await.expect("cycle");
    let (attempt, on) = running_attempt(&h, run).await;
    assert_eq!(on, worker);
    h.clock.advance(4_000);
    let succeeded = |cpu_seconds: f64| ReportRequest {
        outcome: "succeeded".into(),
        exit_code: Some(0),
        error: None,
        usage: Some(corral_api::AttemptUsage {
            cpu_seconds,
            memory_peak_bytes: 300 << 20,
            throttled_seconds: 0.5,
        }),
    };
    h.engine
        .report(worker, attempt, succeeded(1.25))
        .await
        .expect("report");
    assert_eq!(h.state_of(run).await.0, RunState::Succeeded);
    let detail = h
        .engine
        .store()
        .run(run)
        .await
        .expect("read")
        .expect("the run");
    assert_eq!(
        detail.attempts[0].usage,
        Some(corral_store::Measured {
            cpu_micros: 1_250_000,
            memory_peak_bytes: 300 << 20,
            throttled_micros: 500_000,
        })
    );
    let recent = h
        .engine
        .store()
        .measured_attempts("t", "measured-job", Timestamp(0), 10)
        .await
        .expect("measured");
    assert_eq!(recent.len(), 1);
    let m = &recent[0];
    assert_eq!(
        (m.pool.as_str(), m.step.as_str(), m.duration_ms, m.succeeded),
        ("metal", "s", 4_000, true)
    );
    assert_eq!(m.requested.cpu_millis, 1000);
    // A report past the bounds of a measure is refused, naming the field.
    let err = h
        .engine
        .report(worker, attempt, succeeded(f64::NAN))
        .await
        .expect_err("not a number of seconds");
    assert!(err.to_string().contains("usage.cpu_seconds"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_an_agent_token_ends_its_workers_and_their_steps_run_elsewhere() {
    let h = Harness::new("revoke-agent", METAL).await;
    let (_, leaked) = h
        .engine
        .create_token(
            &admin(),
            "leaked",
            corral_core::access::Role::Agent {
                pool: "metal".into(),
            },
            None,
        )
        .await
        .expect("token");
    let caller = h
        .engine
        .credentials()
        .resolve(&leaked, h.clock.now())
        .expect("an agent token");
    let (rogue, rogue_secret) = h
        .engine
        .register(&caller, registration("metal", "rogue", None))
        .await
        .expect("register");
    h.heartbeat(rogue).await;
    let run = h.submit("job", "t", 1, "metal").await;
    h.engine.cycle().await.expect("cycle");
    assert_eq!(running_attempt(&h, run).await.1, rogue);
    let honest = h.register("metal", "honest", 2).await;
    h.heartbeat(honest).await;

    h.engine
        .revoke_token(&admin(), "leaked")
        .await
        .expect("revoke");
    assert!(
        h.engine
            .credentials()
            .resolve(&rogue_secret, h.clock.now())
            .is_err(),
        "the worker's secret stops working at once"
    );
    h.engine.cycle().await.expect("cycle");
    assert_eq!(
        running_attempt(&h, run).await.1,
        honest,
        "the step runs again on another agent"
    );
    let state = h.engine.read().await;
    assert!(!state.workers.contains_key(&rogue), "the worker is gone");
    let first = &state.runs[&run].attempts[0];
    assert_eq!((first.worker_id, first.state), (rogue, AttemptState::Lost));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_that_requires_confinement_refuses_agents_that_cannot_confine() {
    let h = Harness::new(
        "require-confinement",
        "kind: Pool\nname: metal\nprovider: static\nrequire_confinement: true\n",
    )
    .await;
    let confined = |namespaces: bool, cgroup: &str| {
        Some(corral_api::Confinement {
            namespaces,
            cgroup: cgroup.into(),
            user: "uids 2000000000-2000065535".into(),
        })
    };
    for (name, confinement) in [
        ("silent", None),
        ("no-cgroup", confined(true, "none")),
        ("no-namespaces", confined(false, "v1")),
    ] {
        let err = h
            .engine
            .register(
                &Caller::Token(admin()),
                registration("metal", name, confinement),
            )
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("requires confinement"),
            "{name}: {err}"
        );
    }
    let (worker, _) = h
        .engine
        .register(
            &Caller::Token(admin()),
            registration("metal", "confined", confined(true, "v1")),
        )
        .await
        .expect("a confined agent joins");
    let state = h.engine.read().await;
    let agents = state.agents_of("metal");
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].worker_id, worker.0);
    assert_eq!(agents[0].confinement, confined(true, "v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_is_applied_only_where_its_provider_is_and_as_the_provider_checks_it() {
    use corral_core::error::FieldError;
    use corral_core::pool::{PoolSpec, Provider as PoolProvider};
    use corral_server::engine::EngineError;
    use corral_server::provider::fake::FakeProvider;

    let refused = |e: EngineError| match e {
        EngineError::Invalid(problems) => problems
            .all()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        other => panic!("not refused as invalid: {other}"),
    };
    let pool = PoolSpec::parse(serde_json::json!({
        "name": "k8s", "provider": "kubernetes", "capacity": "auto",
        "kubernetes": {"namespace": "ci", "image": "corral:1"},
    }))
    .expect("a kubernetes pool");
    let h = Harness::new("kubernetes-pool", "").await;
    let err = h
        .engine
        .put_pool(&admin(), pool.clone(), false)
        .await
        .expect_err("no provider");
    assert_eq!(
        refused(err),
        [
            "provider: this server has no kubernetes provider: it was built without the kubernetes feature, or found no cluster (--kubeconfig, $KUBECONFIG, or in-cluster)"
        ]
    );
    let err = h
        .engine
        .apply(&admin(), vec![Document::Pool(pool.clone())])
        .await
        .expect_err("no provider, applied");
    assert_eq!(refused(err).len(), 1);

    let scratch = Scratch::new("kubernetes-pool-provided");
    let store = Arc::new(SqlStore::open_sqlite(&scratch.0).await.expect("store"));
    let local = LocalProvider::new(
        "/bin/true".into(),
        scratch.0.join("workers"),
        scratch.0.clone(),
    );
    let kubernetes = Arc::new(FakeProvider::default());
    let providers =
        Providers::standard(Arc::new(local)).with(PoolProvider::Kubernetes, kubernetes.clone());
    let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
    let engine = Arc::new(
        Engine::load(store, clock, EngineConfig::default(), providers)
            .await
            .expect("engine"),
    );
    let committer = engine.clone();
    tokio::spawn(async move { committer.run_committer().await });
    kubernetes.refuse_pools(vec![FieldError::new(
        "kubernetes.pod_template.spec.x",
        "unknown field",
    )]);
    let err = engine
        .put_pool(&admin(), pool.clone(), false)
        .await
        .expect_err("checked");
    assert_eq!(
        refused(err),
        ["kubernetes.pod_template.spec.x: unknown field"]
    );
    kubernetes.refuse_pools(Vec::new());
    engine
        .put_pool(&admin(), pool, false)
        .await
        .expect("applied where its provider is");
}

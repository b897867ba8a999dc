//! The committed read model: readers see a write only once the store has it.
//! The commit is held by stopping the committer while it waits for work, and
//! let go by starting it again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_core::clock::{ManualClock, Timestamp};
use corral_core::manifest::{Document, parse_documents};
use corral_server::auth::Principal;
use corral_server::engine::{Engine, EngineConfig};
use corral_server::provider::{LocalProvider, Providers};
use corral_store::SqlStore;
use tokio::task::JoinHandle;

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

fn scratch(label: &str) -> Scratch {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "corral-read-model-{label}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    Scratch(dir)
}

async fn engine(dir: &Scratch) -> Arc<Engine> {
    let store = Arc::new(SqlStore::open_sqlite(&dir.0).await.expect("store"));
    let provider = LocalProvider::new("/bin/true".into(), dir.0.join("workers"), dir.0.clone());
    let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
    Arc::new(
        Engine::load(
            store,
            clock,
            EngineConfig::default(),
            Providers::standard(Arc::new(provider)),
        )
        .await
        .expect("engine"),
    )
}

fn committer(engine: &Arc<Engine>) -> JoinHandle<String> {
    let engine = engine.clone();
    tokio::spawn(async move { engine.run_committer().await })
}

/// Stops the committer (a background worker) while it waits for a batch:
/// what is staged from now on stays uncommitted.
async fn hold(engine: &Engine, committer: JoinHandle<String>) {
    engine.background().shutdown(Duration::from_secs(5)).await;
    committer.abort();
    assert!(committer.await.is_err_and(|e| e.is_cancelled()));
}

const CLUSTER: &str = "kind: Pool\nname: small\nprovider: local\ncapacity: {cpu: 4, memory: 8Gi}\n---\nkind: Tenant\nname: acme\n";

fn pipeline(name: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\ntenant: acme\nsteps:\n  - {{name: s, run: 'true', pool: small, resources: {{cpu: 1, memory: 1Gi}}}}\n"
    )
}

async fn apply(engine: &Engine, yaml: &str) {
    for doc in parse_documents(yaml).expect("yaml") {
        match doc {
            Document::Pool(p) => {
                engine.put_pool(&admin(), p, false).await.expect("pool");
            }
            Document::Tenant(t) => {
                engine.put_tenant(&admin(), t, false).await.expect("tenant");
            }
            Document::Pipeline(_) => panic!("pipelines are submitted"),
        }
    }
}

/// Waits until the engine has staged batch `seq` (its writes are applied in
/// memory and queued for the store).
async fn staged(engine: &Engine, seq: u64) {
    for _ in 0..500 {
        if engine.read().await.seq >= seq {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("batch {seq} was never staged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_sees_a_write_only_once_it_is_committed() {
    let dir = scratch("held");
    let engine = engine(&dir).await;
    let running = committer(&engine);
    apply(&engine, CLUSTER).await;
    let model = engine.read_model().clone();
    let before = model.view();
    assert!(before.pools.contains_key("small"), "applied and committed");
    hold(&engine, running).await;

    // A submit stages its run, and waits for a commit that does not come.
    let submitting = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.submit(&admin(), &pipeline("p")).await })
    };
    staged(&engine, before.seq + 1).await;
    let queued = {
        let state = engine.read().await;
        *state
            .runs
            .keys()
            .next()
            .expect("the run is staged in memory")
    };
    let view = model.view();
    assert_eq!(view.seq, before.seq, "nothing new is published");
    assert!(view.run(queued).is_none(), "the staged run is not seen");
    assert!(view.queued.is_empty());
    assert_eq!(model.positions().len(None), 0, "nor is it in the queue");
    assert!(!submitting.is_finished());

    // A cycle admits it in memory: no reader sees the allocation either.
    let cycling = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.cycle().await })
    };
    staged(&engine, before.seq + 2).await;
    assert_eq!(
        engine.read().await.usage.on_pool("small"),
        1,
        "the admission is staged"
    );
    let view = model.view();
    assert_eq!(view.seq, before.seq);
    assert_eq!(
        view.snapshot.pools["small"].used,
        corral_core::resources::Resources::ZERO
    );
    assert_eq!(view.snapshot.tenants["acme"].runs, 0);

    // Once the store has them, both are seen together with the answer.
    let _running = committer(&engine);
    let detail = submitting.await.expect("joined").expect("submitted");
    assert_eq!(detail.run.id, queued);
    cycling.await.expect("joined").expect("cycle");
    let view = model.view();
    assert!(view.seq >= before.seq + 2);
    assert!(view.run(queued).is_some());
    assert_eq!(view.snapshot.tenants["acme"].runs, 1);
    assert_eq!(view.snapshot.pools["small"].used.cpu_millis, 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_positions_follow_the_committed_queue_and_say_what_they_are_as_of() {
    let dir = scratch("positions");
    let engine = engine(&dir).await;
    let _running = committer(&engine);
    apply(
        &engine,
        "kind: Pool\nname: small\nprovider: local\ncapacity: {cpu: 1, memory: 8Gi}\n---\nkind: Tenant\nname: acme\n",
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            engine
                .submit(&admin(), &pipeline(&format!("p{i}")))
                .await
                .expect("submit")
                .run
                .id,
        );
    }
    let model = engine.read_model();
    let positions = model.positions();
    assert_eq!(positions.len(None), 3);
    assert_eq!(positions.len(Some("acme")), 3);
    assert_eq!(positions.seq(), model.view().seq);
    let now = engine.now();
    let places: Vec<_> = positions.page(None, 0, 10, now);
    assert_eq!(
        places.iter().map(|p| p.run).collect::<Vec<_>>(),
        ids,
        "first in, first placed"
    );
    assert_eq!(places[1].position, 2);
    assert_eq!(positions.page(None, 1, 1, now)[0].run, ids[1]);
    assert_eq!(
        positions.place(ids[2], now).map(|p| p.as_of),
        Some(positions.seq())
    );

    // One is admitted (the pool takes one): two wait, first the older.
    engine.cycle().await.expect("cycle");
    let positions = model.positions();
    assert_eq!(positions.len(None), 2);
    assert!(positions.place(ids[0], now).is_none());
    assert_eq!(positions.place(ids[1], now).map(|p| p.position), Some(1));
    let reason = positions.place(ids[2], now).and_then(|p| p.reason);
    assert!(
        reason.is_some(),
        "the cycle's reason is kept with its class"
    );
}

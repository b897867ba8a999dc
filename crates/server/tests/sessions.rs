//! Console sessions through the engine, on a manual clock: a session ends
//! when idle past its timeout, at the end of its lifetime however much it is
//! used, when its token expires or is revoked, and at logout; and it outlives
//! a restart of the server.

use std::path::Path;
use std::sync::Arc;

use corral_core::access::Role;
use corral_core::clock::{Clock, ManualClock, Timestamp};
use corral_server::auth::{self, Principal};
use corral_server::engine::{Engine, EngineConfig};
use corral_server::provider::{LocalProvider, Providers};
use corral_store::SqlStore;

async fn engine(dir: &Path, clock: Arc<ManualClock>) -> Arc<Engine> {
    let store = Arc::new(SqlStore::open_sqlite(dir).await.expect("store"));
    let provider = LocalProvider::new("/bin/true".into(), dir.join("workers"), dir.to_path_buf());
    let engine = Arc::new(
        Engine::load(
            store,
            clock,
            EngineConfig::default(),
            Providers::standard(Arc::new(provider)),
        )
        .await
        .expect("engine"),
    );
    let committer = engine.clone();
    tokio::spawn(async move { committer.run_committer().await });
    engine
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_idle_at_their_lifetime_with_their_token_and_at_logout_not_at_a_restart() {
    let dir = std::env::temp_dir().join(format!("corral-sessions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000)));
    let engine = engine(&dir, clock.clone()).await;
    let admin = Principal {
        name: "test-admin".into(),
        role: Role::Admin,
    };
    let (_, secret) = engine
        .create_token(&admin, "ops", Role::Viewer, None)
        .await
        .expect("a token");
    let limits = engine.sessions().limits();
    let open = async |secret: &str| {
        auth::hash(
            &engine
                .open_session(&auth::hash(secret))
                .await
                .expect("a session"),
        )
    };
    let live = |id_hash: &str| {
        engine
            .session_principal(id_hash)
            .is_some_and(|p| p.name == "ops")
    };
    let used = |id_hash: &str| {
        engine.sessions().touch(id_hash, clock.now());
    };

    // Idle: each use counts the timeout again.
    let idle = open(&secret).await;
    clock.advance(limits.idle_ms - 1);
    assert!(live(&idle));
    used(&idle);
    clock.advance(limits.idle_ms - 1);
    assert!(live(&idle), "a use keeps it");
    clock.advance(1);
    assert!(!live(&idle), "idle past its timeout");

    // Its lifetime ends it, however much it is used.
    let busy = open(&secret).await;
    let step = limits.idle_ms / 2;
    let mut elapsed = 0;
    while elapsed + step < limits.lifetime_ms {
        clock.advance(step);
        elapsed += step;
        assert!(live(&busy), "used, {elapsed} ms after its login");
        used(&busy);
    }
    clock.advance(limits.lifetime_ms - elapsed);
    assert!(!live(&busy), "past its lifetime");

    // Its token's expiry ends it.
    let (_, brief) = engine
        .create_token(
            &admin,
            "brief",
            Role::Viewer,
            Some(clock.now().plus_millis(60_000)),
        )
        .await
        .expect("a token");
    let short = open(&brief).await;
    assert!(engine.session_principal(&short).is_some());
    clock.advance(60_000);
    assert!(
        engine.session_principal(&short).is_none(),
        "its token expired"
    );

    // Logout ends one session; the revocation of its token, all of them.
    let (out, kept, other) = (
        open(&secret).await,
        open(&secret).await,
        open(&secret).await,
    );
    engine.end_session(&out).await.expect("logout");
    assert!(!live(&out));
    assert!(live(&kept) && live(&other));
    // A restart finds the sessions that were not ended.
    let engine = self::engine(&dir, clock.clone()).await;
    let live = |id_hash: &str| engine.session_principal(id_hash).is_some();
    assert!(live(&kept) && live(&other), "kept across a restart");
    assert!(!live(&out) && !live(&idle), "ended ones stay ended");
    engine.revoke_token(&admin, "ops").await.expect("revoke");
    assert!(!live(&kept) && !live(&other), "its token was revoked");
    let engine = self::engine(&dir, clock.clone()).await;
    assert!(
        engine.session_principal(&kept).is_none(),
        "and after a restart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

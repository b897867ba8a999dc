//! What the store shows to others: its data directory is the owner's alone
//! (0700, its files 0600, tightened at start if looser), and the public
//! `/healthz` says only whether the server is ready; the store's error, which
//! may name the database, goes only to `viewer` and `admin` tokens.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, StoreKind, eventually};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The data directory is 0700 and every file in it 0600: the databases with
/// their `-wal` and `-shm`, the admin token, the lock.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for name in [
        "corral.db",
        "corral.db-wal",
        "corral.db-shm",
        "logs.db",
        "logs.db-wal",
        "history.db",
        "history.db-wal",
        "admin.token",
        "corral.lock",
    ] {
        let path = dir.join(name);
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for entry in std::fs::read_dir(dir).expect("the data directory") {
        let path = entry.expect("an entry").path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_dir_is_the_owners_alone_and_tightened_at_start() {
    let mut server = Server::start("modes", StoreKind::Sqlite).await;
    let id = server
        .submit("kind: Pipeline\nname: p\nsteps:\n  - {name: s, run: echo hi, resources: {cpu: 100m, memory: 16Mi}}\n")
        .await["id"]
        .as_i64()
        .expect("id");
    server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_private(&server.data_dir);

    // Made looser (as an earlier version left them), they are tightened at
    // the next start.
    server.kill9();
    std::fs::set_permissions(&server.data_dir, std::fs::Permissions::from_mode(0o755))
        .expect("loosen the directory");
    for name in ["corral.db", "logs.db", "history.db", "admin.token"] {
        std::fs::set_permissions(
            server.data_dir.join(name),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("loosen a file");
    }
    server.restart().await;
    assert_private(&server.data_dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_readiness_tells_only_whether_the_server_is_ready() {
    let store = StoreKind::postgres("readiness").await;
    let StoreKind::Postgres(url) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let url = url.clone();
    let database = url.rsplit('/').next().expect("a database name").to_string();
    let server = Server::start("readiness", store).await;
    let viewer = server.create_token("watcher", "viewer", None).await;
    let tenant = server
        .create_token("someone", "tenant", Some(("tenant", "default")))
        .await;
    let ask = |token: &str| {
        let token = token.to_string();
        let server = &server;
        async move { server.send_as(&token, "GET", "/healthz", "", None).await }
    };
    assert_eq!(
        ask("").await,
        (200, json!({"status": "ok"})),
        "as the admin sees it: {:?}",
        ask(&server.admin_token).await
    );

    corral_store::testing::set_read_only(&url, true).await;
    let (status, public): (u16, Value) = eventually(
        "readiness to say the store cannot write",
        Duration::from_secs(10),
        || async {
            let answer = ask("").await;
            (answer.0 == 503).then_some(answer)
        },
    )
    .await;
    assert_eq!((status, &public), (503, &json!({"status": "unavailable"})));
    let (status, as_tenant) = ask(&tenant).await;
    assert_eq!(
        (status, &as_tenant),
        (503, &json!({"status": "unavailable"})),
        "a tenant token sees no details"
    );
    for token in [&viewer, &server.admin_token] {
        let (status, detailed) = ask(token).await;
        assert_eq!(status, 503, "{detailed}");
        assert_eq!(detailed["status"], "unavailable", "{detailed}");
        let error = detailed["store_error"].as_str().expect("the store's error");
        assert!(error.contains("read-only"), "{detailed}");
        assert!(detailed["failing_since_ms"].is_i64(), "{detailed}");
    }
    assert!(!public.to_string().contains(&database));

    corral_store::testing::set_read_only(&url, false).await;
    eventually(
        "the store to be ready again",
        Duration::from_secs(10),
        || async { (ask("").await.0 == 200).then_some(()) },
    )
    .await;
}

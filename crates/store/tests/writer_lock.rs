//! One writer per store: a second lock on a store is refused, naming the store
//! and its holder; on PostgreSQL a lock whose connection ended fails the
//! commits until it is held again, and one taken by another server meanwhile
//! is lost for good.

use std::sync::Arc;

use corral_core::clock::Timestamp;
use corral_core::manifest::{Document, parse_documents};
use corral_store::testing::{fresh_postgres_database, postgres_admin_url};
use corral_store::*;
use sqlx::Connection;

fn pool_write(name: &str) -> Write {
    let docs = parse_documents(&format!(
        "kind: Pool\nname: {name}\ncapacity: {{cpu: 1, memory: 1Gi}}\n"
    ))
    .expect("a valid pool");
    let Some(Document::Pool(spec)) = docs.into_iter().next() else {
        panic!("expected a pool")
    };
    Write::PutPool(PoolRecord {
        spec,
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
    })
}

fn refused(second: Result<Option<WriterLock>>, store: &str) -> String {
    let message = match second {
        Err(e @ StoreError::Held { .. }) => e.to_string(),
        other => panic!("a second lock on {store} is refused, not {other:?}"),
    };
    assert!(message.contains(store), "names the store: {message}");
    assert!(
        message.contains(&format!("corral server pid {}", std::process::id())),
        "names the holder: {message}"
    );
    message
}

#[tokio::test]
async fn a_second_lock_on_a_sqlite_data_dir_is_refused_until_the_first_is_dropped() {
    let dir = std::env::temp_dir().join(format!("corral-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = WriterLock::data_dir(&dir).expect("the first lock");
    refused(
        WriterLock::data_dir(&dir).map(Some),
        &dir.display().to_string(),
    );
    drop(first);
    WriterLock::data_dir(&dir).expect("free again once the holder is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_postgres_lock_is_checked_at_each_commit_and_lost_to_another_server() {
    let url = fresh_postgres_database("lock").await;
    let database = url.rsplit('/').next().expect("a database name").to_string();
    let first = Arc::new(
        WriterLock::url(&url)
            .await
            .expect("the first lock")
            .expect("a PostgreSQL lock"),
    );
    refused(WriterLock::url(&url).await, &database);
    let mut store = SqlStore::connect(&url).await.expect("connect");
    store.hold(first.clone());
    store
        .commit(&[pool_write("one")])
        .await
        .expect("commits while held");

    // Its connection ends: the commit fails and the lock is taken again; the
    // next commit goes through.
    assert!(terminate_lock_holders(&database).await >= 1);
    let failed = store.commit(&[pool_write("lost")]).await;
    assert!(
        matches!(failed, Err(StoreError::LockRetaken { .. })),
        "{failed:?}"
    );
    store
        .commit(&[pool_write("two")])
        .await
        .expect("commits once held again");

    // Its connection ends and another server takes the lock meanwhile: the
    // commit fails, and the lock is lost for good.
    terminate_lock_holders(&database).await;
    let other = WriterLock::url(&url)
        .await
        .expect("another server takes the free lock")
        .expect("a PostgreSQL lock");
    let failed = store.commit(&[pool_write("after")]).await;
    assert!(matches!(failed, Err(StoreError::Held { .. })), "{failed:?}");
    let reason = tokio::time::timeout(std::time::Duration::from_secs(5), first.lost())
        .await
        .expect("the lock is known lost");
    assert!(reason.contains(&database), "{reason}");
    let names: Vec<String> = store
        .load_live()
        .await
        .expect("read")
        .pools
        .iter()
        .map(|p| p.spec.name.clone())
        .collect();
    assert_eq!(names, ["one", "two"], "no write without the lock is kept");
    drop(other);
}

/// Ends the connections holding the writer lock of `database`; how many.
async fn terminate_lock_holders(database: &str) -> usize {
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("connect as admin");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name LIKE 'corral server pid %'",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    // Wait until they are gone.
    for _ in 0..100 {
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name LIKE 'corral server pid %'",
        )
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .expect("count");
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ended.into_iter().filter(|e| *e).count()
}

//! Helpers for tests that need a real database.

use sqlx::Connection;

/// The PostgreSQL server tests use: `CORRAL_TEST_DATABASE_URL`, or the local one.
pub fn postgres_admin_url() -> String {
    std::env::var("CORRAL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Creates a fresh, empty database on the test PostgreSQL server and returns its
/// URL. Panics with a clear message when PostgreSQL is unreachable: a test that
/// needs it must fail, never skip.
pub async fn fresh_postgres_database(label: &str) -> String {
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for this test but {admin} is unreachable: {e}. \
             Start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) \
             or set CORRAL_TEST_DATABASE_URL."
            )
        });
    // Databases left by test processes that have ended are dropped here.
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'corral\\_%'")
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
    for old in names {
        let owner_alive = old
            .rsplit('_')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !owner_alive {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await;
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("corral_{label}_{}_{nanos}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base.to_string())
        .unwrap_or(admin);
    format!("{base}/{name}")
}

/// Makes the PostgreSQL database at `url` refuse writes, or take them again:
/// its transactions default to read-only (superusers included), and every
/// connection to it is ended, so that each one made after starts that way.
pub async fn set_read_only(url: &str, read_only: bool) {
    let name = url.rsplit('/').next().unwrap_or_default();
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("connect to the test PostgreSQL server");
    let change = if read_only {
        format!("ALTER DATABASE \"{name}\" SET default_transaction_read_only = on")
    } else {
        format!("ALTER DATABASE \"{name}\" RESET default_transaction_read_only")
    };
    sqlx::query(sqlx::AssertSqlSafe(change))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot change database {name}: {e}"));
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot end the connections to {name}: {e}"));
}

//! The SQL store: one implementation over sqlx's `Any` driver, for SQLite and
//! PostgreSQL. The SQL is portable (`$n` placeholders in order, `BIGINT` keys,
//! `ON CONFLICT` upserts, partial indexes), so one migrations folder serves both;
//! each database records its own migration history.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use corral_core::clock::Timestamp;
use corral_core::ids::{AttemptId, RunId};
use corral_core::metering::{CapacityChange, PriceChange, SlotUsage, Span};
use corral_core::run::{RunState, WorkerState};
use serde::de::DeserializeOwned;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::records::*;
use crate::{HistoryPoint, HistoryQuery, WaitCount, WaitQuery};
use crate::{Result, Store, StoreError, WriterLock};
use corral_core::history::{Rollup, Sample};

mod history;
mod measured;
mod metering;
mod rows;
mod sessions;
mod tx;
mod upsert;
mod worker_requests;

use rows::*;
use tx::Tx;

/// Which database sits behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The SQL implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// Log chunks go through their own connections (for SQLite, their own
    /// file), so a log write never waits for or fails a state transaction.
    logs: AnyPool,
    backend: Backend,
    /// The governance time series, apart in the same way (`history.db`).
    history: AnyPool,
    /// Reads of reports (usage, waits) and of the time series, on connections
    /// of their own: on SQLite, readers beside the one writer, so a long read
    /// neither waits for nor holds up a commit, and several run at once.
    reads: AnyPool,
    history_reads: AnyPool,
    /// An in-memory SQLite database: one connection, no readers beside it.
    memory: bool,
    /// The server's exclusive lock on the store, checked before each commit.
    lock: Option<Arc<WriterLock>>,
}

/// The log table of a SQLite store's separate logs file.
const SQLITE_LOG_SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS log_chunks (attempt_id BIGINT NOT NULL, byte_offset BIGINT NOT NULL, \
     run_id BIGINT NOT NULL, step_idx BIGINT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (attempt_id, byte_offset))",
    "CREATE INDEX IF NOT EXISTS log_chunks_by_run ON log_chunks (run_id, step_idx, attempt_id, byte_offset)",
];

/// The schema, in portable SQL; each database records its own history of it.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl SqlStore {
    /// Opens (creating if needed) the SQLite store `corral.db` in `data_dir`.
    /// The directory is made 0700 and its files 0600 (tightened if looser).
    pub async fn open_sqlite(data_dir: &Path) -> Result<SqlStore> {
        crate::private::private_data_dir(data_dir)?;
        // Made 0600 before SQLite opens them: it gives their `-wal` and `-shm`
        // files the database's mode.
        for name in ["corral.db", "logs.db", "history.db"] {
            crate::private::private_file(&data_dir.join(name))?;
        }
        let url = format!("sqlite://{}?mode=rwc", data_dir.join("corral.db").display());
        let mut store = SqlStore::connect(&url).await?;
        let logs_path = data_dir.join("logs.db");
        let logs = sqlite_pool(&format!("sqlite://{}?mode=rwc", logs_path.display()), 1).await?;
        for statement in SQLITE_LOG_SCHEMA {
            sqlx::query(statement).execute(&logs).await?;
        }
        store.logs = logs;
        store.move_logs_out(&data_dir.join("corral.db")).await?;
        let history_path = data_dir.join("history.db");
        store.history =
            sqlite_pool(&format!("sqlite://{}?mode=rwc", history_path.display()), 1).await?;
        sqlx::raw_sql(history::SCHEMA)
            .execute(&store.history)
            .await?;
        store.history_reads = sqlite_pool(
            &format!("sqlite://{}?mode=ro", history_path.display()),
            READERS,
        )
        .await?;
        store.optimize(true).await?;
        Ok(store)
    }

    /// SQLite's `PRAGMA optimize`: gathers the planner's statistics (`ANALYZE`) of
    /// the tables whose statistics are missing or stale, in the main file and the
    /// history's. At the first start every table is considered (`0x10002`), as
    /// SQLite advises for long-lived connections; later (after each hourly rollup)
    /// those the connection used. Nothing on PostgreSQL, whose autovacuum does it.
    async fn optimize(&self, first: bool) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let pragma = if first {
            "PRAGMA optimize=0x10002"
        } else {
            "PRAGMA optimize"
        };
        sqlx::query(pragma).execute(&self.pool).await?;
        sqlx::query(pragma).execute(&self.history).await?;
        Ok(())
    }

    /// Stores made before logs had their own file kept them in the main one:
    /// they are moved over once.
    async fn move_logs_out(&self, main: &Path) -> Result<()> {
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM log_chunks")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        if left == 0 {
            return Ok(());
        }
        let mut conn = self.logs.acquire().await?;
        let attach = format!(
            "ATTACH DATABASE '{}' AS earlier",
            main.display().to_string().replace('\'', "''")
        );
        sqlx::query(AssertSqlSafe(attach))
            .execute(&mut *conn)
            .await?;
        let copied = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO log_chunks ({LOG_COLUMNS}) SELECT {LOG_COLUMNS} FROM earlier.log_chunks \
             WHERE true ON CONFLICT (attempt_id, byte_offset) DO NOTHING"
        )))
        .execute(&mut *conn)
        .await;
        sqlx::query("DETACH DATABASE earlier")
            .execute(&mut *conn)
            .await?;
        copied?;
        sqlx::query("DELETE FROM log_chunks")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Connects to `sqlite://PATH` or `postgres://...` and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let (pool, logs, history) = match backend {
            // A SQLite store opened by its URL keeps its logs (and history) in the same file.
            Backend::Sqlite => {
                let pool = sqlite_pool(url, 1).await?;
                (pool.clone(), pool.clone(), pool)
            }
            Backend::Postgres => (
                AnyPoolOptions::new()
                    .max_connections(8)
                    .connect(url)
                    .await?,
                AnyPoolOptions::new()
                    .max_connections(4)
                    .connect(url)
                    .await?,
                AnyPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await?,
            ),
        };
        MIGRATIONS.run(&pool).await?;
        let memory =
            backend == Backend::Sqlite && (url.contains(":memory:") || url.contains("mode=memory"));
        let reads = match backend {
            // An in-memory database is its connection's own: it has no readers.
            Backend::Sqlite if memory => pool.clone(),
            Backend::Sqlite => sqlite_pool(&read_only(url), READERS).await?,
            Backend::Postgres => pool.clone(),
        };
        let history_reads = match backend {
            Backend::Sqlite => reads.clone(),
            Backend::Postgres => history.clone(),
        };
        Ok(SqlStore {
            pool,
            logs,
            backend,
            history,
            reads,
            history_reads,
            memory,
            lock: None,
        })
    }

    /// Makes each commit check first that `lock` is still held.
    pub fn hold(&mut self, lock: Arc<WriterLock>) {
        self.lock = Some(lock);
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.logs.close().await;
        self.history.close().await;
        self.reads.close().await;
        self.history_reads.close().await;
    }
}

/// A value that no earlier probe of this process wrote: at least the time in
/// nanoseconds since the epoch, and more than the last one given.
fn probe_value() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX - 1));
    LAST.fetch_max(now, Ordering::Relaxed);
    LAST.fetch_add(1, Ordering::Relaxed).saturating_add(1)
}

/// Reader connections of a SQLite store.
const READERS: u32 = 2;

/// A SQLite URL opened read-only (`mode=ro` in place of any `mode=`).
fn read_only(url: &str) -> String {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("mode="))
        .collect();
    params.push("mode=ro");
    format!("{path}?{}", params.join("&"))
}

/// SQLite has one writer; one connection keeps transactions from tripping
/// over each other (readers, opened read-only, take `connections` more). WAL
/// with synchronous=NORMAL is safe against a killed process (not against
/// power loss of the last commit).
async fn sqlite_pool(url: &str, connections: u32) -> Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(connections)
        .after_connect(|conn, _| {
            Box::pin(async move {
                for pragma in [
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = NORMAL",
                    "PRAGMA busy_timeout = 5000",
                ] {
                    sqlx::query(pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// Upserts a row of `pools` or `tenants`: a name and its spec.
async fn put_named(
    conn: &mut sqlx::AnyConnection,
    table: &'static str,
    name: &str,
    spec: String,
    created_at: Timestamp,
    updated_at: Timestamp,
) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at"
    )))
    .bind(name)
    .bind(spec)
    .bind(created_at.0)
    .bind(updated_at.0)
    .execute(conn)
    .await?;
    Ok(())
}

async fn delete_named(
    conn: &mut sqlx::AnyConnection,
    table: &'static str,
    name: &str,
) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE name = $1"
    )))
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads every row of `pools` or `tenants` as (spec, created, updated).
async fn named_specs<T: DeserializeOwned>(
    conn: &mut sqlx::AnyConnection,
    table: &'static str,
    what: &'static str,
) -> Result<Vec<(T, Timestamp, Timestamp)>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT spec, created_at, updated_at FROM {table} ORDER BY name"
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(|row| {
        Ok((
            from_json(what, &row.try_get::<String, _>("spec")?)?,
            ts(row, "created_at")?,
            ts(row, "updated_at")?,
        ))
    })
    .collect()
}

/// The row a write puts, for the writes that put a whole row of a run's.
#[derive(PartialEq, Eq, Hash)]
enum RowKey {
    Run(i64),
    Step(i64, u32),
    Attempt(i64),
    Allocation(i64),
}

/// A batch's writes with each run, step, attempt and allocation row put once:
/// with its last value, where it was first put. A batch often moves one run
/// several times (submitted, admitted, bound, ended). Every put carries the
/// whole row, and the columns an upsert leaves alone never change, so the
/// last put alone leaves the row as all of them would. Putting it where the
/// first one was keeps every row it depends on before it; the schema has no
/// foreign keys, and rows only move forward, so the unique index of open
/// allocations holds after each statement as it did in the original order.
fn coalesce(writes: &[Write]) -> Vec<&Write> {
    let row = |w: &Write| match w {
        Write::PutRun(r) => Some(RowKey::Run(r.id.0)),
        Write::PutStep(s) => Some(RowKey::Step(s.run_id.0, s.idx)),
        Write::PutAttempt(a) => Some(RowKey::Attempt(a.id.0)),
        Write::PutAllocation(a) => Some(RowKey::Allocation(a.id.0)),
        _ => None,
    };
    let mut last: std::collections::HashMap<RowKey, usize> = std::collections::HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        if let Some(key) = row(w) {
            last.insert(key, i);
        }
    }
    let mut out = Vec::with_capacity(last.len());
    for w in writes {
        match row(w) {
            None => out.push(w),
            Some(key) => {
                if let Some(i) = last.remove(&key) {
                    out.push(&writes[i]);
                }
            }
        }
    }
    out
}

async fn apply(conn: &mut sqlx::AnyConnection, write: &Write) -> Result<()> {
    match write {
        Write::PutPool(p) => {
            put_named(
                conn,
                "pools",
                &p.spec.name,
                to_json(&p.spec),
                p.created_at,
                p.updated_at,
            )
            .await?;
        }
        Write::DeletePool(name) => delete_named(conn, "pools", name).await?,
        Write::PutTenant(t) => {
            put_named(
                conn,
                "tenants",
                &t.spec.name,
                to_json(&t.spec),
                t.created_at,
                t.updated_at,
            )
            .await?;
        }
        Write::DeleteTenant(name) => delete_named(conn, "tenants", name).await?,
        Write::PutMeasured(m) => {
            sqlx::query(
                "INSERT INTO measured_usage (attempt, run_id, tenant, pool, pipeline, step, succeeded, day, ended_at, \
                 duration_ms, cpu_millis, memory_mib, cpu_micros, memory_peak_bytes, throttled_micros) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT (attempt) DO NOTHING",
            )
            .bind(m.attempt.0)
            .bind(m.run_id.0)
            .bind(&m.tenant)
            .bind(&m.pool)
            .bind(&m.pipeline)
            .bind(&m.step)
            .bind(i64::from(m.succeeded))
            .bind(corral_core::metering::day_start(m.ended_at.0))
            .bind(m.ended_at.0)
            .bind(m.duration_ms.max(0))
            .bind(saturate(m.requested.cpu_millis))
            .bind(saturate(m.requested.memory_mib))
            .bind(saturate(m.usage.cpu_micros))
            .bind(saturate(m.usage.memory_peak_bytes))
            .bind(saturate(m.usage.throttled_micros))
            .execute(conn)
            .await?;
        }
        Write::PutWorker(w) => {
            sqlx::query(
                "INSERT INTO workers (id, pool, name, cpu_millis, memory_mib, gpu, labels, state, registered_at, updated_at, instance, secret_hash, incarnation, \
                 confinement, token_name, spawn_hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, \
                 secret_hash = excluded.secret_hash, incarnation = excluded.incarnation, \
                 confinement = excluded.confinement, spawn_hash = excluded.spawn_hash",
            )
            .bind(w.id.0)
            .bind(&w.pool)
            .bind(&w.name)
            .bind(int("cpu_millis", w.capacity.cpu_millis)?)
            .bind(int("memory_mib", w.capacity.memory_mib)?)
            .bind(int("gpu", w.capacity.gpu)?)
            .bind(to_json(&w.labels))
            .bind(w.state.as_str())
            .bind(w.registered_at.0)
            .bind(w.updated_at.0)
            .bind(w.instance.clone())
            .bind(w.secret_hash.clone())
            .bind(w.incarnation.clone())
            .bind(w.confinement.as_ref().map(to_json))
            .bind(w.token_name.clone())
            .bind(w.spawn_hash.clone())
            .execute(conn)
            .await?;
        }
        Write::PutToken(t) => {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, role = excluded.role, \
                 tenant = excluded.tenant, pool = excluded.pool, created_at = excluded.created_at, \
                 expires_at = excluded.expires_at, revoked_at = excluded.revoked_at, \
                 last_used_at = excluded.last_used_at"
            )))
            .bind(&t.name)
            .bind(&t.hash)
            .bind(t.role.name())
            .bind(t.role.tenant().map(str::to_string))
            .bind(t.role.pool().map(str::to_string))
            .bind(t.created_at.0)
            .bind(t.expires_at.map(|t| t.0))
            .bind(t.revoked_at.map(|t| t.0))
            .bind(t.last_used_at.map(|t| t.0))
            .execute(conn)
            .await?;
        }
        Write::TouchToken { name, at } => {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE name = $2")
                .bind(at.0)
                .bind(name)
                .execute(conn)
                .await?;
        }
        Write::Session(s) => sessions::apply(conn, s).await?,
        Write::PutWorkerRequest(r) => worker_requests::put(conn, r).await?,
        Write::DeleteWorkerRequest(name) => worker_requests::delete(conn, name).await?,
        Write::PutPrice(p) => metering::put_price(conn, p).await?,
        Write::PutCapacity(c) => metering::put_capacity(conn, c).await?,
        Write::PutAlert(a) => metering::put_alert(conn, a).await?,
        // Written for the whole batch, in statements of many rows (see `commit`).
        Write::PutRun(_)
        | Write::PutStep(_)
        | Write::PutAttempt(_)
        | Write::PutAllocation(_)
        | Write::Meter(_)
        | Write::CountWait(_) => {}
        Write::AppendAudit(a) => {
            sqlx::query(
                "INSERT INTO audit (id, at, who, kind, name, action, before_spec, after_spec) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(a.id)
            .bind(a.at.0)
            .bind(&a.who)
            .bind(&a.kind)
            .bind(&a.name)
            .bind(&a.action)
            .bind(a.before.as_ref().map(to_json))
            .bind(a.after.as_ref().map(to_json))
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

/// Fetches the rows of `query` and decodes each with `decode`.
async fn decode_all<T>(
    conn: &mut sqlx::AnyConnection,
    query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    decode: fn(&AnyRow) -> Result<T>,
) -> Result<Vec<T>> {
    query.fetch_all(conn).await?.iter().map(decode).collect()
}

/// A value bound to a placeholder of a filtered query.
enum Param {
    Text(String),
    Int(i64),
}

/// `select WHERE predicate $1 AND ... order LIMIT $n`, for the filters that are
/// set; each predicate is a column and an operator, such as `tenant =`.
fn filtered<const N: usize>(
    select: &str,
    filters: [(&str, Option<Param>); N],
    order: &str,
    limit: u32,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let set: Vec<(&str, Param)> = filters
        .into_iter()
        .filter_map(|(column, value)| value.map(|v| (column, v)))
        .collect();
    let mut sql = format!("{select} WHERE 1 = 1");
    for (i, (column, _)) in set.iter().enumerate() {
        sql.push_str(&format!(" AND {column} ${}", i + 1));
    }
    sql.push_str(&format!(" {order} LIMIT ${}", set.len() + 1));
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for (_, value) in set {
        query = match value {
            Param::Text(t) => query.bind(t),
            Param::Int(n) => query.bind(n),
        };
    }
    query.bind(i64::from(limit))
}

/// `IN (...)` over the ids of the live runs, inlined: they are integers we own.
fn id_list(ids: &[RunId]) -> String {
    ids.iter()
        .map(|i| i.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl Store for SqlStore {
    async fn commit(&self, writes: &[Write]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = Tx::begin(&self.pool).await?;
        // Metering and admission counts go last, each in a few statements for
        // the whole batch: they read what the rest writes (an allocation's
        // close) and nothing reads them back within it.
        // Runs, steps, attempts and allocations go in statements of many rows
        // each, after the rest (which reads none of them).
        let (mut metered, mut waits, mut allocations) = (Vec::new(), Vec::new(), Vec::new());
        let mut rows = upsert::Rows::default();
        for write in coalesce(writes) {
            match write {
                Write::Meter(m) => metered.push(m),
                Write::CountWait(w) => waits.push(w),
                Write::PutRun(r) => rows.runs.push(r),
                Write::PutStep(s) => rows.steps.push(s),
                Write::PutAttempt(a) => rows.attempts.push(a),
                Write::PutAllocation(a) => {
                    allocations.push(a.id.0);
                    rows.allocations.push(a);
                }
                other => apply(&mut tx, other).await?,
            }
        }
        rows.write(&mut tx).await?;
        metering::note_unmetered(&mut tx, &allocations).await?;
        metering::meter_all(&mut tx, &metered).await?;
        history::count_waits(&mut tx, &waits).await?;
        if let Some(lock) = &self.lock {
            lock.check().await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_live(&self) -> Result<Live> {
        let mut conn = self.pool.acquire().await?;
        let pools = named_specs(&mut conn, "pools", "pool spec")
            .await?
            .into_iter()
            .map(|(spec, created_at, updated_at)| PoolRecord {
                spec,
                created_at,
                updated_at,
            })
            .collect();
        let tenants = named_specs(&mut conn, "tenants", "tenant spec")
            .await?
            .into_iter()
            .map(|(spec, created_at, updated_at)| TenantRecord {
                spec,
                created_at,
                updated_at,
            })
            .collect();
        let live_states = RunState::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let runs = decode_all(
            &mut conn,
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE state IN ({live_states}) ORDER BY id"
            ))),
            run_from,
        )
        .await?;
        let ids: Vec<RunId> = runs.iter().map(|r| r.id).collect();
        let (steps, attempts) = if ids.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let list = id_list(&ids);
            let steps = decode_all(&mut conn, sqlx::query(AssertSqlSafe(format!(
                "SELECT run_id, idx, name, grp, state, attempts FROM steps WHERE run_id IN ({list}) ORDER BY run_id, idx"
            ))), step_from).await?;
            let attempts = decode_all(
                &mut conn,
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id IN ({list}) ORDER BY id"
                ))),
                attempt_from,
            )
            .await?;
            (steps, attempts)
        };
        let open_allocations = decode_all(
            &mut conn,
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {ALLOCATION_COLUMNS} FROM allocations WHERE closed_at IS NULL ORDER BY id"
            ))),
            allocation_from,
        )
        .await?;
        let workers = decode_all(
            &mut conn,
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {WORKER_COLUMNS} FROM workers WHERE state = $1 ORDER BY id"
            )))
            .bind(WorkerState::Ready.as_str()),
            worker_from,
        )
        .await?;
        let tokens = decode_all(
            &mut conn,
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name"
            ))),
            token_from,
        )
        .await?;
        let sessions = sessions::all(&mut conn).await?;
        let worker_requests = worker_requests::all(&mut conn).await?;
        let prices = metering::prices(&mut conn).await?;
        let capacities = metering::latest_capacities(&mut conn).await?;
        let max = |table: &'static str| format!("SELECT COALESCE(MAX(id), 0) AS m FROM {table}");
        let mut max_ids = MaxIds::default();
        for (table, slot) in [
            ("runs", &mut max_ids.run),
            ("attempts", &mut max_ids.attempt),
            ("allocations", &mut max_ids.allocation),
            ("workers", &mut max_ids.worker),
            ("audit", &mut max_ids.audit),
        ] {
            *slot = sqlx::query(AssertSqlSafe(max(table)))
                .fetch_one(&mut *conn)
                .await?
                .try_get("m")?;
        }
        Ok(Live {
            pools,
            tenants,
            runs,
            steps,
            attempts,
            open_allocations,
            workers,
            tokens,
            sessions,
            worker_requests,
            prices,
            capacities,
            max_ids,
        })
    }

    async fn run(&self, id: RunId) -> Result<Option<RunDetail>> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(None);
        };
        let run = run_from(&row)?;
        let steps = decode_all(&mut conn, sqlx::query(
            "SELECT run_id, idx, name, grp, state, attempts FROM steps WHERE run_id = $1 ORDER BY idx",
        )
        .bind(id.0), step_from).await?;
        let attempts = decode_all(
            &mut conn,
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 ORDER BY id"
            )))
            .bind(id.0),
            attempt_from,
        )
        .await?;
        let allocations = decode_all(
            &mut conn,
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {ALLOCATION_COLUMNS} FROM allocations WHERE run_id = $1 ORDER BY id"
            )))
            .bind(id.0),
            allocation_from,
        )
        .await?;
        Ok(Some(RunDetail {
            run,
            steps,
            attempts,
            allocations,
        }))
    }

    async fn runs_before(
        &self,
        filter: &RunFilter,
        before: Option<RunId>,
    ) -> Result<Vec<RunRecord>> {
        let select = format!("SELECT {RUN_COLUMNS} FROM runs");
        let filters = [
            ("tenant =", filter.tenant.clone().map(Param::Text)),
            (
                "state =",
                filter.state.map(|s| Param::Text(s.as_str().into())),
            ),
            ("id <", before.map(|id| Param::Int(id.0))),
        ];
        filtered(&select, filters, "ORDER BY id DESC", filter.limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(run_from)
            .collect()
    }

    async fn allocations(&self, filter: &AllocationFilter) -> Result<Vec<AllocationRecord>> {
        let select = format!("SELECT {ALLOCATION_COLUMNS} FROM allocations");
        let filters = [
            ("tenant =", filter.tenant.clone().map(Param::Text)),
            ("pool =", filter.pool.clone().map(Param::Text)),
            ("run_id =", filter.run.map(|r| Param::Int(r.0))),
            ("closed_at >=", filter.closed_since.map(|t| Param::Int(t.0))),
        ];
        filtered(&select, filters, "ORDER BY id", filter.limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(allocation_from)
            .collect()
    }

    async fn append_log(&self, c: &LogChunk) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO log_chunks ({LOG_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (attempt_id, byte_offset) DO NOTHING"
        )))
        .bind(c.attempt_id.0)
        .bind(int("log offset", c.offset)?)
        .bind(c.run_id.0)
        .bind(i64::from(c.step_idx))
        .bind(&c.data)
        .execute(&self.logs)
        .await?;
        Ok(())
    }

    async fn logs(
        &self,
        run: RunId,
        step: Option<u32>,
        after: Option<LogCursor>,
        limit: u32,
    ) -> Result<Vec<LogChunk>> {
        let (step_idx, attempt, offset) = match after {
            Some(c) => (
                i64::from(c.step_idx),
                c.attempt_id.0,
                int("log offset", c.offset)?,
            ),
            None => (-1, -1, -1),
        };
        let (lowest_step, highest_step) = match step {
            Some(s) => (i64::from(s), i64::from(s)),
            None => (0, i64::MAX),
        };
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {LOG_COLUMNS} FROM log_chunks \
             WHERE run_id = $1 AND step_idx >= $2 AND step_idx <= $3 \
             AND (step_idx, attempt_id, byte_offset) > ($4, $5, $6) \
             ORDER BY step_idx, attempt_id, byte_offset LIMIT $7"
        )))
        .bind(run.0)
        .bind(lowest_step)
        .bind(highest_step)
        .bind(step_idx)
        .bind(attempt)
        .bind(offset)
        .bind(i64::from(limit))
        .fetch_all(&self.logs)
        .await?
        .iter()
        .map(log_chunk_from)
        .collect()
    }

    async fn log_ends(&self, run: RunId) -> Result<Vec<(AttemptId, u64)>> {
        let bytes = match self.backend {
            Backend::Sqlite => "length(CAST(c.data AS BLOB))",
            Backend::Postgres => "octet_length(c.data)",
        };
        sqlx::query(AssertSqlSafe(format!(
            "SELECT c.attempt_id, c.byte_offset + {bytes} AS ends FROM log_chunks c \
             JOIN (SELECT attempt_id, MAX(byte_offset) AS last FROM log_chunks \
                   WHERE run_id = $1 GROUP BY attempt_id) l \
             ON c.attempt_id = l.attempt_id AND c.byte_offset = l.last \
             ORDER BY c.attempt_id"
        )))
        .bind(run.0)
        .fetch_all(&self.logs)
        .await?
        .iter()
        .map(|row| {
            let attempt: i64 = row.try_get("attempt_id")?;
            let ends: i64 = row.try_get("ends")?;
            Ok((AttemptId(attempt), uint("log end", ends)?))
        })
        .collect()
    }

    async fn attempt_log(
        &self,
        attempt: AttemptId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<LogChunk>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {LOG_COLUMNS} FROM log_chunks \
             WHERE attempt_id = $1 AND byte_offset >= $2 ORDER BY byte_offset LIMIT $3"
        )))
        .bind(attempt.0)
        .bind(int("log offset", from)?)
        .bind(i64::from(limit))
        .fetch_all(&self.logs)
        .await?
        .iter()
        .map(log_chunk_from)
        .collect()
    }

    async fn probe_write(&self) -> Result<()> {
        let value = probe_value();
        let mut writer = self.pool.acquire().await?;
        sqlx::query(
            "INSERT INTO store_probe (id, checked_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(value)
        .execute(&mut *writer)
        .await?;
        // Read back on another connection, the writer still held so that the
        // pool cannot hand it out again: only what is really committed is seen
        // there. An in-memory database has no other connection.
        if self.memory {
            drop(writer);
        }
        let seen: i64 = sqlx::query("SELECT checked_at FROM store_probe WHERE id = 1")
            .fetch_one(&self.reads)
            .await?
            .try_get("checked_at")?;
        if seen != value {
            return Err(StoreError::NotCommitted);
        }
        Ok(())
    }

    async fn prune_lost_workers(&self, lost_before: Timestamp, limit: u32) -> Result<u64> {
        let deleted = sqlx::query(
            "DELETE FROM workers WHERE id IN (SELECT id FROM workers \
             WHERE state = $1 AND updated_at < $2 AND id < (SELECT MAX(id) FROM workers) \
             ORDER BY id LIMIT $3)",
        )
        .bind(WorkerState::Lost.as_str())
        .bind(lost_before.0)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let filters = [
            ("at >=", filter.since.map(|t| Param::Int(t.0))),
            ("at <", filter.until.map(|t| Param::Int(t.0))),
            ("who =", filter.who.clone().map(Param::Text)),
            ("kind =", filter.kind.clone().map(Param::Text)),
            ("name =", filter.name.clone().map(Param::Text)),
            ("id <", filter.before_id.map(Param::Int)),
            ("id >", filter.after_id.map(Param::Int)),
        ];
        let order = if filter.newest_first {
            "ORDER BY id DESC"
        } else {
            "ORDER BY id"
        };
        filtered(
            "SELECT id, at, who, kind, name, action, before_spec, after_spec FROM audit",
            filters,
            order,
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(audit_from)
        .collect()
    }

    async fn prices(&self) -> Result<Vec<PriceChange>> {
        metering::prices(&mut *self.pool.acquire().await?).await
    }

    async fn capacities(&self) -> Result<Vec<CapacityChange>> {
        metering::capacities(&mut *self.pool.acquire().await?).await
    }

    async fn spans(&self, filter: &SpanFilter) -> Result<Vec<Span>> {
        metering::spans(&self.pool, filter).await
    }

    async fn unmetered(&self, limit: u32) -> Result<Vec<Span>> {
        metering::unmetered(&self.pool, limit).await
    }

    async fn slot_sums(&self, query: &UsageQuery) -> Result<Vec<SlotUsage>> {
        metering::slot_sums(&self.reads, query).await
    }

    async fn piece_sums(&self, query: &UsageQuery) -> Result<Vec<SlotUsage>> {
        metering::piece_sums(&self.reads, query).await
    }

    async fn straddling_pieces(&self, query: &UsageQuery) -> Result<Vec<Span>> {
        metering::straddling_pieces(&self.reads, query).await
    }

    async fn recent_durations(
        &self,
        since: Timestamp,
        per_pipeline: u32,
    ) -> Result<Vec<PipelineDurations>> {
        metering::recent_durations(&self.pool, since, per_pipeline).await
    }

    async fn measured_sums(&self, query: &UsageQuery) -> Result<Vec<MeasuredSum>> {
        measured::sums(&self.reads, query).await
    }

    async fn measured_attempts(
        &self,
        tenant: &str,
        pipeline: &str,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<MeasuredAttempt>> {
        measured::recent(&self.reads, tenant, pipeline, since, limit).await
    }

    async fn alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>> {
        let filters = [
            ("tenant =", filter.tenant.clone().map(Param::Text)),
            ("month =", filter.month.clone().map(Param::Text)),
        ];
        let undelivered = if filter.undelivered {
            " AND delivered_at IS NULL"
        } else {
            ""
        };
        filtered(
            "SELECT tenant, month, threshold_milli, at, spent, monthly, attempts, delivered_at, last_error FROM budget_alerts",
            filters,
            &format!("{undelivered} ORDER BY at DESC, tenant, threshold_milli"),
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(metering::alert_from)
        .collect()
    }

    async fn append_samples(&self, samples: &[Sample]) -> Result<()> {
        history::append(&self.history, samples).await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryPoint>> {
        history::read(&self.history_reads, query).await
    }

    async fn roll_up_history(&self, rollup: &Rollup) -> Result<()> {
        history::roll_up(&self.history, rollup).await?;
        // The wait histograms are kept with the state; they go with the hours.
        history::roll_up_waits(&self.pool, rollup).await?;
        // Once an hour, the planner's statistics catch up with the tables.
        self.optimize(false).await
    }

    async fn admission_waits(&self, query: &WaitQuery) -> Result<Vec<WaitCount>> {
        history::read_waits(&self.reads, query).await
    }
}

#[cfg(test)]
mod tests {
    use super::read_only;

    #[test]
    fn a_read_only_url_replaces_any_mode_and_keeps_the_rest() {
        assert_eq!(
            read_only("sqlite:///d/corral.db?mode=rwc"),
            "sqlite:///d/corral.db?mode=ro"
        );
        assert_eq!(
            read_only("sqlite:///d/corral.db?cache=shared&mode=rwc"),
            "sqlite:///d/corral.db?cache=shared&mode=ro"
        );
        assert_eq!(read_only("sqlite:corral.db"), "sqlite:corral.db?mode=ro");
    }
}

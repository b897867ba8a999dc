//! The rows a group commit writes most of (runs, steps, attempts, allocations), each table's in
//! statements of many rows rather than a round trip per row: a bulk submit of 10,000 runs is a
//! few dozen statements.
//!
//! Each row comes once per commit ([`super::coalesce`]), so no statement touches a row twice
//! (which PostgreSQL's `ON CONFLICT DO UPDATE` refuses). A table's rows keep their order, and the
//! tables share no foreign key or trigger, so the unique index of open allocations (checked row
//! by row on both databases) sees what it saw with one statement a row.

use sqlx::AssertSqlSafe;
use sqlx::any::AnyArguments;

use super::metering::placeholders;
use super::rows::{int, reason_code_text, saturate, to_json};
use crate::Result;
use crate::records::{AllocationRecord, AttemptRecord, RunRecord, StepRecord};

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments>;

/// The most parameters a statement binds: well below SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_PARAMS: usize = 8_000;

/// A table's rows of one commit, in order.
#[derive(Default)]
pub(super) struct Rows<'a> {
    pub runs: Vec<&'a RunRecord>,
    pub steps: Vec<&'a StepRecord>,
    pub attempts: Vec<&'a AttemptRecord>,
    pub allocations: Vec<&'a AllocationRecord>,
}

impl Rows<'_> {
    /// Writes every row, a table at a time.
    pub async fn write(&self, conn: &mut sqlx::AnyConnection) -> Result<()> {
        upsert(
            conn,
            "INSERT INTO runs (id, pipeline, tenant, priority, state, reason_code, reason, spec, request, created_at, updated_at, finished_at, estimate) VALUES",
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason_code = excluded.reason_code, \
             reason = excluded.reason, updated_at = excluded.updated_at, finished_at = excluded.finished_at",
            13,
            &self.runs,
            |q, r| {
                Ok(q.bind(r.id.0)
                    .bind(r.pipeline.clone())
                    .bind(r.tenant.clone())
                    .bind(i64::from(r.priority))
                    .bind(r.state.as_str())
                    .bind(r.reason.as_ref().map(|x| reason_code_text(x.code)))
                    .bind(r.reason.as_ref().map(|x| x.message.clone()))
                    .bind(to_json(&r.spec))
                    .bind(to_json(&r.request))
                    .bind(r.created_at.0)
                    .bind(r.updated_at.0)
                    .bind(r.finished_at.map(|t| t.0))
                    .bind(r.estimate.micros()))
            },
        )
        .await?;
        upsert(
            conn,
            "INSERT INTO steps (run_id, idx, name, grp, state, attempts) VALUES",
            "ON CONFLICT (run_id, idx) DO UPDATE SET state = excluded.state, attempts = excluded.attempts",
            6,
            &self.steps,
            |q, s| {
                Ok(q.bind(s.run_id.0)
                    .bind(i64::from(s.idx))
                    .bind(s.name.clone())
                    .bind(i64::from(s.group))
                    .bind(s.state.as_str())
                    .bind(i64::from(s.attempts)))
            },
        )
        .await?;
        upsert(
            conn,
            "INSERT INTO attempts (id, run_id, step_idx, number, worker_id, state, exit_code, error, created_at, started_at, finished_at, \
             cpu_micros, memory_peak_bytes, throttled_micros) VALUES",
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, exit_code = excluded.exit_code, \
             error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at, \
             cpu_micros = excluded.cpu_micros, memory_peak_bytes = excluded.memory_peak_bytes, \
             throttled_micros = excluded.throttled_micros",
            14,
            &self.attempts,
            |q, a| {
                Ok(q.bind(a.id.0)
                    .bind(a.run_id.0)
                    .bind(i64::from(a.step_idx))
                    .bind(i64::from(a.number))
                    .bind(a.worker_id.0)
                    .bind(a.state.as_str())
                    .bind(a.exit_code.map(i64::from))
                    .bind(a.error.clone())
                    .bind(a.created_at.0)
                    .bind(a.started_at.map(|t| t.0))
                    .bind(a.finished_at.map(|t| t.0))
                    .bind(a.usage.map(|u| saturate(u.cpu_micros)))
                    .bind(a.usage.map(|u| saturate(u.memory_peak_bytes)))
                    .bind(a.usage.map(|u| saturate(u.throttled_micros))))
            },
        )
        .await?;
        upsert(
            conn,
            "INSERT INTO allocations (id, run_id, grp, tenant, pool, cpu_millis, memory_mib, gpu, worker_id, opened_at, closed_at) VALUES",
            "ON CONFLICT (id) DO UPDATE SET worker_id = excluded.worker_id, closed_at = excluded.closed_at",
            11,
            &self.allocations,
            |q, a| {
                Ok(q.bind(a.id.0)
                    .bind(a.run_id.0)
                    .bind(i64::from(a.group))
                    .bind(a.tenant.clone())
                    .bind(a.pool.clone())
                    .bind(int("cpu_millis", a.resources.cpu_millis)?)
                    .bind(int("memory_mib", a.resources.memory_mib)?)
                    .bind(int("gpu", a.resources.gpu)?)
                    .bind(a.worker_id.map(|w| w.0))
                    .bind(a.opened_at.0)
                    .bind(a.closed_at.map(|t| t.0)))
            },
        )
        .await
    }
}

/// `head (row), (row), ... tail` for `rows` in statements of as many rows as
/// [`MAX_PARAMS`] allows, each row bound by `bind`.
async fn upsert<T>(
    conn: &mut sqlx::AnyConnection,
    head: &str,
    tail: &str,
    columns: usize,
    rows: &[T],
    bind: impl for<'q> Fn(Query<'q>, &T) -> Result<Query<'q>>,
) -> Result<()> {
    for chunk in rows.chunks(MAX_PARAMS / columns) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * columns + 1, columns)))
            .collect();
        let sql = format!("{head} {} {tail}", values.join(", "));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            query = bind(query, row)?;
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

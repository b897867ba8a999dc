//! Worker requests in SQL: put and deleted by the writes of a batch, and read
//! back whole at start (the server keeps them in memory and reconciles them
//! with its providers).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::{parse_enum, ts, uint};
use crate::Result;
use crate::records::{WorkerRequestRecord, WorkerRequestState};
use corral_core::ids::{AllocationId, RunId};

const COLUMNS: &str = "name, allocation_id, run_id, grp, pool, reference, state, deadline, \
                       attempts, generation, spawn_hash, created_at, updated_at";

pub(super) async fn put(conn: &mut sqlx::AnyConnection, r: &WorkerRequestRecord) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO worker_requests ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (name) DO UPDATE SET reference = excluded.reference, \
         state = excluded.state, deadline = excluded.deadline, attempts = excluded.attempts, \
         spawn_hash = excluded.spawn_hash, updated_at = excluded.updated_at"
    )))
    .bind(&r.name)
    .bind(r.allocation_id.0)
    .bind(r.run_id.0)
    .bind(i64::from(r.group))
    .bind(&r.pool)
    .bind(r.reference.clone())
    .bind(r.state.as_str())
    .bind(r.deadline.0)
    .bind(i64::from(r.attempts))
    .bind(i64::from(r.generation))
    .bind(&r.spawn_hash)
    .bind(r.created_at.0)
    .bind(r.updated_at.0)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn delete(conn: &mut sqlx::AnyConnection, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM worker_requests WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

fn request_from(row: &AnyRow) -> Result<WorkerRequestRecord> {
    Ok(WorkerRequestRecord {
        name: row.try_get("name")?,
        allocation_id: AllocationId(row.try_get("allocation_id")?),
        run_id: RunId(row.try_get("run_id")?),
        group: uint("worker request group", row.try_get("grp")?)?,
        pool: row.try_get("pool")?,
        reference: row.try_get("reference")?,
        state: parse_enum::<WorkerRequestState>(
            "worker request state",
            &row.try_get::<String, _>("state")?,
        )?,
        deadline: ts(row, "deadline")?,
        attempts: uint("worker request attempts", row.try_get("attempts")?)?,
        generation: uint("worker request generation", row.try_get("generation")?)?,
        spawn_hash: row.try_get("spawn_hash")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

/// Every worker request not done with, by name.
pub(super) async fn all(conn: &mut sqlx::AnyConnection) -> Result<Vec<WorkerRequestRecord>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM worker_requests ORDER BY name"
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(request_from)
    .collect()
}

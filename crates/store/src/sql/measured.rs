//! What attempts really used (`measured_usage`): sums for usage reports'
//! efficiency, and a pipeline's recent measured attempts for recommendations.

use corral_core::clock::Timestamp;
use corral_core::ids::{AttemptId, RunId};
use corral_core::resources::Resources;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::metering::{scope, split_sum, wide};
use super::rows::uint;
use crate::Result;
use crate::records::{Measured, MeasuredAttempt, MeasuredSum, UsageQuery};

/// Measured usage of the attempts that ended within the query's window, by
/// tenant, pool, pipeline and UTC day.
pub(super) async fn sums(pool: &AnyPool, query: &UsageQuery) -> Result<Vec<MeasuredSum>> {
    let (scoped, values) = scope(3, [("tenant", &query.tenant), ("pool", &query.pool)]);
    let sql = format!(
        "SELECT tenant, pool, pipeline, day, {}, {} FROM measured_usage \
         WHERE ended_at >= $1 AND ended_at < $2{scoped} GROUP BY tenant, pool, pipeline, day",
        split_sum("cpu_micros", "cpu"),
        split_sum("(memory_peak_bytes / 1048576) * duration_ms", "memory"),
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(query.window.from_ms)
        .bind(query.window.to_ms);
    for v in values {
        q = q.bind(v);
    }
    let saturated = |x: i128| i64::try_from(x).unwrap_or(i64::MAX);
    q.fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(MeasuredSum {
                tenant: row.try_get("tenant")?,
                pool: row.try_get("pool")?,
                pipeline: row.try_get("pipeline")?,
                day_ms: row.try_get("day")?,
                cpu_micros: saturated(wide(row, "cpu")?),
                memory_peak_mib_ms: saturated(wide(row, "memory")?),
            })
        })
        .collect()
}

/// The measured attempts that succeeded in `tenant`'s runs of `pipeline`
/// since `since`, newest first, at most `limit`.
pub(super) async fn recent(
    pool: &AnyPool,
    tenant: &str,
    pipeline: &str,
    since: Timestamp,
    limit: u32,
) -> Result<Vec<MeasuredAttempt>> {
    sqlx::query(
        "SELECT attempt, run_id, tenant, pool, pipeline, step, succeeded, ended_at, duration_ms, \
         cpu_millis, memory_mib, cpu_micros, memory_peak_bytes, throttled_micros FROM measured_usage \
         WHERE tenant = $1 AND pipeline = $2 AND ended_at >= $3 AND succeeded = 1 \
         ORDER BY ended_at DESC, attempt DESC LIMIT $4",
    )
    .bind(tenant)
    .bind(pipeline)
    .bind(since.0)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(attempt_from)
    .collect()
}

fn attempt_from(row: &AnyRow) -> Result<MeasuredAttempt> {
    Ok(MeasuredAttempt {
        attempt: AttemptId(row.try_get("attempt")?),
        run_id: RunId(row.try_get("run_id")?),
        tenant: row.try_get("tenant")?,
        pool: row.try_get("pool")?,
        pipeline: row.try_get("pipeline")?,
        step: row.try_get("step")?,
        succeeded: row.try_get::<i64, _>("succeeded")? != 0,
        ended_at: Timestamp(row.try_get("ended_at")?),
        duration_ms: row.try_get("duration_ms")?,
        requested: Resources::new(
            uint("cpu_millis", row.try_get("cpu_millis")?)?,
            uint("memory_mib", row.try_get("memory_mib")?)?,
            0,
        ),
        usage: Measured {
            cpu_micros: uint("cpu_micros", row.try_get("cpu_micros")?)?,
            memory_peak_bytes: uint("memory_peak_bytes", row.try_get("memory_peak_bytes")?)?,
            throttled_micros: uint("throttled_micros", row.try_get("throttled_micros")?)?,
        },
    })
}

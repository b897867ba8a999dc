//! The metering tables: pools' price and capacity histories, the spans that
//! usage is computed from, and the durations that estimates learn from.

use corral_core::clock::Timestamp;
use corral_core::ids::{AllocationId, RunId};
use corral_core::metering::{CapacityChange, PriceChange, Span};
use corral_core::money::Money;
use corral_core::resources::Resources;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::rows::{from_json, int, opt_ts, to_json, ts, uint};
use crate::Result;
use crate::records::{AlertRecord, PipelineDurations, SpanFilter};

pub(super) async fn put_price(conn: &mut sqlx::AnyConnection, p: &PriceChange) -> Result<()> {
    sqlx::query(
        "INSERT INTO pool_prices (pool, at, price) VALUES ($1, $2, $3) \
         ON CONFLICT (pool, at) DO UPDATE SET price = excluded.price",
    )
    .bind(&p.pool)
    .bind(p.at_ms)
    .bind(to_json(&p.price))
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn put_capacity(conn: &mut sqlx::AnyConnection, c: &CapacityChange) -> Result<()> {
    sqlx::query(
        "INSERT INTO pool_capacity (pool, at, cpu_millis, memory_mib, gpu) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (pool, at) DO UPDATE SET cpu_millis = excluded.cpu_millis, \
         memory_mib = excluded.memory_mib, gpu = excluded.gpu",
    )
    .bind(&c.pool)
    .bind(c.at_ms)
    .bind(int("cpu_millis", c.capacity.cpu_millis)?)
    .bind(int("memory_mib", c.capacity.memory_mib)?)
    .bind(int("gpu", c.capacity.gpu)?)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn prices(conn: &mut sqlx::AnyConnection) -> Result<Vec<PriceChange>> {
    sqlx::query("SELECT pool, at, price FROM pool_prices ORDER BY pool, at")
        .fetch_all(conn)
        .await?
        .iter()
        .map(|row| {
            Ok(PriceChange {
                pool: row.try_get("pool")?,
                at_ms: row.try_get("at")?,
                price: from_json("pool price", &row.try_get::<String, _>("price")?)?,
            })
        })
        .collect()
}

fn capacity_from(row: &AnyRow) -> Result<CapacityChange> {
    Ok(CapacityChange {
        pool: row.try_get("pool")?,
        at_ms: row.try_get("at")?,
        capacity: Resources {
            cpu_millis: uint("capacity cpu", row.try_get("cpu_millis")?)?,
            memory_mib: uint("capacity memory", row.try_get("memory_mib")?)?,
            gpu: uint("capacity gpu", row.try_get("gpu")?)?,
        },
    })
}

const CAPACITY_COLUMNS: &str = "pool, at, cpu_millis, memory_mib, gpu";

pub(super) async fn capacities(conn: &mut sqlx::AnyConnection) -> Result<Vec<CapacityChange>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CAPACITY_COLUMNS} FROM pool_capacity ORDER BY pool, at"
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(capacity_from)
    .collect()
}

/// Each pool's latest capacity.
pub(super) async fn latest_capacities(
    conn: &mut sqlx::AnyConnection,
) -> Result<Vec<CapacityChange>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CAPACITY_COLUMNS} FROM pool_capacity c \
         WHERE at = (SELECT MAX(at) FROM pool_capacity l WHERE l.pool = c.pool) ORDER BY pool"
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(capacity_from)
    .collect()
}

pub(super) async fn spans(pool: &AnyPool, filter: &SpanFilter) -> Result<Vec<Span>> {
    let mut sql = String::from(
        "SELECT a.id, a.run_id, a.tenant, a.pool, r.pipeline, a.cpu_millis, a.memory_mib, a.gpu, \
         a.opened_at, a.closed_at FROM allocations a JOIN runs r ON r.id = a.run_id \
         WHERE a.opened_at < $1 AND (a.closed_at IS NULL OR a.closed_at > $2)",
    );
    let mut texts = Vec::new();
    for (column, value) in [("a.tenant", &filter.tenant), ("a.pool", &filter.pool)] {
        if let Some(v) = value {
            texts.push(v.clone());
            sql.push_str(&format!(" AND {column} = ${}", texts.len() + 2));
        }
    }
    sql.push_str(" ORDER BY a.id");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(filter.to.0)
        .bind(filter.from.0);
    for t in texts {
        query = query.bind(t);
    }
    query
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Span {
                allocation: AllocationId(row.try_get("id")?),
                run: RunId(row.try_get("run_id")?),
                tenant: row.try_get("tenant")?,
                pool: row.try_get("pool")?,
                pipeline: row.try_get("pipeline")?,
                resources: Resources {
                    cpu_millis: uint("allocation cpu", row.try_get("cpu_millis")?)?,
                    memory_mib: uint("allocation memory", row.try_get("memory_mib")?)?,
                    gpu: uint("allocation gpu", row.try_get("gpu")?)?,
                },
                start_ms: row.try_get("opened_at")?,
                end_ms: row.try_get("closed_at")?,
            })
        })
        .collect()
}

pub(super) async fn recent_durations(
    pool: &AnyPool,
    since: Timestamp,
    per_pipeline: u32,
) -> Result<Vec<PipelineDurations>> {
    let rows = sqlx::query(
        "SELECT tenant, pipeline, held FROM ( \
           SELECT r.id, r.tenant, r.pipeline, r.finished_at - MIN(a.opened_at) AS held, \
             ROW_NUMBER() OVER (PARTITION BY r.tenant, r.pipeline ORDER BY r.id DESC) AS n \
           FROM runs r JOIN allocations a ON a.run_id = r.id \
           WHERE r.state = 'succeeded' AND r.finished_at >= $1 \
           GROUP BY r.id, r.tenant, r.pipeline, r.finished_at) recent \
         WHERE n <= $2 ORDER BY tenant, pipeline, id DESC",
    )
    .bind(since.0)
    .bind(i64::from(per_pipeline))
    .fetch_all(pool)
    .await?;
    let mut found: Vec<PipelineDurations> = Vec::new();
    for row in &rows {
        let tenant: String = row.try_get("tenant")?;
        let pipeline: String = row.try_get("pipeline")?;
        let held = row.try_get::<i64, _>("held")?.max(0);
        match found.last_mut() {
            Some(last) if last.tenant == tenant && last.pipeline == pipeline => {
                last.durations.push(held)
            }
            _ => found.push(PipelineDurations {
                tenant,
                pipeline,
                durations: vec![held],
            }),
        }
    }
    Ok(found)
}

pub(super) async fn put_alert(conn: &mut sqlx::AnyConnection, a: &AlertRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO budget_alerts (tenant, month, threshold_milli, at, spent, monthly, attempts, delivered_at, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (tenant, month, threshold_milli) DO UPDATE SET attempts = excluded.attempts, \
         delivered_at = excluded.delivered_at, last_error = excluded.last_error",
    )
    .bind(&a.tenant)
    .bind(&a.month)
    .bind(a.threshold_milli)
    .bind(a.at.0)
    .bind(a.spent.micros())
    .bind(a.monthly.micros())
    .bind(i64::from(a.attempts))
    .bind(a.delivered_at.map(|t| t.0))
    .bind(a.last_error.clone())
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) fn alert_from(row: &AnyRow) -> Result<AlertRecord> {
    Ok(AlertRecord {
        tenant: row.try_get("tenant")?,
        month: row.try_get("month")?,
        threshold_milli: row.try_get("threshold_milli")?,
        at: ts(row, "at")?,
        spent: Money::from_micros(row.try_get("spent")?),
        monthly: Money::from_micros(row.try_get("monthly")?),
        attempts: uint("alert attempts", row.try_get("attempts")?)?,
        delivered_at: opt_ts(row, "delivered_at")?,
        last_error: row.try_get("last_error")?,
    })
}

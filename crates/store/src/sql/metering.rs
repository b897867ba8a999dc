//! The metering tables: pools' price and capacity histories, the spans that
//! usage is computed from, and the durations that estimates learn from.

use std::collections::BTreeMap;

use corral_core::clock::Timestamp;
use corral_core::ids::{AllocationId, RunId};
use corral_core::metering::{
    CapacityChange, PriceChange, SlotPiece, SlotUsage, Span, Usage, day_start,
};
use corral_core::money::Money;
use corral_core::pipeline::PipelineSpec;
use corral_core::resources::ResourceTime;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::rows::{from_json, int, opt_ts, resources, to_json, ts, uint};
use crate::Result;
use crate::records::{AlertRecord, Metered, PipelineDurations, SpanFilter, UsageQuery};

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
        capacity: resources(row)?,
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

const SPAN_COLUMNS: &str = "a.id, a.run_id, a.tenant, a.pool, r.pipeline, a.cpu_millis, \
     a.memory_mib, a.gpu, a.opened_at, a.closed_at";

fn span_from(row: &AnyRow) -> Result<Span> {
    Ok(Span {
        allocation: AllocationId(row.try_get("id")?),
        run: RunId(row.try_get("run_id")?),
        tenant: row.try_get("tenant")?,
        pool: row.try_get("pool")?,
        pipeline: row.try_get("pipeline")?,
        resources: resources(row)?,
        start_ms: row.try_get("opened_at")?,
        end_ms: row.try_get("closed_at")?,
    })
}

/// ` AND column = $n` for each filter that is set, numbered from `first`,
/// and the values to bind in order.
pub(super) fn scope(first: usize, filters: [(&str, &Option<String>); 2]) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for (column, value) in filters {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ${}", first + values.len()));
            values.push(v.clone());
        }
    }
    (sql, values)
}

pub(super) async fn spans(pool: &AnyPool, filter: &SpanFilter) -> Result<Vec<Span>> {
    let (scoped, values) = scope(3, [("a.tenant", &filter.tenant), ("a.pool", &filter.pool)]);
    // Not metered yet: what `usage_open` lists, a small table, read first
    // (CROSS JOIN keeps SQLite from walking every allocation instead).
    let from = if filter.unmetered {
        "FROM usage_open u CROSS JOIN allocations a CROSS JOIN runs r \
         WHERE a.id = u.allocation AND r.id = a.run_id AND"
    } else {
        "FROM allocations a JOIN runs r ON r.id = a.run_id WHERE"
    };
    let sql = format!(
        "SELECT {SPAN_COLUMNS} {from} \
         a.opened_at < $1 AND (a.closed_at IS NULL OR a.closed_at > $2){scoped} \
         ORDER BY a.id"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(filter.to.0)
        .bind(filter.from.0);
    for v in values {
        query = query.bind(v);
    }
    query.fetch_all(pool).await?.iter().map(span_from).collect()
}

pub(super) async fn unmetered(pool: &AnyPool, limit: u32) -> Result<Vec<Span>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SPAN_COLUMNS} FROM usage_open u CROSS JOIN allocations a CROSS JOIN runs r \
         WHERE a.id = u.allocation AND r.id = a.run_id AND a.closed_at IS NOT NULL \
         ORDER BY a.closed_at, a.id LIMIT $1"
    )))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(span_from)
    .collect()
}

/// Lists the allocations a batch wrote among those not metered yet, unless
/// they are metered already, in a statement per [`METER_ROWS`].
pub(super) async fn note_unmetered(conn: &mut sqlx::AnyConnection, ids: &[i64]) -> Result<()> {
    for chunk in ids.chunks(METER_ROWS) {
        let sql = format!(
            "INSERT INTO usage_open (allocation) SELECT id FROM allocations \
             WHERE metered = 0 AND id IN ({}) ON CONFLICT DO NOTHING",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// An exact resource-time or a cost as a column: saturated, as no real
/// allocation comes near the bounds of an `i64` within one slot.
fn column(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Rows per multi-row statement of the metering (at most 15 parameters a
/// row, well within SQLite's and PostgreSQL's limits).
const METER_ROWS: usize = 200;

/// Meters the closed allocations of a batch in a few statements, whatever
/// their number: each one not metered yet is marked, leaves `usage_open`, and
/// has its pieces kept and added to the sums per slot; one metered already
/// (or twice in the batch) counts once.
pub(super) async fn meter_all(conn: &mut sqlx::AnyConnection, batch: &[&Metered]) -> Result<()> {
    let mut first: BTreeMap<i64, &Metered> = BTreeMap::new();
    for m in batch {
        first.entry(m.span.allocation.0).or_insert(m);
    }
    let ids: Vec<i64> = first.keys().copied().collect();
    let mut metered: Vec<&Metered> = Vec::new();
    for chunk in ids.chunks(METER_ROWS) {
        let sql = format!(
            "UPDATE allocations SET metered = 1 WHERE metered = 0 AND closed_at IS NOT NULL \
             AND id IN ({}) RETURNING id",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id: i64 = row.try_get("id")?;
            metered.extend(first.get(&id));
        }
    }
    if metered.is_empty() {
        return Ok(());
    }
    for chunk in metered.chunks(METER_ROWS) {
        let sql = format!(
            "DELETE FROM usage_open WHERE allocation IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for m in chunk {
            query = query.bind(m.span.allocation.0);
        }
        query.execute(&mut *conn).await?;
    }
    let pieces: Vec<(&Span, &SlotPiece)> = metered
        .iter()
        .flat_map(|m| m.pieces.iter().map(|p| (&m.span, p)))
        .collect();
    for chunk in pieces.chunks(METER_ROWS) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * 15 + 1, 15)))
            .collect();
        let sql = format!(
            "INSERT INTO usage_pieces (allocation, slot, day, tenant, pool, pipeline, started_at, ended_at, \
             cpu_millis, memory_mib, gpu, cpu_milli_ms, memory_mib_ms, gpu_ms, cost) VALUES {}",
            rows.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (span, p) in chunk {
            let time = &p.usage.time;
            query = query
                .bind(span.allocation.0)
                .bind(p.slot_ms)
                .bind(day_start(p.slot_ms))
                .bind(span.tenant.clone())
                .bind(span.pool.clone())
                .bind(span.pipeline.clone())
                .bind(p.start_ms)
                .bind(p.end_ms)
                .bind(int("cpu_millis", span.resources.cpu_millis)?)
                .bind(int("memory_mib", span.resources.memory_mib)?)
                .bind(int("gpu", span.resources.gpu)?)
                .bind(column(time.cpu_milli_ms))
                .bind(column(time.memory_mib_ms))
                .bind(column(time.gpu_ms))
                .bind(p.usage.cost.micros());
        }
        query.execute(&mut *conn).await?;
    }
    // The sums per slot, added up here first: one statement may not touch a
    // row twice.
    let mut slots: BTreeMap<(i64, &str, &str, &str), [i128; 4]> = BTreeMap::new();
    for (span, p) in &pieces {
        let sum = slots
            .entry((p.slot_ms, &span.tenant, &span.pool, &span.pipeline))
            .or_default();
        let time = &p.usage.time;
        sum[0] += time.cpu_milli_ms;
        sum[1] += time.memory_mib_ms;
        sum[2] += time.gpu_ms;
        sum[3] += i128::from(p.usage.cost.micros());
    }
    let slots: Vec<_> = slots.into_iter().collect();
    for chunk in slots.chunks(METER_ROWS) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * 8 + 1, 8)))
            .collect();
        let sql = format!(
            "INSERT INTO usage_slots (slot, tenant, pool, pipeline, cpu_milli_ms, memory_mib_ms, gpu_ms, cost) \
             VALUES {} ON CONFLICT (slot, tenant, pool, pipeline) DO UPDATE SET \
             cpu_milli_ms = {}, memory_mib_ms = {}, gpu_ms = {}, cost = {}",
            rows.join(", "),
            added("cpu_milli_ms"),
            added("memory_mib_ms"),
            added("gpu_ms"),
            added("cost"),
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for ((slot, tenant, pool, pipeline), sum) in chunk {
            query = query
                .bind(*slot)
                .bind(tenant.to_string())
                .bind(pool.to_string())
                .bind(pipeline.to_string());
            for v in sum {
                query = query.bind(column(*v));
            }
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A slot's `column` plus the one being added, saturating at the largest
/// BIGINT (both are never negative): PostgreSQL refuses an overflow.
fn added(column: &str) -> String {
    format!(
        "CASE WHEN usage_slots.{column} > {max} - excluded.{column} THEN {max} \
         ELSE usage_slots.{column} + excluded.{column} END",
        max = i64::MAX
    )
}

/// Half of a column summed exactly: SQL's `SUM` of BIGINTs fails on overflow
/// (SQLite's with "integer overflow", and PostgreSQL's cast back to BIGINT),
/// so each column is summed as its high and low 32 bits, which cannot overflow
/// below 2^31 rows, and put together in Rust ([`wide`]).
const HALF: i64 = 1 << 32;

/// `SUM(column)` as two BIGINT columns `{name}_hi` and `{name}_lo`.
pub(super) fn split_sum(column: &str, name: &str) -> String {
    format!(
        "CAST(COALESCE(SUM({column} / {HALF}), 0) AS BIGINT) AS {name}_hi, \
         CAST(COALESCE(SUM({column} % {HALF}), 0) AS BIGINT) AS {name}_lo"
    )
}

/// The exact sum a [`split_sum`] read.
pub(super) fn wide(row: &AnyRow, name: &str) -> Result<i128> {
    let hi: i64 = row.try_get(format!("{name}_hi").as_str())?;
    let lo: i64 = row.try_get(format!("{name}_lo").as_str())?;
    Ok(i128::from(hi) * i128::from(HALF) + i128::from(lo))
}

/// `count` numbered placeholders from `$first`, separated by commas.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sums of metered usage from `table` where `condition` holds (its
/// parameters are `$1` and `$2`, bound to `first` and `second`), grouped as
/// the query asks; a key not grouped by is empty, an ungrouped slot 0.
async fn sums(
    pool: &AnyPool,
    table: &str,
    condition: &str,
    (first, second): (i64, i64),
    query: &UsageQuery,
) -> Result<Vec<SlotUsage>> {
    let g = query.grouping;
    let mut select = Vec::new();
    let mut group = Vec::new();
    for (grouped, column, blank) in [
        (g.tenant, "tenant", "CAST('' AS TEXT)"),
        (g.pool, "pool", "CAST('' AS TEXT)"),
        (g.pipeline, "pipeline", "CAST('' AS TEXT)"),
        (g.slot, "slot", "CAST(0 AS BIGINT)"),
    ] {
        if grouped {
            select.push(column.to_string());
            group.push(column);
        } else {
            select.push(format!("{blank} AS {column}"));
        }
    }
    let group_by = if group.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", group.join(", "))
    };
    let (scoped, values) = scope(3, [("tenant", &query.tenant), ("pool", &query.pool)]);
    let sql = format!(
        "SELECT {}, COUNT(*) AS n, {}, {}, {}, {} FROM {table} WHERE {condition}{scoped}{group_by}",
        select.join(", "),
        split_sum("cpu_milli_ms", "cpu"),
        split_sum("memory_mib_ms", "memory"),
        split_sum("gpu_ms", "gpu"),
        split_sum("cost", "cost"),
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(first)
        .bind(second);
    for v in values {
        q = q.bind(v);
    }
    let mut found = Vec::new();
    for row in q.fetch_all(pool).await? {
        if row.try_get::<i64, _>("n")? == 0 {
            continue;
        }
        found.push(SlotUsage {
            tenant: row.try_get("tenant")?,
            pool: row.try_get("pool")?,
            pipeline: row.try_get("pipeline")?,
            slot_ms: row.try_get("slot")?,
            usage: Usage {
                time: ResourceTime {
                    cpu_milli_ms: wide(&row, "cpu")?,
                    memory_mib_ms: wide(&row, "memory")?,
                    gpu_ms: wide(&row, "gpu")?,
                },
                cost: Money::saturating_from_i128(wide(&row, "cost")?),
            },
        });
    }
    Ok(found)
}

pub(super) async fn slot_sums(pool: &AnyPool, query: &UsageQuery) -> Result<Vec<SlotUsage>> {
    let w = query.window;
    sums(
        pool,
        "usage_slots",
        "slot >= $1 AND slot < $2",
        (w.from_ms, w.to_ms),
        query,
    )
    .await
}

pub(super) async fn piece_sums(pool: &AnyPool, query: &UsageQuery) -> Result<Vec<SlotUsage>> {
    let w = query.window;
    let condition = format!(
        "day = {} AND started_at >= $1 AND ended_at <= $2",
        day_start(w.from_ms)
    );
    sums(
        pool,
        "usage_pieces",
        &condition,
        (w.from_ms, w.to_ms),
        query,
    )
    .await
}

pub(super) async fn straddling_pieces(pool: &AnyPool, query: &UsageQuery) -> Result<Vec<Span>> {
    let w = query.window;
    let (scoped, values) = scope(4, [("p.tenant", &query.tenant), ("p.pool", &query.pool)]);
    let sql = format!(
        "SELECT p.allocation AS id, a.run_id, p.tenant, p.pool, p.pipeline, p.cpu_millis, p.memory_mib, \
         p.gpu, p.started_at AS opened_at, p.ended_at AS closed_at \
         FROM usage_pieces p JOIN allocations a ON a.id = p.allocation \
         WHERE p.day = $1 AND p.started_at < $3 AND p.ended_at > $2 \
         AND (p.started_at < $2 OR p.ended_at > $3){scoped} ORDER BY p.allocation"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(day_start(w.from_ms))
        .bind(w.from_ms)
        .bind(w.to_ms);
    for v in values {
        q = q.bind(v);
    }
    q.fetch_all(pool).await?.iter().map(span_from).collect()
}

pub(super) async fn recent_durations(
    pool: &AnyPool,
    since: Timestamp,
    per_pipeline: u32,
) -> Result<Vec<PipelineDurations>> {
    let rows = sqlx::query(
        "SELECT tenant, pipeline, spec, held FROM ( \
           SELECT r.id, r.tenant, r.pipeline, r.spec, r.finished_at - MIN(a.opened_at) AS held, \
             ROW_NUMBER() OVER (PARTITION BY r.tenant, r.pipeline ORDER BY r.id DESC) AS n \
           FROM runs r JOIN allocations a ON a.run_id = r.id \
           WHERE r.state = 'succeeded' AND r.finished_at >= $1 \
           GROUP BY r.id, r.tenant, r.pipeline, r.spec, r.finished_at) recent \
         WHERE n <= $2 ORDER BY tenant, pipeline, id DESC",
    )
    .bind(since.0)
    .bind(i64::from(per_pipeline))
    .fetch_all(pool)
    .await?;
    // The last runs of each name, split by their steps' content, newest first.
    let mut found: BTreeMap<(String, String, u64), Vec<i64>> = BTreeMap::new();
    for row in &rows {
        let tenant: String = row.try_get("tenant")?;
        let pipeline: String = row.try_get("pipeline")?;
        let spec: PipelineSpec = from_json("pipeline spec", &row.try_get::<String, _>("spec")?)?;
        let held = row.try_get::<i64, _>("held")?.max(0);
        found
            .entry((tenant, pipeline, spec.content_key()))
            .or_default()
            .push(held);
    }
    Ok(found
        .into_iter()
        .map(
            |((tenant, pipeline, content), durations)| PipelineDurations {
                tenant,
                pipeline,
                content,
                durations,
            },
        )
        .collect())
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

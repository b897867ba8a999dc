//! The governance time series in SQL: samples written in batches, reads of a
//! range (merged into buckets by the database), and the hourly rollup with
//! retention, one transaction each. They go through their own connections
//! (for SQLite, their own file), so a sample never waits for or delays a state
//! transaction.

use corral_core::clock::Timestamp;
use corral_core::history::{HOUR_MS, Rollup, Sample, Series, Source, hour_of, waits};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::history::{HistoryPoint, HistoryQuery, WaitCount, WaitQuery};
use crate::records::AdmissionWait;
use crate::{Result, StoreError};

/// The schema of the time series: the migration's own text, run as it is on
/// a SQLite store's separate history file.
pub(super) const SCHEMA: &str = include_str!("../../migrations/0005_history.sql");

/// Rows per INSERT statement (four parameters each).
const ROWS_PER_INSERT: usize = 100;

pub(super) async fn append(pool: &AnyPool, samples: &[Sample]) -> Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for chunk in samples.chunks(ROWS_PER_INSERT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let n = i * 4;
                format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
            })
            .collect();
        let sql = format!(
            "INSERT INTO history_samples (series, subject, at, value) VALUES {} \
             ON CONFLICT (series, subject, at) DO NOTHING",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for s in chunk {
            query = query
                .bind(s.series.name())
                .bind(s.subject.clone())
                .bind(s.at.0)
                .bind(s.value);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn read(pool: &AnyPool, q: &HistoryQuery) -> Result<Vec<HistoryPoint>> {
    if q.series.is_empty() || q.subjects.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    // Placeholders in order: the range, the series, the subjects, the limit.
    let mut n = 2;
    let mut list = |len: usize| {
        let names: Vec<String> = (0..len)
            .map(|_| {
                n += 1;
                format!("${n}")
            })
            .collect();
        names.join(", ")
    };
    let mut filter = format!(
        "at >= $1 AND at <= $2 AND series IN ({})",
        list(q.series.len())
    );
    if let Some(subjects) = &q.subjects {
        filter.push_str(&format!(" AND subject IN ({})", list(subjects.len())));
    }
    let limit = format!("${}", n + 1);
    let table = match q.source {
        Source::Raw => "history_samples",
        Source::Hourly => "history_hourly",
    };
    // The bucket length is an integer we own, so it is inlined.
    let sql = match (q.source, q.bucket_ms) {
        (Source::Raw, None) => format!(
            "SELECT series, subject, at, value AS mean_value, value AS max_value \
             FROM {table} WHERE {filter} ORDER BY series, subject, at LIMIT {limit}"
        ),
        (Source::Hourly, None) => format!(
            "SELECT series, subject, at, mean_value, max_value, samples \
             FROM {table} WHERE {filter} ORDER BY series, subject, at LIMIT {limit}"
        ),
        (Source::Raw, Some(b)) => format!(
            "SELECT series, subject, (at / {b}) * {b} AS bucket, AVG(value) AS mean_value, \
             MAX(value) AS max_value, COUNT(*) AS samples FROM {table} WHERE {filter} \
             GROUP BY series, subject, bucket ORDER BY series, subject, bucket LIMIT {limit}"
        ),
        (Source::Hourly, Some(b)) => format!(
            "SELECT series, subject, (at / {b}) * {b} AS bucket, \
             SUM(mean_value * samples) / CAST(SUM(samples) AS DOUBLE PRECISION) AS mean_value, \
             MAX(max_value) AS max_value, CAST(SUM(samples) AS BIGINT) AS samples \
             FROM {table} WHERE {filter} \
             GROUP BY series, subject, bucket ORDER BY series, subject, bucket LIMIT {limit}"
        ),
    };
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(q.from.0).bind(q.to.0);
    for s in &q.series {
        query = query.bind(s.name());
    }
    for s in q.subjects.iter().flatten() {
        query = query.bind(s.clone());
    }
    let at = if q.bucket_ms.is_some() {
        "bucket"
    } else {
        "at"
    };
    let raw = q.source == Source::Raw && q.bucket_ms.is_none();
    query
        .bind(i64::from(q.limit))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| point(row, at, raw))
        .collect()
}

fn point(row: &AnyRow, at: &str, raw: bool) -> Result<HistoryPoint> {
    let name: String = row.try_get("series")?;
    let series = Series::parse(&name).ok_or_else(|| StoreError::Corrupt {
        what: "history series",
        detail: format!("{name:?} is not a series"),
    })?;
    let samples = if raw {
        1
    } else {
        super::rows::uint("history samples", row.try_get("samples")?)?
    };
    Ok(HistoryPoint {
        series,
        subject: row.try_get("subject")?,
        at: Timestamp(row.try_get(at)?),
        mean: row.try_get("mean_value")?,
        max: row.try_get("max_value")?,
        samples,
    })
}

pub(super) async fn roll_up(pool: &AnyPool, r: &Rollup) -> Result<()> {
    let mut tx = pool.begin().await?;
    // From the latest hour already rolled up (samples may have come after it
    // was), each hour recomputed whole from its samples: nothing counts twice.
    let since: Option<i64> = sqlx::query("SELECT MAX(at) AS m FROM history_hourly")
        .fetch_one(&mut *tx)
        .await?
        .try_get("m")?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO history_hourly (series, subject, at, mean_value, max_value, samples) \
         SELECT series, subject, (at / {HOUR_MS}) * {HOUR_MS}, AVG(value), MAX(value), COUNT(*) \
         FROM history_samples WHERE at >= $1 AND at < $2 \
         GROUP BY series, subject, (at / {HOUR_MS}) * {HOUR_MS} \
         ON CONFLICT (series, subject, at) DO UPDATE SET mean_value = excluded.mean_value, \
         max_value = excluded.max_value, samples = excluded.samples"
    )))
    .bind(since.unwrap_or(i64::MIN))
    .bind(r.until.0)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM history_samples WHERE at < $1")
        .bind(r.raw_before.0.min(r.until.0))
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM history_hourly WHERE at < $1")
        .bind(r.hourly_before.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn count_wait(conn: &mut sqlx::AnyConnection, w: &AdmissionWait) -> Result<()> {
    sqlx::query(
        "INSERT INTO admission_waits (hour, tenant, bucket, runs) VALUES ($1, $2, $3, 1) \
         ON CONFLICT (hour, tenant, bucket) DO UPDATE SET runs = admission_waits.runs + 1",
    )
    .bind(hour_of(w.at).0)
    .bind(&w.tenant)
    .bind(i64::from(waits::bucket_of(w.wait_ms)))
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn read_waits(pool: &AnyPool, q: &WaitQuery) -> Result<Vec<WaitCount>> {
    if q.tenants.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let mut filter = "hour >= $1 AND hour <= $2".to_string();
    if let Some(tenants) = &q.tenants {
        let names: Vec<String> = (0..tenants.len()).map(|i| format!("${}", i + 3)).collect();
        filter.push_str(&format!(" AND tenant IN ({})", names.join(", ")));
    }
    // The bucket length is an integer we own, so it is inlined.
    let b = q.bucket_ms.max(HOUR_MS);
    let sql = format!(
        "SELECT tenant, (hour / {b}) * {b} AS at, bucket, CAST(SUM(runs) AS BIGINT) AS runs \
         FROM admission_waits WHERE {filter} \
         GROUP BY tenant, (hour / {b}) * {b}, bucket ORDER BY tenant, at, bucket"
    );
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(hour_of(q.from).0)
        .bind(hour_of(q.to).0);
    for t in q.tenants.iter().flatten() {
        query = query.bind(t.clone());
    }
    query
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(WaitCount {
                tenant: row.try_get("tenant")?,
                at: Timestamp(row.try_get("at")?),
                bucket: super::rows::uint("admission wait bucket", row.try_get("bucket")?)?,
                runs: super::rows::uint("admission wait runs", row.try_get("runs")?)?,
            })
        })
        .collect()
}

pub(super) async fn prune_waits(pool: &AnyPool, r: &Rollup) -> Result<()> {
    sqlx::query("DELETE FROM admission_waits WHERE hour < $1")
        .bind(r.hourly_before.0)
        .execute(pool)
        .await?;
    Ok(())
}

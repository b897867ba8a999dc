//! The governance time series in SQL: samples written in batches, reads of a
//! range (merged into buckets by the database), and the hourly and daily
//! rollup with retention, one transaction each. They go through their own connections
//! (for SQLite, their own file), so a sample never waits for or delays a state
//! transaction.

use std::collections::BTreeMap;

use corral_core::clock::Timestamp;
use corral_core::history::{
    DAY_MS, HOUR_MS, Rollup, Sample, Series, Source, daily_span, day_of, hour_of, waits,
};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::tx::Tx;
use crate::history::{HistoryPoint, HistoryQuery, WaitCount, WaitQuery};
use crate::records::AdmissionWait;
use crate::{Result, StoreError};

/// The schema of the time series: the migrations' own text, run as it is on
/// a SQLite store's separate history file.
pub(super) const SCHEMA: &str = concat!(
    include_str!("../../migrations/0005_history.sql"),
    include_str!("../../migrations/0008_history_daily.sql")
);

/// Rows per INSERT statement (four parameters each).
const ROWS_PER_INSERT: usize = 100;

pub(super) async fn append(pool: &AnyPool, samples: &[Sample]) -> Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut tx = Tx::begin(pool).await?;
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

/// Numbered placeholders handed out in order, so that a statement's binds
/// follow the same order.
struct Placeholders(usize);

impl Placeholders {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("${}", self.0)
    }

    fn list(&mut self, len: usize) -> String {
        (0..len).map(|_| self.next()).collect::<Vec<_>>().join(", ")
    }

    /// A history query's filter; bound by [`bind_filter`].
    fn filter(&mut self, q: &HistoryQuery) -> String {
        let mut filter = format!(
            "at >= {} AND at <= {} AND series IN ({})",
            self.next(),
            self.next(),
            self.list(q.series.len())
        );
        if let Some(subjects) = &q.subjects {
            filter.push_str(&format!(" AND subject IN ({})", self.list(subjects.len())));
        }
        filter
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind_filter<'q>(mut query: AnyQuery<'q>, q: &HistoryQuery) -> AnyQuery<'q> {
    query = query.bind(q.from.0).bind(q.to.0);
    for s in &q.series {
        query = query.bind(s.name());
    }
    for s in q.subjects.iter().flatten() {
        query = query.bind(s.clone());
    }
    query
}

/// The end of the days rolled up into `table` (keyed by `column`): the day
/// after the latest one there.
async fn rolled_until(pool: &AnyPool, table: &str, column: &str) -> Result<Option<Timestamp>> {
    let latest: Option<i64> = sqlx::query(AssertSqlSafe(format!(
        "SELECT MAX({column}) AS m FROM {table}"
    )))
    .fetch_one(pool)
    .await?
    .try_get("m")?;
    Ok(latest.map(|d| Timestamp(d + DAY_MS)))
}

/// The end of the hours rolled up into `history_hourly`: the hour after the
/// latest one there (the rollup aggregates every hour before its cut-off at
/// once), or the beginning of time when none is.
async fn rolled_hours_until(pool: &AnyPool) -> Result<Timestamp> {
    let latest: Option<i64> = sqlx::query("SELECT MAX(at) AS m FROM history_hourly")
        .fetch_one(pool)
        .await?
        .try_get("m")?;
    Ok(Timestamp(latest.map_or(i64::MIN, |h| h + HOUR_MS)))
}

pub(super) async fn read(pool: &AnyPool, q: &HistoryQuery) -> Result<Vec<HistoryPoint>> {
    if q.series.is_empty() || q.subjects.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let days = match q.source {
        Source::Hourly => daily_span(
            q.from,
            q.to,
            q.bucket_ms,
            rolled_until(pool, "history_daily", "at").await?,
        ),
        Source::Raw => None,
    };
    let mut p = Placeholders(0);
    // The rows read: one table's, or whole days from the daily aggregates and
    // the hours around them.
    const AGGREGATE: &str = "series, subject, at, mean_value, max_value, samples";
    let mut rows = match (q.source, days) {
        (Source::Raw, _) => format!(
            "SELECT series, subject, at, value FROM history_samples WHERE {}",
            p.filter(q)
        ),
        (Source::Hourly, None) => format!(
            "SELECT {AGGREGATE} FROM history_hourly WHERE {}",
            p.filter(q)
        ),
        (Source::Hourly, Some(_)) => format!(
            "SELECT {AGGREGATE} FROM history_daily WHERE {} AND at >= {} AND at < {} UNION ALL \
             SELECT {AGGREGATE} FROM history_hourly WHERE {} AND (at < {} OR at >= {})",
            p.filter(q),
            p.next(),
            p.next(),
            p.filter(q),
            p.next(),
            p.next()
        ),
    };
    // The hours not rolled up yet (the current one at least) are read from the
    // raw samples, merged per hour as the rollup would: a range in hours or
    // days shows what happened in the last minutes too.
    let live_from = match q.source {
        Source::Hourly => {
            let live_from = rolled_hours_until(pool).await?;
            rows.push_str(&format!(
                " UNION ALL SELECT series, subject, (at / {HOUR_MS}) * {HOUR_MS} AS at, \
                 AVG(value) AS mean_value, MAX(value) AS max_value, COUNT(*) AS samples \
                 FROM history_samples WHERE {} AND at >= {} \
                 GROUP BY series, subject, (at / {HOUR_MS}) * {HOUR_MS}",
                p.filter(q),
                p.next()
            ));
            Some(live_from)
        }
        Source::Raw => None,
    };
    let limit = p.next();
    // The bucket length is an integer we own, so it is inlined.
    let sql = match (q.source, q.bucket_ms) {
        (Source::Raw, None) => format!(
            "SELECT series, subject, at, value AS mean_value, value AS max_value \
             FROM ({rows}) AS points ORDER BY series, subject, at LIMIT {limit}"
        ),
        (Source::Hourly, None) => format!(
            "SELECT series, subject, at, mean_value, max_value, samples \
             FROM ({rows}) AS points ORDER BY series, subject, at LIMIT {limit}"
        ),
        (Source::Raw, Some(b)) => format!(
            "SELECT series, subject, (at / {b}) * {b} AS bucket, AVG(value) AS mean_value, \
             MAX(value) AS max_value, COUNT(*) AS samples FROM ({rows}) AS points \
             GROUP BY series, subject, bucket ORDER BY series, subject, bucket LIMIT {limit}"
        ),
        (Source::Hourly, Some(b)) => format!(
            "SELECT series, subject, (at / {b}) * {b} AS bucket, \
             SUM(mean_value * samples) / CAST(SUM(samples) AS DOUBLE PRECISION) AS mean_value, \
             MAX(max_value) AS max_value, CAST(SUM(samples) AS BIGINT) AS samples \
             FROM ({rows}) AS points \
             GROUP BY series, subject, bucket ORDER BY series, subject, bucket LIMIT {limit}"
        ),
    };
    let mut query = bind_filter(sqlx::query(AssertSqlSafe(sql)), q);
    if let Some((first, end)) = days {
        query = bind_filter(query.bind(first.0).bind(end.0), q)
            .bind(first.0)
            .bind(end.0);
    }
    if let Some(live_from) = live_from {
        query = bind_filter(query, q).bind(live_from.0);
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
    let mut tx = Tx::begin(pool).await?;
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
    // Each whole day before `until` from its hours, the same way.
    let since_day: Option<i64> = sqlx::query("SELECT MAX(at) AS m FROM history_daily")
        .fetch_one(&mut *tx)
        .await?
        .try_get("m")?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO history_daily (series, subject, at, mean_value, max_value, samples) \
         SELECT series, subject, (at / {DAY_MS}) * {DAY_MS}, \
         SUM(mean_value * samples) / CAST(SUM(samples) AS DOUBLE PRECISION), MAX(max_value), \
         CAST(SUM(samples) AS BIGINT) \
         FROM history_hourly WHERE at >= $1 AND at < $2 \
         GROUP BY series, subject, (at / {DAY_MS}) * {DAY_MS} \
         ON CONFLICT (series, subject, at) DO UPDATE SET mean_value = excluded.mean_value, \
         max_value = excluded.max_value, samples = excluded.samples"
    )))
    .bind(since_day.unwrap_or(i64::MIN))
    .bind(day_of(r.until).0)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM history_samples WHERE at < $1")
        .bind(r.raw_before.0.min(r.until.0))
        .execute(&mut *tx)
        .await?;
    for table in ["history_hourly", "history_daily"] {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE at < $1")))
            .bind(r.hourly_before.0)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Counts a batch's admissions, in one statement per few hundred (hour,
/// tenant, bucket) they fall in.
pub(super) async fn count_waits(
    conn: &mut sqlx::AnyConnection,
    batch: &[&AdmissionWait],
) -> Result<()> {
    let mut counts: BTreeMap<(i64, &str, u32), i64> = BTreeMap::new();
    for w in batch {
        *counts
            .entry((hour_of(w.at).0, &w.tenant, waits::bucket_of(w.wait_ms)))
            .or_default() += 1;
    }
    let counts: Vec<_> = counts.into_iter().collect();
    for chunk in counts.chunks(ROWS_PER_INSERT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("({})", super::metering::placeholders(i * 4 + 1, 4)))
            .collect();
        let sql = format!(
            "INSERT INTO admission_waits (hour, tenant, bucket, runs) VALUES {} \
             ON CONFLICT (hour, tenant, bucket) DO UPDATE SET runs = admission_waits.runs + excluded.runs",
            rows.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for ((hour, tenant, bucket), runs) in chunk {
            query = query
                .bind(*hour)
                .bind(tenant.to_string())
                .bind(i64::from(*bucket))
                .bind(*runs);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn read_waits(pool: &AnyPool, q: &WaitQuery) -> Result<Vec<WaitCount>> {
    if q.tenants.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    // Whole hours: from the one `from` falls in.
    let (from, to) = (hour_of(q.from), q.to);
    let days = daily_span(
        from,
        to,
        Some(q.bucket_ms),
        rolled_until(pool, "admission_waits_daily", "day").await?,
    );
    let mut p = Placeholders(0);
    let filter = |p: &mut Placeholders, column: &str| {
        let mut filter = format!("{column} >= {} AND {column} <= {}", p.next(), p.next());
        if let Some(tenants) = &q.tenants {
            filter.push_str(&format!(" AND tenant IN ({})", p.list(tenants.len())));
        }
        filter
    };
    let hourly = filter(&mut p, "hour");
    let rows = match days {
        None => {
            format!("SELECT hour AS at, tenant, bucket, runs FROM admission_waits WHERE {hourly}")
        }
        Some(_) => {
            // Placeholders in the order of the text, as they are bound.
            let around = format!("(hour < {} OR hour >= {})", p.next(), p.next());
            let daily = filter(&mut p, "day");
            format!(
                "SELECT hour AS at, tenant, bucket, runs FROM admission_waits \
                 WHERE {hourly} AND {around} UNION ALL \
                 SELECT day AS at, tenant, bucket, runs FROM admission_waits_daily \
                 WHERE {daily} AND day >= {} AND day < {}",
                p.next(),
                p.next()
            )
        }
    };
    // The bucket length is an integer we own, so it is inlined.
    let b = q.bucket_ms.max(HOUR_MS);
    let limit = p.next();
    let sql = format!(
        "SELECT tenant, (at / {b}) * {b} AS at, bucket, CAST(SUM(runs) AS BIGINT) AS runs \
         FROM ({rows}) AS counts GROUP BY tenant, (at / {b}) * {b}, bucket \
         ORDER BY tenant, at, bucket LIMIT {limit}"
    );
    let bind = |mut query: AnyQuery<'static>| {
        query = query.bind(from.0).bind(to.0);
        for t in q.tenants.iter().flatten() {
            query = query.bind(t.clone());
        }
        query
    };
    let mut query = bind(sqlx::query(AssertSqlSafe(sql)));
    if let Some((first, end)) = days {
        query = bind(query.bind(first.0).bind(end.0))
            .bind(first.0)
            .bind(end.0);
    }
    query
        .bind(i64::from(q.limit))
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

/// Adds up each whole day's hours into `admission_waits_daily` (from the
/// latest day there, each recomputed whole), and deletes both past retention.
pub(super) async fn roll_up_waits(pool: &AnyPool, r: &Rollup) -> Result<()> {
    let mut tx = Tx::begin(pool).await?;
    let since_day: Option<i64> = sqlx::query("SELECT MAX(day) AS m FROM admission_waits_daily")
        .fetch_one(&mut *tx)
        .await?
        .try_get("m")?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO admission_waits_daily (day, tenant, bucket, runs) \
         SELECT (hour / {DAY_MS}) * {DAY_MS}, tenant, bucket, CAST(SUM(runs) AS BIGINT) \
         FROM admission_waits WHERE hour >= $1 AND hour < $2 \
         GROUP BY (hour / {DAY_MS}) * {DAY_MS}, tenant, bucket \
         ON CONFLICT (day, tenant, bucket) DO UPDATE SET runs = excluded.runs"
    )))
    .bind(since_day.unwrap_or(i64::MIN))
    .bind(day_of(r.until).0)
    .execute(&mut *tx)
    .await?;
    for (table, column) in [
        ("admission_waits", "hour"),
        ("admission_waits_daily", "day"),
    ] {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE {column} < $1"
        )))
        .bind(r.hourly_before.0)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

//! Governance time series: what the console charts over time, sampled from the
//! controller's snapshot and the queue at each tick, and how a range of them is
//! read back (raw samples, or hourly aggregates for long ranges).
//!
//! Series, by subject:
//!
//! - `pool.utilization.{cpu,memory,gpu}`: allocated / capacity (a static
//!   pool's capacity is its live agents'). No point when the capacity is zero:
//!   a ratio over nothing has no value.
//! - `pool.saturation.{cpu,memory,gpu}`: (allocated + capacity-bound demand) /
//!   capacity. The capacity-bound demand is the sum of the groups waiting in
//!   the queue (queued runs, and groups of admitted runs that lost their
//!   worker) for room in pools (their reason: a pool full, at its
//!   `max_workers`, without agents) that could be placed on the pool were it
//!   empty: it is active, their selector matches it, their tenant may use it,
//!   and they fit its capacity. It is the demand more capacity would admit. A
//!   group that several pools could take counts in each. Above 1 the demand
//!   exceeds the free capacity (`demand > capacity - allocated`); unlike
//!   demand / free, it stays finite when the pool is full. No point when the
//!   capacity is zero.
//! - `pool.held.{cpu,memory,gpu}`: the demand the pool could take but that
//!   more capacity would not admit, over capacity: groups held by their
//!   tenant's quota, budget or per-pool limits, by a reservation for another
//!   run, or by a gang partner on another pool. Runs not decided yet (queued
//!   since the last cycle) count in neither.
//! - `tenant.holdings.{cpu,memory,gpu}`: what the tenant's open allocations
//!   hold across all pools, in base units (millicores, MiB, gpus).
//! - `tenant.queued_runs`: runs waiting for their first admission.
//! - `tenant.admission_wait_seconds`: the longest wait, so far, of those runs
//!   (0 when none waits).
//!
//! Pure: the time comes in, as everywhere in the core.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::controller::Reason;
use crate::controller::Snapshot;
use crate::error::FieldError;
use crate::pool::PoolState;
use crate::queue::{ClassId, RunQueue};
use crate::resources::{Dimension, Resources};

const SECOND_MS: i64 = 1000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Raw samples are kept this long; hourly aggregates, `HOURLY_RETENTION_MS`.
pub const RAW_RETENTION_MS: i64 = 2 * DAY_MS;
pub const HOURLY_RETENTION_MS: i64 = 90 * DAY_MS;

/// Bounds on the sampling interval (`corral server --sample-interval`).
pub const MIN_SAMPLE_INTERVAL_MS: u64 = 100;
pub const MAX_SAMPLE_INTERVAL_MS: u64 = 3_600_000;

/// Buckets per series that a read may ask for.
pub const MAX_BUCKETS: i64 = 1000;

/// Steps an automatic resolution picks from when raw samples would be too many.
const LADDER_MS: [i64; 7] = [
    MINUTE_MS,
    5 * MINUTE_MS,
    15 * MINUTE_MS,
    HOUR_MS,
    6 * HOUR_MS,
    DAY_MS,
    7 * DAY_MS,
];

/// What a series is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKind {
    Pool,
    Tenant,
}

/// One governance time series (see the module's header for definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Series {
    PoolUtilization(Dimension),
    PoolSaturation(Dimension),
    PoolHeld(Dimension),
    TenantHoldings(Dimension),
    TenantQueuedRuns,
    TenantAdmissionWait,
}

impl Series {
    pub const ALL: [Series; 14] = [
        Series::PoolUtilization(Dimension::Cpu),
        Series::PoolUtilization(Dimension::Memory),
        Series::PoolUtilization(Dimension::Gpu),
        Series::PoolSaturation(Dimension::Cpu),
        Series::PoolSaturation(Dimension::Memory),
        Series::PoolSaturation(Dimension::Gpu),
        Series::PoolHeld(Dimension::Cpu),
        Series::PoolHeld(Dimension::Memory),
        Series::PoolHeld(Dimension::Gpu),
        Series::TenantHoldings(Dimension::Cpu),
        Series::TenantHoldings(Dimension::Memory),
        Series::TenantHoldings(Dimension::Gpu),
        Series::TenantQueuedRuns,
        Series::TenantAdmissionWait,
    ];

    pub fn name(self) -> &'static str {
        use Dimension::*;
        match self {
            Series::PoolUtilization(Cpu) => "pool.utilization.cpu",
            Series::PoolUtilization(Memory) => "pool.utilization.memory",
            Series::PoolUtilization(Gpu) => "pool.utilization.gpu",
            Series::PoolSaturation(Cpu) => "pool.saturation.cpu",
            Series::PoolSaturation(Memory) => "pool.saturation.memory",
            Series::PoolSaturation(Gpu) => "pool.saturation.gpu",
            Series::PoolHeld(Cpu) => "pool.held.cpu",
            Series::PoolHeld(Memory) => "pool.held.memory",
            Series::PoolHeld(Gpu) => "pool.held.gpu",
            Series::TenantHoldings(Cpu) => "tenant.holdings.cpu",
            Series::TenantHoldings(Memory) => "tenant.holdings.memory",
            Series::TenantHoldings(Gpu) => "tenant.holdings.gpu",
            Series::TenantQueuedRuns => "tenant.queued_runs",
            Series::TenantAdmissionWait => "tenant.admission_wait_seconds",
        }
    }

    pub fn parse(name: &str) -> Option<Series> {
        Series::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn subject(self) -> SubjectKind {
        match self {
            Series::PoolUtilization(_) | Series::PoolSaturation(_) | Series::PoolHeld(_) => {
                SubjectKind::Pool
            }
            _ => SubjectKind::Tenant,
        }
    }

    /// The unit of its values.
    pub fn unit(self) -> &'static str {
        match self {
            Series::PoolUtilization(_) | Series::PoolSaturation(_) | Series::PoolHeld(_) => "ratio",
            Series::TenantHoldings(Dimension::Cpu) => "millicores",
            Series::TenantHoldings(Dimension::Memory) => "MiB",
            Series::TenantHoldings(Dimension::Gpu) => "gpus",
            Series::TenantQueuedRuns => "runs",
            Series::TenantAdmissionWait => "seconds",
        }
    }
}

/// One value of one series for one pool or tenant, at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub series: Series,
    /// The pool's or the tenant's name.
    pub subject: String,
    pub at: Timestamp,
    pub value: f64,
}

/// The samples of every series at `at`, from a snapshot charged with the open
/// allocations, the queue and the reason each waiting class was last given.
/// Pools, then tenants, each in name order.
pub fn sample(
    snapshot: &Snapshot,
    queue: &RunQueue,
    reasons: &BTreeMap<ClassId, Arc<Reason>>,
    at: Timestamp,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut push = |series: Series, subject: &str, value: f64| {
        if value.is_finite() {
            samples.push(Sample {
                series,
                subject: subject.to_string(),
                at,
                value,
            });
        }
    };
    for (name, pool) in &snapshot.pools {
        let (mut capacity_bound, mut held) = (Resources::ZERO, Resources::ZERO);
        let active = pool.state == PoolState::Active;
        for class in queue.classes().filter(|_| active) {
            let allowed = snapshot.tenants.get(&class.tenant).is_some_and(|t| {
                t.allowed_pools
                    .as_ref()
                    .is_none_or(|p| p.iter().any(|x| x == name))
            });
            let Some(reason) = reasons.get(&class.id).filter(|_| allowed) else {
                continue;
            };
            let demand = if reason.code.more_capacity_admits() {
                &mut capacity_bound
            } else {
                &mut held
            };
            let runs = class.runs.len() as u64;
            for g in &class.groups {
                if g.selector.matches(name, &pool.labels) && g.resources.fits_in(&pool.capacity) {
                    *demand = demand.saturating_add(&scale(&g.resources, runs));
                }
            }
        }
        for d in Dimension::ALL {
            let capacity = pool.capacity.get(d);
            if capacity == 0 {
                continue;
            }
            let used = pool.used.get(d) as f64;
            let capacity = capacity as f64;
            push(Series::PoolUtilization(d), name, used / capacity);
            push(
                Series::PoolSaturation(d),
                name,
                (used + capacity_bound.get(d) as f64) / capacity,
            );
            push(Series::PoolHeld(d), name, held.get(d) as f64 / capacity);
        }
    }
    for (name, tenant) in &snapshot.tenants {
        for d in Dimension::ALL {
            push(Series::TenantHoldings(d), name, tenant.used.get(d) as f64);
        }
        let waiting = queue.classes().filter(|c| &c.tenant == name && !c.readmit);
        let (mut runs, mut oldest) = (0usize, None::<Timestamp>);
        for class in waiting {
            runs += class.runs.len();
            if let Some(&(first, _)) = class.runs.first() {
                oldest = Some(oldest.map_or(first, |o| o.min(first)));
            }
        }
        push(Series::TenantQueuedRuns, name, runs as f64);
        let wait_ms = oldest.map_or(0, |o| at.millis_since(o).max(0));
        push(
            Series::TenantAdmissionWait,
            name,
            wait_ms as f64 / SECOND_MS as f64,
        );
    }
    samples
}

fn scale(r: &Resources, n: u64) -> Resources {
    Resources::new(
        r.cpu_millis.saturating_mul(n),
        r.memory_mib.saturating_mul(n),
        r.gpu.saturating_mul(n),
    )
}

/// The start of the hour `t` falls in (UTC).
pub fn hour_of(t: Timestamp) -> Timestamp {
    Timestamp(t.0.div_euclid(HOUR_MS) * HOUR_MS)
}

/// The start of the UTC day `t` falls in.
pub fn day_of(t: Timestamp) -> Timestamp {
    Timestamp(t.0.div_euclid(DAY_MS) * DAY_MS)
}

/// The days `[first, end)` that a read of `[from, to]` merged into buckets of
/// `bucket_ms` takes from daily aggregates, which are rolled up until
/// `rolled_until`; the rest of the range comes from the hourly ones. Only
/// whole days within the range, and only when each bucket is whole days (a
/// day's aggregate then falls in one bucket, and merges exactly as its hours
/// would); none when no such day is rolled up.
pub fn daily_span(
    from: Timestamp,
    to: Timestamp,
    bucket_ms: Option<i64>,
    rolled_until: Option<Timestamp>,
) -> Option<(Timestamp, Timestamp)> {
    let whole_days = bucket_ms.is_some_and(|b| b > 0 && b % DAY_MS == 0);
    let rolled_until = rolled_until.filter(|_| whole_days)?;
    let first = match day_of(from) {
        day if day == from => day,
        day => day.plus_millis(DAY_MS),
    };
    let end = day_of(to).min(rolled_until);
    (first < end).then_some((first, end))
}

/// What the periodic rollup does at a time: aggregate every complete hour
/// before `until` that has raw samples into its mean and max (recomputed from
/// all of the hour's samples and replacing what an earlier run wrote, so that
/// running it again, or after a crash, counts nothing twice), and every
/// complete day before `until` from its hours in the same way, then delete raw
/// samples before `raw_before` and aggregates before `hourly_before`. Both
/// cut-offs are whole hours no later than `until`: raw samples go only with
/// whole hours that were rolled up. `hourly_before` is a midnight, so that
/// the hourly and daily aggregates always keep the same days (a read in whole
/// days takes a day from one or the other, never from a part of both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollup {
    pub until: Timestamp,
    pub raw_before: Timestamp,
    pub hourly_before: Timestamp,
}

impl Rollup {
    pub fn at(now: Timestamp) -> Rollup {
        Rollup {
            until: hour_of(now),
            raw_before: hour_of(now.plus_millis(-RAW_RETENTION_MS)),
            hourly_before: day_of(now.plus_millis(-HOURLY_RETENTION_MS)),
        }
    }
}

/// Where the points of a read come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The raw samples (the last `RAW_RETENTION_MS`).
    Raw,
    /// The hourly aggregates (the last `HOURLY_RETENTION_MS`).
    Hourly,
}

/// How a read's points are made: from which table, and, when `bucket_ms` is
/// set, merged into buckets of that length aligned on multiples of it since the
/// epoch (mean weighted by samples, max of maxes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub source: Source,
    pub bucket_ms: Option<i64>,
}

/// The `step` of a read: the raw samples as they are, or buckets of a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Raw,
    Every(i64),
}

impl Step {
    /// `raw`, or a duration (`30s`, `5m`, `1h`, `1d`).
    pub fn parse(text: &str) -> Result<Step, FieldError> {
        if text == "raw" {
            return Ok(Step::Raw);
        }
        crate::pipeline::parse_duration_secs(text)
            .filter(|s| *s > 0)
            .and_then(|s| i64::try_from(s).ok()?.checked_mul(SECOND_MS))
            .map(Step::Every)
            .ok_or_else(|| {
                FieldError::new(
                    "step",
                    format!("{text:?} is neither raw nor a duration such as 30s, 5m or 1h"),
                )
            })
    }
}

/// Chooses how to read `[from, to]` at `now`. With no step: the raw samples
/// when the range is within their retention and holds at most `MAX_BUCKETS`
/// intervals of `interval_ms`, else the shortest step of 1m, 5m, 15m, 1h, 6h,
/// 1d or 7d that gives at most `MAX_BUCKETS` buckets (1h or more when the range
/// starts before the raw samples' retention). A step under an hour merges raw
/// samples; one of an hour or more (whole hours only) merges hourly aggregates.
pub fn resolution(
    from: Timestamp,
    to: Timestamp,
    step: Option<Step>,
    now: Timestamp,
    interval_ms: i64,
) -> Result<Resolution, FieldError> {
    let span = to.millis_since(from);
    let buckets = |step_ms: i64| span / step_ms.max(1);
    let raw_kept = from >= now.plus_millis(-RAW_RETENTION_MS);
    match step {
        Some(Step::Raw) => Ok(Resolution {
            source: Source::Raw,
            bucket_ms: None,
        }),
        Some(Step::Every(ms)) if ms >= HOUR_MS && ms % HOUR_MS != 0 => Err(FieldError::new(
            "step",
            "a step of an hour or more reads hourly aggregates: give whole hours (1h, 6h, 1d)",
        )),
        Some(Step::Every(ms)) if buckets(ms) > MAX_BUCKETS => Err(FieldError::new(
            "step",
            format!(
                "{} buckets from `from` to `to`; at most {MAX_BUCKETS}: give a longer step or a shorter range",
                buckets(ms)
            ),
        )),
        Some(Step::Every(ms)) => Ok(Resolution {
            source: if ms >= HOUR_MS {
                Source::Hourly
            } else {
                Source::Raw
            },
            bucket_ms: Some(ms),
        }),
        None if raw_kept && buckets(interval_ms) <= MAX_BUCKETS => Ok(Resolution {
            source: Source::Raw,
            bucket_ms: None,
        }),
        None => LADDER_MS
            .into_iter()
            .find(|&ms| buckets(ms) <= MAX_BUCKETS && (ms >= HOUR_MS || raw_kept))
            .map(|ms| Resolution {
                source: if ms >= HOUR_MS {
                    Source::Hourly
                } else {
                    Source::Raw
                },
                bucket_ms: Some(ms),
            })
            .ok_or_else(|| {
                FieldError::new(
                    "from",
                    "the range is too long for any step (at most 1000 weeks)",
                )
            }),
    }
}

/// A sampling interval: `200ms`, `10s`, `1m`, within the bounds above.
pub fn parse_interval_ms(text: &str) -> Result<u64, String> {
    let unitless = text.chars().all(|c| c.is_ascii_digit());
    let ms = match text.strip_suffix("ms") {
        _ if unitless => None,
        Some(n) => n.parse::<u64>().ok(),
        None => crate::pipeline::parse_duration_secs(text).and_then(|s| s.checked_mul(1000)),
    };
    match ms {
        Some(ms) if (MIN_SAMPLE_INTERVAL_MS..=MAX_SAMPLE_INTERVAL_MS).contains(&ms) => Ok(ms),
        _ => Err(format!(
            "{text:?} is not an interval from 100ms to 1h (examples: 200ms, 10s, 1m)"
        )),
    }
}

pub mod waits;

#[cfg(test)]
mod tests;

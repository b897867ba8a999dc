//! The governance time series, as `GET /api/v1/history` answers them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Points of the asked series between `from` and `to`, one entry per series
/// and subject (a pool or a tenant).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    pub from: String,
    pub to: String,
    /// `raw` (each sample as it was taken), or the length of the buckets the
    /// points stand for (`5m`, `1h`), aligned on multiples of it since the epoch.
    pub step: String,
    /// `raw` samples (kept two days) or `hourly` aggregates (kept ninety).
    pub source: String,
    pub series: Vec<SeriesView>,
}

/// One series of one pool or tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SeriesView {
    /// E.g. `pool.utilization.cpu`, `tenant.queued_runs`.
    pub series: String,
    /// The pool (for `pool.*` series) or tenant (for `tenant.*`).
    pub subject: String,
    /// `ratio`, `millicores`, `MiB`, `gpus`, `runs` or `seconds`.
    pub unit: String,
    /// Oldest first.
    pub points: Vec<PointView>,
}

/// A sample, or the samples of a bucket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PointView {
    /// The sample's time, or the start of its bucket.
    pub at: String,
    /// The sample, or the mean of the bucket's samples.
    pub value: f64,
    /// The largest sample of the bucket.
    pub max: f64,
    /// How many samples the point stands for.
    pub samples: u64,
}

/// How long runs waited for their first admission, per tenant, between
/// `from` and `to` (whole hours: the waits are kept per hour).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WaitsView {
    pub from: String,
    pub to: String,
    /// The length of the buckets the points stand for (`1h`, `6h`, `1d`).
    pub step: String,
    /// Tenants with at least one run admitted in the range, by name.
    pub tenants: Vec<TenantWaitsView>,
}

/// One tenant's admission waits: over the whole range, and per bucket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantWaitsView {
    pub tenant: String,
    /// Runs first admitted in the range.
    pub runs: u64,
    /// The median wait, in seconds (estimated within 19%: see `p99_seconds`).
    pub p50_seconds: f64,
    /// The wait that 99% of those runs did not exceed, in seconds, estimated
    /// from a histogram whose buckets grow by 19%.
    pub p99_seconds: f64,
    /// Buckets with at least one admission, oldest first.
    pub points: Vec<WaitPointView>,
}

/// The admissions of one bucket of time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WaitPointView {
    /// The start of the bucket.
    pub at: String,
    pub runs: u64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

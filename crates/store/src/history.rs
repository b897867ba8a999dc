//! What the store keeps of the governance time series (see
//! `corral_core::history`): the reads of a range, raw or merged into buckets.

use corral_core::clock::Timestamp;
use corral_core::history::{Series, Source};

/// A read of the time series: the points of `series` between `from` and `to`
/// (both included), of every subject or of `subjects` only, from `source`,
/// merged into buckets of `bucket_ms` when set.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    pub series: Vec<Series>,
    /// Only these pools or tenants (none: nothing); every one when unset.
    pub subjects: Option<Vec<String>>,
    pub from: Timestamp,
    pub to: Timestamp,
    pub source: Source,
    /// Buckets aligned on multiples of this length since the epoch: the mean
    /// of their samples (weighted by each aggregate's count) and the max.
    pub bucket_ms: Option<i64>,
    /// At most this many points, ordered by series name, subject and time.
    pub limit: u32,
}

/// A point of a series for a subject: a raw sample (mean = max = its value,
/// one sample), an hourly aggregate, or a bucket of either.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    pub series: Series,
    pub subject: String,
    /// The sample's time, or the start of its hour or bucket.
    pub at: Timestamp,
    pub mean: f64,
    pub max: f64,
    pub samples: u64,
}

/// A read of the admission wait histograms: per tenant (of `tenants`, or
/// every one) and bucket of `bucket_ms` (whole hours, aligned on multiples of
/// it since the epoch), the runs per wait bucket, of the hours from the one
/// `from` falls in to the one `to` falls in.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitQuery {
    pub tenants: Option<Vec<String>>,
    pub from: Timestamp,
    pub to: Timestamp,
    pub bucket_ms: i64,
    /// At most this many counts, ordered by tenant, time and bucket.
    pub limit: u32,
}

/// How many runs of a tenant, first admitted within the time bucket starting
/// at `at`, waited a time within the histogram's bucket `bucket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitCount {
    pub tenant: String,
    pub at: Timestamp,
    pub bucket: u32,
    pub runs: u64,
}

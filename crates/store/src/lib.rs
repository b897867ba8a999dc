//! corral's persistence: one [`Store`] trait and its SQL implementation over
//! SQLite (the embedded default) and PostgreSQL, sharing one schema.
//!
//! The store knows records and transactions, nothing of HTTP or of scheduling.

mod history;
mod lock;
mod private;
mod records;
mod sql;
pub mod testing;
mod usage;

use async_trait::async_trait;
use corral_core::ids::{AttemptId, RunId};
use corral_core::metering::{CapacityChange, PriceChange, SlotUsage, Span};

pub use history::{HistoryPoint, HistoryQuery, WaitCount, WaitQuery};
pub use lock::{LOCK_FILE, WriterLock};
pub use private::{DIR_MODE, FILE_MODE, private_data_dir};
pub use records::*;
pub use sql::{Backend, SqlStore};
pub use usage::metered_usage;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored {what} cannot be decoded: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("value of {field} does not fit the database column: {value}")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("{0} took too long")]
    Timeout(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{store} is held by another corral server: {holder}. A store has one writer: stop that server, or give this one another store"
    )]
    Held { store: String, holder: String },
    #[error(
        "the writer lock on {store} was lost and is held again; writes resume once the state is reloaded"
    )]
    LockRetaken { store: String },
    #[error("a write the store answered as committed is not seen by another connection")]
    NotCommitted,
    #[error("unsupported database url {0:?} (expected sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where corral keeps everything that must survive a crash.
#[async_trait]
pub trait Store: Send + Sync {
    /// Applies `writes` in one transaction: all of them or none.
    async fn commit(&self, writes: &[Write]) -> Result<()>;

    /// Loads everything unfinished: pools, tenants, runs not ended with their
    /// steps and attempts, open allocations, ready workers, and the largest ids.
    async fn load_live(&self) -> Result<Live>;

    /// A run with its steps, attempts and allocations.
    async fn run(&self, id: RunId) -> Result<Option<RunDetail>>;

    /// Runs, newest first.
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        self.runs_before(filter, None).await
    }

    /// Runs older than `before` (with a smaller id), newest first: the page
    /// after one that ended at `before`. All of them, without it.
    async fn runs_before(
        &self,
        filter: &RunFilter,
        before: Option<RunId>,
    ) -> Result<Vec<RunRecord>>;

    /// The allocation history, open and closed, oldest first.
    async fn allocations(&self, filter: &AllocationFilter) -> Result<Vec<AllocationRecord>>;

    /// Stores a chunk of an attempt's output, outside any state transaction
    /// (logs have their own connection, or file, so that they never delay or
    /// fail a state change). A chunk already stored at that offset is kept.
    async fn append_log(&self, chunk: &LogChunk) -> Result<()>;

    /// Up to `limit` of a run's log chunks (of one step, or all) after `after`,
    /// ordered by step, attempt and offset: a page of a streamed read.
    async fn logs(
        &self,
        run: RunId,
        step: Option<u32>,
        after: Option<LogCursor>,
        limit: u32,
    ) -> Result<Vec<LogChunk>>;

    /// Where each attempt's stored output of `run` ends, in bytes (its last
    /// chunk's offset plus that chunk's length), by attempt: read through the
    /// run's index, one chunk per attempt, never the whole output.
    async fn log_ends(&self, run: RunId) -> Result<Vec<(AttemptId, u64)>>;

    /// Up to `limit` chunks of one attempt's output from byte `from` on.
    async fn attempt_log(&self, attempt: AttemptId, from: u64, limit: u32)
    -> Result<Vec<LogChunk>>;

    /// Writes one row in its own transaction and reads it back on another
    /// connection: whether the store takes a write now, and keeps it.
    async fn probe_write(&self) -> Result<()>;

    /// Deletes up to `limit` lost workers last updated before `lost_before`,
    /// oldest first, in a statement of its own (no state refers to a lost
    /// worker: attempts and allocations keep its id as a plain value). The
    /// worker with the highest id stays, so that ids are never given again.
    /// Returns how many were deleted.
    async fn prune_lost_workers(
        &self,
        lost_before: corral_core::clock::Timestamp,
        limit: u32,
    ) -> Result<u64>;

    /// The audit log, oldest first (or newest first, as the filter says).
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;

    /// Every pool's price history, by pool and time.
    async fn prices(&self) -> Result<Vec<PriceChange>>;

    /// Every pool's capacity history, by pool and time.
    async fn capacities(&self) -> Result<Vec<CapacityChange>>;

    /// The allocations held within the filter's window, with their run's
    /// pipeline, oldest first.
    async fn spans(&self, filter: &SpanFilter) -> Result<Vec<Span>>;

    /// Up to `limit` closed allocations not metered yet (closed before
    /// metering was), with their run's pipeline, the earliest closed first.
    async fn unmetered(&self, limit: u32) -> Result<Vec<Span>>;

    /// The sums per slot of metered usage in the slots of the query's window
    /// (whole days), grouped as asked.
    async fn slot_sums(&self, query: &UsageQuery) -> Result<Vec<SlotUsage>>;

    /// The metered pieces that lie within the query's window (a part of one
    /// day), summed as asked.
    async fn piece_sums(&self, query: &UsageQuery) -> Result<Vec<SlotUsage>>;

    /// The metered pieces of the day of the query's window (a part of one
    /// day) that straddle its start or end, each as a span over the piece.
    async fn straddling_pieces(&self, query: &UsageQuery) -> Result<Vec<Span>>;

    /// For each tenant's pipeline, how long its last `per_pipeline` succeeded
    /// runs that finished since `since` held their allocations (from the first
    /// opened to the run's end), newest first.
    async fn recent_durations(
        &self,
        since: corral_core::clock::Timestamp,
        per_pipeline: u32,
    ) -> Result<Vec<PipelineDurations>>;

    /// What the attempts that ended within the query's window really used,
    /// by tenant, pool, pipeline and UTC day (scoped by the query's tenant and
    /// pool; its grouping is the caller's to apply).
    async fn measured_sums(&self, query: &UsageQuery) -> Result<Vec<MeasuredSum>>;

    /// The measured attempts that succeeded in `tenant`'s runs of `pipeline`
    /// since `since`, newest first, at most `limit`.
    async fn measured_attempts(
        &self,
        tenant: &str,
        pipeline: &str,
        since: corral_core::clock::Timestamp,
        limit: u32,
    ) -> Result<Vec<MeasuredAttempt>>;

    /// Budget alerts, newest first.
    async fn alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>>;

    /// Stores samples of the governance time series in one transaction, apart
    /// from the state (like logs: their own connection, or file), so that a
    /// sample never delays an admission. A sample already stored for its
    /// series, subject and time is kept.
    async fn append_samples(&self, samples: &[corral_core::history::Sample]) -> Result<()>;

    /// Points of the time series, ordered by series name, subject and time.
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryPoint>>;

    /// Rolls raw samples up into hourly aggregates and deletes what is past
    /// retention, in one transaction (see `corral_core::history::Rollup`):
    /// running it again, or after a crash in the middle, counts nothing twice.
    async fn roll_up_history(&self, rollup: &corral_core::history::Rollup) -> Result<()>;

    /// The admission wait histograms (see [`WaitQuery`]), ordered by tenant,
    /// time and bucket.
    async fn admission_waits(&self, query: &WaitQuery) -> Result<Vec<WaitCount>>;
}

//! Rows to records: the columns each table is read with and the decoders
//! that turn a row into its record, naming what is corrupt when one cannot.

use std::str::FromStr;

use corral_core::access::Role;
use corral_core::clock::Timestamp;
use corral_core::controller::{Reason, ReasonCode};
use corral_core::ids::{AllocationId, AttemptId, RunId, WorkerId};
use corral_core::money::Money;
use corral_core::resources::Resources;
use corral_core::run::WorkerState;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::records::*;
use crate::{Result, StoreError};

pub(super) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize to JSON: plain data, string keys")
}

pub(super) fn from_json<T: DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

pub(super) fn parse_enum<T: FromStr<Err = String>>(what: &'static str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|detail| StoreError::Corrupt { what, detail })
}

pub(super) fn int(field: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

pub(super) fn uint<T: TryFrom<i64>>(what: &'static str, value: i64) -> Result<T> {
    T::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{value} is out of range"),
    })
}

pub(super) fn ts(row: &AnyRow, col: &str) -> Result<Timestamp> {
    Ok(Timestamp(row.try_get::<i64, _>(col)?))
}

pub(super) fn opt_ts(row: &AnyRow, col: &str) -> Result<Option<Timestamp>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(Timestamp))
}

pub(super) fn resources(row: &AnyRow) -> Result<Resources> {
    Ok(Resources::new(
        uint("cpu_millis", row.try_get("cpu_millis")?)?,
        uint("memory_mib", row.try_get("memory_mib")?)?,
        uint("gpu", row.try_get("gpu")?)?,
    ))
}

pub(super) const RUN_COLUMNS: &str = "id, pipeline, tenant, priority, state, reason_code, reason, spec, request, estimate, created_at, updated_at, finished_at";
pub(super) const ATTEMPT_COLUMNS: &str = "id, run_id, step_idx, number, worker_id, state, exit_code, error, created_at, started_at, finished_at, cpu_micros, memory_peak_bytes, throttled_micros";
pub(super) const WORKER_COLUMNS: &str = "id, pool, name, cpu_millis, memory_mib, gpu, labels, state, registered_at, updated_at, instance, secret_hash, incarnation, confinement, token_name, spawn_hash";
pub(super) const TOKEN_COLUMNS: &str =
    "name, hash, role, tenant, pool, created_at, expires_at, revoked_at, last_used_at";
pub(super) const ALLOCATION_COLUMNS: &str =
    "id, run_id, grp, tenant, pool, cpu_millis, memory_mib, gpu, worker_id, opened_at, closed_at";

pub(super) fn run_from(row: &AnyRow) -> Result<RunRecord> {
    let reason = match (
        row.try_get::<Option<String>, _>("reason_code")?,
        row.try_get::<Option<String>, _>("reason")?,
    ) {
        // Stored reasons are those of rejected runs, which carry no limits.
        (Some(code), Some(message)) => Some(Reason::simple(
            from_json::<ReasonCode>("reason code", &format!("\"{code}\""))?,
            message,
        )),
        _ => None,
    };
    Ok(RunRecord {
        id: RunId(row.try_get("id")?),
        pipeline: row.try_get("pipeline")?,
        tenant: row.try_get("tenant")?,
        priority: uint("priority", row.try_get("priority")?)?,
        state: parse_enum("run state", &row.try_get::<String, _>("state")?)?,
        reason,
        spec: from_json("pipeline spec", &row.try_get::<String, _>("spec")?)?,
        request: from_json("resource request", &row.try_get::<String, _>("request")?)?,
        estimate: Money::from_micros(row.try_get("estimate")?),
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
        finished_at: opt_ts(row, "finished_at")?,
    })
}

pub(super) fn step_from(row: &AnyRow) -> Result<StepRecord> {
    Ok(StepRecord {
        run_id: RunId(row.try_get("run_id")?),
        idx: uint("step index", row.try_get("idx")?)?,
        name: row.try_get("name")?,
        group: uint("step group", row.try_get("grp")?)?,
        state: parse_enum("step state", &row.try_get::<String, _>("state")?)?,
        attempts: uint("step attempts", row.try_get("attempts")?)?,
    })
}

pub(super) fn attempt_from(row: &AnyRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        id: AttemptId(row.try_get("id")?),
        run_id: RunId(row.try_get("run_id")?),
        step_idx: uint("step index", row.try_get("step_idx")?)?,
        number: uint("attempt number", row.try_get("number")?)?,
        worker_id: WorkerId(row.try_get("worker_id")?),
        state: parse_enum("attempt state", &row.try_get::<String, _>("state")?)?,
        exit_code: row
            .try_get::<Option<i64>, _>("exit_code")?
            .map(|c| uint("exit code", c))
            .transpose()?,
        error: row.try_get("error")?,
        created_at: ts(row, "created_at")?,
        started_at: opt_ts(row, "started_at")?,
        finished_at: opt_ts(row, "finished_at")?,
        usage: measured(row)?,
    })
}

/// An attempt's measured usage: all three columns, or none.
fn measured(row: &AnyRow) -> Result<Option<Measured>> {
    let cpu: Option<i64> = row.try_get("cpu_micros")?;
    let peak: Option<i64> = row.try_get("memory_peak_bytes")?;
    let throttled: Option<i64> = row.try_get("throttled_micros")?;
    let (Some(cpu), Some(peak), Some(throttled)) = (cpu, peak, throttled) else {
        return Ok(None);
    };
    Ok(Some(Measured {
        cpu_micros: uint("cpu_micros", cpu)?,
        memory_peak_bytes: uint("memory_peak_bytes", peak)?,
        throttled_micros: uint("throttled_micros", throttled)?,
    }))
}

pub(super) fn allocation_from(row: &AnyRow) -> Result<AllocationRecord> {
    Ok(AllocationRecord {
        id: AllocationId(row.try_get("id")?),
        run_id: RunId(row.try_get("run_id")?),
        group: uint("allocation group", row.try_get("grp")?)?,
        tenant: row.try_get("tenant")?,
        pool: row.try_get("pool")?,
        resources: resources(row)?,
        worker_id: row.try_get::<Option<i64>, _>("worker_id")?.map(WorkerId),
        opened_at: ts(row, "opened_at")?,
        closed_at: opt_ts(row, "closed_at")?,
    })
}

pub(super) fn worker_from(row: &AnyRow) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: WorkerId(row.try_get("id")?),
        pool: row.try_get("pool")?,
        name: row.try_get("name")?,
        capacity: resources(row)?,
        labels: from_json("worker labels", &row.try_get::<String, _>("labels")?)?,
        state: parse_enum::<WorkerState>("worker state", &row.try_get::<String, _>("state")?)?,
        registered_at: ts(row, "registered_at")?,
        updated_at: ts(row, "updated_at")?,
        instance: row.try_get("instance")?,
        secret_hash: row.try_get("secret_hash")?,
        incarnation: row.try_get("incarnation")?,
        confinement: row
            .try_get::<Option<String>, _>("confinement")?
            .map(|c| from_json("worker confinement", &c))
            .transpose()?,
        token_name: row.try_get("token_name")?,
        spawn_hash: row.try_get("spawn_hash")?,
    })
}

pub(super) fn token_from(row: &AnyRow) -> Result<TokenRecord> {
    let role: String = row.try_get("role")?;
    let tenant: Option<String> = row.try_get("tenant")?;
    let pool: Option<String> = row.try_get("pool")?;
    Ok(TokenRecord {
        name: row.try_get("name")?,
        hash: row.try_get("hash")?,
        role: Role::parse(&role, tenant.as_deref(), pool.as_deref()).map_err(|e| {
            StoreError::Corrupt {
                what: "token role",
                detail: e.to_string(),
            }
        })?,
        created_at: ts(row, "created_at")?,
        expires_at: opt_ts(row, "expires_at")?,
        revoked_at: opt_ts(row, "revoked_at")?,
        last_used_at: opt_ts(row, "last_used_at")?,
    })
}

pub(super) fn audit_from(row: &AnyRow) -> Result<AuditRecord> {
    let spec = |col: &str| -> Result<Option<serde_json::Value>> {
        row.try_get::<Option<String>, _>(col)?
            .map(|text| from_json("audited spec", &text))
            .transpose()
    };
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at: ts(row, "at")?,
        who: row.try_get("who")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        action: row.try_get("action")?,
        before: spec("before_spec")?,
        after: spec("after_spec")?,
    })
}

pub(super) fn reason_code_text(code: ReasonCode) -> String {
    to_json(&code).trim_matches('"').to_string()
}

pub(super) const LOG_COLUMNS: &str = "attempt_id, byte_offset, run_id, step_idx, data";

pub(super) fn log_chunk_from(row: &AnyRow) -> Result<LogChunk> {
    Ok(LogChunk {
        attempt_id: AttemptId(row.try_get("attempt_id")?),
        run_id: RunId(row.try_get("run_id")?),
        step_idx: uint("step index", row.try_get("step_idx")?)?,
        offset: uint("log offset", row.try_get("byte_offset")?)?,
        data: row.try_get("data")?,
    })
}

/// A count kept as BIGINT, saturated rather than refused: measured amounts
/// are what an agent saw, never a key.
pub(super) fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

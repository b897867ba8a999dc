//! Step output: chunks are stored outside the state transaction (a failed or
//! slow log write never touches an admission), capped per attempt, and
//! announced to followers as they arrive.

use super::*;

/// Bounds on what agents send as output.
#[derive(Debug, Clone)]
pub struct OutputLimits {
    /// Largest chunk of output one call may carry, in bytes.
    pub max_chunk_bytes: usize,
    /// Output kept per attempt; the agent cuts it there with a marker line.
    pub max_output_bytes: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_chunk_bytes: 256 * 1024,
            max_output_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Room past the output cap for the agent's marker line.
const MARKER_ROOM: u64 = 4096;

/// A chunk stored for an attempt of a run.
#[derive(Debug, Clone, Copy)]
pub struct LogArrival {
    pub run: RunId,
    pub attempt: AttemptId,
}

impl Engine {
    /// Stores a chunk of an attempt's output (idempotent per offset); only the
    /// worker the attempt was handed to may.
    pub async fn append_log(
        &self,
        worker: WorkerId,
        attempt: AttemptId,
        offset: u64,
        data: String,
    ) -> Result<()> {
        let limits = &self.config.output;
        if data.len() > limits.max_chunk_bytes {
            return Err(FieldError::new(
                "data",
                format!(
                    "a chunk of {} bytes; at most {} are allowed per call",
                    data.len(),
                    limits.max_chunk_bytes
                ),
            )
            .into());
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > limits.max_output_bytes.saturating_add(MARKER_ROOM) {
            return Err(FieldError::new(
                "offset",
                format!(
                    "output up to byte {end}; an attempt keeps at most {} bytes",
                    limits.max_output_bytes
                ),
            )
            .into());
        }
        // Text columns cannot hold NUL (PostgreSQL refuses it).
        let data = if data.contains('\0') {
            data.replace('\0', "\u{FFFD}")
        } else {
            data
        };
        let (run_id, step_idx) = {
            let state = self.state.lock().await;
            let found = state
                .attempt_runs
                .get(&attempt)
                .and_then(|r| state.runs.get(r))
                .and_then(|r| r.attempt(attempt));
            match found {
                Some(a) if a.worker_id != worker => {
                    return Err(agents::not_handed(attempt, worker));
                }
                Some(a) => (a.run_id, a.step_idx),
                None => {
                    return Err(EngineError::NotFound {
                        what: "live attempt",
                        name: attempt.to_string(),
                    });
                }
            }
        };
        let chunk = LogChunk {
            attempt_id: attempt,
            run_id,
            step_idx,
            offset,
            data,
        };
        self.store.append_log(&chunk).await?;
        // Nobody following is not an error.
        let _ = self.log_arrivals.send(LogArrival {
            run: run_id,
            attempt,
        });
        Ok(())
    }

    /// Announces every chunk stored from now on.
    pub fn follow_logs(&self) -> tokio::sync::broadcast::Receiver<LogArrival> {
        self.log_arrivals.subscribe()
    }
}

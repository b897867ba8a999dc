//! Step output: chunks are stored outside the state transaction (a failed or
//! slow log write never touches an admission), capped per attempt and per run,
//! and announced to followers as they arrive.

use std::collections::HashMap;

use super::*;

/// Bounds on what agents send as output.
#[derive(Debug, Clone)]
pub struct OutputLimits {
    /// Largest chunk of output one call may carry, in bytes.
    pub max_chunk_bytes: usize,
    /// Output kept per attempt; the agent cuts it there with a marker line.
    pub max_output_bytes: u64,
    /// Output kept per run, all its attempts together; the server cuts it
    /// there with a marker line and refuses the rest.
    pub max_run_output_bytes: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_chunk_bytes: 256 * 1024,
            max_output_bytes: 64 * 1024 * 1024,
            max_run_output_bytes: 1024 * 1024 * 1024,
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
        let (run_id, step_idx, entered) = {
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
                Some(a) => (a.run_id, a.step_idx, self.run_outputs.has(a.run_id)),
                None => return Err(not_live(attempt)),
            }
        };
        if !entered {
            // The run's first chunk since the server started: what it stored
            // before, read once. Entered only while the run is live, so that a
            // run that ended meanwhile is not kept.
            let ends = self.store.log_ends(run_id).await?;
            let state = self.state.lock().await;
            if state.runs.contains_key(&run_id) {
                self.run_outputs.enter(run_id, ends);
            }
        }
        let cap = limits.max_run_output_bytes;
        let (data, undo) = match self
            .run_outputs
            .take(run_id, attempt, offset, data.len(), cap)
        {
            None => return Err(not_live(attempt)),
            Some(Take::Refused) => return Err(run_output_cut(run_id, cap)),
            Some(Take::All) => (data, None),
            Some(Take::Cut { keep, undo }) => {
                let keep = data.floor_char_boundary(keep);
                let marked = format!(
                    "{}\n[corral: the run's output was cut at {}; the rest of it is dropped]\n",
                    &data[..keep],
                    size(cap)
                );
                (marked, Some(undo))
            }
        };
        let chunk = LogChunk {
            attempt_id: attempt,
            run_id,
            step_idx,
            offset,
            data,
        };
        if let Err(e) = self.store.append_log(&chunk).await {
            if let Some(undo) = undo {
                // The marker is not stored: the chunk sent again cuts it then.
                self.run_outputs.undo_cut(run_id, attempt, undo);
            }
            return Err(e.into());
        }
        // Nobody following is not an error.
        let _ = self.log_arrivals.send(LogArrival {
            run: run_id,
            attempt,
        });
        if undo.is_some() {
            // Tells the agent to ship no more of this attempt.
            return Err(run_output_cut(run_id, cap));
        }
        Ok(())
    }

    /// Announces every chunk stored from now on.
    pub fn follow_logs(&self) -> tokio::sync::broadcast::Receiver<LogArrival> {
        self.log_arrivals.subscribe()
    }
}

fn not_live(attempt: AttemptId) -> EngineError {
    EngineError::NotFound {
        what: "live attempt",
        name: attempt.to_string(),
    }
}

fn run_output_cut(run: RunId, cap: u64) -> EngineError {
    EngineError::Conflict(format!(
        "run {run}'s output reached its cap of {}; the rest of it is dropped",
        size(cap)
    ))
}

/// `bytes` for people: `1.0 GiB`, `64.0 MiB`, `1.5 KiB`, `100 B`.
fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        GIB.. => format!("{:.1} GiB", bytes as f64 / GIB as f64),
        MIB.. => format!("{:.1} MiB", bytes as f64 / MIB as f64),
        KIB.. => format!("{:.1} KiB", bytes as f64 / KIB as f64),
        _ => format!("{bytes} B"),
    }
}

/// The output each live run has stored, kept as its chunks arrive, so that the
/// run's cap is checked without reading the store. A run is entered on its
/// first chunk since the server started, from the store's `log_ends` (one
/// indexed read per run, not per chunk), and forgotten when it ends; nothing
/// here walks the runs. Kept per attempt as where its output ends, so a chunk
/// sent again (the agent retries by offset) adds nothing.
#[derive(Debug, Default)]
pub(super) struct RunOutputs(std::sync::Mutex<HashMap<RunId, RunOutput>>);

#[derive(Debug, Default)]
struct RunOutput {
    ends: HashMap<AttemptId, u64>,
    total: u64,
    /// The cap was reached and the marker stored: the rest is refused.
    cut: bool,
}

/// What to store of a chunk.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Take {
    /// All of it.
    All,
    /// Its first `keep` bytes and the marker; `undo` puts the run back as it
    /// was if the store fails.
    Cut { keep: usize, undo: Undo },
    /// None: the run's output was cut already.
    Refused,
}

/// A run's count before a cut: the attempt's end and the run's total.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) struct Undo {
    end: Option<u64>,
    total: u64,
}

impl RunOutputs {
    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, RunOutput>> {
        // A panic elsewhere cannot leave a count half-changed: each change is one step.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn has(&self, run: RunId) -> bool {
        self.runs().contains_key(&run)
    }

    /// Enters `run` with where each attempt's stored output ends; a run
    /// entered meanwhile is kept as it is.
    pub(super) fn enter(&self, run: RunId, ends: Vec<(AttemptId, u64)>) {
        self.runs().entry(run).or_insert_with(|| RunOutput {
            total: ends.iter().map(|(_, end)| end).sum(),
            ends: ends.into_iter().collect(),
            cut: false,
        });
    }

    /// Counts a chunk of `len` bytes at `offset` of `attempt` against the
    /// run's `cap`: what to store of it. `None` when the run is not entered
    /// (it ended).
    pub(super) fn take(
        &self,
        run: RunId,
        attempt: AttemptId,
        offset: u64,
        len: usize,
        cap: u64,
    ) -> Option<Take> {
        let mut runs = self.runs();
        let out = runs.get_mut(&run)?;
        if out.cut {
            return Some(Take::Refused);
        }
        let before = out.ends.get(&attempt).copied();
        let end = offset.saturating_add(len as u64);
        let added = end.saturating_sub(before.unwrap_or(0));
        let room = cap.saturating_sub(out.total);
        let undo = Undo {
            end: before,
            total: out.total,
        };
        if added <= room {
            out.ends.insert(attempt, end.max(before.unwrap_or(0)));
            out.total += added;
            return Some(Take::All);
        }
        // Past the cap: what is new of the chunk, up to the room left.
        let keep = before
            .unwrap_or(0)
            .saturating_sub(offset)
            .saturating_add(room);
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).min(len);
        out.ends.insert(attempt, offset.saturating_add(keep as u64));
        out.total = cap;
        out.cut = true;
        Some(Take::Cut { keep, undo })
    }

    /// Puts the run back as it was before a cut whose chunk was not stored.
    pub(super) fn undo_cut(&self, run: RunId, attempt: AttemptId, undo: Undo) {
        if let Some(out) = self.runs().get_mut(&run) {
            match undo.end {
                Some(end) => out.ends.insert(attempt, end),
                None => out.ends.remove(&attempt),
            };
            out.total = undo.total;
            out.cut = false;
        }
    }

    /// Forgets the runs that `writes` end.
    pub(super) fn forget_ended(&self, writes: &[Write]) {
        self.forget(writes.iter().filter_map(|w| match w {
            Write::PutRun(run) if run.state.is_terminal() => Some(run.id),
            _ => None,
        }));
    }

    fn forget(&self, ended: impl Iterator<Item = RunId>) {
        let mut ended = ended.peekable();
        if ended.peek().is_some() {
            let mut runs = self.runs();
            for run in ended {
                runs.remove(&run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: AttemptId = AttemptId(1);
    const B: AttemptId = AttemptId(2);
    const RUN: RunId = RunId(7);

    fn outputs() -> RunOutputs {
        let outputs = RunOutputs::default();
        outputs.enter(RUN, vec![]);
        outputs
    }

    #[test]
    fn a_run_is_cut_once_at_its_cap_across_attempts() {
        let outputs = outputs();
        assert_eq!(outputs.take(RUN, A, 0, 60, 100), Some(Take::All));
        // Sent again: counted once.
        assert_eq!(outputs.take(RUN, A, 0, 60, 100), Some(Take::All));
        assert_eq!(outputs.take(RUN, B, 0, 30, 100), Some(Take::All));
        match outputs.take(RUN, B, 30, 50, 100) {
            Some(Take::Cut { keep, .. }) => assert_eq!(keep, 10, "10 bytes were left"),
            other => panic!("{other:?}"),
        }
        assert_eq!(outputs.take(RUN, A, 60, 1, 100), Some(Take::Refused));
        assert_eq!(outputs.take(RUN, B, 80, 1, 100), Some(Take::Refused));
    }

    #[test]
    fn a_cut_not_stored_is_undone_and_made_again() {
        let outputs = outputs();
        assert_eq!(outputs.take(RUN, A, 0, 90, 100), Some(Take::All));
        let Some(Take::Cut { keep, undo }) = outputs.take(RUN, A, 90, 20, 100) else {
            panic!("a cut");
        };
        assert_eq!(keep, 10);
        outputs.undo_cut(RUN, A, undo);
        assert!(matches!(
            outputs.take(RUN, A, 90, 20, 100),
            Some(Take::Cut { keep: 10, .. })
        ));
    }

    #[test]
    fn a_run_entered_from_the_store_counts_what_it_stored_before() {
        let outputs = RunOutputs::default();
        assert_eq!(outputs.take(RUN, A, 0, 1, 100), None, "not entered");
        outputs.enter(RUN, vec![(A, 50), (B, 40)]);
        // Entered again meanwhile: kept as it is.
        outputs.enter(RUN, vec![]);
        assert_eq!(
            outputs.take(RUN, A, 40, 10, 100),
            Some(Take::All),
            "sent again"
        );
        assert!(matches!(
            outputs.take(RUN, B, 40, 20, 100),
            Some(Take::Cut { keep: 10, .. })
        ));
    }

    #[test]
    fn an_ended_run_is_forgotten() {
        let outputs = outputs();
        outputs.forget([RunId(8)].into_iter());
        assert!(outputs.has(RUN));
        outputs.forget([RUN].into_iter());
        assert!(!outputs.has(RUN));
        assert_eq!(outputs.take(RUN, A, 0, 1, 100), None);
    }
}

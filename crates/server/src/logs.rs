//! Rendering stored log chunks as the text users read, a page at a time: a
//! log is streamed, never held whole in memory.
//!
//! Read whole ([`Ordered`]), a run's output comes step by step and attempt by
//! attempt; with a prefix, every line carries its step's name (`build | ...`)
//! and a step's attempts, when it has several, are introduced by a
//! `--- attempt N ---` line. Followed live ([`Live`]), output comes as it is
//! stored, whole lines only, so that parallel steps do not mix within a line.

use std::collections::BTreeMap;

use corral_core::ids::AttemptId;
use corral_store::{AttemptRecord, LogChunk, StepRecord};

/// One attempt in reading order.
struct Slot {
    attempt: AttemptId,
    step: String,
    /// Shown as a header when its step has several attempts.
    header: Option<u32>,
}

/// Renders a run's chunks, which come ordered by step, attempt and offset.
pub struct Ordered {
    prefixed: bool,
    slots: Vec<Slot>,
    /// Slots before this one are written.
    next: usize,
    /// The slot being written, and whether its text ends a line.
    open: Option<(usize, bool)>,
    steps: BTreeMap<u32, String>,
}

impl Ordered {
    /// For a whole run (`step` none, prefixed) or one step (bare text).
    pub fn new(
        steps: &[StepRecord],
        attempts: &[AttemptRecord],
        step: Option<u32>,
        prefixed: bool,
    ) -> Ordered {
        let mut attempts: Vec<_> = attempts
            .iter()
            .filter(|a| step.is_none_or(|s| a.step_idx == s))
            .collect();
        attempts.sort_by_key(|a| (a.step_idx, a.id));
        let steps: BTreeMap<u32, String> = steps.iter().map(|s| (s.idx, s.name.clone())).collect();
        let slots = attempts
            .iter()
            .map(|a| {
                let several = attempts.iter().filter(|b| b.step_idx == a.step_idx).count() > 1;
                Slot {
                    attempt: a.id,
                    step: steps.get(&a.step_idx).cloned().unwrap_or_default(),
                    header: several.then_some(a.number),
                }
            })
            .collect();
        Ordered {
            prefixed,
            slots,
            next: 0,
            open: None,
            steps,
        }
    }

    /// The text of one more chunk, with what comes before it.
    pub fn chunk(&mut self, chunk: &LogChunk) -> String {
        let mut out = String::new();
        let found = self.slots[self.next..]
            .iter()
            .position(|s| s.attempt == chunk.attempt_id)
            .map(|i| self.next + i);
        let at_line_start = match (found, self.open) {
            (Some(k), Some((open, ends))) if k == open => ends,
            (Some(k), _) => {
                self.close(&mut out);
                while self.next < k {
                    self.open_slot(self.next, &mut out);
                    self.close(&mut out);
                }
                self.open_slot(k, &mut out);
                true
            }
            // An attempt the run had not when the read began: at the end.
            (None, _) => self.open.is_none_or(|(_, ends)| ends),
        };
        let name = match found {
            Some(k) => self.slots[k].step.clone(),
            None => self.steps.get(&chunk.step_idx).cloned().unwrap_or_default(),
        };
        push(
            &mut out,
            &chunk.data,
            self.prefixed.then_some(&name),
            at_line_start,
        );
        if let Some((_, ends)) = &mut self.open
            && !chunk.data.is_empty()
        {
            *ends = chunk.data.ends_with('\n');
        }
        out
    }

    /// What is left once every chunk is written: the headers of attempts
    /// without output, and a last line's end.
    pub fn finish(mut self) -> String {
        let mut out = String::new();
        self.close(&mut out);
        while self.next < self.slots.len() {
            self.open_slot(self.next, &mut out);
            self.close(&mut out);
        }
        out
    }

    fn open_slot(&mut self, k: usize, out: &mut String) {
        if let Some(number) = self.slots[k].header {
            let header = format!("--- attempt {number} ---\n");
            let name = self.slots[k].step.clone();
            push(out, &header, self.prefixed.then_some(&name), true);
        }
        self.open = Some((k, true));
        self.next = k + 1;
    }

    fn close(&mut self, out: &mut String) {
        if let Some((_, false)) = self.open.take()
            && self.prefixed
        {
            out.push('\n');
        }
    }
}

/// Renders chunks as they are stored, in any order between attempts: whole
/// lines only (a prefixed line would otherwise mix with another step's).
pub struct Live {
    prefixed: bool,
    /// Each attempt's text that does not end a line yet.
    partial: BTreeMap<AttemptId, (String, String)>,
}

impl Live {
    pub fn new(prefixed: bool) -> Live {
        Live {
            prefixed,
            partial: BTreeMap::new(),
        }
    }

    /// The header line of an attempt after the first of its step.
    pub fn header(&self, step: &str, number: u32) -> String {
        let mut out = String::new();
        push(
            &mut out,
            &format!("--- attempt {number} ---\n"),
            self.prefixed.then_some(step),
            true,
        );
        out
    }

    /// The whole lines that `chunk` completes.
    pub fn chunk(&mut self, step: &str, chunk: &LogChunk) -> String {
        if !self.prefixed {
            return chunk.data.clone();
        }
        let (_, held) = self
            .partial
            .entry(chunk.attempt_id)
            .or_insert_with(|| (step.to_string(), String::new()));
        held.push_str(&chunk.data);
        let Some(end) = held.rfind('\n') else {
            return String::new();
        };
        let lines: String = held.drain(..=end).collect();
        let mut out = String::new();
        push(&mut out, &lines, Some(step), true);
        out
    }

    /// Lines left unfinished when the run ended.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for (step, held) in self.partial.into_values() {
            if !held.is_empty() {
                push(&mut out, &held, Some(&step), true);
                out.push('\n');
            }
        }
        out
    }
}

/// Appends `text`, with `name | ` before each line when prefixed.
fn push(out: &mut String, text: &str, prefix: Option<&str>, at_line_start: bool) {
    match prefix {
        None => out.push_str(text),
        Some(name) => {
            let mut start = at_line_start;
            for line in text.split_inclusive('\n') {
                if start {
                    out.push_str(name);
                    out.push_str(" | ");
                }
                out.push_str(line);
                start = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use corral_core::clock::Timestamp;
    use corral_core::ids::{RunId, WorkerId};
    use corral_core::run::{AttemptState, StepState};

    use super::*;

    struct Detail {
        steps: Vec<StepRecord>,
        attempts: Vec<AttemptRecord>,
    }

    fn detail(attempts: &[(u32, i64, u32)]) -> Detail {
        Detail {
            steps: ["build", "test"]
                .iter()
                .zip(0..)
                .map(|(name, idx)| StepRecord {
                    run_id: RunId(1),
                    idx,
                    name: name.to_string(),
                    group: 0,
                    state: StepState::Running,
                    attempts: 1,
                })
                .collect(),
            attempts: attempts
                .iter()
                .map(|&(step_idx, id, number)| AttemptRecord {
                    id: AttemptId(id),
                    run_id: RunId(1),
                    step_idx,
                    number,
                    worker_id: WorkerId(1),
                    state: AttemptState::Running,
                    exit_code: None,
                    error: None,
                    created_at: Timestamp(0),
                    started_at: None,
                    finished_at: None,
                    usage: None,
                })
                .collect(),
        }
    }

    fn chunk(step_idx: u32, attempt: i64, offset: u64, data: &str) -> LogChunk {
        LogChunk {
            attempt_id: AttemptId(attempt),
            run_id: RunId(1),
            step_idx,
            offset,
            data: data.into(),
        }
    }

    fn ordered(detail: &Detail, step: Option<u32>, chunks: &[LogChunk]) -> String {
        let mut render = Ordered::new(&detail.steps, &detail.attempts, step, step.is_none());
        let mut out: String = chunks.iter().map(|c| render.chunk(c)).collect();
        out.push_str(&render.finish());
        out
    }

    #[test]
    fn a_whole_read_prefixes_lines_across_chunks_and_heads_later_attempts() {
        let d = detail(&[(0, 1, 1), (0, 3, 2), (1, 2, 1)]);
        let chunks = [
            chunk(0, 1, 0, "comp"),
            chunk(0, 1, 4, "iling\nno newline"),
            chunk(0, 3, 0, "again\n"),
            chunk(1, 2, 0, "ok\n"),
        ];
        assert_eq!(
            ordered(&d, None, &chunks),
            "build | --- attempt 1 ---\nbuild | compiling\nbuild | no newline\n\
             build | --- attempt 2 ---\nbuild | again\ntest | ok\n"
        );
        assert_eq!(
            ordered(&d, Some(1), &chunks[3..]),
            "ok\n",
            "one step reads as its bare text"
        );
    }

    #[test]
    fn attempts_without_output_still_get_their_header() {
        let d = detail(&[(0, 1, 1), (0, 3, 2)]);
        assert_eq!(
            ordered(&d, None, &[chunk(0, 3, 0, "second\n")]),
            "build | --- attempt 1 ---\nbuild | --- attempt 2 ---\nbuild | second\n"
        );
    }

    #[test]
    fn a_live_read_gives_whole_lines_per_attempt() {
        let mut live = Live::new(true);
        assert_eq!(live.chunk("build", &chunk(0, 1, 0, "par")), "");
        assert_eq!(live.chunk("test", &chunk(1, 2, 0, "t1\nt")), "test | t1\n");
        assert_eq!(
            live.chunk("build", &chunk(0, 1, 3, "tial\nb2\n")),
            "build | partial\nbuild | b2\n"
        );
        assert_eq!(live.finish(), "test | t\n");
        let mut bare = Live::new(false);
        assert_eq!(bare.chunk("build", &chunk(0, 1, 0, "raw")), "raw");
    }
}

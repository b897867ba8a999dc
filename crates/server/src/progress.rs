//! Moving one run forward: applies the core's step rules to a run's records and
//! collects the writes that persist the result.

use corral_core::clock::Timestamp;
use corral_core::controller::{Reason, ReasonCode};
use corral_core::ids::{RunId, WorkerId};
use corral_core::run::{
    AttemptState, RunState, StepState, after_attempt, outcome, ready_steps, skip_unreachable,
};
use corral_store::{AllocationRecord, AttemptRecord, Write};

use crate::state::{LiveRun, State};

/// A working copy of a live run and the writes made to it so far.
pub struct RunUpdate {
    pub run: LiveRun,
    pub writes: Vec<Write>,
    now: Timestamp,
}

impl RunUpdate {
    /// Takes run `id` out of `state` to move it forward (no copy of it is
    /// made); [`RunUpdate::done`] puts it back. `None` when it is not live.
    pub fn take(state: &mut State, id: RunId, now: Timestamp) -> Option<RunUpdate> {
        Some(RunUpdate {
            run: state.runs.remove(&id)?,
            writes: Vec::new(),
            now,
        })
    }

    /// Puts the run back into `state`; returns the writes that persist what
    /// changed (staging them applies them to `state` again, which they leave
    /// as it is, and updates what is derived from the run).
    pub fn done(self, state: &mut State) -> Vec<Write> {
        state.runs.insert(self.run.record.id, self.run);
        self.writes
    }

    pub fn set_run_state(&mut self, state: RunState) {
        self.set_run_state_with(state, None);
    }

    fn set_run_state_with(&mut self, state: RunState, reason: Option<Reason>) {
        if self.run.record.state == state {
            return;
        }
        self.run.record.state = state;
        self.run.record.reason = reason;
        self.run.record.updated_at = self.now;
        if state.is_terminal() {
            self.run.record.finished_at = Some(self.now);
        }
        self.writes.push(Write::PutRun(self.run.record.clone()));
    }

    fn set_step(&mut self, idx: usize, state: StepState, attempts: u32) {
        let step = &mut self.run.steps[idx];
        step.state = state;
        step.attempts = attempts;
        self.writes.push(Write::PutStep(step.clone()));
    }

    fn put_attempt(&mut self, attempt: AttemptRecord) {
        match self.run.attempts.iter_mut().find(|a| a.id == attempt.id) {
            Some(slot) => *slot = attempt.clone(),
            None => self.run.attempts.push(attempt.clone()),
        }
        self.writes.push(Write::PutAttempt(attempt));
    }

    /// Ends a live attempt and moves its step on (back to pending while retries remain).
    pub fn end_attempt(
        &mut self,
        mut attempt: AttemptRecord,
        outcome: AttemptState,
        exit_code: Option<i32>,
        error: Option<String>,
    ) {
        attempt.state = outcome;
        attempt.exit_code = exit_code;
        attempt.error = error;
        attempt.finished_at = Some(self.now);
        let idx = attempt.step_idx as usize;
        self.put_attempt(attempt);
        let progress = self.run.progress();
        let next = after_attempt(&progress[idx], outcome);
        let attempts = self.run.steps[idx].attempts;
        self.set_step(idx, next, attempts);
    }

    /// Ends the run now in `state`: live attempts and unfinished steps are
    /// cancelled, and every open allocation is closed.
    pub fn finish(&mut self, state: RunState) {
        self.finish_with(state, None);
    }

    /// Ends the run as [`RunUpdate::finish`] does, saying why.
    pub fn finish_with(&mut self, state: RunState, reason: Option<Reason>) {
        let live: Vec<AttemptRecord> = self
            .run
            .attempts
            .iter()
            .filter(|a| !a.state.is_terminal())
            .cloned()
            .collect();
        for mut a in live {
            a.state = AttemptState::Cancelled;
            a.finished_at = Some(self.now);
            self.put_attempt(a);
        }
        for idx in 0..self.run.steps.len() {
            if !self.run.steps[idx].state.is_terminal() {
                let attempts = self.run.steps[idx].attempts;
                self.set_step(idx, StepState::Cancelled, attempts);
            }
        }
        self.close_allocations();
        self.set_run_state_with(state, reason);
    }

    fn close_allocations(&mut self) {
        for mut alloc in std::mem::take(&mut self.run.allocations) {
            alloc.closed_at = Some(self.now);
            self.writes.push(Write::PutAllocation(alloc));
        }
    }

    /// Skips what can no longer run, starts what is ready on the group's worker,
    /// and ends the run when every step has ended.
    pub fn advance(&mut self, state: &mut State) {
        let mut progress = self.run.progress();
        for idx in skip_unreachable(&mut progress) {
            let attempts = self.run.steps[idx].attempts;
            self.set_step(idx, StepState::Skipped, attempts);
        }
        if let Some(end) = outcome(&progress) {
            self.close_allocations();
            self.set_run_state(end);
            return;
        }
        for idx in ready_steps(&progress) {
            let group = self.run.steps[idx].group;
            let Some(worker) = self.bound_worker(group) else {
                continue;
            };
            let number = self.run.steps[idx].attempts + 1;
            let attempt = AttemptRecord {
                id: state.next_attempt_id(),
                run_id: self.run.record.id,
                step_idx: self.run.steps[idx].idx,
                number,
                worker_id: worker,
                state: AttemptState::Running,
                exit_code: None,
                error: None,
                created_at: self.now,
                started_at: Some(self.now),
                finished_at: None,
                usage: None,
            };
            self.put_attempt(attempt);
            self.set_step(idx, StepState::Running, number);
        }
        if self.run.attempts.iter().any(|a| !a.state.is_terminal())
            && matches!(
                self.run.record.state,
                RunState::Admitted | RunState::Provisioning
            )
        {
            self.set_run_state(RunState::Running);
        }
    }

    fn bound_worker(&self, group: u32) -> Option<WorkerId> {
        self.run
            .allocations
            .iter()
            .find(|a| a.group == group)
            .and_then(|a| a.worker_id)
    }

    /// Workers that were handed new attempts by this update.
    pub fn assigned_workers(&self) -> Vec<WorkerId> {
        let mut workers: Vec<WorkerId> = self
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::PutAttempt(a) if a.created_at == self.now && !a.state.is_terminal() => {
                    Some(a.worker_id)
                }
                _ => None,
            })
            .collect();
        workers.sort_unstable();
        workers.dedup();
        workers
    }

    /// Opens an allocation for one of the run's groups.
    pub fn open(&mut self, alloc: AllocationRecord) {
        self.run.allocations.push(alloc.clone());
        self.writes.push(Write::PutAllocation(alloc));
    }

    /// Releases a group's allocation (its worker was lost): the group waits for
    /// a new one in the queue.
    pub fn release(&mut self, group: u32) {
        if let Some(i) = self.run.allocations.iter().position(|a| a.group == group) {
            let mut alloc = self.run.allocations.remove(i);
            alloc.closed_at = Some(self.now);
            self.writes.push(Write::PutAllocation(alloc));
        }
    }

    /// Binds a group's allocation to a worker. A run that said it waits for
    /// its worker no longer does once every group has one.
    pub fn bind(&mut self, group: u32, worker: Option<WorkerId>) {
        if let Some(alloc) = self.run.allocations.iter_mut().find(|a| a.group == group) {
            alloc.worker_id = worker;
            self.writes.push(Write::PutAllocation(alloc.clone()));
        }
        let waits_for_worker = self
            .run
            .record
            .reason
            .as_ref()
            .is_some_and(|r| r.code == ReasonCode::WorkerPending);
        if waits_for_worker && self.run.allocations.iter().all(|a| a.worker_id.is_some()) {
            self.set_reason(None);
        }
    }

    /// Says why the run waits while its state stays (an admitted run waiting
    /// for its worker), or that it no longer does.
    pub fn set_reason(&mut self, reason: Option<Reason>) {
        if self.run.record.reason == reason {
            return;
        }
        self.run.record.reason = reason;
        self.run.record.updated_at = self.now;
        self.writes.push(Write::PutRun(self.run.record.clone()));
    }
}

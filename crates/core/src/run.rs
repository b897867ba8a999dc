//! The life of a run and its steps: states, and the pure rules that move a run
//! forward when an attempt ends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!(
                        "unknown {} {other:?} (expected one of: {})",
                        stringify!($name),
                        [$($text),*].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// The state of a run.
    RunState {
        Queued => "queued",
        Admitted => "admitted",
        Provisioning => "provisioning",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        Rejected => "rejected",
    }
);

string_enum!(
    /// The state of a step.
    StepState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// The state of one attempt at a step: running from the moment it is handed
    /// to a worker until the worker reports how it ended.
    AttemptState {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        TimedOut => "timedout",
        Lost => "lost",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// The state of a worker: ready to serve, lost (missed its heartbeats) or gone
    /// (told to exit).
    WorkerState {
        Ready => "ready",
        Lost => "lost",
        Gone => "gone",
    }
);

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Rejected
        )
    }

    /// Holds allocations: admitted and not yet ended.
    pub fn holds_resources(self) -> bool {
        matches!(
            self,
            RunState::Admitted | RunState::Provisioning | RunState::Running
        )
    }
}

impl StepState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, StepState::Pending | StepState::Running)
    }
}

impl AttemptState {
    pub fn is_terminal(self) -> bool {
        self != AttemptState::Running
    }
}

/// What the progress rules need to know of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepProgress {
    pub state: StepState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Of those, the attempts lost with their worker.
    pub lost: u32,
    pub retries: u32,
    pub needs: Vec<usize>,
}

/// How many times a step is run again because its worker was lost, whatever
/// its `retries`: a lost worker is not the step's failure (but a step that
/// keeps killing its workers ends).
pub const LOST_WORKER_RETRIES: u32 = 3;

/// The state a step takes when an attempt ends: a failed attempt goes back to
/// pending while retries remain; an attempt lost with its worker goes back to
/// pending without using a retry, up to [`LOST_WORKER_RETRIES`] times.
pub fn after_attempt(step: &StepProgress, outcome: AttemptState) -> StepState {
    match outcome {
        AttemptState::Succeeded => StepState::Succeeded,
        AttemptState::Cancelled => StepState::Cancelled,
        AttemptState::Lost if step.lost <= LOST_WORKER_RETRIES => StepState::Pending,
        AttemptState::Lost => StepState::Failed,
        _ if step.attempts.saturating_sub(step.lost) <= step.retries => StepState::Pending,
        _ => StepState::Failed,
    }
}

/// Marks as skipped every pending step that can no longer run because something it
/// needs did not succeed (transitively). Returns the indices it changed, in increasing
/// order; linear in steps + needs.
pub fn skip_unreachable(steps: &mut [StepProgress]) -> Vec<usize> {
    let blocks = |state: StepState| {
        matches!(
            state,
            StepState::Failed | StepState::Skipped | StepState::Cancelled
        )
    };
    let mut dependents = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        for &d in &step.needs {
            dependents[d].push(i);
        }
    }
    let mut blocked: Vec<usize> = (0..steps.len())
        .filter(|&i| blocks(steps[i].state))
        .collect();
    let mut changed = Vec::new();
    while let Some(d) = blocked.pop() {
        for &i in &dependents[d] {
            if steps[i].state == StepState::Pending {
                steps[i].state = StepState::Skipped;
                changed.push(i);
                blocked.push(i);
            }
        }
    }
    changed.sort_unstable();
    changed
}

/// Pending steps whose needs have all succeeded.
pub fn ready_steps(steps: &[StepProgress]) -> Vec<usize> {
    (0..steps.len())
        .filter(|&i| {
            steps[i].state == StepState::Pending
                && steps[i]
                    .needs
                    .iter()
                    .all(|&d| steps[d].state == StepState::Succeeded)
        })
        .collect()
}

/// The run's final state once every step is terminal, else `None`.
pub fn outcome(steps: &[StepProgress]) -> Option<RunState> {
    if !steps.iter().all(|s| s.state.is_terminal()) {
        return None;
    }
    if steps.iter().all(|s| s.state == StepState::Succeeded) {
        Some(RunState::Succeeded)
    } else if steps.iter().any(|s| s.state == StepState::Cancelled) {
        Some(RunState::Cancelled)
    } else {
        Some(RunState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(state: StepState, needs: &[usize]) -> StepProgress {
        StepProgress {
            state,
            attempts: 0,
            lost: 0,
            retries: 0,
            needs: needs.to_vec(),
        }
    }

    #[test]
    fn failure_skips_dependents_transitively() {
        let mut steps = vec![
            step(StepState::Failed, &[]),
            step(StepState::Pending, &[0]),
            step(StepState::Pending, &[1]),
            step(StepState::Succeeded, &[]),
        ];
        assert_eq!(skip_unreachable(&mut steps), vec![1, 2]);
        assert_eq!(outcome(&steps), Some(RunState::Failed));
    }

    #[test]
    fn failure_at_the_head_of_a_long_chain_skips_it_all() {
        const STEPS: usize = 50_000;
        let mut steps = vec![step(StepState::Failed, &[])];
        steps.extend((1..STEPS).map(|i| step(StepState::Pending, &[i - 1])));
        // The chain's second step also needs a later, independent step, and a last step
        // needs the end of the chain.
        steps.push(step(StepState::Pending, &[]));
        steps[1].needs.push(STEPS);
        steps.push(step(StepState::Pending, &[STEPS - 1]));
        let skipped = skip_unreachable(&mut steps);
        let mut expected: Vec<usize> = (1..STEPS).collect();
        expected.push(STEPS + 1);
        assert_eq!(skipped, expected);
        assert_eq!(steps[STEPS].state, StepState::Pending);
        assert_eq!(ready_steps(&steps), vec![STEPS]);
    }

    #[test]
    fn ready_waits_for_all_needs() {
        let steps = vec![
            step(StepState::Succeeded, &[]),
            step(StepState::Running, &[]),
            step(StepState::Pending, &[0]),
            step(StepState::Pending, &[0, 1]),
        ];
        assert_eq!(ready_steps(&steps), vec![2]);
        assert_eq!(outcome(&steps), None);
    }

    #[test]
    fn retries_return_to_pending_until_exhausted() {
        let mut s = step(StepState::Running, &[]);
        s.retries = 1;
        s.attempts = 1;
        assert_eq!(after_attempt(&s, AttemptState::Failed), StepState::Pending);
        s.attempts = 2;
        assert_eq!(after_attempt(&s, AttemptState::TimedOut), StepState::Failed);
        assert_eq!(
            after_attempt(&s, AttemptState::Succeeded),
            StepState::Succeeded
        );
    }

    #[test]
    fn a_lost_worker_does_not_use_a_retry_but_losses_are_bounded() {
        let mut s = step(StepState::Running, &[]);
        s.attempts = 1;
        s.lost = 1;
        assert_eq!(after_attempt(&s, AttemptState::Lost), StepState::Pending);
        // Two losses, then a failure: the one retry is still there.
        s.retries = 1;
        s.attempts = 3;
        s.lost = 2;
        assert_eq!(after_attempt(&s, AttemptState::Failed), StepState::Pending);
        s.attempts = 4;
        assert_eq!(after_attempt(&s, AttemptState::Failed), StepState::Failed);
        s.lost = LOST_WORKER_RETRIES + 1;
        assert_eq!(after_attempt(&s, AttemptState::Lost), StepState::Failed);
    }

    #[test]
    fn states_round_trip_through_text() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(*s));
        }
        assert!("bogus".parse::<RunState>().is_err());
    }
}

//! Bounds on what one pipeline may ask, set by the server's operator: how many steps and
//! pool selectors, and how large a step's command and environment may be.
//!
//! The size bounds come from how a step runs: its `run` text is one argument of `sh -c` and its
//! `env` is added to the environment of that process, and Linux refuses an `execve` whose single
//! argument or environment string is longer than [`MAX_ARG_STRLEN`], or whose arguments and
//! environment together pass `ARG_MAX` (usually 2 MiB). A step that breaks them would be admitted
//! and then fail to start on every attempt; it is refused at submit instead.

use std::collections::BTreeMap;

use crate::error::FieldError;

/// Linux's longest single argument or environment string, its terminating NUL included.
pub const MAX_ARG_STRLEN: usize = 131_072;

/// The most [`Limits::max_command_bytes`] and [`Limits::max_env_bytes`] may add up to: half the
/// usual 2 MiB `ARG_MAX`, which also counts the agent's own environment and the pointers to
/// each string.
pub const MAX_STEP_EXEC_BYTES: usize = 1024 * 1024;

/// Bounds on a pipeline; `Default` gives the server's defaults.
///
/// The checks are made by [`PipelineSpec::compile_with`](crate::pipeline::PipelineSpec::compile_with),
/// the step count first, before any work that grows with the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Steps per pipeline (default 1000).
    pub max_steps: usize,
    /// Distinct pool selectors per pipeline, i.e. groups of its run (default 32). Steps
    /// without a `pool` count as one selector, "any pool".
    pub max_selectors: usize,
    /// Bytes of a step's `run` text (default 131071, which is also the most allowed:
    /// [`MAX_ARG_STRLEN`] less the NUL).
    pub max_command_bytes: usize,
    /// Bytes a step's `env` adds to its environment, counted as `KEY=VALUE` and a NUL per
    /// variable (default 256 KiB). Each `KEY=VALUE` must also be shorter than
    /// [`MAX_ARG_STRLEN`].
    pub max_env_bytes: usize,
    /// Seconds a step may run (default a day): the timeout of a step that sets none,
    /// and the largest one a step may set. A hard budget counts on it.
    pub max_step_secs: u64,
    /// Axes of a pipeline's `matrix` (default 8).
    pub max_matrix_axes: usize,
    /// Runs one submit may make, a matrix's combinations times `count` (default 10,000);
    /// also the most values of one matrix axis.
    pub max_runs_per_submit: usize,
}

/// The largest [`Limits::max_runs_per_submit`]: all the runs of one submit are written in one
/// transaction and answered in one response.
pub const MAX_RUNS_PER_SUBMIT: usize = 100_000;

/// The largest [`Limits::max_step_secs`]: a year.
pub const MAX_STEP_SECS: u64 = 366 * 86_400;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 1000,
            max_selectors: 32,
            max_command_bytes: MAX_ARG_STRLEN - 1,
            max_env_bytes: 256 * 1024,
            max_step_secs: 86_400,
            max_matrix_axes: 8,
            max_runs_per_submit: 10_000,
        }
    }
}

impl Limits {
    /// Checks limits as configured (e.g. from the server's flags): a command may not be longer
    /// than Linux accepts, and command and environment together must stay within
    /// [`MAX_STEP_EXEC_BYTES`]. The error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=MAX_STEP_SECS).contains(&self.max_step_secs) {
            return Err(FieldError::new(
                "max_step_duration",
                format!(
                    "{}s is not a step duration (at least 1s, at most {MAX_STEP_SECS}s)",
                    self.max_step_secs
                ),
            ));
        }
        if !(1..=MAX_RUNS_PER_SUBMIT).contains(&self.max_runs_per_submit) {
            return Err(FieldError::new(
                "max_runs_per_submit",
                format!(
                    "{} is not a number of runs (at least 1, at most {MAX_RUNS_PER_SUBMIT})",
                    self.max_runs_per_submit
                ),
            ));
        }
        if self.max_command_bytes >= MAX_ARG_STRLEN {
            return Err(FieldError::new(
                "max_command_bytes",
                format!(
                    "{} is more than Linux accepts for one argument (at most {})",
                    self.max_command_bytes,
                    MAX_ARG_STRLEN - 1
                ),
            ));
        }
        let both = self.max_command_bytes.saturating_add(self.max_env_bytes);
        if both > MAX_STEP_EXEC_BYTES {
            return Err(FieldError::new(
                "max_env_bytes",
                format!(
                    "{} with max_command_bytes {} makes {both} bytes; at most {MAX_STEP_EXEC_BYTES} are allowed (half of Linux's usual ARG_MAX)",
                    self.max_env_bytes, self.max_command_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The timeout of a step: its own, or [`Limits::max_step_secs`] when it sets none.
    pub fn step_timeout_secs(&self, timeout: Option<u64>) -> u64 {
        timeout.unwrap_or(self.max_step_secs)
    }

    /// The `timeout` of step `i`: more than zero, at most [`Limits::max_step_secs`].
    pub(crate) fn check_timeout(&self, i: usize, timeout: Option<u64>) -> Result<(), FieldError> {
        match timeout {
            Some(0) => Err(FieldError::new(
                format!("steps[{i}].timeout"),
                "must be greater than zero",
            )),
            Some(secs) if secs > self.max_step_secs => Err(FieldError::new(
                format!("steps[{i}].timeout"),
                format!(
                    "{secs}s is longer than a step may run on this server (at most {}s)",
                    self.max_step_secs
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The number of steps, checked before anything else is done with them.
    pub(crate) fn check_steps(&self, steps: usize) -> Result<(), FieldError> {
        if steps > self.max_steps {
            return Err(FieldError::new(
                "steps",
                format!("{steps} steps; at most {} are allowed", self.max_steps),
            ));
        }
        Ok(())
    }

    /// The `run` text of step `i`: one argument of `sh -c`, so no NUL and not too long.
    pub(crate) fn check_command(&self, i: usize, run: &str) -> Result<(), FieldError> {
        let path = || format!("steps[{i}].run");
        if run.contains('\0') {
            return Err(FieldError::new(path(), "contains a NUL byte"));
        }
        if run.len() > self.command_bytes() {
            return Err(FieldError::new(
                path(),
                format!(
                    "{} bytes; at most {} are allowed",
                    run.len(),
                    self.command_bytes()
                ),
            ));
        }
        Ok(())
    }

    /// The `env` of step `i`: names that a shell can use, no NUL, and sizes within bounds.
    pub(crate) fn check_env(
        &self,
        i: usize,
        env: &BTreeMap<String, String>,
    ) -> Result<(), FieldError> {
        for (key, value) in env {
            let path = || format!("steps[{i}].env.{}", key.escape_debug());
            if key.is_empty() {
                return Err(FieldError::new(
                    format!("steps[{i}].env"),
                    "a variable has an empty name",
                ));
            }
            if key.contains('\0') {
                return Err(FieldError::new(path(), "the name contains a NUL byte"));
            }
            if key.contains('=') {
                return Err(FieldError::new(path(), "the name contains '='"));
            }
            let valid = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(FieldError::new(
                    path(),
                    "is not a valid environment variable name (letters, digits and '_', not starting with a digit)",
                ));
            }
            if value.contains('\0') {
                return Err(FieldError::new(path(), "the value contains a NUL byte"));
            }
            // `KEY=VALUE` and its NUL.
            let entry = key.len() + 1 + value.len() + 1;
            if entry > MAX_ARG_STRLEN {
                return Err(FieldError::new(
                    path(),
                    format!(
                        "{key}=VALUE is {} bytes; at most {} are allowed (Linux's limit for one environment string)",
                        entry - 1,
                        MAX_ARG_STRLEN - 1
                    ),
                ));
            }
        }
        let total = env_entry_bytes(env);
        if total > self.env_bytes() {
            return Err(FieldError::new(
                format!("steps[{i}].env"),
                format!(
                    "{total} bytes (KEY=VALUE and a NUL per variable); at most {} are allowed",
                    self.env_bytes()
                ),
            ));
        }
        Ok(())
    }

    /// The command bound in force: [`Limits::max_command_bytes`], never more than Linux accepts.
    pub(crate) fn command_bytes(&self) -> usize {
        self.max_command_bytes.min(MAX_ARG_STRLEN - 1)
    }

    /// The environment bound in force: [`Limits::max_env_bytes`], never more than what
    /// [`MAX_STEP_EXEC_BYTES`] leaves beside the command.
    pub(crate) fn env_bytes(&self) -> usize {
        self.max_env_bytes
            .min(MAX_STEP_EXEC_BYTES.saturating_sub(self.command_bytes()))
    }
}

/// What `env` adds to a process's environment: `KEY=VALUE` and a NUL per variable.
pub(crate) fn env_entry_bytes(env: &BTreeMap<String, String>) -> usize {
    env.iter().map(|(k, v)| k.len() + 1 + v.len() + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_within_linux() {
        let limits = Limits::default();
        assert_eq!(limits.validate(), Ok(()));
        assert_eq!(limits.max_steps, 1000);
        assert_eq!(limits.max_selectors, 32);
        assert_eq!(limits.max_command_bytes, 131_071);
        assert_eq!(limits.max_env_bytes, 262_144);
        assert_eq!(limits.max_step_secs, 86_400);
        assert_eq!(limits.max_matrix_axes, 8);
        assert_eq!(limits.max_runs_per_submit, 10_000);
        assert_eq!(limits.command_bytes(), limits.max_command_bytes);
        assert_eq!(limits.env_bytes(), limits.max_env_bytes);
    }

    #[test]
    fn validate_names_what_linux_would_refuse() {
        let long = Limits {
            max_command_bytes: MAX_ARG_STRLEN,
            ..Limits::default()
        };
        let err = long.validate().expect_err("one byte too many");
        assert_eq!(err.path, "max_command_bytes");
        assert!(err.message.contains("at most 131071"), "{err}");
        assert_eq!(long.command_bytes(), MAX_ARG_STRLEN - 1);

        let large = Limits {
            max_env_bytes: 2 * 1024 * 1024,
            ..Limits::default()
        };
        let err = large.validate().expect_err("past ARG_MAX");
        assert_eq!(err.path, "max_env_bytes");
        assert!(err.message.contains("at most 1048576"), "{err}");
        assert_eq!(
            large.env_bytes(),
            MAX_STEP_EXEC_BYTES - (MAX_ARG_STRLEN - 1)
        );
        for bad in [0, MAX_STEP_SECS + 1] {
            let limits = Limits {
                max_step_secs: bad,
                ..Limits::default()
            };
            let err = limits.validate().expect_err("out of range");
            assert_eq!(err.path, "max_step_duration");
            assert!(err.message.contains("at most 31622400s"), "{err}");
        }
        for bad in [0, MAX_RUNS_PER_SUBMIT + 1] {
            let limits = Limits {
                max_runs_per_submit: bad,
                ..Limits::default()
            };
            let err = limits.validate().expect_err("out of range");
            assert_eq!(err.path, "max_runs_per_submit");
            assert!(err.message.contains("at most 100000"), "{err}");
        }
    }

    #[test]
    fn a_step_timeout_is_bounded_by_the_max_step_duration() {
        let limits = Limits {
            max_step_secs: 60,
            ..Limits::default()
        };
        assert_eq!(limits.step_timeout_secs(None), 60);
        assert_eq!(limits.step_timeout_secs(Some(5)), 5);
        assert_eq!(limits.check_timeout(0, Some(60)), Ok(()));
        assert_eq!(limits.check_timeout(0, None), Ok(()));
        let err = limits.check_timeout(3, Some(61)).expect_err("too long");
        assert_eq!(err.path, "steps[3].timeout");
        assert!(err.message.contains("at most 60s"), "{err}");
        let err = limits.check_timeout(0, Some(0)).expect_err("zero");
        assert!(err.message.contains("greater than zero"), "{err}");
    }
}

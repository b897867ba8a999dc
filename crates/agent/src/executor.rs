//! Runs one attempt: `sh -c` in the run's workspace, started by the agent's
//! step supervisor (see `steps.rs` and `supervisor.rs`) within the resources
//! it was admitted with, so a timeout, a cancel or the agent's own death kills
//! everything it started; streams its output back and reports how it ended
//! and what it used. A step whose processes the OOM killer took fails, saying
//! so in its error and in its log.

use std::path::Path;
use std::time::Duration;

use corral_api::{Assignment, AttemptUsage, ReportRequest};
use corral_core::resources::format_memory;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::client::{Client, with_retry};
use crate::output::{self, Piece};
use crate::steps::{End, Ended, Limits, Steps, Stop, Usage};

/// How the process ended, before it is reported.
pub struct Outcome {
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub usage: Option<Usage>,
}

async fn pump(mut reader: impl AsyncRead + Unpin, tx: mpsc::Sender<Piece>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Piece::Output(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the assignment to its end (or its timeout, or a [`Stop`]), ships its
/// output and reports the outcome, retrying until the server has it. `started`
/// gets the way to stop the step once it runs; `exited` is called as soon as
/// the step has ended, before the report.
pub async fn execute(
    client: Client,
    worker: i64,
    steps: &Steps,
    work_dir: &Path,
    assignment: Assignment,
    started: impl FnOnce(Stop),
    exited: impl FnOnce(),
) {
    let attempt = assignment.attempt_id;
    let (tx, rx) = mpsc::channel::<Piece>(64);
    let log_client = client.clone();
    let shipper = tokio::spawn(output::ship(
        attempt,
        assignment.max_output_bytes,
        rx,
        async move |chunk| {
            with_retry("log", || log_client.append_log(worker, attempt, &chunk)).await
        },
    ));
    let outcome = run_process(steps, work_dir, &assignment, tx, started).await;
    exited();
    let _ = shipper.await;
    let report = ReportRequest {
        outcome: outcome.outcome.to_string(),
        exit_code: outcome.exit_code,
        error: outcome.error,
        usage: outcome.usage.map(|u| AttemptUsage {
            cpu_seconds: u.cpu_seconds,
            memory_peak_bytes: u.memory_peak_bytes,
            throttled_seconds: u.throttled_seconds,
        }),
    };
    match with_retry("report", || client.report(worker, attempt, &report)).await {
        Ok(()) => tracing::info!(attempt, outcome = report.outcome, "reported"),
        Err((status, text)) => {
            tracing::warn!(attempt, status, %text, "the server refused the report")
        }
    }
}

async fn run_process(
    steps: &Steps,
    work_dir: &Path,
    a: &Assignment,
    tx: mpsc::Sender<Piece>,
    started: impl FnOnce(Stop),
) -> Outcome {
    let failed = |error: String| Outcome {
        outcome: "failed",
        exit_code: None,
        error: Some(error),
        usage: None,
    };
    let workspace = work_dir.join("workspaces").join(&a.workspace);
    // Almost always there already: a metadata call or two, not worth a hop to
    // a blocking thread and back before every step.
    if let Err(e) = std::fs::create_dir_all(&workspace) {
        return failed(format!(
            "cannot create workspace {}: {e}",
            workspace.display()
        ));
    }
    let limits = Limits {
        cpu_millis: a.resources.map(|r| r.cpu_millis),
        memory_mib: a.resources.map(|r| r.memory_mib),
    };
    let step = match steps.run(&workspace, &a.command, &a.env, limits) {
        Ok(step) => step,
        Err(e) => return failed(format!("cannot start the step: {e}")),
    };
    started(step.stop.clone());
    let pumps = [
        tokio::spawn(pump(step.stdout, tx.clone())),
        tokio::spawn(pump(step.stderr, tx.clone())),
    ];
    let limit = a.timeout_secs.map(Duration::from_secs);
    let mut ending = std::pin::pin!(step.ending.wait());
    let waited = match limit {
        Some(limit) => tokio::time::timeout(limit, &mut ending).await,
        None => Ok(ending.as_mut().await),
    };
    let (timed_out, End { ended, usage }) = match waited {
        Err(_) => {
            step.stop.stop();
            (true, ending.await)
        }
        Ok(end) => (false, end),
    };
    let mut outcome = match ended {
        _ if timed_out => Outcome {
            outcome: "timedout",
            exit_code: None,
            error: Some(format!("timed out after {}s", a.timeout_secs.unwrap_or(0))),
            usage,
        },
        Ended::Exited(0) => Outcome {
            outcome: "succeeded",
            exit_code: Some(0),
            error: None,
            usage,
        },
        Ended::Exited(code) => Outcome {
            outcome: "failed",
            exit_code: Some(code),
            error: None,
            usage,
        },
        Ended::Killed(_) => Outcome {
            usage,
            ..failed("killed by a signal".into())
        },
        // The server runs it again, as it does a lost worker's.
        Ended::Fenced => Outcome {
            outcome: "lost",
            exit_code: None,
            error: Some("killed: the agent's lease lapsed (it could not reach the server)".into()),
            usage,
        },
        Ended::Failed(e) => Outcome {
            usage,
            ..failed(format!("cannot run the step: {e}"))
        },
    };
    // A process that left its step's session may hold the pipes open while
    // older steps run (see `reaper.rs`): do not wait forever.
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), p)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    if let Some(usage) = usage.filter(|u| u.oom_kills > 0) {
        let why = out_of_memory(limits.memory_mib, usage.memory_peak_bytes);
        let _ = tx.send(Piece::Marker(why.clone())).await;
        if matches!(outcome.outcome, "succeeded" | "failed") {
            outcome.outcome = "failed";
            outcome.error = Some(why);
        }
    }
    outcome
}

/// Why a step whose processes the OOM killer took failed: `exceeded its
/// memory limit 128Mi (peak 128Mi)`.
fn out_of_memory(limit_mib: Option<u64>, peak_bytes: u64) -> String {
    let peak = format_memory((peak_bytes + (1 << 19)) >> 20);
    match limit_mib {
        Some(limit) => format!(
            "exceeded its memory limit {} (peak {peak})",
            format_memory(limit)
        ),
        None => format!("ran out of memory (peak {peak})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_kill_says_the_limit_and_the_peak_as_memory_is_written() {
        assert_eq!(
            out_of_memory(Some(128), 128 << 20),
            "exceeded its memory limit 128Mi (peak 128Mi)"
        );
        assert_eq!(
            out_of_memory(Some(2048), (2047 << 20) + 900_000),
            "exceeded its memory limit 2Gi (peak 2Gi)"
        );
        assert_eq!(out_of_memory(None, 3 << 20), "ran out of memory (peak 3Mi)");
    }
}

//! Runs one attempt: `sh -c` in the run's workspace, started by the agent's
//! step supervisor (see `steps.rs` and `supervisor.rs`), so a timeout, a
//! cancel or the agent's own death kills everything it started; streams its
//! output back and reports how it ended.

use std::path::Path;
use std::time::Duration;

use corral_api::{Assignment, ReportRequest};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::client::{Client, with_retry};
use crate::output;
use crate::steps::{Ended, Steps, Stop};

/// How the process ended, before it is reported.
pub struct Outcome {
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

async fn pump(mut reader: impl AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).await.is_err() {
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
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
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
        usage: None,
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
    tx: mpsc::Sender<Vec<u8>>,
    started: impl FnOnce(Stop),
) -> Outcome {
    let failed = |error: String| Outcome {
        outcome: "failed",
        exit_code: None,
        error: Some(error),
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
    let step = match steps.run(&workspace, &a.command, &a.env) {
        Ok(step) => step,
        Err(e) => return failed(format!("cannot start the step: {e}")),
    };
    started(step.stop.clone());
    let pumps = [
        tokio::spawn(pump(step.stdout, tx.clone())),
        tokio::spawn(pump(step.stderr, tx)),
    ];
    let limit = a.timeout_secs.map(Duration::from_secs);
    let mut ending = std::pin::pin!(step.ending.wait());
    let waited = match limit {
        Some(limit) => tokio::time::timeout(limit, &mut ending).await,
        None => Ok(ending.as_mut().await),
    };
    let outcome = match waited {
        Err(_) => {
            step.stop.stop();
            ending.await;
            Outcome {
                outcome: "timedout",
                exit_code: None,
                error: Some(format!("timed out after {}s", a.timeout_secs.unwrap_or(0))),
            }
        }
        Ok(Ended::Exited(0)) => Outcome {
            outcome: "succeeded",
            exit_code: Some(0),
            error: None,
        },
        Ok(Ended::Exited(code)) => Outcome {
            outcome: "failed",
            exit_code: Some(code),
            error: None,
        },
        Ok(Ended::Killed(_)) => failed("killed by a signal".into()),
        // The server runs it again, as it does a lost worker's.
        Ok(Ended::Fenced) => Outcome {
            outcome: "lost",
            exit_code: None,
            error: Some("killed: the agent's lease lapsed (it could not reach the server)".into()),
        },
        Ok(Ended::Failed(e)) => failed(format!("cannot run the step: {e}")),
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
    outcome
}

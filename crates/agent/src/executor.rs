//! Runs one attempt: `sh -c` in the run's workspace under a step guard (see
//! `guard.rs`), so a timeout, a cancel or the agent's own death kills everything
//! it started; streams its output back and reports how it ended.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use corral_api::{Assignment, ReportRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::client::{Client, with_retry};
use crate::guard::STEP_GUARD;
use crate::output;

/// How the process ended, before it is reported.
pub struct Outcome {
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// Stops a step: its guard kills the step's process group and everything left
/// under it, then ends.
pub fn stop(guard: u32) {
    // Never pid 0, which would signal the agent's own process group.
    if let Ok(pid @ 1..) = i32::try_from(guard) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
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

/// The variables that configure the agent itself, kept from its steps.
const AGENT_SETTINGS: [&str; 5] = [
    "CORRAL_TOKEN",
    "CORRAL_SERVER",
    "CORRAL_CA_CERT",
    "CORRAL_LOG",
    "CORRAL_DATABASE_URL",
];

/// Runs the assignment to its end (or its timeout, or a [`stop`]), ships its
/// output and reports the outcome, retrying until the server has it. `started`
/// gets the pid of the step's guard once it runs; `exited` is called as soon as
/// the guard has ended, before the report.
pub async fn execute(
    client: Client,
    worker: i64,
    work_dir: &Path,
    assignment: Assignment,
    started: impl FnOnce(u32),
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
    let outcome = run_process(work_dir, &assignment, tx, started).await;
    exited();
    let _ = shipper.await;
    let report = ReportRequest {
        outcome: outcome.outcome.to_string(),
        exit_code: outcome.exit_code,
        error: outcome.error,
    };
    match with_retry("report", || client.report(worker, attempt, &report)).await {
        Ok(()) => tracing::info!(attempt, outcome = report.outcome, "reported"),
        Err((status, text)) => {
            tracing::warn!(attempt, status, %text, "the server refused the report")
        }
    }
}

async fn run_process(
    work_dir: &Path,
    a: &Assignment,
    tx: mpsc::Sender<Vec<u8>>,
    started: impl FnOnce(u32),
) -> Outcome {
    let workspace = work_dir.join("workspaces").join(&a.workspace);
    if let Err(e) = tokio::fs::create_dir_all(&workspace).await {
        return Outcome {
            outcome: "failed",
            exit_code: None,
            error: Some(format!(
                "cannot create workspace {}: {e}",
                workspace.display()
            )),
        };
    }
    let env: BTreeMap<&String, &String> = a.env.iter().collect();
    // This very binary, as a step guard; through /proc/self/exe, which still
    // works when the binary's file has been replaced by an upgrade.
    let mut command = tokio::process::Command::new("/proc/self/exe");
    if let Some(name) = std::env::args_os().next() {
        command.arg0(name);
    }
    // The agent's own settings (its token above all) are not its steps'
    // business; what its worker was given (CORRAL_POOL, a pool's env) is.
    for key in AGENT_SETTINGS {
        command.env_remove(key);
    }
    let spawned = command
        .arg(STEP_GUARD)
        .arg(std::process::id().to_string())
        .arg(&a.command)
        .current_dir(&workspace)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                outcome: "failed",
                exit_code: None,
                error: Some(format!("cannot start the step's guard: {e}")),
            };
        }
    };
    let guard = child.id().unwrap_or(0);
    started(guard);
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, tx.clone())));
    }
    drop(tx);
    let limit = a.timeout_secs.map(Duration::from_secs);
    let waited = match limit {
        Some(limit) => tokio::time::timeout(limit, child.wait()).await,
        None => Ok(child.wait().await),
    };
    let outcome = match waited {
        Err(_) => {
            stop(guard);
            let _ = child.wait().await;
            Outcome {
                outcome: "timedout",
                exit_code: None,
                error: Some(format!("timed out after {}s", a.timeout_secs.unwrap_or(0))),
            }
        }
        Ok(Err(e)) => Outcome {
            outcome: "failed",
            exit_code: None,
            error: Some(format!("cannot wait for the step: {e}")),
        },
        Ok(Ok(status)) => match status.code() {
            Some(0) => Outcome {
                outcome: "succeeded",
                exit_code: Some(0),
                error: None,
            },
            Some(code) => Outcome {
                outcome: "failed",
                exit_code: Some(code),
                error: None,
            },
            None => Outcome {
                outcome: "failed",
                exit_code: None,
                error: Some("killed by a signal".into()),
            },
        },
    };
    // A process that escaped the guard may hold the pipes open: do not wait forever.
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

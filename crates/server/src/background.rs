//! Background workers: the server's loops (the committer, the controller, the
//! sampler, alert delivery...) as named [`Job`]s under one supervisor. A job's
//! body does one round of work and says whether more is waiting ([`Progress`]);
//! the supervisor owns everything else: the status each worker shows at
//! `GET /api/v1/workers`, restarts with backoff and jitter after an error or a
//! panic, the end of the server when a worker that cannot be restarted ends,
//! and an orderly stop at shutdown (the reverse of the start order, so the
//! controller stops before the committer that writes what it decided).
//!
//! In corral's glossary a "worker" is an agent process; these are *background*
//! workers, tasks of the server itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_core::backoff::Backoff;
use corral_core::clock::{Clock, Timestamp};
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a job's failed round says; only its text is kept.
pub type JobError = Box<dyn std::error::Error + Send + Sync>;

/// What a round of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More is waiting: the next round starts at once.
    Busy,
    /// Nothing more for now: the next round starts once `wait_for_work` returns.
    Idle,
}

/// The body of a background worker.
///
/// Cancellation: `wait_for_work` may be dropped at any await (the server is
/// stopping, or a test injects a fault), so it must only wait, never hold
/// work half done; `work` is always run to its end (or to the shutdown
/// deadline, after which its task is aborted).
pub trait Job: Send + 'static {
    /// One round of work. An error makes the supervisor pause (backing off)
    /// and call it again on the same job.
    fn work(&mut self) -> impl Future<Output = Result<Progress, JobError>> + Send;

    /// Waits until there may be work again (a tick, a wake-up).
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;
}

/// What happens when a worker's round fails or panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Run again after a pause that grows with each failure in a row.
    WithBackoff,
    /// Do not: the worker has failed for good, and the server must stop (the
    /// committer: operations wait on what it writes).
    Never,
}

/// What a background worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In a round of work.
    Running,
    /// Waiting for work.
    Idle,
    /// Failed, and waiting to be run again.
    BackingOff,
    /// Failed for good (or stopped at shutdown before it could recover).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Idle => "idle",
            Status::BackingOff => "backing_off",
            Status::Failed => "failed",
        }
    }
}

/// A background worker as it is now.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub name: &'static str,
    /// The server is not ready while a vital worker is down.
    pub vital: bool,
    pub status: Status,
    /// The last failure's text and time, kept after a recovery.
    pub last_error: Option<(Timestamp, String)>,
    /// How many times it was run again after a failure.
    pub restarts: u64,
    /// When a round of work last ended well.
    pub last_run_at: Option<Timestamp>,
}

/// The first pause after a failure, and the longest.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// A worker that ran this long since its last restart starts its backoff
/// over: its next failure is a new one, not one more in a row.
const STEADY: Duration = Duration::from_secs(60);

/// The part of a worker the supervisor writes and readers copy.
struct Slot {
    name: &'static str,
    report: Mutex<WorkerReport>,
}

impl Slot {
    fn update(&self, change: impl FnOnce(&mut WorkerReport)) {
        change(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn snapshot(&self) -> WorkerReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A started worker: its slot, the signal that stops it, its task.
struct Started {
    slot: Arc<Slot>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The server's background workers and their supervisor.
pub struct Background {
    clock: Arc<dyn Clock>,
    /// In start order.
    workers: Mutex<Vec<Started>>,
    /// Why a worker that is never restarted ended; the server stops on it.
    fatal: watch::Sender<Option<String>>,
    faults: Mutex<Option<Faults>>,
}

impl Background {
    pub fn new(clock: Arc<dyn Clock>) -> Background {
        Background {
            clock,
            workers: Mutex::new(Vec::new()),
            fatal: watch::Sender::new(None),
            faults: Mutex::new(None),
        }
    }

    /// Lets a test inject faults into the workers started from now on.
    #[doc(hidden)]
    pub fn inject(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = Some(faults);
    }

    /// Starts a worker running the jobs `make` builds: one now, and a new
    /// one after a panic (what the old one held may be half changed).
    pub fn start<J: Job>(
        &self,
        name: &'static str,
        vital: bool,
        restart: Restart,
        make: impl Fn() -> J + Send + 'static,
    ) {
        let slot = Arc::new(Slot {
            name,
            report: Mutex::new(WorkerReport {
                name,
                vital,
                status: Status::Running,
                last_error: None,
                restarts: 0,
                last_run_at: None,
            }),
        });
        let (stop, stopped) = watch::channel(false);
        let supervisor = Supervisor {
            slot: slot.clone(),
            clock: self.clock.clone(),
            faults: self
                .faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            stop: stopped,
            fatal: self.fatal.clone(),
        };
        let task = tokio::spawn(supervisor.run(restart, make));
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Started { slot, stop, task });
    }

    /// Every worker, in start order.
    pub fn list(&self) -> Vec<WorkerReport> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|w| w.slot.snapshot())
            .collect()
    }

    /// The vital workers that are down (failed, or backing off after a
    /// failure): while there is one, the server is not ready.
    pub fn vital_down(&self) -> Vec<WorkerReport> {
        self.list()
            .into_iter()
            .filter(|w| w.vital && matches!(w.status, Status::BackingOff | Status::Failed))
            .collect()
    }

    /// Resolves when a worker that is never restarted has ended, with why.
    pub async fn fatal(&self) -> String {
        let mut fatal = self.fatal.subscribe();
        let ended = fatal.wait_for(Option::is_some).await;
        match ended.as_deref() {
            Ok(Some(why)) => why.clone(),
            _ => "the background workers' supervisor is gone".into(),
        }
    }

    /// Stops every worker, the last started first, each between two rounds;
    /// what is still running at `deadline` is aborted.
    pub async fn shutdown(&self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for mut worker in workers.into_iter().rev() {
            worker.stop.send_replace(true);
            if tokio::time::timeout_at(until, &mut worker.task)
                .await
                .is_err()
            {
                tracing::warn!(
                    worker = worker.slot.name,
                    "background worker still busy at the shutdown deadline; aborted"
                );
                worker.task.abort();
            }
        }
    }
}

/// Runs one worker, for as long as the server does.
struct Supervisor {
    slot: Arc<Slot>,
    clock: Arc<dyn Clock>,
    faults: Option<Faults>,
    stop: watch::Receiver<bool>,
    fatal: watch::Sender<Option<String>>,
}

impl Supervisor {
    async fn run<J: Job>(mut self, restart: Restart, make: impl Fn() -> J) {
        let name = self.slot.name;
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut job = make();
        let mut since = Instant::now();
        loop {
            let ran = AssertUnwindSafe(self.drive(&mut job)).catch_unwind().await;
            let failure = match ran {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error.to_string(),
                Err(panic) => {
                    job = make();
                    format!("panicked: {}", panic_text(panic.as_ref()))
                }
            };
            let now = self.clock.now();
            let status = match restart {
                Restart::WithBackoff => Status::BackingOff,
                Restart::Never => Status::Failed,
            };
            self.slot.update(|r| {
                r.status = status;
                r.last_error = Some((now, failure.clone()));
            });
            if restart == Restart::Never {
                tracing::error!(worker = name, error = %failure, "background worker failed for good");
                self.fatal.send_replace(Some(failure));
                return;
            }
            if since.elapsed() > STEADY {
                backoff.reset();
            }
            let pause = backoff.next_pause(random_u64());
            tracing::error!(worker = name, error = %failure, ?pause, "background worker failed; it runs again after a pause");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped(&mut self.stop) => return,
            }
            if let Some(faults) = &self.faults {
                tokio::select! {
                    _ = faults.released(name) => {}
                    _ = stopped(&mut self.stop) => return,
                }
            }
            since = Instant::now();
            self.slot
                .update(|r| r.restarts = r.restarts.saturating_add(1));
            tracing::info!(worker = name, "background worker runs again");
        }
    }

    /// Runs rounds of `job` until it fails or the worker is stopped.
    async fn drive<J: Job>(&mut self, job: &mut J) -> Result<(), JobError> {
        let name = self.slot.name;
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if let Some(faults) = &self.faults {
                faults.fire(name);
            }
            self.slot.update(|r| r.status = Status::Running);
            let progress = job.work().await?;
            let now = self.clock.now();
            self.slot.update(|r| r.last_run_at = Some(now));
            match progress {
                // Others get their turn between two rounds.
                Progress::Busy => tokio::task::yield_now().await,
                Progress::Idle => {
                    self.slot.update(|r| r.status = Status::Idle);
                    tokio::select! {
                        _ = job.wait_for_work() => {}
                        _ = stopped(&mut self.stop) => return Ok(()),
                        _ = armed(self.faults.as_ref(), name) => {}
                    }
                }
            }
        }
    }
}

/// Resolves once the worker is told to stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: nothing will run this worker again.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves when a fault is injected into `name`; never without faults.
async fn armed(faults: Option<&Faults>, name: &str) {
    match faults {
        Some(faults) => faults.armed(name).await,
        None => std::future::pending().await,
    }
}

/// A panic's message, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    u64::from_le_bytes(bytes)
}

/// A fault a test injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Panic at the start of the next round (an idle worker is woken for it).
    Panic,
    /// Panicked: not run again until the test releases it.
    Held,
}

/// A test-only fault hook: makes a named worker panic on its next round and
/// holds its restart until the test releases it, so that a test sees the
/// failure for as long as it looks. The server only has one when a test
/// passes it to [`crate::serve_with_faults`].
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Faults {
    plan: Arc<watch::Sender<BTreeMap<String, Fault>>>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            plan: Arc::new(watch::Sender::new(BTreeMap::new())),
        }
    }
}

impl Faults {
    /// The worker `name` panics at the start of its next round.
    pub fn panic_next(&self, name: &str) {
        self.plan.send_modify(|plan| {
            plan.insert(name.to_string(), Fault::Panic);
        });
    }

    /// The worker `name` may run again (after its backoff).
    pub fn release(&self, name: &str) {
        self.plan.send_modify(|plan| {
            plan.remove(name);
        });
    }

    /// Panics if a panic is planned for `name`, and holds its restart.
    fn fire(&self, name: &str) {
        let planned = self.plan.send_if_modified(|plan| match plan.get_mut(name) {
            Some(fault @ Fault::Panic) => {
                *fault = Fault::Held;
                true
            }
            _ => false,
        });
        if planned {
            panic!("a fault injected into the background worker {name}");
        }
    }

    async fn armed(&self, name: &str) {
        let mut plan = self.plan.subscribe();
        // The sender is held here: it cannot be gone.
        let _ = plan
            .wait_for(|plan| plan.get(name) == Some(&Fault::Panic))
            .await;
    }

    async fn released(&self, name: &str) {
        let mut plan = self.plan.subscribe();
        let _ = plan
            .wait_for(|plan| plan.get(name) != Some(&Fault::Held))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::clock::ManualClock;

    /// Counts its rounds; fails the rounds it is told to.
    struct Counter {
        rounds: Arc<Mutex<u32>>,
        fail_at: Option<u32>,
        wake: Arc<tokio::sync::Notify>,
    }

    impl Job for Counter {
        async fn work(&mut self) -> Result<Progress, JobError> {
            let round = {
                let mut rounds = self.rounds.lock().expect("not poisoned");
                *rounds += 1;
                *rounds
            };
            if self.fail_at == Some(round) {
                return Err(format!("round {round} failed").into());
            }
            Ok(Progress::Idle)
        }

        async fn wait_for_work(&mut self) {
            self.wake.notified().await;
        }
    }

    fn background() -> Background {
        Background::new(Arc::new(ManualClock::new(Timestamp(1_000))))
    }

    /// Polls `check` until it holds, for at most ten seconds.
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_round_backs_off_then_runs_again() {
        let bg = background();
        let rounds = Arc::new(Mutex::new(0));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (r, w) = (rounds.clone(), wake.clone());
        bg.start("counter", true, Restart::WithBackoff, move || Counter {
            rounds: r.clone(),
            fail_at: Some(2),
            wake: w.clone(),
        });
        eventually("the first round", || bg.list()[0].status == Status::Idle).await;
        wake.notify_one();
        eventually("a restart", || bg.list()[0].restarts == 1).await;
        eventually("idle again", || bg.list()[0].status == Status::Idle).await;
        let report = &bg.list()[0];
        assert_eq!(*rounds.lock().expect("not poisoned"), 3);
        let (at, error) = report.last_error.clone().expect("the failure is kept");
        assert_eq!((at, error.as_str()), (Timestamp(1_000), "round 2 failed"));
        assert!(bg.vital_down().is_empty());
        bg.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn an_injected_panic_is_held_down_until_released() {
        let bg = background();
        let faults = Faults::default();
        bg.inject(faults.clone());
        let rounds = Arc::new(Mutex::new(0));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (r, w) = (rounds.clone(), wake.clone());
        bg.start("counter", true, Restart::WithBackoff, move || Counter {
            rounds: r.clone(),
            fail_at: None,
            wake: w.clone(),
        });
        eventually("the first round", || bg.list()[0].status == Status::Idle).await;
        faults.panic_next("counter");
        eventually("backing off", || bg.vital_down().len() == 1).await;
        let down = &bg.vital_down()[0];
        assert_eq!(down.status, Status::BackingOff);
        assert_eq!(down.restarts, 0);
        assert!(
            down.last_error
                .as_ref()
                .is_some_and(|(_, e)| e.contains("panicked: a fault injected")),
            "{down:?}"
        );
        faults.release("counter");
        eventually("a restart", || bg.list()[0].restarts == 1).await;
        eventually("idle again", || bg.list()[0].status == Status::Idle).await;
        assert!(bg.vital_down().is_empty());
        assert_eq!(
            *rounds.lock().expect("not poisoned"),
            2,
            "a new job ran once"
        );
        bg.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_worker_never_restarted_ends_the_server() {
        let bg = background();
        let wake = Arc::new(tokio::sync::Notify::new());
        bg.start("committer", true, Restart::Never, move || Counter {
            rounds: Arc::new(Mutex::new(0)),
            fail_at: Some(1),
            wake: wake.clone(),
        });
        assert_eq!(bg.fatal().await, "round 1 failed");
        assert_eq!(bg.list()[0].status, Status::Failed);
        assert_eq!(bg.vital_down().len(), 1);
    }

    /// Records when it is stopped.
    struct Stops {
        name: &'static str,
        order: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Job for Stops {
        async fn work(&mut self) -> Result<Progress, JobError> {
            Ok(Progress::Idle)
        }

        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await;
        }
    }

    impl Drop for Stops {
        fn drop(&mut self) {
            self.order.lock().expect("not poisoned").push(self.name);
        }
    }

    #[tokio::test]
    async fn shutdown_stops_the_last_started_first() {
        let bg = background();
        let order = Arc::new(Mutex::new(Vec::new()));
        for name in ["committer", "sampler", "controller"] {
            let order = order.clone();
            bg.start(name, false, Restart::WithBackoff, move || Stops {
                name,
                order: order.clone(),
            });
        }
        eventually("all idle", || {
            bg.list().iter().all(|w| w.status == Status::Idle)
        })
        .await;
        bg.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            *order.lock().expect("not poisoned"),
            ["controller", "sampler", "committer"]
        );
        assert!(bg.list().is_empty());
    }
}

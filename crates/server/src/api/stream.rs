//! Streamed answers: a run's log is sent a page at a time (its size never sits
//! in memory), and a followed log is pushed as chunks are stored.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use corral_core::ids::{AttemptId, RunId};
use corral_store::{LogCursor, RunDetail};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::logs::{Live, Ordered};

/// Chunks read from the store at a time.
const PAGE: u32 = 32;

/// What a reader of a run's log asked for.
pub struct LogRequest {
    pub run: RunId,
    /// One step's bare text, or every step's lines with its name.
    pub step: Option<u32>,
    /// Keep the answer open and send output as it is stored, until the run ends.
    pub follow: bool,
}

/// The body of a log answer, produced by a task that stops when the client
/// goes away.
pub fn log_body(engine: Arc<Engine>, detail: RunDetail, request: LogRequest) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let sent = if request.follow {
            follow(&engine, detail, &request, &tx).await
        } else {
            whole(&engine, &detail, &request, &tx).await
        };
        if let Err(e) = sent {
            tracing::debug!(run = %request.run, error = %e, "log stream ended early");
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>))
    });
    Body::from_stream(stream)
}

type Sent = Result<(), String>;

async fn send(tx: &mpsc::Sender<Bytes>, text: String) -> Sent {
    if text.is_empty() {
        return Ok(());
    }
    tx.send(Bytes::from(text))
        .await
        .map_err(|_| "the client went away".to_string())
}

/// The log as stored now, page by page.
async fn whole(
    engine: &Engine,
    detail: &RunDetail,
    request: &LogRequest,
    tx: &mpsc::Sender<Bytes>,
) -> Sent {
    let mut render = Ordered::new(
        &detail.steps,
        &detail.attempts,
        request.step,
        request.step.is_none(),
    );
    let mut after: Option<LogCursor> = None;
    loop {
        let page = engine
            .store()
            .logs(request.run, request.step, after, PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some(last.cursor());
        let text: String = page.iter().map(|c| render.chunk(c)).collect();
        send(tx, text).await?;
    }
    send(tx, render.finish()).await
}

/// Everything stored so far, then each chunk as it is stored, until the run
/// has ended and its output is all sent.
async fn follow(
    engine: &Engine,
    mut detail: RunDetail,
    request: &LogRequest,
    tx: &mpsc::Sender<Bytes>,
) -> Sent {
    // Subscribed before the first read, so nothing stored meanwhile is missed.
    let mut arrivals = engine.follow_logs();
    let mut render = Live::new(request.step.is_none());
    // The next byte to send of each attempt.
    let mut sent: BTreeMap<AttemptId, u64> = BTreeMap::new();
    let mut dirty: BTreeSet<AttemptId> = detail.attempts.iter().map(|a| a.id).collect();
    loop {
        let ended = detail.run.state.is_terminal();
        for attempt in std::mem::take(&mut dirty) {
            let Some(record) = detail.attempts.iter().find(|a| a.id == attempt) else {
                continue;
            };
            if request.step.is_some_and(|s| s != record.step_idx) {
                continue;
            }
            let step = detail
                .steps
                .iter()
                .find(|s| s.idx == record.step_idx)
                .map_or("", |s| s.name.as_str());
            let next = sent.entry(attempt).or_insert(0);
            if *next == 0 && record.number > 1 {
                send(tx, render.header(step, record.number)).await?;
            }
            loop {
                let page = engine
                    .store()
                    .attempt_log(attempt, *next, PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                // Chunks arrive at increasing offsets; a gap waits for its chunk.
                let mut text = String::new();
                let mut progressed = false;
                for chunk in &page {
                    if chunk.offset != *next {
                        break;
                    }
                    *next += chunk.data.len() as u64;
                    text.push_str(&render.chunk(step, chunk));
                    progressed = true;
                }
                send(tx, text).await?;
                if !progressed || page.len() < PAGE as usize {
                    break;
                }
            }
        }
        if ended {
            return send(tx, render.finish()).await;
        }
        if tx.is_closed() {
            return Err("the client went away".into());
        }
        // Wait for output; the run is read again (for its state and new
        // attempts) only after a quiet second or output of an unknown attempt.
        let mut reread = true;
        if let Ok(first) = tokio::time::timeout(Duration::from_secs(1), arrivals.recv()).await {
            reread = false;
            let mut next = Some(first);
            while let Some(arrival) = next {
                match arrival {
                    Ok(a) if a.run == request.run => {
                        reread |= !detail.attempts.iter().any(|k| k.id == a.attempt);
                        dirty.insert(a.attempt);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        reread = true;
                        dirty.extend(detail.attempts.iter().map(|a| a.id));
                    }
                    Err(RecvError::Closed) => return Err("the server is stopping".into()),
                }
                next = match arrivals.try_recv() {
                    Ok(a) => Some(Ok(a)),
                    Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                    Err(_) => None,
                };
            }
        }
        if !reread {
            continue;
        }
        let known = detail.attempts.len();
        detail = engine
            .store()
            .run(request.run)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the run is gone")?;
        // New attempts and running ones are read (an announcement may have
        // been missed); once the run has ended, every attempt is, a last time.
        let ended = detail.run.state.is_terminal();
        dirty.extend(
            detail
                .attempts
                .iter()
                .enumerate()
                .filter(|(i, a)| ended || *i >= known || !a.state.is_terminal())
                .map(|(_, a)| a.id),
        );
    }
}

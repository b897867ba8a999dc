//! Lists and watches: the objects of a kind that match a namespace and selectors, as a
//! list with its resource version, or as a stream of newline-delimited events from a
//! resource version (410 when it is older than the history kept), with bookmarks and
//! the initial events of a streaming list.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures_util::stream;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Shared;
use crate::api::{Answer, json};
use crate::selector::{FieldSelector, LabelSelector};
use crate::state::{Kind, State as Store, lock};
use crate::status::{ApiError, gone};

/// The longest a watch lasts, whatever `timeoutSeconds` asks.
const MAX_WATCH: Duration = Duration::from_secs(3600);

/// How often an idle watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(2);

/// Which objects a list or watch wants.
struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        self.namespace
            .as_deref()
            .is_none_or(|ns| namespace == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The objects of the kind in the store, as served, that match.
    fn current(&self, state: &Store) -> Vec<Value> {
        let values: Vec<Value> = match self.kind {
            Kind::Pod => state
                .pods
                .values()
                .map(|e| serde_json::to_value(&e.pod))
                .collect::<Result<_, _>>(),
            Kind::Secret => state
                .secrets
                .values()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>(),
            Kind::Node => state
                .nodes
                .values()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>(),
        }
        .unwrap_or_default();
        values
            .into_iter()
            .filter(|value| self.matches(value))
            .collect()
    }
}

fn flag(params: &BTreeMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}: {other:?} is not a boolean"
        ))),
    }
}

/// Answers a list, or a watch when the query says `watch=true`.
pub(crate) fn list_or_watch(
    shared: Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    params: &BTreeMap<String, String>,
) -> Answer {
    let text = |name: &str| params.get(name).map_or("", String::as_str);
    let filter = Filter {
        kind,
        namespace,
        labels: LabelSelector::parse(text("labelSelector")).map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(text("fieldSelector"), kind.field_labels())
            .map_err(ApiError::bad_request)?,
    };
    let resource_version = match text("resourceVersion") {
        "" => None,
        rv => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: {rv:?} is not a resource version"))
        })?),
    };
    if !flag(params, "watch")? {
        let state = lock(&shared.state);
        let list = json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": state.rv().to_string()},
            "items": filter.current(&state),
        });
        return Ok(json(StatusCode::OK, &list));
    }
    let timeout = match text("timeoutSeconds") {
        "" => MAX_WATCH,
        seconds => Duration::from_secs(seconds.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "timeoutSeconds: {seconds:?} is not a number of seconds"
            ))
        })?)
        .min(MAX_WATCH),
    };
    let bookmarks = flag(params, "allowWatchBookmarks")?;
    let initial = flag(params, "sendInitialEvents")?;
    let state = lock(&shared.state);
    let mut pending = VecDeque::new();
    let mut done = false;
    let last = match resource_version {
        Some(rv) if rv != 0 && !initial => {
            if rv < state.oldest_watchable() {
                pending.push_back(line("ERROR", &gone(rv, state.oldest_watchable())));
                done = true;
            }
            rv
        }
        _ => {
            for object in filter.current(&state) {
                pending.push_back(line("ADDED", &object));
            }
            if initial && bookmarks {
                pending.push_back(bookmark(kind, state.rv(), true));
            }
            state.rv()
        }
    };
    let watch = Watch {
        shared: shared.clone(),
        changes: state.changes.subscribe(),
        filter,
        last,
        pending,
        done,
        deadline: Instant::now() + timeout,
        bookmarks,
    };
    drop(state);
    let lines = stream::unfold(watch, Watch::next);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(futures_util::StreamExt::map(lines, Ok::<_, Infallible>)),
    )
        .into_response())
}

/// One watch event as a line of the stream.
fn line(change: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": change, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// A `BOOKMARK` event at `rv` (the end of the initial events when `initial`).
fn bookmark(kind: Kind, rv: u64, initial: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": "v1", "metadata": metadata}),
    )
}

/// A watch in progress.
struct Watch {
    shared: Arc<Shared>,
    changes: tokio::sync::watch::Receiver<u64>,
    filter: Filter,
    /// The newest resource version looked at.
    last: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    deadline: Instant,
    bookmarks: bool,
}

impl Watch {
    /// The next line to send, or `None` when the watch ends.
    async fn next(mut self) -> Option<(Bytes, Self)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((line, self));
            }
            if self.done || Instant::now() >= self.deadline {
                return None;
            }
            self.collect();
            if !self.pending.is_empty() {
                continue;
            }
            let wake = self.deadline.min(Instant::now() + BOOKMARK_EVERY);
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if self.bookmarks && Instant::now() < self.deadline {
                        self.pending.push_back(bookmark(self.filter.kind, self.last, false));
                    }
                }
            }
        }
    }

    /// Queues the changes after `last` that this watch wants: a change that makes an
    /// object match is `ADDED`, one that makes it stop matching `DELETED`.
    fn collect(&mut self) {
        self.changes.borrow_and_update();
        let state = lock(&self.shared.state);
        if self.last < state.oldest_watchable() {
            self.pending
                .push_back(line("ERROR", &gone(self.last, state.oldest_watchable())));
            self.done = true;
            return;
        }
        for event in state.events_after(self.last) {
            if event.kind != self.filter.kind {
                continue;
            }
            let now = self.filter.matches(&event.object);
            let before = event.previous.as_ref().map(|p| self.filter.matches(p));
            let change = match (event.change, before, now) {
                ("MODIFIED", Some(false), true) => "ADDED",
                ("MODIFIED", Some(true), false) => "DELETED",
                (change, Some(true) | None, true) => change,
                _ => continue,
            };
            self.pending.push_back(line(change, &event.object));
        }
        self.last = state.rv();
    }
}

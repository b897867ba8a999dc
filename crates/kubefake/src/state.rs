//! What the fake API server keeps: pods (with what its kubelet knows of them), secrets
//! and nodes, one global resource version, and the bounded history of changes that
//! watches read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, watch};

/// How many changes the history keeps: a watch from before them gets 410.
pub(crate) const HISTORY: usize = 1000;

/// How many requests the log keeps.
const REQUEST_LOG: usize = 10_000;

/// A namespaced object's (namespace, name).
pub(crate) type Key = (String, String);

/// A method and a path with its query, as logged.
pub(crate) type Request = (String, String);

/// The kinds the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Pod,
    Secret,
    Node,
}

impl Kind {
    /// The kind's name, as in objects.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Secret => "Secret",
            Self::Node => "Node",
        }
    }

    /// The field paths a field selector may name for this kind.
    pub(crate) fn field_labels(self) -> &'static [&'static str] {
        match self {
            Self::Pod => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "status.phase",
                "status.podIP",
            ],
            Self::Secret => &["metadata.name", "metadata.namespace", "type"],
            Self::Node => &["metadata.name", "spec.unschedulable"],
        }
    }
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The resource version the change made.
    pub rv: u64,
    /// The kind of the object changed.
    pub kind: Kind,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub change: &'static str,
    /// The object after the change (as it was last, for `DELETED`), as served.
    pub object: Arc<Value>,
    /// The object before the change, for `MODIFIED` (a watch with a selector sends
    /// `ADDED` or `DELETED` when an object starts or stops matching).
    pub previous: Option<Arc<Value>>,
}

/// Why the kubelet killed a pod's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    /// `evict`: the pod fails with reason `Evicted`.
    Evicted,
    /// `oom_kill`: its containers end `OOMKilled`, exit code 137.
    OomKilled,
    /// A DELETE: the pod is removed once its processes are gone.
    Deleted,
}

/// A started container's process.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Process {
    /// Its pid (the leader of its own process group), unless it could not be spawned.
    pub pid: Option<u32>,
    /// When it started.
    pub started: Time,
    /// Its exit code (128 + the signal for a killed one) and when it ended.
    pub ended: Option<(i32, Time)>,
    /// Why it could not be spawned, if it could not.
    pub start_error: Option<String>,
}

impl Process {
    /// Its pid while it runs.
    pub(crate) fn running(&self) -> Option<u32> {
        self.pid.filter(|_| self.ended.is_none())
    }
}

/// A pod and what the kubelet knows of it.
#[derive(Debug, Clone)]
pub(crate) struct PodEntry {
    /// The pod as served.
    pub pod: Pod,
    /// The resource version that created it: the scheduler's order.
    pub created: u64,
    /// Its directory: volumes, stdout and stderr.
    pub dir: PathBuf,
    /// Its containers' processes once started, in the spec's order.
    pub processes: Vec<Process>,
    /// Why its processes were killed, if they were.
    pub kill: Option<Kill>,
    /// When its image pull first failed (it backs off a moment later).
    pub pull_failed: Option<Instant>,
}

impl PodEntry {
    /// The pids of its running processes.
    pub(crate) fn running(&self) -> impl Iterator<Item = u32> + '_ {
        self.processes.iter().filter_map(Process::running)
    }
}

/// Everything the fake keeps, behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    rv: u64,
    /// Pods by (namespace, name).
    pub pods: BTreeMap<Key, PodEntry>,
    /// Secrets by (namespace, name).
    pub secrets: BTreeMap<Key, Secret>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    history: VecDeque<Event>,
    /// Each object as last served, for the `previous` of its next change.
    served: BTreeMap<(&'static str, String, String), Arc<Value>>,
    /// Images whose pull fails.
    pub failing_images: BTreeSet<String>,
    /// POSTs of pods that created one.
    pub pods_created: u64,
    /// Every request, oldest first, bounded.
    pub requests: VecDeque<Request>,
    /// Tells watches a change happened (the newest resource version).
    pub changes: watch::Sender<u64>,
    /// Wakes the scheduler and kubelet.
    pub wake: Arc<Notify>,
    /// The next uid's number.
    uids: u64,
    /// The uids' random part, one per cluster.
    uid_salt: u64,
}

impl State {
    /// An empty cluster whose uids carry `uid_salt`.
    pub(crate) fn new(uid_salt: u64, wake: Arc<Notify>) -> Self {
        Self {
            rv: 1,
            pods: BTreeMap::new(),
            secrets: BTreeMap::new(),
            nodes: BTreeMap::new(),
            history: VecDeque::new(),
            served: BTreeMap::new(),
            failing_images: BTreeSet::new(),
            pods_created: 0,
            requests: VecDeque::new(),
            changes: watch::Sender::new(1),
            wake,
            uids: 0,
            uid_salt,
        }
    }

    /// The newest resource version.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resource version a watch may start from without 410.
    pub(crate) fn oldest_watchable(&self) -> u64 {
        self.history.front().map_or(self.rv, |event| event.rv - 1)
    }

    /// The changes after `rv`, oldest first.
    pub(crate) fn events_after(&self, rv: u64) -> Vec<Event> {
        let start = self.history.partition_point(|event| event.rv <= rv);
        self.history.range(start..).cloned().collect()
    }

    /// Logs a request.
    pub(crate) fn log_request(&mut self, request: Request) {
        if self.requests.len() == REQUEST_LOG {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    /// Fills a new object's `uid`, `creationTimestamp` and a name from `generateName`.
    pub(crate) fn stamp_new(&mut self, meta: &mut ObjectMeta) {
        self.uids += 1;
        let (salt, n) = (self.uid_salt, self.uids);
        meta.uid = Some(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            salt >> 32,
            (salt >> 16) & 0xffff,
            salt & 0xfff,
            (n >> 48) & 0xfff,
            n & 0xffff_ffff_ffff
        ));
        meta.creation_timestamp = Some(now());
        if meta.name.is_none()
            && let Some(prefix) = &meta.generate_name
        {
            meta.name = Some(format!(
                "{prefix}{:05x}",
                (salt ^ n.wrapping_mul(0x9e37_79b9)) & 0xfffff
            ));
        }
    }

    /// Takes the next resource version for a change to `meta`'s object and records the
    /// change for watches.
    fn record<T: Serialize>(
        &mut self,
        kind: Kind,
        change: &'static str,
        object: &mut T,
        meta: fn(&mut T) -> &mut ObjectMeta,
    ) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        meta(object).resource_version = Some(rv.to_string());
        let meta = meta(object);
        let key = (
            kind.name(),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let served = Arc::new(serde_json::to_value(&*object).unwrap_or(Value::Null));
        let previous = if change == "DELETED" {
            self.served.remove(&key)
        } else {
            self.served.insert(key, served.clone())
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Event {
            rv,
            kind,
            change,
            object: served,
            previous: previous.filter(|_| change == "MODIFIED"),
        });
        self.changes.send_replace(rv);
        self.wake.notify_one();
        rv
    }

    /// Records a change of the pod at `key` (which must exist).
    pub(crate) fn pod_changed(&mut self, key: &Key, change: &'static str) {
        let Some(mut entry) = self.pods.remove(key) else {
            return;
        };
        self.record(Kind::Pod, change, &mut entry.pod, |pod| &mut pod.metadata);
        if change != "DELETED" {
            self.pods.insert(key.clone(), entry);
        }
    }

    /// Records a change of the secret at `key` (which must exist).
    pub(crate) fn secret_changed(&mut self, key: &Key, change: &'static str) {
        let Some(mut secret) = self.secrets.remove(key) else {
            return;
        };
        self.record(Kind::Secret, change, &mut secret, |secret| {
            &mut secret.metadata
        });
        if change != "DELETED" {
            self.secrets.insert(key.clone(), secret);
        }
    }

    /// Records a change of the node `name` (which must exist).
    pub(crate) fn node_changed(&mut self, name: &str, change: &'static str) {
        let Some(mut node) = self.nodes.remove(name) else {
            return;
        };
        self.record(Kind::Node, change, &mut node, |node| &mut node.metadata);
        self.nodes.insert(name.to_owned(), node);
    }

    /// Removes a pod (a DELETED event), then the secrets its uid owns (garbage
    /// collection, after the pod is gone).
    pub(crate) fn remove_pod(&mut self, key: &Key) {
        let Some(uid) = self
            .pods
            .get(key)
            .and_then(|entry| entry.pod.metadata.uid.clone())
        else {
            return;
        };
        self.pod_changed(key, "DELETED");
        let owned: Vec<Key> = self
            .secrets
            .iter()
            .filter(|(_, secret)| {
                secret
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|owner| owner.uid == uid)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in owned {
            self.secret_changed(&key, "DELETED");
        }
    }
}

/// The lock on the state; a panic while holding it leaves the state as it was, so a
/// poisoned lock is taken over.
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Now, as an object's timestamp (whole seconds, as the API server keeps them).
pub(crate) fn now() -> Time {
    let text = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Time(text.parse().unwrap_or_default())
}

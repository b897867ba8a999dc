//! The queue of runs waiting for admission, indexed for the controller.
//!
//! Runs are kept in classes: runs of one tenant, at one priority, asking for the
//! same groups. Every run of a class gets the same verdict until something
//! changes, so a controller cycle looks at each class once, plus once per run
//! it admits: its cost follows the number of classes and admissions, not the
//! length of the queue.
//!
//! The most a run may cost is kept per run, not in its class: bounds follow
//! each pipeline's steps and timeouts and differ from run to run, and in the
//! class key they would split the queue into as many classes as runs. The controller
//! checks a budget per run, after its class's verdict (see `controller.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::clock::Timestamp;
use crate::ids::RunId;
use crate::money::Money;
use crate::request::GroupRequest;
use crate::resources::Resources;
use crate::selector::PoolSelector;

/// A run waiting for admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRun {
    pub id: RunId,
    pub tenant: String,
    pub priority: i32,
    pub enqueued_at: Timestamp,
    /// The groups to admit: all of the run's, or, for a run that lost a worker,
    /// the groups that lost their allocation.
    pub groups: Vec<GroupRequest>,
    /// The run was admitted before and holds its other groups: it goes first
    /// and does not count against the tenant's runs again.
    pub readmit: bool,
    /// The most the run may cost: its groups at the dearest pool each may land
    /// on, for the longest the run may take
    /// ([`crate::pipeline::longest_run_ms`]). A hard budget admits on it.
    pub bound: Money,
}

/// Identifies a class within one [`RunQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey {
    readmit: bool,
    priority: i32,
    tenant: String,
    shape: Vec<(u32, PoolSelector, Resources)>,
}

/// Runs that get the same verdict: same tenant, priority and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub id: ClassId,
    pub tenant: String,
    pub priority: i32,
    pub readmit: bool,
    pub groups: Vec<GroupRequest>,
    /// Its runs, oldest first.
    pub runs: BTreeSet<(Timestamp, RunId)>,
    key: ClassKey,
    /// A hash of `key`, taken once.
    fingerprint: u64,
    /// The first of `runs`, kept as they change: a cycle reads it of every
    /// class.
    head: Option<(Timestamp, RunId)>,
}

impl Class {
    /// A fingerprint of what makes the class: its tenant, level and groups.
    /// Class ids are not reused within a queue, but a queue built afresh
    /// numbers its classes from zero again: the fingerprint tells them apart.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Its oldest run.
    pub fn head(&self) -> Option<(Timestamp, RunId)> {
        self.head
    }

    pub fn total(&self) -> Resources {
        self.groups
            .iter()
            .fold(Resources::ZERO, |acc, g| acc.saturating_add(&g.resources))
    }
}

/// Where a queued run is, and the most it may cost.
#[derive(Debug, Clone, Copy)]
struct Entry {
    class: ClassId,
    enqueued_at: Timestamp,
    bound: Money,
}

/// Admission level: readmissions first, then by priority, higher first.
pub type Level = (bool, i32);

#[derive(Debug, Clone, Default)]
pub struct RunQueue {
    runs: HashMap<RunId, Entry>,
    classes: BTreeMap<ClassId, Class>,
    keys: HashMap<ClassKey, ClassId>,
    /// Per level, highest first: per tenant, its classes.
    levels: BTreeMap<std::cmp::Reverse<Level>, BTreeMap<String, BTreeSet<ClassId>>>,
    next: u64,
}

impl RunQueue {
    pub fn new() -> RunQueue {
        RunQueue::default()
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn contains(&self, run: RunId) -> bool {
        self.runs.contains_key(&run)
    }

    /// Adds a run, replacing what was queued under its id.
    pub fn insert(&mut self, run: QueuedRun) {
        self.remove(run.id);
        let key = ClassKey {
            readmit: run.readmit,
            priority: run.priority,
            tenant: run.tenant.clone(),
            shape: run
                .groups
                .iter()
                .map(|g| (g.index, g.selector.clone(), g.resources))
                .collect(),
        };
        let id = match self.keys.get(&key) {
            Some(id) => *id,
            None => {
                let id = ClassId(self.next);
                self.next += 1;
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                self.keys.insert(key.clone(), id);
                self.classes.insert(
                    id,
                    Class {
                        id,
                        tenant: run.tenant.clone(),
                        priority: run.priority,
                        readmit: run.readmit,
                        groups: run.groups.clone(),
                        runs: BTreeSet::new(),
                        key,
                        fingerprint: h.finish(),
                        head: None,
                    },
                );
                self.levels
                    .entry(std::cmp::Reverse((run.readmit, run.priority)))
                    .or_default()
                    .entry(run.tenant.clone())
                    .or_default()
                    .insert(id);
                id
            }
        };
        if let Some(class) = self.classes.get_mut(&id) {
            class.runs.insert((run.enqueued_at, run.id));
            class.head = class.runs.first().copied();
        }
        self.runs.insert(
            run.id,
            Entry {
                class: id,
                enqueued_at: run.enqueued_at,
                bound: run.bound,
            },
        );
    }

    /// Removes a run; a no-op when it is not queued.
    pub fn remove(&mut self, run: RunId) {
        let Some(Entry {
            class: id,
            enqueued_at: at,
            ..
        }) = self.runs.remove(&run)
        else {
            return;
        };
        let Some(class) = self.classes.get_mut(&id) else {
            return;
        };
        class.runs.remove(&(at, run));
        class.head = class.runs.first().copied();
        if !class.runs.is_empty() {
            return;
        }
        let Some(class) = self.classes.remove(&id) else {
            return;
        };
        self.keys.remove(&class.key);
        let level = std::cmp::Reverse((class.readmit, class.priority));
        if let Some(tenants) = self.levels.get_mut(&level) {
            if let Some(set) = tenants.get_mut(&class.tenant) {
                set.remove(&id);
                if set.is_empty() {
                    tenants.remove(&class.tenant);
                }
            }
            if tenants.is_empty() {
                self.levels.remove(&level);
            }
        }
    }

    pub fn class_of(&self, run: RunId) -> Option<&Class> {
        self.runs.get(&run).and_then(|e| self.classes.get(&e.class))
    }

    pub fn class(&self, id: ClassId) -> Option<&Class> {
        self.classes.get(&id)
    }

    pub fn classes(&self) -> impl Iterator<Item = &Class> {
        self.classes.values()
    }

    /// When a queued run was enqueued.
    pub fn enqueued_at(&self, run: RunId) -> Option<Timestamp> {
        self.runs.get(&run).map(|e| e.enqueued_at)
    }

    /// The most a queued run may cost (zero when it is not queued).
    pub fn bound(&self, run: RunId) -> Money {
        self.runs.get(&run).map_or(Money::ZERO, |e| e.bound)
    }

    /// Levels, highest first, each with its tenants' classes.
    pub fn levels(&self) -> impl Iterator<Item = (Level, &BTreeMap<String, BTreeSet<ClassId>>)> {
        self.levels.iter().map(|(l, t)| (l.0, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, at: i64) -> QueuedRun {
        QueuedRun {
            id: RunId(id),
            tenant: "a".into(),
            priority: 0,
            enqueued_at: Timestamp(at),
            groups: Vec::new(),
            readmit: false,
            bound: Money::ZERO,
        }
    }

    #[test]
    fn a_class_keeps_its_oldest_run_as_runs_come_and_go() {
        let mut queue = RunQueue::new();
        queue.insert(run(1, 20));
        queue.insert(run(2, 10));
        queue.insert(run(3, 30));
        let head = |q: &RunQueue| q.class_of(RunId(3)).and_then(Class::head);
        assert_eq!(head(&queue), Some((Timestamp(10), RunId(2))));
        queue.remove(RunId(2));
        assert_eq!(head(&queue), Some((Timestamp(20), RunId(1))));
        queue.remove(RunId(1));
        assert_eq!(head(&queue), Some((Timestamp(30), RunId(3))));
        // Queued again, earlier: it is the head again.
        queue.insert(run(1, 5));
        assert_eq!(head(&queue), Some((Timestamp(5), RunId(1))));
    }
}

//! The committed read model: an immutable view of what readers need (pools,
//! tenants and what they use, agents, live runs, the queue), published after
//! each commit, so that readers never take the engine's lock and never see a
//! write the store does not have.
//!
//! A view is built when a batch is staged, once its writes are applied and
//! before the next batch's are: it is then exactly the state the store will
//! hold once that batch commits, and it is published only when the committer
//! says so. Live runs and the queue are kept in persistent maps (`imbl`)
//! beside the state, so a view copies pointers, not runs: building one costs
//! O(pools + tenants + agents + open allocations).
//!
//! Queue positions need the whole admission order: they are computed from a
//! view apart from it (`QueueModel`), on the request path only for a small
//! queue, in the background otherwise, and say which batch they are as of.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use corral_core::clock::Timestamp;
use corral_core::controller::{Reason, Reservation, Snapshot, admission_order};
use corral_core::ids::RunId;
use corral_core::queue::{ClassId, QueuedRun, RunQueue};
use corral_core::resources::Resources;
use corral_store::{PoolRecord, RunRecord, TenantRecord};
use tokio::sync::watch;

use crate::background::{Job, JobError, Progress};
use crate::state::{QueuePlace, State};

/// A queue at most this long gets its positions computed on the request path
/// when they are out of date; a longer one waits for the background task.
pub const SYNC_QUEUE_LIMIT: usize = 2_000;

/// The least time between two background computations of the positions: a
/// long queue's admission order costs a good part of a core, and positions a
/// second old serve a reader as well.
pub const POSITIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A queued run as the queue holds it, with the class it is in there (the
/// key of its waiting reason).
#[derive(Debug, Clone)]
pub struct Queued {
    pub run: QueuedRun,
    pub class: ClassId,
}

/// What the state keeps for views, beside what it keeps for the engine: the
/// live runs' records and the queue, in maps a view shares rather than copies.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    pub runs: imbl::OrdMap<RunId, Arc<RunRecord>>,
    pub queued: imbl::OrdMap<RunId, Arc<Queued>>,
}

/// The state as of one staged batch: what readers see once it is committed.
#[derive(Debug, Clone)]
pub struct View {
    /// The batch it is as of.
    pub seq: u64,
    /// When it was built: usage and budgets are priced as of then.
    pub at: Timestamp,
    pub pools: BTreeMap<String, PoolRecord>,
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Pools and tenants with what they use (the controller's snapshot).
    pub snapshot: Snapshot,
    /// Each pool's live agents with what they hold.
    pub agents: BTreeMap<String, Vec<corral_api::AgentView>>,
    /// The room each pool holds for starving runs.
    pub reserved: BTreeMap<String, Resources>,
    /// Live runs.
    pub runs: imbl::OrdMap<RunId, Arc<RunRecord>>,
    /// Runs waiting for admission.
    pub queued: imbl::OrdMap<RunId, Arc<Queued>>,
    /// Why each class waits, as of the last cycle (keys: `Queued::class`).
    pub waiting: Arc<BTreeMap<ClassId, Arc<Reason>>>,
    pub reservations: Arc<Vec<Reservation>>,
}

impl View {
    /// The view of `state` as it is now.
    pub fn of(state: &State, now: Timestamp) -> View {
        let snapshot = state.snapshot(now);
        let agents = state
            .pools
            .keys()
            .map(|name| (name.clone(), state.agents_of(name)))
            .collect();
        let reserved = state
            .pools
            .keys()
            .map(|name| (name.clone(), state.reserved_on(name, &snapshot)))
            .collect();
        View {
            seq: state.seq,
            at: now,
            pools: state.pools.clone(),
            tenants: state.tenants.clone(),
            snapshot,
            agents,
            reserved,
            runs: state.mirror.runs.clone(),
            queued: state.mirror.queued.clone(),
            waiting: state.waiting.clone(),
            reservations: state.reservations.clone(),
        }
    }

    /// A live run's record.
    pub fn run(&self, id: RunId) -> Option<&RunRecord> {
        self.runs.get(&id).map(|r| r.as_ref())
    }

    /// Whether the queue's positions computed from `other` hold for this view
    /// too: same queue, same reasons and reservations, same use by tenants.
    fn same_queue(&self, other: &View) -> bool {
        self.queued.ptr_eq(&other.queued)
            && Arc::ptr_eq(&self.waiting, &other.waiting)
            && Arc::ptr_eq(&self.reservations, &other.reservations)
            && self
                .snapshot
                .tenants
                .iter()
                .map(|(n, t)| (n, t.used))
                .eq(other.snapshot.tenants.iter().map(|(n, t)| (n, t.used)))
    }
}

/// A run's place in a [`QueueModel`].
#[derive(Debug, Clone, Copy)]
struct Place {
    index: usize,
    tenant_position: u64,
}

/// The queue of one view in admission order: every waiting run's position,
/// and the classes with their reasons, as of batch `seq`.
#[derive(Debug)]
pub struct QueueModel {
    /// The view it was computed from.
    source: Arc<View>,
    queue: RunQueue,
    /// Why each class of `queue` waits.
    waiting: BTreeMap<ClassId, Arc<Reason>>,
    order: Vec<RunId>,
    places: HashMap<RunId, Place>,
    /// Per tenant, the indices in `order` of its runs.
    by_tenant: BTreeMap<String, Vec<usize>>,
}

impl QueueModel {
    /// Computes the admission order of `view`'s queue.
    pub fn of(view: Arc<View>) -> QueueModel {
        // The view's runs are put in a queue of their own, whose classes are
        // numbered anew: reasons follow their class there.
        let mut queue = RunQueue::new();
        let mut renamed: HashMap<ClassId, ClassId> = HashMap::new();
        for q in view.queued.values() {
            queue.insert(q.run.clone());
            if let Some(class) = queue.class_of(q.run.id) {
                renamed.insert(q.class, class.id);
            }
        }
        let waiting = view
            .waiting
            .iter()
            .filter_map(|(c, r)| Some((*renamed.get(c)?, r.clone())))
            .collect();
        let order = admission_order(&view.snapshot, &queue);
        let mut places = HashMap::with_capacity(order.len());
        let mut by_tenant: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, run) in order.iter().enumerate() {
            let Some(class) = queue.class_of(*run) else {
                continue;
            };
            let mine = by_tenant.entry(class.tenant.clone()).or_default();
            mine.push(index);
            places.insert(
                *run,
                Place {
                    index,
                    tenant_position: mine.len() as u64,
                },
            );
        }
        QueueModel {
            source: view,
            queue,
            waiting,
            order,
            places,
            by_tenant,
        }
    }

    /// The batch the positions are as of.
    pub fn seq(&self) -> u64 {
        self.source.seq
    }

    /// The queue (classes and their runs) the positions are of.
    pub fn queue(&self) -> &RunQueue {
        &self.queue
    }

    /// Why each class of [`QueueModel::queue`] waits.
    pub fn waiting(&self) -> &BTreeMap<ClassId, Arc<Reason>> {
        &self.waiting
    }

    /// How many runs wait (of `tenant`'s, when given).
    pub fn len(&self, tenant: Option<&str>) -> usize {
        match tenant {
            None => self.order.len(),
            Some(t) => self.by_tenant.get(t).map_or(0, Vec::len),
        }
    }

    /// Run `id`'s place, if it waits.
    pub fn place(&self, id: RunId, now: Timestamp) -> Option<QueuePlace> {
        let place = self.places.get(&id)?;
        self.place_at(place.index, now)
    }

    fn place_at(&self, index: usize, now: Timestamp) -> Option<QueuePlace> {
        let run = *self.order.get(index)?;
        let place = self.places.get(&run)?;
        let class = self.queue.class_of(run)?;
        Some(QueuePlace {
            run,
            position: index as u64 + 1,
            tenant_position: place.tenant_position,
            waited_ms: now.millis_since(self.queue.enqueued_at(run)?),
            regroup: class.readmit,
            reason: self.waiting.get(&class.id).map(|r| Reason::clone(r)),
            reserved: self
                .source
                .reservations
                .iter()
                .find(|r| r.run == run)
                .map(|r| r.pools.clone()),
            as_of: self.source.seq,
        })
    }

    /// The places after position `after` (of the whole queue), of `tenant`'s
    /// runs when given, in admission order: at most `limit`.
    pub fn page(
        &self,
        tenant: Option<&str>,
        after: u64,
        limit: usize,
        now: Timestamp,
    ) -> Vec<QueuePlace> {
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        match tenant {
            None => (start..self.order.len())
                .take(limit)
                .filter_map(|i| self.place_at(i, now))
                .collect(),
            Some(t) => {
                let mine = self.by_tenant.get(t).map_or(&[][..], Vec::as_slice);
                let first = mine.partition_point(|&i| i < start);
                mine[first..]
                    .iter()
                    .take(limit)
                    .filter_map(|&i| self.place_at(i, now))
                    .collect()
            }
        }
    }

    /// Every place, in admission order.
    pub fn places(&self, now: Timestamp) -> Vec<QueuePlace> {
        (0..self.order.len())
            .filter_map(|i| self.place_at(i, now))
            .collect()
    }
}

/// Views staged but not committed, the one published, and the queue's
/// positions: what the engine hands to readers.
pub struct ReadModel {
    current: ArcSwap<View>,
    /// Views of staged batches, oldest first, each published once its batch
    /// is committed.
    staged: Mutex<VecDeque<Arc<View>>>,
    /// The batch of the published view: what `/events` and the positions
    /// task wait on.
    published: watch::Sender<u64>,
    positions: ArcSwap<QueueModel>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ReadModel {
    /// A read model whose first view is `view` (of a state as loaded from the store).
    pub fn new(view: View) -> ReadModel {
        let view = Arc::new(view);
        let seq = view.seq;
        ReadModel {
            positions: ArcSwap::from_pointee(QueueModel::of(view.clone())),
            current: ArcSwap::new(view),
            staged: Mutex::new(VecDeque::new()),
            published: watch::Sender::new(seq),
        }
    }

    /// The last committed view.
    pub fn view(&self) -> Arc<View> {
        self.current.load_full()
    }

    /// Waits on the batch of the published view.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Keeps the view of a staged batch until it is committed; one of a batch
    /// already committed (the state changed without a write: reasons of a
    /// new cycle) is published at once.
    pub fn staged(&self, view: View) {
        let view = Arc::new(view);
        // Publishing happens under this lock, so a view is never left staged
        // behind one of a later batch already published.
        let mut staged = lock(&self.staged);
        if view.seq <= *self.published.borrow() {
            self.publish(view);
            return;
        }
        if staged.back().is_some_and(|v| v.seq == view.seq) {
            staged.pop_back();
        }
        staged.push_back(view);
    }

    /// Whether a view of the state has been staged or published since it
    /// last changed without a write (reasons and reservations of a cycle).
    pub fn is_current(&self, state: &State) -> bool {
        let staged = lock(&self.staged);
        let last = staged.back().cloned().unwrap_or_else(|| self.view());
        last.seq == state.seq
            && Arc::ptr_eq(&last.waiting, &state.waiting)
            && Arc::ptr_eq(&last.reservations, &state.reservations)
    }

    /// Publishes the view of the last batch up to `seq`, now committed.
    pub fn committed(&self, seq: u64) {
        let mut staged = lock(&self.staged);
        let mut latest = None;
        while staged.front().is_some_and(|v| v.seq <= seq) {
            latest = staged.pop_front();
        }
        if let Some(view) = latest {
            self.publish(view);
        }
    }

    /// Forgets the views of batches that failed, and publishes `view`, of the
    /// state reloaded from the store.
    pub fn reloaded(&self, view: View) {
        let mut staged = lock(&self.staged);
        staged.clear();
        self.publish(Arc::new(view));
    }

    fn publish(&self, view: Arc<View>) {
        let seq = view.seq;
        self.current.store(view);
        self.published.send_replace(seq);
    }

    /// The queue's positions as of the newest view they were computed for:
    /// computed now for a small queue whose positions are out of date.
    pub fn positions(&self) -> Arc<QueueModel> {
        let positions = self.positions.load_full();
        let view = self.view();
        if positions.source.same_queue(&view) || view.queued.len() > SYNC_QUEUE_LIMIT {
            return positions;
        }
        self.refresh_positions(view)
    }

    /// Computes the positions of `view`'s queue, unless those kept are of a
    /// newer view, and keeps them.
    fn refresh_positions(&self, view: Arc<View>) -> Arc<QueueModel> {
        let fresh = Arc::new(QueueModel::of(view));
        let kept = self.positions.rcu(|old| {
            if old.source.seq > fresh.source.seq {
                old.clone()
            } else {
                fresh.clone()
            }
        });
        if kept.source.seq > fresh.source.seq {
            kept
        } else {
            fresh
        }
    }

    /// Whether the positions kept are out of date for the published view.
    fn positions_stale(&self) -> bool {
        !self.positions.load().source.same_queue(&self.view())
    }
}

/// The background worker that recomputes the queue's positions off the
/// request path whenever a committed view changes the queue, at most every
/// [`POSITIONS_EVERY`].
pub struct QueuePositions {
    model: Arc<ReadModel>,
    published: watch::Receiver<u64>,
    /// The last round computed positions: the next waits a while first.
    computed: bool,
}

impl QueuePositions {
    pub fn new(model: Arc<ReadModel>) -> QueuePositions {
        QueuePositions {
            published: model.subscribe(),
            model,
            computed: false,
        }
    }
}

impl Job for QueuePositions {
    async fn work(&mut self) -> Result<Progress, JobError> {
        self.computed = false;
        if self.model.positions_stale() {
            let view = self.model.view();
            let model = self.model.clone();
            tokio::task::spawn_blocking(move || model.refresh_positions(view)).await?;
            self.computed = true;
        }
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        if self.computed {
            tokio::time::sleep(POSITIONS_EVERY).await;
            if self.model.positions_stale() {
                return;
            }
        }
        if self.published.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

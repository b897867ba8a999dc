//! The provider watch: what a provider that watches its workers (a
//! Kubernetes cluster's pods) says of them, read every second off the lock.
//! A worker request whose worker is not up says why in its run's reason (`pod
//! box-7-0: 0/3 nodes are available: 3 Insufficient cpu.`); one whose worker
//! will never come up (it ended, its image cannot be pulled) is replaced at
//! once, by the rule of a request past its deadline; and a worker that is
//! neither asked for nor registered (its allocation ended, its agent retired)
//! is deleted.

use std::time::Instant;

use corral_core::controller::{Reason, ReasonCode};
use corral_core::pool::Provider as PoolProvider;

use super::provision::Order;
use super::*;
use crate::background::{Job, JobError, Progress};
use corral_store::WorkerRequestRecord;

use crate::provider::{Existing, Problem};

/// How often the watching providers are read.
const EVERY: Duration = Duration::from_secs(1);
/// The longest a provider's list may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// A worker asked to be deleted is asked again after this, if it is still
/// listed (a pod's grace period is 30 s by default).
const DELETE_AGAIN_AFTER: Duration = Duration::from_secs(60);

impl Engine {
    /// Sets what a watching provider of `kind` lists against the requests and
    /// workers of its pools: the requests' problems (and their runs'
    /// reasons), replacements of requests whose workers will never come up,
    /// and the workers nobody needs, which are returned to be deleted.
    pub(super) async fn observe(
        &self,
        kind: PoolProvider,
        existing: &[Existing],
    ) -> Result<Vec<Existing>> {
        let mut state = self.state.lock().await;
        let now = self.now();
        let of_kind = |state: &State, pool: &str| {
            state
                .pools
                .get(pool)
                .is_some_and(|p| p.spec.provider == kind)
        };
        let listed: BTreeMap<&str, &Existing> =
            existing.iter().map(|e| (e.name.as_str(), e)).collect();
        let timeout = ms(self.config.spawn_timeout);
        // A worker that waits with a reason that may pass (a pod not
        // scheduled yet) keeps its request, and its credential, alive.
        let renew = |r: &WorkerRequestRecord, problem: &Option<Problem>| {
            problem.as_ref().is_some_and(|p| !p.fatal) && r.deadline.millis_since(now) < timeout / 2
        };
        let changed: Vec<(WorkerRequestRecord, Option<Problem>)> = state
            .unbound
            .requests()
            .filter(|r| of_kind(&state, &r.pool))
            .filter_map(|r| {
                let problem = listed.get(r.name.as_str()).and_then(|e| e.problem.clone());
                (state.unbound.problem(&r.name) != problem.as_ref() || renew(r, &problem))
                    .then(|| (r.clone(), problem))
            })
            .collect();
        let mut writes = Vec::new();
        let mut replace = false;
        // The credentials of requests given a new deadline, good until then
        // once that is committed.
        let mut regrant = Vec::new();
        for (r, problem) in changed {
            let reason = problem
                .as_ref()
                .map(|p| Reason::simple(ReasonCode::WorkerPending, p.message.clone()));
            if let Some(p) = &problem {
                tracing::info!(worker = %r.name, fatal = p.fatal, "the provider says the worker is not up: {}", p.message);
            }
            let deadline = match &problem {
                // It will not come: the request is past its time.
                Some(p) if p.fatal => Some(now),
                Some(_) if !renew(&r, &problem) => None,
                // It waits with a reason that may pass, or is going again
                // after waiting (scheduled at last): a whole deadline from now.
                _ => Some(now.plus_millis(timeout)),
            };
            if let Some(deadline) = deadline.filter(|d| *d != r.deadline) {
                replace |= deadline <= now;
                if deadline > now {
                    regrant.push((
                        r.spawn_hash.clone(),
                        SpawnGrant {
                            pool: r.pool.clone(),
                            name: r.name.clone(),
                            expires_at: deadline,
                        },
                    ));
                }
                writes.push(Write::PutWorkerRequest(WorkerRequestRecord {
                    deadline,
                    updated_at: now,
                    ..r.clone()
                }));
            }
            state.unbound.set_problem(&r.name, problem);
            if let Some(mut update) = RunUpdate::take(&mut state, r.run_id, now) {
                update.set_reason(reason);
                writes.append(&mut update.done(&mut state));
            }
        }
        // Nobody needs a worker with neither a request nor a live worker of
        // its name.
        let known: BTreeSet<&str> = state
            .unbound
            .requests()
            .filter(|r| of_kind(&state, &r.pool))
            .map(|r| r.name.as_str())
            .chain(
                state
                    .workers
                    .values()
                    .filter(|w| of_kind(&state, &w.record.pool))
                    .map(|w| w.record.name.as_str()),
            )
            .collect();
        let unneeded: Vec<Existing> = existing
            .iter()
            .filter(|e| !known.contains(e.name.as_str()))
            .cloned()
            .collect();
        if writes.is_empty() {
            return Ok(unneeded);
        }
        let mut fx = Effects::default();
        self.stage(&mut state, writes, &mut fx);
        if replace {
            self.provision(&mut state, &mut fx);
        }
        drop(state);
        self.finish(fx).await?;
        for (hash, grant) in regrant {
            self.credentials.grant_spawn(hash, grant, now);
        }
        Ok(unneeded)
    }
}

/// The provider-watch worker (a background worker): reads each watching
/// provider every second and acts on what it says.
pub struct ProviderWatch {
    engine: Arc<Engine>,
    /// Workers asked to be deleted, and when: asked again only after a while.
    deleting: BTreeMap<String, Instant>,
}

impl ProviderWatch {
    pub fn new(engine: Arc<Engine>) -> ProviderWatch {
        ProviderWatch {
            engine,
            deleting: BTreeMap::new(),
        }
    }
}

impl Job for ProviderWatch {
    async fn work(&mut self) -> Result<Progress, JobError> {
        let watching: Vec<_> = self
            .engine
            .providers
            .all()
            .filter(|(_, p)| p.provisions() && p.watches())
            .map(|(kind, p)| (kind, p.clone()))
            .collect();
        let mut listed = BTreeSet::new();
        for (kind, provider) in watching {
            let pools = self.engine.pools_of(kind);
            if pools.is_empty() {
                continue;
            }
            let existing = tokio::time::timeout(LIST_TIMEOUT, provider.list(&pools))
                .await
                .map_err(|_| format!("listing the {kind:?} provider's workers took too long"))??;
            listed.extend(existing.iter().map(|e| e.name.clone()));
            let unneeded = self.engine.observe(kind, &existing).await?;
            let mut orders = Vec::new();
            for e in unneeded {
                if self
                    .deleting
                    .get(&e.name)
                    .is_some_and(|at| at.elapsed() < DELETE_AGAIN_AFTER)
                {
                    continue;
                }
                tracing::info!(worker = %e.name, "deleting a worker nobody needs any more");
                self.deleting.insert(e.name.clone(), Instant::now());
                orders.push(Order::Delete {
                    kind,
                    name: e.name,
                    reference: e.reference,
                });
            }
            self.engine.dispatch(orders);
        }
        self.deleting.retain(|name, _| listed.contains(name));
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(EVERY).await;
    }
}

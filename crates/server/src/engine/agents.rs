//! The agent protocol: registration, polls (also the heartbeat), log chunks and
//! reports. Every call after registration is made with the worker's secret.

use corral_core::access::Role;

use corral_api::Confinement;

use super::agent_fields;
use super::*;
use crate::auth::{self, Caller};

/// Whether `caller` may register an agent named `name` into `pool`.
fn check_registration(caller: &Caller, pool: &str, name: &str) -> Result<()> {
    let refuse = |why: String| Err(EngineError::Forbidden(why));
    match caller {
        Caller::Token(p) => match &p.role {
            Role::Admin => Ok(()),
            Role::Agent { pool: own } if own == pool => Ok(()),
            Role::Agent { pool: own } => refuse(format!(
                "token {} registers agents into pool {own}, not {pool}",
                p.name
            )),
            role => refuse(format!(
                "token {} ({role}) cannot register agents; use an agent token of the pool",
                p.name
            )),
        },
        Caller::Spawned { grant, .. } if grant.pool == pool && grant.name == name => Ok(()),
        Caller::Spawned { grant, .. } => refuse(format!(
            "this credential registers the local agent {} into pool {}, not {name} into {pool}",
            grant.name, grant.pool
        )),
        Caller::Worker(id) => refuse(format!(
            "worker {id}'s secret cannot register another agent"
        )),
        Caller::Registering(id) => refuse(format!(
            "this credential was used by worker {id}: it only retries that registration"
        )),
    }
}

/// Whether an agent confining its steps as `confinement` may join `pool`.
fn check_confinement(pool: &PoolSpec, confinement: Option<&Confinement>) -> Result<()> {
    if !pool.require_confinement || confinement.is_some_and(Confinement::is_full) {
        return Ok(());
    }
    let said = confinement.map_or("says nothing of confinement (an older agent)".into(), |c| {
        format!("reports namespaces: {}, cgroup: {}", c.namespaces, c.cgroup)
    });
    Err(EngineError::Forbidden(format!(
        "pool {} requires confinement (require_confinement: true), and this agent {said}; run it as root on a Linux host with cgroups (v1 cpu, memory and pids, or v2 with those controllers delegated)",
        pool.name
    )))
}

/// The lease a poll renews for `heartbeat_timeout`: three quarters of it. The
/// agent counts it from when it sent the poll, the server its timeout from
/// when the poll arrived, so the last quarter is the margin in which a lapsed
/// agent's supervisor kills its steps before the server runs them again.
fn lease_for(heartbeat_timeout: Duration) -> Duration {
    heartbeat_timeout * 3 / 4
}

pub(super) fn not_handed(attempt: AttemptId, worker: WorkerId) -> EngineError {
    EngineError::Forbidden(format!(
        "attempt {attempt} was not handed to worker {worker}"
    ))
}

impl Engine {
    // ---- the agent protocol ----

    /// The lease each poll of an agent renews (see [`lease_for`]).
    pub fn lease(&self) -> Duration {
        lease_for(self.config.heartbeat_timeout)
    }

    /// Registers an agent for `caller` (an agent token of the pool, a spawned
    /// local agent's one-time credential, or an admin) and returns its id and
    /// the secret of its later calls.
    ///
    /// A spawned agent's one-time credential is used up here; until its
    /// worker first polls it only retries this registration (even to a
    /// restarted server), which hands the worker a new secret.
    pub async fn register(
        &self,
        caller: &Caller,
        req: RegisterRequest,
    ) -> Result<(WorkerId, String)> {
        agent_fields::check_register(&req)?;
        if let Some(registered) = self.retried_registration(caller, &req).await? {
            return Ok(registered);
        }
        check_registration(caller, &req.pool, &req.name)?;
        let capacity: Resources = req.capacity.into();
        for (key, value) in &req.labels {
            corral_core::selector::check_label("labels", key, value)?;
        }
        if capacity.cpu_millis == 0 || capacity.memory_mib == 0 {
            return Err(
                FieldError::new("capacity", "cpu and memory must be greater than zero").into(),
            );
        }
        let mut state = self.state.lock().await;
        let Some(pool) = state.pools.get(&req.pool) else {
            return Err(FieldError::new("pool", format!("unknown pool {:?}", req.pool)).into());
        };
        self.check_declared(&pool.spec, &capacity)?;
        check_confinement(&pool.spec, req.confinement.as_ref())?;
        let mut fx = Effects {
            controller: true,
            ..Effects::default()
        };
        // An agent that registers again under its name (from the same work
        // directory) was restarted: what its earlier incarnation ran is lost
        // now, not after the heartbeat timeout. Another live agent under the
        // same name is a mistake, and told so.
        let now = self.now();
        let earlier: BTreeSet<WorkerId> = state
            .workers
            .values()
            .filter(|w| w.record.pool == req.pool && w.record.name == req.name)
            .map(|w| {
                let restarted =
                    w.record.instance.is_none() || w.record.instance == req.instance;
                // Silent as long as a lost worker: its lease has lapsed, and
                // its steps are dead.
                let silent =
                    now.millis_since(w.last_seen) > ms(self.config.heartbeat_timeout);
                if restarted || silent {
                    Ok(w.record.id)
                } else {
                    Err(EngineError::Conflict(format!(
                        "an agent named {} is already live in pool {}; give this one another --name",
                        req.name, req.pool
                    )))
                }
            })
            .collect::<Result<_>>()?;
        // A spawn credential is used up here, under the lock; given back if the
        // registration does not commit, so that the agent's retry can use it.
        let spawn = match caller {
            Caller::Spawned { hash, grant } => match self.credentials.consume_spawn(hash) {
                true => Some((hash.clone(), grant.clone())),
                false => {
                    return Err(EngineError::Forbidden(
                        "this registration credential has been used already".into(),
                    ));
                }
            },
            _ => None,
        };
        self.lose_workers(&mut state, &earlier, "registered again", &mut fx);
        let id = state.next_worker_id();
        // A spawned agent is handed a secret of its own here: the credential
        // it was started with (which a process of its host may have seen)
        // only retries this registration, until the worker first polls.
        let secret = auth::new_worker_secret();
        let secret_hash = auth::hash(&secret);
        let record = WorkerRecord {
            id,
            pool: req.pool,
            name: req.name.clone(),
            capacity,
            labels: req.labels,
            state: WorkerState::Ready,
            registered_at: now,
            updated_at: now,
            instance: req.instance,
            incarnation: req.incarnation,
            secret_hash: Some(secret_hash.clone()),
            confinement: req.confinement.as_ref().map(|c| WorkerConfinement {
                namespaces: c.namespaces,
                cgroup: c.cgroup.clone(),
                user: c.user.clone(),
            }),
            token_name: match caller {
                Caller::Token(p) => Some(p.name.clone()),
                _ => None,
            },
            spawn_hash: spawn.as_ref().map(|(hash, _)| hash.clone()),
        };
        fx.observed.registered(&record.pool);
        let mut writes = vec![Write::PutWorker(record)];
        // A worker created for an allocation's request serves that allocation:
        // only the agent holding that request's credential, not any agent of
        // its name. Its request is done with, in the same batch.
        let requested = match caller {
            Caller::Spawned { grant, .. } => state
                .unbound
                .request(&grant.name)
                .filter(|r| r.pool == grant.pool)
                .cloned(),
            _ => None,
        };
        if let Some(r) = requested {
            writes.push(Write::DeleteWorkerRequest(r.name.clone()));
            if state.unbound.waits(r.run_id, r.group, r.allocation_id)
                && let Some(mut update) = RunUpdate::take(&mut state, r.run_id, now)
            {
                update.bind(r.group, Some(id));
                update.advance(&mut state);
                writes.append(&mut update.done(&mut state));
            }
        }
        self.stage(&mut state, writes, &mut fx);
        self.provision(&mut state, &mut fx);
        drop(state);
        if let Err(e) = self.finish(fx).await {
            if let Some((hash, grant)) = spawn {
                self.credentials.grant_spawn(hash, grant, self.now());
            }
            return Err(e);
        }
        self.credentials.put_worker(id, secret_hash);
        if let Some((hash, _)) = spawn {
            self.credentials.put_registering(hash, id);
        }
        tracing::info!(worker = id.0, name = %req.name, "worker registered");
        Ok((id, secret))
    }

    /// An agent may declare at most its pool's `max_agent` and the server's
    /// `--max-agent`, in each dimension.
    fn check_declared(&self, pool: &PoolSpec, capacity: &Resources) -> Result<()> {
        let server = self.config.max_agent;
        let own = pool
            .max_agent
            .or(Resources::new(u64::MAX, u64::MAX, u64::MAX));
        for d in Dimension::ALL {
            let (limit, whose) = if own.get(d) < server.get(d) {
                (own.get(d), format!("pool {}'s max_agent", pool.name))
            } else {
                (server.get(d), "the server's --max-agent".to_string())
            };
            let limit = limit.min(MAX_QUANTITY);
            if capacity.get(d) > limit {
                return Err(FieldError::new(
                    format!("capacity.{}", d.name()),
                    format!(
                        "{} is more {} than an agent may declare: at most {} ({whose})",
                        d.format(capacity.get(d)),
                        d.name(),
                        d.format(limit)
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// A registration its agent sent again because it did not hear the
    /// answer: the same process (incarnation) under the same pool, name and
    /// instance as a live worker. The worker stays, with what it runs, and
    /// gets a new secret (its agent never heard the first): a token's caller,
    /// or a spawned agent with its used credential before its first poll.
    async fn retried_registration(
        &self,
        caller: &Caller,
        req: &RegisterRequest,
    ) -> Result<Option<(WorkerId, String)>> {
        let Some(incarnation) = &req.incarnation else {
            return Ok(None);
        };
        let mut state = self.state.lock().await;
        let Some(worker) = state
            .workers
            .values()
            .find(|w| {
                w.record.pool == req.pool
                    && w.record.name == req.name
                    && w.record.instance == req.instance
                    && w.record.incarnation.as_ref() == Some(incarnation)
            })
            .map(|w| w.record.clone())
        else {
            return Ok(None);
        };
        match caller {
            Caller::Registering(id) if *id != worker.id => Ok(None),
            Caller::Token(_) | Caller::Registering(_) => {
                if let Caller::Token(_) = caller {
                    check_registration(caller, &req.pool, &req.name)?;
                }
                let secret = auth::new_worker_secret();
                let hash = auth::hash(&secret);
                let mut fx = Effects::default();
                let record = WorkerRecord {
                    secret_hash: Some(hash.clone()),
                    updated_at: self.now(),
                    ..worker
                };
                self.stage(&mut state, vec![Write::PutWorker(record)], &mut fx);
                drop(state);
                self.finish(fx).await?;
                self.credentials.forget_worker(worker.id);
                self.credentials.put_worker(worker.id, hash);
                tracing::info!(worker = worker.id.0, name = %req.name, "registration retried; the worker keeps its work");
                Ok(Some((worker.id, secret)))
            }
            _ => Ok(None),
        }
    }

    /// Answers a worker's poll: its new assignments, the attempts it must kill,
    /// or that it should exit. Holds the poll open while there is nothing to say.
    pub async fn poll(&self, worker: WorkerId, req: PollRequest) -> Result<PollResponse> {
        agent_fields::check_poll(&req)?;
        // A held poll renews the lease only when answered: keep it well
        // inside the lease, so the next poll's answer comes before it lapses.
        let lease = self.lease();
        let wait = Duration::from_millis(req.wait_ms)
            .min(self.config.max_poll_wait)
            .min(lease / 3);
        let start = tokio::time::Instant::now();
        let deadline = start + wait;
        // How long a poll waits for the lock, however short its own wait.
        let lock_by = deadline.max(start + lease / 3);
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        self.heartbeats.beat(worker, self.now());
        loop {
            let wake = {
                // The lock is held long only by the committer reloading the
                // state from a failing store: the poll, recorded above, then
                // renews the lease and says nothing else. A worker lost
                // already has no step left to run under it (its lease lapsed
                // before it was lost), and gets no new one.
                let Ok(mut state) = tokio::time::timeout_at(lock_by, self.state.lock()).await
                else {
                    return Ok(PollResponse {
                        lease_ms,
                        ..PollResponse::default()
                    });
                };
                let now = self.now();
                let Some(live) = state.workers.get_mut(&worker) else {
                    // Told to exit only once its removal is committed.
                    if let Some(&seq) = state.retiring.get(&worker)
                        && seq > self.commits.settled()
                    {
                        drop(state);
                        let _ = self.commits.settle(seq).await;
                        continue;
                    }
                    // Its secret is no use any more: a static agent registers again.
                    self.credentials.forget_worker(worker);
                    return Ok(PollResponse {
                        shutdown: true,
                        cancel: req.running.clone(),
                        ..PollResponse::default()
                    });
                };
                live.last_seen = now;
                if !live.polled {
                    // Its spawn credential no longer registers it again.
                    self.credentials.end_registering(worker);
                }
                live.polled = true;
                let wake = live.wake.clone();
                let mut response = self.take_assignments(&mut state, worker, &req);
                response.lease_ms = lease_ms;
                if !response.assignments.is_empty()
                    || !response.cancel.is_empty()
                    || tokio::time::Instant::now() >= deadline
                {
                    return Ok(response);
                }
                wake
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn take_assignments(
        &self,
        state: &mut State,
        worker: WorkerId,
        req: &PollRequest,
    ) -> PollResponse {
        let now = self.now();
        let redeliver_after = ms(self.config.max_poll_wait) * 2;
        // Only what is committed is handed out or cancelled.
        let settled = self.commits.settled();
        state.prune_settled(settled);
        let mut assignments = Vec::new();
        let mut delivered = Vec::new();
        // Only this worker's running attempts: not the queue, nor the other
        // attempts of the runs they belong to.
        let running = state.running.get(&worker).into_iter().flatten();
        let live = running.filter_map(|id| {
            let run = state.runs.get(state.attempt_runs.get(id)?)?;
            Some((run, run.attempt(*id)?))
        });
        // Running attempts the worker does not report as running: new ones, and
        // any whose answer was lost (the server died, or the poll timed out).
        for (run, attempt) in live.filter(|(run, a)| {
            run.allocations.iter().any(|a| a.worker_id == Some(worker))
                && a.state == AttemptState::Running
                && !req.running.contains(&a.id.0)
                && !state.unsettled.contains_key(&a.id)
                && state
                    .delivered
                    .get(&a.id)
                    .is_none_or(|at| now.millis_since(*at) > redeliver_after)
        }) {
            let step = &run.record.spec.steps[attempt.step_idx as usize];
            let mut env = step.env.clone();
            env.extend(run.record.spec.matrix.env());
            env.insert("CORRAL_RUN_ID".into(), run.record.id.to_string());
            env.insert("CORRAL_PIPELINE".into(), run.record.pipeline.clone());
            env.insert("CORRAL_TENANT".into(), run.record.tenant.clone());
            env.insert("CORRAL_STEP".into(), step.name.clone());
            env.insert("CORRAL_ATTEMPT".into(), attempt.number.to_string());
            assignments.push(Assignment {
                attempt_id: attempt.id.0,
                run_id: run.record.id.0,
                step: step.name.clone(),
                command: step.run.clone(),
                env,
                timeout_secs: Some(self.config.limits.step_timeout_secs(step.timeout)),
                workspace: format!("run-{}", run.record.id),
                max_output_bytes: Some(self.config.output.max_output_bytes),
                resources: Some(step.resources().into()),
            });
            delivered.push(attempt.id);
        }
        let cancel: Vec<i64> = req
            .running
            .iter()
            .copied()
            .filter(|&id| {
                let live = state
                    .attempt_runs
                    .get(&AttemptId(id))
                    .and_then(|r| state.runs.get(r))
                    .and_then(|r| r.attempt(AttemptId(id)));
                !live.is_some_and(|a| !a.state.is_terminal() && a.worker_id == worker)
                    && !state.unsettled.contains_key(&AttemptId(id))
            })
            .collect();
        for id in delivered {
            state.delivered.insert(id, now);
        }
        PollResponse {
            assignments,
            cancel,
            shutdown: false,
            lease_ms: 0,
        }
    }

    /// Records how an attempt ended and moves its run forward. Reporting an
    /// attempt that has already ended changes nothing.
    pub async fn report(
        &self,
        worker: WorkerId,
        attempt_id: AttemptId,
        req: ReportRequest,
    ) -> Result<()> {
        agent_fields::check_report(&req)?;
        let outcome = match req.outcome.as_str() {
            "succeeded" => AttemptState::Succeeded,
            "failed" => AttemptState::Failed,
            "timedout" => AttemptState::TimedOut,
            "cancelled" => AttemptState::Cancelled,
            // Killed by its agent's supervisor when the agent's lease lapsed:
            // run again, as when the server finds the worker lost.
            "lost" => AttemptState::Lost,
            other => {
                return Err(FieldError::new(
                    "outcome",
                    format!(
                        "{other:?} is not an outcome (succeeded, failed, timedout, cancelled, lost)"
                    ),
                )
                .into());
            }
        };
        let mut state = self.state.lock().await;
        // Whatever the answer, it stands only once what it rests on is committed.
        let mut fx = Effects {
            seq: state.seq,
            ..Effects::default()
        };
        let live = state
            .attempt_runs
            .get(&attempt_id)
            .and_then(|r| state.runs.get(r))
            .and_then(|run| Some((run.record.id, run.attempt(attempt_id).cloned()?)));
        if live.as_ref().is_some_and(|(_, a)| a.worker_id != worker) {
            return Err(not_handed(attempt_id, worker));
        }
        // When the run has ended, or the attempt has, it was recorded then.
        let Some((run_id, attempt)) = live.filter(|(_, a)| !a.state.is_terminal()) else {
            drop(state);
            return self.finish(fx).await;
        };
        let now = self.now();
        let Some(mut update) = RunUpdate::take(&mut state, run_id, now) else {
            drop(state);
            return self.finish(fx).await;
        };
        let usage = req.usage.as_ref().map(agent_fields::measured);
        let measured = usage.map(|usage| {
            let step = &update.run.record.spec.steps[attempt.step_idx as usize];
            MeasuredAttempt {
                attempt: attempt.id,
                run_id,
                tenant: update.run.record.tenant.clone(),
                pool: state
                    .workers
                    .get(&worker)
                    .map(|w| w.record.pool.clone())
                    .unwrap_or_default(),
                pipeline: update.run.record.pipeline.clone(),
                step: step.name.clone(),
                succeeded: outcome == AttemptState::Succeeded,
                ended_at: now,
                duration_ms: attempt
                    .started_at
                    .map_or(0, |started| now.millis_since(started)),
                requested: step.resources(),
                usage,
            }
        });
        update.end_attempt(
            AttemptRecord { usage, ..attempt },
            outcome,
            req.exit_code,
            req.error,
        );
        update.advance(&mut state);
        fx.controller = update.run.record.state.is_terminal();
        let assigned = update.assigned_workers();
        let mut writes = update.done(&mut state);
        writes.extend(measured.map(Write::PutMeasured));
        fx.wake = Self::wake_handles(&state, assigned);
        self.stage(&mut state, writes, &mut fx);
        drop(state);
        self.finish(fx).await
    }
}

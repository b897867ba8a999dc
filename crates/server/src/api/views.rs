//! From records to wire views.

use corral_api::*;
use corral_core::clock::Timestamp;
use corral_core::controller::{Reason, Snapshot};
use corral_core::pool::Provider;
use corral_core::resources::Resources;
use corral_core::tenant::QuotaSpec;
use corral_store::{
    AllocationRecord, Measured, PoolRecord, RunDetail, RunRecord, TenantRecord, WorkerRecord,
};

use crate::state::QueuePlace;

/// RFC 3339 with milliseconds, in UTC.
pub fn time(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| t.0.to_string())
}

fn reason(r: &Reason) -> ReasonView {
    ReasonView {
        code: serde_json::to_value(r.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        message: r.message.clone(),
        limits: r
            .limits
            .iter()
            .map(|l| LimitView {
                scope: l.scope.clone(),
                dimension: l.dimension.clone(),
                in_use: l.in_use,
                limit: l.limit,
                needs: l.needs,
            })
            .collect(),
    }
}

fn quota(q: &QuotaSpec) -> QuotaView {
    QuotaView {
        cpu_millis: q.cpu,
        memory_mib: q.memory,
        gpu: q.gpu,
        runs: q.runs,
    }
}

/// A live agent, how it confines its steps, and the allocations it holds.
pub fn agent(w: &WorkerRecord, last_poll: Timestamp, holds: &[&AllocationRecord]) -> AgentView {
    AgentView {
        worker_id: w.id.0,
        name: w.name.clone(),
        confinement: w.confinement.as_ref().map(|c| Confinement {
            namespaces: c.namespaces,
            cgroup: c.cgroup.clone(),
            user: c.user.clone(),
        }),
        capacity: w.capacity.into(),
        last_poll_at: Some(time(last_poll)),
        holds: holds
            .iter()
            .map(|a| HoldingView {
                allocation_id: a.id.0,
                run_id: a.run_id.0,
                group: a.group,
                tenant: a.tenant.clone(),
                resources: a.resources.into(),
                opened_at: time(a.opened_at),
            })
            .collect(),
    }
}

/// What an attempt really used, as the API shows it.
pub fn usage(m: &Measured) -> AttemptUsage {
    AttemptUsage {
        cpu_seconds: m.cpu_micros as f64 / 1e6,
        memory_peak_bytes: m.memory_peak_bytes,
        throttled_seconds: m.throttled_micros as f64 / 1e6,
    }
}

pub fn pool(
    p: &PoolRecord,
    snapshot: &Snapshot,
    reserved: Resources,
    agents: Vec<AgentView>,
) -> PoolView {
    let live = snapshot.pools.get(&p.spec.name);
    PoolView {
        name: p.spec.name.clone(),
        provider: match p.spec.provider {
            Provider::Local => "local",
            Provider::Static => "static",
            Provider::Kubernetes => "kubernetes",
        }
        .into(),
        capacity: live.map_or(p.spec.capacity(), |l| l.capacity).into(),
        max_workers: p.spec.max_workers,
        labels: p.spec.labels.clone(),
        price: PriceView {
            cpu_hour: p.spec.price.cpu_hour,
            memory_gib_hour: p.spec.price.memory_gib_hour,
            gpu_hour: p.spec.price.gpu_hour,
        },
        state: p.spec.state.as_str().into(),
        used: live.map(|l| l.used).unwrap_or_default().into(),
        reserved: reserved.into(),
        workers: live.map_or(0, |l| l.workers),
        agents: live
            .and_then(|l| l.agents.as_ref())
            .map(|a| u32::try_from(a.len()).unwrap_or(u32::MAX)),
        max_agent: BoundsView {
            cpu_millis: p.spec.max_agent.cpu,
            memory_mib: p.spec.max_agent.memory,
            gpu: p.spec.max_agent.gpu,
        },
        require_confinement: p.spec.require_confinement,
        live_agents: agents,
        spec: spec_document(&p.spec),
        created_at: time(p.created_at),
        updated_at: time(p.updated_at),
    }
}

/// A spec as the JSON document `apply` reads back (specs always serialize).
fn spec_document<T: serde::Serialize>(spec: &T) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or_default()
}

pub fn tenant(t: &TenantRecord, snapshot: &Snapshot) -> TenantView {
    let live = snapshot.tenants.get(&t.spec.name);
    TenantView {
        name: t.spec.name.clone(),
        weight: t.spec.weight,
        quota: quota(&t.spec.quota),
        allowed_pools: t.spec.allowed_pools.clone(),
        pool_limits: t
            .spec
            .pool_limits
            .iter()
            .map(|(pool, q)| (pool.clone(), quota(q)))
            .collect(),
        used: live.map(|l| l.used).unwrap_or_default().into(),
        held: live
            .into_iter()
            .flat_map(|l| &l.held)
            .map(|(pool, h)| (pool.clone(), h.resources.into()))
            .collect(),
        runs: live.map_or(0, |l| l.runs),
        budget: t.spec.budget.as_ref().map(|b| BudgetSummary {
            monthly: b.monthly.to_units_f64(),
            enforce: b.enforce.as_str().to_string(),
            alert_at: b.alert_at.clone(),
        }),
        spec: spec_document(&t.spec),
        created_at: time(t.created_at),
        updated_at: time(t.updated_at),
    }
}

/// A run; one still waiting for admission shows its live reason and place.
pub fn run_summary(r: &RunRecord, place: Option<&QueuePlace>) -> RunSummary {
    RunSummary {
        id: r.id.0,
        pipeline: r.pipeline.clone(),
        tenant: r.tenant.clone(),
        priority: r.priority,
        state: r.state.as_str().into(),
        reason: place
            .and_then(|p| p.reason.as_ref())
            .or(r.reason.as_ref())
            .map(reason),
        queue: place.map(|p| QueuePlaceView {
            position: p.position,
            tenant_position: p.tenant_position,
            waited_ms: p.waited_ms,
            reserved: p.reserved.clone(),
        }),
        estimated_cost: r.estimate.to_units_f64(),
        demand: r.request.total().into(),
        created_at: time(r.created_at),
        finished_at: r.finished_at.map(time),
    }
}

pub fn allocation(a: &AllocationRecord) -> AllocationView {
    AllocationView {
        id: a.id.0,
        run_id: a.run_id.0,
        group: a.group,
        tenant: a.tenant.clone(),
        pool: a.pool.clone(),
        resources: a.resources.into(),
        worker_id: a.worker_id.map(|w| w.0),
        opened_at: time(a.opened_at),
        closed_at: a.closed_at.map(time),
    }
}

/// One run of a bulk submit, as answered.
pub fn submitted(r: &RunRecord) -> SubmittedRun {
    SubmittedRun {
        id: r.id.0,
        state: r.state.as_str().into(),
        reason: r.reason.as_ref().map(reason),
        matrix: r.spec.matrix.values(),
    }
}

pub fn run(d: &RunDetail, place: Option<&QueuePlace>) -> RunView {
    let spec = &d.run.spec;
    RunView {
        explanation: explain(&d.run, place),
        matrix: spec.matrix.values(),
        summary: run_summary(&d.run, place),
        request: RequestView {
            groups: d
                .run
                .request
                .groups
                .iter()
                .map(|g| GroupView {
                    index: g.index,
                    pool: g.selector.to_string(),
                    resources: g.resources.into(),
                    steps: g
                        .steps
                        .iter()
                        .filter_map(|&i| spec.steps.get(i).map(|s| s.name.clone()))
                        .collect(),
                })
                .collect(),
        },
        steps: d
            .steps
            .iter()
            .map(|s| StepView {
                name: s.name.clone(),
                group: s.group,
                state: s.state.as_str().into(),
                needs: spec
                    .steps
                    .get(s.idx as usize)
                    .map(|x| x.needs.clone())
                    .unwrap_or_default(),
                attempts: d
                    .attempts
                    .iter()
                    .filter(|a| a.step_idx == s.idx)
                    .map(|a| AttemptView {
                        id: a.id.0,
                        number: a.number,
                        state: a.state.as_str().into(),
                        worker_id: a.worker_id.0,
                        exit_code: a.exit_code,
                        error: a.error.clone(),
                        started_at: a.started_at.map(time),
                        finished_at: a.finished_at.map(time),
                        usage: a.usage.as_ref().map(usage),
                    })
                    .collect(),
            })
            .collect(),
        allocations: d.allocations.iter().map(allocation).collect(),
    }
}

/// Sentences on where a waiting run stands and what would let it in, or why a
/// rejected run never could.
fn explain(r: &RunRecord, place: Option<&QueuePlace>) -> Option<String> {
    if let Some(p) = place {
        let what = if p.regroup {
            format!(
                "Run {} lost a worker and waits to be placed again for the groups it ran there",
                r.id
            )
        } else {
            format!("Run {} is queued", r.id)
        };
        let mut text = format!(
            "{what}: number {} in the queue and {} among tenant {}'s runs, after {}s.",
            p.position,
            p.tenant_position,
            r.tenant,
            p.waited_ms / 1000
        );
        match &p.reason {
            Some(reason) => {
                text.push(' ');
                text.push_str(&reason.explain());
            }
            None => text.push_str(" The controller has not looked at it yet."),
        }
        if let Some(pools) = &p.reserved {
            text.push_str(&if pools.is_empty() {
                format!(" It has waited longest: room in tenant {}'s quota is held for it.", r.tenant)
            } else {
                format!(
                    " It has waited longest: room in pool {} is held for it, and no run behind it may take that room.",
                    pools.join(", ")
                )
            });
        }
        return Some(text);
    }
    let reason = r.reason.as_ref()?;
    Some(format!("Run {} is {}. {}", r.id, r.state, reason.explain()))
}

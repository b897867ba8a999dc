//! From records to wire views.

use corral_api::*;
use corral_core::clock::Timestamp;
use corral_core::controller::{Reason, Snapshot};
use corral_core::pool::Provider;
use corral_store::{AllocationRecord, PoolRecord, RunDetail, RunRecord, TenantRecord};

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
    }
}

pub fn pool(p: &PoolRecord, snapshot: &Snapshot) -> PoolView {
    let live = snapshot.pools.get(&p.spec.name);
    PoolView {
        name: p.spec.name.clone(),
        provider: match p.spec.provider {
            Provider::Local => "local",
            Provider::Static => "static",
            Provider::Kubernetes => "kubernetes",
        }
        .into(),
        capacity: p.spec.capacity().into(),
        max_workers: p.spec.max_workers,
        labels: p.spec.labels.clone(),
        price: PriceView {
            cpu_hour: p.spec.price.cpu_hour,
            memory_gib_hour: p.spec.price.memory_gib_hour,
            gpu_hour: p.spec.price.gpu_hour,
        },
        state: p.spec.state.as_str().into(),
        used: live.map(|l| l.used).unwrap_or_default().into(),
        workers: live.map_or(0, |l| l.workers),
        created_at: time(p.created_at),
        updated_at: time(p.updated_at),
    }
}

pub fn tenant(t: &TenantRecord, snapshot: &Snapshot) -> TenantView {
    let live = snapshot.tenants.get(&t.spec.name);
    TenantView {
        name: t.spec.name.clone(),
        weight: t.spec.weight,
        quota: QuotaView {
            cpu_millis: t.spec.quota.cpu,
            memory_mib: t.spec.quota.memory,
            gpu: t.spec.quota.gpu,
            runs: t.spec.quota.runs,
        },
        allowed_pools: t.spec.allowed_pools.clone(),
        used: live.map(|l| l.used).unwrap_or_default().into(),
        runs: live.map_or(0, |l| l.runs),
        created_at: time(t.created_at),
        updated_at: time(t.updated_at),
    }
}

pub fn run_summary(r: &RunRecord) -> RunSummary {
    RunSummary {
        id: r.id.0,
        pipeline: r.pipeline.clone(),
        tenant: r.tenant.clone(),
        priority: r.priority,
        state: r.state.as_str().into(),
        reason: r.reason.as_ref().map(reason),
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

pub fn run(d: &RunDetail) -> RunView {
    let spec = &d.run.spec;
    RunView {
        summary: run_summary(&d.run),
        request: RequestView {
            groups: d
                .run
                .request
                .groups
                .iter()
                .map(|g| GroupView {
                    index: g.index,
                    pool: g.pool.clone(),
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
                    })
                    .collect(),
            })
            .collect(),
        allocations: d.allocations.iter().map(allocation).collect(),
    }
}

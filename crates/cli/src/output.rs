//! What the CLI prints: aligned tables for people, JSON or YAML for scripts.

use std::fmt::Write as _;

use anyhow::Result;
use clap::ValueEnum;
use corral_api::{
    AttemptUsage, AuditView, BackgroundWorkerView, PoolView, RecommendationView, ResourcesView,
    RunSummary, RunView, TenantSummary, TenantView, TokenView, UsageView,
};
use corral_core::money::Money;
use corral_core::resources::{UNLIMITED, format_count, format_cpu, format_memory};
use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// The value as JSON or YAML; `None` for a table, which the caller renders.
pub fn structured<T: Serialize>(value: &T, format: Format) -> Result<Option<String>> {
    Ok(match format {
        Format::Table => None,
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(serde_saphyr::to_string(value)?),
    })
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

fn resources(r: &ResourcesView) -> String {
    let mut s = format!(
        "cpu {}, mem {}",
        format_cpu(r.cpu_millis),
        format_memory(r.memory_mib)
    );
    if r.gpu > 0 {
        let _ = write!(s, ", gpu {}", r.gpu);
    }
    s
}

fn usage(used: &ResourcesView, capacity: &ResourcesView) -> String {
    let mut s = format!(
        "cpu {}/{}, mem {}/{}",
        format_cpu(used.cpu_millis),
        format_cpu(capacity.cpu_millis),
        format_memory(used.memory_mib),
        format_memory(capacity.memory_mib)
    );
    if capacity.gpu > 0 || used.gpu > 0 {
        let _ = write!(
            s,
            ", gpu {}/{}",
            format_count(used.gpu),
            format_count(capacity.gpu)
        );
    }
    s
}

/// An amount of the operator's currency given in units, to the micro-unit
/// (a cost of 0.000417 is not `0.00`).
pub fn money(units: f64) -> String {
    // `as` saturates: amounts are far inside i64 micro-units.
    Money::from_micros((units * 1e6).round() as i64).to_string()
}

/// Specs as documents `corral apply -f` takes back unchanged: `kind` first,
/// then the spec as it was applied, `---` between documents.
fn documents<'a>(kind: &str, specs: impl Iterator<Item = &'a serde_json::Value>) -> Result<String> {
    let mut out = String::new();
    for (i, spec) in specs.enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let _ = writeln!(out, "kind: {kind}");
        out.push_str(&serde_saphyr::to_string(spec)?);
    }
    Ok(out)
}

/// Pools as a table, their views as JSON (status included), or their specs as
/// YAML documents for `corral apply -f`.
pub fn pools(pools: &[PoolView], format: Format) -> Result<String> {
    if format == Format::Yaml {
        return documents("Pool", pools.iter().map(|p| &p.spec));
    }
    if let Some(s) = structured(&pools, format)? {
        return Ok(s);
    }
    let rows = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.provider.clone(),
                p.state.clone(),
                usage(&p.used, &p.capacity),
                format!("{}/{}", p.workers, p.max_workers),
                p.agents.map_or("-".into(), |a| a.to_string()),
                confined(p),
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "PROVIDER",
            "STATE",
            "USED/CAPACITY",
            "WORKERS",
            "AGENTS",
            "CONFINED",
        ],
        rows,
    ))
}

/// How many of a pool's live agents confine their steps, and whether the
/// pool requires it: `2/2 v1`, `0/1 none (required)`.
fn confined(p: &PoolView) -> String {
    let full = p
        .live_agents
        .iter()
        .filter(|a| a.confinement.as_ref().is_some_and(|c| c.is_full()))
        .count();
    let mut cgroups: Vec<&str> = p
        .live_agents
        .iter()
        .map(|a| a.confinement.as_ref().map_or("none", |c| c.cgroup.as_str()))
        .collect();
    cgroups.sort_unstable();
    cgroups.dedup();
    let mut s = if p.live_agents.is_empty() {
        "-".to_string()
    } else {
        format!("{full}/{} {}", p.live_agents.len(), cgroups.join(","))
    };
    if p.require_confinement {
        s.push_str(" (required)");
    }
    s
}

/// An attempt's measured usage: `1.52s cpu, peak 130Mi`.
fn measured(u: &AttemptUsage) -> String {
    let mut s = format!(
        "{:.2}s cpu, peak {}",
        u.cpu_seconds,
        format_memory(u.memory_peak_bytes.div_ceil(1 << 20))
    );
    if u.throttled_seconds >= 0.01 {
        let _ = write!(s, ", throttled {:.2}s", u.throttled_seconds);
    }
    s
}

/// A quota's limits, those set only: `cpu 2, gpu 1`, or `unlimited`.
fn quota(q: &corral_api::QuotaView) -> String {
    let limits: Vec<String> = [
        ("cpu", q.cpu_millis.map(format_cpu)),
        ("mem", q.memory_mib.map(format_memory)),
        ("gpu", q.gpu.map(format_count)),
        ("runs", q.runs.map(format_count)),
    ]
    .into_iter()
    .filter_map(|(name, limit)| limit.map(|l| format!("{name} {l}")))
    .collect();
    if limits.is_empty() {
        UNLIMITED.to_string()
    } else {
        limits.join(", ")
    }
}

/// Tenants as a table, their views as JSON (status included), or their specs
/// as YAML documents for `corral apply -f`.
pub fn tenants(tenants: &[TenantView], format: Format) -> Result<String> {
    if format == Format::Yaml {
        return documents("Tenant", tenants.iter().map(|t| &t.spec));
    }
    if let Some(s) = structured(&tenants, format)? {
        return Ok(s);
    }
    let rows = tenants
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.weight.to_string(),
                resources(&t.used),
                quota(&t.quota),
                t.runs.to_string(),
            ]
        })
        .collect();
    Ok(table(&["NAME", "WEIGHT", "USED", "QUOTA", "RUNS"], rows))
}

pub fn runs(runs: &[RunSummary], format: Format) -> Result<String> {
    if let Some(s) = structured(&runs, format)? {
        return Ok(s);
    }
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.pipeline.clone(),
                r.tenant.clone(),
                r.state.clone(),
                r.created_at.clone(),
                reason_message(r),
            ]
        })
        .collect();
    Ok(table(
        &["ID", "PIPELINE", "TENANT", "STATE", "CREATED", "REASON"],
        rows,
    ))
}

fn reason_message(r: &RunSummary) -> String {
    r.reason
        .as_ref()
        .map(|x| x.message.clone())
        .unwrap_or_default()
}

/// Queued runs in admission order.
pub fn queue(runs: &[RunSummary], format: Format) -> Result<String> {
    if let Some(s) = structured(&runs, format)? {
        return Ok(s);
    }
    let rows = runs
        .iter()
        .map(|r| {
            let q = r.queue.as_ref();
            vec![
                q.map_or("-".into(), |q| q.position.to_string()),
                r.id.to_string(),
                r.tenant.clone(),
                q.map_or("-".into(), |q| q.tenant_position.to_string()),
                r.priority.to_string(),
                q.map_or("-".into(), |q| format!("{}s", q.waited_ms / 1000)),
                resources(&r.demand),
                r.reason
                    .as_ref()
                    .map(|x| x.code.clone())
                    .unwrap_or_default(),
                reason_message(r),
            ]
        })
        .collect();
    Ok(table(
        &[
            "POS",
            "RUN",
            "TENANT",
            "TENANT-POS",
            "PRIORITY",
            "WAITED",
            "DEMAND",
            "CODE",
            "REASON",
        ],
        rows,
    ))
}

/// Breaks text into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

pub fn describe_run(run: &RunView, format: Format) -> Result<String> {
    if let Some(s) = structured(run, format)? {
        return Ok(s);
    }
    let s = &run.summary;
    let mut out = String::new();
    let _ = writeln!(out, "Run:       {}", s.id);
    let _ = writeln!(out, "Pipeline:  {}", s.pipeline);
    let _ = writeln!(out, "Tenant:    {}", s.tenant);
    let _ = writeln!(out, "Priority:  {}", s.priority);
    if !run.matrix.is_empty() {
        let values: Vec<String> = run.matrix.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "Matrix:    {}", values.join(", "));
    }
    let _ = writeln!(out, "State:     {}", s.state);
    let _ = writeln!(out, "Created:   {}", s.created_at);
    if let Some(f) = &s.finished_at {
        let _ = writeln!(out, "Finished:  {f}");
    }
    if let Some(reason) = &s.reason {
        let verb = if s.state == "rejected" {
            "Rejected"
        } else {
            "Waiting"
        };
        let _ = writeln!(out, "{verb}:   {} ({})", reason.message, reason.code);
    }
    if let Some(q) = &s.queue {
        let _ = writeln!(
            out,
            "Queue:     number {} overall, {} for tenant {}",
            q.position, q.tenant_position, s.tenant
        );
    }
    if let Some(text) = &run.explanation {
        let _ = writeln!(out, "\n{}", wrap(text, 80));
    }
    let _ = writeln!(out, "\nRequest:");
    for g in &run.request.groups {
        let _ = writeln!(
            out,
            "  group {} on {}: {} for steps {}",
            g.index,
            g.pool,
            resources(&g.resources),
            g.steps.join(", ")
        );
    }
    if !run.allocations.is_empty() {
        let _ = writeln!(out, "\nAllocations:");
        for a in &run.allocations {
            let _ = writeln!(
                out,
                "  #{} group {} on pool {}: {} (opened {}, {})",
                a.id,
                a.group,
                a.pool,
                resources(&a.resources),
                a.opened_at,
                a.closed_at
                    .as_ref()
                    .map_or("open".to_string(), |c| format!("closed {c}"))
            );
        }
    }
    let _ = writeln!(out, "\nSteps:");
    let rows = run
        .steps
        .iter()
        .map(|st| {
            let last = st.attempts.last();
            vec![
                st.name.clone(),
                st.state.clone(),
                st.attempts.len().to_string(),
                last.and_then(|a| a.exit_code)
                    .map_or("-".into(), |c| c.to_string()),
                last.and_then(|a| a.usage.as_ref())
                    .map_or("-".into(), measured),
                last.and_then(|a| a.error.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    for line in table(
        &["STEP", "STATE", "ATTEMPTS", "EXIT", "USED", "ERROR"],
        rows,
    )
    .lines()
    {
        let _ = writeln!(out, "  {line}");
    }
    Ok(out)
}

pub fn tokens(tokens: &[TokenView], format: Format) -> Result<String> {
    if let Some(s) = structured(&tokens, format)? {
        return Ok(s);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows = tokens
        .iter()
        .map(|t| {
            let state = if t.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            };
            vec![
                t.name.clone(),
                t.role.clone(),
                t.tenant
                    .clone()
                    .or_else(|| t.pool.clone())
                    .unwrap_or_else(|| "-".into()),
                state.into(),
                opt(&t.expires_at),
                opt(&t.last_used_at),
            ]
        })
        .collect();
    Ok(table(
        &["NAME", "ROLE", "FOR", "STATE", "EXPIRES", "LAST USED"],
        rows,
    ))
}

/// The server's background workers: a failed or backing-off one with its
/// last error, and when.
pub fn background_workers(workers: &[BackgroundWorkerView], format: Format) -> Result<String> {
    if let Some(s) = structured(&workers, format)? {
        return Ok(s);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows = workers
        .iter()
        .map(|w| {
            let error = match (&w.last_error, &w.last_error_at) {
                (Some(error), Some(at)) => format!("{at}: {error}"),
                (Some(error), None) => error.clone(),
                (None, _) => "-".into(),
            };
            vec![
                w.name.clone(),
                if w.vital { "yes" } else { "no" }.into(),
                w.status.clone(),
                w.restarts.to_string(),
                opt(&w.last_run_at),
                error,
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "VITAL",
            "STATUS",
            "RESTARTS",
            "LAST RUN",
            "LAST ERROR",
        ],
        rows,
    ))
}

/// A spec in one line of JSON, or `-`.
fn compact(value: &Option<serde_json::Value>) -> String {
    value.as_ref().map_or_else(|| "-".into(), |v| v.to_string())
}

pub fn audit(entries: &[AuditView], format: Format) -> Result<String> {
    if let Some(s) = structured(&entries, format)? {
        return Ok(s);
    }
    let rows = entries
        .iter()
        .map(|a| {
            vec![
                a.at.clone(),
                a.who.clone(),
                a.action.clone(),
                format!("{} {}", a.kind, a.name),
                compact(&a.before),
                compact(&a.after),
            ]
        })
        .collect();
    Ok(table(
        &["AT", "WHO", "ACTION", "OBJECT", "BEFORE", "AFTER"],
        rows,
    ))
}

/// A usage report as a table: a column per key, then the amounts and the
/// cost (with `idle=share`, each row's share of the idle cost and the two
/// together); then, for those who see every tenant, each pool's idle capacity.
pub fn usage_report(report: &UsageView) -> String {
    let share = report.idle_mode == "share";
    let cost = format!("COST ({})", report.currency);
    let mut header: Vec<String> = report.by.iter().map(|k| k.to_uppercase()).collect();
    header.extend(["CPU CORE-H", "MEMORY GIB-H", "GPU-H", &cost].map(String::from));
    if share {
        header.extend(["IDLE SHARE", "WITH IDLE"].map(String::from));
    }
    header.extend(["CPU EFF", "MEM EFF"].map(String::from));
    let hours = |seconds: f64| format!("{:.2}", seconds / 3600.0);
    let percent = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
    let micros = |m: i64| Money::from_micros(m).to_string();
    let (mut shares, mut with_idle) = (Money::ZERO, Money::ZERO);
    let mut rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            let mut row: Vec<String> = report
                .by
                .iter()
                .map(|k| r.key.get(k).cloned().unwrap_or_default())
                .collect();
            row.extend([
                hours(r.usage.cpu_core_seconds),
                hours(r.usage.memory_gib_seconds),
                hours(r.usage.gpu_seconds),
                micros(r.usage.cost_micros),
            ]);
            if share {
                let (idle, total) = (
                    r.idle_share_micros.unwrap_or_default(),
                    r.total_with_idle_micros.unwrap_or_default(),
                );
                shares = shares.saturating_add(Money::from_micros(idle));
                with_idle = with_idle.saturating_add(Money::from_micros(total));
                row.extend([micros(idle), micros(total)]);
            }
            row.extend([percent(r.efficiency.cpu), percent(r.efficiency.memory)]);
            row
        })
        .collect();
    let t = &report.total;
    let mut total = vec![String::new(); report.by.len()];
    if let Some(first) = total.first_mut() {
        *first = "TOTAL".into();
    }
    total.extend([
        hours(t.cpu_core_seconds),
        hours(t.memory_gib_seconds),
        hours(t.gpu_seconds),
        micros(t.cost_micros),
    ]);
    if share {
        total.extend([shares.to_string(), with_idle.to_string()]);
    }
    total.extend([
        percent(report.total_efficiency.cpu),
        percent(report.total_efficiency.memory),
    ]);
    rows.push(total);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut out = table(&header, rows);
    if !report.idle.is_empty() {
        let mut header = vec!["POOL", "DAY", "CAPACITY", "ALLOCATED", "IDLE"];
        if share {
            header.push("SHARED");
        }
        let rows = report
            .idle
            .iter()
            .map(|i| {
                let mut row = vec![
                    i.pool.clone(),
                    i.day.clone().unwrap_or_else(|| "-".into()),
                    micros(i.capacity.cost_micros),
                    micros(i.allocated.cost_micros),
                    micros(i.idle.cost_micros),
                ];
                if share {
                    row.push(micros(i.shared_micros.unwrap_or_default()));
                }
                row
            })
            .collect();
        let _ = write!(
            out,
            "\nIdle capacity (cost in {}):\n{}",
            report.currency,
            table(&header, rows)
        );
    }
    out
}

/// A tenant at a glance.
pub fn describe_tenant(s: &TenantSummary, format: Format) -> Result<String> {
    if let Some(text) = structured(s, format)? {
        return Ok(text);
    }
    let t = &s.tenant;
    let mut out = format!("Tenant:     {}\nWeight:     {}\n", t.name, t.weight);
    out.push_str(&format!(
        "Holds:      {} ({} runs)\n",
        resources(&t.used),
        t.runs
    ));
    out.push_str(&format!(
        "Waiting:    {} runs asking for {}\n",
        s.queued_runs,
        resources(&s.queued_demand)
    ));
    let currency = &s.currency;
    match &t.budget {
        Some(b) => out.push_str(&format!(
            "Spend:      {} {currency} of {} ({}) in {}, heading for {}\n",
            money(s.spent),
            money(b.monthly),
            b.enforce,
            s.month,
            money(s.forecast)
        )),
        None => out.push_str(&format!(
            "Spend:      {} {currency} in {} (no budget), heading for {}\n",
            money(s.spent),
            s.month,
            money(s.forecast)
        )),
    }
    out.push_str(&format!(
        "Idle share: {} {currency} of the idle cost of the pools it used, in proportion to what its use of each cost\n",
        Money::from_micros(s.idle_share_micros)
    ));
    if !s.usage_by_pool.is_empty() {
        out.push_str(&format!("By pool ({currency}):\n"));
        let rows = s
            .usage_by_pool
            .iter()
            .map(|row| {
                vec![
                    row.key.get("pool").cloned().unwrap_or_default(),
                    Money::from_micros(row.usage.cost_micros).to_string(),
                    Money::from_micros(row.idle_share_micros.unwrap_or_default()).to_string(),
                ]
            })
            .collect();
        for line in table(&["POOL", "COST", "IDLE SHARE"], rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    for alert in &s.alerts {
        out.push_str(&format!("Alert:      {} ({})\n", alert.message, alert.at));
    }
    Ok(out)
}

/// A pipeline's right-sizing, step by step.
pub fn recommendation(r: &RecommendationView, format: Format) -> Result<String> {
    if let Some(s) = structured(r, format)? {
        return Ok(s);
    }
    let rows = r
        .steps
        .iter()
        .map(|s| {
            vec![
                s.step.clone(),
                resources(&s.current),
                resources(&s.recommended),
                format!(
                    "{:.2} cores, {}",
                    s.peak_cpu_cores,
                    format_memory(s.peak_memory_mib)
                ),
                format!("{} ({} runs)", s.samples, s.runs.len()),
                money(s.monthly_saving),
            ]
        })
        .collect();
    let mut out = format!("Pipeline {} of tenant {}\n\n", r.pipeline, r.tenant);
    out.push_str(&table(
        &[
            "STEP",
            "REQUESTED",
            "RECOMMENDED",
            "PEAK USED",
            "ATTEMPTS",
            "MONTHLY SAVING",
        ],
        rows,
    ));
    let _ = write!(
        out,
        "\nSaving per month: {}\nMethod: {}\n",
        money(r.monthly_saving),
        wrap(&r.method, 80)
    );
    Ok(out)
}

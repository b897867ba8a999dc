//! What a simulation shows: per tenant, runs, waits and the resource-time it
//! received against its weight; per pool, utilization; and broken invariants.

use std::fmt::{self, Write as _};

use serde::Serialize;

use super::{SimRun, Simulation, Span, Violation};
use crate::clock::Timestamp;
use crate::resources::{Dimension, Resources};
use crate::selector::PlacementPolicy;

/// What became of the runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub submitted: u64,
    pub admitted: u64,
    /// Admitted and finished.
    pub completed: u64,
    /// Admitted and still holding their allocations at the end.
    pub running: u64,
    pub rejected: u64,
    /// Still waiting at the end.
    pub queued: u64,
}

/// Time from arrival to admission, in milliseconds, of the admitted runs; and
/// the longest wait of a run still queued at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Waits {
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
    pub oldest_queued_ms: Option<i64>,
}

/// Resources held over time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ResourceTime {
    pub cpu_seconds: f64,
    pub memory_gib_seconds: f64,
    pub gpu_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantReport {
    pub name: String,
    pub weight: u32,
    pub runs: RunCounts,
    pub wait: Waits,
    pub received: ResourceTime,
    /// Its part of all the resource-time handed out, each tenant counted in
    /// its dominant dimension (relative to the pools' capacity).
    pub share: f64,
    /// Its weight over the weights of the tenants that submitted runs; none
    /// when it submitted nothing.
    pub weight_share: Option<f64>,
}

/// Time-averaged use over capacity, per dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Utilization {
    pub cpu: f64,
    pub memory: f64,
    /// None for a pool without gpus.
    pub gpu: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolReport {
    pub name: String,
    pub capacity: Resources,
    /// Groups placed on it.
    pub placements: u64,
    pub utilization: Utilization,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub runs: RunCounts,
    pub wait: Waits,
    pub received: ResourceTime,
}

/// The outcome of a simulation, as of its end (or of the cycle reached).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub seed: u64,
    /// Simulated time covered.
    pub elapsed_ms: i64,
    pub cycle_ms: i64,
    pub cycles: u64,
    pub placement: PlacementPolicy,
    pub half_life_ms: i64,
    pub starvation_after_ms: i64,
    pub tenants: Vec<TenantReport>,
    pub pools: Vec<PoolReport>,
    pub total: Totals,
    pub violations: Vec<Violation>,
}

/// Resource-milliseconds, per dimension, exact.
type Held = [u128; 3];

fn add_held(acc: &mut Held, r: &Resources, ms: i64) {
    let ms = u128::try_from(ms).unwrap_or(0);
    for (a, d) in acc.iter_mut().zip(Dimension::ALL) {
        *a += u128::from(r.get(d)) * ms;
    }
}

fn resource_time(held: &Held) -> ResourceTime {
    // Base units: millicores, MiB and gpus, times milliseconds.
    ResourceTime {
        cpu_seconds: held[0] as f64 / 1e6,
        memory_gib_seconds: held[1] as f64 / 1024.0 / 1e3,
        gpu_seconds: held[2] as f64 / 1e3,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

#[derive(Default)]
struct Tally {
    runs: RunCounts,
    waits: Vec<i64>,
    oldest_queued: Option<i64>,
    held: Held,
}

impl Tally {
    /// Counts a run as it stands at `horizon`.
    fn count(&mut self, run: &SimRun, horizon: Timestamp) {
        self.runs.submitted += 1;
        match (run.admitted, run.ends()) {
            (Some(admitted), Some(ends)) => {
                self.runs.admitted += 1;
                if ends <= horizon {
                    self.runs.completed += 1;
                } else {
                    self.runs.running += 1;
                }
                self.waits.push(admitted.millis_since(run.arrived));
                add_held(
                    &mut self.held,
                    &run.resources(),
                    run.held_within(admitted, horizon),
                );
            }
            _ if run.rejected.is_some() => self.runs.rejected += 1,
            _ => {
                self.runs.queued += 1;
                let waited = horizon.millis_since(run.arrived);
                self.oldest_queued = self.oldest_queued.max(Some(waited));
            }
        }
    }

    fn waits(&mut self) -> Waits {
        self.waits.sort_unstable();
        Waits {
            p50_ms: percentile(&self.waits, 0.5),
            p99_ms: percentile(&self.waits, 0.99),
            max_ms: self.waits.last().copied(),
            oldest_queued_ms: self.oldest_queued,
        }
    }
}

impl SimReport {
    pub(super) fn build(sim: &Simulation) -> SimReport {
        let horizon = sim.now.min(sim.end);
        let mut tallies: Vec<Tally> = sim.spec.tenants.iter().map(|_| Tally::default()).collect();
        let mut total = Tally::default();
        let mut pools: Vec<(Held, u64)> = vec![([0; 3], 0); sim.spec.pools.len()];
        for run in &sim.runs {
            let tenant = sim.spec.tenants.iter().position(|t| t.name == run.tenant);
            let own = tenant.and_then(|i| tallies.get_mut(i));
            for tally in own.into_iter().chain([&mut total]) {
                tally.count(run, horizon);
            }
            let held = run.held_within(Timestamp(0), horizon);
            for p in &run.placements {
                if let Some(i) = sim.spec.pools.iter().position(|x| x.name == p.pool) {
                    add_held(&mut pools[i].0, &p.resources, held);
                    pools[i].1 += 1;
                }
            }
        }
        let elapsed = horizon.0.max(1) as f64;
        let capacity = sim.base.total_capacity();
        let dominant = |held: &Held| {
            Dimension::ALL
                .iter()
                .zip(held)
                .filter(|(d, _)| capacity.get(**d) > 0)
                .map(|(d, h)| *h as f64 / (capacity.get(*d) as f64 * elapsed))
                .fold(0.0, f64::max)
        };
        let dominants: Vec<f64> = tallies.iter().map(|t| dominant(&t.held)).collect();
        let all: f64 = dominants.iter().sum();
        let weights: u64 = sim
            .spec
            .tenants
            .iter()
            .zip(&tallies)
            .filter(|(_, t)| t.runs.submitted > 0)
            .map(|(s, _)| u64::from(s.weight))
            .sum();
        let tenants = sim
            .spec
            .tenants
            .iter()
            .zip(tallies.iter_mut())
            .zip(dominants)
            .map(|((spec, tally), dominant)| TenantReport {
                name: spec.name.clone(),
                weight: spec.weight,
                runs: tally.runs,
                wait: tally.waits(),
                received: resource_time(&tally.held),
                share: if all > 0.0 { dominant / all } else { 0.0 },
                weight_share: (tally.runs.submitted > 0 && weights > 0)
                    .then(|| f64::from(spec.weight) / weights as f64),
            })
            .collect();
        let pools = sim
            .spec
            .pools
            .iter()
            .zip(pools)
            .filter_map(|(spec, (held, placements))| {
                let view = sim.base.pools.get(&spec.name)?;
                let used = |i: usize, d: Dimension| {
                    let cap = view.capacity.get(d);
                    (cap > 0).then(|| held[i] as f64 / (cap as f64 * elapsed))
                };
                Some(PoolReport {
                    name: spec.name.clone(),
                    capacity: view.capacity,
                    placements,
                    utilization: Utilization {
                        cpu: used(0, Dimension::Cpu).unwrap_or(0.0),
                        memory: used(1, Dimension::Memory).unwrap_or(0.0),
                        gpu: used(2, Dimension::Gpu),
                    },
                })
            })
            .collect();
        SimReport {
            seed: sim.spec.seed,
            elapsed_ms: horizon.0,
            cycle_ms: sim.spec.cycle.millis(),
            cycles: sim.cycles,
            placement: sim.spec.placement,
            half_life_ms: sim.spec.half_life.millis(),
            starvation_after_ms: sim.spec.starvation_after.millis(),
            tenants,
            pools,
            total: Totals {
                runs: total.runs,
                wait: total.waits(),
                received: resource_time(&total.held),
            },
            violations: sim.violations.clone(),
        }
    }
}

/// `0.4s`, `45s`, `12m05s`, `2h03m`.
pub(crate) fn format_ms(ms: i64) -> String {
    let secs = ms / 1000;
    match ms {
        m if m < 10_000 => format!("{:.1}s", m as f64 / 1000.0),
        m if m < 120_000 => format!("{secs}s"),
        m if m < 3_600_000 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn optional(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), format_ms)
}

/// Columns padded to their widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Simulated {} in {} cycles of {} (seed {}, placement {}, half-life {}, starvation after {}).\n",
            Span(self.elapsed_ms),
            self.cycles,
            Span(self.cycle_ms),
            self.seed,
            self.placement.as_str(),
            Span(self.half_life_ms),
            Span(self.starvation_after_ms),
        );
        let gpu = self.total.received.gpu_seconds > 0.0;
        let mut header = vec![
            "TENANT",
            "WEIGHT",
            "SUBMITTED",
            "ADMITTED",
            "DONE",
            "REJECTED",
            "QUEUED",
            "WAIT P50",
            "WAIT P99",
            "OLDEST QUEUED",
            "CPU-H",
        ];
        if gpu {
            header.push("GPU-H");
        }
        header.extend(["SHARE", "WEIGHT SHARE"]);
        let row =
            |name: String, weight: String, runs: &RunCounts, wait: &Waits, rt: &ResourceTime| {
                let mut row = vec![
                    name,
                    weight,
                    runs.submitted.to_string(),
                    runs.admitted.to_string(),
                    runs.completed.to_string(),
                    runs.rejected.to_string(),
                    runs.queued.to_string(),
                    optional(wait.p50_ms),
                    optional(wait.p99_ms),
                    optional(wait.oldest_queued_ms),
                    format!("{:.1}", rt.cpu_seconds / 3600.0),
                ];
                if gpu {
                    row.push(format!("{:.1}", rt.gpu_seconds / 3600.0));
                }
                row
            };
        let mut rows: Vec<Vec<String>> = self
            .tenants
            .iter()
            .map(|t| {
                let mut r = row(
                    t.name.clone(),
                    t.weight.to_string(),
                    &t.runs,
                    &t.wait,
                    &t.received,
                );
                r.push(percent(t.share));
                r.push(t.weight_share.map_or_else(|| "-".to_string(), percent));
                r
            })
            .collect();
        let mut all = row(
            "(all)".into(),
            String::new(),
            &self.total.runs,
            &self.total.wait,
            &self.total.received,
        );
        all.extend([String::new(), String::new()]);
        rows.push(all);
        table(&mut out, &header, &rows);
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .pools
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.capacity.to_string(),
                    percent(p.utilization.cpu),
                    percent(p.utilization.memory),
                    p.utilization.gpu.map_or_else(|| "-".to_string(), percent),
                    p.placements.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "POOL",
                "CAPACITY",
                "CPU USED",
                "MEMORY USED",
                "GPU USED",
                "PLACEMENTS",
            ],
            &rows,
        );
        out.push('\n');
        if self.violations.is_empty() {
            let _ = writeln!(
                out,
                "Invariants held in every cycle (quotas, pool limits, capacity, max_workers, gangs, single admission)."
            );
        } else {
            let _ = writeln!(out, "{} invariant violations:", self.violations.len());
            for v in self.violations.iter().take(20) {
                let _ = writeln!(out, "  {v}");
            }
        }
        f.write_str(&out)
    }
}

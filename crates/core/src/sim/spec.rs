//! What a simulation runs: pools, tenants and a synthetic workload, written as
//! YAML (`kind: Simulation` optional) and read with errors that name the field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::controller::Policy;
use crate::error::FieldError;
use crate::manifest::{from_value, parse_single};
use crate::pipeline::{DEFAULT_STEP_RESOURCES, Priority, PriorityClasses};
use crate::pool::{PoolSpec, Provider};
use crate::resources::{ResourceSpec, Resources};
use crate::selector::{PlacementPolicy, PoolSelector};
use crate::tenant::TenantSpec;

/// The most controller cycles one simulation may take.
const MAX_CYCLES: i64 = 2_000_000;
/// The most runs one backlog may queue.
const MAX_BACKLOG: u64 = 1_000_000;

/// A length of simulated time, written `90`, `90s`, `10m` or `1h30m`, kept in
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub i64);

impl Span {
    pub const fn secs(secs: i64) -> Span {
        Span(secs * 1000)
    }

    pub fn millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Span {
    /// `1h30m`, `45s`, `0s`; sub-second parts (never written) are dropped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        if secs == 0 {
            return f.write_str("0s");
        }
        for (n, unit) in [
            (secs / 3600, "h"),
            (secs % 3600 / 60, "m"),
            (secs % 60, "s"),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let secs = crate::pipeline::duration_secs::deserialize(d)?.unwrap_or(0);
        i64::try_from(secs)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .map(Span)
            .ok_or_else(|| de::Error::custom(format!("{secs} seconds is too long")))
    }
}

/// A simulation: the cluster, how the controller is set up, and the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSpec {
    /// Seeds the arrivals and run durations: same seed, same runs.
    #[serde(default)]
    pub seed: u64,
    /// Simulated time.
    pub duration: Span,
    /// The controller's cycle.
    #[serde(default = "default_cycle")]
    pub cycle: Span,
    /// Half-life of the recent usage that fair share counts (the server's default).
    #[serde(default = "default_half_life")]
    pub half_life: Span,
    /// After this wait, a run gets a reservation.
    #[serde(default = "default_starvation_after")]
    pub starvation_after: Span,
    #[serde(default)]
    pub placement: PlacementPolicy,
    /// As in `kind: Pool` documents.
    pub pools: Vec<PoolSpec>,
    /// The agents of static pools, by pool name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, Vec<ResourceSpec>>,
    /// As in `kind: Tenant` documents.
    pub tenants: Vec<TenantSpec>,
    pub workload: Vec<WorkloadSpec>,
}

fn default_cycle() -> Span {
    Span::secs(1)
}

fn default_half_life() -> Span {
    Span::secs(3600)
}

fn default_starvation_after() -> Span {
    Span(Policy::default().starvation_after_ms)
}

/// A stream of runs of one shape from one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub tenant: String,
    /// A priority class (`low`, `normal`, `high`) or a number.
    #[serde(default)]
    pub priority: Priority,
    pub arrival: Arrival,
    /// Stop after this many runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// When the first run may arrive, from the start of the simulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Span>,
    /// When arrivals stop; the end of the simulation when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Span>,
    /// How long each run holds its allocation, drawn uniformly.
    pub duration: RunDuration,
    /// The run's group: `cpu: 500m, memory: 256Mi` when left out, like a step.
    #[serde(default)]
    pub resources: ResourceSpec,
    /// The pools the group may use; any pool when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSelector>,
    /// A second group, admitted together with the first (all or nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangSpec>,
}

/// How runs arrive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// One run every interval.
    Every(Span),
    /// A Poisson process with this mean rate.
    RatePerMin(f64),
    /// This many runs at once, at the start: demand that does not run out.
    Backlog(u64),
}

/// `{min: 30s, max: 5m}`; `max` defaults to `min`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunDuration {
    pub min: Span,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Span>,
}

/// The second group of a gang.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GangSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSelector>,
    #[serde(default)]
    pub resources: ResourceSpec,
}

/// A workload with its priority and sizes resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Workload {
    pub tenant: String,
    pub priority: i32,
    pub arrival: Arrival,
    pub count: Option<u64>,
    pub start: i64,
    pub stop: i64,
    pub min_ms: i64,
    pub max_ms: i64,
    /// One `(selector, resources)` per group.
    pub groups: Vec<(PoolSelector, Resources)>,
}

/// `prefix.path` for an error found inside a part of the spec.
fn within(prefix: &str, e: FieldError) -> FieldError {
    let path = if e.path == "document" {
        prefix.to_string()
    } else {
        format!("{prefix}.{}", e.path)
    };
    FieldError::new(path, e.message)
}

impl SimSpec {
    /// Parses and validates a simulation written as YAML or JSON.
    pub fn from_yaml(text: &str) -> Result<SimSpec, FieldError> {
        SimSpec::parse(parse_single(text, "Simulation")?)
    }

    /// Parses and validates a simulation document (without its `kind`).
    pub fn parse(value: Value) -> Result<SimSpec, FieldError> {
        let spec: SimSpec = from_value(value, "")?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        self.workloads().map(|_| ())
    }

    pub fn policy(&self) -> Policy {
        Policy {
            placement: self.placement,
            starvation_after_ms: self.starvation_after.millis(),
        }
    }

    /// Validates the spec and resolves its workloads.
    pub(crate) fn workloads(&self) -> Result<Vec<Workload>, FieldError> {
        if self.duration.millis() < 1000 {
            return Err(FieldError::new("duration", "must be at least 1s"));
        }
        if self.cycle.millis() < 1000 {
            return Err(FieldError::new("cycle", "must be at least 1s"));
        }
        let cycles = (self.duration.millis() + self.cycle.millis() - 1) / self.cycle.millis();
        if cycles > MAX_CYCLES {
            return Err(FieldError::new(
                "cycle",
                format!(
                    "{} of {} cycles is {cycles} cycles, more than {MAX_CYCLES}: make the cycle longer or the duration shorter",
                    self.duration, self.cycle
                ),
            ));
        }
        self.check_pools()?;
        let mut tenants = BTreeSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            t.validate()
                .map_err(|e| within(&format!("tenants[{i}]"), e))?;
            if !tenants.insert(t.name.as_str()) {
                return Err(FieldError::new(
                    format!("tenants[{i}].name"),
                    format!("tenant {:?} is defined twice", t.name),
                ));
            }
        }
        if tenants.is_empty() {
            return Err(FieldError::new("tenants", "a simulation needs a tenant"));
        }
        if self.workload.is_empty() {
            return Err(FieldError::new("workload", "a simulation needs a workload"));
        }
        self.workload
            .iter()
            .enumerate()
            .map(|(i, w)| {
                w.resolve(self.duration.millis(), &tenants)
                    .map_err(|e| within(&format!("workload[{i}]"), e))
            })
            .collect()
    }

    fn check_pools(&self) -> Result<(), FieldError> {
        if self.pools.is_empty() {
            return Err(FieldError::new("pools", "a simulation needs a pool"));
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            p.validate()
                .map_err(|e| within(&format!("pools[{i}]"), e))?;
            if !names.insert(p.name.as_str()) {
                return Err(FieldError::new(
                    format!("pools[{i}].name"),
                    format!("pool {:?} is defined twice", p.name),
                ));
            }
        }
        for (pool, agents) in &self.agents {
            let is_static = self
                .pools
                .iter()
                .any(|p| &p.name == pool && p.provider == Provider::Static);
            if !is_static {
                return Err(FieldError::new(
                    format!("agents.{pool}"),
                    format!("there is no static pool {pool:?}: only static pools have agents"),
                ));
            }
            for (j, a) in agents.iter().enumerate() {
                for (field, v) in [("cpu", a.cpu), ("memory", a.memory)] {
                    if v.unwrap_or(0) == 0 {
                        return Err(FieldError::new(
                            format!("agents.{pool}[{j}].{field}"),
                            "must be greater than zero",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl WorkloadSpec {
    fn resolve(&self, end: i64, tenants: &BTreeSet<&str>) -> Result<Workload, FieldError> {
        if !tenants.contains(self.tenant.as_str()) {
            let known: Vec<&str> = tenants.iter().copied().collect();
            return Err(FieldError::new(
                "tenant",
                format!(
                    "there is no tenant {:?} (tenants: {})",
                    self.tenant,
                    known.join(", ")
                ),
            ));
        }
        let priority = PriorityClasses::default().resolve(&self.priority)?;
        match self.arrival {
            Arrival::Every(every) if every.millis() < 1000 => {
                return Err(FieldError::new("arrival.every", "must be at least 1s"));
            }
            Arrival::RatePerMin(rate) if !(rate > 0.0 && rate <= 60_000.0) => {
                return Err(FieldError::new(
                    "arrival.rate_per_min",
                    format!("{rate} is not a rate (more than 0, at most 60000)"),
                ));
            }
            Arrival::Backlog(n) if n == 0 || n > MAX_BACKLOG => {
                return Err(FieldError::new(
                    "arrival.backlog",
                    format!("{n} is not a backlog (1 to {MAX_BACKLOG} runs)"),
                ));
            }
            _ if self.count == Some(0) => {
                return Err(FieldError::new("count", "must be at least 1"));
            }
            Arrival::Backlog(_) if self.count.is_some() => {
                return Err(FieldError::new(
                    "count",
                    "a backlog is already a number of runs: leave count out",
                ));
            }
            _ => {}
        }
        let start = self.start.map_or(0, Span::millis);
        if start >= end {
            return Err(FieldError::new(
                "start",
                "must be before the end of the simulation",
            ));
        }
        let stop = self.stop.map_or(end, Span::millis).min(end);
        if stop <= start {
            return Err(FieldError::new("stop", "must be after start"));
        }
        let min_ms = self.duration.min.millis();
        if min_ms < 1000 {
            return Err(FieldError::new("duration.min", "must be at least 1s"));
        }
        let max_ms = self.duration.max.map_or(min_ms, Span::millis);
        if max_ms < min_ms {
            return Err(FieldError::new(
                "duration.max",
                format!("must be at least min ({})", self.duration.min),
            ));
        }
        let mut groups = vec![(
            self.pool.clone().unwrap_or_default(),
            self.resources.or(DEFAULT_STEP_RESOURCES),
        )];
        if let Some(gang) = &self.gang {
            groups.push((
                gang.pool.clone().unwrap_or_default(),
                gang.resources.or(DEFAULT_STEP_RESOURCES),
            ));
        }
        Ok(Workload {
            tenant: self.tenant.clone(),
            priority,
            arrival: self.arrival,
            count: self.count,
            start,
            stop,
            min_ms,
            max_ms,
            groups,
        })
    }
}

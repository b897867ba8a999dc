//! Pools: named capacity for workers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FieldError, FieldErrors, check_name};
use crate::manifest::read_all;
use crate::money::Money;
use crate::resources::{MAX_QUANTITY, ResourceSpec, ResourceTime, Resources};
use crate::selector::check_label;

/// Who creates the workers of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Agent processes spawned on the server's host.
    #[default]
    Local,
    /// Agents started by operators that register into the pool.
    Static,
    /// Ephemeral pods.
    Kubernetes,
}

/// Whether a pool takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    #[default]
    Active,
    Draining,
    Disabled,
}

impl PoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Active => "active",
            PoolState::Draining => "draining",
            PoolState::Disabled => "disabled",
        }
    }
}

/// The largest price of one resource-hour (a core, a GiB or a gpu for an
/// hour). At it, one resource held for a 31-day month costs 7.44e8 units
/// (7.44e14 micro-units), so an `i64` of micro-units holds over 12,000 such
/// resource-months before a sum saturates (every sum of money saturates, see
/// [`crate::money`]).
pub const MAX_PRICE: f64 = 1_000_000.0;

/// Price per resource-hour, in the operator's currency.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub cpu_hour: f64,
    #[serde(default)]
    pub memory_gib_hour: f64,
    #[serde(default)]
    pub gpu_hour: f64,
}

impl Price {
    /// What `need` costs per hour at these prices.
    pub fn hourly_cost(&self, need: &Resources) -> f64 {
        let cpu = need.cpu_millis as f64 / 1000.0;
        let gib = need.memory_mib as f64 / 1024.0;
        cpu * self.cpu_hour + gib * self.memory_gib_hour + need.gpu as f64 * self.gpu_hour
    }

    /// What holding `held` for `duration_ms` costs at these prices (nothing for a
    /// negative duration). See [`Price::cost_of`].
    pub fn cost(&self, held: &Resources, duration_ms: i64) -> Money {
        self.cost_of(&ResourceTime::held(held, duration_ms))
    }

    /// What `time` costs at these prices, rounded once, to the nearest micro-unit
    /// (half away from zero).
    ///
    /// Each price is taken to the nano-unit per resource-hour (9 decimals); the
    /// three dimensions are then summed exactly, over the common denominator of
    /// core-hours, GiB-hours and gpu-hours in base units times milliseconds, so the
    /// only rounding is the last one. Amounts too large for an `i64` of
    /// micro-units saturate.
    pub fn cost_of(&self, time: &ResourceTime) -> Money {
        // Per resource-hour in nano-units; `as` clamps (and sends NaN to zero).
        let nanos = |price: f64| (price * 1e9).round() as i128;
        // A core-hour is 3.6e9 millicore-ms, a GiB-hour 3.6864e9 MiB-ms, a
        // gpu-hour 3.6e6 gpu-ms; their least common multiple is 4.608e11.
        const DENOMINATOR: i128 = 460_800_000_000;
        let terms = [
            (
                nanos(self.cpu_hour),
                time.cpu_milli_ms,
                DENOMINATOR / 3_600_000_000,
            ),
            (
                nanos(self.memory_gib_hour),
                time.memory_mib_ms,
                DENOMINATOR / 3_686_400_000,
            ),
            (nanos(self.gpu_hour), time.gpu_ms, DENOMINATOR / 3_600_000),
        ];
        let numerator = terms.iter().fold(0i128, |acc, &(price, amount, scale)| {
            acc.saturating_add(price.saturating_mul(amount).saturating_mul(scale))
        });
        // Nano-units over the denominator, to micro-units: a thousand more.
        let divisor = DENOMINATOR * 1000;
        let half = divisor / 2;
        let micros = if numerator >= 0 {
            numerator.saturating_add(half) / divisor
        } else {
            numerator.saturating_sub(half) / divisor
        };
        Money::saturating_from_i128(micros)
    }
}

/// A pool as written by an operator (kind `Pool`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    #[serde(default)]
    pub provider: Provider,
    /// Required for `local` pools; a `static` pool's capacity is the sum of its
    /// live agents' and is not written.
    #[serde(default)]
    pub capacity: ResourceSpec,
    #[serde(default = "default_max_workers")]
    pub max_workers: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub price: Price,
    #[serde(default)]
    pub state: PoolState,
    /// The most one agent of this pool may declare (a static pool's agents);
    /// a field left out is bounded by the server's `--max-agent` only.
    #[serde(default, skip_serializing_if = "ResourceSpec::is_unset")]
    pub max_agent: ResourceSpec,
    /// Agents that cannot confine their steps (namespaces and a cgroup with
    /// limits) are refused at registration.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_confinement: bool,
}

fn default_max_workers() -> u32 {
    16
}

impl PoolSpec {
    /// Parses and validates a pool document (without its `kind`), with every
    /// problem it has.
    pub fn parse(value: Value) -> Result<PoolSpec, FieldErrors> {
        let (spec, problems) = PoolSpec::read(value);
        FieldErrors::check(spec, problems)
    }

    /// A pool document read as far as it can be, with every problem found
    /// (see [`read_all`]).
    pub fn read(value: Value) -> (Option<PoolSpec>, Vec<FieldError>) {
        read_all(value, PoolSpec::problems)
    }

    /// The first problem of the pool, if it has one.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem of the pool, each with its field.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if let Err(e) = check_name("name", &self.name) {
            problems.push(e);
        }
        match self.provider {
            Provider::Local => {
                if self.capacity.cpu.unwrap_or(0) == 0 {
                    problems.push(FieldError::new("capacity.cpu", "must be greater than zero"));
                }
                if self.capacity.memory.unwrap_or(0) == 0 {
                    problems.push(FieldError::new(
                        "capacity.memory",
                        "must be greater than zero",
                    ));
                }
            }
            Provider::Static => {
                if self.capacity != ResourceSpec::default() {
                    problems.push(FieldError::new(
                        "capacity",
                        "a static pool's capacity is the sum of its live agents: leave it out",
                    ));
                }
            }
            Provider::Kubernetes => {
                problems.push(FieldError::new(
                    "provider",
                    "provider kubernetes is not available yet (supported: local, static)",
                ));
            }
        }
        if let Some(gpu) = self.capacity.gpu.filter(|g| *g > MAX_QUANTITY) {
            problems.push(FieldError::new(
                "capacity.gpu",
                format!("{gpu} is too large"),
            ));
        }
        if self.max_workers == 0 {
            problems.push(FieldError::new("max_workers", "must be at least 1"));
        }
        for (key, value) in &self.labels {
            if let Err(e) = check_label("labels", key, value) {
                problems.push(e);
            }
        }
        for (field, value) in [
            ("max_agent.cpu", self.max_agent.cpu),
            ("max_agent.memory", self.max_agent.memory),
            ("max_agent.gpu", self.max_agent.gpu),
        ] {
            match value {
                Some(0) => problems.push(FieldError::new(field, "must be greater than zero")),
                Some(v) if v > MAX_QUANTITY => {
                    problems.push(FieldError::new(field, format!("{v} is too large")));
                }
                _ => {}
            }
        }
        for (field, v) in [
            ("price.cpu_hour", self.price.cpu_hour),
            ("price.memory_gib_hour", self.price.memory_gib_hour),
            ("price.gpu_hour", self.price.gpu_hour),
        ] {
            if !v.is_finite() || v < 0.0 {
                problems.push(FieldError::new(
                    field,
                    format!("{v} is not a price (a number zero or more)"),
                ));
            } else if v > MAX_PRICE {
                problems.push(FieldError::new(
                    field,
                    format!("{} is above the largest price, {MAX_PRICE}", short(v)),
                ));
            }
        }
        problems
    }

    /// The written capacity (zero for a static pool, whose agents bring theirs).
    pub fn capacity(&self) -> Resources {
        self.capacity.or(Resources::ZERO)
    }
}

/// A number as written in an error: `1e300`, not its 301 digits.
fn short(v: f64) -> String {
    if v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The first problem, as the tests below look at one at a time.
    fn parse(value: Value) -> Result<PoolSpec, FieldError> {
        PoolSpec::parse(value).map_err(|e| e.first().clone())
    }

    #[test]
    fn every_problem_is_found_at_once() {
        let err = PoolSpec::parse(json!({
            "name": "bad name", "capacity": {"cpu": "2x", "memory": true},
            "max_workers": -3, "labels": {"os": "lin ux"},
            "price": {"gpu_hour": -1}, "max_agent": {"cpu": 0}, "colour": 1
        }))
        .expect_err("invalid");
        let found: Vec<String> = err.all().iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "capacity.cpu: \"2x\" is not a cpu quantity (examples: 500m, 2, 1.5)",
                "capacity.memory: must be a memory quantity such as 512Mi or 4Gi, not true",
                "colour: unknown field `colour`, expected one of `name`, `provider`, `capacity`, `max_workers`, `labels`, `price`, `state`, `max_agent`, `require_confinement`",
                "max_workers: must be a whole number from 0 to 4294967295, not -3",
                "name: \"bad name\" is not a valid name (1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit)",
                "labels.os: ' ' is not allowed in a label value (letters, digits, '-', '_' and '.')",
                "max_agent.cpu: must be greater than zero",
                "price.gpu_hour: -1 is not a price (a number zero or more)",
            ],
            "{err:?}"
        );
        assert_eq!(err.to_string(), found[0], "reads as its first problem");
    }

    #[test]
    fn parses_the_design_example() {
        let spec = parse(json!({
            "name": "linux-small", "provider": "local",
            "capacity": {"cpu": 8, "memory": "16Gi"}, "max_workers": 8,
            "labels": {"os": "linux"},
            "price": {"cpu_hour": 0.04, "memory_gib_hour": 0.005}
        }))
        .expect("valid pool");
        assert_eq!(spec.capacity(), Resources::new(8000, 16384, 0));
        assert_eq!(spec.state, PoolState::Active);
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse(json!({"name": "p", "capacity": {"cpu": "8x", "memory": "1Gi"}}))
            .expect_err("bad cpu");
        assert_eq!(err.path, "capacity.cpu");
        let err = parse(json!({"name": "p", "capacity": {"cpu": 1, "memory": "1Gi"}, "colour": 1}))
            .expect_err("unknown field");
        assert!(err.message.contains("colour"), "{err}");
        let err = parse(json!({"name": "p", "capacity": {"cpu": 0, "memory": "1Gi"}}))
            .expect_err("zero cpu");
        assert_eq!(err.path, "capacity.cpu");
        let err = parse(json!({"name": "p", "capacity": {"cpu": 1, "memory": "1Gi"}, "price": {"cpu_hour": -1}}))
            .expect_err("negative price");
        assert_eq!(err.path, "price.cpu_hour");
        let err = parse(json!({"name": "p", "capacity": {"cpu": 1, "memory": "1Gi"}, "price": {"gpu_hour": 1e300}}))
            .expect_err("too dear");
        assert_eq!(
            (err.path.as_str(), err.message.as_str()),
            (
                "price.gpu_hour",
                "1e300 is above the largest price, 1000000"
            )
        );
        parse(json!({"name": "p", "capacity": {"cpu": 1, "memory": "1Gi"}, "price": {"cpu_hour": MAX_PRICE}}))
            .expect("the largest price");
        let err = parse(json!({"name": "p", "provider": "static", "capacity": {"cpu": 1}}))
            .expect_err("static with capacity");
        assert_eq!(err.path, "capacity");
        let err = parse(
            json!({"name": "p", "provider": "kubernetes", "capacity": {"cpu": 1, "memory": "1Gi"}}),
        )
        .expect_err("kubernetes");
        assert_eq!(err.path, "provider");
    }

    #[test]
    fn labels_are_names_with_values_free_of_nul() {
        let pool =
            |labels: Value| parse(json!({"name": "p", "provider": "static", "labels": labels}));
        assert!(pool(json!({"os": "linux"})).is_ok());
        let err = pool(json!({"os": "lin\0ux"})).expect_err("NUL in a value");
        assert_eq!(err.to_string(), "labels.os: the value contains a NUL byte");
        let err = pool(json!({"o\0s": "linux"})).expect_err("NUL in a key");
        assert_eq!(err.path, "labels.o\\0s");
        assert!(err.message.contains("not a valid name"), "{err}");
    }

    #[test]
    fn costs_are_exact_and_rounded_once() {
        let price = Price {
            cpu_hour: 0.04,
            memory_gib_hour: 0.005,
            gpu_hour: 2.5,
        };
        let hour = 3_600_000;
        let cost = |r: Resources, ms: i64| price.cost(&r, ms).micros();
        assert_eq!(cost(Resources::new(1000, 0, 0), hour), 40_000);
        assert_eq!(cost(Resources::new(0, 1024, 0), hour), 5_000);
        assert_eq!(cost(Resources::new(0, 0, 1), hour), 2_500_000);
        // The design's envelope {cpu: 3, memory: 4Gi} for ten hours.
        assert_eq!(cost(Resources::new(3000, 4096, 0), 10 * hour), 1_400_000);
        // A second of one core costs 11.1 micro-units, rounded to 11.
        assert_eq!(cost(Resources::new(1000, 0, 0), 1000), 11);
        // Half a micro-unit rounds up; 0.35 of one in each dimension rounds to
        // nothing alone, but the piece is rounded once: 0.7, one micro-unit.
        let tiny = Price {
            cpu_hour: 0.0018,
            memory_gib_hour: 0.0018,
            gpu_hour: 0.0,
        };
        let r = Resources::new(1000, 1024, 0);
        assert_eq!(tiny.cost(&Resources::new(1000, 0, 0), 1000).micros(), 1);
        assert_eq!(tiny.cost(&Resources::new(0, 1024, 0), 1000).micros(), 1);
        assert_eq!(tiny.cost(&Resources::new(1000, 0, 0), 700).micros(), 0);
        assert_eq!(tiny.cost(&r, 700).micros(), 1);
        assert_eq!(price.cost(&r, -1), Money::ZERO);
        let huge = Resources::new(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(price.cost(&huge, i64::MAX), Money::MAX);
        let negative = ResourceTime::ZERO.saturating_sub(&ResourceTime::held(&r, hour));
        assert_eq!(price.cost_of(&negative).micros(), -45_000);
    }

    #[test]
    fn static_pools_have_no_written_capacity() {
        let spec = parse(json!({"name": "metal", "provider": "static"})).expect("valid");
        assert_eq!(spec.capacity(), Resources::ZERO);
        assert_eq!(spec.provider, Provider::Static);
    }
}

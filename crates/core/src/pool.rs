//! Pools: named capacity for workers.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::error::{FieldError, FieldErrors, check_name};
use crate::manifest::read_all;
use crate::money::Money;
use crate::resources::{MAX_QUANTITY, ResourceSpec, ResourceTime, Resources};
use crate::selector::check_label;

pub mod kubernetes;

pub use kubernetes::KubernetesPool;

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

/// A pool's capacity as written: resources, or `auto` (a `kubernetes` pool
/// sized by its provider from the nodes it may use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolCapacity {
    Written(ResourceSpec),
    /// What the provider finds, refreshed periodically.
    Auto,
}

impl Default for PoolCapacity {
    /// Nothing written.
    fn default() -> Self {
        PoolCapacity::Written(ResourceSpec::default())
    }
}

impl From<ResourceSpec> for PoolCapacity {
    fn from(spec: ResourceSpec) -> Self {
        PoolCapacity::Written(spec)
    }
}

impl From<Resources> for PoolCapacity {
    fn from(r: Resources) -> Self {
        PoolCapacity::Written(r.into())
    }
}

impl Serialize for PoolCapacity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PoolCapacity::Written(spec) => spec.serialize(s),
            PoolCapacity::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for PoolCapacity {
    /// `auto`, or resources read field by field (so a bad one is named by
    /// its path, `capacity.cpu`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PoolCapacity, D::Error> {
        struct Capacity;
        impl<'de> Visitor<'de> for Capacity {
            type Value = PoolCapacity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("resources such as {cpu: 8, memory: 16Gi}, or auto")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PoolCapacity, E> {
                match v {
                    "auto" => Ok(PoolCapacity::Auto),
                    _ => Err(E::custom(format!(
                        "must be resources such as {{cpu: 8, memory: 16Gi}}, or auto, not {v:?}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PoolCapacity, A::Error> {
                ResourceSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(PoolCapacity::Written)
            }
        }
        d.deserialize_any(Capacity)
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
    /// live agents' and is not written; a `kubernetes` pool's is written or
    /// `auto`.
    #[serde(default)]
    pub capacity: PoolCapacity,
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
    /// Where a `kubernetes` pool's pods go; required for those, and only those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesPool>,
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
        let written = match self.capacity {
            PoolCapacity::Written(spec) => Some(spec),
            PoolCapacity::Auto => None,
        };
        match (self.provider, written) {
            (Provider::Local | Provider::Kubernetes, Some(spec)) => {
                let or_auto = match self.provider {
                    Provider::Kubernetes => " (or capacity: auto)",
                    _ => "",
                };
                if spec.cpu.unwrap_or(0) == 0 {
                    problems.push(FieldError::new(
                        "capacity.cpu",
                        format!("must be greater than zero{or_auto}"),
                    ));
                }
                if spec.memory.unwrap_or(0) == 0 {
                    problems.push(FieldError::new(
                        "capacity.memory",
                        format!("must be greater than zero{or_auto}"),
                    ));
                }
            }
            (Provider::Static, Some(spec)) => {
                if spec != ResourceSpec::default() {
                    problems.push(FieldError::new(
                        "capacity",
                        "a static pool's capacity is the sum of its live agents: leave it out",
                    ));
                }
            }
            (Provider::Kubernetes, None) => {}
            (Provider::Local | Provider::Static, None) => {
                problems.push(FieldError::new(
                    "capacity",
                    "capacity: auto is only for kubernetes pools",
                ));
            }
        }
        match (self.provider, &self.kubernetes) {
            (Provider::Kubernetes, Some(section)) => problems.extend(section.problems()),
            (Provider::Kubernetes, None) => problems.push(FieldError::new(
                "kubernetes",
                "is required for a kubernetes pool (namespace and image at least)",
            )),
            (_, Some(_)) => problems.push(FieldError::new(
                "kubernetes",
                "only a kubernetes pool takes this section (provider: kubernetes)",
            )),
            (_, None) => {}
        }
        if let Some(gpu) = written.and_then(|c| c.gpu).filter(|g| *g > MAX_QUANTITY) {
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

    /// The written capacity (zero for a static pool, whose agents bring
    /// theirs, and for `capacity: auto`, which its provider finds).
    pub fn capacity(&self) -> Resources {
        match self.capacity {
            PoolCapacity::Written(spec) => spec.or(Resources::ZERO),
            PoolCapacity::Auto => Resources::ZERO,
        }
    }

    /// Whether the pool says `capacity: auto`: its provider sizes it.
    pub fn auto_capacity(&self) -> bool {
        self.capacity == PoolCapacity::Auto
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
                "colour: unknown field `colour`, expected one of `name`, `provider`, `capacity`, `max_workers`, `labels`, `price`, `state`, `max_agent`, `require_confinement`, `kubernetes`",
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
        .expect_err("kubernetes without its section");
        assert_eq!(err.path, "kubernetes");
    }

    /// A kubernetes pool with `section` merged over a valid one.
    fn kube_pool(capacity: Value, section: Value) -> Result<PoolSpec, FieldErrors> {
        let mut kubernetes =
            json!({"namespace": "corral-workers", "image": "registry.example/corral:0.4"});
        if let (Value::Object(base), Value::Object(extra)) = (&mut kubernetes, section) {
            base.extend(extra);
        }
        PoolSpec::parse(json!({
            "name": "k8s", "provider": "kubernetes", "capacity": capacity, "kubernetes": kubernetes
        }))
    }

    #[test]
    fn parses_the_issues_kubernetes_pool() {
        let spec = kube_pool(
            json!({"cpu": 16, "memory": "64Gi"}),
            json!({
                "service_account": "corral-worker", "node_selector": {"node-pool": "ci"},
                "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}],
                "image_pull_secrets": ["regcred", {"name": "other"}],
                "pod_template": {"metadata": {"annotations": {"a": "b"}}}
            }),
        )
        .expect("valid pool");
        assert_eq!(spec.capacity(), Resources::new(16_000, 65_536, 0));
        assert!(!spec.auto_capacity());
        let k = spec.kubernetes.as_ref().expect("the section");
        assert_eq!(k.image_pull_secrets, ["regcred", "other"]);
        assert_eq!(k.gpu_resource, "nvidia.com/gpu");
        assert_eq!(k.node_selector["node-pool"], "ci");
        let again: PoolSpec =
            serde_json::from_value(serde_json::to_value(&spec).expect("serializes"))
                .expect("reads back");
        assert_eq!(again, spec, "round trip");

        let auto = kube_pool(json!("auto"), json!({})).expect("capacity: auto");
        assert!(auto.auto_capacity());
        assert_eq!(auto.capacity(), Resources::ZERO, "nothing written");
        assert_eq!(
            serde_json::to_value(&auto).expect("serializes")["capacity"],
            json!("auto")
        );
    }

    #[test]
    fn kubernetes_sections_name_the_field_of_each_problem() {
        let long = "a".repeat(64);
        let deep = (0..20).fold(json!(1), |v, _| json!({"x": v}));
        let cases: Vec<(Value, Value, &str, &str)> = vec![
            (
                json!({"namespace": "Corral"}),
                json!("auto"),
                "kubernetes.namespace",
                "'C' is not allowed",
            ),
            (
                json!({"namespace": long}),
                json!("auto"),
                "kubernetes.namespace",
                "longer than 63",
            ),
            (
                json!({"namespace": "-x"}),
                json!("auto"),
                "kubernetes.namespace",
                "start and end",
            ),
            (
                json!({"image": ""}),
                json!("auto"),
                "kubernetes.image",
                "is required",
            ),
            (
                json!({"image": "a b"}),
                json!("auto"),
                "kubernetes.image",
                "' ' is not allowed",
            ),
            (
                json!({"image": "a".repeat(1025)}),
                json!("auto"),
                "kubernetes.image",
                "longer than 1024",
            ),
            (
                json!({"service_account": "a..b"}),
                json!("auto"),
                "kubernetes.service_account",
                "is empty",
            ),
            (
                json!({"node_selector": {"bad key!": "x"}}),
                json!("auto"),
                "kubernetes.node_selector.bad key!",
                "not a label key",
            ),
            (
                json!({"node_selector": {"ex.com/pool": "-ci"}}),
                json!("auto"),
                "kubernetes.node_selector.ex.com/pool",
                "not a label value",
            ),
            (
                json!({"node_selector": {"Ex_.com/pool": "ci"}}),
                json!("auto"),
                "kubernetes.node_selector.Ex_.com/pool",
                "its prefix",
            ),
            (
                json!({"tolerations": [{"key": "a"}, 3]}),
                json!("auto"),
                "kubernetes.tolerations[1]",
                "a mapping",
            ),
            (
                json!({"tolerations": (0..33).map(|_| json!({})).collect::<Vec<_>>()}),
                json!("auto"),
                "kubernetes.tolerations",
                "more than the 32",
            ),
            (
                json!({"image_pull_secrets": [{"nom": "x"}]}),
                json!("auto"),
                "kubernetes.image_pull_secrets[0].nom",
                "unknown field",
            ),
            (
                json!({"image_pull_secrets": [7]}),
                json!("auto"),
                "kubernetes.image_pull_secrets[0]",
                "a secret name",
            ),
            (
                json!({"image_pull_secrets": ["Reg"]}),
                json!("auto"),
                "kubernetes.image_pull_secrets[0]",
                "not a secret name",
            ),
            (
                json!({"image_pull_secrets": (0..17).map(|i| format!("s{i}")).collect::<Vec<_>>()}),
                json!("auto"),
                "kubernetes.image_pull_secrets",
                "more than the 16",
            ),
            (
                json!({"pod_template": []}),
                json!("auto"),
                "kubernetes.pod_template",
                "a mapping",
            ),
            (
                json!({"pod_template": deep}),
                json!("auto"),
                "kubernetes.pod_template",
                "nests 20 levels deep",
            ),
            (
                json!({"pod_template": {"spec": {"x": "y".repeat(70_000)}}}),
                json!("auto"),
                "kubernetes.pod_template",
                "more than the 65536",
            ),
            (
                json!({"gpu_resource": "gpu"}),
                json!("auto"),
                "kubernetes.gpu_resource",
                "a domain and a name",
            ),
            (
                json!({"gpu_resource": "x.kubernetes.io/gpu"}),
                json!("auto"),
                "kubernetes.gpu_resource",
                "kubernetes.io",
            ),
            (
                json!({"colour": 1}),
                json!("auto"),
                "kubernetes.colour",
                "unknown field",
            ),
            (
                json!({}),
                json!({"cpu": 0, "memory": "1Gi"}),
                "capacity.cpu",
                "or capacity: auto",
            ),
            (json!({}), json!("big"), "capacity", "or auto, not \"big\""),
            (
                json!({}),
                json!({"cpu": "2x"}),
                "capacity.cpu",
                "not a cpu quantity",
            ),
        ];
        for (section, capacity, path, message) in cases {
            let err = kube_pool(capacity, section.clone()).expect_err("invalid");
            let found = err.first();
            assert_eq!(found.path, path, "{section}: {err:?}");
            assert!(found.message.contains(message), "{section}: {found}");
        }
        let missing = PoolSpec::parse(
            json!({"name": "k", "provider": "kubernetes", "capacity": "auto",
            "kubernetes": {"image": "x"}}),
        )
        .expect_err("no namespace");
        assert_eq!(
            missing.first().to_string(),
            "kubernetes.namespace: is required"
        );
    }

    #[test]
    fn only_kubernetes_pools_take_its_section_and_auto_capacity() {
        let section = json!({"namespace": "ns", "image": "img"});
        let cases = [
            (
                json!({"name": "p", "capacity": "auto"}),
                "capacity",
                "only for kubernetes pools",
            ),
            (
                json!({"name": "p", "provider": "static", "capacity": "auto"}),
                "capacity",
                "only for kubernetes pools",
            ),
            (
                json!({"name": "p", "capacity": {"cpu": 1, "memory": "1Gi"}, "kubernetes": section}),
                "kubernetes",
                "only a kubernetes pool",
            ),
            (
                json!({"name": "p", "provider": "kubernetes", "capacity": "auto"}),
                "kubernetes",
                "is required",
            ),
        ];
        for (doc, path, message) in cases {
            let err = parse(doc.clone()).expect_err("invalid");
            assert_eq!(err.path, path, "{doc}");
            assert!(err.message.contains(message), "{doc}: {err}");
        }
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

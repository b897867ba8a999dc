//! Pipelines: DAGs of shell steps that say what they need before they run.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FieldError, check_name};
use crate::limits::Limits;
use crate::manifest::from_value;
use crate::matrix::Matrix;
use crate::resources::{ResourceSpec, Resources};
use crate::selector::{PoolSelector, check_label};

/// A run's priority as written: a class name or a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Priority {
    Value(i32),
    Class(String),
}

impl Default for Priority {
    fn default() -> Self {
        Priority::Class("normal".to_string())
    }
}

/// Named priority classes and their values, configured on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityClasses(pub BTreeMap<String, i32>);

impl Default for PriorityClasses {
    fn default() -> Self {
        PriorityClasses(BTreeMap::from([
            ("low".to_string(), -100),
            ("normal".to_string(), 0),
            ("high".to_string(), 100),
        ]))
    }
}

impl PriorityClasses {
    /// Parses `name=value`.
    pub fn parse_class(text: &str) -> Result<(String, i32), String> {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected NAME=VALUE, e.g. high=100"))?;
        check_name("priority class", name).map_err(|e| e.to_string())?;
        let value = value
            .trim()
            .parse::<i32>()
            .map_err(|_| format!("{text:?}: {value:?} is not a whole number"))?;
        Ok((name.to_string(), value))
    }

    /// The numeric value of a written priority.
    pub fn resolve(&self, priority: &Priority) -> Result<i32, FieldError> {
        match priority {
            Priority::Value(v) => Ok(*v),
            Priority::Class(name) => self.0.get(name).copied().ok_or_else(|| {
                let known: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} ({v})")).collect();
                FieldError::new(
                    "priority",
                    format!(
                        "unknown priority class {name:?} (classes: {}; or a number)",
                        known.join(", ")
                    ),
                )
            }),
        }
    }
}

/// What a step gets when its spec leaves `resources` (or one of its fields) out.
pub const DEFAULT_STEP_RESOURCES: Resources = Resources::new(500, 256, 0);

/// A pipeline as submitted (kind `Pipeline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// A priority class (`low`, `normal`, `high`, or one the server defines) or a
    /// number; higher runs first.
    #[serde(default)]
    pub priority: Priority,
    pub steps: Vec<StepSpec>,
    /// Axes of values: the pipeline stands for one run per combination.
    #[serde(default, skip_serializing_if = "Matrix::is_empty")]
    pub matrix: Matrix,
}

fn default_tenant() -> String {
    "default".to_string()
}

/// One shell step of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// Run as `sh -c`.
    pub run: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    #[serde(default)]
    pub resources: ResourceSpec,
    /// The pool to run on, by name or labels; any pool when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSelector>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds, or a duration such as `90s`, `10m`, `1h30m`.
    #[serde(
        default,
        with = "duration_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<u64>,
    /// How many times a failed attempt is re-run.
    #[serde(default)]
    pub retries: u32,
}

impl StepSpec {
    pub fn resources(&self) -> Resources {
        self.resources.or(DEFAULT_STEP_RESOURCES)
    }
}

/// Parses `90`, `90s`, `10m`, `1h30m` into seconds.
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(secs);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return None;
    }
    Some(total)
}

pub(crate) mod duration_secs {
    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secs) => s.serialize_str(&format!("{secs}s")),
            None => s.serialize_none(),
        }
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 90, 90s, 10m or 1h30m")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u64>, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u64>, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is not a duration (examples: 90s, 10m)")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<u64>, E> {
            super::parse_duration_secs(v).map(Some).ok_or_else(|| {
                E::custom(format!(
                    "{v:?} is not a duration (examples: 90s, 10m, 1h30m)"
                ))
            })
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

/// A validated pipeline: the spec with its `needs` resolved to step indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub spec: PipelineSpec,
    /// `needs[i]` lists the indices of the steps step `i` waits for.
    pub needs: Vec<Vec<usize>>,
}

impl Pipeline {
    /// The longest chain of steps through `needs`, weighing each step by its
    /// `timeout`, in ms: how long a run may take with every step on that chain
    /// running until its timeout (retries left out). `None` when a step has no
    /// timeout: such a step may run for any time, so the critical path is not
    /// bounded by timeouts.
    ///
    /// Linear in steps + needs (a topological order by Kahn's algorithm).
    pub fn critical_path_timeouts_ms(&self) -> Option<i64> {
        let weights: Vec<i64> = self
            .spec
            .steps
            .iter()
            .map(|s| s.timeout.map(secs_to_ms))
            .collect::<Option<_>>()?;
        Some(critical_path(&self.needs, &weights))
    }
}

impl Pipeline {
    /// The specs of the runs one submit of this pipeline makes: one per combination of its
    /// matrix (keeping that combination as its matrix), each `count` times (1..=
    /// [`Limits::max_runs_per_submit`] in all). Nothing is validated again: the copies differ
    /// from the checked pipeline only in their matrix.
    pub fn runs(&self, count: usize, limits: &Limits) -> Result<Vec<PipelineSpec>, FieldError> {
        let max = limits.max_runs_per_submit;
        if !(1..=max).contains(&count) {
            return Err(FieldError::new(
                "count",
                format!("{count} runs; at least 1 and at most {max} are allowed"),
            ));
        }
        let combinations = self.spec.matrix.combinations();
        if combinations.len().saturating_mul(count) > max {
            return Err(FieldError::new(
                "count",
                format!(
                    "{count} runs of each of the matrix's {} combinations make {}; at most {max} are allowed",
                    combinations.len(),
                    combinations.len().saturating_mul(count)
                ),
            ));
        }
        let mut runs = Vec::with_capacity(combinations.len() * count);
        for combination in &combinations {
            let spec = PipelineSpec {
                matrix: Matrix::of(combination),
                ..self.spec.clone()
            };
            runs.extend(std::iter::repeat_n(spec, count));
        }
        Ok(runs)
    }
}

/// Time a run may hold its allocations around each attempt beyond the attempt's
/// timeout: handing the attempt to its agent, the kill at the timeout and the
/// report of its end.
pub const ATTEMPT_SLACK_MS: i64 = 5_000;

/// The longest a run of `steps` (with their `needs` resolved to indices) may
/// hold its allocations: the critical path through `needs`, each step weighing
/// every attempt it may make (`1 + retries`) for its timeout (the server's
/// [`Limits::max_step_secs`] for a step without one, which the agent enforces)
/// plus [`ATTEMPT_SLACK_MS`]. A hard budget admits a run on this bound, not on
/// history. Saturating; linear in steps + needs.
pub fn longest_run_ms(steps: &[StepSpec], needs: &[Vec<usize>], limits: &Limits) -> i64 {
    let weights: Vec<i64> = steps
        .iter()
        .map(|s| {
            let attempt =
                secs_to_ms(limits.step_timeout_secs(s.timeout)).saturating_add(ATTEMPT_SLACK_MS);
            attempt.saturating_mul(i64::from(s.retries).saturating_add(1))
        })
        .collect();
    critical_path(needs, &weights)
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// The heaviest chain through `needs` (`needs[i]`: the steps step `i` waits
/// for), each step weighing `weights[i]`; 0 without steps. Kahn's algorithm.
fn critical_path(needs: &[Vec<usize>], weights: &[i64]) -> i64 {
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); needs.len()];
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    for (i, deps) in needs.iter().enumerate() {
        for &d in deps {
            if let Some(list) = dependents.get_mut(d) {
                list.push(i);
            }
        }
    }
    // finish[i]: the latest a step ends, its own weight after its needs'.
    let mut finish: Vec<i64> = vec![0; needs.len()];
    let mut ready: Vec<usize> = (0..needs.len()).filter(|&i| waiting[i] == 0).collect();
    while let Some(i) = ready.pop() {
        let starts = needs[i]
            .iter()
            .map(|&d| finish.get(d).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        finish[i] = starts.saturating_add(weights.get(i).copied().unwrap_or(0));
        for &j in &dependents[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(j);
            }
        }
    }
    finish.into_iter().max().unwrap_or(0)
}

impl PipelineSpec {
    /// A digest of what decides how long a run takes: each step's name,
    /// command, needs, resources, pool, timeout and retries (64-bit FNV-1a of
    /// their JSON). Estimates learn from the runs of a pipeline with the same
    /// name and digest, so runs of other steps under the same name do not
    /// teach them. Stable: the same steps give the same digest on every build.
    pub fn content_key(&self) -> u64 {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let r = s.resources();
                serde_json::json!([
                    s.name,
                    s.run,
                    s.needs,
                    [r.cpu_millis, r.memory_mib, r.gpu],
                    s.pool,
                    s.timeout,
                    s.retries
                ])
            })
            .collect();
        let text = Value::Array(steps).to_string();
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash: u64, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Parses a pipeline document (without its `kind`) and validates it within
    /// [`Limits::default`].
    pub fn parse(value: Value) -> Result<PipelineSpec, FieldError> {
        let spec: PipelineSpec = from_value(value, "")?;
        spec.resolve(&Limits::default())?;
        Ok(spec)
    }

    /// Validates the spec within [`Limits::default`] and resolves its DAG; see
    /// [`PipelineSpec::compile_with`].
    pub fn compile(self) -> Result<Pipeline, FieldError> {
        self.compile_with(&Limits::default())
    }

    /// Validates the spec within `limits` and resolves its DAG. The step count is checked
    /// first; the rest takes time linear in the spec's size (up to sorting each step's needs
    /// and `O(log)` lookups of names and selectors).
    pub fn compile_with(self, limits: &Limits) -> Result<Pipeline, FieldError> {
        let needs = self.resolve(limits)?;
        Ok(Pipeline { spec: self, needs })
    }

    /// Validates the spec and resolves each step's `needs` to step indices.
    fn resolve(&self, limits: &Limits) -> Result<Vec<Vec<usize>>, FieldError> {
        limits.check_steps(self.steps.len())?;
        check_name("name", &self.name)?;
        check_name("tenant", &self.tenant)?;
        if self.steps.is_empty() {
            return Err(FieldError::new(
                "steps",
                "a pipeline needs at least one step",
            ));
        }
        let any_pool = PoolSelector::default();
        let mut selectors: BTreeSet<&PoolSelector> = BTreeSet::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            check_name(&format!("steps[{i}].name"), &step.name)?;
            if let Some(first) = index.insert(step.name.as_str(), i) {
                return Err(FieldError::new(
                    format!("steps[{i}].name"),
                    format!("duplicate step name {:?} (also steps[{first}])", step.name),
                ));
            }
            if step.run.trim().is_empty() {
                return Err(FieldError::new(
                    format!("steps[{i}].run"),
                    "must not be empty",
                ));
            }
            let r = step.resources();
            if r.cpu_millis == 0 {
                return Err(FieldError::new(
                    format!("steps[{i}].resources.cpu"),
                    "must be greater than zero",
                ));
            }
            if r.memory_mib == 0 {
                return Err(FieldError::new(
                    format!("steps[{i}].resources.memory"),
                    "must be greater than zero",
                ));
            }
            limits.check_command(i, &step.run)?;
            if let Some(pool) = &step.pool {
                if let Some(name) = &pool.name {
                    check_name(&format!("steps[{i}].pool.name"), name)?;
                }
                for (key, value) in &pool.labels {
                    check_label(&format!("steps[{i}].pool.labels"), key, value)?;
                }
            }
            selectors.insert(step.pool.as_ref().unwrap_or(&any_pool));
            if selectors.len() > limits.max_selectors {
                return Err(FieldError::new(
                    format!("steps[{i}].pool"),
                    format!(
                        "makes {} distinct pool selectors; at most {} are allowed",
                        selectors.len(),
                        limits.max_selectors
                    ),
                ));
            }
            limits.check_env(i, &step.env)?;
            limits.check_timeout(i, step.timeout)?;
        }
        let mut needs = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let mut deps = Vec::with_capacity(step.needs.len());
            for (j, need) in step.needs.iter().enumerate() {
                match index.get(need.as_str()) {
                    Some(&d) if d == i => {
                        return Err(FieldError::new(
                            format!("steps[{i}].needs[{j}]"),
                            format!("step {:?} cannot need itself", step.name),
                        ));
                    }
                    Some(&d) => deps.push(d),
                    None => {
                        return Err(FieldError::new(
                            format!("steps[{i}].needs[{j}]"),
                            format!("unknown step {need:?}"),
                        ));
                    }
                }
            }
            deps.sort_unstable();
            deps.dedup();
            needs.push(deps);
        }
        if let Some(cycle) = find_cycle(&needs) {
            return Err(FieldError::new(
                "steps",
                format!("the needs form a cycle: {}", self.describe_cycle(&cycle)),
            ));
        }
        self.matrix.check(limits, &self.steps)?;
        Ok(needs)
    }

    /// `a -> b -> a`; a long cycle is cut short after its first steps, so that the message
    /// stays readable whatever the pipeline's size.
    fn describe_cycle(&self, cycle: &[usize]) -> String {
        const SHOWN: usize = 8;
        let name = |i: usize| self.steps[i].name.as_str();
        let steps = cycle.len() - 1;
        if steps <= SHOWN {
            let names: Vec<&str> = cycle.iter().map(|&i| name(i)).collect();
            return names.join(" -> ");
        }
        let names: Vec<&str> = cycle[..SHOWN].iter().map(|&i| name(i)).collect();
        format!(
            "{} -> ... ({} more steps) -> {}",
            names.join(" -> "),
            steps - SHOWN,
            name(cycle[0])
        )
    }
}

/// Returns one cycle (first node repeated at the end) if the graph has any.
fn find_cycle(needs: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; needs.len()];
    for root in 0..needs.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS; `path` holds the open nodes with their next edge.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::Open;
        while let Some(&mut (node, ref mut edge)) = path.last_mut() {
            if let Some(&next) = needs[node].get(*edge) {
                *edge += 1;
                match mark[next] {
                    Mark::New => {
                        mark[next] = Mark::Open;
                        path.push((next, 0));
                    }
                    Mark::Open => {
                        let start = path.iter().position(|&(n, _)| n == next).unwrap_or(0);
                        // Edges point from a step to what it needs; report in run order.
                        let mut cycle: Vec<usize> = path[start..].iter().map(|&(n, _)| n).collect();
                        cycle.reverse();
                        cycle.push(cycle[0]);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Pipeline, FieldError> {
        PipelineSpec::parse(v.clone())?;
        from_value::<PipelineSpec>(v, "")?.compile()
    }

    #[test]
    fn resolves_needs() {
        let p = parse(json!({"name": "p", "steps": [
            {"name": "a", "run": "true"},
            {"name": "b", "run": "true", "needs": ["a"]}
        ]}))
        .expect("valid");
        assert_eq!(p.needs, vec![vec![], vec![0]]);
        assert_eq!(p.spec.tenant, "default");
        assert_eq!(p.spec.steps[0].resources(), DEFAULT_STEP_RESOURCES);
    }

    #[test]
    fn the_critical_path_weighs_steps_by_their_timeouts() {
        // build (10m) -> unit (30m) and lint (5m) -> package (2m): 42 minutes.
        let p = parse(json!({"name": "p", "steps": [
            {"name": "package", "run": "x", "needs": ["unit", "lint"], "timeout": "2m"},
            {"name": "lint", "run": "x", "needs": ["build"], "timeout": "5m"},
            {"name": "build", "run": "x", "timeout": "10m"},
            {"name": "unit", "run": "x", "needs": ["build"], "timeout": "30m"},
            {"name": "docs", "run": "x", "timeout": "40m"}
        ]}))
        .expect("valid");
        assert_eq!(p.critical_path_timeouts_ms(), Some(42 * 60_000));
        let mut untimed = p.clone();
        untimed.spec.steps[4].timeout = None;
        assert_eq!(untimed.critical_path_timeouts_ms(), None);
        let long = compile_with(two_chains(10_000), &roomy()).expect("valid");
        assert_eq!(long.critical_path_timeouts_ms(), None);
        let mut timed = long;
        for step in &mut timed.spec.steps {
            step.timeout = Some(1);
        }
        assert_eq!(timed.critical_path_timeouts_ms(), Some(10_000_000));
    }

    #[test]
    fn the_content_key_follows_the_steps_not_the_name_or_env() {
        let spec = |name: &str, run: &str, env: &str| {
            parse(json!({"name": name, "steps": [
                {"name": "a", "run": run, "env": {"X": env}},
                {"name": "b", "run": "true", "needs": ["a"], "pool": {"labels": {"z": "1", "a": "2"}}}
            ]}))
            .expect("valid")
            .spec
        };
        let key = spec("p", "sleep 1", "1").content_key();
        assert_eq!(spec("p", "sleep 1", "1").content_key(), key);
        assert_eq!(spec("q", "sleep 1", "2").content_key(), key);
        assert_ne!(spec("p", "true", "1").content_key(), key);
        let mut timed = spec("p", "sleep 1", "1");
        timed.steps[0].timeout = Some(5);
        assert_ne!(timed.content_key(), key);
        let mut bigger = spec("p", "sleep 1", "1");
        bigger.steps[1].resources.cpu = Some(4000);
        assert_ne!(bigger.content_key(), key);
        // FNV-1a of the empty list of steps, "[]".
        let empty = PipelineSpec {
            steps: Vec::new(),
            ..spec("p", "x", "1")
        };
        assert_eq!(empty.content_key(), 0x0961_2b07_b5ec_b5a5);
    }

    #[test]
    fn the_longest_run_counts_every_attempt_and_the_server_timeout_of_untimed_steps() {
        // a (10s, 2 retries) -> b (no timeout: 60s); c (30s) beside them.
        let p = parse(json!({"name": "p", "steps": [
            {"name": "a", "run": "x", "timeout": 10, "retries": 2},
            {"name": "b", "run": "x", "needs": ["a"]},
            {"name": "c", "run": "x", "timeout": "30s"}
        ]}))
        .expect("valid");
        let limits = Limits {
            max_step_secs: 60,
            ..Limits::default()
        };
        let slack = ATTEMPT_SLACK_MS;
        assert_eq!(
            longest_run_ms(&p.spec.steps, &p.needs, &limits),
            3 * (10_000 + slack) + 60_000 + slack
        );
        let mut retried = p.clone();
        retried.spec.steps[2].retries = 9;
        assert_eq!(
            longest_run_ms(&retried.spec.steps, &retried.needs, &limits),
            10 * (30_000 + slack)
        );
        let mut huge = p;
        huge.spec.steps[0].retries = u32::MAX;
        assert_eq!(
            longest_run_ms(&huge.spec.steps, &huge.needs, &limits),
            (10_000 + slack) * (i64::from(u32::MAX) + 1) + 60_000 + slack
        );
        assert_eq!(longest_run_ms(&[], &[], &limits), 0);
    }

    #[test]
    fn names_the_cycle() {
        let err = parse(json!({"name": "p", "steps": [
            {"name": "a", "run": "true", "needs": ["c"]},
            {"name": "b", "run": "true", "needs": ["a"]},
            {"name": "c", "run": "true", "needs": ["b"]}
        ]}))
        .expect_err("cycle");
        assert_eq!(err.path, "steps");
        assert!(err.message.contains("cycle"), "{err}");
        for name in ["a", "b", "c"] {
            assert!(err.message.contains(name), "{err}");
        }
    }

    /// Two parallel chains of 10,000 steps each, `a0 <- a1 <- ...` and `b0 <- b1 <- ...`.
    fn two_chains(len: usize) -> Value {
        let steps: Vec<Value> = ["a", "b"]
            .iter()
            .flat_map(|chain| {
                (0..len).map(move |i| {
                    let needs: Vec<String> = (i > 0)
                        .then(|| format!("{chain}{}", i - 1))
                        .into_iter()
                        .collect();
                    json!({"name": format!("{chain}{i}"), "run": "true", "needs": needs})
                })
            })
            .collect();
        json!({"name": "p", "steps": steps})
    }

    /// Room for the large pipelines of these tests.
    fn roomy() -> Limits {
        Limits {
            max_steps: 100_000,
            ..Limits::default()
        }
    }

    fn compile_with(doc: Value, limits: &Limits) -> Result<Pipeline, FieldError> {
        from_value::<PipelineSpec>(doc, "")?.compile_with(limits)
    }

    #[test]
    fn twenty_thousand_step_chains_compile() {
        let p = compile_with(two_chains(10_000), &roomy()).expect("valid");
        assert_eq!(p.needs.len(), 20_000);
        assert_eq!(p.needs[0], Vec::<usize>::new());
        assert_eq!(p.needs[9_999], vec![9_998]);
        assert_eq!(p.needs[10_000], Vec::<usize>::new());
        assert_eq!(p.needs[19_999], vec![19_998]);
    }

    #[test]
    fn a_long_cycle_is_named_in_a_short_message() {
        let mut doc = two_chains(10_000);
        doc["steps"][0]["needs"] = json!(["a9999"]);
        let err = compile_with(doc, &roomy()).expect_err("cycle");
        assert_eq!(err.path, "steps");
        assert!(err.message.contains("(9992 more steps)"), "{err}");
        assert!(err.message.len() < 200, "{err}");
    }

    #[test]
    fn the_step_count_is_checked_first() {
        // Over the limit, and with a cycle: the count is what is reported.
        let mut doc = two_chains(501);
        doc["steps"][0]["needs"] = json!(["a500"]);
        let err = parse(doc.clone()).expect_err("too many steps");
        assert_eq!(
            err.to_string(),
            "steps: 1002 steps; at most 1000 are allowed"
        );
        let err = compile_with(doc, &roomy()).expect_err("cycle");
        assert!(err.message.contains("cycle"), "{err}");
        let few = Limits {
            max_steps: 3,
            ..Limits::default()
        };
        assert!(compile_with(two_chains(1), &few).is_ok());
        let err = compile_with(two_chains(2), &few).expect_err("4 steps");
        assert_eq!(err.to_string(), "steps: 4 steps; at most 3 are allowed");
    }

    #[test]
    fn distinct_selectors_are_bounded() {
        // Steps without a pool and with an empty selector are the one "any pool" selector.
        let mut steps = vec![
            json!({"name": "any", "run": "x"}),
            json!({"name": "empty", "run": "x", "pool": {}}),
        ];
        steps.extend(
            (1..32).map(|i| json!({"name": format!("s{i}"), "run": "x", "pool": format!("p{i}")})),
        );
        steps.push(json!({"name": "again", "run": "x", "pool": "p1"}));
        let doc = json!({"name": "p", "steps": steps.clone()});
        assert!(parse(doc).is_ok(), "32 selectors");
        steps.push(json!({"name": "labelled", "run": "x", "pool": {"labels": {"gpu": "a100"}}}));
        let err = parse(json!({"name": "p", "steps": steps})).expect_err("33 selectors");
        assert_eq!(
            err.to_string(),
            "steps[34].pool: makes 33 distinct pool selectors; at most 32 are allowed"
        );
    }

    #[test]
    fn commands_and_environments_fit_an_exec() {
        let step = |fields: Value| {
            let mut step = json!({"name": "a", "run": "make"});
            for (k, v) in fields.as_object().expect("fields") {
                step[k] = v.clone();
            }
            json!({"name": "p", "steps": [{"name": "first", "run": "true"}, step]})
        };
        let long = |n: usize| "x".repeat(n);
        let small = Limits {
            max_command_bytes: 10,
            max_env_bytes: 20,
            ..Limits::default()
        };
        let cases: Vec<(Value, Limits, &str)> = vec![
            (
                json!({"run": "echo a\0b"}),
                Limits::default(),
                "steps[1].run: contains a NUL byte",
            ),
            (
                json!({"run": long(131_072)}),
                Limits::default(),
                "steps[1].run: 131072 bytes; at most 131071 are allowed",
            ),
            (
                json!({"run": long(11)}),
                small,
                "steps[1].run: 11 bytes; at most 10 are allowed",
            ),
            (
                json!({"env": {"": "v"}}),
                Limits::default(),
                "steps[1].env: a variable has an empty name",
            ),
            (
                json!({"env": {"A=B": "v"}}),
                Limits::default(),
                "steps[1].env.A=B: the name contains '='",
            ),
            (
                json!({"env": {"A\0": "v"}}),
                Limits::default(),
                "steps[1].env.A\\0: the name contains a NUL byte",
            ),
            (
                json!({"env": {"1A": "v"}}),
                Limits::default(),
                "steps[1].env.1A: is not a valid environment variable name (letters, digits and '_', not starting with a digit)",
            ),
            (
                json!({"env": {"FOO": "a\0"}}),
                Limits::default(),
                "steps[1].env.FOO: the value contains a NUL byte",
            ),
            (
                json!({"env": {"FOO": long(131_068)}}),
                Limits::default(),
                "steps[1].env.FOO: FOO=VALUE is 131072 bytes; at most 131071 are allowed (Linux's limit for one environment string)",
            ),
            (
                json!({"env": {"A": long(100_000), "B": long(100_000), "C": long(100_000)}}),
                Limits::default(),
                "steps[1].env: 300009 bytes (KEY=VALUE and a NUL per variable); at most 262144 are allowed",
            ),
            (
                json!({"env": {"A": long(10), "B": long(5)}}),
                small,
                "steps[1].env: 21 bytes (KEY=VALUE and a NUL per variable); at most 20 are allowed",
            ),
            (
                json!({"pool": {"labels": {"gpu": "a\0"}}}),
                Limits::default(),
                "steps[1].pool.labels.gpu: the value contains a NUL byte",
            ),
        ];
        for (fields, limits, expected) in cases {
            let err = compile_with(step(fields.clone()), &limits).expect_err("invalid");
            assert_eq!(err.to_string(), expected, "{fields}");
        }
        // Just within every bound.
        let fits = step(json!({
            "run": long(131_071),
            "env": {"FOO": long(131_067), "BAR": long(100_000), "A": long(31_000)}
        }));
        assert!(compile_with(fits, &Limits::default()).is_ok());
        let fits = step(json!({"run": long(10), "env": {"A": long(10), "B": long(4)}}));
        assert!(compile_with(fits, &small).is_ok());
    }

    #[test]
    fn rejects_bad_steps_with_paths() {
        let cases = [
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x"}, {"name": "a", "run": "y"}]}),
                "steps[1].name",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "needs": ["zz"]}]}),
                "steps[0].needs[0]",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "resources": {"cpu": "2x"}}]}),
                "steps[0].resources.cpu",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "resources": {"cpu": 0}}]}),
                "steps[0].resources.cpu",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "resources": {"cpu": -1}}]}),
                "steps[0].resources.cpu",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "resources": {"memory": "0Mi"}}]}),
                "steps[0].resources.memory",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "colour": "red"}]}),
                "steps[0].colour",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "timeout": "soon"}]}),
                "steps[0].timeout",
            ),
            (json!({"name": "p", "steps": []}), "steps"),
        ];
        for (doc, path) in cases {
            let err = parse(doc.clone()).expect_err("invalid");
            assert_eq!(err.path, path, "{doc}: {err}");
        }
    }

    #[test]
    fn priorities_are_classes_or_numbers() {
        let classes = PriorityClasses::default();
        let p =
            parse(json!({"name": "p", "priority": "high", "steps": [{"name": "a", "run": "x"}]}))
                .expect("valid");
        assert_eq!(classes.resolve(&p.spec.priority), Ok(100));
        let p = parse(json!({"name": "p", "priority": 7, "steps": [{"name": "a", "run": "x"}]}))
            .expect("valid");
        assert_eq!(classes.resolve(&p.spec.priority), Ok(7));
        let err = classes
            .resolve(&Priority::Class("urgent".into()))
            .expect_err("unknown class");
        assert_eq!(err.path, "priority");
        assert!(err.message.contains("normal (0)"), "{err}");
        assert_eq!(
            PriorityClasses::parse_class("batch=-5"),
            Ok(("batch".into(), -5))
        );
        assert!(PriorityClasses::parse_class("batch").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration_secs("90"), Some(90));
        assert_eq!(parse_duration_secs("90s"), Some(90));
        assert_eq!(parse_duration_secs("1h30m"), Some(5400));
        assert_eq!(parse_duration_secs("10x"), None);
        assert_eq!(parse_duration_secs("m"), None);
    }

    #[test]
    fn a_submit_makes_one_run_per_combination_count_times() {
        let p = parse(
            json!({"name": "p", "matrix": {"os": ["linux", "mac"], "n": [1, 2, 3]},
            "steps": [{"name": "a", "run": "echo $CORRAL_MATRIX_OS"}]}),
        )
        .expect("valid");
        let runs = p.runs(2, &Limits::default()).expect("12 runs");
        assert_eq!(runs.len(), 12);
        assert_eq!(runs[0], runs[1]);
        assert_ne!(runs[1], runs[2]);
        assert_eq!(
            runs[11].matrix.values(),
            BTreeMap::from([("n".into(), "3".into()), ("os".into(), "mac".into())])
        );
        assert!(runs.iter().all(|r| r.steps == p.spec.steps));
        // A run's spec is a pipeline of its own combination, submitted again as it is.
        let again = parse(serde_json::to_value(&runs[11]).expect("json")).expect("valid");
        assert_eq!(
            again.runs(1, &Limits::default()).expect("one"),
            vec![runs[11].clone()]
        );

        let few = Limits {
            max_runs_per_submit: 10,
            ..Limits::default()
        };
        let err = p.runs(2, &few).expect_err("12 > 10");
        assert_eq!(err.path, "count");
        assert!(err.message.contains("make 12; at most 10"), "{err}");
        for bad in [0, 11] {
            let plain = parse(json!({"name": "p", "steps": [{"name": "a", "run": "true"}]}))
                .expect("valid");
            let err = plain.runs(bad, &few).expect_err("out of range");
            assert_eq!(err.path, "count");
        }
        let err = parse(json!({"name": "p", "matrix": {"os": ["a", 1.5]},
            "steps": [{"name": "a", "run": "true"}]}))
        .expect_err("a fraction");
        assert_eq!(err.path, "matrix.os[1]");
        let err = parse(json!({"name": "p", "matrix": {"os": "linux"},
            "steps": [{"name": "a", "run": "true"}]}))
        .expect_err("not a list");
        assert_eq!(err.path, "matrix.os");
    }
}

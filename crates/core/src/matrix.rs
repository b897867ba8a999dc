//! A pipeline's `matrix:`: named axes of values that stand for one run per combination, like
//! CI matrices and Slurm job arrays. Each run keeps its own combination as a matrix of one
//! value per axis, and its steps see it as `CORRAL_MATRIX_<AXIS>` environment variables.
//!
//! The template is validated once, bounds and environment sizes included; expanding it only
//! copies the spec with one combination, so a submit of 10,000 runs validates one pipeline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::FieldError;
use crate::limits::{Limits, env_entry_bytes};
use crate::pipeline::StepSpec;

/// The prefix of the environment variable that carries an axis's value.
pub const ENV_PREFIX: &str = "CORRAL_MATRIX_";

/// The longest axis name.
pub const MAX_AXIS_NAME: usize = 64;

/// The most bytes of one value, as text.
pub const MAX_VALUE_BYTES: usize = 256;

/// Axes by name, each with its values (strings, whole numbers or booleans).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Matrix(pub BTreeMap<String, Vec<Value>>);

impl Matrix {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A matrix of one combination: what a run of a matrix keeps.
    pub fn of(values: &BTreeMap<String, String>) -> Matrix {
        Matrix(
            values
                .iter()
                .map(|(axis, value)| (axis.clone(), vec![Value::String(value.clone())]))
                .collect(),
        )
    }

    /// Each axis's first value as text: a run's combination (its matrix has one value per
    /// axis); empty without a matrix.
    pub fn values(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|(axis, values)| Some((axis.clone(), text(values.first()?)?)))
            .collect()
    }

    /// The variables a run's steps get: `CORRAL_MATRIX_<AXIS>` (upper-cased) for each axis.
    pub fn env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.values()
            .into_iter()
            .map(|(axis, value)| (env_name(&axis), value))
    }

    /// How many runs the matrix stands for (1 without axes). Checks the bounds, axis names and
    /// values, and that every step's environment stays within bounds with the matrix's
    /// variables added; each error names the field (`matrix.os[3]`).
    pub fn check(&self, limits: &Limits, steps: &[StepSpec]) -> Result<usize, FieldError> {
        if self.0.len() > limits.max_matrix_axes {
            return Err(FieldError::new(
                "matrix",
                format!(
                    "{} axes; at most {} are allowed",
                    self.0.len(),
                    limits.max_matrix_axes
                ),
            ));
        }
        let mut runs: usize = 1;
        let mut env_names: BTreeMap<String, &str> = BTreeMap::new();
        // Per step, the most the matrix adds to its environment: each axis's longest value.
        let mut added: usize = 0;
        for (axis, values) in &self.0 {
            let path = format!("matrix.{}", axis.escape_debug());
            check_axis_name(&path, axis)?;
            if let Some(other) = env_names.insert(env_name(axis), axis) {
                return Err(FieldError::new(
                    path,
                    format!(
                        "gives the same variable {} as axis {other:?}",
                        env_name(axis)
                    ),
                ));
            }
            if values.is_empty() {
                return Err(FieldError::new(path, "an axis needs at least one value"));
            }
            if values.len() > limits.max_runs_per_submit {
                return Err(FieldError::new(
                    path,
                    format!(
                        "{} values; a submit may make at most {} runs",
                        values.len(),
                        limits.max_runs_per_submit
                    ),
                ));
            }
            runs = runs
                .checked_mul(values.len())
                .filter(|&n| n <= limits.max_runs_per_submit)
                .ok_or_else(|| {
                    FieldError::new(
                        "matrix",
                        format!(
                            "makes more than {} runs (the product of its axes' value counts)",
                            limits.max_runs_per_submit
                        ),
                    )
                })?;
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            let mut longest = 0;
            for (i, value) in values.iter().enumerate() {
                let path = format!("{path}[{i}]");
                let value = text(value).ok_or_else(|| {
                    FieldError::new(
                        &path,
                        "must be a string, a whole number or true/false (quote a version: \"1.80\")",
                    )
                })?;
                if value.contains('\0') {
                    return Err(FieldError::new(path, "contains a NUL byte"));
                }
                if value.len() > MAX_VALUE_BYTES {
                    return Err(FieldError::new(
                        path,
                        format!(
                            "{} bytes; at most {MAX_VALUE_BYTES} are allowed",
                            value.len()
                        ),
                    ));
                }
                longest = longest.max(value.len());
                if let Some(first) = seen.insert(value, i) {
                    return Err(FieldError::new(
                        path,
                        format!("repeats {axis}[{first}]; each value makes its runs once"),
                    ));
                }
            }
            added += env_name(axis).len() + 1 + longest + 1;
        }
        if !self.0.is_empty() {
            for (i, step) in steps.iter().enumerate() {
                if let Some(name) = step.env.keys().find(|k| env_names.contains_key(*k)) {
                    return Err(FieldError::new(
                        format!("steps[{i}].env.{name}"),
                        format!("is set by the matrix axis {:?}", env_names[name]),
                    ));
                }
                let total = env_entry_bytes(&step.env) + added;
                if total > limits.env_bytes() {
                    return Err(FieldError::new(
                        format!("steps[{i}].env"),
                        format!(
                            "{total} bytes with the matrix's variables; at most {} are allowed",
                            limits.env_bytes()
                        ),
                    ));
                }
            }
        }
        Ok(runs)
    }

    /// Every combination, the first axis (by name) varying slowest; one empty combination
    /// without axes. For a matrix that passed [`Matrix::check`].
    pub fn combinations(&self) -> Vec<BTreeMap<String, String>> {
        let axes: Vec<(&String, Vec<String>)> = self
            .0
            .iter()
            .map(|(axis, values)| (axis, values.iter().filter_map(text).collect()))
            .collect();
        let mut all = vec![BTreeMap::new()];
        for (axis, values) in axes {
            all = all
                .into_iter()
                .flat_map(|combination| {
                    values.iter().map(move |value| {
                        let mut next = combination.clone();
                        next.insert(axis.clone(), value.clone());
                        next
                    })
                })
                .collect();
        }
        all
    }
}

/// `CORRAL_MATRIX_` and the axis upper-cased.
pub fn env_name(axis: &str) -> String {
    format!("{ENV_PREFIX}{}", axis.to_ascii_uppercase())
}

/// A value as its steps see it; `None` for what a matrix may not hold (a fraction, a list, an
/// object, null).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Letters, digits and `_`, starting with a letter: it becomes part of a variable's name.
fn check_axis_name(path: &str, axis: &str) -> Result<(), FieldError> {
    let valid = axis.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && axis.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(FieldError::new(
            path,
            "is not an axis name (letters, digits and '_', starting with a letter)",
        ));
    }
    if axis.len() > MAX_AXIS_NAME {
        return Err(FieldError::new(
            path,
            format!(
                "the name has {} bytes; at most {MAX_AXIS_NAME} are allowed",
                axis.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn matrix(v: Value) -> Matrix {
        serde_json::from_value(v).expect("a matrix")
    }

    fn step(env: &[(&str, &str)]) -> StepSpec {
        serde_json::from_value(json!({"name": "a", "run": "true", "env":
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()}))
        .expect("a step")
    }

    #[test]
    fn expands_every_combination_once() {
        let m = matrix(json!({"os": ["linux", "mac"], "rust": ["1.80", 2, true]}));
        assert_eq!(m.check(&Limits::default(), &[step(&[])]), Ok(6));
        let all = m.combinations();
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[0],
            BTreeMap::from([
                ("os".into(), "linux".into()),
                ("rust".into(), "1.80".into())
            ])
        );
        assert_eq!(
            all[5],
            BTreeMap::from([("os".into(), "mac".into()), ("rust".into(), "true".into())])
        );
        let one = Matrix::of(&all[4]);
        assert_eq!(one.values(), all[4]);
        assert_eq!(
            one.env().collect::<Vec<_>>(),
            vec![
                ("CORRAL_MATRIX_OS".to_string(), "mac".to_string()),
                ("CORRAL_MATRIX_RUST".to_string(), "2".to_string())
            ]
        );
        assert_eq!(one.combinations(), vec![all[4].clone()]);
        assert_eq!(Matrix::default().combinations(), vec![BTreeMap::new()]);
        assert_eq!(Matrix::default().check(&Limits::default(), &[]), Ok(1));
    }

    #[test]
    fn bad_matrices_are_refused_with_the_field() {
        let limits = Limits {
            max_matrix_axes: 2,
            max_runs_per_submit: 100,
            ..Limits::default()
        };
        let cases = [
            (
                json!({"a": [1], "b": [1], "c": [1]}),
                "matrix",
                "3 axes; at most 2",
            ),
            (
                json!({"os": ["a", "b", "c", 1.5]}),
                "matrix.os[3]",
                "quote a version",
            ),
            (
                json!({"os": ["a", null]}),
                "matrix.os[1]",
                "must be a string",
            ),
            (
                json!({"os": ["a", "b", "a"]}),
                "matrix.os[2]",
                "repeats os[0]",
            ),
            (json!({"os": []}), "matrix.os", "at least one value"),
            (json!({"1os": ["a"]}), "matrix.1os", "not an axis name"),
            (json!({"o-s": ["a"]}), "matrix.o-s", "not an axis name"),
            (
                json!({"os": ["a"], "OS": ["b"]}),
                "matrix.os",
                "CORRAL_MATRIX_OS",
            ),
            (
                json!({"i": (0..101).collect::<Vec<_>>()}),
                "matrix.i",
                "101 values",
            ),
            (
                json!({"i": (0..20).collect::<Vec<_>>(), "j": (0..6).collect::<Vec<_>>()}),
                "matrix",
                "more than 100 runs",
            ),
            (json!({"os": ["a\u{0}"]}), "matrix.os[0]", "NUL"),
            (
                json!({"os": ["x".repeat(257)]}),
                "matrix.os[0]",
                "257 bytes",
            ),
        ];
        for (m, path, message) in cases {
            let err = matrix(m.clone())
                .check(&limits, &[step(&[])])
                .expect_err(&m.to_string());
            assert_eq!(err.path, path, "{m}: {err}");
            assert!(err.message.contains(message), "{m}: {err}");
        }
        let err = matrix(json!({"os": ["a"]}))
            .check(&limits, &[step(&[]), step(&[("CORRAL_MATRIX_OS", "b")])])
            .expect_err("set twice");
        assert_eq!(err.path, "steps[1].env.CORRAL_MATRIX_OS");
        let small = Limits {
            max_env_bytes: 30,
            ..Limits::default()
        };
        let err = matrix(json!({"os": ["a", "a-much-longer-value"]}))
            .check(&small, &[step(&[("X", "1")])])
            .expect_err("too large");
        assert_eq!(err.path, "steps[0].env");
        assert!(err.message.contains("at most 30"), "{err}");
    }
}

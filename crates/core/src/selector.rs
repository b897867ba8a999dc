//! Pool selectors (by name or by labels) and placement policies.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{FieldError, check_name};

/// How the controller picks among the pools (or static agents) that have room.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PlacementPolicy {
    /// The fullest first: keeps whole pools free for large runs.
    #[default]
    Binpack,
    /// The emptiest first: spreads load.
    Spread,
    /// The lowest price for the group's resources, then the fullest.
    Cheapest,
}

impl PlacementPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementPolicy::Binpack => "binpack",
            PlacementPolicy::Spread => "spread",
            PlacementPolicy::Cheapest => "cheapest",
        }
    }

    pub fn parse(text: &str) -> Option<PlacementPolicy> {
        match text {
            "binpack" => Some(PlacementPolicy::Binpack),
            "spread" => Some(PlacementPolicy::Spread),
            "cheapest" => Some(PlacementPolicy::Cheapest),
            _ => None,
        }
    }
}

/// Which pools a step may run on: `pool: linux-small` (by name) or
/// `pool: {labels: {gpu: a100}, placement: cheapest}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
pub struct PoolSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Overrides the server's placement policy for this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    placement: Option<PlacementPolicy>,
}

impl<'de> Deserialize<'de> for PoolSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(name) => Ok(PoolSelector::named(&name)),
            v @ Value::Object(_) => {
                let f: SelectorFields = serde_json::from_value(v).map_err(D::Error::custom)?;
                Ok(PoolSelector {
                    name: f.name,
                    labels: f.labels,
                    placement: f.placement,
                })
            }
            other => Err(D::Error::custom(format!(
                "expected a pool name or {{name, labels, placement}}, got {other}"
            ))),
        }
    }
}

impl PoolSelector {
    pub fn named(name: &str) -> PoolSelector {
        PoolSelector {
            name: Some(name.to_string()),
            ..PoolSelector::default()
        }
    }

    /// Does a pool with this name and these labels match?
    pub fn matches(&self, pool: &str, labels: &BTreeMap<String, String>) -> bool {
        self.name.as_deref().is_none_or(|n| n == pool)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Checks one label of a pool, a selector or an agent, under `path` (e.g. `labels`): the key
/// is a name; the value is empty or up to 63 letters, digits, '-', '_' or '.', as in
/// Kubernetes. Labels reach agents' command lines (`--labels k=v,...`) and environments, so
/// nothing in them may change how those read.
pub fn check_label(path: &str, key: &str, value: &str) -> Result<(), FieldError> {
    check_name(&format!("{path}.{}", key.escape_debug()), key)?;
    let field = || format!("{path}.{key}");
    if value.contains('\0') {
        return Err(FieldError::new(field(), "the value contains a NUL byte"));
    }
    if value.len() > 63 {
        return Err(FieldError::new(
            field(),
            "the value is longer than 63 characters",
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(FieldError::new(
            field(),
            format!("{c:?} is not allowed in a label value (letters, digits, '-', '_' and '.')"),
        ));
    }
    Ok(())
}

impl fmt::Display for PoolSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(name) = &self.name {
            parts.push(format!("pool {name}"));
        }
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("pools labelled {}", labels.join(",")));
        }
        if parts.is_empty() {
            parts.push("any pool".to_string());
        }
        f.write_str(&parts.join(" and "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_values_hold_on_a_command_line() {
        check_label("labels", "os", "linux-6.1_x86.64").expect("a plain value");
        check_label("labels", "os", "").expect("an empty value");
        for bad in ["a,b", "a=b", "a b", "a\0b", &"x".repeat(64)] {
            let err = check_label("labels", "os", bad).expect_err(bad);
            assert_eq!(err.path, "labels.os", "{bad:?}");
        }
    }

    #[test]
    fn parses_names_and_labels() {
        let by_name: PoolSelector = serde_json::from_value(json!("gpu")).expect("name");
        assert_eq!(by_name, PoolSelector::named("gpu"));
        let by_labels: PoolSelector =
            serde_json::from_value(json!({"labels": {"gpu": "a100"}, "placement": "cheapest"}))
                .expect("labels");
        assert_eq!(by_labels.placement, Some(PlacementPolicy::Cheapest));
        let labels = BTreeMap::from([("gpu".to_string(), "a100".to_string())]);
        assert!(by_labels.matches("any", &labels));
        assert!(!by_labels.matches("any", &BTreeMap::new()));
        assert!(serde_json::from_value::<PoolSelector>(json!({"lables": {}})).is_err());
        assert!(serde_json::from_value::<PoolSelector>(json!(3)).is_err());
    }
}

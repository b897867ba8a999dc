//! Tenants: the owners of pipelines, with their quotas and budgets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FieldError, check_name};
use crate::manifest::from_value;
use crate::money::Money;
use crate::resources::{Resources, cpu_quantity, memory_quantity};

/// Limits on the sum of a tenant's open allocations across all pools. A field
/// left out is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    #[serde(
        default,
        with = "cpu_quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<u64>,
    #[serde(
        default,
        with = "memory_quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u64>,
}

impl QuotaSpec {
    /// In base units, `u64::MAX` where unlimited.
    pub fn limits(&self) -> Quota {
        Quota {
            resources: Resources::new(
                self.cpu.unwrap_or(u64::MAX),
                self.memory.unwrap_or(u64::MAX),
                self.gpu.unwrap_or(u64::MAX),
            ),
            runs: self.runs.unwrap_or(u64::MAX),
        }
    }
}

/// A tenant's quota in base units, `u64::MAX` where unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub resources: Resources,
    pub runs: u64,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota {
        resources: Resources::new(u64::MAX, u64::MAX, u64::MAX),
        runs: u64::MAX,
    };
}

/// Whether a budget stops runs or only alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforce {
    /// Crossing the budget raises alerts; runs are still admitted.
    #[default]
    Soft,
    /// A run whose estimate would take the month's spend past the budget waits.
    Hard,
}

impl Enforce {
    /// `soft` or `hard`, as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforce::Soft => "soft",
            Enforce::Hard => "hard",
        }
    }
}

/// The largest monthly budget: a billion units of the operator's currency.
pub const MAX_MONTHLY: Money = Money::from_whole_units(1_000_000_000);

/// The most alert thresholds one budget may have.
pub const MAX_ALERTS: usize = 10;

/// The largest alert threshold, as a fraction of the budget (ten times it).
pub const MAX_ALERT_AT: f64 = 10.0;

/// Money a tenant may spend per UTC calendar month:
/// `budget: {monthly: 500, enforce: hard, alert_at: [0.8, 1.0]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Per calendar month, in units of the operator's currency.
    #[serde(with = "crate::money::units")]
    pub monthly: Money,
    /// `soft` unless written.
    #[serde(default)]
    pub enforce: Enforce,
    /// Fractions of `monthly` at which to alert, increasing, each once a month.
    #[serde(default = "default_alert_at")]
    pub alert_at: Vec<f64>,
}

fn default_alert_at() -> Vec<f64> {
    vec![0.8, 1.0]
}

impl BudgetSpec {
    /// Checks the budget; error paths start with `budget.`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.monthly <= Money::ZERO {
            return Err(FieldError::new(
                "budget.monthly",
                "must be greater than zero",
            ));
        }
        if self.monthly > MAX_MONTHLY {
            return Err(FieldError::new(
                "budget.monthly",
                format!(
                    "{} is more than a budget may be (at most {MAX_MONTHLY})",
                    self.monthly
                ),
            ));
        }
        if self.alert_at.len() > MAX_ALERTS {
            return Err(FieldError::new(
                "budget.alert_at",
                format!(
                    "{} thresholds; at most {MAX_ALERTS} are allowed",
                    self.alert_at.len()
                ),
            ));
        }
        for (i, &at) in self.alert_at.iter().enumerate() {
            let path = || format!("budget.alert_at[{i}]");
            if !(at > 0.0 && at <= MAX_ALERT_AT) {
                return Err(FieldError::new(
                    path(),
                    format!(
                        "{at} is not a threshold (a fraction of the budget, more than 0 and at most {MAX_ALERT_AT})"
                    ),
                ));
            }
            if let Some(&before) = i.checked_sub(1).and_then(|j| self.alert_at.get(j))
                && at <= before
            {
                return Err(FieldError::new(
                    path(),
                    format!(
                        "{at} does not come after {before}: thresholds are listed in increasing order, each once"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A tenant as written by an operator (kind `Tenant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub quota: QuotaSpec,
    /// Pools the tenant may use; all pools when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_pools: Option<Vec<String>>,
    /// Limits on the tenant's open allocations in one pool, by pool name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pool_limits: BTreeMap<String, QuotaSpec>,
    /// Money it may spend per month; no budget when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

fn default_weight() -> u32 {
    1
}

impl TenantSpec {
    /// Parses and validates a tenant document (without its `kind`).
    pub fn parse(value: Value) -> Result<TenantSpec, FieldError> {
        let spec: TenantSpec = from_value(value, "")?;
        spec.validate()?;
        Ok(spec)
    }

    /// A tenant with no limits, as created on first start.
    pub fn unlimited(name: &str) -> TenantSpec {
        TenantSpec {
            name: name.to_string(),
            weight: 1,
            quota: QuotaSpec::default(),
            allowed_pools: None,
            pool_limits: BTreeMap::new(),
            budget: None,
        }
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("name", &self.name)?;
        if self.weight == 0 {
            return Err(FieldError::new("weight", "must be at least 1"));
        }
        if let Some(pools) = &self.allowed_pools {
            for (i, pool) in pools.iter().enumerate() {
                check_name(&format!("allowed_pools[{i}]"), pool)?;
            }
        }
        for pool in self.pool_limits.keys() {
            check_name(&format!("pool_limits.{pool}"), pool)?;
        }
        if let Some(budget) = &self.budget {
            budget.validate()?;
        }
        Ok(())
    }

    pub fn quota(&self) -> Quota {
        self.quota.limits()
    }

    /// The tenant's limits in each pool that has some.
    pub fn pool_limits(&self) -> BTreeMap<String, Quota> {
        self.pool_limits
            .iter()
            .map(|(pool, q)| (pool.clone(), q.limits()))
            .collect()
    }

    pub fn allows_pool(&self, pool: &str) -> bool {
        self.allowed_pools
            .as_ref()
            .is_none_or(|pools| pools.iter().any(|p| p == pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quota_fields_left_out_are_unlimited() {
        let spec = TenantSpec::parse(
            json!({"name": "acme", "weight": 2, "quota": {"cpu": 6, "runs": 10}}),
        )
        .expect("valid tenant");
        let quota = spec.quota();
        assert_eq!(quota.resources.cpu_millis, 6000);
        assert_eq!(quota.resources.memory_mib, u64::MAX);
        assert_eq!(quota.runs, 10);
    }

    #[test]
    fn errors_name_the_field() {
        let err = TenantSpec::parse(json!({"name": "acme", "quota": {"memory": "12GB"}}))
            .expect_err("bad memory");
        assert_eq!(err.path, "quota.memory");
        let err = TenantSpec::parse(json!({"name": "acme", "weight": 0})).expect_err("zero weight");
        assert_eq!(err.path, "weight");
        let err = TenantSpec::parse(json!({"name": "acme", "pool_limits": {"gpu": {"cpu": "x"}}}))
            .expect_err("bad pool limit");
        assert_eq!(err.path, "pool_limits.gpu.cpu");
    }

    #[test]
    fn budgets_default_to_soft_with_two_alerts() {
        let spec = TenantSpec::parse(json!({"name": "acme", "budget": {"monthly": 500}}))
            .expect("valid tenant");
        let budget = spec.budget.expect("a budget");
        assert_eq!(budget.monthly, Money::from_whole_units(500));
        assert_eq!(budget.enforce, Enforce::Soft);
        assert_eq!(budget.alert_at, vec![0.8, 1.0]);
        let spec = TenantSpec::parse(json!({"name": "acme",
            "budget": {"monthly": 12.5, "enforce": "hard", "alert_at": [0.5, 0.9, 1.0, 2.0]}}))
        .expect("valid tenant");
        let budget = spec.budget.clone().expect("a budget");
        assert_eq!(budget.monthly, Money::from_micros(12_500_000));
        assert_eq!(budget.enforce.as_str(), "hard");
        let back = TenantSpec::parse(serde_json::to_value(&spec).expect("json")).expect("valid");
        assert_eq!(back, spec);
        let none = TenantSpec::parse(json!({"name": "acme"})).expect("valid tenant");
        assert_eq!(none.budget, None);
        assert!(
            serde_json::to_value(&none)
                .expect("json")
                .get("budget")
                .is_none()
        );
    }

    #[test]
    fn budget_errors_name_the_field_and_the_problem() {
        let cases = [
            (
                json!({"monthly": 0}),
                "budget.monthly: must be greater than zero",
            ),
            (
                json!({"monthly": -5}),
                "budget.monthly: -5 is not an amount of money (a number zero or more, at most 1000000000000)",
            ),
            (
                json!({"monthly": 2e9}),
                "budget.monthly: 2000000000.00 is more than a budget may be (at most 1000000000.00)",
            ),
            (
                json!({"alert_at": [0.5]}),
                "budget: missing field `monthly`",
            ),
            (
                json!({"monthly": 1, "enforce": "strict"}),
                "budget.enforce: unknown variant `strict`, expected `soft` or `hard`",
            ),
            (
                json!({"monthly": 1, "alert_at": [0.8, 0.0]}),
                "budget.alert_at[1]: 0 is not a threshold (a fraction of the budget, more than 0 and at most 10)",
            ),
            (
                json!({"monthly": 1, "alert_at": [10.5]}),
                "budget.alert_at[0]: 10.5 is not a threshold (a fraction of the budget, more than 0 and at most 10)",
            ),
            (
                json!({"monthly": 1, "alert_at": [0.8, 1.0, 0.9]}),
                "budget.alert_at[2]: 0.9 does not come after 1: thresholds are listed in increasing order, each once",
            ),
            (
                json!({"monthly": 1, "alert_at": [0.8, 0.8]}),
                "budget.alert_at[1]: 0.8 does not come after 0.8: thresholds are listed in increasing order, each once",
            ),
            (
                json!({"monthly": 1, "alert_at": (1..=11).map(|i| f64::from(i) / 2.0).collect::<Vec<_>>()}),
                "budget.alert_at: 11 thresholds; at most 10 are allowed",
            ),
            (
                json!({"monthly": 1, "colour": "red"}),
                "budget.colour: unknown field `colour`, expected one of `monthly`, `enforce`, `alert_at`",
            ),
        ];
        for (budget, expected) in cases {
            let err = TenantSpec::parse(json!({"name": "acme", "budget": budget}))
                .expect_err("invalid budget");
            assert_eq!(err.to_string(), expected, "{budget}");
        }
        // Checked when built in code too.
        let mut spec = TenantSpec::unlimited("acme");
        spec.budget = Some(BudgetSpec {
            monthly: Money::from_whole_units(5),
            enforce: Enforce::Hard,
            alert_at: vec![f64::NAN],
        });
        assert_eq!(spec.validate().expect_err("NaN").path, "budget.alert_at[0]");
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        spec.budget = Some(BudgetSpec {
            monthly: MAX_MONTHLY,
            enforce: Enforce::Hard,
            alert_at: ten,
        });
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn pool_limits_are_per_pool() {
        let spec = TenantSpec::parse(
            json!({"name": "acme", "pool_limits": {"gpu": {"gpu": 2, "runs": 1}}}),
        )
        .expect("valid tenant");
        let limits = spec.pool_limits();
        assert_eq!(limits["gpu"].resources.gpu, 2);
        assert_eq!(limits["gpu"].runs, 1);
        assert_eq!(limits["gpu"].resources.cpu_millis, u64::MAX);
    }
}

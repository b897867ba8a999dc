//! Tenants: the owners of pipelines, with their quotas and budgets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FieldError, FieldErrors, check_name};
use crate::manifest::read_all;
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
    /// Every problem of the budget; their paths start with `budget.`.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if self.monthly <= Money::ZERO {
            problems.push(FieldError::new(
                "budget.monthly",
                "must be greater than zero",
            ));
        }
        if self.monthly > MAX_MONTHLY {
            problems.push(FieldError::new(
                "budget.monthly",
                format!(
                    "{} is more than a budget may be (at most {MAX_MONTHLY})",
                    self.monthly
                ),
            ));
        }
        if self.alert_at.len() > MAX_ALERTS {
            problems.push(FieldError::new(
                "budget.alert_at",
                format!(
                    "{} thresholds; at most {MAX_ALERTS} are allowed",
                    self.alert_at.len()
                ),
            ));
            return problems;
        }
        for (i, &at) in self.alert_at.iter().enumerate() {
            let path = || format!("budget.alert_at[{i}]");
            if !(at > 0.0 && at <= MAX_ALERT_AT) {
                problems.push(FieldError::new(
                    path(),
                    format!(
                        "{at} is not a threshold (a fraction of the budget, more than 0 and at most {MAX_ALERT_AT})"
                    ),
                ));
            } else if let Some(&before) = i.checked_sub(1).and_then(|j| self.alert_at.get(j))
                && at <= before
            {
                problems.push(FieldError::new(
                    path(),
                    format!(
                        "{at} does not come after {before}: thresholds are listed in increasing order, each once"
                    ),
                ));
            }
        }
        problems
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
    /// Parses and validates a tenant document (without its `kind`), with
    /// every problem it has.
    pub fn parse(value: Value) -> Result<TenantSpec, FieldErrors> {
        let (spec, problems) = TenantSpec::read(value);
        FieldErrors::check(spec, problems)
    }

    /// A tenant document read as far as it can be, with every problem found
    /// (see [`read_all`]).
    pub fn read(value: Value) -> (Option<TenantSpec>, Vec<FieldError>) {
        read_all(value, TenantSpec::problems)
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

    /// The first problem of the tenant, if it has one.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem of the tenant, each with its field. Whether the pools
    /// it names exist is for [`TenantSpec::unknown_pools`].
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if let Err(e) = check_name("name", &self.name) {
            problems.push(e);
        }
        if self.weight == 0 {
            problems.push(FieldError::new("weight", "must be at least 1"));
        }
        for (path, pool) in self.named_pools() {
            if let Err(e) = check_name(&path, pool) {
                problems.push(e);
            }
        }
        if let Some(budget) = &self.budget {
            problems.extend(budget.problems());
        }
        problems
    }

    /// The pools the tenant names, each with the field that names it.
    pub fn named_pools(&self) -> Vec<(String, &str)> {
        let allowed = self.allowed_pools.iter().flatten().enumerate();
        allowed
            .map(|(i, pool)| (format!("allowed_pools[{i}]"), pool.as_str()))
            .chain(
                self.pool_limits
                    .keys()
                    .map(|pool| (format!("pool_limits.{pool}"), pool.as_str())),
            )
            .collect()
    }

    /// A problem for each pool the tenant names that `exists` does not know
    /// (a typo would otherwise refuse every run of the tenant).
    pub fn unknown_pools(&self, exists: impl Fn(&str) -> bool) -> Vec<FieldError> {
        self.named_pools()
            .into_iter()
            .filter(|(_, pool)| !exists(pool))
            .map(|(path, pool)| FieldError::new(path, format!("there is no pool {pool:?}")))
            .collect()
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

    /// The first problem, as most tests below look at one at a time.
    fn parse(value: Value) -> Result<TenantSpec, FieldError> {
        TenantSpec::parse(value).map_err(|e| e.first().clone())
    }

    #[test]
    fn every_problem_is_found_at_once() {
        // A budget without its amount is left out as a whole.
        let err = TenantSpec::parse(json!({
            "name": "acme", "weight": 0, "quota": {"cpu": "x", "gpu": -1},
            "allowed_pools": ["ok", "not ok"], "pool_limits": {"gpu": {"runs": 1.5}},
            "budget": {"monthly": "lots", "alert_at": [0.8, 0.5]}
        }))
        .expect_err("invalid");
        let found: Vec<String> = err.all().iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "budget.monthly: must be an amount of money, a number such as 500 or 12.5, not \"lots\"",
                "pool_limits.gpu.runs: must be a whole number, 0 or more, not 1.5",
                "quota.cpu: \"x\" is not a cpu quantity (examples: 500m, 2, 1.5)",
                "quota.gpu: must be a whole number, 0 or more, not -1",
                "weight: must be at least 1",
                "allowed_pools[1]: \"not ok\" is not a valid name (1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit)",
            ],
            "{err:?}"
        );
        // Pools are known to the server, not the document.
        let spec = parse(json!({"name": "acme", "allowed_pools": ["a", "b"],
            "pool_limits": {"c": {"runs": 1}}}))
        .expect("valid");
        let unknown: Vec<String> = spec
            .unknown_pools(|p| p == "a")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            unknown,
            [
                "allowed_pools[1]: there is no pool \"b\"",
                "pool_limits.c: there is no pool \"c\""
            ]
        );
    }

    #[test]
    fn quota_fields_left_out_are_unlimited() {
        let spec = parse(json!({"name": "acme", "weight": 2, "quota": {"cpu": 6, "runs": 10}}))
            .expect("valid tenant");
        let quota = spec.quota();
        assert_eq!(quota.resources.cpu_millis, 6000);
        assert_eq!(quota.resources.memory_mib, u64::MAX);
        assert_eq!(quota.runs, 10);
    }

    #[test]
    fn errors_name_the_field() {
        let err =
            parse(json!({"name": "acme", "quota": {"memory": "12GB"}})).expect_err("bad memory");
        assert_eq!(err.path, "quota.memory");
        let err = parse(json!({"name": "acme", "weight": 0})).expect_err("zero weight");
        assert_eq!(err.path, "weight");
        let err = parse(json!({"name": "acme", "pool_limits": {"gpu": {"cpu": "x"}}}))
            .expect_err("bad pool limit");
        assert_eq!(err.path, "pool_limits.gpu.cpu");
    }

    #[test]
    fn budgets_default_to_soft_with_two_alerts() {
        let spec =
            parse(json!({"name": "acme", "budget": {"monthly": 500}})).expect("valid tenant");
        let budget = spec.budget.expect("a budget");
        assert_eq!(budget.monthly, Money::from_whole_units(500));
        assert_eq!(budget.enforce, Enforce::Soft);
        assert_eq!(budget.alert_at, vec![0.8, 1.0]);
        let spec = parse(json!({"name": "acme",
            "budget": {"monthly": 12.5, "enforce": "hard", "alert_at": [0.5, 0.9, 1.0, 2.0]}}))
        .expect("valid tenant");
        let budget = spec.budget.clone().expect("a budget");
        assert_eq!(budget.monthly, Money::from_micros(12_500_000));
        assert_eq!(budget.enforce.as_str(), "hard");
        let back = parse(serde_json::to_value(&spec).expect("json")).expect("valid");
        assert_eq!(back, spec);
        let none = parse(json!({"name": "acme"})).expect("valid tenant");
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
            (json!({"alert_at": [0.5]}), "budget.monthly: is required"),
            (
                json!({"monthly": 1, "enforce": "strict"}),
                "budget.enforce: must be `soft` or `hard`, not `strict`",
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
            let err = parse(json!({"name": "acme", "budget": budget})).expect_err("invalid budget");
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
        let spec = parse(json!({"name": "acme", "pool_limits": {"gpu": {"gpu": 2, "runs": 1}}}))
            .expect("valid tenant");
        let limits = spec.pool_limits();
        assert_eq!(limits["gpu"].resources.gpu, 2);
        assert_eq!(limits["gpu"].runs, 1);
        assert_eq!(limits["gpu"].resources.cpu_millis, u64::MAX);
    }
}

//! Tenants: the owners of pipelines, with their quotas.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FieldError, check_name};
use crate::manifest::from_value;
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

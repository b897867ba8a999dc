//! Why a run waits or was rejected: a stable code, a sentence with the numbers,
//! and the limits that block it.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::request::GroupRequest;
use crate::resources::{Dimension, Resources, format_count};

use super::Placement;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    UnknownTenant,
    NoMatchingPool,
    PoolNotAllowed,
    LargerThanPools,
    LargerThanQuota,
    /// The tenant's hard budget for the month would be passed.
    TenantBudget,
    TenantQuota,
    TenantRuns,
    PoolLimit,
    PoolDraining,
    PoolDisabled,
    PoolFull,
    PoolMaxWorkers,
    NoAgents,
    GangPartnerFull,
    Reserved,
    /// Admitted, and its worker has not come up: the provider says why (a pod
    /// that cannot be scheduled, an image that cannot be pulled), or, for a
    /// failed run, none of the workers asked for it did.
    WorkerPending,
}

/// What holds a waiting run back, by kind: what an operator would change to
/// let it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocker {
    /// Room in pools: more capacity (or agents, or workers) would admit it.
    Capacity,
    /// Its tenant's quota, concurrent runs or per-pool limits.
    Quota,
    /// Its tenant's hard budget.
    Budget,
    /// Room held for another run that waited too long.
    Reservation,
    /// A group of its gang that another pool cannot take yet.
    Gang,
    /// The pools it may use: draining, disabled, not allowed or not matching.
    Placement,
}

impl Blocker {
    pub const ALL: [Blocker; 6] = [
        Blocker::Capacity,
        Blocker::Quota,
        Blocker::Budget,
        Blocker::Reservation,
        Blocker::Gang,
        Blocker::Placement,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Blocker::Capacity => "capacity",
            Blocker::Quota => "quota",
            Blocker::Budget => "budget",
            Blocker::Reservation => "reservation",
            Blocker::Gang => "gang",
            Blocker::Placement => "placement",
        }
    }
}

impl ReasonCode {
    /// What kind of limit this reason is.
    pub fn blocker(self) -> Blocker {
        use ReasonCode::*;
        match self {
            PoolFull | PoolMaxWorkers | NoAgents | WorkerPending => Blocker::Capacity,
            TenantQuota | TenantRuns | PoolLimit | LargerThanQuota => Blocker::Quota,
            TenantBudget => Blocker::Budget,
            Reserved => Blocker::Reservation,
            GangPartnerFull => Blocker::Gang,
            UnknownTenant | NoMatchingPool | PoolNotAllowed | LargerThanPools | PoolDraining
            | PoolDisabled => Blocker::Placement,
        }
    }

    /// Whether more capacity in the pools would admit a run waiting for this.
    pub fn more_capacity_admits(self) -> bool {
        self.blocker() == Blocker::Capacity
    }
}

/// One limit that a run hits: `in_use` of `limit` taken, and the run needs
/// `needs` more. Amounts in base units (millicores, MiB, gpus, runs, workers,
/// and micro-units of money for a budget).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// What the limit belongs to: `pool small`, `tenant acme`, `tenant acme in pool gpu`.
    pub scope: String,
    /// `cpu`, `memory`, `gpu`, `runs`, `workers` or `budget`.
    pub dimension: String,
    pub in_use: u64,
    pub limit: u64,
    pub needs: u64,
}

impl Limit {
    pub fn runs(in_use: u64, limit: u64) -> Limit {
        Limit {
            scope: String::new(),
            dimension: "runs".into(),
            in_use,
            limit,
            needs: 1,
        }
    }

    pub fn workers(in_use: u64, limit: u64) -> Limit {
        Limit {
            dimension: "workers".into(),
            ..Limit::runs(in_use, limit)
        }
    }

    /// The dimensions in which `used + need` goes over `limit`.
    pub fn shortfall(used: &Resources, limit: &Resources, need: &Resources) -> Option<Vec<Limit>> {
        let limits: Vec<Limit> = Dimension::ALL
            .into_iter()
            .filter(|&d| need.get(d) > 0 && used.get(d).saturating_add(need.get(d)) > limit.get(d))
            .map(|d| Limit {
                scope: String::new(),
                dimension: d.name().into(),
                in_use: used.get(d),
                limit: limit.get(d),
                needs: need.get(d),
            })
            .collect();
        (!limits.is_empty()).then_some(limits)
    }

    fn format(&self, amount: u64) -> String {
        if self.dimension == "budget" {
            return Money::from_micros(i64::try_from(amount).unwrap_or(i64::MAX)).to_string();
        }
        Dimension::ALL
            .into_iter()
            .find(|d| d.name() == self.dimension)
            .map_or_else(|| format_count(amount), |d| d.format(amount))
    }

    /// `cpu 6/6 in use, run needs 3`.
    pub fn text(&self) -> String {
        format!(
            "{} {}/{} in use, run needs {}",
            self.dimension,
            self.format(self.in_use),
            self.format(self.limit),
            self.format(self.needs)
        )
    }

    /// What would let the run past this limit, in a sentence.
    pub fn remedy(&self) -> String {
        let free = self.limit.saturating_sub(self.in_use);
        let amount = self.format(self.needs.saturating_sub(free));
        let mut scope = self.scope.clone();
        if let Some(first) = scope.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        if self.dimension == "budget" {
            let over = self
                .in_use
                .saturating_add(self.needs)
                .saturating_sub(self.limit);
            return format!(
                "{scope} has {} of its budget of {} spent or held for what its running runs may cost at most, and the run may cost up to {}: it gets in when the budget is raised by {}, when running runs end, or when the next month begins.",
                self.format(self.in_use),
                self.format(self.limit),
                self.format(self.needs),
                self.format(over),
            );
        }
        let one = amount == "1";
        let what = match (self.dimension.as_str(), one) {
            ("memory", _) => format!("{amount} of memory is"),
            ("runs", true) => "1 run is".to_string(),
            ("workers", true) => "1 worker is".to_string(),
            ("gpu", true) => "1 gpu is".to_string(),
            ("gpu", false) => format!("{amount} gpus are"),
            (d, true) => format!("1 {d} is"),
            (d, false) => format!("{amount} {d} are"),
        };
        format!(
            "{scope} has {} of {} {} in use and the run needs {}: it gets in when {what} released there, or when the limit is raised by that much.",
            self.format(self.in_use),
            self.format(self.limit),
            self.dimension,
            self.format(self.needs),
        )
    }
}

/// Why a run waits or was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
    /// The limits that block it, with their numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
}

impl Reason {
    pub fn simple(code: ReasonCode, message: impl Into<String>) -> Reason {
        Reason {
            code,
            message: message.into(),
            limits: Vec::new(),
        }
    }

    pub fn limit(code: ReasonCode, scope: String, limit: Limit) -> Reason {
        Reason::limits(code, scope, vec![limit])
    }

    /// `scope: cpu 2/2 in use, run needs 2; memory ...`.
    pub fn limits(code: ReasonCode, scope: String, mut limits: Vec<Limit>) -> Reason {
        for l in &mut limits {
            l.scope.clone_from(&scope);
        }
        let parts: Vec<String> = limits.iter().map(Limit::text).collect();
        Reason {
            code,
            message: format!("{scope}: {}", parts.join("; ")),
            limits,
        }
    }

    /// Group `g` of a gang fits no pool: each candidate pool's blocker, and
    /// whether the group's gang partners had room.
    pub(super) fn blocked_group(
        g: &GroupRequest,
        groups: usize,
        placed: &[Placement],
        blockers: &[Rc<Reason>],
    ) -> Reason {
        let code = blockers
            .iter()
            .map(|b| b.code)
            .find(|c| *c != ReasonCode::PoolNotAllowed)
            .or_else(|| blockers.first().map(|b| b.code))
            .unwrap_or(ReasonCode::NoMatchingPool);
        let mut message = blockers
            .iter()
            .map(|b| b.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if blockers.is_empty() {
            message = format!("no {} matches", g.selector);
        }
        let limits: Vec<Limit> = blockers
            .iter()
            .flat_map(|b| b.limits.iter().cloned())
            .collect();
        if groups == 1 {
            return Reason {
                code,
                message,
                limits,
            };
        }
        if placed.is_empty() {
            return Reason {
                code,
                message: format!("group {} ({}): {message}", g.index, g.selector),
                limits,
            };
        }
        let partners: Vec<String> = placed
            .iter()
            .map(|p| format!("group {} in pool {}", p.group, p.pool))
            .collect();
        Reason {
            code: ReasonCode::GangPartnerFull,
            message: format!(
                "gang partner group {} ({}) has no room: {message}; {} would fit, but a gang is admitted whole",
                g.index,
                g.selector,
                partners.join(", ")
            ),
            limits,
        }
    }

    /// This reason and, after it, another limit that also blocks the run.
    pub fn and(mut self, other: &Reason) -> Reason {
        self.message = format!("{}; also {}", self.message, other.message);
        self.limits.extend(other.limits.iter().cloned());
        self
    }

    /// The reason in sentences: what the run waits for and what would let it in.
    pub fn explain(&self) -> String {
        let mut text = match self.code {
            ReasonCode::UnknownTenant
            | ReasonCode::NoMatchingPool
            | ReasonCode::PoolNotAllowed
            | ReasonCode::LargerThanPools
            | ReasonCode::LargerThanQuota => {
                format!("It can never be admitted as it is: {}.", self.message)
            }
            ReasonCode::TenantBudget => format!(
                "It waits for its tenant's monthly budget, which is enforced (hard): {}.",
                self.message
            ),
            ReasonCode::TenantQuota | ReasonCode::TenantRuns => format!(
                "It waits for its tenant's quota, summed across pools: {}.",
                self.message
            ),
            ReasonCode::PoolLimit => format!(
                "It waits for its tenant's limit in a pool: {}.",
                self.message
            ),
            ReasonCode::PoolDraining | ReasonCode::PoolDisabled => format!(
                "It waits because the pools it may use take no new work: {}. It gets in when an operator sets one of them active again.",
                self.message
            ),
            ReasonCode::PoolFull | ReasonCode::PoolMaxWorkers => {
                format!("It waits for room in a pool: {}.", self.message)
            }
            ReasonCode::NoAgents => format!(
                "It waits for a static agent with room: {}. It gets in when an agent with enough free capacity is live in the pool.",
                self.message
            ),
            ReasonCode::GangPartnerFull => format!(
                "It waits because its groups are admitted together or not at all: {}.",
                self.message
            ),
            ReasonCode::WorkerPending => format!(
                "It waits for its worker to start: {}. It runs once the worker registers; a worker that cannot start is deleted and asked for again, and the run fails after three.",
                self.message
            ),
            ReasonCode::Reserved => format!(
                "It waits behind a run that has waited longer and holds room: {}. It gets in once that run is admitted and there is room left.",
                self.message
            ),
        };
        for limit in &self.limits {
            text.push(' ');
            text.push_str(&limit.remedy());
        }
        text
    }
}

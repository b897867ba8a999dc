//! A tenant's budget as the controller sees it, and the check of a hard one.

use crate::metering::Month;
use crate::money::Money;
use crate::tenant::{BudgetSpec, Enforce};

use super::{Limit, Reason, ReasonCode, TenantView};

/// A tenant's budget for the month of the cycle, with what is spent and the
/// most its running runs may still cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetView {
    /// The budget for the month.
    pub monthly: Money,
    /// Whether it holds runs back (`hard`) or only alerts (`soft`).
    pub enforce: Enforce,
    /// The month the budget is for, `2026-11`.
    pub month: String,
    /// What the tenant has spent in the month so far (`metering::month_to_date`).
    pub spent: Money,
    /// The most its admitted runs may still cost, beyond what `spent` already
    /// counts: for each, its upper bound less what it has cost so far, and not
    /// below zero. An admission in a cycle adds its bound here for the rest of
    /// the cycle.
    pub running: Money,
}

impl BudgetView {
    /// The budget of `spec` for `month`.
    pub fn new(spec: &BudgetSpec, month: Month, spent: Money, running: Money) -> BudgetView {
        BudgetView {
            monthly: spec.monthly,
            enforce: spec.enforce,
            month: month.label(),
            spent,
            running,
        }
    }

    /// What is spent, and the most the runs already admitted may still cost.
    pub fn committed(&self) -> Money {
        self.spent.saturating_add(self.running)
    }
}

/// A hard budget: the run waits when what is spent, the most its tenant's
/// running runs may still cost and its own upper bound come to more than the
/// budget. A soft budget (or none) never stops a run.
pub(super) fn check_budget(tenant: &TenantView, bound: Money) -> Result<(), Reason> {
    let Some(budget) = &tenant.budget else {
        return Ok(());
    };
    if budget.enforce != Enforce::Hard || budget.committed().saturating_add(bound) <= budget.monthly
    {
        return Ok(());
    }
    let scope = format!("tenant {}", tenant.name);
    let micros = |m: Money| u64::try_from(m.micros()).unwrap_or(0);
    Err(Reason {
        code: ReasonCode::TenantBudget,
        message: format!(
            "{scope}: budget {} for {}, spent {}, running runs may cost {} more, run may cost {bound}",
            budget.monthly, budget.month, budget.spent, budget.running
        ),
        limits: vec![Limit {
            scope,
            dimension: "budget".into(),
            in_use: micros(budget.committed()),
            limit: micros(budget.monthly),
            needs: micros(bound),
        }],
    })
}

//! A tenant's budget as the controller sees it, and the check of a hard one.

use crate::metering::Month;
use crate::money::Money;
use crate::tenant::{BudgetSpec, Enforce};

use super::{Limit, Reason, ReasonCode, TenantView};

/// A tenant's budget for the month of the cycle, with what is spent and what is
/// expected of its running runs.
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
    /// What its admitted runs are still expected to cost, beyond what `spent`
    /// already counts: for each, its estimate less what it has cost so far, and
    /// not below zero. An admission in a cycle adds its estimate here for the
    /// rest of the cycle.
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

    /// What is spent or expected of the runs already admitted.
    pub fn committed(&self) -> Money {
        self.spent.saturating_add(self.running)
    }
}

/// A hard budget: the run waits when what is spent, what its tenant's running
/// runs are expected to cost and its own estimate come to more than the budget.
/// A soft budget (or none) never stops a run.
pub(super) fn check_budget(tenant: &TenantView, estimate: Money) -> Result<(), Reason> {
    let Some(budget) = &tenant.budget else {
        return Ok(());
    };
    if budget.enforce != Enforce::Hard
        || budget.committed().saturating_add(estimate) <= budget.monthly
    {
        return Ok(());
    }
    let scope = format!("tenant {}", tenant.name);
    let micros = |m: Money| u64::try_from(m.micros()).unwrap_or(0);
    Err(Reason {
        code: ReasonCode::TenantBudget,
        message: format!(
            "{scope}: budget {} for {}, spent {}, running {}, run needs about {estimate}",
            budget.monthly, budget.month, budget.spent, budget.running
        ),
        limits: vec![Limit {
            scope,
            dimension: "budget".into(),
            in_use: micros(budget.committed()),
            limit: micros(budget.monthly),
            needs: micros(estimate),
        }],
    })
}

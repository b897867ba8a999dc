//! The overview: every pool's capacity as bars, each tenant's queue and
//! month-to-date spend against its budget, and the latest alerts; refreshed
//! live. Also the event stream that tells pages the state changed.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use corral_api::{PoolView, TenantView};
use corral_core::controller::Blocker;
use corral_core::metering::{BudgetHealth, budget_health};
use corral_core::money::Money;
use corral_store::AlertFilter;
use futures_util::Stream;
use maud::{Markup, html};

use super::PageResult;
use super::layout::{self, Section};
use super::session::Session;
use crate::api::routes::may_use_pool;
use crate::api::views;
use crate::engine::Engine;
use crate::trouble::{Blocked, blocked_by_tenant};

/// A tenant's line on the overview.
struct TenantLine {
    view: TenantView,
    queued: u64,
    oldest_wait_ms: i64,
    spent: Money,
    blocked: Blocked,
    health: Option<BudgetHealth>,
}

impl TenantLine {
    /// Tenants in trouble first: the worst budget, then the most runs held
    /// back, then the longest wait; then by name.
    fn trouble(&self) -> impl Ord + use<> {
        (
            Reverse(self.health),
            Reverse(self.blocked.total()),
            Reverse(self.oldest_wait_ms),
            self.view.name.clone(),
        )
    }
}

pub async fn page(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let who = &session.principal;
    let now = engine.now();
    let (pools, tenants) = {
        let view = engine.read_model().view();
        let snapshot = &view.snapshot;
        let pools: Vec<PoolView> = view
            .pools
            .values()
            .filter(|p| may_use_pool(&view, who, &p.spec.name))
            .map(|p| {
                views::pool(
                    p,
                    snapshot,
                    view.reserved.get(&p.spec.name).copied().unwrap_or_default(),
                    view.agents.get(&p.spec.name).cloned().unwrap_or_default(),
                )
            })
            .collect();
        // Per tenant, its waiting runs and the longest wait: from the queue's
        // classes, whose runs are kept oldest first.
        let positions = engine.read_model().positions();
        let mut waits: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for class in positions.queue().classes() {
            let w = waits.entry(class.tenant.clone()).or_default();
            w.0 += class.runs.len() as u64;
            if let Some((at, _)) = class.runs.first() {
                w.1 = w.1.max(now.millis_since(*at));
            }
        }
        // This month's spend is priced from the engine's spend book.
        let spent = engine.read().await.spend_by_tenant(now);
        let mut blocked = blocked_by_tenant(positions.queue(), positions.waiting());
        let mut tenants: Vec<TenantLine> = view
            .tenants
            .values()
            .filter(|t| who.may_touch_tenant(&t.spec.name))
            .map(|t| {
                let (queued, oldest_wait_ms) = waits.get(&t.spec.name).copied().unwrap_or_default();
                let spent = spent.get(&t.spec.name).copied().unwrap_or_default();
                let blocked = blocked.remove(&t.spec.name).unwrap_or_default();
                let health = t
                    .spec
                    .budget
                    .as_ref()
                    .map(|b| budget_health(b, spent, blocked.count(Blocker::Budget)));
                TenantLine {
                    view: views::tenant(t, snapshot),
                    queued,
                    oldest_wait_ms,
                    spent,
                    blocked,
                    health,
                }
            })
            .collect();
        tenants.sort_by_key(TenantLine::trouble);
        (pools, tenants)
    };
    let alerts = engine
        .store()
        .alerts(&AlertFilter {
            tenant: who.role.tenant().map(str::to_string),
            month: None,
            undelivered: false,
            limit: 5,
        })
        .await?;
    let body = html! {
        (layout::live("overview", html! {
            h2 { "Pools" }
            div.legend aria-hidden="true" {
                span { i.used {} "allocated" }
                span { i.reserved {} "reserved for a waiting run" }
                span { i.free {} "free" }
            }
            @if pools.is_empty() {
                p.muted { "No pools yet." }
            }
            div.grid {
                @for p in &pools { (pool_card(p)) }
            }
            h2 { "Tenants" }
            (tenant_table(&tenants))
            h2 { "Alerts" }
            @if alerts.is_empty() {
                p.muted { "No budget alert." }
            } @else {
                ul {
                    @for a in &alerts {
                        li { (crate::engine::alerts::message(a)) }
                    }
                }
            }
        }))
    };
    Ok(layout::page(&session, Section::Overview, "Overview", body).into_response())
}

fn pool_card(p: &PoolView) -> Markup {
    html! {
        section.card aria-labelledby={ "pool-" (p.name) } {
            h3 id={ "pool-" (p.name) } {
                a href={ "/pools/" (p.name) } { (p.name) } " "
                @if p.state != "active" { (layout::state(&p.state)) }
            }
            (layout::resource_bars(&p.used, &p.reserved, &p.capacity))
            p.muted {
                (p.provider) " · " (p.workers) " workers"
                @if let Some(agents) = p.agents { " · " (agents) " agents" }
            }
        }
    }
}

fn tenant_table(tenants: &[TenantLine]) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table {
                caption.muted.table-title { "Tenants, those in trouble first: what holds their runs back, and this month's spend against their budget" }
                thead { tr {
                    th scope="col" { "Tenant" }
                    th scope="col" { "Budget health" }
                    th scope="col" { "Blocked by" }
                    th.num scope="col" { "Queued" }
                    th.num scope="col" { "Oldest wait" }
                    th.num scope="col" { "Spent this month" }
                    th.num scope="col" { "Budget" }
                } }
                tbody {
                    @for t in tenants {
                        tr {
                            td { a href={ "/tenants/" (t.view.name) } { (t.view.name) } }
                            td { @match t.health {
                                Some(h) => (health(h)),
                                None => span.muted { "no budget" },
                            } }
                            td {
                                @if t.blocked.total() == 0 {
                                    span.muted { "—" }
                                } @else {
                                    (t.blocked.summary())
                                }
                            }
                            td.num { (t.queued) }
                            td.num { @if t.queued > 0 { (layout::duration(t.oldest_wait_ms)) } @else { "—" } }
                            td.num { (layout::money(t.spent.to_units_f64())) }
                            td.num {
                                @match &t.view.budget {
                                    Some(b) => {
                                        (layout::money(b.monthly)) " " (b.enforce)
                                        @if b.monthly > 0.0 {
                                            " (" (format!("{:.0}", t.spent.to_units_f64() * 100.0 / b.monthly)) "%)"
                                        }
                                    }
                                    None => "—",
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A budget's health as a badge whose text says it (colour only adds).
pub fn health(h: BudgetHealth) -> Markup {
    let title = match h {
        BudgetHealth::Ok => "below its first alert threshold",
        BudgetHealth::Alerting => "past an alert threshold, within the budget",
        BudgetHealth::Over => "spent more than its budget",
        BudgetHealth::Blocking => "its hard budget keeps runs waiting",
    };
    html! { span class={ "badge health-" (h.name()) } title=(title) { (h.name()) } }
}

/// Tells a page that the state changed (a `change` event carrying the state's
/// sequence number), so that it refreshes its live regions. The stream ends
/// when its session does (logout, its token revoked or expired, idle or past
/// its lifetime): its session is checked at each tick.
pub async fn events(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
) -> Response {
    Sse::new(changes(engine, session.id_hash))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn changes(engine: Arc<Engine>, session: String) -> impl Stream<Item = Result<Event, Infallible>> {
    let published = engine.read_model().subscribe();
    let start = (engine, published, None::<u64>);
    futures_util::stream::unfold(start, move |(engine, mut published, last)| {
        let session = session.clone();
        async move {
            loop {
                engine.session_principal(&session)?;
                let seq = *published.borrow_and_update();
                if last != Some(seq) {
                    let event = Event::default().event("change").data(seq.to_string());
                    return Some((Ok(event), (engine, published, Some(seq))));
                }
                // The next commit, or a tick to check the session again.
                let next = tokio::time::timeout(SESSION_CHECK, published.changed()).await;
                if matches!(next, Ok(Err(_))) {
                    return None;
                }
            }
        }
    })
}

/// How often an idle event stream checks that its session still holds.
const SESSION_CHECK: Duration = Duration::from_millis(500);

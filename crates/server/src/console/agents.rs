//! Agents: for each pool (static and local), its live agents with what each
//! offers, what it holds now (run, tenant and resources of each allocation),
//! when it last polled, and how it confines its steps. Refreshed live.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use corral_api::{AgentView, Confinement, ResourcesView};
use corral_core::pool::Provider;
use maud::{Markup, html};

use super::PageResult;
use super::layout::{self, Section};
use super::session::Session;
use crate::api::error::ApiError;
use crate::api::routes::{agents_seen_by, may_use_pool};
use crate::engine::Engine;

/// A pool's section of the page.
struct PoolAgents {
    name: String,
    provider: &'static str,
    agents: Vec<AgentView>,
}

/// Resources as people read them: `2 cpu, 4 GiB, 1 gpu` (gpus when some).
fn resources(r: &ResourcesView) -> String {
    let mut text = format!(
        "{} cpu, {}",
        layout::cores(r.cpu_millis),
        layout::memory(r.memory_mib)
    );
    if r.gpu > 0 {
        text.push_str(&format!(", {} gpu", r.gpu));
    }
    text
}

/// How an agent confines its steps, in words.
fn confinement(c: Option<&Confinement>) -> Markup {
    match c {
        None => html! { span.muted { "not confined (the agent did not say)" } },
        Some(c) => html! {
            @if c.is_full() { span.badge.state-succeeded { "confined" } } @else { span.badge.state-failed { "not fully confined" } }
            " " (if c.namespaces { "namespaces" } else { "no namespaces" })
            ", cgroup " (c.cgroup) ", as " (c.user)
        },
    }
}

/// A pool's live agents as a table: what each offers and holds, its last
/// poll and its confinement (the pool's page shows it too).
pub(super) fn agent_table(agents: &[AgentView], now_ms: i64) -> Markup {
    let ago = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| layout::duration(now_ms - t.timestamp_millis()))
            .unwrap_or_default()
    };
    html! {
        div.table-wrap tabindex="0" { table.agents {
            thead { tr {
                th scope="col" { "Agent" } th scope="col" { "Offers" } th scope="col" { "Holds now" }
                th scope="col" { "Last poll" } th scope="col" { "Confinement" }
            } }
            tbody { @for a in agents {
                tr data-agent=(a.name) {
                    td { (a.name) " " span.muted { "#" (a.worker_id) } }
                    td { (resources(&a.capacity)) }
                    td.holds {
                        @if a.holds.is_empty() { span.muted { "nothing" } }
                        @else { ul.plain { @for h in &a.holds {
                            li {
                                a href={ "/runs/" (h.run_id) } { "run " (h.run_id) } " (group " (h.group) ") · tenant " (h.tenant) " · " (resources(&h.resources))
                            }
                        } } }
                    }
                    td { @if let Some(t) = &a.last_poll_at { (ago(t)) " ago (" (layout::time(t)) ")" } }
                    td { (confinement(a.confinement.as_ref())) }
                }
            } }
        } }
    }
}

pub async fn page(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let who = &session.principal;
    let only = query.get("pool").filter(|p| !p.is_empty());
    let now = engine.now();
    let pools: Vec<PoolAgents> = {
        let state = engine.read_model().view();
        if let Some(name) = only
            && !state.pools.contains_key(name.as_str())
        {
            return Err(ApiError::not_found("pool", name).into());
        }
        state
            .pools
            .values()
            .filter(|p| only.is_none_or(|o| *o == p.spec.name))
            .filter(|p| may_use_pool(&state, who, &p.spec.name))
            .map(|p| PoolAgents {
                name: p.spec.name.clone(),
                provider: match p.spec.provider {
                    Provider::Local => "local",
                    Provider::Static => "static",
                    Provider::Kubernetes => "kubernetes",
                },
                agents: agents_seen_by(&engine, &state, who, &p.spec.name),
            })
            .collect()
    };
    let title = match only {
        Some(name) => format!("Agents of pool {name}"),
        None => "Agents".to_string(),
    };
    let body = html! {
        @if only.is_some() { p { a href="/agents" { "Every pool's agents" } } }
        @if who.role.tenant().is_some() {
            p.muted { "What agents hold is shown for your tenant's runs only." }
        }
        (layout::live("agents", html! {
            @if pools.is_empty() { p.muted { "No pool." } }
            @for p in &pools {
                section.pool-agents aria-labelledby={ "agents-" (p.name) } {
                    h2 id={ "agents-" (p.name) } {
                        a href={ "/pools/" (p.name) } { "Pool " (p.name) } " "
                        span.muted { "(" (p.provider) ", " (p.agents.len()) " live agents)" }
                    }
                    @if p.agents.is_empty() { p.muted { "No live agent." } }
                    @else { (agent_table(&p.agents, now.0)) }
                }
            }
        }))
    };
    Ok(layout::page(&session, Section::Agents, &title, body).into_response())
}

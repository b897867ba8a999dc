//! The queue in admission order, a page at a time (with each run's reason,
//! limits and places; on a phone each run a card, its reason first), recent
//! runs, and a run's page: its request and each group's envelope, how long it
//! waited for admission, its DAG, steps with their durations and attempts, the
//! log that follows while it runs, allocations, estimated and actual cost,
//! and cancel. Times are in UTC; the console's script shows them local.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use corral_api::{RunSummary, RunView, StepView};
use corral_core::clock::Timestamp;
use corral_core::ids::RunId;
use corral_core::metering::{PriceChange, Span, Window, usage};
use corral_core::run::RunState;
use corral_store::{AllocationFilter, AllocationRecord, RunFilter};
use maud::{Markup, PreEscaped, html};

use super::layout::{self, Section};
use super::session::Session;
use super::{PageError, PageResult, confirm, forms};
use crate::api::error::{ApiError, PathParam};
use crate::api::routes::{detail_of, run_view};
use crate::api::stream::{LogRequest, log_body};
use crate::api::views;
use crate::engine::Engine;

/// Recent runs listed under the queue, each with its estimate and cost.
const RECENT: u32 = 50;

/// Waiting runs on a page of the queue.
const QUEUE_PAGE: usize = 50;

fn run_id(text: &str) -> Result<RunId, ApiError> {
    text.parse::<i64>().map(RunId).map_err(|_| {
        ApiError::invalid(corral_core::error::FieldError::new(
            "id",
            format!("{text:?} is not a run id"),
        ))
    })
}

fn reason(r: &RunSummary) -> Markup {
    html! {
        @if let Some(reason) = &r.reason {
            span.reason { code { (reason.code) } " " (reason.message) }
        }
    }
}

pub async fn queue(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let who = &session.principal;
    let filter = |key: &str| query.get(key).filter(|v| !v.is_empty()).cloned();
    let (tenant, pool, state_filter) = (filter("tenant"), filter("pool"), filter("state"));
    let page = match query.get("page").filter(|v| !v.is_empty()) {
        None => 1,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ApiError::invalid(corral_core::error::FieldError::new(
                    "page",
                    format!("{text:?} is not a page number (1, 2, ...)"),
                ))
            })?,
    };
    let (queued, waiting, tenants, pools) = {
        let state = engine.read_model().view();
        let places = engine.read_model().positions().places(engine.now());
        let wanted: Vec<_> = places
            .iter()
            .filter(|p| {
                let Some(record) = state.run(p.run) else {
                    return false;
                };
                // A run may land on a pool when one of its steps' selectors
                // matches it (a step without one may land anywhere).
                let may_land = |name: &String| {
                    state.pools.get(name).is_some_and(|p| {
                        record.spec.steps.iter().any(|step| {
                            step.pool
                                .as_ref()
                                .is_none_or(|sel| sel.matches(name, &p.spec.labels))
                        })
                    })
                };
                who.may_touch_tenant(&record.tenant)
                    && tenant.as_ref().is_none_or(|t| *t == record.tenant)
                    && pool.as_ref().is_none_or(may_land)
            })
            .collect();
        // Only the page shown is made into views.
        let queued: Vec<RunSummary> = wanted
            .iter()
            .skip((page - 1).saturating_mul(QUEUE_PAGE))
            .take(QUEUE_PAGE)
            .filter_map(|p| Some(views::run_summary(state.run(p.run)?, Some(p))))
            .collect();
        let tenants: Vec<String> = state
            .tenants
            .keys()
            .filter(|t| who.may_touch_tenant(t))
            .cloned()
            .collect();
        (
            queued,
            wanted.len(),
            tenants,
            state.pools.keys().cloned().collect::<Vec<_>>(),
        )
    };
    let pages = waiting.div_ceil(QUEUE_PAGE).max(1);
    let page_link = |n: usize| {
        let mut url =
            form_urlencoded::Serializer::for_suffix(String::from("/queue?"), "/queue?".len());
        for (k, v) in &query {
            if k != "page" && !v.is_empty() {
                url.append_pair(k, v);
            }
        }
        url.append_pair("page", &n.to_string());
        url.finish()
    };
    let first = (page - 1).saturating_mul(QUEUE_PAGE).saturating_add(1);
    let wanted_state = state_filter
        .as_deref()
        .and_then(|s| s.parse::<RunState>().ok());
    let recent = engine
        .store()
        .runs(&RunFilter {
            tenant: who.role.tenant().map(str::to_string).or(tenant.clone()),
            state: wanted_state,
            limit: RECENT,
        })
        .await?;
    // What each recent run cost, priced like usage (one small read each).
    let prices = engine.store().prices().await?;
    let mut costs = BTreeMap::new();
    for r in &recent {
        let held = allocations_of(&engine, r.id.0).await?;
        let cost = (!held.is_empty()).then(|| cost_of(&held, &r.pipeline, &prices, engine.now()));
        costs.insert(r.id, cost);
    }
    let select = |name: &str, label: &str, options: &[String], current: &Option<String>| {
        layout::field_with(
            name,
            label,
            None,
            html! {
                select id=(name) name=(name) {
                    option value="" { "any" }
                    @for o in options { option value=(o) selected[current.as_ref() == Some(o)] { (o) } }
                }
            },
        )
    };
    let states: Vec<String> = RunState::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let body = html! {
        form.filters method="get" action="/queue" {
            (select("tenant", "Tenant", &tenants, &tenant))
            (select("pool", "Pool", &pools, &pool))
            (select("state", "State (recent runs)", &states, &state_filter))
            button type="submit" { "Filter" }
        }
        (layout::live("queue", html! {
            h2 { "Waiting for admission (" (waiting) ")" }
            @if queued.is_empty() { p.muted { @if waiting == 0 { "Nothing waits." } @else { "No run on this page." } } }
            @else {
                @if pages > 1 {
                    p.muted { "Runs " (first) "–" (first + queued.len() - 1) " of " (waiting) ", page " (page) " of " (pages) "." }
                }
                div.table-wrap tabindex="0" { table.cards #waiting {
                    thead { tr {
                        th.num scope="col" { "#" } th.num scope="col" { "In tenant" } th scope="col" { "Run" }
                        th scope="col" { "Tenant" } th.num scope="col" { "Waited" } th scope="col" { "Why it waits" }
                    } }
                    tbody { @for r in &queued {
                        tr {
                            td.num data-label="Position" { (r.queue.as_ref().map_or(0, |q| q.position)) }
                            td.num data-label="In tenant" { (r.queue.as_ref().map_or(0, |q| q.tenant_position)) }
                            td.run data-label="Run" { a href={ "/runs/" (r.id) } { (r.id) " " (r.pipeline) } }
                            td data-label="Tenant" { (r.tenant) }
                            td.num data-label="Waited" { (layout::duration(r.queue.as_ref().map_or(0, |q| q.waited_ms))) }
                            td.why { (reason(r)) }
                        }
                    } }
                } }
            }
        }))
        // Outside the live regions: a link is not replaced while it is clicked.
        @if pages > 1 {
            nav.pager aria-label="Pages of the queue" {
                @if page > 1 { a rel="prev" href=(page_link(page - 1)) { "← Previous " (QUEUE_PAGE) } }
                @if page < pages { a rel="next" href=(page_link(page + 1)) { "Next " (QUEUE_PAGE.min(waiting - page * QUEUE_PAGE)) " →" } }
            }
        }
        (layout::live("recent", html! {
            h2 { "Recent runs" }
            div.table-wrap tabindex="0" { table {
                thead { tr {
                    th scope="col" { "Run" } th scope="col" { "Tenant" } th scope="col" { "State" }
                    th.num scope="col" { "Estimate" } th.num scope="col" { "Cost" } th scope="col" { "Created" }
                } }
                tbody { @for r in &recent {
                    @let s = views::run_summary(r, None);
                    tr {
                        td { a href={ "/runs/" (s.id) } { (s.id) " " (s.pipeline) } }
                        td { (s.tenant) }
                        td { (layout::state(&s.state)) }
                        td.num { (layout::money(s.estimated_cost)) }
                        td.num { @match costs.get(&r.id).copied().flatten() {
                            Some(cost) => (layout::money(cost)),
                            None => span.muted title="never held resources" { "—" },
                        } }
                        td { (layout::time(&s.created_at)) }
                    }
                } }
            } }
        }))
    };
    Ok(layout::page(&session, Section::Queue, "Queue & runs", body).into_response())
}

/// A run's steps as a graph: a column per depth (the longest chain of needs
/// before a step), each step a box, each need an edge.
fn dag(steps: &[StepView]) -> Markup {
    let index: BTreeMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut depth = vec![0usize; steps.len()];
    // Steps come in an order where needs come first (the DAG is validated at
    // submit); a few passes settle any other order.
    for _ in 0..steps.len().min(64) {
        let mut changed = false;
        for (i, s) in steps.iter().enumerate() {
            for need in &s.needs {
                if let Some(&j) = index.get(need.as_str())
                    && depth[i] < depth[j] + 1
                {
                    depth[i] = depth[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut row = vec![0usize; steps.len()];
    let mut per_column: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, d) in depth.iter().enumerate() {
        let next = per_column.entry(*d).or_default();
        row[i] = *next;
        *next += 1;
    }
    let (w, h, gap_x, gap_y) = (150usize, 34usize, 50usize, 14usize);
    let x = |i: usize| 8 + depth[i] * (w + gap_x);
    let y = |i: usize| 8 + row[i] * (h + gap_y);
    let width = 16 + (depth.iter().max().copied().unwrap_or(0) + 1) * (w + gap_x);
    let height = 16 + per_column.values().max().copied().unwrap_or(1) * (h + gap_y);
    let label = |s: &StepView| {
        let name: String = s.name.chars().take(18).collect();
        if name.len() < s.name.len() {
            format!("{name}…")
        } else {
            name
        }
    };
    html! {
        div.dag {
            svg width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } role="img"
                aria-label={ "The run's " (steps.len()) " steps and what each needs" } {
                @for (i, s) in steps.iter().enumerate() {
                    @for need in &s.needs {
                        @if let Some(&j) = index.get(need.as_str()) {
                            path.edge d=(format!(
                                "M{} {} C{} {} {} {} {} {}",
                                x(j) + w, y(j) + h / 2,
                                x(j) + w + gap_x / 2, y(j) + h / 2,
                                x(i) - gap_x / 2, y(i) + h / 2,
                                x(i), y(i) + h / 2
                            )) {}
                        }
                    }
                }
                @for (i, s) in steps.iter().enumerate() {
                    g class={ "node-" (s.state) } {
                        title { (s.name) ": " (s.state) }
                        rect x=(x(i)) y=(y(i)) width=(w) height=(h) rx="6" {}
                        text x=(x(i) + 8) y=(y(i) + 15) { (label(s)) }
                        text.node-state x=(x(i) + 8) y=(y(i) + 28) { (s.state) }
                    }
                }
            }
        }
    }
}

/// A duration in ms as people read it: `340 ms`, `4.2 s`, `3m 5s`.
fn elapsed(ms: i64) -> String {
    match ms.max(0) {
        ms @ 0..1000 => format!("{ms} ms"),
        ms @ 1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms => layout::duration(ms),
    }
}

/// Milliseconds since the epoch of a time the API gives (0 if unreadable).
fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|d| d.timestamp_millis())
        .unwrap_or(0)
}

/// How long a step's last attempt ran (so far, while it runs).
fn step_duration(step: &StepView, now_ms: i64) -> Markup {
    let Some(attempt) = step.attempts.last() else {
        return html! { span.muted { "—" } };
    };
    let Some(started) = attempt.started_at.as_deref().map(millis) else {
        return html! { span.muted { "not started" } };
    };
    match attempt.finished_at.as_deref().map(millis) {
        Some(finished) => html! { (elapsed(finished - started)) },
        None => html! { (elapsed(now_ms - started)) " so far" },
    }
}

/// What a run's allocations cost so far, priced like usage.
pub(super) fn cost_of(
    allocations: &[AllocationRecord],
    pipeline: &str,
    prices: &[PriceChange],
    now: Timestamp,
) -> f64 {
    let spans: Vec<Span> = allocations
        .iter()
        .map(|a| Span {
            allocation: a.id,
            run: a.run_id,
            tenant: a.tenant.clone(),
            pool: a.pool.clone(),
            pipeline: pipeline.to_string(),
            resources: a.resources,
            start_ms: a.opened_at.0,
            end_ms: a.closed_at.map(|t| t.0),
        })
        .collect();
    usage(&spans, prices, Window::new(i64::MIN, i64::MAX), now.0, &[])
        .total
        .cost
        .to_units_f64()
}

/// The allocations run `id` held or holds (a run holds one per group, and
/// again after a lost worker: far fewer than this).
pub(super) async fn allocations_of(
    engine: &Engine,
    id: i64,
) -> Result<Vec<AllocationRecord>, ApiError> {
    Ok(engine
        .store()
        .allocations(&AllocationFilter {
            run: Some(RunId(id)),
            limit: 1000,
            ..AllocationFilter::default()
        })
        .await?)
}

async fn actual_cost(engine: &Engine, view: &RunView) -> Result<f64, ApiError> {
    let allocations = allocations_of(engine, view.summary.id).await?;
    let prices = engine.store().prices().await?;
    Ok(cost_of(
        &allocations,
        &view.summary.pipeline,
        &prices,
        engine.now(),
    ))
}

pub async fn detail(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(id): PathParam<String>,
) -> PageResult {
    let id = run_id(&id)?;
    let view = run_view(&engine, &session.principal, id).await?;
    let cost = actual_cost(&engine, &view).await?;
    let s = &view.summary;
    let ended = s.finished_at.is_some();
    let now_ms = engine.now().0;
    // Admitted when its first allocation opened (a group placed again after
    // its worker was lost opens a later one).
    let admitted = view
        .allocations
        .iter()
        .min_by_key(|a| millis(&a.opened_at))
        .map(|a| a.opened_at.as_str());
    let admission_wait = admitted.map(|at| millis(at) - millis(&s.created_at));
    let body = html! {
        (layout::live("run", html! {
            div.grid {
                section.card {
                    dl.facts {
                        dt { "State" } dd { (layout::state(&s.state)) }
                        dt { "Tenant" } dd { (s.tenant) }
                        dt { "Priority" } dd { (s.priority) }
                        dt { "Submitted" } dd { (layout::time(&s.created_at)) }
                        dt { "Admission wait" } dd #admission-wait {
                            @match (admitted, admission_wait) {
                                (Some(at), Some(wait)) => { (elapsed(wait)) ", admitted " (layout::time(at)) },
                                _ if ended => { span.muted { "never admitted" } },
                                _ => { (elapsed(now_ms - millis(&s.created_at))) " so far" },
                            }
                        }
                        @if let Some(f) = &s.finished_at { dt { "Finished" } dd { (layout::time(f)) } }
                        dt { "Estimated cost" } dd { (layout::money(s.estimated_cost)) }
                        dt { "Cost so far" } dd { (layout::money(cost)) }
                    }
                    @if let Some(q) = &s.queue {
                        p { "Waiting: position " (q.position) " in the queue, " (q.tenant_position) " in its tenant's, for " (layout::duration(q.waited_ms)) "." }
                    }
                    p { (reason(s)) }
                    @if let Some(e) = &view.explanation { p.muted { (e) } }
                }
            }
            h2 { "Request" }
            p.muted { "Steps sharing a pool selector form a group; a group's envelope is its peak concurrent demand, what it asks a pool for." }
            div.table-wrap tabindex="0" { table #request {
                thead { tr {
                    th.num scope="col" { "Group" } th scope="col" { "Pools" } th scope="col" { "Envelope" } th scope="col" { "Steps" }
                } }
                tbody { @for g in &view.request.groups {
                    tr {
                        td.num { (g.index) }
                        td { (g.pool) }
                        td.envelope { (layout::resources(&g.resources)) }
                        td { (g.steps.join(", ")) }
                    }
                } }
            } }
            h2 { "Steps" }
            (dag(&view.steps))
            div.table-wrap tabindex="0" { table #steps {
                thead { tr { th scope="col" { "Step" } th scope="col" { "State" } th.num scope="col" { "Duration" } th scope="col" { "Attempts" } th scope="col" { "Used (last attempt)" } } }
                tbody { @for step in &view.steps {
                    tr {
                        td { (step.name) }
                        td { (layout::state(&step.state)) }
                        td.num.duration { (step_duration(step, now_ms)) }
                        td { @for a in &step.attempts {
                            span.badge { "#" (a.number) " " (a.state)
                                @if let Some(code) = a.exit_code { " exit " (code) }
                                @if let Some(e) = &a.error { " — " (e) } }
                            @if let Some(t) = &a.started_at { " from " (layout::time(t)) }
                            " "
                        } }
                        td { @match step.attempts.last().and_then(|a| a.usage.as_ref()) {
                            Some(u) => {
                                (format!("{:.2}", u.cpu_seconds)) " cpu-s · peak "
                                (layout::memory(u.memory_peak_bytes.div_ceil(1 << 20)))
                                @if u.throttled_seconds >= 0.01 { " · throttled " (format!("{:.2}", u.throttled_seconds)) " s" }
                            }
                            None => span.muted { "—" },
                        } }
                    }
                } }
            } }
            @if ended {
                p { a href={ "/pipelines/" (s.pipeline) "/recommendation?tenant=" (s.tenant) } { "Right-size pipeline " (s.pipeline) } }
            }
            h2 { "Allocations" }
            @if view.allocations.is_empty() { p.muted { "None yet." } }
            @else {
                div.table-wrap tabindex="0" { table {
                    thead { tr { th scope="col" { "Pool" } th scope="col" { "Holds" } th scope="col" { "Opened" } th scope="col" { "Closed" } } }
                    tbody { @for a in &view.allocations {
                        tr {
                            td { (a.pool) }
                            td { (layout::resources(&a.resources)) }
                            td { (layout::time(&a.opened_at)) }
                            td { @match &a.closed_at { Some(t) => (layout::time(t)), None => "open" } }
                        }
                    } }
                } }
            }
        }))
        @if !ended && session.may_operate(&s.tenant) {
            form method="post" action={ "/runs/" (s.id) "/cancel" } {
                (layout::csrf(&session))
                button.danger type="submit" { "Cancel run" }
            }
        }
        h2 { "Log" }
        pre.log #log data-follow={ "/runs/" (s.id) "/log" } tabindex="0" aria-label="The run's log" {
            (PreEscaped("")) "Loading…"
        }
    };
    let title = format!("Run {} · {}", s.id, s.pipeline);
    Ok(layout::page(&session, Section::Queue, &title, body).into_response())
}

/// The run's log as it is written: what was stored, then each new chunk as
/// it comes, until the run ends. With `follow=false`, what is stored so far,
/// and whether the run has ended (`Corral-Run-Ended`): a page that may not
/// hold a stream open reads the log so, again and again.
pub async fn log(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(id): PathParam<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let id = run_id(&id)?;
    let follow = match query.get("follow").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::invalid(corral_core::error::FieldError::new(
                "follow",
                format!("{other:?} is not true or false"),
            ))
            .into());
        }
    };
    let detail = detail_of(&engine, &session.principal, id).await?;
    let ended = if detail.run.state.is_terminal() {
        "true"
    } else {
        "false"
    };
    let body = log_body(
        engine,
        detail,
        LogRequest {
            run: id,
            step: None,
            follow,
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("corral-run-ended"), ended),
        ],
        body,
    )
        .into_response())
}

/// Cancels a run once confirmed; a refusal says why.
pub async fn cancel(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(id): PathParam<String>,
    body: Bytes,
) -> PageResult {
    let id = run_id(&id)?;
    if !confirm::confirmed(&forms::fields(&body)) {
        detail_of(&engine, &session.principal, id).await?;
        let action = format!("/runs/{}/cancel", id.0);
        let title = format!("Cancel run {}?", id.0);
        let back = format!("/runs/{}", id.0);
        let question = confirm::Question {
            title: &title,
            consequence: "Its running steps are stopped and it gives back what it holds; it cannot be resumed.",
            action: &action,
            fields: &[],
            button: "Cancel run",
            back: &back,
        };
        return Ok(confirm::ask(&session, Section::Queue, &question));
    }
    engine
        .cancel(&session.principal, id)
        .await
        .map_err(|e| PageError::from(e).titled(format!("Run {} was not cancelled", id.0)))?;
    Ok(Redirect::to(&format!("/runs/{}", id.0)).into_response())
}

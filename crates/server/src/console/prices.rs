//! Price history: for each pool, every price it has had and when each took
//! effect (what usage is priced by), newest first.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use corral_api::PriceChangeView;
use maud::html;

use super::PageResult;
use super::layout::{self, Section};
use super::session::Session;
use crate::api::routes::may_use_pool;
use crate::api::usage::price_history;
use crate::engine::Engine;

/// A price per hour, with the precision prices are set with.
fn price(p: f64) -> String {
    format!("{p:.4}")
}

pub async fn page(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
) -> PageResult {
    let axum::Json(changes) = price_history(State(engine.clone()), Query(BTreeMap::new())).await?;
    let mut by_pool: BTreeMap<String, Vec<PriceChangeView>> = BTreeMap::new();
    {
        let state = engine.read_model().view();
        for change in changes {
            // A tenant sees the prices of the pools it may use.
            if may_use_pool(&state, &session.principal, &change.pool) {
                by_pool.entry(change.pool.clone()).or_default().push(change);
            }
        }
    }
    for changes in by_pool.values_mut() {
        changes.sort_by(|a, b| b.at.cmp(&a.at));
    }
    let body = html! {
        p.muted { "Usage is priced by the price in effect while it was held; a price change applies from when it was made on." }
        @if by_pool.is_empty() { p.muted { "No pool has a price yet." } }
        @for (pool, changes) in &by_pool {
            section.card.prices aria-labelledby={ "prices-" (pool) } {
                h2 id={ "prices-" (pool) } { "Pool " (pool) }
                div.table-wrap tabindex="0" { table {
                    thead { tr {
                        th scope="col" { "In effect from" }
                        th.num scope="col" { "Per cpu-hour" }
                        th.num scope="col" { "Per GiB-hour (memory)" }
                        th.num scope="col" { "Per gpu-hour" }
                    } }
                    tbody { @for (i, c) in changes.iter().enumerate() {
                        tr {
                            td { (layout::time(&c.at)) @if i == 0 { " " span.badge { "current" } } }
                            td.num { (price(c.cpu_hour)) }
                            td.num { (price(c.memory_gib_hour)) }
                            td.num { (price(c.gpu_hour)) }
                        }
                    } }
                } }
            }
        }
    };
    Ok(layout::page(&session, Section::Prices, "Price history", body).into_response())
}

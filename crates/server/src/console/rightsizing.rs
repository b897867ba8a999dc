//! A pipeline's right-sizing page: per step, what it asks for, what its
//! recent successful attempts really used, the recommendation and the saving
//! (the API's `GET /api/v1/pipelines/{name}/recommendation`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use maud::html;

use super::PageResult;
use super::layout::{self, Section};
use super::session::Session;
use crate::api::error::PathParam;
use crate::api::rightsizing::recommendation_view;
use crate::engine::Engine;

pub async fn page(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    PathParam(name): PathParam<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let r = recommendation_view(&engine, &session.principal, &name, &query).await?;
    let body = html! {
        p { "Tenant " a href={ "/tenants/" (r.tenant) } { (r.tenant) } ". " (r.method) "." }
        div.table-wrap tabindex="0" { table {
            thead { tr {
                th scope="col" { "Step" }
                th scope="col" { "Requested" }
                th scope="col" { "Recommended" }
                th scope="col" { "Peak used" }
                th.num scope="col" { "Attempts (runs)" }
                th.num scope="col" { "Saving a month" }
            } }
            tbody { @for s in &r.steps {
                tr {
                    td { (s.step) }
                    td { (layout::cores(s.current.cpu_millis)) " cpu, " (layout::memory(s.current.memory_mib)) }
                    td { strong { (layout::cores(s.recommended.cpu_millis)) " cpu, " (layout::memory(s.recommended.memory_mib)) } }
                    td { (format!("{:.2}", s.peak_cpu_cores)) " cores, " (layout::memory(s.peak_memory_mib)) }
                    td.num { (s.samples) " (" (s.runs.len()) ")" }
                    td.num { (layout::money(s.monthly_saving)) }
                }
            } }
        } }
        p { "Saving a month, in all: " strong { (layout::money(r.monthly_saving)) } }
    };
    let title = format!("Right-sizing · {}", r.pipeline);
    Ok(layout::page(&session, Section::Queue, &title, body).into_response())
}

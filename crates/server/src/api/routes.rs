//! The HTTP API under `/api/v1`: handlers are thin; the engine does the work.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_api::*;
use corral_core::error::FieldError;
use corral_core::ids::{AttemptId, RunId, WorkerId};
use corral_core::manifest::{Document, parse_documents, parse_single};
use corral_core::pool::PoolSpec;
use corral_core::run::RunState;
use corral_core::tenant::TenantSpec;
use corral_store::{AllocationFilter, RunDetail, RunFilter};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use super::error::ApiError;
use super::views;
use crate::engine::Engine;
use crate::state::QueuePlace;

type AppState = Arc<Engine>;
type ApiResult<T> = Result<T, ApiError>;

type Params = Query<BTreeMap<String, String>>;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route(
            "/api/v1/pools/{name}",
            get(get_pool).put(put_pool).delete(delete_pool),
        )
        .route("/api/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/api/v1/tenants/{name}",
            get(get_tenant).put(put_tenant).delete(delete_tenant),
        )
        .route("/api/v1/runs", get(list_runs).post(submit_run))
        .route("/api/v1/runs/{id}", get(get_run))
        .route("/api/v1/runs/{id}/cancel", post(cancel_run))
        .route("/api/v1/runs/{id}/logs", get(run_logs))
        .route("/api/v1/allocations", get(list_allocations))
        .route("/api/v1/queue", get(list_queue))
        .route("/api/v1/agents/register", post(register_agent))
        .route("/api/v1/agents/{worker}/poll", post(poll_agent))
        .route(
            "/api/v1/agents/{worker}/attempts/{attempt}/logs",
            post(append_log),
        )
        .route(
            "/api/v1/agents/{worker}/attempts/{attempt}/report",
            post(report_attempt),
        )
        .with_state(engine)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "corral", description = "Resource-governed pipeline runner"),
    paths(
        apply,
        list_pools,
        create_pool,
        get_pool,
        put_pool,
        delete_pool,
        list_tenants,
        create_tenant,
        get_tenant,
        put_tenant,
        delete_tenant,
        submit_run,
        list_runs,
        get_run,
        cancel_run,
        run_logs,
        list_allocations,
        list_queue,
        register_agent,
        poll_agent,
        append_log,
        report_attempt
    )
)]
struct ApiDoc;

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

fn body_text(body: &Bytes) -> ApiResult<&str> {
    std::str::from_utf8(body).map_err(|_| FieldError::new("body", "is not UTF-8 text").into())
}

fn json_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(FieldError::new(path, e.into_inner().to_string()))
    })
}

/// Reads known query parameters; an unknown one is an error naming it.
fn params(query: &BTreeMap<String, String>, known: &[&str]) -> ApiResult<()> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(FieldError::new(
            k.clone(),
            format!("unknown query parameter (known: {})", known.join(", ")),
        )
        .into()),
        None => Ok(()),
    }
}

fn limit(query: &BTreeMap<String, String>, default: u32, max: u32) -> ApiResult<u32> {
    match query.get("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(
                FieldError::new("limit", format!("{text:?} is not a number from 1 to {max}"))
                    .into(),
            ),
        },
    }
}

fn run_id(text: &str) -> ApiResult<RunId> {
    text.parse()
        .map_err(|_| FieldError::new("id", format!("{text:?} is not a run id")).into())
}

// ---- pools ----

#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = [PoolView])))]
async fn list_pools(State(engine): State<AppState>) -> Json<Vec<PoolView>> {
    let state = engine.read().await;
    let snapshot = state.snapshot(engine.now());
    Json(
        state
            .pools
            .values()
            .map(|p| views::pool(p, &snapshot))
            .collect(),
    )
}

async fn pool_view(engine: &Engine, name: &str) -> ApiResult<PoolView> {
    let state = engine.read().await;
    let pool = state
        .pools
        .get(name)
        .ok_or_else(|| ApiError::not_found("pool", name))?;
    Ok(views::pool(pool, &state.snapshot(engine.now())))
}

fn parse_pool(body: &Bytes) -> ApiResult<PoolSpec> {
    Ok(PoolSpec::parse(parse_single(body_text(body)?, "Pool")?)?)
}

/// Create a pool from a `Pool` document (YAML or JSON).
#[utoipa::path(post, path = "/api/v1/pools", request_body(content = String, description = "A Pool document, YAML or JSON"),
    responses((status = 201, body = PoolView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_pool(
    State(engine): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PoolView>)> {
    let spec = parse_pool(&body)?;
    let (record, _) = engine.put_pool(spec, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(pool_view(&engine, &record.spec.name).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}", params(("name" = String, Path)),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)))]
async fn get_pool(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PoolView>> {
    Ok(Json(pool_view(&engine, &name).await?))
}

/// Create or replace a pool.
#[utoipa::path(put, path = "/api/v1/pools/{name}", params(("name" = String, Path)),
    request_body(content = String, description = "A Pool document, YAML or JSON"),
    responses((status = 200, body = PoolView), (status = 400, body = ErrorBody)))]
async fn put_pool(
    State(engine): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<PoolView>> {
    let spec = parse_pool(&body)?;
    if spec.name != name {
        return Err(FieldError::new(
            "name",
            format!("{:?} does not match the path's {name:?}", spec.name),
        )
        .into());
    }
    engine.put_pool(spec, false).await?;
    Ok(Json(pool_view(&engine, &name).await?))
}

/// Delete a pool; refused (409) while allocations on it are open.
#[utoipa::path(delete, path = "/api/v1/pools/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_pool(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    engine.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tenants ----

#[utoipa::path(get, path = "/api/v1/tenants", responses((status = 200, body = [TenantView])))]
async fn list_tenants(State(engine): State<AppState>) -> Json<Vec<TenantView>> {
    let state = engine.read().await;
    let snapshot = state.snapshot(engine.now());
    Json(
        state
            .tenants
            .values()
            .map(|t| views::tenant(t, &snapshot))
            .collect(),
    )
}

async fn tenant_view(engine: &Engine, name: &str) -> ApiResult<TenantView> {
    let state = engine.read().await;
    let tenant = state
        .tenants
        .get(name)
        .ok_or_else(|| ApiError::not_found("tenant", name))?;
    Ok(views::tenant(tenant, &state.snapshot(engine.now())))
}

fn parse_tenant(body: &Bytes) -> ApiResult<TenantSpec> {
    Ok(TenantSpec::parse(parse_single(
        body_text(body)?,
        "Tenant",
    )?)?)
}

/// Create a tenant from a `Tenant` document (YAML or JSON).
#[utoipa::path(post, path = "/api/v1/tenants", request_body(content = String, description = "A Tenant document, YAML or JSON"),
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tenant(
    State(engine): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    let spec = parse_tenant(&body)?;
    let (record, _) = engine.put_tenant(spec, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(tenant_view(&engine, &record.spec.name).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/tenants/{name}", params(("name" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TenantView>> {
    Ok(Json(tenant_view(&engine, &name).await?))
}

/// Create or replace a tenant.
#[utoipa::path(put, path = "/api/v1/tenants/{name}", params(("name" = String, Path)),
    request_body(content = String, description = "A Tenant document, YAML or JSON"),
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody)))]
async fn put_tenant(
    State(engine): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<TenantView>> {
    let spec = parse_tenant(&body)?;
    if spec.name != name {
        return Err(FieldError::new(
            "name",
            format!("{:?} does not match the path's {name:?}", spec.name),
        )
        .into());
    }
    engine.put_tenant(spec, false).await?;
    Ok(Json(tenant_view(&engine, &name).await?))
}

/// Delete a tenant; refused (409) while its allocations are open.
#[utoipa::path(delete, path = "/api/v1/tenants/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_tenant(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    engine.delete_tenant(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Apply a manifest of Pool and Tenant documents: all are checked before any is applied.
#[utoipa::path(post, path = "/api/v1/apply", request_body(content = String, description = "Multi-document YAML (or JSON) of Pools and Tenants"),
    responses((status = 200, body = [Applied]), (status = 400, body = ErrorBody)))]
async fn apply(State(engine): State<AppState>, body: Bytes) -> ApiResult<Json<Vec<Applied>>> {
    let docs = parse_documents(body_text(&body)?)?;
    if let Some(i) = docs.iter().position(|d| matches!(d, Document::Pipeline(_))) {
        return Err(FieldError::new(
            format!("documents[{i}].kind"),
            "a Pipeline is run with `corral submit` (POST /api/v1/runs), not applied",
        )
        .into());
    }
    let mut applied = Vec::with_capacity(docs.len());
    for doc in docs {
        let (kind, name, action) = match doc {
            Document::Pool(spec) => {
                let (r, a) = engine.put_pool(spec, false).await?;
                ("Pool", r.spec.name, a)
            }
            Document::Tenant(spec) => {
                let (r, a) = engine.put_tenant(spec, false).await?;
                ("Tenant", r.spec.name, a)
            }
            Document::Pipeline(_) => continue,
        };
        applied.push(Applied {
            kind: kind.into(),
            name,
            action: action.as_str().into(),
        });
    }
    Ok(Json(applied))
}

// ---- runs ----

async fn detail_of(engine: &Engine, id: RunId) -> ApiResult<RunDetail> {
    engine
        .store()
        .run(id)
        .await?
        .ok_or_else(|| ApiError::not_found("run", id))
}

/// A run; one waiting in the queue with its place and reason.
async fn run_view(engine: &Engine, id: RunId) -> ApiResult<RunView> {
    let detail = detail_of(engine, id).await?;
    let place = if detail.run.state.is_terminal() {
        None
    } else {
        queue_place(engine, id).await
    };
    Ok(views::run(&detail, place.as_ref()))
}

/// A run's place in the queue, if it waits there.
async fn queue_place(engine: &Engine, id: RunId) -> Option<QueuePlace> {
    let state = engine.read().await;
    if !state.queue.contains(id) {
        return None;
    }
    state
        .queue_places(engine.now())
        .into_iter()
        .find(|p| p.run == id)
}

/// The place of every queued run, by id.
async fn queue_places(engine: &Engine) -> BTreeMap<RunId, QueuePlace> {
    let state = engine.read().await;
    if state.queue.is_empty() {
        return BTreeMap::new();
    }
    state
        .queue_places(engine.now())
        .into_iter()
        .map(|p| (p.run, p))
        .collect()
}

/// The runs waiting for admission, in admission order, each with its position
/// in the whole queue and in its tenant's, how long it has waited, and why.
#[utoipa::path(get, path = "/api/v1/queue",
    params(("tenant" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = [RunSummary]), (status = 400, body = ErrorBody)))]
async fn list_queue(
    State(engine): State<AppState>,
    Query(query): Params,
) -> ApiResult<Json<Vec<RunSummary>>> {
    params(&query, &["tenant", "limit"])?;
    let limit = limit(&query, 1000, 100_000)? as usize;
    let tenant = query.get("tenant");
    let state = engine.read().await;
    let places = state.queue_places(engine.now());
    Ok(Json(
        places
            .iter()
            .filter_map(|p| {
                let run = &state.runs.get(&p.run)?.record;
                tenant
                    .is_none_or(|t| &run.tenant == t)
                    .then(|| views::run_summary(run, Some(p)))
            })
            .take(limit)
            .collect(),
    ))
}

/// Submit a pipeline: answers 201 with the run, `queued`, or `rejected` with its
/// reason when it can never fit.
#[utoipa::path(post, path = "/api/v1/runs", request_body(content = String, description = "A Pipeline document, YAML or JSON"),
    responses((status = 201, body = RunView), (status = 400, body = ErrorBody)))]
async fn submit_run(
    State(engine): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    let record = engine.submit(body_text(&body)?).await?;
    Ok((
        StatusCode::CREATED,
        Json(views::run(&detail_of(&engine, record.id).await?, None)),
    ))
}

/// Runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs",
    params(("tenant" = Option<String>, Query), ("state" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = [RunSummary]), (status = 400, body = ErrorBody)))]
async fn list_runs(
    State(engine): State<AppState>,
    Query(query): Params,
) -> ApiResult<Json<Vec<RunSummary>>> {
    params(&query, &["tenant", "state", "limit"])?;
    let state = query
        .get("state")
        .map(|s| {
            s.parse::<RunState>()
                .map_err(|e| FieldError::new("state", e))
        })
        .transpose()?;
    let filter = RunFilter {
        tenant: query.get("tenant").cloned(),
        state,
        limit: limit(&query, 100, 10_000)?,
    };
    let runs = engine.store().runs(&filter).await?;
    let places = if runs.iter().any(|r| !r.state.is_terminal()) {
        queue_places(&engine).await
    } else {
        BTreeMap::new()
    };
    Ok(Json(
        runs.iter()
            .map(|r| views::run_summary(r, places.get(&r.id)))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody)))]
async fn get_run(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    Ok(Json(run_view(&engine, run_id(&id)?).await?))
}

/// Cancel a run: releases what it holds at once and kills its steps.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", params(("id" = i64, Path)),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_run(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let id = run_id(&id)?;
    engine.cancel(id).await?;
    Ok(Json(run_view(&engine, id).await?))
}

/// A run's output as plain text: one step's, or every step's with its name before each line.
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs", params(("id" = i64, Path), ("step" = Option<String>, Query)),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)))]
async fn run_logs(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(query): Params,
) -> ApiResult<Response> {
    params(&query, &["step"])?;
    let id = run_id(&id)?;
    let detail = engine
        .store()
        .run(id)
        .await?
        .ok_or_else(|| ApiError::not_found("run", id))?;
    let step = match query.get("step") {
        None => None,
        Some(name) => Some(
            detail
                .steps
                .iter()
                .find(|s| &s.name == name)
                .map(|s| s.idx)
                .ok_or_else(|| FieldError::new("step", format!("run {id} has no step {name:?}")))?,
        ),
    };
    let chunks = engine.store().logs(id, step).await?;
    let text = crate::logs::render(&detail, &chunks, step.is_none());
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// The allocation history, open and closed, oldest first.
#[utoipa::path(get, path = "/api/v1/allocations",
    params(("tenant" = Option<String>, Query), ("pool" = Option<String>, Query), ("run" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = [AllocationView]), (status = 400, body = ErrorBody)))]
async fn list_allocations(
    State(engine): State<AppState>,
    Query(query): Params,
) -> ApiResult<Json<Vec<AllocationView>>> {
    params(&query, &["tenant", "pool", "run", "limit"])?;
    let filter = AllocationFilter {
        tenant: query.get("tenant").cloned(),
        pool: query.get("pool").cloned(),
        run: query
            .get("run")
            .map(|r| {
                r.parse()
                    .map_err(|_| FieldError::new("run", format!("{r:?} is not a run id")))
            })
            .transpose()?,
        closed_since: None,
        limit: limit(&query, 10_000, 1_000_000)?,
    };
    let allocations = engine.store().allocations(&filter).await?;
    Ok(Json(allocations.iter().map(views::allocation).collect()))
}

// ---- agents ----

/// An agent joins a pool.
#[utoipa::path(post, path = "/api/v1/agents/register", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, body = ErrorBody)))]
async fn register_agent(
    State(engine): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<RegisterResponse>> {
    let req: RegisterRequest = json_body(&body)?;
    let id = engine.register(req).await?;
    Ok(Json(RegisterResponse {
        worker_id: id.0,
        heartbeat_timeout_ms: u64::try_from(engine.config().heartbeat_timeout.as_millis())
            .unwrap_or(u64::MAX),
    }))
}

/// Long-poll for assignments; also the agent's heartbeat.
#[utoipa::path(post, path = "/api/v1/agents/{worker}/poll", params(("worker" = i64, Path)), request_body = PollRequest,
    responses((status = 200, body = PollResponse)))]
async fn poll_agent(
    State(engine): State<AppState>,
    Path(worker): Path<i64>,
    body: Bytes,
) -> ApiResult<Json<PollResponse>> {
    let req: PollRequest = json_body(&body)?;
    Ok(Json(engine.poll(WorkerId(worker), req).await?))
}

/// Append a chunk of an attempt's output (idempotent per offset).
#[utoipa::path(post, path = "/api/v1/agents/{worker}/attempts/{attempt}/logs",
    params(("worker" = i64, Path), ("attempt" = i64, Path)), request_body = LogAppend,
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn append_log(
    State(engine): State<AppState>,
    Path((_worker, attempt)): Path<(i64, i64)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: LogAppend = json_body(&body)?;
    engine
        .append_log(AttemptId(attempt), req.offset, req.data)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Report how an attempt ended (idempotent).
#[utoipa::path(post, path = "/api/v1/agents/{worker}/attempts/{attempt}/report",
    params(("worker" = i64, Path), ("attempt" = i64, Path)), request_body = ReportRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn report_attempt(
    State(engine): State<AppState>,
    Path((worker, attempt)): Path<(i64, i64)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: ReportRequest = json_body(&body)?;
    engine
        .report(WorkerId(worker), AttemptId(attempt), req)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

//! The HTTP API under `/api/v1`: handlers are thin; the engine does the work.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use corral_api::*;
use corral_core::access::Access;
use corral_core::access::Role;
use corral_core::error::FieldError;
use corral_core::ids::{AttemptId, RunId, WorkerId};
use corral_core::manifest::{Document, parse_documents, parse_single};
use corral_core::pool::PoolSpec;
use corral_core::run::RunState;
use corral_core::tenant::TenantSpec;
use corral_store::{AllocationFilter, AuditFilter, PoolRecord, RunDetail, RunFilter};
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use utoipa::{Modify, OpenApi};

use super::error::{ApiError, PathParam};
use super::guard::guard;
use super::openapi::{
    ErrorResponses, ManifestDocument, PipelineDocument, PoolDocument, TenantDocument, TokenRequest,
};
use super::views;
use crate::auth::{Caller, Principal};
use crate::engine::Engine;
use crate::metrics::{__path_scrape, scrape};
use crate::read_model::View;
use crate::state::QueuePlace;

type AppState = Arc<Engine>;
type ApiResult<T> = Result<T, ApiError>;

pub(super) type Params = Query<BTreeMap<String, String>>;

/// One route of the API with its access rule. The router is built from this
/// table only, so no route exists without a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

type Handler = MethodRouter<AppState>;

fn table(config: &RouterConfig) -> Vec<(RouteSpec, Handler)> {
    use Access::*;
    let metrics_access = if config.metrics_public {
        Public
    } else {
        ReadAll
    };
    let r = |method: &'static str, path: &'static str, access: Access, handler: Handler| {
        (
            RouteSpec {
                method,
                path,
                access,
            },
            handler,
        )
    };
    vec![
        r("GET", "/healthz", Public, get(healthz)),
        r("GET", "/api/v1/openapi.json", Public, get(openapi)),
        r("GET", "/metrics", metrics_access, get(scrape)),
        r("POST", "/api/v1/apply", Admin, post(apply)),
        r("GET", "/api/v1/pools", Read, get(list_pools)),
        r("POST", "/api/v1/pools", Admin, post(create_pool)),
        r("GET", "/api/v1/pools/{name}", Read, get(get_pool)),
        r("PUT", "/api/v1/pools/{name}", Admin, put(put_pool)),
        r("DELETE", "/api/v1/pools/{name}", Admin, delete(delete_pool)),
        r("GET", "/api/v1/tenants", Read, get(list_tenants)),
        r("POST", "/api/v1/tenants", Admin, post(create_tenant)),
        r("GET", "/api/v1/tenants/{name}", Read, get(get_tenant)),
        r("PUT", "/api/v1/tenants/{name}", Admin, put(put_tenant)),
        r(
            "DELETE",
            "/api/v1/tenants/{name}",
            Admin,
            delete(delete_tenant),
        ),
        r("GET", "/api/v1/runs", Read, get(list_runs)),
        r("POST", "/api/v1/runs", Operate, post(submit_run)),
        r("GET", "/api/v1/runs/{id}", Read, get(get_run)),
        r(
            "POST",
            "/api/v1/runs/{id}/cancel",
            Operate,
            post(cancel_run),
        ),
        r("GET", "/api/v1/runs/{id}/logs", Read, get(run_logs)),
        r("GET", "/api/v1/allocations", Read, get(list_allocations)),
        r(
            "GET",
            "/api/v1/usage",
            Read,
            get(super::usage::usage_report),
        ),
        r(
            "GET",
            "/api/v1/prices",
            Read,
            get(super::usage::price_history),
        ),
        r(
            "GET",
            "/api/v1/alerts",
            Read,
            get(super::usage::list_alerts),
        ),
        r(
            "GET",
            "/api/v1/tenants/{name}/summary",
            Read,
            get(super::usage::tenant_summary),
        ),
        r(
            "GET",
            "/api/v1/pipelines/{name}/recommendation",
            Read,
            get(super::rightsizing::recommendation),
        ),
        r("GET", "/api/v1/queue", Read, get(list_queue)),
        r("GET", "/api/v1/tokens", ReadAll, get(list_tokens)),
        r("POST", "/api/v1/tokens", Admin, post(create_token)),
        r(
            "DELETE",
            "/api/v1/tokens/{name}",
            Admin,
            delete(revoke_token),
        ),
        r("GET", "/api/v1/audit", ReadAll, get(list_audit)),
        // Server-wide, like the audit: not a tenant's business.
        r(
            "GET",
            "/api/v1/workers",
            ReadAll,
            get(list_background_workers),
        ),
        r(
            "POST",
            "/api/v1/agents/register",
            Register,
            post(register_agent),
        ),
        r(
            "POST",
            "/api/v1/agents/{worker}/poll",
            Worker,
            post(poll_agent),
        ),
        r(
            "POST",
            "/api/v1/agents/{worker}/attempts/{attempt}/logs",
            Worker,
            post(append_log),
        ),
        r(
            "POST",
            "/api/v1/agents/{worker}/attempts/{attempt}/report",
            Worker,
            post(report_attempt),
        ),
        r(
            "GET",
            "/api/v1/history",
            Read,
            get(super::history::get_history),
        ),
        r(
            "GET",
            "/api/v1/history/waits",
            Read,
            get(super::history::get_waits),
        ),
    ]
}

/// Every route with its access rule, as the router serves them by default.
pub fn route_table() -> Vec<RouteSpec> {
    table(&RouterConfig::default())
        .into_iter()
        .map(|(spec, _)| spec)
        .collect()
}

/// Browser origins allowed to call the API (CORS); none unless configured.
#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    pub cors_origins: Vec<HeaderValue>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send a request's body.
    pub body_timeout: std::time::Duration,
    /// `/metrics` takes no token (else `viewer` or `admin`).
    pub metrics_public: bool,
}

pub fn router(engine: Arc<Engine>, config: &RouterConfig) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table(config) {
        let gate = from_fn_with_state((engine.clone(), spec.access), guard);
        // The guard sees the body as it came (its framing tells whether there
        // is one); the handler reads it under the body timeout.
        let handler = handler.layer(RequestBodyTimeoutLayer::new(config.body_timeout));
        router = router.route(spec.path, handler.route_layer(gate));
    }
    let max_body_bytes = config.max_body_bytes;
    let router = router
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(engine)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(move |request, next| {
            super::error::envelope(request, next, max_body_bytes)
        }));
    if config.cors_origins.is_empty() {
        return router;
    }
    router.layer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(config.cors_origins.clone()))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    )
}

/// Readiness: 200 while the store takes writes, 503 while it does not (with
/// the store's error for a `viewer` or `admin` token).
#[utoipa::path(get, path = "/healthz", security(()),
    responses((status = 200, body = crate::engine::Readiness), (status = 503, body = crate::engine::Readiness)))]
async fn healthz(State(engine): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let readiness = engine.readiness_for(authorization).await;
    let status = if readiness.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "corral", description = "Resource-governed pipeline runner"),
    paths(
        healthz,
        scrape,
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
        super::usage::usage_report,
        super::usage::price_history,
        super::usage::list_alerts,
        super::usage::tenant_summary,
        super::rightsizing::recommendation,
        list_queue,
        list_tokens,
        create_token,
        revoke_token,
        list_audit,
        list_background_workers,
        register_agent,
        poll_agent,
        append_log,
        report_attempt,
        super::history::get_history,
        super::history::get_waits
    )
)]
struct ApiDoc;

/// The OpenAPI document of this API.
///
/// Every call carries a bearer token (the `bearer` scheme); the agent calls
/// after registration carry the worker's secret the same way.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    let mut doc = ApiDoc::openapi();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    doc.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    ErrorResponses.modify(&mut doc);
    doc
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
pub(super) fn params(query: &BTreeMap<String, String>, known: &[&str]) -> ApiResult<()> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(FieldError::new(
            k.clone(),
            format!("unknown query parameter (known: {})", known.join(", ")),
        )
        .into()),
        None => Ok(()),
    }
}

pub(super) fn limit(query: &BTreeMap<String, String>, default: u32, max: u32) -> ApiResult<u32> {
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

fn attempt_id(text: &str) -> ApiResult<AttemptId> {
    text.parse()
        .map_err(|_| FieldError::new("attempt", format!("{text:?} is not an attempt id")).into())
}

// ---- pools ----

#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = [PoolView])))]
async fn list_pools(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Json<Vec<PoolView>> {
    let view = engine.read_model().view();
    Json(
        view.pools
            .values()
            .filter(|p| may_use_pool(&view, &who, &p.spec.name))
            .map(|p| pool_of(&engine, &view, &who, p))
            .collect(),
    )
}

/// A pool as `who` sees it in `view`.
fn pool_of(engine: &Engine, view: &View, who: &Principal, pool: &PoolRecord) -> PoolView {
    let name = &pool.spec.name;
    views::pool(
        pool,
        &view.snapshot,
        view.reserved.get(name).copied().unwrap_or_default(),
        agents_seen_by(engine, view, who, name),
    )
}

/// A pool's live agents as `who` may see them: a tenant's token sees what
/// they hold for its own runs only. Their last polls are read apart from the
/// view, which is not rebuilt for a poll.
pub(crate) fn agents_seen_by(
    engine: &Engine,
    view: &View,
    who: &Principal,
    pool: &str,
) -> Vec<AgentView> {
    let mut agents = view.agents.get(pool).cloned().unwrap_or_default();
    for agent in &mut agents {
        if let Some(polled) = engine.last_poll(WorkerId(agent.worker_id)) {
            let polled = views::time(polled);
            if agent.last_poll_at.as_ref().is_none_or(|t| *t < polled) {
                agent.last_poll_at = Some(polled);
            }
        }
        if let Some(tenant) = who.role.tenant() {
            agent.holds.retain(|h| h.tenant == tenant);
        }
    }
    agents
}

/// Whether `who` may see pool `name`: a tenant sees the pools it may use.
pub(crate) fn may_use_pool(view: &View, who: &Principal, name: &str) -> bool {
    match who.role.tenant() {
        None => true,
        Some(tenant) => view
            .tenants
            .get(tenant)
            .is_some_and(|t| t.spec.allows_pool(name)),
    }
}

pub(crate) async fn pool_view(engine: &Engine, who: &Principal, name: &str) -> ApiResult<PoolView> {
    let view = engine.read_model().view();
    let pool = view
        .pools
        .get(name)
        .ok_or_else(|| ApiError::not_found("pool", name))?;
    if !may_use_pool(&view, who, name) {
        return Err(ApiError::forbidden(format!(
            "token {} may not use pool {name}",
            who.name
        )));
    }
    Ok(pool_of(engine, &view, who, pool))
}

fn parse_pool(body: &Bytes) -> ApiResult<PoolSpec> {
    Ok(PoolSpec::parse(parse_single(body_text(body)?, "Pool")?)?)
}

/// Create a pool from a `Pool` document (YAML or JSON).
#[utoipa::path(post, path = "/api/v1/pools", request_body(content((PoolDocument = "application/json"), (PoolDocument = "application/yaml")), description = "A Pool document, YAML or JSON"),
    responses((status = 201, body = PoolView), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_pool(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PoolView>)> {
    let spec = parse_pool(&body)?;
    let (record, _) = engine.put_pool(&who, spec, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(pool_view(&engine, &who, &record.spec.name).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)))]
async fn get_pool(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<PoolView>> {
    Ok(Json(pool_view(&engine, &who, &name).await?))
}

/// Create or replace a pool.
#[utoipa::path(put, path = "/api/v1/pools/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    request_body(content((PoolDocument = "application/json"), (PoolDocument = "application/yaml")), description = "A Pool document, YAML or JSON, whose name is the path's"),
    responses((status = 200, body = PoolView), (status = 503, body = ErrorBody)))]
async fn put_pool(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
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
    engine.put_pool(&who, spec, false).await?;
    Ok(Json(pool_view(&engine, &who, &name).await?))
}

/// Delete a pool; refused (409) while allocations on it are open.
#[utoipa::path(delete, path = "/api/v1/pools/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_pool(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
) -> ApiResult<StatusCode> {
    engine.delete_pool(&who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tenants ----

#[utoipa::path(get, path = "/api/v1/tenants", responses((status = 200, body = [TenantView])))]
async fn list_tenants(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Json<Vec<TenantView>> {
    let view = engine.read_model().view();
    Json(
        view.tenants
            .values()
            .filter(|t| who.may_touch_tenant(&t.spec.name))
            .map(|t| views::tenant(t, &view.snapshot))
            .collect(),
    )
}

/// Refuses `who` a tenant's objects unless it may see them.
fn check_tenant(who: &Principal, tenant: &str) -> ApiResult<()> {
    if who.may_touch_tenant(tenant) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "token {} is not for tenant {tenant}",
            who.name
        )))
    }
}

pub(crate) async fn tenant_view(
    engine: &Engine,
    who: &Principal,
    name: &str,
) -> ApiResult<TenantView> {
    check_tenant(who, name)?;
    let view = engine.read_model().view();
    let tenant = view
        .tenants
        .get(name)
        .ok_or_else(|| ApiError::not_found("tenant", name))?;
    Ok(views::tenant(tenant, &view.snapshot))
}

fn parse_tenant(body: &Bytes) -> ApiResult<TenantSpec> {
    Ok(TenantSpec::parse(parse_single(
        body_text(body)?,
        "Tenant",
    )?)?)
}

/// Create a tenant from a `Tenant` document (YAML or JSON).
#[utoipa::path(post, path = "/api/v1/tenants", request_body(content((TenantDocument = "application/json"), (TenantDocument = "application/yaml")), description = "A Tenant document, YAML or JSON"),
    responses((status = 201, body = TenantView), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_tenant(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    let spec = parse_tenant(&body)?;
    let (record, _) = engine.put_tenant(&who, spec, true).await?;
    Ok((
        StatusCode::CREATED,
        Json(tenant_view(&engine, &who, &record.spec.name).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/tenants/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<TenantView>> {
    Ok(Json(tenant_view(&engine, &who, &name).await?))
}

/// Create or replace a tenant.
#[utoipa::path(put, path = "/api/v1/tenants/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    request_body(content((TenantDocument = "application/json"), (TenantDocument = "application/yaml")), description = "A Tenant document, YAML or JSON, whose name is the path's"),
    responses((status = 200, body = TenantView), (status = 503, body = ErrorBody)))]
async fn put_tenant(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
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
    engine.put_tenant(&who, spec, false).await?;
    Ok(Json(tenant_view(&engine, &who, &name).await?))
}

/// Delete a tenant; refused (409) while its allocations are open.
#[utoipa::path(delete, path = "/api/v1/tenants/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_tenant(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
) -> ApiResult<StatusCode> {
    engine.delete_tenant(&who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Apply a manifest of Pool and Tenant documents: all are checked before any is applied
/// (a tenant may name a pool the same manifest creates), and every problem is reported.
#[utoipa::path(post, path = "/api/v1/apply",
    request_body(content((Option<ManifestDocument> = "application/json"), (Option<ManifestDocument> = "application/yaml")),
        description = "Pools and Tenants: one JSON document, or YAML documents separated by `---`; none applies nothing"),
    responses((status = 200, body = [Applied]), (status = 503, body = ErrorBody)))]
async fn apply(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<Vec<Applied>>> {
    let docs = parse_documents(body_text(&body)?)?;
    if let Some(i) = docs.iter().position(|d| matches!(d, Document::Pipeline(_))) {
        return Err(FieldError::new(
            format!("documents[{i}].kind"),
            "a Pipeline is run with `corral submit` (POST /api/v1/runs), not applied",
        )
        .into());
    }
    let applied = engine
        .apply(&who, docs)
        .await?
        .into_iter()
        .map(|(kind, name, action)| Applied {
            kind: kind.into(),
            name,
            action: action.as_str().into(),
        })
        .collect();
    Ok(Json(applied))
}

// ---- runs ----

/// A run with everything that belongs to it, if `who` may see it. Another
/// tenant's run is not found, exactly as a run that does not exist, so ids
/// cannot be probed for runs and their owners.
pub(crate) async fn detail_of(engine: &Engine, who: &Principal, id: RunId) -> ApiResult<RunDetail> {
    engine
        .store()
        .run(id)
        .await?
        .filter(|detail| who.may_touch_tenant(&detail.run.tenant))
        .ok_or_else(|| ApiError::not_found("run", id))
}

/// A run; one waiting in the queue with its place and reason.
pub(crate) async fn run_view(engine: &Engine, who: &Principal, id: RunId) -> ApiResult<RunView> {
    let detail = detail_of(engine, who, id).await?;
    let place = if detail.run.state.is_terminal() {
        None
    } else {
        queue_place(engine, id).await
    };
    Ok(views::run(&detail, place.as_ref()))
}

/// A run's place in the queue, if it waits there (as of the positions'
/// batch, which may be older than the last commit for a long queue).
async fn queue_place(engine: &Engine, id: RunId) -> Option<QueuePlace> {
    engine.read_model().positions().place(id, engine.now())
}

/// The header that says how many items a list has in all, of which the
/// answer is a page.
pub(super) const TOTAL_COUNT: &str = "x-total-count";

/// The header that says which committed batch queue positions are as of.
pub(super) const QUEUE_AS_OF: &str = "x-queue-as-of";

/// The runs waiting for admission, in admission order, each with its position
/// in the whole queue and in its tenant's, how long it has waited, and why.
///
/// A page: those after position `after` (of the whole queue), at most
/// `limit`; the `X-Total-Count` header says how many are waiting in all (of
/// the tenant's, with `tenant`). The next page starts after the last
/// position of this one.
#[utoipa::path(get, path = "/api/v1/queue",
    params(("tenant" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100_000),
        ("after" = Option<u64>, Query, minimum = 0, maximum = 1_000_000_000, description = "Only runs at a later position of the whole queue")),
    responses((status = 200, body = [RunSummary],
        headers(("X-Total-Count" = u64, description = "Runs waiting in all (of the tenant's, with `tenant`)"),
            ("X-Queue-As-Of" = u64, description = "The committed batch of writes the positions are as of: a long queue's positions are computed in the background and may lag the last commit")))))]
async fn list_queue(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(query): Params,
) -> ApiResult<([(&'static str, String); 2], Json<Vec<RunSummary>>)> {
    params(&query, &["tenant", "limit", "after"])?;
    let limit = limit(&query, 1000, 100_000)? as usize;
    let after = match query.get("after") {
        None => 0,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= 1_000_000_000)
            .ok_or_else(|| {
                FieldError::new(
                    "after",
                    format!("{text:?} is not a position from 0 to 1000000000"),
                )
            })?,
    };
    let tenant = tenant_scope(&who, &query)?;
    let tenant = tenant.as_ref();
    let view = engine.read_model().view();
    let positions = engine.read_model().positions();
    let tenant = tenant.map(String::as_str);
    // Positions are as of their batch; each run shows its committed record
    // (one that ended since is left out).
    let page = positions
        .page(tenant, after, limit, engine.now())
        .iter()
        .filter_map(|p| Some(views::run_summary(view.run(p.run)?, Some(p))))
        .collect();
    Ok((
        [
            (TOTAL_COUNT, positions.len(tenant).to_string()),
            (QUEUE_AS_OF, positions.seq().to_string()),
        ],
        Json(page),
    ))
}

/// Submit a pipeline: answers 201 with the run, `queued`, or `rejected` with its
/// reason when it can never fit; 409 when it may cost more than its tenant's
/// whole hard budget.
///
/// A bulk submit (`count`, or a pipeline with a `matrix`) makes one run per
/// combination of the matrix, `count` times each, in one transaction, and
/// answers the list of their ids (`runs`); each run is admitted as a run
/// submitted alone would be.
#[utoipa::path(post, path = "/api/v1/runs", request_body(content((PipelineDocument = "application/json"), (PipelineDocument = "application/yaml")), description = "A Pipeline document, YAML or JSON"),
    params(("count" = Option<u32>, Query, minimum = 1, maximum = 10_000,
        description = "Runs of each combination of the matrix (1 without one); the server bounds the total (10,000 by default)")),
    responses((status = 201, body = Submitted, description = "The run; for a bulk submit, `runs`"), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn submit_run(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(query): Params,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Submitted>)> {
    params(&query, &["count"])?;
    let count = query
        .get("count")
        .map(|text| {
            text.parse::<usize>()
                .map_err(|_| FieldError::new("count", format!("{text:?} is not a number of runs")))
        })
        .transpose()?;
    let mut runs = engine
        .submit_runs(&who, body_text(&body)?, count.unwrap_or(1))
        .await?;
    // A plain pipeline submitted alone is answered with its run, as it always was.
    let plain = count.is_none() && runs.len() == 1 && runs[0].run.spec.matrix.is_empty();
    let answer = match runs.pop() {
        Some(run) if plain => Submitted::Run(Box::new(views::run(&run, None))),
        last => {
            runs.extend(last);
            Submitted::Runs(SubmittedRuns {
                runs: runs.iter().map(|d| views::submitted(&d.run)).collect(),
            })
        }
    };
    Ok((StatusCode::CREATED, Json(answer)))
}

/// The tenant a list is limited to: a tenant token's own (asking for another
/// is refused), or the `tenant` parameter.
pub(super) fn tenant_scope(
    who: &Principal,
    query: &BTreeMap<String, String>,
) -> ApiResult<Option<String>> {
    let asked = query.get("tenant");
    if let Some(t) = asked {
        check_tenant(who, t)?;
    }
    Ok(who
        .role
        .tenant()
        .map(str::to_string)
        .or_else(|| asked.cloned()))
}

/// Runs, newest first.
///
/// A page: at most `limit`, of those with an id below `before` when given.
/// The next page is `before` the last id of this one; a page shorter than
/// `limit` is the last.
#[utoipa::path(get, path = "/api/v1/runs",
    params(("tenant" = Option<String>, Query),
        ("state" = Option<String>, Query, pattern = "^(queued|admitted|provisioning|running|succeeded|failed|cancelled|rejected)$"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10_000),
        ("before" = Option<i64>, Query, minimum = 1, description = "Only runs with a smaller id (older)")),
    responses((status = 200, body = [RunSummary]), (status = 503, body = ErrorBody)))]
async fn list_runs(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(query): Params,
) -> ApiResult<Json<Vec<RunSummary>>> {
    params(&query, &["tenant", "state", "limit", "before"])?;
    let before = query
        .get("before")
        .map(|text| {
            text.parse::<RunId>()
                .ok()
                .filter(|id| id.0 >= 1)
                .ok_or_else(|| FieldError::new("before", format!("{text:?} is not a run id")))
        })
        .transpose()?;
    let state = query
        .get("state")
        .map(|s| {
            s.parse::<RunState>()
                .map_err(|e| FieldError::new("state", e))
        })
        .transpose()?;
    let filter = RunFilter {
        tenant: tenant_scope(&who, &query)?,
        state,
        limit: limit(&query, 100, 10_000)?,
    };
    let runs = engine.store().runs_before(&filter, before).await?;
    let positions = engine.read_model().positions();
    let now = engine.now();
    Ok(Json(
        runs.iter()
            .map(|r| {
                let place = (!r.state.is_terminal())
                    .then(|| positions.place(r.id, now))
                    .flatten();
                views::run_summary(r, place.as_ref())
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_run(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<RunView>> {
    Ok(Json(run_view(&engine, &who, run_id(&id)?).await?))
}

/// Cancel a run: releases what it holds at once and kills its steps.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn cancel_run(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<RunView>> {
    let id = run_id(&id)?;
    engine.cancel(&who, id).await?;
    Ok(Json(run_view(&engine, &who, id).await?))
}

/// A run's output as plain text: one step's, or every step's with its name
/// before each line. Streamed; with `follow=true` the answer stays open and
/// carries new output as it is stored, whole lines at a time, until the run ends.
#[utoipa::path(get, path = "/api/v1/runs/{id}/logs",
    params(("id" = i64, Path, minimum = 1), ("step" = Option<String>, Query), ("follow" = Option<bool>, Query)),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 404, description = "No such run, or no such step in it", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn run_logs(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(id): PathParam<String>,
    Query(query): Params,
) -> ApiResult<Response> {
    params(&query, &["step", "follow"])?;
    let id = run_id(&id)?;
    let follow = match query.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(
                FieldError::new("follow", format!("{other:?} is not true or false")).into(),
            );
        }
    };
    let detail = detail_of(&engine, &who, id).await?;
    let step = match query.get("step") {
        None => None,
        Some(name) => Some(
            detail
                .steps
                .iter()
                .find(|s| &s.name == name)
                .map(|s| s.idx)
                .ok_or_else(|| ApiError::not_found("step", format!("{name:?} of run {id}")))?,
        ),
    };
    let body = super::stream::log_body(
        engine,
        detail,
        super::stream::LogRequest {
            run: id,
            step,
            follow,
        },
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The allocation history, open and closed, oldest first.
#[utoipa::path(get, path = "/api/v1/allocations",
    params(("tenant" = Option<String>, Query), ("pool" = Option<String>, Query), ("run" = Option<i64>, Query),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1_000_000)),
    responses((status = 200, body = [AllocationView]), (status = 503, body = ErrorBody)))]
async fn list_allocations(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(query): Params,
) -> ApiResult<Json<Vec<AllocationView>>> {
    params(&query, &["tenant", "pool", "run", "limit"])?;
    let filter = AllocationFilter {
        tenant: tenant_scope(&who, &query)?,
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
    responses((status = 200, body = RegisterResponse), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn register_agent(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<Json<RegisterResponse>> {
    let req: RegisterRequest = json_body(&body)?;
    let (id, secret) = engine.register(&caller, req).await?;
    Ok(Json(RegisterResponse {
        worker_id: id.0,
        worker_secret: secret,
        heartbeat_timeout_ms: u64::try_from(engine.config().heartbeat_timeout.as_millis())
            .unwrap_or(u64::MAX),
        lease_ms: u64::try_from(engine.lease().as_millis()).unwrap_or(u64::MAX),
    }))
}

/// Long-poll for assignments; also the agent's heartbeat.
#[utoipa::path(post, path = "/api/v1/agents/{worker}/poll", params(("worker" = i64, Path, minimum = 1)), request_body = PollRequest,
    responses((status = 200, body = PollResponse), (status = 503, body = ErrorBody)))]
async fn poll_agent(
    State(engine): State<AppState>,
    Extension(worker): Extension<WorkerId>,
    body: Bytes,
) -> ApiResult<Json<PollResponse>> {
    let req: PollRequest = json_body(&body)?;
    Ok(Json(engine.poll(worker, req).await?))
}

/// Append a chunk of an attempt's output (idempotent per offset).
#[utoipa::path(post, path = "/api/v1/agents/{worker}/attempts/{attempt}/logs",
    params(("worker" = i64, Path, minimum = 1), ("attempt" = i64, Path, minimum = 1)), request_body = LogAppend,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn append_log(
    State(engine): State<AppState>,
    Extension(worker): Extension<WorkerId>,
    PathParam((_worker, attempt)): PathParam<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: LogAppend = json_body(&body)?;
    engine
        .append_log(worker, attempt_id(&attempt)?, req.offset, req.data)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Report how an attempt ended (idempotent).
#[utoipa::path(post, path = "/api/v1/agents/{worker}/attempts/{attempt}/report",
    params(("worker" = i64, Path, minimum = 1), ("attempt" = i64, Path, minimum = 1)), request_body = ReportRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn report_attempt(
    State(engine): State<AppState>,
    Extension(worker): Extension<WorkerId>,
    PathParam((_worker, attempt)): PathParam<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: ReportRequest = json_body(&body)?;
    engine.report(worker, attempt_id(&attempt)?, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tokens and the audit log ----

pub(crate) fn token_view(engine: &Engine, t: &corral_store::TokenRecord) -> TokenView {
    let last_used = engine.credentials().last_used(&t.name).or(t.last_used_at);
    TokenView {
        name: t.name.clone(),
        role: t.role.name().into(),
        tenant: t.role.tenant().map(str::to_string),
        pool: t.role.pool().map(str::to_string),
        created_at: views::time(t.created_at),
        expires_at: t.expires_at.map(views::time),
        revoked_at: t.revoked_at.map(views::time),
        last_used_at: last_used.map(views::time),
    }
}

/// Every token, revoked and expired ones included; never their secrets.
#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = [TokenView])))]
async fn list_tokens(State(engine): State<AppState>) -> Json<Vec<TokenView>> {
    Json(
        engine
            .credentials()
            .tokens()
            .iter()
            .map(|t| token_view(&engine, t))
            .collect(),
    )
}

/// The server's background workers (not agents), in the order they started.
#[utoipa::path(get, path = "/api/v1/workers", responses((status = 200, body = [BackgroundWorkerView])))]
async fn list_background_workers(
    State(engine): State<AppState>,
) -> Json<Vec<BackgroundWorkerView>> {
    Json(
        engine
            .background()
            .list()
            .into_iter()
            .map(|w| {
                let (last_error_at, last_error) = w.last_error.unzip();
                BackgroundWorkerView {
                    name: w.name.into(),
                    vital: w.vital,
                    status: w.status.as_str().into(),
                    last_error,
                    last_error_at: last_error_at.map(views::time),
                    restarts: w.restarts,
                    last_run_at: w.last_run_at.map(views::time),
                }
            })
            .collect(),
    )
}

/// The longest a token may live.
const MAX_TOKEN_LIFE_SECS: u64 = 10 * 366 * 86_400;

/// Create a token; its secret is in the answer, once.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = TokenRequest,
    responses((status = 201, body = TokenCreated), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_token(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let req: TokenCreate = json_body(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(make_token(&engine, &who, req).await?),
    ))
}

/// Creates the token `req` describes; the answer carries its secret, once.
pub(crate) async fn make_token(
    engine: &Engine,
    who: &Principal,
    req: TokenCreate,
) -> ApiResult<TokenCreated> {
    let role = Role::parse(&req.role, req.tenant.as_deref(), req.pool.as_deref())?;
    let expires_at = match req.expires.as_deref() {
        None => None,
        Some(text) => {
            let secs = corral_core::pipeline::parse_duration_secs(text)
                .filter(|s| (1..=MAX_TOKEN_LIFE_SECS).contains(s))
                .ok_or_else(|| {
                    FieldError::new(
                        "expires",
                        format!("{text:?} is not a duration from 1s to 3660d (examples: 12h, 30d)"),
                    )
                })?;
            Some(
                engine
                    .now()
                    .plus_millis(i64::try_from(secs * 1000).unwrap_or(i64::MAX)),
            )
        }
    };
    let (record, secret) = engine
        .create_token(who, &req.name, role, expires_at)
        .await?;
    Ok(TokenCreated {
        token: token_view(engine, &record),
        secret,
    })
}

/// Revoke a token: it is refused from this answer on.
#[utoipa::path(delete, path = "/api/v1/tokens/{name}", params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    responses((status = 200, body = TokenView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn revoke_token(
    State(engine): State<AppState>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<TokenView>> {
    let record = engine.revoke_token(&who, &name).await?;
    Ok(Json(token_view(&engine, &record)))
}

/// A time given as RFC 3339 (`2026-11-28T09:00:00Z`) or as an age (`1h`, `7d`).
/// A time given as RFC 3339 or as an age before now (`90m`, `7d`), in the
/// query parameter `field`.
pub(super) fn time_param(
    engine: &Engine,
    field: &str,
    text: &str,
) -> ApiResult<corral_core::clock::Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(corral_core::clock::Timestamp(t.timestamp_millis()));
    }
    corral_core::pipeline::parse_duration_secs(text)
        .and_then(|s| i64::try_from(s.checked_mul(1000)?).ok())
        .map(|ms| engine.now().plus_millis(-ms))
        .ok_or_else(|| {
            FieldError::new(
                field,
                format!("{text:?} is neither an RFC 3339 time nor an age such as 1h or 7d"),
            )
            .into()
        })
}

/// The audit log, oldest first (newest first with `order=newest`): who changed
/// pools, tenants and tokens, and who cancelled runs, with the object before
/// and after. Paged with `before` (newest first) or `after` (oldest first): the
/// id of the last entry of the page before.
#[utoipa::path(get, path = "/api/v1/audit",
    params(
        ("since" = Option<String>, Query, description = "Entries at or after this time: an RFC 3339 time, or an age such as 90m, 1h30m or 7d",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("until" = Option<String>, Query, description = "Entries before this time: an RFC 3339 time, or an age such as 90m, 1h30m or 7d",
            pattern = "^([0-9]{1,15}|([0-9]{1,9}[smhd]){1,8}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"),
        ("who" = Option<String>, Query),
        ("kind" = Option<String>, Query, pattern = "^(pool|tenant|token|run)$"),
        ("name" = Option<String>, Query, description = "Entries about the object of this name (a run's id for a run)"),
        ("order" = Option<String>, Query, pattern = "^(oldest|newest)$"),
        ("before" = Option<i64>, Query, description = "Entries with an id below this one", minimum = 0, maximum = 1_000_000_000_000_000_i64),
        ("after" = Option<i64>, Query, description = "Entries with an id above this one", minimum = 0, maximum = 1_000_000_000_000_000_i64),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100_000)),
    responses((status = 200, body = [AuditView]), (status = 503, body = ErrorBody)))]
async fn list_audit(
    State(engine): State<AppState>,
    Query(query): Params,
) -> ApiResult<Json<Vec<AuditView>>> {
    Ok(Json(audit_entries(&engine, &query).await?))
}

/// The audit entries `query` asks for (the parameters of `GET /api/v1/audit`).
pub(crate) async fn audit_entries(
    engine: &Engine,
    query: &BTreeMap<String, String>,
) -> ApiResult<Vec<AuditView>> {
    params(
        query,
        &[
            "since", "until", "who", "kind", "name", "order", "before", "after", "limit",
        ],
    )?;
    if let Some(kind) = query.get("kind")
        && !AUDIT_KINDS.contains(&kind.as_str())
    {
        return Err(FieldError::new(
            "kind",
            format!("{kind:?} is not a kind ({})", AUDIT_KINDS.join(", ")),
        )
        .into());
    }
    let time = |field: &str| {
        query
            .get(field)
            .map(|t| time_param(engine, field, t))
            .transpose()
    };
    let id = |field: &str| {
        query
            .get(field)
            .map(|text| {
                text.parse::<i64>()
                    .ok()
                    .filter(|n| (0..=MAX_AUDIT_ID).contains(n))
                    .ok_or_else(|| {
                        FieldError::new(
                            field,
                            format!("{text:?} is not an audit entry's id (0 to {MAX_AUDIT_ID})"),
                        )
                    })
            })
            .transpose()
    };
    let newest_first = match query.get("order").map(String::as_str) {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(
                FieldError::new("order", format!("{other:?} is not oldest or newest")).into(),
            );
        }
    };
    let filter = AuditFilter {
        since: time("since")?,
        until: time("until")?,
        who: query.get("who").cloned(),
        kind: query.get("kind").cloned(),
        name: query.get("name").cloned(),
        before_id: id("before")?,
        after_id: id("after")?,
        newest_first,
        limit: limit(query, 1000, 100_000)?,
    };
    let entries = engine.store().audit(&filter).await?;
    Ok(entries
        .into_iter()
        .map(|a| AuditView {
            id: a.id,
            at: views::time(a.at),
            who: a.who,
            kind: a.kind,
            name: a.name,
            action: a.action,
            before: a.before,
            after: a.after,
        })
        .collect())
}

/// The largest audit entry id a page may start from (as the OpenAPI document says).
const MAX_AUDIT_ID: i64 = 1_000_000_000_000_000;

pub(crate) const AUDIT_KINDS: [&str; 4] = ["pool", "tenant", "token", "run"];

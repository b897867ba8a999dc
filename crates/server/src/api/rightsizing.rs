//! Right-sizing: per step of a tenant's pipeline, what it asks for against
//! what its recent successful attempts really used, a recommended request
//! and what it would have saved (`corral_core::rightsizing`).

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use corral_api::{ErrorBody, RecommendationView, ResourcesView, StepRecommendationView};
use corral_core::error::{FieldError, check_name};
use corral_core::pool::Price;
use corral_core::rightsizing::{MARGIN_PERCENT, Sample, recommend};

use super::routes::{Params, params, tenant_scope};
use crate::api::error::{ApiError, PathParam};
use crate::auth::Principal;
use crate::engine::Engine;

/// How far back measured attempts are read.
const LOOKBACK_MS: i64 = 90 * 86_400_000;
/// The most measured attempts one recommendation reads (the newest).
const MAX_SAMPLES: u32 = 2_000;

/// A right-sizing recommendation for each step of a tenant's pipeline, from
/// the measured usage of its recent successful attempts.
///
/// A tenant's token asks for its own tenant (`tenant` may be left out);
/// `viewer` and `admin` name the tenant.
#[utoipa::path(get, path = "/api/v1/pipelines/{name}/recommendation",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
        ("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")),
    responses((status = 200, body = RecommendationView), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn recommendation(
    State(engine): State<std::sync::Arc<Engine>>,
    Extension(who): Extension<Principal>,
    PathParam(name): PathParam<String>,
    Query(query): Params,
) -> Result<Json<RecommendationView>, ApiError> {
    params(&query, &["tenant"])?;
    Ok(Json(
        recommendation_view(&engine, &who, &name, &query).await?,
    ))
}

/// The recommendation for `who`, with the query's `tenant`.
pub(crate) async fn recommendation_view(
    engine: &Engine,
    who: &Principal,
    name: &str,
    query: &std::collections::BTreeMap<String, String>,
) -> Result<RecommendationView, ApiError> {
    check_name("name", name)?;
    let tenant = tenant_scope(who, query)?
        .ok_or_else(|| FieldError::new("tenant", "name the tenant whose pipeline to right-size"))?;
    let name = name.to_string();
    let now = engine.now();
    let store = engine.store();
    let measured = store
        .measured_attempts(&tenant, &name, now.plus_millis(-LOOKBACK_MS), MAX_SAMPLES)
        .await?;
    if measured.is_empty() {
        return Err(ApiError::not_found(
            "a measured successful attempt of pipeline",
            format!("{name} (tenant {tenant}, the last 90 days)"),
        ));
    }
    let prices = store.prices().await?;
    let price_of = |pool: &str| {
        prices
            .iter()
            .filter(|p| p.pool == pool && p.at_ms <= now.0)
            .max_by_key(|p| p.at_ms)
            .map_or(Price::default(), |p| p.price)
    };
    let samples: Vec<Sample> = measured
        .iter()
        .map(|m| Sample {
            run: m.run_id.0,
            step: m.step.clone(),
            pool: m.pool.clone(),
            requested: m.requested,
            ended_at_ms: m.ended_at.0,
            duration_ms: m.duration_ms,
            cpu_micros: m.usage.cpu_micros,
            memory_peak_bytes: m.usage.memory_peak_bytes,
        })
        .collect();
    let steps: Vec<StepRecommendationView> = recommend(&samples, price_of, now.0)
        .into_iter()
        .map(|r| StepRecommendationView {
            step: r.step,
            current: ResourcesView::from(r.current),
            recommended: ResourcesView::from(r.recommended),
            samples: r.samples,
            runs: r.runs,
            peak_memory_mib: r.peak_memory_mib,
            peak_cpu_cores: r.peak_cpu_millis as f64 / 1000.0,
            monthly_saving: r.monthly_saving.to_units_f64(),
        })
        .collect();
    let total = steps.iter().map(|s| s.monthly_saving).sum();
    Ok(RecommendationView {
        tenant,
        pipeline: name,
        steps,
        monthly_saving: total,
        method: format!(
            "the 95th percentile of each step's measured memory peaks and average cores over its successful attempts of the last 90 days, plus {MARGIN_PERCENT}%, rounded up to 50m and 16Mi; the saving is the last 30 days' attempts priced at the request and at the recommendation"
        ),
    })
}

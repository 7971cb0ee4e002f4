//! The pipeline routes under `/v1/pools/{pool}/pipelines`. A submitted body is checked
//! field by field here (each problem a 400 naming the step), then as a whole by
//! `pipeline::Spec::check` (names, `after`, cycles, limits); nothing is created unless
//! all of it is right.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lineup_core::pipeline::{PipelineStatus, Spec, StepSpec, MAX_COUNT};
use lineup_core::*;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, PathParams, QueryParams};
use crate::views;

type ApiResult = Result<Response, ApiError>;

pub fn routes() -> Router<Lineup> {
    Router::new()
        .route("/v1/pools/{pool}/pipelines", post(submit).get(list))
        .route("/v1/pools/{pool}/pipelines/{pipeline}", get(show).delete(cancel))
}

/// Unknown fields are refused: a misspelt `after` would otherwise start a step early.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepBody {
    name: Option<String>,
    size: Option<i64>,
    dataset: Option<String>,
    payload: Option<serde_json::Value>,
    priority: Option<i64>,
    count: Option<i64>,
    after: Option<Vec<String>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitBody {
    steps: Option<Vec<StepBody>>,
    idempotency_key: Option<String>,
}

/// A step's fields validated; an error names the step.
fn step(i: usize, b: StepBody) -> Result<StepSpec> {
    let name = b.name.ok_or_else(|| Error::invalid("missing_field", format!("steps[{i}]: name is required")))?;
    let named = |e: Error| match e {
        Error::Invalid { code, message } => Error::invalid(code, format!("step {name:?}: {message}")),
        other => other,
    };
    let size = b.size.ok_or_else(|| Error::invalid("missing_field", "size is required")).map_err(named)?;
    let count = match b.count {
        None => 1,
        Some(n) if (1..=i64::from(MAX_COUNT)).contains(&n) => n as u32,
        Some(n) => {
            return Err(named(Error::invalid(
                "invalid_count",
                format!("count must be between 1 and {MAX_COUNT}, got {n}"),
            )))
        }
    };
    Ok(StepSpec {
        size: validate::size(size).map_err(named)?,
        dataset: validate::optional_dataset(b.dataset.as_deref()).map_err(named)?,
        payload: b.payload.filter(|p| !p.is_null()),
        priority: b.priority.map(Priority::new).transpose().map_err(named)?.unwrap_or_default(),
        count,
        after: b.after.unwrap_or_default(),
        name,
    })
}

async fn submit(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    JsonBody(b): JsonBody<SubmitBody>,
) -> ApiResult {
    let pool = PoolId::parse(&pool)?;
    let steps = b.steps.ok_or_else(|| Error::invalid("missing_field", "steps is required"))?;
    let steps = steps.into_iter().enumerate().map(|(i, s)| step(i, s)).collect::<Result<Vec<_>>>()?;
    let key = b.idempotency_key.as_deref().map(validate::idempotency_key).transpose()?;
    let (v, created) = l.submit_pipeline(&who, &pool, Spec { steps }, key).await?;
    let status = if created { StatusCode::ACCEPTED } else { StatusCode::OK };
    let body = views::PipelineView { created: Some(created), ..views::pipeline(&v) };
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult {
    let status = q.status.as_deref().map(PipelineStatus::parse).transpose()?;
    let ps = l.pipelines(&who, &PoolId::parse(&pool)?, status, q.limit.unwrap_or(100)).await?;
    let ps: Vec<_> = ps.iter().map(views::pipeline).collect();
    Ok((StatusCode::OK, Json(json!({ "pipelines": ps }))).into_response())
}

async fn show(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, id)): PathParams<(String, String)>,
) -> ApiResult {
    let v = l.pipeline(&who, &PoolId::parse(&pool)?, &PipelineId::parse(&id)?).await?;
    Ok((StatusCode::OK, Json(views::pipeline(&v))).into_response())
}

async fn cancel(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, id)): PathParams<(String, String)>,
) -> ApiResult {
    let v = l.cancel_pipeline(&who, &PoolId::parse(&pool)?, &PipelineId::parse(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(views::pipeline(&v))).into_response())
}

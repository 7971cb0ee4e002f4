//! The REST routes under `/v1`. Handlers parse and validate, call one `Lineup`
//! operation, and shape the response; the logic lives in `lineup_core::service`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lineup_core::service::{CancelOutcome, Finish, FinishOutcome, HeartbeatRequest, NewEval, NewPool, PoolChange};
use lineup_core::*;
use lineup_core::{admission, health};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{Auth, JsonBody, PathParams, QueryParams};
use crate::views;

pub(crate) type ApiResult = Result<Response, ApiError>;

pub fn routes() -> Router<Lineup> {
    Router::new()
        .route("/v1/pools", post(create_pool).get(list_pools))
        .route("/v1/pools/{pool}", get(get_pool).patch(change_pool).delete(disband_pool))
        .route("/v1/pools/{pool}/health", put(push_health))
        .route("/v1/pools/{pool}/workers", post(register_worker).get(list_workers))
        .route("/v1/pools/{pool}/workers/{worker}/heartbeat", post(heartbeat))
        .route("/v1/pools/{pool}/workers/{worker}/poll", post(poll))
        .route("/v1/pools/{pool}/evals", post(submit_eval).get(list_evals))
        .route("/v1/pools/{pool}/evals/{eval}", get(get_eval).delete(cancel_eval))
        .route("/v1/pools/{pool}/allocs/{alloc}/complete", post(complete_alloc))
        .route("/v1/pools/{pool}/allocs/{alloc}/fail", post(fail_alloc))
}

pub(crate) fn ok(status: StatusCode, body: impl serde::Serialize) -> ApiResult {
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatePool {
    strategy: Option<String>,
    max_running: Option<i64>,
    coefficients: Option<Vec<f64>>,
    health_checks: Option<Vec<serde_json::Value>>,
}

/// Health checks, each parsed on its own so the error names the check that is wrong.
fn health_checks(c: Option<Vec<serde_json::Value>>) -> Result<Option<Vec<health::HealthCheck>>> {
    let Some(c) = c else { return Ok(None) };
    let checks = c
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .map_err(|e| Error::invalid("invalid_health_check", format!("health_checks[{i}]: {e}")))
        })
        .collect::<Result<Vec<health::HealthCheck>>>()?;
    lineup_core::service::validate_checks(&checks)?;
    Ok(Some(checks))
}

/// A pool as the API shows it, with its checks' readings (read now if due).
async fn pool_view(l: &Lineup, p: &Pool, s: &PoolStats) -> views::PoolView {
    let readings = l.pulled_health(p).await;
    views::pool(p, s, &readings, l.now())
}

fn coefficients(c: Option<Vec<f64>>) -> Result<Option<admission::Coefficients>> {
    c.map(admission::Coefficients::try_from).transpose()
}

async fn create_pool(State(l): State<Lineup>, Auth(who): Auth, JsonBody(b): JsonBody<CreatePool>) -> ApiResult {
    let new = NewPool {
        strategy: b.strategy.as_deref().map(Strategy::parse).transpose()?.unwrap_or_default(),
        max_running: b.max_running.map(admission::max_running).transpose()?,
        coefficients: coefficients(b.coefficients)?,
        health_checks: health_checks(b.health_checks)?,
    };
    let pool = l.create_pool_with(&who, new).await?;
    ok(StatusCode::CREATED, pool_view(&l, &pool, &PoolStats::default()).await)
}

/// Absent → `None`; `null` → `Some(None)`: "leave it" and "remove it" differ.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePool {
    #[serde(default, deserialize_with = "present")]
    max_running: Option<Option<i64>>,
    coefficients: Option<Vec<f64>>,
    health_checks: Option<Vec<serde_json::Value>>,
}

async fn change_pool(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    JsonBody(b): JsonBody<ChangePool>,
) -> ApiResult {
    let id = PoolId::parse(&pool)?;
    let change = PoolChange {
        max_running: b.max_running.map(|m| m.map(admission::max_running).transpose()).transpose()?,
        coefficients: coefficients(b.coefficients)?,
        health_checks: health_checks(b.health_checks)?,
    };
    l.change_pool(&who, &id, change).await?;
    let (p, s) = l.pool(&who, &id).await?;
    ok(StatusCode::OK, pool_view(&l, &p, &s).await)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushHealth {
    level: Option<i64>,
    ttl: Option<i64>,
}

async fn push_health(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    JsonBody(b): JsonBody<PushHealth>,
) -> ApiResult {
    let id = PoolId::parse(&pool)?;
    let level = admission::level(b.level.ok_or_else(|| Error::invalid("missing_field", "level is required"))?)?;
    let ttl = b.ttl.ok_or_else(|| Error::invalid("missing_field", "ttl is required (seconds)"))?;
    let ttl = u64::try_from(ttl)
        .map_err(|_| Error::invalid("invalid_ttl", format!("ttl must be a positive number of seconds, got {ttl}")))?;
    l.push_health(&who, &id, level, Duration::from_secs(ttl)).await?;
    let (p, s) = l.pool(&who, &id).await?;
    ok(StatusCode::OK, pool_view(&l, &p, &s).await)
}

async fn list_pools(State(l): State<Lineup>, Auth(who): Auth) -> ApiResult {
    let mut pools = Vec::new();
    for (p, s) in l.pools(&who).await? {
        pools.push(pool_view(&l, &p, &s).await);
    }
    ok(StatusCode::OK, json!({ "pools": pools }))
}

async fn get_pool(State(l): State<Lineup>, Auth(who): Auth, PathParams(pool): PathParams<String>) -> ApiResult {
    let (p, s) = l.pool(&who, &PoolId::parse(&pool)?).await?;
    ok(StatusCode::OK, pool_view(&l, &p, &s).await)
}

async fn disband_pool(State(l): State<Lineup>, Auth(who): Auth, PathParams(pool): PathParams<String>) -> ApiResult {
    let id = PoolId::parse(&pool)?;
    l.disband_pool(&who, &id).await?;
    let (p, s) = l.pool(&who, &id).await?;
    ok(StatusCode::ACCEPTED, pool_view(&l, &p, &s).await)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterWorker {
    capacity: Option<i64>,
}

async fn register_worker(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    JsonBody(b): JsonBody<RegisterWorker>,
) -> ApiResult {
    let pool = PoolId::parse(&pool)?;
    let capacity = b.capacity.ok_or_else(|| Error::invalid("missing_field", "capacity is required"))?;
    let reg = l.register_worker(&who, &pool, validate::capacity(capacity)?).await?;
    let body =
        views::Registered { worker: views::worker(&l, &reg.worker), token: reg.token, alloc_ttl: l.settings.alloc_ttl };
    ok(StatusCode::CREATED, body)
}

async fn list_workers(State(l): State<Lineup>, Auth(who): Auth, PathParams(pool): PathParams<String>) -> ApiResult {
    let ws: Vec<_> = l.workers(&who, &PoolId::parse(&pool)?).await?.iter().map(|w| views::worker(&l, w)).collect();
    ok(StatusCode::OK, json!({ "workers": ws }))
}

/// `null` and a missing list both mean "none" (the Go client sends `null`).
#[derive(Deserialize, Default)]
pub(crate) struct HeartbeatBody {
    #[serde(default)]
    pub datasets: Option<Vec<String>>,
    #[serde(default)]
    pub allocs: Option<Vec<String>>,
}

pub(crate) fn heartbeat_request(b: HeartbeatBody) -> Result<HeartbeatRequest, Error> {
    let allocs = b.allocs.unwrap_or_default().iter().map(|a| AllocId::parse(a)).collect::<Result<Vec<_>, _>>()?;
    Ok(HeartbeatRequest { datasets: b.datasets.unwrap_or_default(), allocs })
}

/// The `/v1` heartbeat body: as `HeartbeatBody`, but unknown fields are an error.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StrictHeartbeat {
    #[serde(default)]
    datasets: Option<Vec<String>>,
    #[serde(default)]
    allocs: Option<Vec<String>>,
}

async fn heartbeat(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, worker)): PathParams<(String, String)>,
    JsonBody(b): JsonBody<StrictHeartbeat>,
) -> ApiResult {
    let (pool, worker) = (PoolId::parse(&pool)?, WorkerId::parse(&worker)?);
    let b = HeartbeatBody { datasets: b.datasets, allocs: b.allocs };
    let cancelled = l.heartbeat(&who, &pool, &worker, heartbeat_request(b)?).await?;
    ok(
        StatusCode::OK,
        json!({ "cancelled": cancelled, "ttl": l.settings.worker_ttl, "alloc_ttl": l.settings.alloc_ttl }),
    )
}

#[derive(Deserialize)]
struct PollQuery {
    wait: Option<u64>,
    max: Option<usize>,
}

async fn poll(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, worker)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<PollQuery>,
) -> ApiResult {
    let (pool, worker) = (PoolId::parse(&pool)?, WorkerId::parse(&worker)?);
    let wait = Duration::from_secs(q.wait.unwrap_or(0));
    let allocs = l.poll(&who, &pool, &worker, wait, q.max.unwrap_or(10)).await?;
    ok(StatusCode::OK, json!({ "allocs": allocs }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitEval {
    size: Option<i64>,
    dataset: Option<String>,
    payload: Option<serde_json::Value>,
    priority: Option<i64>,
    idempotency_key: Option<String>,
}

async fn submit_eval(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    JsonBody(b): JsonBody<SubmitEval>,
) -> ApiResult {
    let pool = PoolId::parse(&pool)?;
    let size = b.size.ok_or_else(|| Error::invalid("missing_field", "size is required"))?;
    let new = NewEval {
        size: validate::size(size)?,
        dataset: validate::optional_dataset(b.dataset.as_deref())?,
        payload: b.payload.filter(|p| !p.is_null()),
        priority: b.priority.map(Priority::new).transpose()?.unwrap_or_default(),
        idempotency_key: b.idempotency_key.as_deref().map(validate::idempotency_key).transpose()?,
    };
    let out = l.submit_eval(&who, &pool, new).await?;
    let status = if out.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    ok(
        status,
        json!({
            "eval_id": out.eval.eval_id,
            "status": out.eval.status,
            "url": views::eval_url(&out.eval),
            "created": out.created,
        }),
    )
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    pub(crate) status: Option<String>,
    pub(crate) limit: Option<usize>,
}

async fn list_evals(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult {
    let status = q.status.as_deref().map(EvalStatus::parse).transpose()?;
    let evals: Vec<_> =
        l.evals(&who, &PoolId::parse(&pool)?, status, q.limit.unwrap_or(100)).await?.iter().map(views::eval).collect();
    ok(StatusCode::OK, json!({ "evals": evals }))
}

async fn get_eval(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, eval)): PathParams<(String, String)>,
) -> ApiResult {
    let e = l.eval(&who, &PoolId::parse(&pool)?, &EvalId::parse(&eval)?).await?;
    ok(StatusCode::OK, views::eval(&e))
}

async fn cancel_eval(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, eval)): PathParams<(String, String)>,
) -> ApiResult {
    match l.cancel_eval(&who, &PoolId::parse(&pool)?, &EvalId::parse(&eval)?).await? {
        CancelOutcome::Cancelled(e) => ok(StatusCode::ACCEPTED, views::eval(&e)),
        CancelOutcome::AlreadyFinished(e) if e.status == EvalStatus::Cancelled => {
            ok(StatusCode::ACCEPTED, views::eval(&e))
        }
        CancelOutcome::AlreadyFinished(e) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "eval_finished",
            format!(
                "eval {} is already {}; only queued and placed evals can be cancelled",
                e.eval_id,
                e.status.as_str()
            ),
        )),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteBody {
    exit_code: Option<i32>,
    output: Option<String>,
    /// Seconds: the eval runs again after them (a continuation, not a retry).
    continue_after: Option<i64>,
    /// For the next run's `LINEUP_STATE`; only with `continue_after`.
    state: Option<serde_json::Value>,
}

/// The finish a complete body asks for: plain, or a continuation (checked: a delay in
/// range, a state within `MAX_STATE_BYTES` and only with a delay).
fn complete_finish(b: CompleteBody) -> Result<Finish, Error> {
    let state = b.state.filter(|s| !s.is_null());
    let Some(after) = b.continue_after else {
        if state.is_some() {
            return Err(Error::invalid("invalid_state", "state is kept only for a continuation: add continue_after"));
        }
        return Ok(Finish::Complete { exit_code: b.exit_code.unwrap_or(0), output: b.output });
    };
    if !(0..=MAX_CONTINUE_AFTER_S as i64).contains(&after) {
        return Err(Error::invalid(
            "invalid_continue_after",
            format!("continue_after must be between 0 and {MAX_CONTINUE_AFTER_S} seconds, got {after}"),
        ));
    }
    let len = state.as_ref().map_or(0, |s| s.to_string().len());
    if len > MAX_STATE_BYTES {
        return Err(Error::invalid("state_too_large", format!("state is {len} bytes of JSON, over {MAX_STATE_BYTES}")));
    }
    Ok(Finish::Continue { after_ms: after * 1000, state, output: b.output })
}

async fn complete_alloc(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, alloc)): PathParams<(String, String)>,
    JsonBody(b): JsonBody<CompleteBody>,
) -> ApiResult {
    let finish = complete_finish(b)?;
    finish_alloc(l, who, pool, alloc, finish).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailBody {
    reason: Option<String>,
}

async fn fail_alloc(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams((pool, alloc)): PathParams<(String, String)>,
    JsonBody(b): JsonBody<FailBody>,
) -> ApiResult {
    let finish = Finish::Fail { reason: b.reason.unwrap_or_else(|| "failed by the worker".into()) };
    finish_alloc(l, who, pool, alloc, finish).await
}

async fn finish_alloc(l: Lineup, who: Principal, pool: String, alloc: String, finish: Finish) -> ApiResult {
    let (pool, alloc) = (PoolId::parse(&pool)?, AllocId::parse(&alloc)?);
    let (done, eval) = l.finish_alloc(&who, &pool, &alloc, finish).await?;
    ok(
        StatusCode::OK,
        json!({
            "alloc_id": alloc,
            "released": matches!(done, FinishOutcome::Released(_)),
            "eval": eval.as_ref().map(views::eval),
        }),
    )
}

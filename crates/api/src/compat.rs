//! The Go original's six RPC routes, with its exact JSON field names, so its clients
//! can switch. They accept what the Go client really sends: `null` lists, `""` for
//! no dataset, no `Content-Type`. Served at `/{Route}` (Bearer header) and at
//! `/compat/{token}/{Route}` for clients that cannot set a header.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use lineup_core::service::{Finish, NewEval};
use lineup_core::*;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{Auth, JsonBody};
use crate::v1::{heartbeat_request, HeartbeatBody};

type CompatResult = Result<Json<Value>, ApiError>;

pub fn routes() -> Router<Lineup> {
    Router::new()
        .route("/CreatePool", post(create_pool))
        .route("/RegisterWorker", post(register_worker))
        .route("/DisbandPool", post(disband_pool))
        .route("/SendHeartbeat", post(send_heartbeat))
        .route("/ScheduleEval", post(schedule_eval))
        .route("/CompleteAlloc", post(complete_alloc))
}

fn pool_id(s: &Option<String>) -> Result<PoolId, Error> {
    PoolId::parse(s.as_deref().ok_or_else(|| Error::invalid("missing_field", "pool_id is required"))?)
}

#[derive(Deserialize)]
struct PoolOnly {
    pool_id: Option<String>,
}

/// Any fields (the Go client's), but JSON if there is a body at all.
async fn create_pool(State(l): State<Lineup>, Auth(who): Auth, _body: JsonBody<serde_json::Value>) -> CompatResult {
    let p = l.create_pool(&who, Strategy::Spread).await?;
    Ok(Json(json!({ "pool_id": p.pool_id })))
}

#[derive(Deserialize)]
struct RegisterWorker {
    pool_id: Option<String>,
    capacity: Option<i64>,
}

async fn register_worker(
    State(l): State<Lineup>,
    Auth(who): Auth,
    JsonBody(b): JsonBody<RegisterWorker>,
) -> CompatResult {
    let pool = pool_id(&b.pool_id)?;
    let cap = validate::capacity(b.capacity.ok_or_else(|| Error::invalid("missing_field", "capacity is required"))?)?;
    let reg = l.register_worker(&who, &pool, cap).await?;
    Ok(Json(json!({
        "pool_id": pool,
        "worker_id": reg.worker.worker_id,
        "queue_url": reg.queue_url,
        "capacity": reg.worker.capacity,
        "token": reg.token,
    })))
}

async fn disband_pool(State(l): State<Lineup>, Auth(who): Auth, JsonBody(b): JsonBody<PoolOnly>) -> CompatResult {
    l.disband_pool(&who, &pool_id(&b.pool_id)?).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct SendHeartbeat {
    pool_id: Option<String>,
    worker_id: Option<String>,
    #[serde(flatten)]
    lists: HeartbeatBody,
}

async fn send_heartbeat(
    State(l): State<Lineup>,
    Auth(who): Auth,
    JsonBody(b): JsonBody<SendHeartbeat>,
) -> CompatResult {
    let pool = pool_id(&b.pool_id)?;
    let worker = WorkerId::parse(
        b.worker_id.as_deref().ok_or_else(|| Error::invalid("missing_field", "worker_id is required"))?,
    )?;
    let cancelled = l.heartbeat(&who, &pool, &worker, heartbeat_request(b.lists)?).await?;
    Ok(Json(json!({ "cancelled": cancelled })))
}

#[derive(Deserialize)]
struct ScheduleEval {
    pool_id: Option<String>,
    dataset_id: Option<String>,
    size: Option<i64>,
}

async fn schedule_eval(State(l): State<Lineup>, Auth(who): Auth, JsonBody(b): JsonBody<ScheduleEval>) -> CompatResult {
    let pool = pool_id(&b.pool_id)?;
    let size = validate::size(b.size.ok_or_else(|| Error::invalid("missing_field", "size is required"))?)?;
    let new = NewEval {
        size,
        dataset: validate::optional_dataset(b.dataset_id.as_deref())?,
        payload: None,
        priority: Priority::DEFAULT,
        idempotency_key: None,
    };
    let out = l.submit_eval(&who, &pool, new).await?;
    Ok(Json(json!({ "eval_id": out.eval.eval_id })))
}

#[derive(Deserialize)]
struct CompleteAlloc {
    pool_id: Option<String>,
    alloc_id: Option<String>,
}

async fn complete_alloc(
    State(l): State<Lineup>,
    Auth(who): Auth,
    JsonBody(b): JsonBody<CompleteAlloc>,
) -> CompatResult {
    let pool = pool_id(&b.pool_id)?;
    let alloc =
        AllocId::parse(b.alloc_id.as_deref().ok_or_else(|| Error::invalid("missing_field", "alloc_id is required"))?)?;
    l.finish_alloc(&who, &pool, &alloc, Finish::Complete { exit_code: 0, output: None }).await?;
    Ok(Json(json!({})))
}

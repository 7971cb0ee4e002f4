//! Dead letters: list the evals that ran out of retries, and send them back
//! (`Lineup::redrive`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use lineup_core::*;
use serde::Deserialize;
use serde_json::json;

use crate::extract::{Auth, JsonBody, PathParams, QueryParams};
use crate::v1::{ok, ApiResult, ListQuery};
use crate::views;

pub fn routes() -> Router<Lineup> {
    Router::new()
        .route("/v1/pools/{pool}/dead-letters", get(dead_letters))
        .route("/v1/pools/{pool}/dead-letters/redrive", post(redrive))
}

async fn dead_letters(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult {
    let pool = PoolId::parse(&pool)?;
    let evals: Vec<_> =
        l.evals(&who, &pool, Some(EvalStatus::Dead), q.limit.unwrap_or(100)).await?.iter().map(views::eval).collect();
    ok(StatusCode::OK, json!({ "evals": evals }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Redrive {
    /// Absent: every dead eval of the pool (up to `MAX_REDRIVE` per call).
    eval_ids: Option<Vec<String>>,
}

async fn redrive(
    State(l): State<Lineup>,
    Auth(who): Auth,
    PathParams(pool): PathParams<String>,
    JsonBody(b): JsonBody<Redrive>,
) -> ApiResult {
    let pool = PoolId::parse(&pool)?;
    let ids = b.eval_ids.map(|ids| ids.iter().map(|id| EvalId::parse(id)).collect::<Result<Vec<_>>>()).transpose()?;
    let out = l.redrive(&who, &pool, ids).await?;
    let skipped: Vec<_> = out.skipped.iter().map(|(id, why)| json!({ "eval_id": id, "reason": why })).collect();
    ok(
        StatusCode::OK,
        json!({
            "redriven": out.redriven.iter().map(views::eval).collect::<Vec<_>>(),
            "skipped": skipped,
            "more": out.more,
            "redrive_id": out.redrive_id,
        }),
    )
}

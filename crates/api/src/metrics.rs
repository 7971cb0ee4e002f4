//! `GET /metrics`: the process's figures (`lineup_core::metrics`) in Prometheus text
//! format, with each active pool's gauges read at scrape time. Served where the
//! process installed a Prometheus recorder (`lineup dev`); the Lambdas report the same
//! figures as CloudWatch Embedded Metric Format log lines instead.
//!
//! Scrapers authenticate with the admin token or, so that a Prometheus server need not
//! hold the admin token, with a metrics-only token (`LINEUP_METRICS_TOKEN`), which
//! opens this route and nothing else.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use lineup_core::*;

use crate::error::ApiError;

/// What `/metrics` serves.
#[derive(Clone)]
pub struct MetricsExport {
    /// Renders every figure recorded so far.
    pub render: Arc<dyn Fn() -> String + Send + Sync>,
    /// SHA-256 (hex) of the metrics-only token, if one is set.
    pub token_hash: Option<String>,
}

pub fn routes(export: MetricsExport) -> Router<Lineup> {
    Router::new()
        .route("/metrics", get(move |state: State<Lineup>, headers: HeaderMap| metrics(state, headers, export.clone())))
}

async fn metrics(State(l): State<Lineup>, headers: HeaderMap, export: MetricsExport) -> Result<Response, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or(Error::Unauthorized)?;
    let scraper = export.token_hash.as_deref().is_some_and(|h| auth::hash_matches(token, h));
    if !scraper && !matches!(l.authenticate(token).await?, Principal::Admin) {
        return Err(Error::Forbidden("this route needs the admin or the metrics token".into()).into());
    }
    for (p, stats) in l.pools(&Principal::Admin).await? {
        if p.status == PoolStatus::Active {
            lineup_core::metrics::pool_gauges(&p.pool_id, &stats, l.held_count(&p.pool_id));
        }
    }
    Ok((StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], (export.render)())
        .into_response())
}

//! Lineup's HTTP API: one axum `Router`, served by `lineup dev` with `axum::serve`
//! and by the gateway Lambda with `lambda_http::run` — one router, two front doors.
//!
//! # Layout
//! - `v1.rs`: the REST routes; `pipelines.rs`, `dead_letters.rs`, `events.rs` (SSE): theirs. `compat.rs`: the
//!   Go original's RPC routes.
//! - `extract.rs`: auth and body extractors with JSON rejections.
//! - `openapi.rs`: the OpenAPI 3.1 document at `/openapi.json`.
//! - `ui.rs` (+ `ui/`): the status page, embedded. `metrics.rs`: `/metrics` (Prometheus text) where a recorder is installed.
//! - `error.rs`: the one error → response mapping. `views.rs`: response bodies.

mod compat;
mod dead_letters;
mod error;
mod events;
mod extract;
mod metrics;
mod openapi;
mod pipelines;
mod ui;
mod v1;
mod views;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use lineup_core::Lineup;
use serde_json::json;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use metrics::MetricsExport;

/// Largest request body accepted; larger gets 413.
pub const MAX_BODY: usize = 256 * 1024;

/// Most headers a request may carry; more gets a JSON 431.
pub const MAX_HEADERS: usize = 100;

/// What `lineup dev` serves beyond the API.
#[derive(Default)]
pub struct Extras {
    /// `/metrics`, where the process records figures.
    pub metrics: Option<MetricsExport>,
    /// The status page at `/ui` (`/` redirects there).
    pub ui: bool,
}

/// The whole API over `lineup`.
pub fn router(lineup: Lineup) -> Router {
    router_with(lineup, Extras::default())
}

/// The whole API, with `extras`.
pub fn router_with(lineup: Lineup, extras: Extras) -> Router {
    let mut api = v1::routes();
    if let Some(m) = extras.metrics {
        api = api.merge(metrics::routes(m));
    }
    if extras.ui {
        api = api.merge(ui::routes());
    }
    let api = api
        .merge(pipelines::routes())
        .merge(dead_letters::routes())
        .merge(events::routes())
        .merge(openapi::routes())
        .merge(compat::routes())
        .nest("/compat/{token}", compat::routes())
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(limit_headers))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(lineup)
}

async fn limit_headers(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    if req.headers().len() > MAX_HEADERS {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            format!("at most {MAX_HEADERS} headers"),
        )
        .into_response();
    }
    next.run(req).await
}

/// The span every request's log lines carry: method and path, with the token of a
/// `/compat/{token}/...` path blanked out. Never the query string or the host, which
/// are not ours to log.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::info_span!("request", method = %req.method(), path = %redacted_path(req.uri().path()))
}

/// `/compat/SECRET/CreatePool` → `/compat/<token>/CreatePool`; other paths unchanged.
pub fn redacted_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix("/compat/") {
        Some(rest) => {
            let tail = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
            format!("/compat/<token>{tail}").into()
        }
        None => path.into(),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

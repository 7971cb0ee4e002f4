//! The OpenAPI 3.1 contract, served at `GET /openapi.json` (no token needed: it holds no
//! data). Request bodies and the records in responses are the handlers' own types
//! (`#[derive(ToSchema)]` where they are declared: v1.rs, pipelines.rs, views.rs); the
//! small envelopes the handlers build with `json!` are described below. `make test` holds the two together: schemathesis calls every
//! operation of this document against `lineup dev` and fails on any 5xx, any response
//! that does not match it, and any body it forbids that the server accepts.
#![allow(dead_code)] // The shapes and stubs exist for the document only.

use axum::routing::get;
use axum::{Json, Router};
use lineup_core::Lineup;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::dead_letters::Redrive;
use crate::pipelines::{StepBody, SubmitBody};
use crate::v1::{
    ChangePool, CompleteBody, CreatePool, FailBody, PushHealth, RegisterWorker, StrictHeartbeat, SubmitEval,
};
use crate::views::{EvalView, PipelineView, PoolView, Registered, WorkerView};

pub fn routes() -> Router<Lineup> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}

/// Every error: an HTTP 4xx or 5xx with this body.
#[derive(ToSchema)]
struct ErrorBody {
    code: String,
    message: String,
}

/// Any JSON object.
#[derive(ToSchema)]
#[schema(value_type = Object)]
struct Object(Value);

/// Any JSON value.
#[derive(ToSchema)]
#[schema(value_type = Value)]
struct AnyValue(Value);

#[derive(ToSchema)]
struct Pools {
    pools: Vec<PoolView>,
}

#[derive(ToSchema)]
struct Workers {
    workers: Vec<WorkerView>,
}

#[derive(ToSchema)]
struct HeartbeatReply {
    cancelled: Vec<String>,
    ttl: u64,
    alloc_ttl: u64,
}

#[derive(ToSchema)]
struct AllocMessage {
    alloc_id: String,
    eval_id: String,
    pool_id: String,
    worker_id: String,
    size: u32,
    dataset: Option<String>,
    #[schema(value_type = Value)]
    payload: Option<Value>,
    attempt: u32,
    step: Option<Object>,
    #[schema(value_type = Value)]
    state: Option<Value>,
}

#[derive(ToSchema)]
struct Allocs {
    allocs: Vec<AllocMessage>,
}

#[derive(ToSchema)]
struct Submitted {
    eval_id: String,
    status: String,
    url: String,
    created: bool,
}

#[derive(ToSchema)]
struct Evals {
    evals: Vec<EvalView>,
}

#[derive(ToSchema)]
struct Finished {
    alloc_id: String,
    released: bool,
    eval: Option<EvalView>,
}

#[derive(ToSchema)]
struct SkippedEval {
    eval_id: String,
    reason: String,
}

#[derive(ToSchema)]
struct Redriven {
    redriven: Vec<EvalView>,
    skipped: Vec<SkippedEval>,
    more: bool,
    redrive_id: String,
}

#[derive(ToSchema)]
struct Pipelines {
    pipelines: Vec<PipelineView>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Lineup", description = "A capacity scheduler for pools of workers. Every error is `{code, message}`."),
    modifiers(&Bearer),
    security(("bearer" = [])),
    paths(
        create_pool, list_pools, get_pool, change_pool, disband_pool, push_health,
        register_worker, list_workers, heartbeat, poll,
        submit_eval, list_evals, get_eval, cancel_eval, complete_alloc, fail_alloc,
        dead_letters, redrive,
        submit_pipeline, list_pipelines, get_pipeline, cancel_pipeline,
        events,
    ),
    components(schemas(ErrorBody, StepBody))
)]
pub struct ApiDoc;

#[utoipa::path(post, path = "/v1/pools", tag = "pools", request_body(content = Option<CreatePool>, description = "An empty body reads as {}."),
    responses((status = 201, description = "Created.", body = PoolView), (status = "default", description = "An error.", body = ErrorBody)))]
fn create_pool() {}

#[utoipa::path(get, path = "/v1/pools", tag = "pools",
    responses((status = 200, description = "Every pool.", body = Pools), (status = "default", description = "An error.", body = ErrorBody)))]
fn list_pools() {}

#[utoipa::path(get, path = "/v1/pools/{pool}", tag = "pools", params(("pool" = String, Path, description = "A pool id.")),
    responses((status = 200, description = "The pool.", body = PoolView), (status = "default", description = "An error.", body = ErrorBody)))]
fn get_pool() {}

#[utoipa::path(patch, path = "/v1/pools/{pool}", tag = "pools", params(("pool" = String, Path)), request_body(content = Option<ChangePool>, description = "An empty body reads as {}."),
    responses((status = 200, description = "The pool, changed.", body = PoolView), (status = "default", description = "An error.", body = ErrorBody)))]
fn change_pool() {}

#[utoipa::path(delete, path = "/v1/pools/{pool}", tag = "pools", params(("pool" = String, Path)),
    responses((status = 202, description = "Disbanded.", body = PoolView), (status = "default", description = "An error.", body = ErrorBody)))]
fn disband_pool() {}

#[utoipa::path(put, path = "/v1/pools/{pool}/health", tag = "pools", params(("pool" = String, Path)), request_body(content = Option<PushHealth>, description = "An empty body reads as {}."),
    responses((status = 200, description = "The pool, with the pushed level.", body = PoolView), (status = "default", description = "An error.", body = ErrorBody)))]
fn push_health() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/workers", tag = "workers", params(("pool" = String, Path)), request_body(content = Option<RegisterWorker>, description = "An empty body reads as {}."),
    responses((status = 201, description = "Registered; the token is shown once.", body = Registered), (status = "default", description = "An error.", body = ErrorBody)))]
fn register_worker() {}

#[utoipa::path(get, path = "/v1/pools/{pool}/workers", tag = "workers", params(("pool" = String, Path)),
    responses((status = 200, description = "The pool's workers.", body = Workers), (status = "default", description = "An error.", body = ErrorBody)))]
fn list_workers() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/workers/{worker}/heartbeat", tag = "workers",
    params(("pool" = String, Path), ("worker" = String, Path)), request_body(content = Option<StrictHeartbeat>, description = "An empty body reads as {}."),
    responses((status = 200, description = "TTLs extended; the listed allocs to stop.", body = HeartbeatReply), (status = "default", description = "An error.", body = ErrorBody)))]
fn heartbeat() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/workers/{worker}/poll", tag = "workers",
    params(("pool" = String, Path), ("worker" = String, Path),
        ("wait" = Option<u64>, Query, description = "Seconds to wait for the first alloc, at most 20."),
        ("max" = Option<u64>, Query, description = "Allocs to return, 1 to 10.")),
    responses((status = 200, description = "Allocs to run.", body = Allocs), (status = "default", description = "An error.", body = ErrorBody)))]
fn poll() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/evals", tag = "evals", params(("pool" = String, Path)), request_body(content = Option<SubmitEval>, description = "An empty body reads as {}."),
    responses((status = 202, description = "Accepted.", body = Submitted), (status = 200, description = "The idempotency key matched an earlier eval.", body = Submitted),
        (status = "default", description = "An error.", body = ErrorBody)))]
fn submit_eval() {}

#[utoipa::path(get, path = "/v1/pools/{pool}/evals", tag = "evals",
    params(("pool" = String, Path), ("status" = Option<String>, Query, description = "queued, placed, complete, failed, dead or cancelled."),
        ("limit" = Option<u64>, Query)),
    responses((status = 200, description = "Evals, newest first.", body = Evals), (status = "default", description = "An error.", body = ErrorBody)))]
fn list_evals() {}

#[utoipa::path(get, path = "/v1/pools/{pool}/evals/{eval}", tag = "evals", params(("pool" = String, Path), ("eval" = String, Path)),
    responses((status = 200, description = "The eval.", body = EvalView), (status = "default", description = "An error.", body = ErrorBody)))]
fn get_eval() {}

#[utoipa::path(delete, path = "/v1/pools/{pool}/evals/{eval}", tag = "evals", params(("pool" = String, Path), ("eval" = String, Path)),
    responses((status = 202, description = "Cancelled.", body = EvalView), (status = "default", description = "An error.", body = ErrorBody)))]
fn cancel_eval() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/allocs/{alloc}/complete", tag = "allocs", params(("pool" = String, Path), ("alloc" = String, Path)),
    request_body(content = Option<CompleteBody>, description = "An empty body reads as {}."),
    responses((status = 200, description = "Released.", body = Finished), (status = "default", description = "An error.", body = ErrorBody)))]
fn complete_alloc() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/allocs/{alloc}/fail", tag = "allocs", params(("pool" = String, Path), ("alloc" = String, Path)),
    request_body(content = Option<FailBody>, description = "An empty body reads as {}."),
    responses((status = 200, description = "Released; the eval retried or dead.", body = Finished), (status = "default", description = "An error.", body = ErrorBody)))]
fn fail_alloc() {}

#[utoipa::path(get, path = "/v1/pools/{pool}/dead-letters", tag = "evals", params(("pool" = String, Path), ("limit" = Option<u64>, Query)),
    responses((status = 200, description = "Dead evals.", body = Evals), (status = "default", description = "An error.", body = ErrorBody)))]
fn dead_letters() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/dead-letters/redrive", tag = "evals", params(("pool" = String, Path)), request_body(content = Option<Redrive>, description = "An empty body reads as {}."),
    responses((status = 200, description = "What was redriven and what was not.", body = Redriven), (status = "default", description = "An error.", body = ErrorBody)))]
fn redrive() {}

#[utoipa::path(post, path = "/v1/pools/{pool}/pipelines", tag = "pipelines", params(("pool" = String, Path)), request_body(content = Option<SubmitBody>, description = "An empty body reads as {}."),
    responses((status = 202, description = "Accepted.", body = PipelineView), (status = 200, description = "The idempotency key matched.", body = PipelineView),
        (status = "default", description = "An error.", body = ErrorBody)))]
fn submit_pipeline() {}

#[utoipa::path(get, path = "/v1/pools/{pool}/pipelines", tag = "pipelines",
    params(("pool" = String, Path), ("status" = Option<String>, Query), ("limit" = Option<u64>, Query)),
    responses((status = 200, description = "Pipelines.", body = Pipelines), (status = "default", description = "An error.", body = ErrorBody)))]
fn list_pipelines() {}

#[utoipa::path(get, path = "/v1/pools/{pool}/pipelines/{pipeline}", tag = "pipelines", params(("pool" = String, Path), ("pipeline" = String, Path)),
    responses((status = 200, description = "The pipeline.", body = PipelineView), (status = "default", description = "An error.", body = ErrorBody)))]
fn get_pipeline() {}

#[utoipa::path(delete, path = "/v1/pools/{pool}/pipelines/{pipeline}", tag = "pipelines", params(("pool" = String, Path), ("pipeline" = String, Path)),
    responses((status = 202, description = "Cancelled.", body = PipelineView), (status = "default", description = "An error.", body = ErrorBody)))]
fn cancel_pipeline() {}

#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("pool" = Option<String>, Query), ("types" = Option<String>, Query, description = "Comma-separated: eval, alloc, worker, pool."),
        ("index" = Option<u64>, Query, description = "Resume after this index (as Last-Event-ID)."),
        ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "Server-Sent Events; each `data:` is an event object.", content_type = "text/event-stream", body = String),
        (status = "default", description = "An error.", body = ErrorBody)))]
fn events() {}

//! Response bodies. Field names are the API's contract (see README and the issue);
//! times are RFC 3339.

use lineup_core::clock::rfc3339;
use lineup_core::health::Reading;
use lineup_core::pipeline::{PipelineStatus, StepStatus};
use lineup_core::{
    AllocId, Eval, EvalId, EvalStatus, Lineup, PipelineId, Pool, PoolId, PoolStats, PoolStatus, Priority, Strategy,
    Worker, WorkerId,
};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

/// A pool as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct PoolView {
    #[schema(value_type = String)]
    pub pool_id: PoolId,
    #[schema(value_type = String)]
    pub strategy: Strategy,
    #[schema(value_type = String)]
    pub status: PoolStatus,
    pub workers: u64,
    pub capacity: u64,
    pub free: u64,
    pub queued: u64,
    pub allocs: u64,
    pub max_running: Option<u32>,
    pub running: u64,
    pub limit: Option<u32>,
    /// level, source, why, pushed, coefficients, checks with their last readings.
    #[schema(value_type = Object)]
    pub health: Value,
    pub created_at: String,
    pub disbanded_at: Option<String>,
}

pub fn pool(p: &Pool, s: &PoolStats, readings: &[Reading], now: lineup_core::Millis) -> PoolView {
    let l = &p.limits;
    let pulled = lineup_core::health::worst(readings);
    let (level, source, why) = l.health(now, pulled.as_ref());
    PoolView {
        pool_id: p.pool_id.clone(),
        strategy: p.strategy,
        status: p.status,
        workers: s.workers,
        capacity: s.capacity,
        free: s.free,
        queued: s.queued,
        allocs: s.allocs,
        max_running: l.max_running,
        running: s.allocs,
        limit: l.limit(now, pulled.as_ref()).map(|x| x.limit),
        health: json!({
            "level": level,
            "source": source,
            "why": why,
            "pushed": l.pushed.filter(|p| p.until > now).map(|p| json!({"level": p.level, "expires_at": rfc3339(p.until)})),
            "coefficients": l.coefficients,
            "checks": l.checks.iter().map(|c| {
                let r = readings.iter().find(|r| r.name == c.name);
                json!({
                    "check": c,
                    "value": r.and_then(|r| r.value),
                    "error": r.and_then(|r| r.error.clone()),
                    "level": r.map(|r| r.level),
                    "read_at": r.map(|r| rfc3339(r.read_at)),
                })
            }).collect::<Vec<_>>(),
        }),
        created_at: rfc3339(p.created_at),
        disbanded_at: p.disbanded_at.map(rfc3339),
    }
}

#[derive(Serialize, ToSchema)]
pub struct WorkerView {
    #[schema(value_type = String)]
    pub worker_id: WorkerId,
    #[schema(value_type = String)]
    pub pool_id: PoolId,
    pub capacity: u32,
    pub free: u32,
    pub queue_url: String,
    /// Seconds a heartbeat extends the worker's life by.
    pub ttl: u64,
    pub live: bool,
    pub expires_at: String,
    pub created_at: String,
}

pub fn worker(l: &Lineup, w: &Worker) -> WorkerView {
    WorkerView {
        worker_id: w.worker_id.clone(),
        pool_id: w.pool_id.clone(),
        capacity: w.capacity,
        free: w.free,
        queue_url: w.queue.clone(),
        ttl: l.settings.worker_ttl,
        live: w.is_live(l.now()),
        expires_at: rfc3339(w.ttl),
        created_at: rfc3339(w.created_at),
    }
}

/// A worker as registered: its token is shown this once.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    #[serde(flatten)]
    pub worker: WorkerView,
    pub token: String,
    /// Seconds an alloc's lease lasts unless a heartbeat lists it.
    pub alloc_ttl: u64,
}

#[derive(Serialize, ToSchema)]
pub struct EvalView {
    #[schema(value_type = String)]
    pub eval_id: EvalId,
    #[schema(value_type = String)]
    pub pool_id: PoolId,
    #[schema(value_type = String)]
    pub status: EvalStatus,
    pub size: u32,
    pub dataset: Option<String>,
    #[schema(value_type = Value)]
    pub payload: Option<Value>,
    #[schema(value_type = u8)]
    pub priority: Priority,
    pub attempts: u32,
    #[schema(value_type = Option<String>)]
    pub worker_id: Option<WorkerId>,
    #[schema(value_type = Option<String>)]
    pub alloc_id: Option<AllocId>,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
    #[schema(value_type = Option<String>)]
    pub pipeline_id: Option<PipelineId>,
    pub step: Option<String>,
    pub index: Option<u32>,
    pub continued: Option<u32>,
    pub not_before: Option<String>,
    pub redriven: Option<u32>,
    pub created_at: String,
    pub updated_at: String,
}

pub fn eval(e: &Eval) -> EvalView {
    EvalView {
        eval_id: e.eval_id.clone(),
        pool_id: e.pool_id.clone(),
        status: e.status,
        size: e.size,
        dataset: e.dataset.clone(),
        payload: e.payload.clone(),
        priority: e.priority,
        attempts: e.attempt,
        worker_id: e.worker_id.clone(),
        alloc_id: e.alloc_id.clone(),
        exit_code: e.exit_code,
        output: e.output.clone(),
        reason: e.reason.clone(),
        idempotency_key: e.idempotency_key.clone(),
        pipeline_id: e.step.as_ref().map(|s| s.pipeline_id.clone()),
        step: e.step.as_ref().map(|s| s.step.clone()),
        index: e.step.as_ref().map(|s| s.index),
        continued: e.continuation.as_ref().map(|c| c.count),
        not_before: e.continuation.as_ref().map(|c| rfc3339(c.not_before)),
        redriven: e.redrive.as_ref().map(|r| r.count),
        created_at: rfc3339(e.created_at),
        updated_at: rfc3339(e.updated_at),
    }
}

#[derive(Serialize, ToSchema)]
pub struct StepView {
    pub name: String,
    #[schema(value_type = String)]
    pub status: StepStatus,
    #[schema(value_type = Vec<String>)]
    pub eval_ids: Vec<EvalId>,
    pub count: u32,
    pub after: Vec<String>,
    pub size: u32,
    #[schema(value_type = u8)]
    pub priority: Priority,
}

#[derive(Serialize, ToSchema)]
pub struct PipelineView {
    #[schema(value_type = String)]
    pub pipeline_id: PipelineId,
    #[schema(value_type = String)]
    pub pool_id: PoolId,
    #[schema(value_type = String)]
    pub status: PipelineStatus,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub steps: Vec<StepView>,
    pub url: String,
    pub created_at: String,
    pub updated_at: String,
    /// On submit only: false when the idempotency key matched an earlier pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub created: Option<bool>,
}

pub fn pipeline(v: &lineup_core::service::PipelineView) -> PipelineView {
    let p = &v.pipeline;
    let steps = v
        .steps
        .iter()
        .zip(&p.steps)
        .map(|(s, spec)| StepView {
            name: s.name.clone(),
            status: s.status,
            eval_ids: s.eval_ids.clone(),
            count: spec.count,
            after: spec.after.clone(),
            size: spec.size,
            priority: spec.priority,
        })
        .collect();
    PipelineView {
        pipeline_id: p.pipeline_id.clone(),
        pool_id: p.pool_id.clone(),
        status: p.status,
        reason: p.reason.clone(),
        idempotency_key: p.idempotency_key.clone(),
        steps,
        url: format!("/v1/pools/{}/pipelines/{}", p.pool_id, p.pipeline_id),
        created_at: rfc3339(p.created_at),
        updated_at: rfc3339(p.updated_at),
        created: None,
    }
}

pub fn eval_url(e: &Eval) -> String {
    format!("/v1/pools/{}/evals/{}", e.pool_id, e.eval_id)
}

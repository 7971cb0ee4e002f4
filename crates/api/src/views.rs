//! Response bodies. Field names are the API's contract (see README and the issue);
//! times are RFC 3339.

use lineup_core::clock::rfc3339;
use lineup_core::health::Reading;
use lineup_core::{Eval, Lineup, Pool, PoolStats, Worker};
use serde_json::{json, Value};

pub fn pool(p: &Pool, s: &PoolStats, readings: &[Reading], now: lineup_core::Millis) -> Value {
    let l = &p.limits;
    let pulled = lineup_core::health::worst(readings);
    let (level, source, why) = l.health(now, pulled.as_ref());
    json!({
        "pool_id": p.pool_id,
        "strategy": p.strategy,
        "status": p.status,
        "workers": s.workers,
        "capacity": s.capacity,
        "free": s.free,
        "queued": s.queued,
        "allocs": s.allocs,
        "max_running": l.max_running,
        "running": s.allocs,
        "limit": l.limit(now, pulled.as_ref()).map(|x| x.limit),
        "health": {
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
        },
        "created_at": rfc3339(p.created_at),
        "disbanded_at": p.disbanded_at.map(rfc3339),
    })
}

pub fn worker(l: &Lineup, w: &Worker) -> Value {
    let now = l.now();
    json!({
        "worker_id": w.worker_id,
        "pool_id": w.pool_id,
        "capacity": w.capacity,
        "free": w.free,
        "queue_url": w.queue,
        "ttl": l.settings.worker_ttl,
        "live": w.is_live(now),
        "expires_at": rfc3339(w.ttl),
        "created_at": rfc3339(w.created_at),
    })
}

pub fn eval(e: &Eval) -> Value {
    json!({
        "eval_id": e.eval_id,
        "pool_id": e.pool_id,
        "status": e.status,
        "size": e.size,
        "dataset": e.dataset,
        "payload": e.payload,
        "priority": e.priority,
        "attempts": e.attempt,
        "worker_id": e.worker_id,
        "alloc_id": e.alloc_id,
        "exit_code": e.exit_code,
        "output": e.output,
        "reason": e.reason,
        "idempotency_key": e.idempotency_key,
        "pipeline_id": e.step.as_ref().map(|s| &s.pipeline_id),
        "step": e.step.as_ref().map(|s| &s.step),
        "index": e.step.as_ref().map(|s| s.index),
        "continued": e.continuation.as_ref().map(|c| c.count),
        "not_before": e.continuation.as_ref().map(|c| rfc3339(c.not_before)),
        "redriven": e.redrive.as_ref().map(|r| r.count),
        "created_at": rfc3339(e.created_at),
        "updated_at": rfc3339(e.updated_at),
    })
}

pub fn pipeline(v: &lineup_core::service::PipelineView) -> Value {
    let p = &v.pipeline;
    let steps: Vec<Value> = v
        .steps
        .iter()
        .zip(&p.steps)
        .map(|(s, spec)| {
            json!({
                "name": s.name,
                "status": s.status,
                "eval_ids": s.eval_ids,
                "count": spec.count,
                "after": spec.after,
                "size": spec.size,
                "priority": spec.priority,
            })
        })
        .collect();
    json!({
        "pipeline_id": p.pipeline_id,
        "pool_id": p.pool_id,
        "status": p.status,
        "reason": p.reason,
        "idempotency_key": p.idempotency_key,
        "steps": steps,
        "url": format!("/v1/pools/{}/pipelines/{}", p.pool_id, p.pipeline_id),
        "created_at": rfc3339(p.created_at),
        "updated_at": rfc3339(p.updated_at),
    })
}

pub fn eval_url(e: &Eval) -> String {
    format!("/v1/pools/{}/evals/{}", e.pool_id, e.eval_id)
}

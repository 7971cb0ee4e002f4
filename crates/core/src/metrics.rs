//! The figures Lineup reports, through the `metrics` facade: `lineup dev` renders them
//! as Prometheus text at `/metrics`, the Lambdas as CloudWatch Embedded Metric Format
//! log lines. Without a recorder installed every call here does nothing.
//! Names and labels live here only, so both renderings say the same thing.

use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Label, Unit};

use crate::id::PoolId;
use crate::model::{EvalStatus, PoolStats};

pub const SUBMITTED: &str = "lineup_evals_submitted_total";
pub const PLACED: &str = "lineup_evals_placed_total";
pub const COMPLETED: &str = "lineup_evals_completed_total";
pub const FAILED: &str = "lineup_evals_failed_total";
pub const DEAD: &str = "lineup_evals_dead_total";
pub const CANCELLED: &str = "lineup_evals_cancelled_total";
pub const PLACEMENT_LATENCY: &str = "lineup_placement_latency_seconds";
pub const PASS_DURATION: &str = "lineup_schedule_pass_seconds";
pub const BACKEND_CALLS: &str = "lineup_backend_calls_total";
pub const BACKEND_ERRORS: &str = "lineup_backend_errors_total";
/// Failures (not lost conditions) of any operation, unlabelled: one series to alarm on.
pub const BACKEND_FAILURES: &str = "lineup_backend_failures_total";
pub const POOL_CAPACITY: &str = "lineup_pool_capacity";
pub const POOL_FREE: &str = "lineup_pool_free";
pub const POOL_RUNNING: &str = "lineup_pool_running";
pub const POOL_QUEUED: &str = "lineup_pool_queued";
pub const POOL_BLOCKED: &str = "lineup_pool_blocked";
pub const POOL_WORKERS: &str = "lineup_pool_workers_live";

/// Histogram buckets (seconds) for placement latency and pass duration: from a
/// millisecond (the embedded store) to a minute (a blocked eval).
pub const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

static PER_POOL: AtomicBool = AtomicBool::new(true);

/// Whether eval figures carry a `pool` label (default yes). The Lambdas turn it off:
/// each label value is a CloudWatch dimension, so a custom metric billed per pool per
/// month; per-pool figures are for `lineup dev`'s scrapes.
pub fn set_per_pool(on: bool) {
    PER_POOL.store(on, Ordering::Relaxed);
}

fn by_pool(pool: &PoolId) -> Vec<Label> {
    if PER_POOL.load(Ordering::Relaxed) {
        vec![Label::new("pool", pool.to_string())]
    } else {
        Vec::new()
    }
}

/// HELP lines; call once after installing a recorder.
pub fn describe() {
    describe_counter!(SUBMITTED, "Evals accepted (pipeline steps included), by pool.");
    describe_counter!(PLACED, "Evals placed on a worker (each attempt), by pool.");
    describe_counter!(COMPLETED, "Evals completed, by pool.");
    describe_counter!(FAILED, "Attempts that failed or expired and were retried, by pool.");
    describe_counter!(DEAD, "Evals that ran out of retries, by pool.");
    describe_counter!(CANCELLED, "Evals cancelled, by pool.");
    describe_histogram!(PLACEMENT_LATENCY, Unit::Seconds, "From an eval's submit to its first placement.");
    describe_histogram!(PASS_DURATION, Unit::Seconds, "One scheduling pass: intake, plan, commit, delivery.");
    describe_counter!(BACKEND_CALLS, "Store and queue operations, by backend and operation.");
    describe_counter!(BACKEND_ERRORS, "Store and queue operations that failed (kind: conflict or error).");
    describe_counter!(BACKEND_FAILURES, "Store and queue operations that failed, lost conditions not counted.");
    describe_gauge!(POOL_CAPACITY, "Registered capacity of the pool's live workers.");
    describe_gauge!(POOL_FREE, "Free capacity of the pool's live workers.");
    describe_gauge!(POOL_RUNNING, "Live allocs in the pool.");
    describe_gauge!(POOL_QUEUED, "Evals waiting for a placement.");
    describe_gauge!(POOL_BLOCKED, "Waiting evals held by this process's schedulers because nothing fits.");
    describe_gauge!(POOL_WORKERS, "Live workers.");
}

pub fn submitted(pool: &PoolId) {
    counter!(SUBMITTED, by_pool(pool)).increment(1);
}

/// One entry per placed eval: its wait since submit, for a first attempt (a retry's
/// record does not keep when it became waiting again: reasons rewrite it).
pub fn placed(pool: &PoolId, waited_ms: Vec<Option<i64>>) {
    // Every pass calls this; one with nothing placed records nothing (and builds no label).
    if waited_ms.is_empty() {
        return;
    }
    let labels = by_pool(pool);
    counter!(PLACED, labels.clone()).increment(waited_ms.len() as u64);
    let h = histogram!(PLACEMENT_LATENCY, labels);
    for ms in waited_ms.into_iter().flatten() {
        h.record(ms.max(0) as f64 / 1000.0);
    }
}

/// An eval's attempt ended in `status`.
pub fn finished(pool: &PoolId, status: EvalStatus) {
    let name = match status {
        EvalStatus::Complete => COMPLETED,
        EvalStatus::Failed => FAILED,
        EvalStatus::Dead => DEAD,
        EvalStatus::Cancelled => CANCELLED,
        EvalStatus::Queued | EvalStatus::Placed => return,
    };
    counter!(name, by_pool(pool)).increment(1);
}

pub fn pass(pool: &PoolId, seconds: f64) {
    histogram!(PASS_DURATION, by_pool(pool)).record(seconds);
}

/// One store or queue operation and how it ended.
pub fn backend_call(backend: &'static str, op: &'static str, error: Option<&crate::Error>) {
    counter!(BACKEND_CALLS, "backend" => backend, "op" => op).increment(1);
    if let Some(e) = error {
        // A lost condition is how conditional writes say "someone else won": counted
        // apart from failures.
        let kind = if matches!(e, crate::Error::Conflict(_)) { "conflict" } else { "error" };
        counter!(BACKEND_ERRORS, "backend" => backend, "op" => op, "kind" => kind).increment(1);
        if kind == "error" {
            counter!(BACKEND_FAILURES).increment(1);
        }
    }
}

/// A pool's gauges, as of a read of its stats.
pub fn pool_gauges(pool: &PoolId, s: &PoolStats, blocked: usize) {
    let p = pool.to_string();
    gauge!(POOL_CAPACITY, "pool" => p.clone()).set(s.capacity as f64);
    gauge!(POOL_FREE, "pool" => p.clone()).set(s.free as f64);
    gauge!(POOL_RUNNING, "pool" => p.clone()).set(s.allocs as f64);
    gauge!(POOL_QUEUED, "pool" => p.clone()).set(s.queued as f64);
    gauge!(POOL_BLOCKED, "pool" => p.clone()).set(blocked as f64);
    gauge!(POOL_WORKERS, "pool" => p).set(s.workers as f64);
}

//! The records Lineup keeps, ported from the Go original (pools, workers, replicas,
//! allocs, evals) plus what eval tracking needs. Times are milliseconds since the epoch
//! (`Millis`); a record's `ttl` is the moment it stops being live.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{AllocId, EvalId, PoolId, WorkerId};

pub type Millis = i64;

/// Upper bounds that keep one request from holding the system hostage.
pub const MAX_SIZE: u32 = 1_000_000;
pub const MAX_DATASET_LEN: usize = 256;
pub const MAX_DATASETS_PER_HEARTBEAT: usize = 1_000;
/// Allocs one heartbeat may list. On DynamoDB they are renewed 100 to a transaction, so a
/// heartbeat costs at most 10 transactions (and one retry each for those that list a
/// lost alloc), whatever a worker token sends.
pub const MAX_ALLOCS_PER_HEARTBEAT: usize = 1_000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
pub const MAX_REASON_BYTES: usize = 4 * 1024;

/// An eval's priority, 0–100 (default 50): among waiting evals that fit, higher is
/// placed first; equal priorities keep arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(u8);

impl Priority {
    pub const MAX: u8 = 100;
    pub const DEFAULT: Priority = Priority(50);

    pub fn new(n: i64) -> Result<Self> {
        u8::try_from(n).ok().filter(|n| *n <= Self::MAX).map(Priority).ok_or_else(|| {
            Error::invalid("invalid_priority", format!("priority must be between 0 and {}, got {n}", Self::MAX))
        })
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DEFAULT
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Most free capacity first: the Go original's behaviour.
    #[default]
    Spread,
    /// Least free capacity that still fits: packs work onto few workers.
    Binpack,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Spread => "spread",
            Strategy::Binpack => "binpack",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "spread" => Ok(Strategy::Spread),
            "binpack" => Ok(Strategy::Binpack),
            other => Err(Error::invalid(
                "invalid_strategy",
                format!("unknown strategy {other:?}: expected \"spread\" or \"binpack\""),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolStatus {
    Active,
    Disbanded,
}

impl PoolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolStatus::Active => "active",
            PoolStatus::Disbanded => "disbanded",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(PoolStatus::Active),
            "disbanded" => Ok(PoolStatus::Disbanded),
            other => Err(Error::Backend(format!("unknown pool status {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub pool_id: PoolId,
    pub strategy: Strategy,
    pub status: PoolStatus,
    pub created_at: Millis,
    pub disbanded_at: Option<Millis>,
    /// `max_running`, health and what enforcing them needs (`admission.rs`).
    #[serde(default)]
    pub limits: crate::admission::PoolLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub pool_id: PoolId,
    pub worker_id: WorkerId,
    /// Registered capacity.
    pub capacity: u32,
    /// Free capacity (`cap` in the original): capacity minus the sizes of live allocs.
    pub free: u32,
    /// The worker is live while `ttl > now`; heartbeats push it forward.
    pub ttl: Millis,
    /// SHA-256 of the worker's token, hex.
    pub token_hash: String,
    /// The URL of the worker's queue.
    pub queue: String,
    pub created_at: Millis,
}

impl Worker {
    pub fn is_live(&self, now: Millis) -> bool {
        self.ttl > now
    }
}

/// "Worker `worker_id` holds dataset `dataset`", live while `ttl > now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub pool_id: PoolId,
    pub dataset: String,
    pub worker_id: WorkerId,
    pub ttl: Millis,
}

impl Replica {
    /// The original's key: `{dataset}:{worker}`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.dataset, self.worker_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalStatus {
    /// Waiting in the pool queue for a placement.
    Queued,
    /// An alloc for it is live on a worker.
    Placed,
    /// Finished; `exit_code` says how.
    Complete,
    /// The last attempt failed or expired; it is queued again for another attempt.
    Failed,
    /// Out of attempts; listed by the dead-letter endpoint.
    Dead,
    Cancelled,
}

impl EvalStatus {
    pub const ALL: [EvalStatus; 6] = [
        EvalStatus::Queued,
        EvalStatus::Placed,
        EvalStatus::Complete,
        EvalStatus::Failed,
        EvalStatus::Dead,
        EvalStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvalStatus::Queued => "queued",
            EvalStatus::Placed => "placed",
            EvalStatus::Complete => "complete",
            EvalStatus::Failed => "failed",
            EvalStatus::Dead => "dead",
            EvalStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::invalid("invalid_status", format!("unknown eval status {s:?}")))
    }

    /// Waiting for a placement (in the pool queue).
    pub fn is_waiting(self) -> bool {
        matches!(self, EvalStatus::Queued | EvalStatus::Failed)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, EvalStatus::Complete | EvalStatus::Dead | EvalStatus::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub pool_id: PoolId,
    pub eval_id: EvalId,
    pub size: u32,
    pub dataset: Option<String>,
    pub payload: Option<serde_json::Value>,
    /// Records written before priorities existed read as the default.
    #[serde(default)]
    pub priority: Priority,
    pub status: EvalStatus,
    /// 1 for the first placement attempt; each retry adds one.
    pub attempt: u32,
    /// Bumped on every write; writes are conditioned on the version they read.
    pub version: u64,
    pub worker_id: Option<WorkerId>,
    pub alloc_id: Option<AllocId>,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The pipeline step this eval runs, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepRef>,
    /// Set once a job asked to continue later (`Finish::Continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<Continuation>,
    /// Set once the eval was sent back from the dead letters (`Lineup::redrive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<Redrive>,
    /// Finished evals are purged after this time (`Settings::history_retention`); a
    /// pipeline's step evals are not (the pipeline reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<Millis>,
}

impl Eval {
    /// Failed attempts that count against `MAX_RETRY`: continuations are not retries,
    /// and a redrive gives a fresh budget.
    pub fn retries_used(&self) -> u32 {
        let continued = self.continuation.as_ref().map_or(0, |c| c.count);
        let base = self.redrive.as_ref().map_or(0, |r| r.retry_base);
        self.attempt.saturating_sub(continued).saturating_sub(base)
    }
}

/// A dead eval sent back to its queue with a fresh retry budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redrive {
    /// How many times it was redriven.
    pub count: u32,
    /// Attempts, less continuations, used before the last redrive: they no longer count.
    pub retry_base: u32,
    /// The redrive call that did it (random). Two concurrent calls would otherwise
    /// write the same record, and the loser would take the winner's write for its own
    /// (a write whose response was lost is recognised by reading it back).
    pub by: String,
}

/// A job that finished for now and continues later, with state for its next run
/// (prorch's `on_continue`). Not a retry: it does not count against `MAX_RETRY`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Continuation {
    /// How many times the eval continued (so `attempt - count` attempts were retries).
    pub count: u32,
    /// Not placed before this time.
    pub not_before: Millis,
    /// The next job's `LINEUP_STATE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}

/// A continuation's saved state, as JSON, at most (it becomes an environment variable).
pub const MAX_STATE_BYTES: usize = 64 * 1024;
/// The longest `continue_after`: a week (SQS keeps a message 14 days; the reconciler
/// re-sends a waiting eval's message after 7).
pub const MAX_CONTINUE_AFTER_S: u64 = 7 * 24 * 3600;

/// An eval's place in a pipeline, and what its job gets from the steps before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRef {
    pub pipeline_id: crate::id::PipelineId,
    pub step: String,
    /// 0..count: the job's `LINEUP_INDEX`.
    pub index: u32,
    /// The job's `LINEUP_INPUTS` (`pipeline::inputs`), fixed when the step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
}

impl Eval {
    /// A newly accepted eval: queued for its first attempt.
    pub fn queued(
        pool_id: PoolId,
        size: u32,
        dataset: Option<String>,
        payload: Option<serde_json::Value>,
        priority: Priority,
        idempotency_key: Option<String>,
        now: Millis,
    ) -> Eval {
        Eval {
            pool_id,
            eval_id: EvalId::generate(),
            size,
            dataset,
            payload,
            priority,
            status: EvalStatus::Queued,
            attempt: 1,
            version: 1,
            worker_id: None,
            alloc_id: None,
            exit_code: None,
            output: None,
            reason: None,
            idempotency_key,
            created_at: now,
            updated_at: now,
            step: None,
            continuation: None,
            redrive: None,
            purge_at: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocState {
    /// Holds its size of the worker's capacity.
    Live,
    /// Capacity returned; kept as a tombstone so completing twice is harmless.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alloc {
    pub pool_id: PoolId,
    pub alloc_id: AllocId,
    pub worker_id: WorkerId,
    pub eval_id: EvalId,
    pub size: u32,
    pub attempt: u32,
    /// Live allocs expire at `ttl` unless the worker's heartbeat extends it.
    pub ttl: Millis,
    pub state: AllocState,
    /// Set when the eval was cancelled while placed: the worker is told to stop it,
    /// and its capacity comes back when the worker reports or the TTL runs out.
    pub stop: bool,
    pub created_at: Millis,
    /// Counted in its pool's `limits.running` (placed under a cap, or counted when one
    /// was set): its release takes one off.
    #[serde(default)]
    pub counted: bool,
}

/// The body of a message in a pool's scheduling queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalMessage {
    pub eval_id: EvalId,
    pub attempt: u32,
    /// Copies of the eval's priority and size, so a scheduler holding blocked messages
    /// can order and budget them without reading their evals. Hints only: the eval
    /// record decides. Messages sent before they existed read as the defaults.
    #[serde(default)]
    pub priority: Priority,
    #[serde(default = "one")]
    pub size: u32,
}

fn one() -> u32 {
    1
}

impl EvalMessage {
    /// The message that asks for `eval`'s current attempt.
    pub fn of(eval: &Eval) -> EvalMessage {
        EvalMessage { eval_id: eval.eval_id.clone(), attempt: eval.attempt, priority: eval.priority, size: eval.size }
    }
}

/// The body of a message in a worker's queue: everything the worker needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocMessage {
    pub alloc_id: AllocId,
    pub eval_id: EvalId,
    pub pool_id: PoolId,
    pub worker_id: WorkerId,
    pub size: u32,
    pub dataset: Option<String>,
    pub payload: Option<serde_json::Value>,
    pub attempt: u32,
    /// For a pipeline step's eval: the pipeline, step, index and inputs of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepRef>,
    /// The state a continued job saved, for this run (`LINEUP_STATE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}

/// Counts shown with a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    pub workers: u64,
    pub capacity: u64,
    pub free: u64,
    pub queued: u64,
    pub allocs: u64,
}

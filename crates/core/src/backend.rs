//! The two traits a backend implements: `Store` (records, with the conditional and
//! atomic writes the invariants rest on) and `Queues` (SQS semantics). The embedded
//! SQLite backend and the DynamoDB + SQS backend implement both, and both must pass
//! the shared conformance suite (`crates/conformance`).
//!
//! Every method that changes more than one record says "atomically": all of it is
//! written or none of it. A lost condition is `Error::Conflict` with nothing written.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::id::{AllocId, EvalId, PipelineId, PoolId, WorkerId};
use crate::model::{Alloc, Eval, EvalStatus, Millis, Pool, PoolStats, Replica, Worker};
use crate::pipeline::{Pipeline, PipelineStatus};

/// What a worker's heartbeat asks the store to do, all times already absolute.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub pool: PoolId,
    pub worker: WorkerId,
    pub now: Millis,
    /// The worker's new TTL.
    pub ttl: Millis,
    /// Datasets it holds; each becomes a replica live until `replica_ttl`.
    pub datasets: Vec<String>,
    pub replica_ttl: Millis,
    /// Allocs it is running; those that are live, its own and not told to stop are
    /// extended to `alloc_ttl`.
    pub allocs: Vec<AllocId>,
    pub alloc_ttl: Millis,
}

/// One placement of a scheduler's batch, and what follows when it succeeds.
#[derive(Debug, Clone)]
pub struct Placement {
    pub alloc: Alloc,
    /// The eval as placed; written if the stored version is `expected_version`.
    pub eval: Eval,
    pub expected_version: u64,
    /// The worker's queue and the alloc message for it.
    pub deliver_to: String,
    pub body: String,
    /// Receipt of the pool-queue message that asked for it, deleted once placed.
    pub receipt: String,
}

/// A worker's completion of its alloc's eval, as `Store::complete_first` writes it:
/// status complete, `exit_code`, `output` (validated; `None` clears it), no reason,
/// version + 1, updated at `at`, kept until `purge_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub exit_code: i32,
    pub output: Option<String>,
    pub at: Millis,
    pub purge_at: Millis,
}

/// The pool side of a placement: the claim holds only if the pool's limits are still
/// at `version` (no cap set or changed since the scheduler read them), and, with a
/// `limit`, only while fewer than `limit` allocs are counted in the pool; the alloc is
/// then counted (`Alloc::counted`), atomically with the capacity claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Claim {
    pub version: u64,
    pub limit: Option<u32>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- pools
    async fn create_pool(&self, pool: &Pool) -> Result<()>;
    async fn get_pool(&self, pool: &PoolId) -> Result<Option<Pool>>;
    async fn list_pools(&self) -> Result<Vec<Pool>>;
    /// The pools as the scheduler and the releaser sweep them, every few seconds: may
    /// miss a write of the last second or so (eventually consistent where the store
    /// has the choice, at half the read cost: on DynamoDB a scan of 10,000 pools every
    /// 5 s per `schedule` invocation is most of what many pools cost). The API lists
    /// with `list_pools`.
    async fn sweep_pools(&self) -> Result<Vec<Pool>> {
        self.list_pools().await
    }
    /// Marks the pool disbanded (a second call changes nothing) and returns it.
    /// `NotFound` if it does not exist.
    async fn disband_pool(&self, pool: &PoolId, now: Millis) -> Result<Pool>;
    /// Deletes the pool and every record in it.
    async fn purge_pool(&self, pool: &PoolId) -> Result<()>;
    async fn pool_stats(&self, pool: &PoolId, now: Millis) -> Result<PoolStats>;
    /// Sets or removes the pool's `max_running`, bumping `limits.version` so claims made
    /// against the old value lose. Setting a cap counts every live alloc not yet
    /// counted, so the cap holds for the allocs already running too; with claims made
    /// against the old version fenced out first (a backend that cannot do it in one
    /// transaction shows `limits.counting` meanwhile). Returns the pool as it is then.
    async fn set_max_running(&self, pool: &PoolId, max_running: Option<u32>) -> Result<Pool>;
    /// Writes the pool's health settings (coefficients, pushed level, checks); they
    /// change no claim condition, so no fence is needed.
    async fn set_health(
        &self,
        pool: &PoolId,
        coefficients: crate::admission::Coefficients,
        pushed: Option<crate::admission::Pushed>,
        checks: &[crate::health::HealthCheck],
    ) -> Result<Pool>;

    // ---- workers
    /// Inserts a new worker, atomically with the check that its pool is active
    /// (`NotFound`, `Disbanded`).
    async fn register_worker(&self, worker: &Worker) -> Result<()>;
    async fn get_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<Option<Worker>>;
    async fn list_workers(&self, pool: &PoolId) -> Result<Vec<Worker>>;
    /// Live workers with at least `min_free` free. May lag (DynamoDB's GSI does):
    /// a hint for placement, whose conditional write is the truth.
    async fn candidates(&self, pool: &PoolId, min_free: u32, now: Millis) -> Result<Vec<Worker>>;
    /// Workers whose TTL has passed (`ttl <= now`).
    async fn expired_workers(&self, pool: &PoolId, now: Millis) -> Result<Vec<Worker>>;
    /// Deletes the worker and its replicas. The caller releases its live allocs first.
    async fn delete_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<()>;
    /// Extends a live worker's TTL, upserts its replicas and extends its allocs.
    /// Returns the listed allocs the worker should stop: released, not its own, unknown,
    /// flagged to stop, or expired (a lease whose TTL passed is never renewed: the
    /// releaser may be retrying its eval already). `NotFound` if no such worker, `Expired` if its TTL passed
    /// (an expired worker never comes back: its allocs are being released).
    async fn heartbeat(&self, hb: &Heartbeat) -> Result<Vec<AllocId>>;

    // ---- replicas
    /// Live replicas of any of `datasets`.
    async fn replicas(&self, pool: &PoolId, datasets: &[String], now: Millis) -> Result<Vec<Replica>>;
    /// Deletes replicas whose TTL has passed; returns how many.
    async fn delete_expired_replicas(&self, pool: &PoolId, now: Millis) -> Result<u64>;
    /// Deletes the pool's evals whose `purge_at` passed and its allocs released with a
    /// lease that ran out before `released_before`; how many. A backend whose records
    /// expire on their own (DynamoDB's TTL on `purge_at`) does nothing here.
    async fn purge_history(&self, _pool: &PoolId, _now: Millis, _released_before: Millis) -> Result<u64> {
        Ok(0)
    }

    // ---- evals
    /// Inserts a new eval, atomically with the check that its pool is active where
    /// `insert_checks_pool`. If the eval has an idempotency key already used in this
    /// pool, or its id exists already (a pipeline step's evals have ids fixed in
    /// advance, so starting a step twice creates each once), nothing is written and the
    /// existing eval is returned.
    async fn insert_eval(&self, eval: &Eval) -> Result<Option<Eval>>;

    /// Whether `insert_eval` refuses a disbanded pool itself. A store where that check
    /// would put every submit of a pool on one item (DynamoDB: the pool item, a hot
    /// key) leaves it to the pool's queue, which the submit sends to first and disband
    /// deletes first; an eval written in the moment between is cancelled by the
    /// releaser, which sweeps a disbanded pool's unfinished evals until its purge.
    fn insert_checks_pool(&self) -> bool {
        true
    }
    /// `insert_eval` and the eval's first message on `queue`, in one transaction, for a
    /// store that holds the queues too (the embedded one): the message and the record
    /// appear together, so a scheduler never receives a message whose eval it cannot
    /// read yet, and a submit costs one commit. `QueueGone` if the queue is gone; no
    /// message is sent when an idempotency key matches. `None`, the default, means
    /// unsupported: the caller sends first, then inserts.
    async fn insert_eval_with_message(&self, _eval: &Eval, _queue: &str, _body: &str) -> Option<Result<Option<Eval>>> {
        None
    }
    async fn get_eval(&self, pool: &PoolId, eval: &EvalId) -> Result<Option<Eval>>;
    /// The eval submitted with this idempotency key, if any.
    async fn find_eval_by_key(&self, pool: &PoolId, key: &str) -> Result<Option<Eval>>;
    /// The evals among `ids` that exist, in any order.
    async fn get_evals(&self, pool: &PoolId, ids: &[EvalId]) -> Result<Vec<Eval>>;
    /// Evals of the pool, newest first, optionally of one status, at most `limit`.
    async fn list_evals(&self, pool: &PoolId, status: Option<EvalStatus>, limit: usize) -> Result<Vec<Eval>>;
    /// Evals of the pool not yet finished (queued, placed, failed), all of them.
    async fn unfinished_evals(&self, pool: &PoolId) -> Result<Vec<Eval>>;
    /// Writes `eval` if the stored version is `expected_version`; `Conflict` otherwise.
    /// The caller sets `eval.version = expected_version + 1`.
    async fn update_eval(&self, eval: &Eval, expected_version: u64) -> Result<()>;
    /// Several `update_eval`s, each on its own (one may conflict while the others are
    /// written), in one round trip where the backend can. One result each, in order.
    async fn update_evals(&self, evals: &[(Eval, u64)]) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(evals.len());
        for (e, expected) in evals {
            out.push(self.update_eval(e, *expected).await);
        }
        Ok(out)
    }

    // ---- pipelines
    /// Writes a new pipeline, atomically with the check that its pool is active. With an
    /// idempotency key already used by a pipeline of this pool, nothing is written and
    /// that pipeline is returned.
    async fn insert_pipeline(&self, p: &Pipeline) -> Result<Option<Pipeline>>;
    async fn get_pipeline(&self, pool: &PoolId, id: &PipelineId) -> Result<Option<Pipeline>>;
    /// Pipelines of the pool, newest first, optionally of one status, at most `limit`.
    async fn list_pipelines(
        &self,
        pool: &PoolId,
        status: Option<PipelineStatus>,
        limit: usize,
    ) -> Result<Vec<Pipeline>>;
    /// Writes `p` if the stored version is `expected_version`; `Conflict` otherwise.
    /// The caller sets `p.version = expected_version + 1`.
    async fn update_pipeline(&self, p: &Pipeline, expected_version: u64) -> Result<()>;

    // ---- allocs
    async fn get_alloc(&self, pool: &PoolId, alloc: &AllocId) -> Result<Option<Alloc>>;

    /// The allocs of `ids` that exist, in any order (a poll checks what it hands out
    /// in one read where the store can batch).
    async fn get_allocs(&self, pool: &PoolId, ids: &[AllocId]) -> Result<Vec<Alloc>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.get_alloc(pool, id).await?);
        }
        Ok(out)
    }
    /// Live allocs of the pool, or of one worker.
    async fn live_allocs(&self, pool: &PoolId, worker: Option<&WorkerId>) -> Result<Vec<Alloc>>;
    /// Live allocs whose TTL has passed.
    async fn expired_allocs(&self, pool: &PoolId, now: Millis) -> Result<Vec<Alloc>>;

    /// Atomically: take `alloc.size` from the worker's free capacity (only if it has
    /// that much and is live at `now`), insert the alloc (its id must be new), write
    /// `eval` (stored version must be `expected_version`) and meet `claim` (the pool's
    /// limits; `alloc.counted` must be `claim.limit.is_some()`). `Conflict` otherwise.
    async fn place(&self, alloc: &Alloc, eval: &Eval, expected_version: u64, claim: Claim, now: Millis) -> Result<()>;

    /// Several `place`s, each atomic on its own (one may conflict while the others are
    /// written), in one round trip where the backend can: the embedded store commits a
    /// scheduler's whole batch at once; DynamoDB has no such thing (one transaction
    /// each). One result each, in order; the outer error means none was tried.
    async fn place_many(&self, items: &[(Alloc, Eval, u64)], claim: Claim, now: Millis) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(items.len());
        for (alloc, eval, expected) in items {
            out.push(self.place(alloc, eval, *expected, claim, now).await);
        }
        Ok(out)
    }

    /// `place_many`, and for each placement that succeeds, its alloc message sent to
    /// `deliver_to` and its pool-queue message (`receipt` on `pool_queue`) deleted, all
    /// in one transaction, for a store that holds the queues too (the embedded one): a
    /// scheduler's batch is then one commit, with no moment where an eval is placed but
    /// its alloc not yet delivered. A worker queue that is gone does not undo the
    /// placement (the alloc expires and the eval is retried, as when delivery fails
    /// elsewhere). `None`, the default, means unsupported: the caller places, sends,
    /// then deletes.
    async fn place_and_deliver(
        &self,
        _pool_queue: &str,
        _items: &[Placement],
        _claim: Claim,
        _now: Millis,
    ) -> Option<Result<Vec<Result<()>>>> {
        None
    }

    /// Atomically: mark the live alloc released, give its size back to its worker (if
    /// the worker still exists: a removed worker must not block release), take it off
    /// its pool's running count if it was counted (as stored: `Conflict` if `alloc`
    /// says otherwise) and write
    /// `eval` if given (stored version must match). `Conflict` if the alloc is no longer
    /// live or the eval changed; then nothing is written, so capacity is returned once.
    ///
    /// `expired_by`: release only if the alloc's TTL is still at or before this time
    /// when the write lands (the releaser's view of an expired lease). A heartbeat that
    /// renewed it in between wins (`Conflict`), and a heartbeat never renews an expired
    /// one: so a lease is decided once, by whichever write lands first.
    async fn release(&self, alloc: &Alloc, eval: Option<(&Eval, u64)>, expired_by: Option<Millis>) -> Result<()>;

    /// For a store where `release` with an eval costs more than two plain writes
    /// (DynamoDB bills every item of a transaction twice): the eval marked complete on
    /// its own (`done`), only if it is placed on `alloc` and is not a pipeline step,
    /// returned as it now stands (also when it was completed on `alloc` before: a
    /// retried completion; nothing changes then); `Ok(None)` when it is neither, and
    /// nothing was written.
    /// The caller then releases the alloc without an eval. In between (or if the
    /// caller stops there) the eval is finished while its alloc still holds the
    /// capacity until released or expired — never the reverse, so nothing is lost and
    /// nothing runs twice. `None`, the default: unsupported (one `release` writes both).
    async fn complete_first(&self, _alloc: &Alloc, _done: &Completion) -> Option<Result<Option<Eval>>> {
        None
    }

    /// Atomically: write `eval` (stored version must match) and flag the live alloc to stop.
    async fn cancel_placed(&self, eval: &Eval, expected_version: u64, alloc: &AllocId) -> Result<()>;
}

/// A message as received: `receipt` deletes it or changes its visibility.
#[derive(Debug, Clone)]
pub struct Received {
    pub receipt: String,
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// SQS semantics: at-least-once delivery, a received message is hidden for its
/// visibility timeout and comes back unless deleted, long polls wake on arrival.
#[async_trait]
pub trait Queues: Send + Sync + 'static {
    /// Creates the queue if missing; returns its URL (what a worker is told to read from).
    async fn create_queue(&self, name: &str) -> Result<String>;
    /// Deletes the queue and its messages; deleting a missing queue is fine.
    async fn delete_queue(&self, name: &str) -> Result<()>;
    /// Sends the bodies in order (batched by the backend). `QueueGone` if deleted.
    async fn send(&self, name: &str, bodies: &[String]) -> Result<()>;
    /// `send` to several queues, in one round trip where the backend can. One result
    /// per queue, in order.
    async fn send_many(&self, batches: &[(String, Vec<String>)]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(batches.len());
        for (name, bodies) in batches {
            out.push(self.send(name, bodies).await);
        }
        out
    }
    /// Up to `max` visible messages, waiting up to `wait` for the first. Received
    /// messages are hidden for `visibility`. `QueueGone` if deleted.
    async fn receive(&self, name: &str, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Received>>;
    /// Deletes received messages; stale receipts are ignored.
    async fn delete(&self, name: &str, receipts: &[String]) -> Result<()>;
    /// Hides received messages, each for its own duration from now (one batch call
    /// where the backend has one). `parked` marks them as waiting for capacity, so that
    /// `wake` can bring them back early. Stale receipts are ignored.
    async fn change_visibility(&self, name: &str, changes: &[(String, Duration)], parked: bool) -> Result<()>;
    /// How many messages the queue holds, visible, in flight and delayed (approximate on
    /// SQS); `None` where the backend cannot tell. The reconciler compares it with the
    /// evals waiting on the queue.
    async fn depth(&self, _name: &str) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Makes parked messages visible now, where the backend can (new capacity appeared).
    /// SQS cannot; the default does nothing and the backoff bounds the wait.
    async fn wake(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    /// Whether dead evals are announced on the deployment's dead-letter queue. On SQS
    /// they are: the template alarms on it and keeps a message 14 days. A backend whose
    /// queues keep messages until read, with nothing reading them, says no; the eval
    /// records (`GET .../dead-letters`) are the truth either way.
    fn announces_dead_letters(&self) -> bool {
        true
    }
}

//! The operations behind the REST API (and the Go original's RPC routes): pools,
//! workers, heartbeats, polls, evals, completing and failing allocs. Each checks the
//! caller's scope first, then validates, then touches the backend.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::finish::{Finish, Finished};
use super::{require_admin, require_worker, Lineup};
use crate::auth::{self, Principal};
use crate::backend::Heartbeat;
use crate::error::{Error, Result};
use crate::events::{Change, Topic};
use crate::id::{AllocId, EvalId, PoolId, WorkerId};
use crate::model::*;
use crate::validate;

pub struct RegisteredWorker {
    pub worker: Worker,
    pub token: String,
    pub queue_url: String,
}

pub struct HeartbeatRequest {
    pub datasets: Vec<String>,
    pub allocs: Vec<AllocId>,
}

/// The pool as read, if it is there and active: `NotFound` or `Disbanded` otherwise.
fn active(id: &PoolId, p: Option<Pool>) -> Result<Pool> {
    match p {
        None => Err(Error::not_found(format!("pool {id}"))),
        Some(p) if p.status == PoolStatus::Disbanded => Err(Error::Disbanded(id.to_string())),
        Some(p) => Ok(p),
    }
}

/// The eval an idempotency key named, if it was submitted with the same values; a
/// key reused for something else is the caller's mistake, not a replay.
fn same_submission(existing: Eval, new: &NewEval) -> Result<SubmitOutcome> {
    if existing.size == new.size
        && existing.dataset == new.dataset
        && existing.payload == new.payload
        && existing.priority == new.priority
    {
        Ok(SubmitOutcome { eval: existing, created: false })
    } else {
        Err(Error::IdempotencyMismatch(existing.idempotency_key.clone().unwrap_or_default()))
    }
}

/// A validated eval submission.
#[derive(Clone)]
pub struct NewEval {
    pub size: u32,
    pub dataset: Option<String>,
    pub payload: Option<serde_json::Value>,
    pub priority: Priority,
    pub idempotency_key: Option<String>,
}

pub struct SubmitOutcome {
    pub eval: Eval,
    /// False when an idempotency key matched an eval submitted before.
    pub created: bool,
}

pub type FinishOutcome = Finished;

pub enum CancelOutcome {
    Cancelled(Eval),
    /// Already complete, dead or cancelled: nothing changed.
    AlreadyFinished(Eval),
}

/// How long a poll may wait, at most: inside API Gateway's 29 s limit.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(20);
/// How many allocs one poll returns, at most (SQS's receive limit).
pub const MAX_POLL_BATCH: usize = 10;

impl Lineup {
    // ---- pools

    pub async fn create_pool(&self, who: &Principal, strategy: Strategy) -> Result<Pool> {
        require_admin(who)?;
        let pool = Pool {
            pool_id: PoolId::generate(),
            strategy,
            status: PoolStatus::Active,
            created_at: self.now(),
            disbanded_at: None,
            limits: Default::default(),
        };
        // Queue first: an active pool always has its queue.
        self.queues.create_queue(&self.pool_queue(&pool.pool_id)).await?;
        self.store.create_pool(&pool).await?;
        self.pools_changed.notify_waiters();
        info!(pool = %pool.pool_id, strategy = strategy.as_str(), "pool created");
        self.emit(|| Change::new(Topic::Pool, &pool.pool_id, &pool.pool_id, "active"));
        Ok(pool)
    }

    pub async fn pool(&self, who: &Principal, pool: &PoolId) -> Result<(Pool, PoolStats)> {
        require_admin(who)?;
        let p = self.active_or_any_pool(pool).await?;
        let stats = self.store.pool_stats(pool, self.now()).await?;
        Ok((p, stats))
    }

    pub async fn pools(&self, who: &Principal) -> Result<Vec<(Pool, PoolStats)>> {
        require_admin(who)?;
        let now = self.now();
        let mut out = Vec::new();
        for p in self.store.list_pools().await? {
            let stats = self.store.pool_stats(&p.pool_id, now).await?;
            out.push((p, stats));
        }
        Ok(out)
    }

    /// Disbands a pool: it refuses new workers and evals, its queues go away, its
    /// unfinished evals end as cancelled. Records are purged after `POOL_TTL`.
    /// A second call finds nothing more to do.
    pub async fn disband_pool(&self, who: &Principal, pool: &PoolId) -> Result<Pool> {
        require_admin(who)?;
        let p = self.store.disband_pool(pool, self.now()).await?;
        self.forget_pool(pool);
        crate::fault!("disband.after_mark");
        self.queues.delete_queue(&self.pool_queue(pool)).await?;
        for e in self.store.unfinished_evals(pool).await? {
            if let Err(err) = self.cancel_loop(e, "pool disbanded").await {
                warn!(pool = %pool, error = %err, "cancel on disband");
            }
        }
        for w in self.store.list_workers(pool).await? {
            self.queues.delete_queue(&self.worker_queue(pool, &w.worker_id)).await?;
        }
        info!(pool = %pool, "pool disbanded");
        self.emit(|| Change::new(Topic::Pool, pool, pool, "disbanded"));
        Ok(p)
    }

    async fn active_or_any_pool(&self, pool: &PoolId) -> Result<Pool> {
        self.store.get_pool(pool).await?.ok_or_else(|| Error::not_found(format!("pool {pool}")))
    }

    pub(super) async fn active_pool(&self, pool: &PoolId) -> Result<Pool> {
        active(pool, self.store.get_pool(pool).await?)
    }

    // ---- workers

    pub async fn register_worker(&self, who: &Principal, pool: &PoolId, capacity: u32) -> Result<RegisteredWorker> {
        require_admin(who)?;
        self.active_pool(pool).await?;
        let worker_id = WorkerId::generate();
        let token = auth::new_worker_token(pool, &worker_id);
        let queue = self.worker_queue(pool, &worker_id);
        let now = self.now();
        let worker = Worker {
            pool_id: pool.clone(),
            worker_id,
            capacity,
            free: capacity,
            ttl: now + self.settings.worker_ttl_ms(),
            token_hash: auth::hash(&token),
            queue: String::new(),
            created_at: now,
        };
        let queue_url = self.queues.create_queue(&queue).await?;
        let worker = Worker { queue: queue_url.clone(), ..worker };
        if let Err(e) = self.store.register_worker(&worker).await {
            // The pool was disbanded meanwhile: don't leave an orphan queue behind.
            let _ = self.queues.delete_queue(&queue).await;
            return Err(e);
        }
        info!(pool = %pool, worker = %worker.worker_id, capacity, "worker registered");
        self.emit(|| Change::new(Topic::Worker, pool, &worker.worker_id, "registered"));
        self.capacity_appeared(pool).await?;
        Ok(RegisteredWorker { worker, token, queue_url })
    }

    pub async fn workers(&self, who: &Principal, pool: &PoolId) -> Result<Vec<Worker>> {
        require_admin(who)?;
        self.active_or_any_pool(pool).await?;
        self.store.list_workers(pool).await
    }

    /// Extends the worker's TTL, records its replicas, extends its allocs, and returns
    /// the listed allocs it should stop.
    pub async fn heartbeat(
        &self,
        who: &Principal,
        pool: &PoolId,
        worker: &WorkerId,
        req: HeartbeatRequest,
    ) -> Result<Vec<AllocId>> {
        require_worker(who, pool, worker)?;
        if req.datasets.len() > MAX_DATASETS_PER_HEARTBEAT {
            return Err(Error::invalid(
                "too_many_datasets",
                format!("at most {MAX_DATASETS_PER_HEARTBEAT} datasets per heartbeat"),
            ));
        }
        if req.allocs.len() > MAX_ALLOCS_PER_HEARTBEAT {
            return Err(Error::invalid(
                "too_many_allocs",
                format!("at most {MAX_ALLOCS_PER_HEARTBEAT} allocs per heartbeat"),
            ));
        }
        let mut datasets = req.datasets.iter().map(|d| validate::dataset(d)).collect::<Result<Vec<_>>>()?;
        datasets.sort();
        datasets.dedup();
        // A pool read at most once a second per process (as the scheduler reads it),
        // not one per heartbeat: a pool disbanded elsewhere is noticed a second late,
        // and its workers' queues are gone already.
        active(pool, self.fresh_pool(pool, false).await?)?;
        let now = self.now();
        let hb = Heartbeat {
            pool: pool.clone(),
            worker: worker.clone(),
            now,
            ttl: now + self.settings.worker_ttl_ms(),
            datasets,
            replica_ttl: now + self.settings.replica_ttl_ms(),
            allocs: req.allocs,
            alloc_ttl: now + self.settings.alloc_ttl_ms(),
        };
        let cancelled = self.store.heartbeat(&hb).await?;
        debug!(pool = %pool, worker = %worker, cancelled = cancelled.len(), "heartbeat");
        Ok(cancelled)
    }

    /// Long-polls the worker's queue. Messages are deleted once handed out: if the
    /// worker dies before running one, its alloc's TTL runs out and the eval is retried.
    pub async fn poll(
        &self,
        who: &Principal,
        pool: &PoolId,
        worker: &WorkerId,
        wait: Duration,
        max: usize,
    ) -> Result<Vec<AllocMessage>> {
        require_worker(who, pool, worker)?;
        if max == 0 || max > MAX_POLL_BATCH {
            return Err(Error::invalid("invalid_max", format!("max must be between 1 and {MAX_POLL_BATCH}")));
        }
        if wait > MAX_POLL_WAIT {
            return Err(Error::invalid(
                "invalid_wait",
                format!("wait must be at most {} seconds", MAX_POLL_WAIT.as_secs()),
            ));
        }
        // The queue answers first; only when it is gone do we read why (pool disbanded,
        // worker removed), so a poll costs no record reads on the hot path.
        let queue = self.worker_queue(pool, worker);
        let got = match self.queues.receive(&queue, max, wait, Duration::from_secs(30)).await {
            Ok(got) => got,
            Err(Error::QueueGone(_)) => {
                self.active_pool(pool).await?;
                return Err(match self.store.get_worker(pool, worker).await? {
                    None => Error::not_found(format!("worker {worker}")),
                    Some(_) => Error::Expired(worker.to_string()),
                });
            }
            Err(e) => return Err(e),
        };
        crate::fault!("poll.after_receive");
        let mut out = Vec::with_capacity(got.len());
        let mut receipts = Vec::with_capacity(got.len());
        for m in got {
            receipts.push(m.receipt);
            match serde_json::from_str::<AllocMessage>(&m.body) {
                Ok(a) => out.push(a),
                Err(e) => warn!(queue = %queue, error = %e, "dropping malformed alloc message"),
            }
        }
        // Don't hand out work that was cancelled or released meanwhile (an alloc whose
        // lease ran out before its worker polled has been retried elsewhere: running
        // it would run the job twice at once). Checked before the delete: if the read
        // fails (a throttled key), the poll fails and the messages are made visible
        // again at once for the worker's next poll, rather than deleted and lost.
        let ids: Vec<AllocId> = out.iter().map(|a| a.alloc_id.clone()).collect();
        let live: std::collections::HashSet<AllocId> = if ids.is_empty() {
            Default::default()
        } else {
            match self.store.get_allocs(pool, &ids).await {
                Ok(allocs) => {
                    allocs.into_iter().filter(|a| a.state == AllocState::Live && !a.stop).map(|a| a.alloc_id).collect()
                }
                Err(e) => {
                    let back: Vec<(String, Duration)> = receipts.into_iter().map(|r| (r, Duration::ZERO)).collect();
                    if let Err(v) = self.queues.change_visibility(&queue, &back, false).await {
                        debug!(queue = %queue, error = %v, "messages come back after their visibility timeout");
                    }
                    return Err(e);
                }
            }
        };
        self.queues.delete(&queue, &receipts).await?;
        out.retain(|a| {
            let keep = live.contains(&a.alloc_id);
            if !keep {
                debug!(alloc = %a.alloc_id, "skipping alloc no longer live");
            }
            keep
        });
        Ok(out)
    }

    // ---- evals

    pub async fn submit_eval(&self, who: &Principal, pool: &PoolId, new: NewEval) -> Result<SubmitOutcome> {
        require_admin(who)?;
        if let Some(key) = &new.idempotency_key {
            if let Some(eval) = self.store.find_eval_by_key(pool, key).await? {
                return same_submission(eval, &new);
            }
        }
        // Kept to compare with an eval that claims the key first (a race); only with a key.
        let asked = new.idempotency_key.is_some().then(|| new.clone());
        let now = self.now();
        let eval =
            Eval::queued(pool.clone(), new.size, new.dataset, new.payload, new.priority, new.idempotency_key, now);
        match self.enqueue(&eval).await? {
            None => {
                debug!(pool = %pool, eval = %eval.eval_id, size = eval.size, "eval queued");
                Ok(SubmitOutcome { eval, created: true })
            }
            Some(existing) => match &asked {
                Some(asked) => same_submission(existing, asked),
                None => Ok(SubmitOutcome { eval: existing, created: false }),
            },
        }
    }

    /// Writes a new eval with its first message in its pool's queue; the existing eval
    /// instead if its idempotency key or (a pipeline step's) id is taken. Message first
    /// (see service/mod.rs): if the insert never happens, the scheduler drops the
    /// orphan message, and the caller was never told "accepted".
    pub(crate) async fn enqueue(&self, eval: &Eval) -> Result<Option<Eval>> {
        let pool = &eval.pool_id;
        let msg = EvalMessage::of(eval);
        let body = serde_json::to_string(&msg).map_err(|e| Error::backend("encode eval message", e))?;
        // No pool read first: the queue and the insert's own check say if it is gone.
        let inserted = match self.store.insert_eval_with_message(eval, &self.pool_queue(pool), &body).await {
            Some(done) => done,
            None => match self.queues.send(&self.pool_queue(pool), &[body]).await {
                Ok(()) => {
                    crate::fault!("submit.after_send");
                    self.store.insert_eval(eval).await
                }
                Err(e) => Err(e),
            },
        };
        match inserted {
            Ok(None) => {
                crate::metrics::submitted(pool);
                self.emit(|| Change::eval(eval));
                Ok(None)
            }
            Err(Error::QueueGone(_)) => {
                self.active_pool(pool).await?;
                Err(Error::Disbanded(pool.to_string()))
            }
            other => other,
        }
    }

    pub async fn eval(&self, who: &Principal, pool: &PoolId, eval: &EvalId) -> Result<Eval> {
        require_admin(who)?;
        self.store.get_eval(pool, eval).await?.ok_or_else(|| Error::not_found(format!("eval {eval}")))
    }

    pub async fn evals(
        &self,
        who: &Principal,
        pool: &PoolId,
        status: Option<EvalStatus>,
        limit: usize,
    ) -> Result<Vec<Eval>> {
        require_admin(who)?;
        self.active_or_any_pool(pool).await?;
        self.store.list_evals(pool, status, limit.clamp(1, 10_000)).await
    }

    /// Cancels a queued or placed eval. A placed eval's alloc is flagged to stop; the
    /// worker learns it from its next heartbeat, and the capacity comes back when the
    /// worker reports or the alloc's TTL runs out.
    pub async fn cancel_eval(&self, who: &Principal, pool: &PoolId, eval: &EvalId) -> Result<CancelOutcome> {
        require_admin(who)?;
        let e = self.store.get_eval(pool, eval).await?.ok_or_else(|| Error::not_found(format!("eval {eval}")))?;
        let out = self.cancel_loop(e, "cancelled by request").await?;
        if let CancelOutcome::Cancelled(e) = &out {
            self.step_eval_finished(e).await;
        }
        Ok(out)
    }

    /// Cancels an eval of a disbanded pool (for the releaser's sweep).
    pub(crate) async fn cancel_unfinished(&self, e: Eval) -> Result<()> {
        self.cancel_loop(e, "pool disbanded").await.map(|_| ())
    }

    pub(super) async fn cancel_loop(&self, mut e: Eval, reason: &str) -> Result<CancelOutcome> {
        for attempt in 0..16 {
            if e.status.is_terminal() {
                return Ok(CancelOutcome::AlreadyFinished(e));
            }
            let expected = e.version;
            let mut next = e.clone();
            next.status = EvalStatus::Cancelled;
            next.version += 1;
            next.reason = Some(reason.to_owned());
            next.updated_at = self.now();
            next.purge_at = self.purge_at(&next);
            let res = match (&e.status, &e.alloc_id) {
                (EvalStatus::Placed, Some(alloc)) => self.store.cancel_placed(&next, expected, alloc).await,
                _ => self.store.update_eval(&next, expected).await,
            };
            match res {
                Ok(()) => {
                    info!(pool = %e.pool_id, eval = %e.eval_id, "eval cancelled");
                    crate::metrics::finished(&e.pool_id, EvalStatus::Cancelled);
                    self.emit(|| Change::eval(&next));
                    return Ok(CancelOutcome::Cancelled(next));
                }
                Err(Error::Conflict(_)) => {
                    super::backoff::pause(attempt).await;
                    e = self
                        .store
                        .get_eval(&e.pool_id, &e.eval_id)
                        .await?
                        .ok_or_else(|| Error::not_found(format!("eval {}", e.eval_id)))?;
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::Conflict(format!("eval {} kept changing; try again", e.eval_id)))
    }

    // ---- allocs

    /// Completes (or fails) an alloc on behalf of its worker. Doing it twice is harmless.
    pub async fn finish_alloc(
        &self,
        who: &Principal,
        pool: &PoolId,
        alloc: &AllocId,
        finish: Finish,
    ) -> Result<(Finished, Option<Eval>)> {
        let a = self.store.get_alloc(pool, alloc).await?.ok_or_else(|| Error::not_found(format!("alloc {alloc}")))?;
        require_worker(who, pool, &a.worker_id)?;
        let eval_id = a.eval_id.clone();
        match self.finish(a, &finish).await? {
            (done, Some(eval)) => Ok((done, Some(eval))),
            (done, None) => Ok((done, self.store.get_eval(pool, &eval_id).await?)),
        }
    }
}

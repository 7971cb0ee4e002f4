//! The scheduler: receive a batch of eval messages from a pool's queue, place each
//! with one atomic `Store::place`, deliver the allocs to the workers' queues, and
//! delete the messages. One candidate read per batch, kept up to date locally; a lost
//! claim re-reads that one worker and moves on to the next candidate.
//!
//! Messages are matched to evals by attempt number (see service/mod.rs):
//! - eval waiting with the same attempt → place it;
//! - eval finished, placed for that attempt, or already on a later attempt → stale, delete;
//! - eval on an earlier attempt, or not written yet → a re-queue is mid-way; look again soon.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Lineup;
use crate::error::{Error, Result};
use crate::id::{AllocId, EvalId, WorkerId};
use crate::model::*;
use crate::placement::{self, Candidate};

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Messages per receive (SQS allows 10).
    pub batch: usize,
    /// Long-poll wait per receive.
    pub wait: Duration,
    /// How long a received message stays hidden while this pass works on it.
    pub visibility: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { batch: 10, wait: Duration::from_secs(5), visibility: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassSummary {
    pub received: usize,
    pub placed: usize,
    pub blocked: usize,
    /// Stale or duplicate messages deleted.
    pub dropped: usize,
    /// Messages put back for a moment because their eval is mid-way through a change.
    pub deferred: usize,
    /// The pool's queue is gone (disbanded).
    pub pool_gone: bool,
}

impl PassSummary {
    pub fn add(&mut self, o: &PassSummary) {
        self.received += o.received;
        self.placed += o.placed;
        self.blocked += o.blocked;
        self.dropped += o.dropped;
        self.deferred += o.deferred;
    }
}

/// How long a message for an eval that is mid-way through a change stays hidden.
const DEFER: Duration = Duration::from_secs(1);
/// A message whose eval never appears is dropped after this many receives (its
/// submit failed before the eval was written, so nobody was told it was accepted).
const ORPHAN_RECEIVES: u32 = 10;
/// Claims tried per eval before it counts as blocked for this pass.
const MAX_CLAIMS: usize = 8;

impl Lineup {
    /// One receive-and-place pass over `pool`'s queue.
    pub async fn schedule_pass(&self, pool: &Pool, opts: &SchedulerOptions) -> Result<PassSummary> {
        let mut sum = PassSummary::default();
        let queue = self.pool_queue(&pool.pool_id);
        let msgs = match self.queues.receive(&queue, opts.batch, opts.wait, opts.visibility).await {
            Ok(m) => m,
            Err(Error::QueueGone(_)) => {
                sum.pool_gone = true;
                return Ok(sum);
            }
            Err(e) => return Err(e),
        };
        sum.received = msgs.len();
        if msgs.is_empty() {
            return Ok(sum);
        }

        let mut to_delete: Vec<String> = Vec::new();
        let mut work: Vec<(EvalMessage, crate::backend::Received)> = Vec::new();
        for m in msgs {
            match serde_json::from_str::<EvalMessage>(&m.body) {
                Ok(em) => work.push((em, m)),
                Err(e) => {
                    warn!(queue = %queue, error = %e, "dropping malformed eval message");
                    to_delete.push(m.receipt);
                    sum.dropped += 1;
                }
            }
        }
        let ids: Vec<EvalId> = work.iter().map(|(em, _)| em.eval_id.clone()).collect();
        let evals: HashMap<EvalId, Eval> =
            self.store.get_evals(&pool.pool_id, &ids).await?.into_iter().map(|e| (e.eval_id.clone(), e)).collect();

        // One candidate read and one replica read for the whole batch.
        let now = self.now();
        // Every worker with any room, not just those fitting the smallest eval: the
        // blocked reason then names the largest free capacity.
        let mut cands: Vec<Candidate> = self
            .store
            .candidates(&pool.pool_id, 1, now)
            .await?
            .into_iter()
            .map(|w| Candidate { worker_id: w.worker_id, free: w.free, ttl: w.ttl })
            .collect();
        let datasets: Vec<String> = {
            let set: HashSet<&String> = evals.values().filter_map(|e| e.dataset.as_ref()).collect();
            set.into_iter().cloned().collect()
        };
        let mut holders: HashMap<String, HashSet<WorkerId>> = HashMap::new();
        if !datasets.is_empty() {
            for r in self.store.replicas(&pool.pool_id, &datasets, now).await? {
                holders.entry(r.dataset).or_default().insert(r.worker_id);
            }
        }
        let no_holders = HashSet::new();

        let mut deliveries: HashMap<WorkerId, Vec<String>> = HashMap::new();
        let mut deferred: Vec<(String, Duration)> = Vec::new();
        let mut parked: Vec<(String, Duration)> = Vec::new();
        for (msg, rcv) in work {
            let Some(eval) = evals.get(&msg.eval_id) else {
                if rcv.receive_count >= ORPHAN_RECEIVES {
                    debug!(eval = %msg.eval_id, "dropping message of an eval that was never written");
                    to_delete.push(rcv.receipt);
                    sum.dropped += 1;
                } else {
                    deferred.push((rcv.receipt, DEFER));
                    sum.deferred += 1;
                }
                continue;
            };
            if eval.status.is_terminal()
                || eval.attempt > msg.attempt
                || (eval.attempt == msg.attempt && !eval.status.is_waiting())
            {
                to_delete.push(rcv.receipt);
                sum.dropped += 1;
                continue;
            }
            if eval.attempt < msg.attempt {
                deferred.push((rcv.receipt, DEFER));
                sum.deferred += 1;
                continue;
            }

            let holders = eval.dataset.as_ref().and_then(|d| holders.get(d)).unwrap_or(&no_holders);
            match self.place_one(pool, eval, holders, &mut cands).await? {
                Placed::Yes(alloc) => {
                    let m = AllocMessage {
                        alloc_id: alloc.alloc_id.clone(),
                        eval_id: eval.eval_id.clone(),
                        pool_id: pool.pool_id.clone(),
                        worker_id: alloc.worker_id.clone(),
                        size: eval.size,
                        dataset: eval.dataset.clone(),
                        payload: eval.payload.clone(),
                        attempt: eval.attempt,
                    };
                    let body = serde_json::to_string(&m).map_err(|e| Error::backend("encode alloc message", e))?;
                    deliveries.entry(alloc.worker_id).or_default().push(body);
                    to_delete.push(rcv.receipt);
                    sum.placed += 1;
                }
                Placed::Stale => {
                    to_delete.push(rcv.receipt);
                    sum.dropped += 1;
                }
                Placed::Blocked(why) => {
                    self.note_blocked(eval, &why).await;
                    parked.push((rcv.receipt, self.backoff(rcv.receive_count)));
                    sum.blocked += 1;
                }
            }
        }

        // Deliver before deleting: a crash here leaves a placed eval whose message is
        // redelivered and dropped as stale; an undelivered alloc expires and retries.
        for (worker, bodies) in deliveries {
            match self.queues.send(&self.worker_queue(&pool.pool_id, &worker), &bodies).await {
                Ok(()) => {}
                // The worker was removed meanwhile; its allocs are released by the releaser.
                Err(Error::QueueGone(q)) => warn!(queue = %q, "worker queue gone; allocs will expire and retry"),
                Err(e) => return Err(e),
            }
        }
        if !to_delete.is_empty() {
            self.queues.delete(&queue, &to_delete).await?;
        }
        if !deferred.is_empty() {
            self.queues.change_visibility(&queue, &deferred, false).await?;
        }
        if !parked.is_empty() {
            self.queues.change_visibility(&queue, &parked, true).await?;
        }
        if sum.placed > 0 || sum.blocked > 0 {
            info!(pool = %pool.pool_id, placed = sum.placed, blocked = sum.blocked, dropped = sum.dropped, "schedule pass");
        }
        Ok(sum)
    }

    async fn place_one(
        &self,
        pool: &Pool,
        eval: &Eval,
        holders: &HashSet<WorkerId>,
        cands: &mut Vec<Candidate>,
    ) -> Result<Placed> {
        for _ in 0..MAX_CLAIMS {
            let now = self.now();
            let order = match placement::rank(eval.size, holders, cands, pool.strategy, now) {
                Ok(order) => order,
                Err(blocked) => return Ok(Placed::Blocked(blocked.to_string())),
            };
            let idx = order[0];
            let worker_id = cands[idx].worker_id.clone();
            let alloc = Alloc {
                pool_id: pool.pool_id.clone(),
                alloc_id: AllocId::generate(),
                worker_id: worker_id.clone(),
                eval_id: eval.eval_id.clone(),
                size: eval.size,
                attempt: eval.attempt,
                ttl: now + self.settings.alloc_ttl_ms(),
                state: AllocState::Live,
                stop: false,
                created_at: now,
            };
            let mut next = eval.clone();
            next.status = EvalStatus::Placed;
            next.version += 1;
            next.worker_id = Some(worker_id.clone());
            next.alloc_id = Some(alloc.alloc_id.clone());
            next.reason = None;
            next.updated_at = now;
            match self.store.place(&alloc, &next, eval.version, now).await {
                Ok(()) => {
                    cands[idx].free -= eval.size;
                    debug!(pool = %pool.pool_id, eval = %eval.eval_id, worker = %worker_id, alloc = %alloc.alloc_id, "placed");
                    return Ok(Placed::Yes(alloc));
                }
                Err(Error::Conflict(why)) => {
                    debug!(eval = %eval.eval_id, worker = %worker_id, %why, "claim lost; re-reading");
                    // Either the eval changed (cancelled, placed by another scheduler)...
                    match self.store.get_eval(&pool.pool_id, &eval.eval_id).await? {
                        Some(e) if e.version == eval.version => {}
                        _ => return Ok(Placed::Stale),
                    }
                    // ...or the worker did: refresh our view of it and rank again.
                    match self.store.get_worker(&pool.pool_id, &worker_id).await? {
                        Some(w) => {
                            cands[idx].free = w.free;
                            cands[idx].ttl = w.ttl;
                        }
                        None => {
                            cands.swap_remove(idx);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Placed::Blocked("blocked: capacity claims kept losing races; will retry".into()))
    }

    /// Records why an eval waits, only when the reason changed (no write per retry).
    async fn note_blocked(&self, eval: &Eval, why: &str) {
        if eval.reason.as_deref() == Some(why) {
            return;
        }
        let mut next = eval.clone();
        next.reason = Some(why.to_owned());
        next.version += 1;
        next.updated_at = self.now();
        if let Err(e) = self.store.update_eval(&next, eval.version).await {
            debug!(eval = %eval.eval_id, error = %e, "could not record blocked reason");
        }
    }

    /// Exponential backoff for a blocked eval: 1 s, 2 s, 4 s … up to
    /// `BLOCKED_BACKOFF_MAX`. New capacity wakes parked messages early where it can.
    fn backoff(&self, receive_count: u32) -> Duration {
        let exp = receive_count.saturating_sub(1).min(16);
        Duration::from_secs((1u64 << exp).min(self.settings.blocked_backoff_max))
    }
}

enum Placed {
    Yes(Alloc),
    /// The eval changed under us (cancelled or placed elsewhere): drop the message.
    Stale,
    Blocked(String),
}

/// What `schedule_until` did, summed over its pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleSummary {
    pub pools: usize,
    pub passes: usize,
    pub received: usize,
    pub placed: usize,
    pub blocked: usize,
    pub dropped: usize,
    pub deferred: usize,
    pub errors: usize,
}

impl Lineup {
    /// Schedules every active pool concurrently until `deadline` (the schedule Lambda
    /// passes its own deadline minus a safety margin). No pass starts a long poll that
    /// would outlast the deadline. Overlapping calls are safe.
    pub async fn schedule_until(
        &self,
        deadline: tokio::time::Instant,
        opts: &SchedulerOptions,
    ) -> Result<ScheduleSummary> {
        let pools: Vec<Pool> =
            self.store.list_pools().await?.into_iter().filter(|p| p.status == PoolStatus::Active).collect();
        let mut sum = ScheduleSummary { pools: pools.len(), ..Default::default() };
        let mut tasks = tokio::task::JoinSet::new();
        for pool in pools {
            let (l, opts) = (self.clone(), opts.clone());
            tasks.spawn(async move {
                let mut s = ScheduleSummary::default();
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left < Duration::from_secs(1) {
                        break;
                    }
                    let wait = opts.wait.min(left - Duration::from_secs(1));
                    let o = SchedulerOptions { wait, ..opts.clone() };
                    match l.schedule_pass(&pool, &o).await {
                        Ok(p) => {
                            s.passes += 1;
                            s.received += p.received;
                            s.placed += p.placed;
                            s.blocked += p.blocked;
                            s.dropped += p.dropped;
                            s.deferred += p.deferred;
                            if p.pool_gone {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(pool = %pool.pool_id, error = %e, "schedule pass failed");
                            s.errors += 1;
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
                s
            });
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(s) => {
                    sum.passes += s.passes;
                    sum.received += s.received;
                    sum.placed += s.placed;
                    sum.blocked += s.blocked;
                    sum.dropped += s.dropped;
                    sum.deferred += s.deferred;
                    sum.errors += s.errors;
                }
                Err(e) => {
                    warn!(error = %e, "scheduler task failed");
                    sum.errors += 1;
                }
            }
        }
        Ok(sum)
    }
}

//! The scheduler: receive a batch of eval messages from a pool's queue, choose a
//! worker for each against one candidate read (kept up to date locally), commit the
//! batch's claims (`Store::place_many`: each atomic on its own), deliver the allocs to
//! the workers' queues, and delete the messages. The embedded store does claims,
//! deliveries and deletes in one transaction (`Store::place_and_deliver`). A lost claim
//! re-reads that one worker and moves on to the next candidate (`place_one`).
//!
//! Messages are matched to evals by attempt number (see service/mod.rs):
//! - eval waiting with the same attempt → place it;
//! - eval finished, placed for that attempt, or already on a later attempt → stale, delete;
//! - eval on an earlier attempt, or not written yet → a re-queue is mid-way; look again soon.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Lineup;
use crate::backend::Placement;
use crate::error::{Error, Result};
use crate::id::{AllocId, EvalId, PoolId, WorkerId};
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
    /// How often a `PoolScheduler` looks again at the blocked evals it holds (one
    /// candidate read each time; placement only when something could fit).
    pub recheck: Duration,
    /// At most this many blocked evals held in memory per pool; beyond it, blocked
    /// messages are parked back in the queue with a backoff.
    pub hold_max: usize,
    /// How often `schedule_until` looks for pools created since it started.
    pub pool_refresh: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            batch: 10,
            wait: Duration::from_secs(5),
            visibility: Duration::from_secs(30),
            recheck: Duration::from_secs(5),
            hold_max: 1_000,
            pool_refresh: Duration::from_secs(5),
        }
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
/// How stale the counts in a blocked eval's reason may get (see `note_blocked`).
const REASON_REFRESH_MS: i64 = 10_000;
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
        let Processed { sum: mut s, blocked, .. } = self.process(pool, msgs, None).await?;
        // No one holds these: park them in the queue with a backoff.
        let parked: Vec<(String, Duration)> =
            blocked.into_iter().map(|(m, _)| (m.receipt, self.backoff(m.receive_count))).collect();
        if !parked.is_empty() {
            self.queues.change_visibility(&queue, &parked, true).await?;
        }
        s.received = sum.received;
        Ok(s)
    }

    /// Places what `msgs` ask for. Returns the summary and the messages whose evals
    /// are blocked (still hidden; the caller parks or holds them). `cands`, when given,
    /// is a fresh candidate read to use instead of reading again.
    async fn process(
        &self,
        pool: &Pool,
        msgs: Vec<crate::backend::Received>,
        cands: Option<Vec<Candidate>>,
    ) -> Result<Processed> {
        let mut sum = PassSummary::default();
        let queue = self.pool_queue(&pool.pool_id);
        let mut blocked_out = Vec::new();
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
        let mut cands: Vec<Candidate> = match cands {
            Some(c) => c,
            None => self.candidate_view(pool).await?,
        };
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

        let mut deferred: Vec<(String, Duration)> = Vec::new();
        // First choose for every eval against the local view (each choice takes its
        // size off the view, so the batch does not overfill a worker), then commit all
        // the claims at once; a lost claim falls back to `place_one`.
        let mut plan: Vec<Placement> = Vec::new();
        let mut planned: Vec<(usize, crate::backend::Received, &Eval, &HashSet<WorkerId>)> = Vec::new();
        let mut blocked: Vec<(&Eval, String, crate::backend::Received)> = Vec::new();
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
            match placement::best(eval.size, holders, &cands, pool.strategy, now) {
                Ok(idx) => {
                    cands[idx].free -= eval.size;
                    let (alloc, next) = self.placement_of(pool, eval, &cands[idx].worker_id, now);
                    plan.push(Placement {
                        deliver_to: self.worker_queue(&pool.pool_id, &alloc.worker_id),
                        body: alloc_message(pool, eval, &alloc)?,
                        receipt: rcv.receipt.clone(),
                        alloc,
                        eval: next,
                        expected_version: eval.version,
                    });
                    planned.push((idx, rcv, eval, holders));
                }
                Err(why) => blocked.push((eval, why.to_string(), rcv)),
            }
        }

        let mut deliveries: HashMap<WorkerId, Vec<String>> = HashMap::new();
        // Where the store holds the queues too, delivery and the pool message's delete
        // commit with the placement; otherwise they follow it below.
        let (results, delivered) = if plan.is_empty() {
            (Vec::new(), false)
        } else {
            match self.store.place_and_deliver(&queue, &plan, now).await {
                Some(res) => (res?, true),
                None => {
                    let items: Vec<(Alloc, Eval, u64)> =
                        plan.iter().map(|p| (p.alloc.clone(), p.eval.clone(), p.expected_version)).collect();
                    (self.store.place_many(&items, now).await?, false)
                }
            }
        };
        crate::fault!("place.after_claim");
        for ((Placement { alloc, body, .. }, (idx, rcv, eval, holders)), result) in
            plan.into_iter().zip(planned).zip(results)
        {
            let placed = match result {
                Ok(()) if delivered => {
                    debug!(pool = %pool.pool_id, eval = %eval.eval_id, worker = %alloc.worker_id, alloc = %alloc.alloc_id, "placed and delivered");
                    sum.placed += 1;
                    continue;
                }
                Ok(()) => {
                    deliveries.entry(alloc.worker_id.clone()).or_default().push(body);
                    to_delete.push(rcv.receipt);
                    sum.placed += 1;
                    debug!(pool = %pool.pool_id, eval = %eval.eval_id, worker = %alloc.worker_id, alloc = %alloc.alloc_id, "placed");
                    continue;
                }
                Err(Error::Conflict(why)) => {
                    debug!(eval = %eval.eval_id, worker = %alloc.worker_id, %why, "claim lost; trying one by one");
                    cands[idx].free += eval.size;
                    self.place_one(pool, eval, holders, &mut cands).await?
                }
                Err(e) => {
                    // Not a lost race: leave it for a moment and carry on with the rest.
                    warn!(eval = %eval.eval_id, error = %e, "placement failed; will retry");
                    cands[idx].free += eval.size;
                    deferred.push((rcv.receipt, DEFER));
                    sum.deferred += 1;
                    continue;
                }
            };
            match placed {
                Placed::Yes(alloc) => {
                    let body = alloc_message(pool, eval, &alloc)?;
                    deliveries.entry(alloc.worker_id).or_default().push(body);
                    to_delete.push(rcv.receipt);
                    sum.placed += 1;
                }
                Placed::Stale => {
                    to_delete.push(rcv.receipt);
                    sum.dropped += 1;
                }
                Placed::Blocked(why) => blocked.push((eval, why, rcv)),
            }
        }
        sum.blocked = blocked.len();
        self.note_blocked(&blocked).await;
        blocked_out.extend(blocked.into_iter().map(|(eval, _, rcv)| (rcv, eval.size)));

        // Deliver before deleting: a crash here leaves a placed eval whose message is
        // redelivered and dropped as stale; an undelivered alloc expires and retries.
        let batches: Vec<(String, Vec<String>)> = deliveries
            .into_iter()
            .map(|(worker, bodies)| (self.worker_queue(&pool.pool_id, &worker), bodies))
            .collect();
        let sent = if batches.is_empty() { Vec::new() } else { self.queues.send_many(&batches).await };
        for ((q, _), r) in batches.iter().zip(sent) {
            match r {
                Ok(()) => {}
                // The worker was removed meanwhile; its allocs are released by the releaser.
                Err(Error::QueueGone(_)) => warn!(queue = %q, "worker queue gone; allocs will expire and retry"),
                Err(e) => return Err(e),
            }
        }
        crate::fault!("deliver.after_send");
        if !to_delete.is_empty() {
            self.queues.delete(&queue, &to_delete).await?;
        }
        if !deferred.is_empty() {
            self.queues.change_visibility(&queue, &deferred, false).await?;
        }
        if sum.placed > 0 {
            info!(pool = %pool.pool_id, placed = sum.placed, blocked = sum.blocked, dropped = sum.dropped, "schedule pass");
        }
        let now = self.now();
        let free_left = cands.iter().filter(|c| c.ttl > now).map(|c| u64::from(c.free)).sum();
        Ok(Processed { sum, blocked: blocked_out, free_left })
    }

    /// Every live worker with any room: one read for a whole batch. (Not only those
    /// fitting the smallest eval: the blocked reason then names the largest free.)
    async fn candidate_view(&self, pool: &Pool) -> Result<Vec<Candidate>> {
        let now = self.now();
        Ok(self
            .store
            .candidates(&pool.pool_id, 1, now)
            .await?
            .into_iter()
            .map(|w| Candidate { worker_id: w.worker_id, free: w.free, ttl: w.ttl })
            .collect())
    }

    async fn place_one(
        &self,
        pool: &Pool,
        eval: &Eval,
        holders: &HashSet<WorkerId>,
        cands: &mut [Candidate],
    ) -> Result<Placed> {
        for _ in 0..MAX_CLAIMS {
            let now = self.now();
            let idx = match placement::best(eval.size, holders, cands, pool.strategy, now) {
                Ok(idx) => idx,
                Err(blocked) => return Ok(Placed::Blocked(blocked.to_string())),
            };
            let worker_id = cands[idx].worker_id.clone();
            let (alloc, next) = self.placement_of(pool, eval, &worker_id, now);
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
                        // Gone: out of the running. (Not removed: callers hold indices.)
                        None => {
                            cands[idx].free = 0;
                            cands[idx].ttl = 0;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Placed::Blocked("blocked: capacity claims kept losing races; will retry".into()))
    }

    /// The alloc placing `eval` on `worker`, and the eval as it will then be.
    pub fn placement_of(&self, pool: &Pool, eval: &Eval, worker: &WorkerId, now: Millis) -> (Alloc, Eval) {
        let alloc = Alloc {
            pool_id: pool.pool_id.clone(),
            alloc_id: AllocId::generate(),
            worker_id: worker.clone(),
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
        next.worker_id = Some(worker.clone());
        next.alloc_id = Some(alloc.alloc_id.clone());
        next.reason = None;
        next.updated_at = now;
        (alloc, next)
    }

    /// Records why evals wait, in one batch, only where the reason changed: at once when
    /// its kind changed (the part before `;`), else at most every `REASON_REFRESH` (the
    /// counts after `;` move with every worker that comes or goes, and a write per eval
    /// per change would cost more than the scheduling). A lost race means the eval
    /// moved on; its reason no longer matters.
    async fn note_blocked(&self, blocked: &[(&Eval, String, crate::backend::Received)]) {
        let now = self.now();
        let kind = |r: &str| r.split(';').next().unwrap_or_default().to_owned();
        let changed: Vec<(Eval, u64)> = blocked
            .iter()
            .filter(|(eval, why, _)| match eval.reason.as_deref() {
                None => true,
                Some(old) if old == why => false,
                Some(old) => kind(old) != kind(why) || eval.updated_at + REASON_REFRESH_MS <= now,
            })
            .map(|(eval, why, _)| {
                let mut next = (*eval).clone();
                next.reason = Some(why.clone());
                next.version += 1;
                next.updated_at = now;
                (next, eval.version)
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        if let Err(e) = self.store.update_evals(&changed).await {
            debug!(error = %e, "could not record blocked reasons");
        }
    }

    /// Exponential backoff for a blocked eval: 1 s, 2 s, 4 s … up to
    /// `BLOCKED_BACKOFF_MAX`. New capacity wakes parked messages early where it can.
    fn backoff(&self, receive_count: u32) -> Duration {
        let exp = receive_count.saturating_sub(1).min(16);
        Duration::from_secs((1u64 << exp).min(self.settings.blocked_backoff_max))
    }
}

/// The message that tells a worker to run `eval` as `alloc`.
pub fn alloc_message(pool: &Pool, eval: &Eval, alloc: &Alloc) -> Result<String> {
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
    serde_json::to_string(&m).map_err(|e| Error::backend("encode alloc message", e))
}

/// What `process` did.
struct Processed {
    sum: PassSummary,
    /// Messages of blocked evals, still hidden, with their evals' sizes.
    blocked: Vec<(crate::backend::Received, u32)>,
    /// Free capacity left on live workers, as far as this pass saw.
    free_left: u64,
}

/// A blocked eval's message, held (hidden) by a `PoolScheduler` instead of cycling
/// through the queue.
struct Held {
    rcv: crate::backend::Received,
    size: u32,
    hidden_until: tokio::time::Instant,
}

/// The eval a held message is for.
fn held_eval(rcv: &crate::backend::Received) -> Option<String> {
    serde_json::from_str::<EvalMessage>(&rcv.body).ok().map(|m| m.eval_id.to_string())
}

/// The shortest time between two looks at the held evals prompted by new capacity.
const RECHECK_MIN: Duration = Duration::from_millis(20);

/// How long a held message stays hidden; extended at half-time, made visible at
/// `release_held`. It bounds recovery: if the scheduler holding it dies (`kill -9`, a
/// Lambda timeout), the message is visible again within `HOLD`, and the next scheduler
/// places it within one long poll of that (docs/ARCHITECTURE.md, "Recovery"). The price
/// is one visibility change per 10 held messages every `HOLD / 2`.
pub const HOLD: Duration = Duration::from_secs(30);

/// A scheduler loop's state for one pool. Blocked evals are held here rather than
/// re-received over and over: a stable pool with blocked evals costs one candidate read
/// and one (long-poll) receive per `recheck`, however many are blocked, and when
/// capacity appears they are placed within one `recheck`.
pub struct PoolScheduler {
    lineup: Lineup,
    pool: Pool,
    opts: SchedulerOptions,
    held: Vec<Held>,
    /// Free capacity left after the last pass (while evals are held): no more messages
    /// are taken from the queue than could possibly be placed, so that a scarce pool
    /// does not cycle thousands of blocked messages per worker that appears.
    free_left: u64,
    next_check: tokio::time::Instant,
    last_check: tokio::time::Instant,
    /// `Lineup::capacity_epoch` when the held evals were last looked at.
    seen_epoch: u64,
    /// The pool's queue is gone (disbanded): the loop should end.
    pub gone: bool,
}

impl PoolScheduler {
    pub fn new(lineup: Lineup, pool: Pool, opts: SchedulerOptions) -> Self {
        let seen_epoch = lineup.capacity_epoch();
        PoolScheduler {
            lineup,
            pool,
            opts,
            held: Vec::new(),
            free_left: 0,
            next_check: tokio::time::Instant::now(),
            last_check: tokio::time::Instant::now(),
            seen_epoch,
            gone: false,
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn queue(&self) -> String {
        self.lineup.pool_queue(&self.pool.pool_id)
    }

    /// One step: look at the held evals if due, then one receive-and-place pass whose
    /// long poll lasts at most `wait_cap`.
    pub async fn step(&mut self, wait_cap: Duration) -> Result<PassSummary> {
        let mut sum = PassSummary::default();
        let now = tokio::time::Instant::now();
        let epoch = self.lineup.capacity_epoch();
        // New capacity brings the next look forward, but not closer than `RECHECK_MIN`
        // to the last one: a thousand workers registering is a few looks, not a thousand.
        let nudged = epoch != self.seen_epoch && now >= self.last_check + RECHECK_MIN;
        if !self.held.is_empty() && (now >= self.next_check || nudged) {
            self.last_check = now;
            self.next_check = now + self.opts.recheck;
            self.seen_epoch = epoch;
            let cands = self.lineup.candidate_view(&self.pool).await?;
            let t = self.lineup.now();
            let live = cands.iter().filter(|c| c.ttl > t);
            let max_free = live.clone().map(|c| c.free).max().unwrap_or(0);
            self.free_left = live.map(|c| u64::from(c.free)).sum();
            // Try, oldest first, only the held evals the free capacity could take: when
            // one worker appears among thousands of blocked evals, the work is the size of
            // the worker, not of the backlog.
            let mut budget = self.free_left;
            let (try_now, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held).into_iter().partition(|h| {
                let fits = h.size <= max_free && u64::from(h.size) <= budget;
                if fits {
                    budget -= u64::from(h.size);
                }
                fits
            });
            self.held = keep;
            if !try_now.is_empty() {
                let until: HashMap<String, tokio::time::Instant> =
                    try_now.iter().map(|h| (h.rcv.receipt.clone(), h.hidden_until)).collect();
                let msgs = try_now.into_iter().map(|h| h.rcv).collect();
                let p = self.lineup.process(&self.pool, msgs, Some(cands)).await?;
                sum.add(&p.sum);
                self.free_left = p.free_left;
                for (rcv, size) in p.blocked {
                    let hidden_until = until.get(&rcv.receipt).copied().unwrap_or(now);
                    self.held.push(Held { rcv, size, hidden_until });
                }
            }
            self.extend_held().await?;
        }
        // While evals are blocked, take no more from the queue than the free capacity
        // could place (every eval needs at least 1); with none, wait for capacity.
        let mut batch = self.opts.batch;
        if !self.held.is_empty() {
            if self.free_left == 0 {
                let notified = self.lineup.capacity_notify.notified();
                let cap = tokio::time::Instant::now() + wait_cap;
                if self.lineup.capacity_epoch() == self.seen_epoch {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(self.next_check.min(cap)) => {}
                    }
                } else {
                    // Capacity came since the last look; the next may start soon.
                    tokio::time::sleep_until((self.last_check + RECHECK_MIN).min(self.next_check).min(cap)).await;
                }
                return Ok(sum);
            }
            batch = batch.min(usize::try_from(self.free_left).unwrap_or(usize::MAX));
        }
        let mut wait = self.opts.wait.min(wait_cap);
        if !self.held.is_empty() {
            wait = wait.min(self.next_check.saturating_duration_since(tokio::time::Instant::now()));
        }
        let queue = self.queue();
        let msgs = match self.lineup.queues.receive(&queue, batch, wait, self.opts.visibility).await {
            Ok(m) => m,
            Err(Error::QueueGone(_)) => {
                self.gone = true;
                self.held.clear();
                sum.pool_gone = true;
                return Ok(sum);
            }
            Err(e) => return Err(e),
        };
        if msgs.is_empty() {
            return Ok(sum);
        }
        let received = msgs.len();
        let p = self.lineup.process(&self.pool, msgs, None).await?;
        sum.add(&p.sum);
        sum.received += received;
        self.free_left = p.free_left;
        if !p.blocked.is_empty() {
            let room_left = self.opts.hold_max.saturating_sub(self.held.len());
            let mut hide = Vec::new();
            let mut park = Vec::new();
            let mut duplicates = Vec::new();
            let hidden_until = tokio::time::Instant::now() + HOLD;
            let mut held_evals: HashSet<String> = self.held.iter().filter_map(|h| held_eval(&h.rcv)).collect();
            for (i, (rcv, size)) in p.blocked.into_iter().enumerate() {
                // A second message for an eval already held (a send retried after its
                // response was lost, SQS delivering twice), earlier or in this very
                // batch: the one held is enough.
                let eval = held_eval(&rcv);
                if eval.as_ref().is_some_and(|e| held_evals.contains(e)) {
                    duplicates.push(rcv.receipt);
                } else if i < room_left {
                    held_evals.extend(eval);
                    hide.push((rcv.receipt.clone(), HOLD));
                    self.held.push(Held { rcv, size, hidden_until });
                } else {
                    park.push((rcv.receipt.clone(), self.lineup.backoff(rcv.receive_count)));
                }
            }
            self.lineup.queues.change_visibility(&queue, &hide, false).await?;
            self.lineup.queues.change_visibility(&queue, &park, true).await?;
            if !duplicates.is_empty() {
                debug!(pool = %self.pool.pool_id, n = duplicates.len(), "duplicate messages of held evals deleted");
                self.lineup.queues.delete(&queue, &duplicates).await?;
            }
            if self.next_check <= tokio::time::Instant::now() {
                self.next_check = tokio::time::Instant::now() + self.opts.recheck;
            }
        }
        Ok(sum)
    }

    /// Keeps held messages hidden: those past half their hold get another.
    async fn extend_held(&mut self) -> Result<()> {
        let now = tokio::time::Instant::now();
        let mut changes = Vec::new();
        for h in self.held.iter_mut().filter(|h| h.hidden_until < now + HOLD / 2) {
            changes.push((h.rcv.receipt.clone(), HOLD));
            h.hidden_until = now + HOLD;
        }
        if !changes.is_empty() {
            self.lineup.queues.change_visibility(&self.queue(), &changes, false).await?;
        }
        Ok(())
    }

    /// Hands the held messages back to the queue (visible now), for whoever runs next.
    pub async fn release_held(&mut self) -> Result<()> {
        let changes: Vec<(String, Duration)> =
            std::mem::take(&mut self.held).into_iter().map(|h| (h.rcv.receipt, Duration::ZERO)).collect();
        match self.lineup.queues.change_visibility(&self.queue(), &changes, false).await {
            Ok(()) | Err(Error::QueueGone(_)) => Ok(()),
            Err(e) => Err(e),
        }
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

impl ScheduleSummary {
    fn add_pass(&mut self, p: &PassSummary) {
        self.passes += 1;
        self.received += p.received;
        self.placed += p.placed;
        self.blocked += p.blocked;
        self.dropped += p.dropped;
        self.deferred += p.deferred;
    }

    fn merge(&mut self, o: &ScheduleSummary) {
        self.passes += o.passes;
        self.received += o.received;
        self.placed += o.placed;
        self.blocked += o.blocked;
        self.dropped += o.dropped;
        self.deferred += o.deferred;
        self.errors += o.errors;
    }
}

impl Lineup {
    /// Schedules every active pool concurrently until `deadline` (the schedule Lambda
    /// passes its own deadline minus a safety margin). No pass starts a long poll that
    /// would outlast the deadline. Overlapping calls are safe.
    ///
    /// The pool list is read again every `opts.pool_refresh`: one invocation runs for
    /// most of a minute, and a pool created meanwhile should not wait for the next.
    pub async fn schedule_until(
        &self,
        deadline: tokio::time::Instant,
        opts: &SchedulerOptions,
    ) -> Result<ScheduleSummary> {
        let mut sum = ScheduleSummary::default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut started: HashSet<PoolId> = HashSet::new();
        let mut first = true;
        loop {
            match self.store.list_pools().await {
                Ok(pools) => {
                    for pool in pools.into_iter().filter(|p| p.status == PoolStatus::Active) {
                        if started.insert(pool.pool_id.clone()) {
                            sum.pools += 1;
                            tasks.spawn(self.clone().schedule_pool_until(pool, deadline, opts.clone()));
                        }
                    }
                }
                // Nothing started yet: the invocation fails and says why.
                Err(e) if first => return Err(e),
                Err(e) => {
                    warn!(error = %e, "listing pools failed; the running pools go on");
                    sum.errors += 1;
                }
            }
            first = false;
            let refresh = tokio::time::Instant::now() + opts.pool_refresh;
            if refresh + Duration::from_secs(1) >= deadline {
                break;
            }
            // Collect the pools that are done (gone, disbanded) while waiting.
            loop {
                tokio::select! {
                    Some(r) = tasks.join_next(), if !tasks.is_empty() => merge_task(&mut sum, r),
                    _ = tokio::time::sleep_until(refresh) => break,
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            merge_task(&mut sum, r);
        }
        Ok(sum)
    }

    async fn schedule_pool_until(
        self,
        pool: Pool,
        deadline: tokio::time::Instant,
        opts: SchedulerOptions,
    ) -> ScheduleSummary {
        let mut s = ScheduleSummary::default();
        let mut ps = PoolScheduler::new(self, pool, opts);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_secs(1) || ps.gone {
                break;
            }
            match ps.step(left - Duration::from_secs(1)).await {
                Ok(p) => s.add_pass(&p),
                Err(e) => {
                    warn!(pool = %ps.pool.pool_id, error = %e, "schedule pass failed");
                    s.errors += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        // The next invocation picks up what this one held.
        if let Err(e) = ps.release_held().await {
            warn!(pool = %ps.pool.pool_id, error = %e, "handing back held evals");
            s.errors += 1;
        }
        s
    }
}

fn merge_task(sum: &mut ScheduleSummary, r: std::result::Result<ScheduleSummary, tokio::task::JoinError>) {
    match r {
        Ok(s) => sum.merge(&s),
        Err(e) => {
            warn!(error = %e, "scheduler task failed");
            sum.errors += 1;
        }
    }
}

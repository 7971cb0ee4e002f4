//! The scheduler, in Nomad's shape: the plan is a value.
//!
//! One pass: receive a batch of eval messages from a pool's queue, then
//! - `intake.rs`: match each message to its eval (place it, drop it as stale, or look
//!   again soon);
//! - `crate::plan`: pure — the batch and a snapshot of the pool (one candidate read, one
//!   replica read, the pool's limit) in, a `Plan` of placements and typed `Blocked`
//!   reasons out, highest priority first;
//! - `commit.rs`: the backend applies the plan, each placement atomic on its own
//!   (`Store::place_many`; the embedded store with delivery, `place_and_deliver`); a
//!   lost claim re-reads that one worker and tries the next; allocs are delivered to the
//!   workers' queues and the messages deleted;
//! - `hold.rs`: a scheduler loop's blocked evals, held hidden in memory and looked at
//!   again when capacity may have appeared (`PoolScheduler`);
//! - `driver.rs`: one loop per active pool until a deadline (`schedule_until`), shared by
//!   `lineup dev` and the `schedule` function.
//!
//! Messages are matched to evals by attempt number (see service/mod.rs):
//! - eval waiting with the same attempt → place it;
//! - eval finished, placed for that attempt, or already on a later attempt → stale, delete;
//! - eval on an earlier attempt, or not written yet → a re-queue is mid-way; look again soon.

mod commit;
mod driver;
mod hold;
mod intake;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tracing::debug;

pub use driver::ScheduleSummary;
pub(crate) use hold::HeldSet;
pub use hold::{PoolScheduler, HOLD};

use super::Lineup;
use crate::backend::{Claim, Received};
use crate::error::{Error, Result};
use crate::id::{AllocId, WorkerId};
use crate::model::*;
use crate::placement::Candidate;
use crate::plan::{self, Blocked, Snapshot};

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Messages per pass, at most: one plan, one commit, one delivery per worker. (SQS
    /// hands out 10 a receive; its `Queues` takes more only while the queue is deep.)
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
    /// Only the pools of this shard (`schedule_until`): concurrent invocations split
    /// the pools between them. `None`: every pool.
    pub shard: Option<Shard>,
    /// At most this many loops on one pool (`schedule_until`): a pool's own loop
    /// starts another each time a pass comes back full (a backlog one loop does not
    /// keep up with), and an extra loop stops at its first empty receive. Idle pools
    /// never have more than one. Loops of one pool race only through the store's
    /// conditional writes, like overlapping invocations, and share the pool's held
    /// (blocked) evals; each plans what it received by priority, so across loops the
    /// order is by priority per pass, not overall.
    pub loops: usize,
}

/// One of `count` disjoint parts of the pools: a pool belongs to the shard its id
/// hashes to (FNV-1a, the same in every process and release), so every pool is
/// scheduled by exactly one of `count` invocations, whichever pools exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `index` of `count`; `None` unless `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Shard> {
        (index < count).then_some(Shard { index, count })
    }

    pub fn owns(&self, pool: &crate::id::PoolId) -> bool {
        crate::id::bucket(pool.as_str(), self.count) == self.index
    }
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            batch: 100,
            wait: Duration::from_secs(5),
            visibility: Duration::from_secs(30),
            recheck: Duration::from_secs(5),
            hold_max: 1_000,
            pool_refresh: Duration::from_secs(5),
            shard: None,
            loops: 1,
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
/// How old the scheduler's copy of a pool may be (see `current_pool`).
const POOL_FRESH: Duration = Duration::from_secs(1);
/// How stale the counts in a blocked eval's reason may get (see `note_blocked`).
const REASON_REFRESH_MS: i64 = 10_000;

/// A blocked eval's message, still hidden, for the caller to park or hold.
struct Waiting {
    rcv: Received,
    size: u32,
    priority: Priority,
}

/// What `process` did.
struct Processed {
    sum: PassSummary,
    blocked: Vec<Waiting>,
    /// Free capacity left on live workers, as far as this pass saw.
    free_left: u64,
}

impl Lineup {
    /// One receive-and-place pass over `pool`'s queue.
    pub async fn schedule_pass(&self, pool: &Pool, opts: &SchedulerOptions) -> Result<PassSummary> {
        let mut sum = PassSummary::default();
        let queue = self.pool_queue(&pool.pool_id);
        let msgs = match self.queues.receive(&queue, opts.batch, opts.wait, opts.visibility).await {
            Ok(m) => m,
            Err(Error::QueueGone(_)) => {
                self.forget_gone(&pool.pool_id);
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
            blocked.into_iter().map(|w| (w.rcv.receipt, self.backoff(w.rcv.receive_count))).collect();
        if !parked.is_empty() {
            self.queues.change_visibility(&queue, &parked, true).await?;
        }
        s.received = sum.received;
        Ok(s)
    }

    /// Places what `msgs` ask for: intake, plan, commit. Returns the summary and the
    /// messages whose evals are blocked (still hidden; the caller parks or holds them).
    /// `cands`, when given, is a fresh candidate read to use instead of reading again.
    async fn process(&self, pool: &Pool, msgs: Vec<Received>, cands: Option<Vec<Candidate>>) -> Result<Processed> {
        let started = std::time::Instant::now();
        let queue = self.pool_queue(&pool.pool_id);
        let pool = &self.current_pool(pool, false).await?;
        let intake = self.intake(&queue, pool, msgs).await?;
        let evals: Vec<&Eval> = intake.work.iter().map(|(e, _)| e).collect();
        let mut snap = self.snapshot(pool, cands, &evals).await?;
        let plan = plan::plan(&evals, &mut snap);
        let done = self.commit(pool, &queue, intake, plan, snap).await;
        crate::metrics::pass(&pool.pool_id, started.elapsed().as_secs_f64());
        done
    }

    /// The pool as of at most `POOL_FRESH` ago, or read now (`reread`). Its limits change
    /// (a new cap, a health report) and a capped pool's plan starts from its running
    /// count; a stale copy costs at most lost claims (each claim carries the limits
    /// version it was planned against, and a lost claim reads the pool again), so one
    /// read a second per pool will do rather than one per pass.
    pub(super) async fn current_pool(&self, pool: &Pool, reread: bool) -> Result<Pool> {
        Ok(self.fresh_pool(&pool.pool_id, reread).await?.unwrap_or_else(|| pool.clone()))
    }

    /// `current_pool` by id: `None` if there is no such pool.
    pub(in crate::service) async fn fresh_pool(&self, pool: &crate::id::PoolId, reread: bool) -> Result<Option<Pool>> {
        let now = tokio::time::Instant::now();
        if !reread {
            let cached = self.pool_reads.lock().ok().and_then(|m| m.get(pool).cloned());
            if let Some((p, _)) = cached.filter(|(_, at)| now.duration_since(*at) < POOL_FRESH) {
                return Ok(Some(p));
            }
        }
        let p = self.store.get_pool(pool).await?;
        if let (Some(p), Ok(mut m)) = (&p, self.pool_reads.lock()) {
            m.insert(pool.clone(), (p.clone(), now));
        }
        Ok(p)
    }

    /// The pool's held set in this process, shared by its schedulers (`hold.rs`).
    pub(super) fn held_set(&self, pool: &crate::id::PoolId) -> HeldSet {
        let mut m = self.held_sets.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(pool.clone()).or_default().clone()
    }

    /// How many of the pool's blocked evals this process's schedulers hold.
    pub fn held_count(&self, pool: &crate::id::PoolId) -> usize {
        let m = self.held_sets.lock().unwrap_or_else(|e| e.into_inner());
        m.get(pool).map_or(0, |h| h.set.lock().map_or(0, |s| s.len()))
    }

    /// Whether this process keeps a held set for `pool` (one exists from its first
    /// scheduler until its queue is found gone).
    pub fn holds_pool(&self, pool: &crate::id::PoolId) -> bool {
        self.held_sets.lock().unwrap_or_else(|e| e.into_inner()).contains_key(pool)
    }

    /// Drops what this process keeps of a pool whose queue is gone (disbanded): its
    /// held set and its cached record. A long-lived `lineup dev` or `schedule`
    /// instance sees pools come and go; without this, every one it ever scheduled
    /// stayed in its maps.
    pub(crate) fn forget_gone(&self, pool: &crate::id::PoolId) {
        self.held_sets.lock().unwrap_or_else(|e| e.into_inner()).remove(pool);
        self.forget_pool(pool);
    }

    /// Forgets this process's copy of `pool`: its limits were just changed here.
    pub(crate) fn forget_pool(&self, pool: &crate::id::PoolId) {
        if let Ok(mut m) = self.pool_reads.lock() {
            m.remove(pool);
        }
    }

    /// What the planner needs of the pool, in one candidate read and one replica read
    /// for the whole batch.
    async fn snapshot(&self, pool: &Pool, cands: Option<Vec<Candidate>>, evals: &[&Eval]) -> Result<Snapshot> {
        let now = self.now();
        let candidates = match cands {
            Some(c) => c,
            None => self.candidate_view(pool).await?,
        };
        let datasets: Vec<String> = {
            let set: HashSet<&String> = evals.iter().filter_map(|e| e.dataset.as_ref()).collect();
            set.into_iter().cloned().collect()
        };
        let mut holders: HashMap<String, HashSet<WorkerId>> = HashMap::new();
        if !datasets.is_empty() {
            for r in self.store.replicas(&pool.pool_id, &datasets, now).await? {
                holders.entry(r.dataset).or_default().insert(r.worker_id);
            }
        }
        let pulled = crate::health::worst(&self.pulled_health(pool).await);
        let (limit, claim) = limits_of(pool, now, pulled.as_ref());
        Ok(Snapshot { strategy: pool.strategy, now, candidates, holders, limit, claim })
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

    /// The alloc placing `eval` on `worker` (counted against the pool's cap when the
    /// claim has one), and the eval as it will then be.
    pub fn placement_of(
        &self,
        pool: &Pool,
        eval: &Eval,
        worker: &WorkerId,
        claim: Claim,
        now: Millis,
    ) -> (Alloc, Eval) {
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
            counted: claim.limit.is_some(),
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
    async fn note_blocked(&self, blocked: &[(&Eval, &Blocked)]) {
        let now = self.now();
        let kind = |r: &str| r.split(';').next().unwrap_or_default().to_owned();
        let changed: Vec<(Eval, u64)> = blocked
            .iter()
            .filter_map(|(eval, why)| {
                let why = why.to_string();
                let write = match eval.reason.as_deref() {
                    None => true,
                    Some(old) if old == why => false,
                    Some(old) => kind(old) != kind(&why) || eval.updated_at + REASON_REFRESH_MS <= now,
                };
                write.then(|| {
                    let mut next = (*eval).clone();
                    next.reason = Some(why);
                    next.version += 1;
                    next.updated_at = now;
                    (next, eval.version)
                })
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

/// The planner's limit for `pool` at `now`, and the claim the store checks: the limits'
/// version always, the limit itself only for a pool with a cap (health alone stops a
/// pool without one in the plan, not in the store: it throttles, it does not count).
pub(super) fn limits_of(pool: &Pool, now: Millis, pulled: Option<&(u8, String)>) -> (Option<plan::Limit>, Claim) {
    let limit = pool.limits.limit(now, pulled);
    let counted = pool.limits.max_running.and(limit.as_ref().map(|l| l.limit));
    (limit, Claim { version: pool.limits.version, limit: counted })
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
        step: eval.step.clone(),
        state: eval.continuation.as_ref().and_then(|c| c.state.clone()),
    };
    serde_json::to_string(&m).map_err(|e| Error::backend("encode alloc message", e))
}

#[cfg(test)]
mod shard_tests {
    use super::Shard;
    use crate::id::PoolId;

    #[test]
    fn every_pool_has_exactly_one_shard_and_shards_are_even() {
        let pools: Vec<PoolId> = (0..4_000).map(|_| PoolId::generate()).collect();
        let n = 8;
        let mut per = vec![0usize; n as usize];
        for p in &pools {
            let owners: Vec<u32> = (0..n).filter(|k| Shard::new(*k, n).unwrap().owns(p)).collect();
            assert_eq!(owners.len(), 1, "{p}");
            per[owners[0] as usize] += 1;
        }
        // 500 expected each; ids made one after another must not bunch up.
        assert!(per.iter().all(|c| (400..600).contains(c)), "{per:?}");
        assert!(Shard::new(8, 8).is_none() && Shard::new(0, 0).is_none());
    }
}

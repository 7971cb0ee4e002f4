//! Hold: a scheduler loop's blocked evals, kept hidden in memory instead of cycling
//! through the queue, ordered by priority, and looked at again when capacity may have
//! appeared.

use std::collections::HashMap;
use std::time::Duration;

use tracing::debug;

use super::{PassSummary, SchedulerOptions, Waiting};
use crate::backend::Received;
use crate::error::{Error, Result};
use crate::model::{EvalMessage, Pool, Priority};
use crate::plan;
use crate::service::Lineup;

/// The shortest time between two looks at the held evals prompted by new capacity.
const RECHECK_MIN: Duration = Duration::from_millis(20);

/// How long a held message stays hidden; extended at half-time, made visible at
/// `release_held`. It bounds recovery: if the scheduler holding it dies (`kill -9`, a
/// Lambda timeout), the message is visible again within `HOLD`, and the next scheduler
/// places it within one long poll of that (docs/ARCHITECTURE.md, "Recovery"). The price
/// is one visibility change per 10 held messages every `HOLD / 2`.
pub const HOLD: Duration = Duration::from_secs(30);

/// A pool's held messages in this process, shared by every `PoolScheduler` of the
/// pool here (`lineup dev` runs two loops per pool): so each of them weighs all the
/// held evals by priority, not only the ones it happened to receive.
pub(crate) type HeldSet = std::sync::Arc<Shared>;

#[derive(Default)]
pub(crate) struct Shared {
    /// Highest priority first; equal priorities in order of submission. Locked only
    /// between awaits.
    pub(super) set: std::sync::Mutex<Vec<Held>>,
    /// One recheck at a time: a second loop's recheck, while the first one's claims are
    /// in flight, would see their slots still free and take the next evals in line,
    /// whose claims could then win a capped pool's last slots from higher ones.
    recheck: tokio::sync::Mutex<()>,
}

/// A blocked eval's message, held (hidden) by a `PoolScheduler`.
pub(crate) struct Held {
    rcv: Received,
    size: u32,
    priority: Priority,
    /// Its eval's id, which starts with the time of submission: arrival order.
    eval: String,
    hidden_until: tokio::time::Instant,
}

impl Held {
    fn new(w: Waiting, hidden_until: tokio::time::Instant) -> Held {
        let eval = held_eval(&w.rcv).unwrap_or_default();
        Held { rcv: w.rcv, size: w.size, priority: w.priority, eval, hidden_until }
    }
}

/// The eval a held message is for.
fn held_eval(rcv: &Received) -> Option<String> {
    serde_json::from_str::<EvalMessage>(&rcv.body).ok().map(|m| m.eval_id.to_string())
}

/// A scheduler loop's state for one pool. Blocked evals are held here rather than
/// re-received over and over: a stable pool with blocked evals costs one candidate read
/// and two receives per `recheck`, however many are blocked, and when capacity appears
/// they are placed within one `recheck`, highest priority first.
pub struct PoolScheduler {
    lineup: Lineup,
    pub(super) pool: Pool,
    opts: SchedulerOptions,
    held: HeldSet,
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
        let held = lineup.held_set(&pool.pool_id);
        PoolScheduler {
            lineup,
            pool,
            opts,
            held,
            free_left: 0,
            next_check: tokio::time::Instant::now(),
            last_check: tokio::time::Instant::now(),
            seen_epoch,
            gone: false,
        }
    }

    /// Held evals of the pool in this process (shared with its other schedulers).
    pub fn held(&self) -> usize {
        self.set().len()
    }

    fn set(&self) -> std::sync::MutexGuard<'_, Vec<Held>> {
        // A panic elsewhere while holding the lock leaves a consistent Vec: go on with it.
        self.held.set.lock().unwrap_or_else(|e| e.into_inner())
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
        if self.held() > 0 && (now >= self.next_check || nudged) {
            self.last_check = now;
            self.next_check = now + self.opts.recheck;
            self.seen_epoch = epoch;
            self.recheck(&mut sum).await?;
            if self.gone {
                return Ok(sum);
            }
        }
        // While evals are blocked, take no more from the queue than the free capacity
        // could place (every eval needs at least 1); with none, wait for capacity.
        let mut batch = self.opts.batch;
        if self.held() > 0 {
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
        if self.held() > 0 {
            wait = wait.min(self.next_check.saturating_duration_since(tokio::time::Instant::now()));
        }
        let Some(msgs) = self.receive(batch, wait).await? else {
            sum.pool_gone = true;
            return Ok(sum);
        };
        if msgs.is_empty() {
            return Ok(sum);
        }
        sum.received += msgs.len();
        let p = self.lineup.process(&self.pool, msgs, None).await?;
        sum.add(&p.sum);
        self.free_left = p.free_left;
        self.hold(p.blocked).await?;
        Ok(sum)
    }

    /// `None` when the pool's queue is gone (disbanded): the loop ends.
    async fn receive(&mut self, batch: usize, wait: Duration) -> Result<Option<Vec<Received>>> {
        match self.lineup.queues.receive(&self.queue(), batch, wait, self.opts.visibility).await {
            Ok(m) => Ok(Some(m)),
            Err(Error::QueueGone(_)) => {
                self.gone = true;
                self.set().clear();
                self.lineup.forget_gone(&self.pool.pool_id);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Looks at the held evals again. Messages that arrived meanwhile join them first
    /// (one receive, no wait), so a higher-priority eval submitted behind a held backlog
    /// is weighed with it rather than after it. Then, highest priority first, only the
    /// held evals the free capacity could take are tried: when one worker appears among
    /// thousands of blocked evals, the work is the size of the worker, not the backlog.
    async fn recheck(&mut self, sum: &mut PassSummary) -> Result<()> {
        let shared = self.held.clone();
        // Another loop of the pool is looking at the same set just now: leave it to it.
        let Ok(_turn) = shared.recheck.try_lock() else { return Ok(()) };
        // With free capacity left, the loop's long poll has been taking new messages in
        // all along; only a full pool's loop stops receiving, so only then look here.
        let room = self.opts.hold_max.saturating_sub(self.held()).min(self.opts.batch);
        if room > 0 && self.free_left == 0 {
            let Some(new) = self.receive(room, Duration::ZERO).await? else {
                sum.pool_gone = true;
                return Ok(());
            };
            sum.received += new.len();
            let until = tokio::time::Instant::now() + self.opts.visibility;
            let waiting = new
                .into_iter()
                .map(|rcv| {
                    let hint = serde_json::from_str::<EvalMessage>(&rcv.body).ok();
                    let (size, priority) = hint.map(|m| (m.size.max(1), m.priority)).unwrap_or((1, Priority::DEFAULT));
                    Waiting { rcv, size, priority }
                })
                .collect();
            self.admit(waiting, until).await?;
        }
        let mut cands = self.lineup.candidate_view(&self.pool).await?;
        let t = self.lineup.now();
        let live = cands.iter().filter(|c| c.ttl > t);
        let max_free = live.clone().map(|c| c.free).max().unwrap_or(0);
        self.free_left = live.map(|c| u64::from(c.free)).sum();
        // A capped pool takes no more evals than it has slots, however much is free. Its
        // limit is read only when something could fit: an idle pool's look stays one
        // candidate read.
        let mut slots = u64::MAX;
        if self.set().iter().any(|h| h.size <= max_free) {
            let pool = self.lineup.current_pool(&self.pool, false).await?;
            let snap = self.lineup.snapshot(&pool, Some(cands), &[]).await?;
            self.free_left = plan::room(&snap);
            slots = snap.limit.as_ref().map_or(u64::MAX, |l| u64::from(l.slots()));
            cands = snap.candidates;
        }
        let mut budget = self.free_left;
        let try_now: Vec<Held> = {
            let mut set = self.set();
            let (try_now, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut *set).into_iter().partition(|h| {
                let fits = slots > 0 && h.size <= max_free && u64::from(h.size) <= budget;
                if fits {
                    budget -= u64::from(h.size);
                    slots -= 1;
                }
                fits
            });
            *set = keep;
            try_now
        };
        if !try_now.is_empty() {
            let until: HashMap<String, tokio::time::Instant> =
                try_now.iter().map(|h| (h.rcv.receipt.clone(), h.hidden_until)).collect();
            let msgs = try_now.into_iter().map(|h| h.rcv).collect();
            let p = self.lineup.process(&self.pool, msgs, Some(cands)).await?;
            sum.add(&p.sum);
            self.free_left = p.free_left;
            let now = tokio::time::Instant::now();
            for w in p.blocked {
                let hidden_until = until.get(&w.rcv.receipt).copied().unwrap_or(now);
                self.insert(Held::new(w, hidden_until));
            }
        }
        self.extend_held().await
    }

    /// Adds `h` in order: by priority, then submission.
    fn insert(&mut self, h: Held) {
        insert(&mut self.set(), h);
    }

    /// Takes newly received messages into the held set, each hidden until `until`;
    /// a second message for an eval already held (and still hidden) is deleted. A held
    /// entry whose hiding has lapsed is dead (its holder stopped extending it): the new
    /// message replaces it.
    async fn admit(&mut self, new: Vec<Waiting>, until: tokio::time::Instant) -> Result<()> {
        let now = tokio::time::Instant::now();
        let duplicates: Vec<String> = {
            let mut set = self.set();
            let mut duplicates = Vec::new();
            for w in new {
                let h = Held::new(w, until);
                let existing = (!h.eval.is_empty()).then(|| set.iter().position(|x| x.eval == h.eval)).flatten();
                match existing {
                    Some(i) if set[i].hidden_until > now => duplicates.push(h.rcv.receipt),
                    Some(i) => {
                        set.remove(i);
                        insert(&mut set, h);
                    }
                    None => insert(&mut set, h),
                }
            }
            duplicates
        };
        if !duplicates.is_empty() {
            debug!(pool = %self.pool.pool_id, n = duplicates.len(), "duplicate messages of held evals deleted");
            self.lineup.queues.delete(&self.queue(), &duplicates).await?;
        }
        Ok(())
    }

    /// Holds a pass's blocked evals, as many as `hold_max` allows; the rest are parked
    /// in the queue with a backoff.
    async fn hold(&mut self, blocked: Vec<Waiting>) -> Result<()> {
        if blocked.is_empty() {
            return Ok(());
        }
        let room_left = self.opts.hold_max.saturating_sub(self.held());
        let mut take = blocked;
        let park = take.split_off(room_left.min(take.len()));
        let hide: Vec<(String, Duration)> = take.iter().map(|w| (w.rcv.receipt.clone(), HOLD)).collect();
        let park: Vec<(String, Duration)> =
            park.into_iter().map(|w| (w.rcv.receipt, self.lineup.backoff(w.rcv.receive_count))).collect();
        let queue = self.queue();
        if !hide.is_empty() {
            self.lineup.queues.change_visibility(&queue, &hide, false).await?;
        }
        if !park.is_empty() {
            self.lineup.queues.change_visibility(&queue, &park, true).await?;
        }
        self.admit(take, tokio::time::Instant::now() + HOLD).await?;
        if self.next_check <= tokio::time::Instant::now() {
            self.next_check = tokio::time::Instant::now() + self.opts.recheck;
        }
        Ok(())
    }

    /// Keeps held messages hidden: those past half their hold get another.
    async fn extend_held(&mut self) -> Result<()> {
        let now = tokio::time::Instant::now();
        let mut changes = Vec::new();
        for h in self.set().iter_mut().filter(|h| h.hidden_until < now + HOLD / 2) {
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
            std::mem::take(&mut *self.set()).into_iter().map(|h| (h.rcv.receipt, Duration::ZERO)).collect();
        // An idle pool's loop holds nothing: no call (on the embedded store one would
        // still be a transaction).
        if changes.is_empty() {
            return Ok(());
        }
        match self.lineup.queues.change_visibility(&self.queue(), &changes, false).await {
            Ok(()) | Err(Error::QueueGone(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Inserts `h` in order: by priority, then submission.
fn insert(set: &mut Vec<Held>, h: Held) {
    let at = set.partition_point(|x| x.priority > h.priority || (x.priority == h.priority && x.eval <= h.eval));
    set.insert(at, h);
}

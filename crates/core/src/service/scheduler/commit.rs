//! Commit: the backend applies a plan, each placement atomically and conditioned on
//! what the snapshot assumed (the worker's free capacity and TTL, the eval's version);
//! then the allocs are delivered and the pool messages deleted. A lost claim is not an
//! error: that eval falls back to `place_one`, which re-reads the one worker it lost
//! and tries the next.

use std::collections::HashMap;

use tracing::{debug, info, warn};

use super::intake::Intake;
use super::{alloc_message, Processed, Waiting, DEFER};
use crate::backend::{Placement, Received};
use crate::error::{Error, Result};
use crate::events::{Change, Topic};
use crate::id::WorkerId;
use crate::model::*;
use crate::placement;
use crate::plan::{self, Blocked, Plan, Snapshot};
use crate::service::Lineup;

/// Claims tried per eval before it counts as blocked for this pass.
const MAX_CLAIMS: usize = 8;

enum Placed {
    Yes(Alloc),
    /// The eval changed under us (cancelled or placed elsewhere): drop the message.
    Stale,
    Blocked(Blocked),
}

impl Lineup {
    pub(super) async fn commit(
        &self,
        pool: &Pool,
        queue: &str,
        intake: Intake,
        plan: Plan,
        mut snap: Snapshot,
    ) -> Result<Processed> {
        let Intake { work, mut to_delete, mut deferred, mut sum } = intake;
        let now = snap.now;
        let mut items = Vec::with_capacity(plan.placements.len());
        for pl in &plan.placements {
            let (eval, rcv) = &work[pl.item];
            let (alloc, next) = self.placement_of(pool, eval, &snap.candidates[pl.worker].worker_id, snap.claim, now);
            items.push(Placement {
                deliver_to: self.worker_queue(&pool.pool_id, &alloc.worker_id),
                body: alloc_message(pool, eval, &alloc)?,
                receipt: rcv.receipt.clone(),
                alloc,
                eval: next,
                expected_version: eval.version,
            });
        }
        // Where the store holds the queues too, delivery and the pool message's delete
        // commit with the placement; otherwise they follow it below.
        let (results, delivered) = if items.is_empty() {
            (Vec::new(), false)
        } else {
            match self.store.place_and_deliver(queue, &items, snap.claim, now).await {
                Some(res) => (res?, true),
                None => {
                    let claims: Vec<(Alloc, Eval, u64)> =
                        items.iter().map(|p| (p.alloc.clone(), p.eval.clone(), p.expected_version)).collect();
                    (self.store.place_many(&claims, snap.claim, now).await?, false)
                }
            }
        };
        crate::fault!("place.after_claim");

        let mut blocked = plan.blocked;
        let mut waited = Vec::new();
        let mut deliveries: HashMap<WorkerId, Vec<String>> = HashMap::new();
        for ((Placement { alloc, body, eval: next, .. }, pl), result) in
            items.into_iter().zip(plan.placements).zip(results)
        {
            let (eval, rcv) = &work[pl.item];
            let placed = match result {
                Ok(()) => {
                    debug!(pool = %pool.pool_id, eval = %eval.eval_id, worker = %alloc.worker_id, alloc = %alloc.alloc_id, delivered, "placed");
                    waited.push((eval.attempt == 1).then(|| now - eval.created_at));
                    self.emit(|| Change::eval(&next));
                    self.emit(|| Change::alloc(&alloc, "live"));
                    if !delivered {
                        deliveries.entry(alloc.worker_id.clone()).or_default().push(body);
                        to_delete.push(rcv.receipt.clone());
                    }
                    sum.placed += 1;
                    continue;
                }
                Err(Error::Conflict(why)) => {
                    debug!(eval = %eval.eval_id, worker = %alloc.worker_id, %why, "claim lost; trying one by one");
                    unplan(&mut snap, pl.worker, eval.size);
                    self.place_one(pool, eval, &mut snap).await?
                }
                Err(e) => {
                    // Not a lost race: leave it for a moment and carry on with the rest.
                    warn!(eval = %eval.eval_id, error = %e, "placement failed; will retry");
                    unplan(&mut snap, pl.worker, eval.size);
                    deferred.push((rcv.receipt.clone(), DEFER));
                    sum.deferred += 1;
                    continue;
                }
            };
            match placed {
                Placed::Yes(alloc) => {
                    waited.push((eval.attempt == 1).then(|| now - eval.created_at));
                    self.emit(|| Change {
                        attempt: Some(alloc.attempt),
                        worker_id: Some(alloc.worker_id.clone()),
                        ..Change::new(Topic::Eval, &pool.pool_id, &eval.eval_id, EvalStatus::Placed.as_str())
                    });
                    self.emit(|| Change::alloc(&alloc, "live"));
                    deliveries.entry(alloc.worker_id.clone()).or_default().push(alloc_message(pool, eval, &alloc)?);
                    to_delete.push(rcv.receipt.clone());
                    sum.placed += 1;
                }
                Placed::Stale => {
                    to_delete.push(rcv.receipt.clone());
                    sum.dropped += 1;
                }
                Placed::Blocked(why) => blocked.push((pl.item, why)),
            }
        }
        crate::metrics::placed(&pool.pool_id, waited);
        sum.blocked = blocked.len();
        let noted: Vec<(&Eval, &Blocked)> = blocked.iter().map(|(i, why)| (&work[*i].0, why)).collect();
        self.note_blocked(&noted).await;

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
            self.queues.delete(queue, &to_delete).await?;
        }
        if !deferred.is_empty() {
            self.queues.change_visibility(queue, &deferred, false).await?;
        }
        if sum.placed > 0 {
            info!(pool = %pool.pool_id, placed = sum.placed, blocked = sum.blocked, dropped = sum.dropped, "schedule pass");
        }
        let free_left = plan::room(&snap);
        let mut work: Vec<Option<(Eval, Received)>> = work.into_iter().map(Some).collect();
        let blocked = blocked
            .into_iter()
            .filter_map(|(i, _)| work[i].take())
            .map(|(eval, rcv)| Waiting { rcv, size: eval.size, priority: eval.priority })
            .collect();
        Ok(Processed { sum, blocked, free_left })
    }

    /// Places one eval claim by claim: after a lost claim, re-reads the eval (changed:
    /// stale) and that worker, and ranks again.
    async fn place_one(&self, pool: &Pool, eval: &Eval, snap: &mut Snapshot) -> Result<Placed> {
        let none = Default::default();
        let holders = eval.dataset.as_ref().and_then(|d| snap.holders.get(d)).unwrap_or(&none).clone();
        for _ in 0..MAX_CLAIMS {
            if let Some(l) = snap.limit.as_ref().filter(|l| l.running >= l.limit) {
                return Ok(Placed::Blocked(Blocked::Limit(l.clone())));
            }
            let now = self.now();
            let idx = match placement::best(eval.size, &holders, &snap.candidates, pool.strategy, now) {
                Ok(idx) => idx,
                Err(blocked) => return Ok(Placed::Blocked(blocked.into())),
            };
            let worker_id = snap.candidates[idx].worker_id.clone();
            let (alloc, next) = self.placement_of(pool, eval, &worker_id, snap.claim, now);
            match self.store.place(&alloc, &next, eval.version, snap.claim, now).await {
                Ok(()) => {
                    snap.candidates[idx].free -= eval.size;
                    if let Some(l) = snap.limit.as_mut() {
                        l.running += 1;
                    }
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
                    // ...or the pool's limits did (a new cap, another scheduler's placements
                    // filling it)...
                    let p = self.current_pool(pool, true).await?;
                    let pulled = crate::health::worst(&self.pulled_health(&p).await);
                    (snap.limit, snap.claim) = super::limits_of(&p, now, pulled.as_ref());
                    // ...or the worker did: refresh our view of it and rank again.
                    let c = &mut snap.candidates[idx];
                    match self.store.get_worker(&pool.pool_id, &worker_id).await? {
                        Some(w) => (c.free, c.ttl) = (w.free, w.ttl),
                        // Gone: out of the running. (Not removed: the plan holds indices.)
                        None => (c.free, c.ttl) = (0, 0),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Placed::Blocked(Blocked::Contended))
    }
}

/// Gives a placement that did not happen back to the snapshot.
fn unplan(snap: &mut Snapshot, worker: usize, size: u32) {
    snap.candidates[worker].free += size;
    if let Some(l) = snap.limit.as_mut() {
        l.running = l.running.saturating_sub(1);
    }
}

//! The one path by which an alloc gives its capacity back: a worker completes or fails
//! it, its TTL runs out, or its worker is removed. Each step re-reads, decides, and
//! commits one atomic `Store::release`; a lost race re-reads and decides again, and an
//! alloc already released is a harmless no-op (so two releasers never return capacity twice).

use tracing::{debug, info, warn};

use super::Lineup;
use crate::error::{Error, Result};
use crate::events::Change;
use crate::model::{Alloc, AllocState, Eval, EvalMessage, EvalStatus};
use crate::validate;

/// Why the alloc is ending.
#[derive(Debug, Clone)]
pub enum Finish {
    /// The worker ran it to the end.
    Complete { exit_code: i32, output: Option<String> },
    /// It failed, expired or lost its worker: retry the eval, or dead-letter it.
    Fail { reason: String },
    /// It finished for now: run the eval again once `after_ms` have passed, its next
    /// job getting `state`. Not a retry (`Continuation`).
    Continue { after_ms: crate::Millis, state: Option<serde_json::Value>, output: Option<String> },
}

/// What `finish` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Capacity returned; the eval is now in this status.
    Released(Option<EvalStatus>),
    /// Someone released it before: nothing changed.
    AlreadyReleased,
    /// Asked to expire it, but a heartbeat renewed the lease first: nothing changed.
    Renewed,
}

const MAX_TRIES: usize = 16;

impl Lineup {
    /// Releases `alloc` (as read by the caller) with `finish`. See the module doc.
    /// Returns what happened and, when it released, the eval as it now stands.
    pub async fn finish(&self, alloc: Alloc, finish: &Finish) -> Result<(Finished, Option<Eval>)> {
        self.finish_lease(alloc, finish, None).await
    }

    /// Releases `alloc` because its lease ran out at `now`: only if it is still expired
    /// when the release lands. A heartbeat that renewed it first wins (`Renewed`), and
    /// a heartbeat never renews an expired lease, so the eval is either still running
    /// on this alloc or retried, never both.
    pub async fn expire(&self, alloc: Alloc, reason: &str, now: crate::Millis) -> Result<(Finished, Option<Eval>)> {
        self.finish_lease(alloc, &Finish::Fail { reason: reason.to_owned() }, Some(now)).await
    }

    async fn finish_lease(
        &self,
        mut alloc: Alloc,
        finish: &Finish,
        expired_by: Option<crate::Millis>,
    ) -> Result<(Finished, Option<Eval>)> {
        if let (Finish::Complete { exit_code, output }, None) = (finish, expired_by) {
            if let Some(done) = self.complete_first(&alloc, *exit_code, output.as_deref()).await? {
                return Ok(done);
            }
        }
        for attempt in 0..MAX_TRIES as u32 {
            if alloc.state == AllocState::Released {
                return Ok((Finished::AlreadyReleased, None));
            }
            if expired_by.is_some_and(|by| alloc.ttl > by) {
                return Ok((Finished::Renewed, None));
            }
            let eval = self.store.get_eval(&alloc.pool_id, &alloc.eval_id).await?;
            let mut new_eval = self.decide(eval.as_ref(), &alloc, finish);

            // Re-queue before the write that makes the eval waiting (see service/mod.rs).
            if let Some(e) = new_eval.as_mut().filter(|e| e.status.is_waiting()) {
                let msg = EvalMessage::of(e);
                match self.send_eval_message(&alloc.pool_id, &msg).await {
                    Ok(()) => crate::fault!("finish.after_send"),
                    Err(Error::QueueGone(_)) => {
                        // The pool was disbanded: nothing will run it again.
                        e.status = EvalStatus::Cancelled;
                        e.attempt = alloc.attempt;
                        e.reason = Some("pool disbanded".into());
                    }
                    Err(err) => return Err(err),
                }
            }

            let expected = eval.as_ref().map(|e| e.version);
            let write = new_eval.as_ref().zip(expected);
            match self.store.release(&alloc, write, expired_by).await {
                Ok(()) => {
                    crate::fault!("finish.after_release");
                    self.released(&alloc, new_eval.as_ref()).await;
                    let status = new_eval.as_ref().map(|e| e.status);
                    return Ok((Finished::Released(status), new_eval.or(eval)));
                }
                Err(Error::Conflict(why)) => {
                    debug!(alloc = %alloc.alloc_id, %why, "release lost a race; re-reading");
                    super::backoff::pause(attempt).await;
                    match self.store.get_alloc(&alloc.pool_id, &alloc.alloc_id).await? {
                        Some(a) => alloc = a,
                        None => return Ok((Finished::AlreadyReleased, None)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!("alloc {} kept changing; try again", alloc.alloc_id)))
    }

    /// What follows a release: the log line, events, metrics, waking blocked evals,
    /// announcing a dead eval, a pipeline's next step.
    async fn released(&self, alloc: &Alloc, new_eval: Option<&Eval>) {
        let status = new_eval.map(|e| e.status);
        info!(pool = %alloc.pool_id, alloc = %alloc.alloc_id, eval = %alloc.eval_id,
              worker = %alloc.worker_id, size = alloc.size, ?status, "alloc released");
        self.emit(|| Change::alloc(alloc, "released"));
        if let Some(e) = new_eval {
            crate::metrics::finished(&e.pool_id, e.status);
            self.emit(|| Change::eval(e));
        }
        // Capacity came back: blocked evals may fit now.
        if let Err(e) = self.capacity_appeared(&alloc.pool_id).await {
            debug!(error = %e, "wake after release");
        }
        if let Some(e) = new_eval.filter(|e| e.status == EvalStatus::Dead) {
            self.announce_dead(e).await;
        }
        if let Some(e) = new_eval.filter(|e| e.status.is_terminal()) {
            self.step_eval_finished(e).await;
        }
    }

    /// A completion where the store writes the eval on its own first
    /// (`Store::complete_first`: on DynamoDB two plain writes cost less than one
    /// transaction of both), then releases the alloc. `None`: take the usual path (the
    /// store cannot, the eval is not placed on this alloc, or it is a pipeline step).
    async fn complete_first(
        &self,
        alloc: &Alloc,
        exit_code: i32,
        output: Option<&str>,
    ) -> Result<Option<(Finished, Option<Eval>)>> {
        if alloc.state != AllocState::Live {
            return Ok(None);
        }
        let at = self.now();
        let done = crate::backend::Completion {
            exit_code,
            output: output.map(validate::output),
            at,
            purge_at: self.retained_until(at),
        };
        let Some(eval) = self.store.complete_first(alloc, &done).await.transpose()?.flatten() else {
            return Ok(None);
        };
        crate::fault!("finish.after_complete_first");
        // The eval is finished; the alloc holds its capacity until this lands (or, if
        // this never does, until its lease runs out and the releaser gives it back).
        let mut alloc = alloc.clone();
        for attempt in 0..MAX_TRIES as u32 {
            match self.store.release(&alloc, None, None).await {
                Ok(()) => {
                    self.released(&alloc, Some(&eval)).await;
                    return Ok(Some((Finished::Released(Some(eval.status)), Some(eval))));
                }
                // Released meanwhile (the releaser, seeing the eval finished), or
                // counted by a cap set meanwhile: read it again.
                Err(Error::Conflict(why)) => {
                    debug!(alloc = %alloc.alloc_id, %why, "release after completion lost a race; re-reading");
                    super::backoff::pause(attempt).await;
                    match self.store.get_alloc(&alloc.pool_id, &alloc.alloc_id).await? {
                        Some(a) if a.state == AllocState::Live => alloc = a,
                        // Its capacity is back; the eval's ending is this completion's.
                        _ => {
                            crate::metrics::finished(&eval.pool_id, eval.status);
                            self.emit(|| Change::eval(&eval));
                            return Ok(Some((Finished::Released(Some(eval.status)), Some(eval))));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!("alloc {} kept changing; try again", alloc.alloc_id)))
    }

    /// The eval's next state, or `None` when the eval must not change (it moved on
    /// to another alloc, or it is already finished, e.g. cancelled).
    fn decide(&self, eval: Option<&Eval>, alloc: &Alloc, finish: &Finish) -> Option<Eval> {
        let eval = eval?;
        if eval.alloc_id.as_ref() != Some(&alloc.alloc_id) || eval.status != EvalStatus::Placed {
            return None;
        }
        let mut e = eval.clone();
        e.version += 1;
        e.updated_at = self.now();
        match finish {
            Finish::Complete { exit_code, output } => {
                e.status = EvalStatus::Complete;
                e.purge_at = self.purge_at(&e);
                e.exit_code = Some(*exit_code);
                e.output = output.as_deref().map(validate::output);
                e.reason = None;
            }
            Finish::Continue { after_ms, state, output } => {
                let count = e.continuation.as_ref().map_or(0, |c| c.count) + 1;
                let not_before = e.updated_at + after_ms;
                e.continuation = Some(crate::model::Continuation { count, not_before, state: state.clone() });
                e.status = EvalStatus::Queued;
                e.attempt += 1;
                e.output = output.as_deref().map(validate::output);
                e.reason = Some(format!("continues at {} (continuation {count})", crate::clock::rfc3339(not_before)));
            }
            Finish::Fail { reason } => {
                e.reason = Some(validate::reason(reason));
                if e.retries_used() <= self.settings.max_retry {
                    e.status = EvalStatus::Failed;
                    // worker_id and alloc_id keep naming the last attempt until the next placement.
                    e.attempt += 1;
                } else {
                    e.status = EvalStatus::Dead;
                    e.purge_at = self.purge_at(&e);
                }
            }
        }
        Some(e)
    }

    /// Puts a dead eval on the dead-letter queue, for alarms and tooling. The eval's
    /// record is the truth (`GET .../dead-letters`), so a failure here only logs.
    async fn announce_dead(&self, eval: &Eval) {
        if !self.queues.announces_dead_letters() {
            return;
        }
        let body = serde_json::json!({
            "eval_id": eval.eval_id, "pool_id": eval.pool_id, "attempt": eval.attempt, "reason": eval.reason,
        })
        .to_string();
        if let Err(e) = self.queues.send(&self.settings.dead_letter_queue(), &[body]).await {
            warn!(eval = %eval.eval_id, error = %e, "could not announce dead eval on the dead-letter queue");
        }
    }
}

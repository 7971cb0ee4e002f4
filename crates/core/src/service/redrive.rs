//! Dead-letter redrive: dead evals go back to their pool's queue with a fresh retry
//! budget. Each eval is redriven at most once per call however many callers race:
//! the write that makes it `queued` again is conditioned on the version that was read
//! as `dead`, so of two concurrent redrives one wins and the other re-reads, finds it
//! no longer dead and reports it skipped. The message is sent before that write (the
//! rule in `service/mod.rs`); the loser's message is a duplicate for the same attempt,
//! which the scheduler drops.

use std::collections::HashSet;

use tracing::info;

use super::{require_admin, Lineup};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::events::Change;
use crate::id::{EvalId, PoolId};
use crate::model::{Eval, EvalMessage, EvalStatus, Redrive};

/// The most eval ids one redrive names, and the most dead evals one redrive of "all"
/// takes (the answer says when more are left).
pub const MAX_REDRIVE: usize = 1000;
/// Evals redriven at once.
const CONCURRENCY: usize = 16;
const MAX_TRIES: u32 = 8;

/// What a redrive did.
#[derive(Debug, Default)]
pub struct RedriveOutcome {
    /// Queued again, as they now stand.
    pub redriven: Vec<Eval>,
    /// Not redriven, and why (not dead, a pipeline's step, not found).
    pub skipped: Vec<(EvalId, String)>,
    /// "All" was asked and more dead evals are left than one call takes.
    pub more: bool,
    /// This call's id, recorded in each eval it redrove (`Redrive::by`).
    pub redrive_id: String,
}

impl Lineup {
    /// Redrives `ids`, or every dead eval of the pool (up to `MAX_REDRIVE`) when `None`.
    pub async fn redrive(&self, who: &Principal, pool: &PoolId, ids: Option<Vec<EvalId>>) -> Result<RedriveOutcome> {
        require_admin(who)?;
        self.active_pool(pool).await?;
        let mut out = RedriveOutcome { redrive_id: hex::encode(rand::random::<[u8; 8]>()), ..Default::default() };
        let evals = match ids {
            Some(ids) => {
                if ids.len() > MAX_REDRIVE {
                    return Err(Error::invalid(
                        "too_many_evals",
                        format!("at most {MAX_REDRIVE} eval ids per redrive"),
                    ));
                }
                let mut seen = HashSet::new();
                let ids: Vec<EvalId> = ids.into_iter().filter(|id| seen.insert(id.clone())).collect();
                let found = self.store.get_evals(pool, &ids).await?;
                let have: HashSet<&EvalId> = found.iter().map(|e| &e.eval_id).collect();
                out.skipped =
                    ids.iter().filter(|id| !have.contains(id)).map(|id| (id.clone(), "not found".into())).collect();
                found
            }
            None => {
                let dead = self.store.list_evals(pool, Some(EvalStatus::Dead), MAX_REDRIVE + 1).await?;
                out.more = dead.len() > MAX_REDRIVE;
                dead.into_iter().take(MAX_REDRIVE).collect()
            }
        };

        let done = super::bounded(evals, CONCURRENCY, "redrive", |e| {
            let (l, by) = (self.clone(), out.redrive_id.clone());
            async move {
                let id = e.eval_id.clone();
                l.redrive_one(e, &by).await.map(|r| (id, r))
            }
        })
        .await;
        let mut failure = None;
        for r in done {
            match r {
                Ok((_, Ok(e))) => out.redriven.push(e),
                Ok((id, Err(why))) => out.skipped.push((id, why)),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        // Those already redriven stay redriven; a call again redrives the rest.
        if let Some(e) = failure {
            return Err(e);
        }
        if !out.redriven.is_empty() {
            info!(pool = %pool, redriven = out.redriven.len(), skipped = out.skipped.len(), "dead letters redriven");
        }
        Ok(out)
    }

    /// Queues one dead eval again. `Ok(Err(why))`: it is not one to redrive.
    async fn redrive_one(&self, mut eval: Eval, by: &str) -> Result<std::result::Result<Eval, String>> {
        for attempt in 0..MAX_TRIES {
            if eval.status != EvalStatus::Dead {
                return Ok(Err(format!("not dead: {}", eval.status.as_str())));
            }
            if let Some(step) = &eval.step {
                // Its pipeline failed when it died and skipped what came after:
                // running the step alone would not resume it.
                return Ok(Err(format!("a step of pipeline {}: submit the pipeline again", step.pipeline_id)));
            }
            let count = eval.redrive.as_ref().map_or(0, |r| r.count) + 1;
            let mut e = eval.clone();
            // Every attempt so far stops counting: the next one is the first of a fresh budget.
            let continued = eval.continuation.as_ref().map_or(0, |c| c.count);
            e.redrive = Some(Redrive { count, retry_base: eval.attempt.saturating_sub(continued), by: by.to_owned() });
            e.status = EvalStatus::Queued;
            e.attempt += 1;
            e.version += 1;
            e.updated_at = self.now();
            e.reason = Some(format!("redriven from the dead letters (redrive {count})"));
            e.purge_at = None;
            // Message first: a waiting eval always has one.
            match self.send_eval_message(&e.pool_id, &EvalMessage::of(&e)).await {
                Ok(()) => {}
                Err(Error::QueueGone(_)) => return Err(Error::Disbanded(e.pool_id.to_string())),
                Err(err) => return Err(err),
            }
            crate::fault!("redrive.after_send");
            match self.store.update_eval(&e, eval.version).await {
                Ok(()) => {
                    self.emit(|| Change::eval(&e));
                    return Ok(Ok(e));
                }
                Err(Error::Conflict(_)) => {
                    super::backoff::pause(attempt).await;
                    match self.store.get_eval(&e.pool_id, &e.eval_id).await? {
                        Some(now) => eval = now,
                        None => return Ok(Err("not found".into())),
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::Conflict(format!("eval {} kept changing; try again", eval.eval_id)))
    }
}

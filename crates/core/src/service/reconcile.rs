//! The reconciler: no waiting eval is ever stranded without a message. An eval that is
//! `queued` or `failed` has a message in its pool's queue — sent before the write that
//! made it waiting — but a message can still go: SQS drops it after its retention
//! (14 days), and an operator may purge a queue. The releaser calls `reconcile_pool`
//! for each active pool at most every `RECONCILE_EVERY_MS`, which re-sends the message
//! of a waiting eval when
//! - nothing has written the eval for `RESEND_AFTER_MS` (7 days, half the retention):
//!   its message may be about to expire; or
//! - the queue holds fewer messages than there are waiting evals (`Queues::depth`;
//!   counts messages in flight too), so some are gone: then every waiting eval not
//!   written for `RESEND_GRACE_MS` gets one.
//!
//! A re-sent message is a duplicate at worst: placement is conditioned on the eval's
//! version and the scheduler drops a message whose attempt or eval has moved on, so it
//! never makes a second placement. Each re-send bumps the eval's `updated_at` (a
//! versioned write), so one eval is re-sent at most once per period.

use tracing::{info, warn};

use super::Lineup;
use crate::error::Result;
use crate::model::{Eval, EvalMessage, EvalStatus, Pool};
use crate::Millis;

pub const RESEND_AFTER_MS: Millis = 7 * 24 * 3600 * 1000;
pub const RESEND_GRACE_MS: Millis = 2 * 60 * 1000;
pub const RECONCILE_EVERY_MS: Millis = 5 * 60 * 1000;

impl Lineup {
    /// Whether `pool` is due for a reconcile at `now` (and marks it done if so).
    pub(crate) fn reconcile_due(&self, pool: &Pool, now: Millis) -> bool {
        let mut last = self.reconciled.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&pool.pool_id) {
            Some(t) if t + RECONCILE_EVERY_MS > now => false,
            _ => {
                last.insert(pool.pool_id.clone(), now);
                true
            }
        }
    }

    /// Re-sends the messages of `pool`'s waiting evals that may be gone; how many.
    pub async fn reconcile_pool(&self, pool: &Pool, now: Millis) -> Result<usize> {
        let waiting: Vec<Eval> = self
            .store
            .unfinished_evals(&pool.pool_id)
            .await?
            .into_iter()
            .filter(|e| matches!(e.status, EvalStatus::Queued | EvalStatus::Failed))
            .collect();
        if waiting.is_empty() {
            return Ok(0);
        }
        let queue = self.pool_queue(&pool.pool_id);
        let short = self.queues.depth(&queue).await?.is_some_and(|d| d < waiting.len() as u64);
        let resend: Vec<&Eval> = waiting
            .iter()
            .filter(|e| e.updated_at + RESEND_AFTER_MS <= now || (short && e.updated_at + RESEND_GRACE_MS <= now))
            .collect();
        if resend.is_empty() {
            return Ok(0);
        }
        if short {
            warn!(pool = %pool.pool_id, waiting = waiting.len(), "pool queue holds fewer messages than waiting evals");
        }
        let mut sent = 0;
        for chunk in resend.chunks(10) {
            let bodies = chunk
                .iter()
                .map(|e| serde_json::to_string(&EvalMessage::of(e)))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| crate::Error::backend("encode eval message", e))?;
            // Message first, as everywhere: then the write that records it.
            self.queues.send(&queue, &bodies).await?;
            let bumped: Vec<(Eval, u64)> = chunk
                .iter()
                .map(|e| {
                    let mut next = (*e).clone();
                    next.version += 1;
                    next.updated_at = now;
                    (next, e.version)
                })
                .collect();
            // A conflict means the eval moved on (placed, cancelled): the message is a
            // harmless duplicate.
            let _ = self.store.update_evals(&bumped).await?;
            sent += chunk.len();
        }
        info!(pool = %pool.pool_id, sent, short, "re-sent the messages of waiting evals");
        Ok(sent)
    }
}

//! Intake: match each received message to its eval. One `get_evals` for the batch.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tracing::{debug, warn};

use super::{PassSummary, DEFER};
use crate::backend::Received;
use crate::error::Result;
use crate::id::EvalId;
use crate::model::{Eval, EvalMessage, EvalStatus, Millis, Pool};
use crate::service::Lineup;

/// A message whose eval never appears is dropped after this many receives (its
/// submit failed before the eval was written, so nobody was told it was accepted).
const ORPHAN_RECEIVES: u32 = 10;

/// A batch, sorted: evals to plan with their messages, and messages to delete or to
/// look at again in a moment.
pub(super) struct Intake {
    pub work: Vec<(Eval, Received)>,
    pub to_delete: Vec<String>,
    pub deferred: Vec<(String, Duration)>,
    pub sum: PassSummary,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Place,
    /// Stale, a duplicate, or an orphan: delete it.
    Drop,
    /// The eval is mid-way through a change: look again soon.
    Defer,
    /// A continuation not due yet: look again at this time (or sooner, `WAIT_MAX`).
    Wait(Millis),
}

/// The longest a not-yet-due continuation's message stays hidden at once: SQS allows
/// 12 hours; shorter keeps a clock change or a cancelled eval from holding a message
/// long, at one receive per eval per `WAIT_MAX`.
const WAIT_MAX: Duration = Duration::from_secs(15 * 60);

fn classify(msg: &EvalMessage, eval: Option<&Eval>, receive_count: u32, now: Millis) -> Verdict {
    let Some(eval) = eval else {
        return if receive_count >= ORPHAN_RECEIVES { Verdict::Drop } else { Verdict::Defer };
    };
    if eval.status == EvalStatus::Dead && msg.attempt > eval.attempt {
        // A redrive sends the next attempt's message before the write that revives the
        // eval (`service/redrive.rs`): wait for that write, as for an eval not yet written.
        return if receive_count >= ORPHAN_RECEIVES { Verdict::Drop } else { Verdict::Defer };
    }
    if eval.status.is_terminal()
        || eval.attempt > msg.attempt
        || (eval.attempt == msg.attempt && !eval.status.is_waiting())
    {
        Verdict::Drop
    } else if eval.attempt < msg.attempt {
        Verdict::Defer
    } else if let Some(t) = eval.continuation.as_ref().map(|c| c.not_before).filter(|t| *t > now) {
        Verdict::Wait(t)
    } else {
        Verdict::Place
    }
}

impl Lineup {
    pub(super) async fn intake(&self, queue: &str, pool: &Pool, msgs: Vec<Received>) -> Result<Intake> {
        let mut out =
            Intake { work: Vec::new(), to_delete: Vec::new(), deferred: Vec::new(), sum: PassSummary::default() };
        let mut parsed: Vec<(EvalMessage, Received)> = Vec::with_capacity(msgs.len());
        for m in msgs {
            match serde_json::from_str::<EvalMessage>(&m.body) {
                Ok(em) => parsed.push((em, m)),
                Err(e) => {
                    warn!(queue = %queue, error = %e, "dropping malformed eval message");
                    out.to_delete.push(m.receipt);
                    out.sum.dropped += 1;
                }
            }
        }
        let ids: Vec<EvalId> = parsed.iter().map(|(em, _)| em.eval_id.clone()).collect();
        let mut evals: HashMap<EvalId, Eval> =
            self.store.get_evals(&pool.pool_id, &ids).await?.into_iter().map(|e| (e.eval_id.clone(), e)).collect();
        let mut planned: HashSet<EvalId> = HashSet::new();
        let now = self.now();
        for (msg, rcv) in parsed {
            // Two messages for one eval in a batch (a send retried after a lost response):
            // the eval is planned once, the other message deleted.
            let verdict = if planned.contains(&msg.eval_id) {
                Verdict::Drop
            } else {
                classify(&msg, evals.get(&msg.eval_id), rcv.receive_count, now)
            };
            match (verdict, evals.remove(&msg.eval_id)) {
                (Verdict::Place, Some(eval)) => {
                    planned.insert(msg.eval_id);
                    out.work.push((eval, rcv));
                }
                (Verdict::Defer, eval) => {
                    evals.extend(eval.map(|e| (e.eval_id.clone(), e)));
                    out.deferred.push((rcv.receipt, DEFER));
                    out.sum.deferred += 1;
                }
                (Verdict::Wait(until), eval) => {
                    evals.extend(eval.map(|e| (e.eval_id.clone(), e)));
                    let wait =
                        Duration::from_millis((until - now).max(0) as u64).clamp(Duration::from_secs(1), WAIT_MAX);
                    out.deferred.push((rcv.receipt, wait));
                    out.sum.deferred += 1;
                }
                (_, eval) => {
                    if eval.is_none() {
                        debug!(eval = %msg.eval_id, "dropping message of an eval never written or already planned");
                    }
                    evals.extend(eval.map(|e| (e.eval_id.clone(), e)));
                    out.to_delete.push(rcv.receipt);
                    out.sum.dropped += 1;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Priority;
    use crate::PoolId;

    fn eval(status: EvalStatus, attempt: u32) -> Eval {
        let mut e = Eval::queued(PoolId::generate(), 1, None, None, Priority::DEFAULT, None, 0);
        e.status = status;
        e.attempt = attempt;
        e
    }

    #[test]
    fn messages_are_matched_by_attempt() {
        let msg = |attempt| EvalMessage { attempt, ..EvalMessage::of(&eval(EvalStatus::Queued, 1)) };
        assert_eq!(classify(&msg(1), Some(&eval(EvalStatus::Queued, 1)), 1, 0), Verdict::Place);
        assert_eq!(classify(&msg(2), Some(&eval(EvalStatus::Failed, 2)), 1, 0), Verdict::Place);
        assert_eq!(classify(&msg(1), Some(&eval(EvalStatus::Placed, 1)), 1, 0), Verdict::Drop);
        assert_eq!(classify(&msg(1), Some(&eval(EvalStatus::Failed, 2)), 1, 0), Verdict::Drop);
        assert_eq!(classify(&msg(1), Some(&eval(EvalStatus::Cancelled, 1)), 1, 0), Verdict::Drop);
        assert_eq!(classify(&msg(2), Some(&eval(EvalStatus::Placed, 1)), 1, 0), Verdict::Defer);
        assert_eq!(classify(&msg(1), None, 1, 0), Verdict::Defer);
        assert_eq!(classify(&msg(1), None, ORPHAN_RECEIVES, 0), Verdict::Drop);
        // A redrive's message comes before the write that revives the dead eval.
        assert_eq!(classify(&msg(3), Some(&eval(EvalStatus::Dead, 2)), 1, 0), Verdict::Defer);
        assert_eq!(classify(&msg(3), Some(&eval(EvalStatus::Dead, 2)), ORPHAN_RECEIVES, 0), Verdict::Drop);
        assert_eq!(classify(&msg(2), Some(&eval(EvalStatus::Dead, 2)), 1, 0), Verdict::Drop);
        assert_eq!(classify(&msg(2), Some(&eval(EvalStatus::Complete, 1)), 1, 0), Verdict::Drop);
    }

    #[test]
    fn a_continuation_waits_until_it_is_due() {
        let mut e = eval(EvalStatus::Queued, 2);
        e.continuation = Some(crate::model::Continuation { count: 1, not_before: 5_000, state: None });
        let msg = EvalMessage::of(&e);
        assert_eq!(classify(&msg, Some(&e), 1, 1_000), Verdict::Wait(5_000));
        assert_eq!(classify(&msg, Some(&e), 1, 5_000), Verdict::Place);
        let stale = EvalMessage { attempt: 1, ..msg };
        assert_eq!(classify(&stale, Some(&e), 1, 1_000), Verdict::Drop, "the run that continued: its message is stale");
    }
}

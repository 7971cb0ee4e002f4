//! Bounded history for pipelines. A finished eval carries `purge_at` from the moment it
//! finishes (`Lineup::purge_at`), except a pipeline's step: a running pipeline reads
//! its steps' evals to decide what runs next, so they are kept while it runs. When a
//! pipeline ends (complete, failed, cancelled) it gets its own `purge_at`, and its step
//! evals get the same, each once it is finished: those finished by then when the
//! pipeline ends (`stamp_steps`), a straggler (a step's eval still running when its
//! pipeline failed) when it finishes (`stamp_straggler`). A backend then removes them
//! as it removes any finished eval: DynamoDB's TTL, the embedded store's purge (which
//! removes the pipeline record too).

use tracing::{debug, warn};

use super::Lineup;
use crate::error::Error;
use crate::model::Eval;
use crate::pipeline::Pipeline;
use crate::Millis;

impl Lineup {
    /// `next` is about to be written as ended: it is kept for the retention from now.
    pub(super) fn mark_ended(&self, next: &mut Pipeline) {
        if next.status.is_final() && next.purge_at.is_none() {
            next.purge_at = Some(self.retained_until(next.updated_at));
        }
    }

    /// After `p` was written as ended: its finished step evals take its `purge_at`. A
    /// lost race (the eval changed meanwhile) is left to that change's own finish.
    pub(super) async fn stamp_steps(&self, p: &Pipeline) {
        let Some(at) = p.purge_at else { return };
        let ids: Vec<_> = p.started_evals().into_iter().map(|(_, e)| e).collect();
        let evals = match self.store.get_evals(&p.pool_id, &ids).await {
            Ok(evals) => evals,
            Err(e) => return warn!(pipeline = %p.pipeline_id, error = %e, "reading steps to stamp"),
        };
        let stamped: Vec<(Eval, u64)> = evals
            .into_iter()
            .filter(|e| e.status.is_terminal() && e.purge_at.is_none())
            .map(|e| stamped(e, at))
            .collect();
        for chunk in stamped.chunks(100) {
            match self.store.update_evals(chunk).await {
                Ok(results) => {
                    let lost = results.iter().filter(|r| matches!(r, Err(Error::Conflict(_)))).count();
                    debug!(pipeline = %p.pipeline_id, stamped = chunk.len() - lost, lost, "step evals stamped");
                }
                Err(e) => warn!(pipeline = %p.pipeline_id, error = %e, "stamping steps"),
            }
        }
    }

    /// A step's eval finished after its pipeline ended: it takes the pipeline's `purge_at`.
    pub(super) async fn stamp_straggler(&self, eval: &Eval, p: &Pipeline) {
        let Some(at) = p.purge_at.filter(|_| eval.status.is_terminal() && eval.purge_at.is_none()) else { return };
        if let Err(e) = self.store.update_evals(&[stamped(eval.clone(), at)]).await {
            warn!(eval = %eval.eval_id, error = %e, "stamping a step eval");
        }
    }
}

fn stamped(mut e: Eval, at: Millis) -> (Eval, u64) {
    let expected = e.version;
    e.version += 1;
    e.purge_at = Some(at);
    (e, expected)
}

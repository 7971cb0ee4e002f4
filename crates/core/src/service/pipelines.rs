//! Pipelines: accept one, advance it as its steps' evals finish, cancel it, show it.
//!
//! `advance_pipeline` is the only writer of a running pipeline's progress. It reads the
//! pipeline and the evals of its started steps, asks `pipeline::advance` what follows,
//! creates the evals of the steps that start (each with its message first, ids fixed at
//! acceptance: creating one twice is a no-op), and only then records the steps as
//! started, conditioned on the version it read. So a crash between the two leaves
//! evals that exist and a step still recorded as waiting: the next `advance_pipeline`
//! (when another eval of the pipeline finishes, or the releaser's sweep) starts it
//! again and finds its evals there. Never lost, never queued twice, without a
//! transaction over a step's up to 1,000 evals (DynamoDB's limit is 100 items).

use std::collections::HashMap;

use tracing::{debug, info, warn};

use super::{require_admin, Lineup};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::id::{EvalId, PipelineId, PoolId};
use crate::model::{Eval, EvalStatus, StepRef};
use crate::pipeline::{self, Pipeline, PipelineStatus, Spec, StepState, StepStatus};

/// Evals of a starting step created at once (each a message and a write).
const CREATE_CONCURRENCY: usize = 32;
/// Rounds of advancing before giving up to the next trigger (each round either starts
/// steps or loses a race to another writer).
const MAX_ROUNDS: usize = 16;
/// How often the releaser looks at a pool's running pipelines (`sweep_pipelines`):
/// the delay after which a step whose trigger was lost (a crash right after its last
/// eval finished) starts anyway.
pub const SWEEP_EVERY_MS: crate::Millis = 30_000;
/// A pipeline's record, as JSON, at most: a DynamoDB item holds 400 KB.
pub const MAX_PIPELINE_BYTES: usize = 256 * 1024;

/// A pipeline as shown: its record and each step's status and eval ids.
#[derive(Debug, Clone)]
pub struct PipelineView {
    pub pipeline: Pipeline,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone)]
pub struct StepView {
    pub name: String,
    pub status: StepStatus,
    /// Empty until the step starts.
    pub eval_ids: Vec<EvalId>,
}

impl Lineup {
    /// Accepts a pipeline (admin): checked whole, written, and its first steps started.
    /// With an idempotency key already used by a pipeline of this pool, that pipeline
    /// is returned if it was submitted with the same steps (`created` false), and a
    /// conflict names the key otherwise.
    pub async fn submit_pipeline(
        &self,
        who: &Principal,
        pool: &PoolId,
        spec: Spec,
        idempotency_key: Option<String>,
    ) -> Result<(PipelineView, bool)> {
        require_admin(who)?;
        spec.check()?;
        let p = Pipeline::new(pool.clone(), spec, idempotency_key, self.now());
        let len = serde_json::to_string(&p).map_err(|e| Error::backend("encode pipeline", e))?.len();
        if len > MAX_PIPELINE_BYTES {
            return Err(Error::invalid(
                "pipeline_too_large",
                format!("the pipeline is {len} bytes as stored, over {MAX_PIPELINE_BYTES}: move payloads out of it"),
            ));
        }
        if let Some(existing) = self.store.insert_pipeline(&p).await? {
            if existing.steps != p.steps {
                return Err(Error::IdempotencyMismatch(p.idempotency_key.unwrap_or_default()));
            }
            let view = self.view(self.advance_from(existing).await?).await?;
            return Ok((view, false));
        }
        info!(pool = %pool, pipeline = %p.pipeline_id, steps = p.steps.len(), "pipeline accepted");
        let p = self.advance_from(p).await?;
        Ok((self.view(p).await?, true))
    }

    pub async fn pipeline(&self, who: &Principal, pool: &PoolId, id: &PipelineId) -> Result<PipelineView> {
        require_admin(who)?;
        let p = self.store.get_pipeline(pool, id).await?.ok_or_else(|| Error::not_found(format!("pipeline {id}")))?;
        self.view(p).await
    }

    pub async fn pipelines(
        &self,
        who: &Principal,
        pool: &PoolId,
        status: Option<PipelineStatus>,
        limit: usize,
    ) -> Result<Vec<PipelineView>> {
        require_admin(who)?;
        let mut out = Vec::new();
        for p in self.store.list_pipelines(pool, status, limit.clamp(1, 1_000)).await? {
            out.push(self.view(p).await?);
        }
        Ok(out)
    }

    /// Cancels a pipeline (admin): no step starts any more, and every unfinished eval
    /// of its started steps is cancelled. Cancelling a finished pipeline changes nothing.
    pub async fn cancel_pipeline(&self, who: &Principal, pool: &PoolId, id: &PipelineId) -> Result<PipelineView> {
        require_admin(who)?;
        self.cancel_pipeline_unchecked(pool, id).await
    }

    /// A disbanded pool's running pipelines end `cancelled` (its evals were cancelled
    /// with it); for the releaser, until the pool is purged.
    pub(crate) async fn cancel_pipelines_of(&self, pool: &PoolId) -> Result<usize> {
        let running = self.store.list_pipelines(pool, Some(PipelineStatus::Running), 1_000).await?;
        for p in &running {
            self.cancel_pipeline_unchecked(pool, &p.pipeline_id).await?;
        }
        Ok(running.len())
    }

    async fn cancel_pipeline_unchecked(&self, pool: &PoolId, id: &PipelineId) -> Result<PipelineView> {
        let mut p = self.read_pipeline(pool, id).await?;
        for attempt in 0..MAX_ROUNDS as u32 {
            if p.status != PipelineStatus::Running {
                break;
            }
            let mut next = p.clone();
            next.status = PipelineStatus::Cancelled;
            next.version += 1;
            next.updated_at = self.now();
            self.mark_ended(&mut next);
            match self.store.update_pipeline(&next, p.version).await {
                Ok(()) => {
                    info!(pool = %pool, pipeline = %id, "pipeline cancelled");
                    p = next;
                }
                Err(Error::Conflict(_)) => {
                    super::backoff::pause(attempt).await;
                    p = self.read_pipeline(pool, id).await?;
                }
                Err(e) => return Err(e),
            }
        }
        if p.status == PipelineStatus::Cancelled {
            let ids: Vec<EvalId> = p.started_evals().into_iter().map(|(_, e)| e).collect();
            for e in self.store.get_evals(pool, &ids).await? {
                if !e.status.is_terminal() {
                    self.cancel_loop(e, "pipeline cancelled").await?;
                }
            }
            self.stamp_steps(&p).await;
        }
        let p = self.advance_from(p).await?;
        self.view(p).await
    }

    async fn read_pipeline(&self, pool: &PoolId, id: &PipelineId) -> Result<Pipeline> {
        self.store.get_pipeline(pool, id).await?.ok_or_else(|| Error::not_found(format!("pipeline {id}")))
    }

    /// After an eval of a pipeline finished (complete, dead or cancelled): the pipeline
    /// moves on. A failure here only logs: the releaser's sweep advances it later.
    pub(crate) async fn step_eval_finished(&self, eval: &Eval) {
        let Some(step) = &eval.step else { return };
        let res = match self.may_advance(eval, step).await {
            Ok(None) => Ok(()),
            Ok(Some(p)) => self.advance_from(p).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            warn!(pool = %eval.pool_id, pipeline = %step.pipeline_id, error = %e, "could not advance pipeline; the releaser will");
        }
    }

    /// Whether `eval` finishing can change its pipeline, read as cheaply as possible: a
    /// full `advance` reads every started eval, and doing that for each of a wide
    /// pipeline's thousand steps would cost a million reads. It can change only if the
    /// eval failed, or its step is now complete and either has dependents or may have
    /// been the last step to finish (found by looking for an unfinished step, latest
    /// first: usually the first one looked at). The pipeline as read, if it can.
    async fn may_advance(&self, eval: &Eval, step: &StepRef) -> Result<Option<Pipeline>> {
        let Some(p) = self.store.get_pipeline(&eval.pool_id, &step.pipeline_id).await? else { return Ok(None) };
        if p.status != PipelineStatus::Running {
            self.stamp_straggler(eval, &p).await;
            return Ok(None);
        }
        if eval.status != EvalStatus::Complete {
            return Ok(Some(p));
        }
        let Some(i) = p.steps.iter().position(|s| s.name == step.step) else { return Ok(Some(p)) };
        let complete = |evals: Vec<Eval>, n: u32| {
            evals.len() == n as usize && evals.iter().all(|e| e.status == EvalStatus::Complete)
        };
        if !complete(self.store.get_evals(&p.pool_id, &p.eval_ids(i)).await?, p.steps[i].count) {
            return Ok(None);
        }
        if p.steps.iter().any(|s| s.after.contains(&step.step)) {
            return Ok(Some(p));
        }
        // A step not started (its dependencies are not complete) cannot be finished.
        if p.states.iter().any(|s| *s != StepState::Started) {
            return Ok(None);
        }
        // Every other step's evals, latest first, 100 to a read: stop at one unfinished.
        let others: Vec<EvalId> = (0..p.steps.len()).rev().filter(|j| *j != i).flat_map(|j| p.eval_ids(j)).collect();
        for chunk in others.chunks(100) {
            if !complete(self.store.get_evals(&p.pool_id, chunk).await?, chunk.len() as u32) {
                return Ok(None);
            }
        }
        Ok(Some(p))
    }

    /// Every running pipeline of `pool` advanced once, at most every `SWEEP_EVERY_MS`
    /// per pool and process (the releaser's sweep: it finds a step whose evals finished
    /// while no one advanced it, e.g. after a crash).
    pub(crate) async fn sweep_pipelines(&self, pool: &PoolId, now: crate::Millis) -> Result<usize> {
        {
            let mut last = self.pipelines_swept.lock().unwrap_or_else(|p| p.into_inner());
            if last.get(pool).is_some_and(|t| t + SWEEP_EVERY_MS > now) {
                return Ok(0);
            }
            last.insert(pool.clone(), now);
        }
        let running = self.store.list_pipelines(pool, Some(PipelineStatus::Running), 1_000).await?;
        let n = running.len();
        for p in running {
            let id = p.pipeline_id.clone();
            if let Err(e) = self.advance_from(p).await {
                warn!(pool = %pool, pipeline = %id, error = %e, "could not advance pipeline");
            }
        }
        Ok(n)
    }

    /// Advances the pipeline as far as its evals allow (see the module doc); returns it
    /// as it then stands.
    pub async fn advance_pipeline(&self, pool: &PoolId, id: &PipelineId) -> Result<Pipeline> {
        let p = self.read_pipeline(pool, id).await?;
        self.advance_from(p).await
    }

    /// `advance_pipeline` from `p` as just read (or written): read again only when a
    /// write of it loses to another.
    async fn advance_from(&self, mut p: Pipeline) -> Result<Pipeline> {
        let (pool, id) = (p.pool_id.clone(), p.pipeline_id.clone());
        for attempt in 0..MAX_ROUNDS as u32 {
            let evals = self.started_evals(&p).await?;
            let statuses: HashMap<EvalId, EvalStatus> = evals.iter().map(|(k, e)| (k.clone(), e.status)).collect();
            let adv = pipeline::advance(&p, &statuses);
            if adv.is_empty() {
                return Ok(p);
            }
            let mut next = p.clone();
            let outputs: HashMap<EvalId, Option<String>> =
                evals.iter().map(|(k, e)| (k.clone(), e.output.clone())).collect();
            for &i in &adv.start {
                match pipeline::inputs(&p, i, &outputs) {
                    Ok(inputs) => self.start_step(&p, i, inputs).await?,
                    Err(e) => {
                        // Nothing of the step runs; the pipeline fails saying why.
                        next.reason = Some(e.to_string());
                        next.status = PipelineStatus::Failed;
                        break;
                    }
                }
                next.states[i] = StepState::Started;
            }
            if next.status == PipelineStatus::Failed && p.status == PipelineStatus::Running {
                for s in next.states.iter_mut().filter(|s| **s == StepState::Waiting) {
                    *s = StepState::Skipped;
                }
            }
            for &i in &adv.skip {
                next.states[i] = StepState::Skipped;
            }
            if let Some(st) = adv.status.filter(|_| next.status == PipelineStatus::Running) {
                next.status = st;
            }
            next.version += 1;
            next.updated_at = self.now();
            self.mark_ended(&mut next);
            crate::fault!("pipeline.before_record");
            match self.store.update_pipeline(&next, p.version).await {
                Ok(()) => {
                    if next.status != p.status {
                        info!(pool = %pool, pipeline = %id, status = next.status.as_str(), "pipeline ended");
                        self.stamp_steps(&next).await;
                    }
                    debug!(pool = %pool, pipeline = %id, started = ?adv.start, "pipeline advanced");
                    p = next;
                }
                Err(Error::Conflict(_)) => {
                    super::backoff::pause(attempt).await;
                    p = self.read_pipeline(&pool, &id).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(p)
    }

    /// The evals of the started steps that exist, by id.
    async fn started_evals(&self, p: &Pipeline) -> Result<HashMap<EvalId, Eval>> {
        let ids: Vec<EvalId> = p.started_evals().into_iter().map(|(_, e)| e).collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        // One call: each backend reads in the largest batches it can.
        Ok(self.store.get_evals(&p.pool_id, &ids).await?.into_iter().map(|e| (e.eval_id.clone(), e)).collect())
    }

    /// Creates step `i`'s evals (those that exist are left as they are).
    async fn start_step(&self, p: &Pipeline, i: usize, inputs: serde_json::Value) -> Result<()> {
        let spec = &p.steps[i];
        let now = self.now();
        let inputs = (inputs.as_object().is_some_and(|o| !o.is_empty())).then_some(inputs);
        let mut evals = Vec::with_capacity(spec.count as usize);
        for (k, id) in p.eval_ids(i).into_iter().enumerate() {
            let mut e = Eval::queued(
                p.pool_id.clone(),
                spec.size,
                spec.dataset.clone(),
                spec.payload.clone(),
                spec.priority,
                None,
                now,
            );
            e.eval_id = id;
            e.step = Some(StepRef {
                pipeline_id: p.pipeline_id.clone(),
                step: spec.name.clone(),
                index: k as u32,
                inputs: inputs.clone(),
            });
            evals.push(e);
        }
        let result = super::bounded(evals, CREATE_CONCURRENCY, "start step", |e| {
            let l = self.clone();
            async move { l.enqueue(&e).await.map(|_| ()) }
        })
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .map(|_| ());
        if result.is_ok() {
            info!(pool = %p.pool_id, pipeline = %p.pipeline_id, step = %spec.name, evals = spec.count, "step started");
        }
        result
    }

    async fn view(&self, p: Pipeline) -> Result<PipelineView> {
        let evals = self.started_evals(&p).await?;
        let statuses: HashMap<EvalId, EvalStatus> = evals.iter().map(|(k, e)| (k.clone(), e.status)).collect();
        let st = p.step_statuses(&statuses);
        let steps = p
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepView {
                name: s.name.clone(),
                status: st[i],
                eval_ids: if p.states[i] == StepState::Started { p.eval_ids(i) } else { Vec::new() },
            })
            .collect();
        Ok(PipelineView { pipeline: p, steps })
    }
}

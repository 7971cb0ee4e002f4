//! Pipelines: steps with dependencies (`after`), fan-out (`count`) and data between
//! steps (a step's outputs become its dependents' inputs), built on evals.
//!
//! Pure, like the planner: the shape check of a submitted spec (`Spec::check`), the
//! eval ids of each step (`Pipeline::eval_ids`), and `advance`, which takes the statuses
//! of the started steps' evals and says which steps start now, which are skipped, and
//! the pipeline's status. The service applies an `Advance`; applying one twice is
//! harmless, because a step's eval ids are fixed when the pipeline is accepted (one
//! block, `EvalId::block`) and creating an eval that exists changes nothing. That is
//! what keeps starting a step exactly-once without a transaction over its (up to 1,000)
//! evals, and lets the reconciler re-run `advance` after a crash.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{EvalId, PipelineId, PoolId};
use crate::model::{EvalStatus, Millis};

mod spec;
pub use spec::{Spec, StepSpec};

/// Steps in one pipeline.
pub const MAX_STEPS: usize = 1_000;
/// Evals in one step (`count`).
pub const MAX_COUNT: u32 = 1_000;
/// Evals in one pipeline, all steps together.
pub const MAX_EVALS: u32 = 10_000;
pub const MAX_STEP_NAME: usize = 64;
/// A job's `LINEUP_INPUTS`, as JSON: an environment variable holds at most 128 KiB on
/// Linux, and the rest of the job's environment needs room too.
pub const MAX_INPUTS_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineStatus {
    Running,
    Complete,
    Failed,
    Cancelled,
}

impl PipelineStatus {
    pub const ALL: [PipelineStatus; 4] =
        [PipelineStatus::Running, PipelineStatus::Complete, PipelineStatus::Failed, PipelineStatus::Cancelled];

    pub fn is_final(self) -> bool {
        self != PipelineStatus::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStatus::Running => "running",
            PipelineStatus::Complete => "complete",
            PipelineStatus::Failed => "failed",
            PipelineStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            Error::invalid(
                "invalid_status",
                format!("pipeline status {s:?}: one of running, complete, failed, cancelled"),
            )
        })
    }
}

/// What is stored of a step besides its spec: whether its evals were created, or why
/// they never will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Waiting for the steps in its `after`.
    #[default]
    Waiting,
    /// Its evals exist (or are being created: creating them again is harmless).
    Started,
    /// A step it depends on failed or was cancelled, or the pipeline was cancelled.
    Skipped,
}

/// A step as users see it: its state, and once started what its evals say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Waiting,
    Running,
    Complete,
    /// One of its evals is dead (out of attempts).
    Failed,
    /// One of its evals was cancelled.
    Cancelled,
    Skipped,
}

/// A stored pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub pool_id: PoolId,
    pub pipeline_id: PipelineId,
    pub status: PipelineStatus,
    pub steps: Vec<StepSpec>,
    pub states: Vec<StepState>,
    /// The first of the block of eval ids the steps' evals take, in step order.
    pub first_eval: EvalId,
    pub idempotency_key: Option<String>,
    /// Why it failed, when no step says so (a step's inputs too large to hand over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bumped on every write; writes are conditioned on the version they read.
    pub version: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Once it ended: when it (and its step evals, stamped then) may be purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<Millis>,
}

impl Pipeline {
    /// A newly accepted pipeline (its spec already checked): nothing started yet; the
    /// first `advance` starts the steps without `after`.
    pub fn new(pool_id: PoolId, spec: Spec, idempotency_key: Option<String>, now: Millis) -> Pipeline {
        let total = spec.steps.iter().map(|s| s.count).sum();
        Pipeline {
            pool_id,
            pipeline_id: PipelineId::generate(),
            status: PipelineStatus::Running,
            states: vec![StepState::Waiting; spec.steps.len()],
            steps: spec.steps,
            first_eval: EvalId::block(total),
            idempotency_key,
            reason: None,
            version: 1,
            created_at: now,
            updated_at: now,
            purge_at: None,
        }
    }

    /// The ids of step `i`'s evals, by index.
    pub fn eval_ids(&self, i: usize) -> Vec<EvalId> {
        let offset: u32 = self.steps[..i].iter().map(|s| s.count).sum();
        (0..self.steps[i].count).map(|k| self.first_eval.nth(offset + k)).collect()
    }

    /// Every started step's eval ids, with the step they belong to.
    pub fn started_evals(&self) -> Vec<(usize, EvalId)> {
        (0..self.steps.len())
            .filter(|i| self.states[*i] == StepState::Started)
            .flat_map(|i| self.eval_ids(i).into_iter().map(move |id| (i, id)))
            .collect()
    }

    /// Each step's status, given the statuses of the started steps' evals (an eval not
    /// in `evals` is not written yet: it counts as waiting to run).
    pub fn step_statuses(&self, evals: &HashMap<EvalId, EvalStatus>) -> Vec<StepStatus> {
        (0..self.steps.len())
            .map(|i| match self.states[i] {
                StepState::Waiting => StepStatus::Waiting,
                StepState::Skipped => StepStatus::Skipped,
                StepState::Started => {
                    let st: Vec<Option<EvalStatus>> =
                        self.eval_ids(i).iter().map(|id| evals.get(id).copied()).collect();
                    if st.contains(&Some(EvalStatus::Dead)) {
                        StepStatus::Failed
                    } else if st.contains(&Some(EvalStatus::Cancelled)) {
                        StepStatus::Cancelled
                    } else if st.iter().all(|s| *s == Some(EvalStatus::Complete)) {
                        StepStatus::Complete
                    } else {
                        StepStatus::Running
                    }
                }
            })
            .collect()
    }
}

/// What `advance` decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Advance {
    /// Steps to start now (their evals to create), in step order.
    pub start: Vec<usize>,
    /// Steps that will never start.
    pub skip: Vec<usize>,
    /// The pipeline's status once these are applied (unchanged if `None`).
    pub status: Option<PipelineStatus>,
}

impl Advance {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.skip.is_empty() && self.status.is_none()
    }
}

/// The next move of `p`, given the statuses of its started steps' evals.
/// - A failed or cancelled step fails the pipeline: every step not started is skipped;
///   started ones run on (their evals finish normally).
/// - Otherwise each waiting step whose `after` steps are all complete starts.
/// - Every step complete: the pipeline is complete.
/// - A cancelled pipeline starts nothing; its waiting steps are skipped.
pub fn advance(p: &Pipeline, evals: &HashMap<EvalId, EvalStatus>) -> Advance {
    let statuses = p.step_statuses(evals);
    let waiting = |i: &usize| p.states[*i] == StepState::Waiting;
    let mut out = Advance::default();
    let broken = statuses.iter().any(|s| matches!(s, StepStatus::Failed | StepStatus::Cancelled));
    if p.status == PipelineStatus::Cancelled || p.status == PipelineStatus::Failed || broken {
        out.skip = (0..p.steps.len()).filter(waiting).collect();
        if p.status == PipelineStatus::Running {
            out.status = Some(PipelineStatus::Failed);
        }
        return out;
    }
    if p.status.is_final() {
        return out;
    }
    let index: HashMap<&str, usize> = p.steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let complete = |name: &String| index.get(name.as_str()).is_some_and(|d| statuses[*d] == StepStatus::Complete);
    out.start = (0..p.steps.len()).filter(waiting).filter(|i| p.steps[*i].after.iter().all(complete)).collect();
    if out.start.is_empty() && statuses.iter().all(|s| *s == StepStatus::Complete) {
        out.status = Some(PipelineStatus::Complete);
    }
    out
}

/// A step's `LINEUP_INPUTS`: each `after` step's name → its output (for a fanned-out
/// step, the list of outputs by index; `null` where a job wrote none). `outputs` holds
/// the outputs of the completed evals by id. Refused past `MAX_INPUTS_BYTES`.
pub fn inputs(p: &Pipeline, i: usize, outputs: &HashMap<EvalId, Option<String>>) -> Result<serde_json::Value> {
    let mut obj = serde_json::Map::new();
    for name in &p.steps[i].after {
        let Some(d) = p.steps.iter().position(|s| &s.name == name) else { continue };
        let outs: Vec<serde_json::Value> = p
            .eval_ids(d)
            .iter()
            .map(|id| outputs.get(id).cloned().flatten().map(serde_json::Value::String).unwrap_or_default())
            .collect();
        let v = if p.steps[d].count == 1 {
            outs.into_iter().next().unwrap_or_default()
        } else {
            serde_json::Value::Array(outs)
        };
        obj.insert(name.clone(), v);
    }
    let v = serde_json::Value::Object(obj);
    let len = v.to_string().len();
    if len > MAX_INPUTS_BYTES {
        return Err(Error::invalid(
            "inputs_too_large",
            format!("step {:?}: its inputs are {len} bytes of JSON, over {MAX_INPUTS_BYTES}", p.steps[i].name),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;

//! Pipeline conformance: the records behave alike on every backend — written with the
//! pool-active check, idempotent by key, listed newest first by status, updated only at
//! the version read — and a step's evals, whose ids are fixed in advance, are created
//! once however often the step is started.

use lineup_core::pipeline::{Pipeline, PipelineStatus, Spec, StepSpec, StepState};
use lineup_core::*;

use crate::store::setup;
use crate::{Backend, T0};

fn spec() -> Spec {
    Spec {
        steps: vec![
            StepSpec::new("backup", 1),
            StepSpec {
                payload: Some(serde_json::json!({"cmd": ["sh", "-c", "x"], "f": 1.5})),
                ..StepSpec::new("transfer", 2)
            }
            .after(&["backup"])
            .count(3),
        ],
    }
}

pub async fn store_pipelines(b: Backend) {
    let s = b.store.as_ref();
    let (p, _) = setup(&b, 10).await;
    let pool = &p.pool_id;
    let first = Pipeline::new(pool.clone(), spec(), None, T0);
    assert_eq!(s.insert_pipeline(&first).await.unwrap(), None);
    assert_eq!(s.get_pipeline(pool, &first.pipeline_id).await.unwrap(), Some(first.clone()), "read back exactly");
    assert_eq!(s.get_pipeline(pool, &PipelineId::generate()).await.unwrap(), None);

    // An idempotency key: the second insert writes nothing and answers the first.
    let keyed = Pipeline::new(pool.clone(), spec(), Some("nightly-1".into()), T0 + 1);
    assert_eq!(s.insert_pipeline(&keyed).await.unwrap(), None);
    let again = Pipeline::new(pool.clone(), spec(), Some("nightly-1".into()), T0 + 2);
    assert_eq!(s.insert_pipeline(&again).await.unwrap(), Some(keyed.clone()));
    assert_eq!(s.get_pipeline(pool, &again.pipeline_id).await.unwrap(), None);

    // Updates at the version read; a stale one is a conflict and writes nothing.
    let mut next = first.clone();
    next.states[0] = StepState::Started;
    next.version += 1;
    s.update_pipeline(&next, first.version).await.unwrap();
    let mut stale = first.clone();
    stale.status = PipelineStatus::Cancelled;
    stale.version += 1;
    assert!(s.update_pipeline(&stale, first.version).await.unwrap_err().is_conflict());
    assert_eq!(s.get_pipeline(pool, &first.pipeline_id).await.unwrap(), Some(next.clone()));

    // Listing: newest first, by status.
    let mut done = keyed.clone();
    done.status = PipelineStatus::Complete;
    done.version += 1;
    s.update_pipeline(&done, keyed.version).await.unwrap();
    let all: Vec<PipelineId> =
        s.list_pipelines(pool, None, 10).await.unwrap().into_iter().map(|p| p.pipeline_id).collect();
    assert_eq!(all, vec![keyed.pipeline_id.clone(), first.pipeline_id.clone()]);
    let running = s.list_pipelines(pool, Some(PipelineStatus::Running), 10).await.unwrap();
    assert_eq!(running, vec![next]);
    let complete = s.list_pipelines(pool, Some(PipelineStatus::Complete), 10).await.unwrap();
    assert_eq!(complete, vec![done]);
    assert_eq!(s.list_pipelines(pool, None, 1).await.unwrap().len(), 1);

    // Not in a pool that is gone.
    s.disband_pool(pool, T0).await.unwrap();
    let late = Pipeline::new(pool.clone(), spec(), None, T0 + 3);
    assert!(s.insert_pipeline(&late).await.is_err());
    let missing = Pipeline::new(PoolId::generate(), spec(), None, T0);
    assert!(matches!(s.insert_pipeline(&missing).await, Err(Error::NotFound(_))));
}

pub async fn store_step_evals_created_once(b: Backend) {
    let s = b.store.as_ref();
    let (p, _) = setup(&b, 10).await;
    let pool = &p.pool_id;
    let pl = Pipeline::new(pool.clone(), spec(), None, T0);
    s.insert_pipeline(&pl).await.unwrap();
    let ids = pl.eval_ids(1);
    let evals: Vec<Eval> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut e = Eval::queued(pool.clone(), 2, None, None, Priority::DEFAULT, None, T0);
            e.eval_id = id.clone();
            e.step = Some(StepRef {
                pipeline_id: pl.pipeline_id.clone(),
                step: "transfer".into(),
                index: i as u32,
                inputs: Some(serde_json::json!({"backup": "s3://b/1", "n": [1, null, 2.5]})),
            });
            e
        })
        .collect();
    for e in &evals {
        assert_eq!(s.insert_eval(e).await.unwrap(), None);
    }
    // Started again (a crash between creating the evals and recording the step): the
    // same evals come back, nothing new is written.
    for e in &evals {
        let mut twin = e.clone();
        twin.created_at = T0 + 5;
        assert_eq!(s.insert_eval(&twin).await.unwrap(), Some(e.clone()));
    }
    let got = s.get_evals(pool, &ids).await.unwrap();
    assert_eq!(got.len(), 3);
    for e in &evals {
        assert_eq!(s.get_eval(pool, &e.eval_id).await.unwrap().as_ref(), Some(e), "step and inputs kept exactly");
    }
    assert_eq!(s.list_evals(pool, Some(EvalStatus::Queued), 10).await.unwrap().len(), 3);
}

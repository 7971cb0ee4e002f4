//! Bounded history on the backend under test: a finished eval carries `purge_at`, the
//! retention after its last change (whole seconds: DynamoDB's TTL attribute); evals
//! still waiting or running, and a running pipeline's step evals, carry none and are
//! never purged; an ended pipeline and its step evals carry the retention after it ended. A backend that purges itself (the embedded store, in the releaser's pass)
//! deletes exactly the expired ones; one whose records expire by TTL keeps them until
//! DynamoDB removes them.

use std::time::Duration;

use lineup_core::pipeline::{Spec, StepSpec};
use lineup_core::service::{Finish, NewEval};
use lineup_core::*;

use crate::service::{poll_n, pool_with, worker};
use crate::*;

const RETENTION: u64 = 3600;

fn expected(e: &Eval) -> Option<Millis> {
    let at = e.updated_at + (RETENTION * 1000) as i64;
    Some((at + 999).div_euclid(1000) * 1000)
}

pub async fn service_history_is_bounded(b: Backend) {
    let settings = Settings { history_retention: RETENTION, max_retry: 0, ..Settings::default() };
    let (l, clock) = lineup_with(&b, settings);
    let pool = pool_with(&l, Strategy::Spread).await;
    let p = &pool.pool_id;
    let w = worker(&l, &pool, 2).await.worker.worker_id;
    let submit = |size| {
        let l = l.clone();
        async move { l.submit_eval(&ADMIN, p, new_eval(size, None)).await.unwrap().eval.eval_id }
    };
    let (done, dead) = (submit(1).await, submit(1).await);
    schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 2).await;
    for a in poll_n(&l, &pool, &w, 2).await {
        let fin = if a.eval_id == done { complete(0) } else { Finish::Fail { reason: "boom".into() } };
        l.finish_alloc(&ADMIN, p, &a.alloc_id, fin).await.unwrap();
    }
    let cancelled = submit(1).await;
    l.cancel_eval(&ADMIN, p, &cancelled).await.unwrap();
    let waiting = l.submit_eval(&ADMIN, p, NewEval { size: 50, ..new_eval(1, None) }).await.unwrap().eval.eval_id;
    let spec = Spec { steps: vec![StepSpec::new("only", 1)] };
    let (pl, _) = l.submit_pipeline(&ADMIN, p, spec, None).await.unwrap();
    let step = pl.steps[0].eval_ids[0].clone();
    schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 1).await;
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    l.finish_alloc(&ADMIN, p, &a.alloc_id, complete(0)).await.unwrap();

    let read = |id: EvalId| {
        let l = l.clone();
        async move { l.store.get_eval(p, &id).await.unwrap() }
    };
    for (id, status) in [(&done, EvalStatus::Complete), (&dead, EvalStatus::Dead), (&cancelled, EvalStatus::Cancelled)]
    {
        let e = read(id.clone()).await.unwrap();
        assert_eq!(e.status, status);
        assert_eq!(e.purge_at, expected(&e), "{status:?}: the retention after its last change");
    }
    // The pipeline ended with its only step: it and its step eval share its expiry.
    let ended = l.store.get_pipeline(p, &pl.pipeline.pipeline_id).await.unwrap().unwrap();
    assert_eq!(ended.status, lineup_core::pipeline::PipelineStatus::Complete);
    let until = ended.updated_at + (RETENTION * 1000) as i64;
    assert_eq!(ended.purge_at, Some((until + 999).div_euclid(1000) * 1000), "the retention after it ended");
    let e = read(step.clone()).await.unwrap();
    assert_eq!((e.status, e.purge_at), (EvalStatus::Complete, ended.purge_at), "a step goes with its pipeline");
    // A running pipeline's finished steps are kept: it reads them to go on.
    let spec = Spec {
        steps: vec![StepSpec::new("first", 1), StepSpec { after: vec!["first".into()], ..StepSpec::new("then", 1) }],
    };
    let (running, _) = l.submit_pipeline(&ADMIN, p, spec, None).await.unwrap();
    let first = running.steps[0].eval_ids[0].clone();
    schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 1).await;
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    assert_eq!(a.eval_id, first);
    l.finish_alloc(&ADMIN, p, &a.alloc_id, complete(0)).await.unwrap();
    assert_eq!(read(first.clone()).await.unwrap().purge_at, None, "a running pipeline's step is kept");
    assert_eq!(read(waiting.clone()).await.unwrap().purge_at, None, "a waiting eval never expires");

    // Before the retention runs out nothing goes; after it, the finished ones may.
    assert_eq!(l.release_pass().await.unwrap().history_purged, 0);
    assert!(read(done.clone()).await.is_some());
    clock.advance_secs(RETENTION + 1);
    let sum = l.release_pass().await.unwrap();
    let purged = [&done, &dead, &cancelled, &step];
    if sum.history_purged > 0 {
        for id in purged {
            assert!(read(id.clone()).await.is_none(), "{id} purged");
        }
        assert!(
            l.store.get_pipeline(p, &pl.pipeline.pipeline_id).await.unwrap().is_none(),
            "the ended pipeline purged"
        );
    } else {
        for id in purged {
            let e = read(id.clone()).await.expect("kept until the table's TTL removes it");
            assert!(e.purge_at.is_some_and(|t| t <= clock.now()));
        }
    }
    assert!(read(waiting).await.is_some(), "a waiting eval is never purged");
    assert!(read(first).await.is_some(), "a running pipeline's step is never purged");
    assert!(l.store.get_pipeline(p, &running.pipeline.pipeline_id).await.unwrap().is_some(), "nor the pipeline");
    // A redriven eval forgets its expiry: it is waiting again.
    if let Some(e) = read(dead.clone()).await {
        let out = l.redrive(&ADMIN, p, Some(vec![e.eval_id.clone()])).await.unwrap();
        assert_eq!(out.redriven[0].purge_at, None);
    }
}

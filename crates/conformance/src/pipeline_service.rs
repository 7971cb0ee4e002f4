//! Pipeline conformance through the service: steps in order with fan-out and inputs,
//! failure and cancel, a crash between starting a step and recording it, and jobs that
//! continue later — on every backend.

use std::collections::HashMap;
use std::time::Duration;

use lineup_core::pipeline::{PipelineStatus, Spec, StepSpec, StepState, StepStatus};
use lineup_core::service::{Finish, PipelineView};
use lineup_core::*;

use crate::service::{poll_n, pool_with, worker};
use crate::{assert_capacity_conserved, lineup, schedule_until, Backend, ADMIN};

fn status_of(v: &PipelineView) -> Vec<(String, StepStatus)> {
    v.steps.iter().map(|s| (s.name.clone(), s.status)).collect()
}

/// Schedules, polls `w` and completes what arrives (output: the step and index), until
/// `n` allocs have been run; returns them in the order they arrived.
async fn run_n(l: &Lineup, pool: &Pool, w: &WorkerId, n: usize) -> Vec<AllocMessage> {
    schedule_until(l, pool, Duration::from_secs(30), |s| s.placed >= n).await;
    let got = poll_n(l, pool, w, n).await;
    for a in &got {
        let out = a.step.as_ref().map(|s| format!("{}-{}", s.step, s.index));
        let f = Finish::Complete { exit_code: 0, output: out };
        l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, f).await.unwrap();
    }
    got
}

/// backup → transfer (×3) → notify, with a side step: each step's evals exist only
/// once the steps it waits for are complete; inputs carry the outputs; the pipeline
/// ends complete; resubmitting with its key gives it back; a different spec under the
/// key is a conflict.
pub async fn service_pipeline_runs_steps_in_order(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 10).await.worker.worker_id;
    let spec = Spec {
        steps: vec![
            StepSpec::new("backup", 1),
            StepSpec::new("transfer", 1).after(&["backup"]).count(3),
            StepSpec::new("side", 1),
            StepSpec::new("notify", 1).after(&["transfer", "side"]),
        ],
    };
    let (v, created) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec.clone(), Some("p-1".into())).await.unwrap();
    assert!(created);
    let id = v.pipeline.pipeline_id.clone();
    assert_eq!(v.pipeline.status, PipelineStatus::Running);
    assert_eq!(
        status_of(&v),
        vec![
            ("backup".into(), StepStatus::Running),
            ("transfer".into(), StepStatus::Waiting),
            ("side".into(), StepStatus::Running),
            ("notify".into(), StepStatus::Waiting),
        ]
    );
    assert!(v.steps[1].eval_ids.is_empty());
    // Nothing of `transfer` exists yet.
    let later = v.pipeline.eval_ids(1);
    assert!(l.store.get_evals(&pool.pool_id, &later).await.unwrap().is_empty());

    // The two roots run; then transfer's three, each with its index and backup's output.
    let first = run_n(&l, &pool, &w, 2).await;
    let mut names: Vec<String> = first.iter().map(|a| a.step.as_ref().unwrap().step.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["backup", "side"]);
    let second = run_n(&l, &pool, &w, 3).await;
    let mut idx: Vec<u32> = second.iter().map(|a| a.step.as_ref().unwrap().index).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2]);
    for a in &second {
        let st = a.step.as_ref().unwrap();
        assert_eq!((st.step.as_str(), &st.pipeline_id), ("transfer", &id));
        assert_eq!(st.inputs, Some(serde_json::json!({"backup": "backup-0"})));
    }
    let last = run_n(&l, &pool, &w, 1).await;
    let st = last[0].step.as_ref().unwrap();
    assert_eq!(st.step, "notify");
    assert_eq!(
        st.inputs,
        Some(serde_json::json!({"transfer": ["transfer-0", "transfer-1", "transfer-2"], "side": "side-0"}))
    );
    let v = l.pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap();
    assert_eq!(v.pipeline.status, PipelineStatus::Complete);
    assert!(v.steps.iter().all(|s| s.status == StepStatus::Complete));
    let e = l.eval(&ADMIN, &pool.pool_id, &v.steps[1].eval_ids[2]).await.unwrap();
    assert_eq!(e.step.as_ref().map(|s| (s.step.as_str(), s.index)), Some(("transfer", 2)));

    // The key again: the same pipeline; another spec under it: a conflict.
    let (again, created) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec, Some("p-1".into())).await.unwrap();
    assert!(!created);
    assert_eq!(again.pipeline.pipeline_id, id);
    let other = Spec { steps: vec![StepSpec::new("x", 1)] };
    assert!(matches!(
        l.submit_pipeline(&ADMIN, &pool.pool_id, other, Some("p-1".into())).await,
        Err(Error::IdempotencyMismatch(_))
    ));
    let listed = l.pipelines(&ADMIN, &pool.pool_id, Some(PipelineStatus::Complete), 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
}

/// A step whose eval dies fails the pipeline: what has not started is skipped, what
/// runs finishes; cancelling another pipeline cancels its evals and skips the rest.
pub async fn service_pipeline_failure_and_cancel(b: Backend) {
    let settings = Settings { max_retry: 0, ..Settings::default() };
    let (l, _clock) = crate::lineup_with(&b, settings);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 10).await.worker.worker_id;
    let spec = Spec {
        steps: vec![
            StepSpec::new("a", 1),
            StepSpec::new("slow", 1),
            StepSpec::new("b", 1).after(&["a"]),
            StepSpec::new("c", 1).after(&["b"]),
        ],
    };
    let (v, _) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec.clone(), None).await.unwrap();
    let id = v.pipeline.pipeline_id.clone();
    schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 2).await;
    let got = poll_n(&l, &pool, &w, 2).await;
    let by: HashMap<String, &AllocMessage> = got.iter().map(|a| (a.step.as_ref().unwrap().step.clone(), a)).collect();
    let fail = Finish::Fail { reason: "exit 3".into() };
    l.finish_alloc(&ADMIN, &pool.pool_id, &by["a"].alloc_id, fail).await.unwrap();
    let v = l.pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap();
    assert_eq!(v.pipeline.status, PipelineStatus::Failed);
    assert_eq!(
        status_of(&v),
        vec![
            ("a".into(), StepStatus::Failed),
            ("slow".into(), StepStatus::Running),
            ("b".into(), StepStatus::Skipped),
            ("c".into(), StepStatus::Skipped),
        ]
    );
    // The running step finishes normally; the pipeline stays failed.
    l.finish_alloc(&ADMIN, &pool.pool_id, &by["slow"].alloc_id, Finish::Complete { exit_code: 0, output: None })
        .await
        .unwrap();
    let v = l.pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap();
    assert_eq!((v.pipeline.status, v.steps[1].status), (PipelineStatus::Failed, StepStatus::Complete));

    // Cancel: its queued roots are cancelled, the rest skipped; twice changes nothing.
    let (v, _) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec, None).await.unwrap();
    let id = v.pipeline.pipeline_id.clone();
    let v = l.cancel_pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap();
    assert_eq!(v.pipeline.status, PipelineStatus::Cancelled);
    assert_eq!(
        status_of(&v),
        vec![
            ("a".into(), StepStatus::Cancelled),
            ("slow".into(), StepStatus::Cancelled),
            ("b".into(), StepStatus::Skipped),
            ("c".into(), StepStatus::Skipped),
        ]
    );
    for e in &v.steps[0].eval_ids {
        assert_eq!(l.eval(&ADMIN, &pool.pool_id, e).await.unwrap().status, EvalStatus::Cancelled);
    }
    let again = l.cancel_pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap();
    assert_eq!(again.pipeline.status, PipelineStatus::Cancelled);
    assert!(matches!(l.pipeline(&ADMIN, &pool.pool_id, &PipelineId::generate()).await, Err(Error::NotFound(_))));
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;

    // A disbanded pool's running pipeline ends cancelled (at the releaser's next pass).
    let spec = Spec { steps: vec![StepSpec::new("x", 1), StepSpec::new("y", 1).after(&["x"])] };
    let (v, _) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec, None).await.unwrap();
    l.disband_pool(&ADMIN, &pool.pool_id).await.unwrap();
    l.release_pass().await.unwrap();
    let v = l.pipeline(&ADMIN, &pool.pool_id, &v.pipeline.pipeline_id).await.unwrap();
    assert_eq!(v.pipeline.status, PipelineStatus::Cancelled);
    assert_eq!(status_of(&v)[1], ("y".into(), StepStatus::Skipped));
}

/// A crash between creating a step's evals and recording the step as started (the
/// `pipeline.before_record` fault point, armed to fail the step or to kill its task):
/// the evals exist, the record still says waiting. The releaser's sweep finds it and
/// records the step without creating anything again: each eval of the step is placed
/// once and the pipeline completes. Arms a fault point: for the crash test binaries only.
pub async fn service_pipeline_crash_before_record(b: Backend) {
    for action in ["return", "panic"] {
        let scenario = fail::FailScenario::setup();
        let (l, clock) = lineup(&b);
        let pool = pool_with(&l, Strategy::Spread).await;
        let w = worker(&l, &pool, 10).await.worker.worker_id;
        let spec = Spec { steps: vec![StepSpec::new("a", 1), StepSpec::new("b", 1).after(&["a"]).count(3)] };
        let (v, _) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec, None).await.unwrap();
        let id = v.pipeline.pipeline_id.clone();
        schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 1).await;
        let a = poll_n(&l, &pool, &w, 1).await.remove(0);

        fail::cfg("pipeline.before_record", action).unwrap();
        let (l2, p2) = (l.clone(), pool.pool_id.clone());
        let done = tokio::spawn(async move {
            l2.finish_alloc(&ADMIN, &p2, &a.alloc_id, Finish::Complete { exit_code: 0, output: None }).await
        })
        .await;
        // The release itself landed either way; only the pipeline's record did not.
        if action == "return" {
            assert!(done.is_ok_and(|r| r.is_ok()), "finishing the alloc does not fail for the pipeline");
        }
        fail::remove("pipeline.before_record");
        let p = l.store.get_pipeline(&pool.pool_id, &id).await.unwrap().unwrap();
        assert_eq!(p.states[1], StepState::Waiting, "{action}: the crash came before the record");
        let b_ids = p.eval_ids(1);
        assert_eq!(l.store.get_evals(&pool.pool_id, &b_ids).await.unwrap().len(), 3, "{action}: evals created");

        // The sweep (at most every 30 s per pool) records the step; nothing is created twice.
        clock.advance_secs(31);
        let _ = l.heartbeat(&ADMIN, &pool.pool_id, &w, crate::hb_req(&[], &[])).await;
        let sum = l.release_pass().await.unwrap();
        assert!(sum.pipelines_swept >= 1, "{sum:?}");
        let p = l.store.get_pipeline(&pool.pool_id, &id).await.unwrap().unwrap();
        assert_eq!(p.states[1], StepState::Started);
        let got = run_n(&l, &pool, &w, 3).await;
        let mut evals: Vec<EvalId> = got.iter().map(|a| a.eval_id.clone()).collect();
        evals.sort();
        evals.dedup();
        assert_eq!(evals.len(), 3, "{action}: each of b's evals placed once");
        // Any duplicate message left (a message sent again on SQS) places nothing.
        for _ in 0..3 {
            let s = l.schedule_pass(&pool, &crate::fast_opts()).await.unwrap();
            assert_eq!(s.placed, 0, "{action}: placed twice");
        }
        let v = l.pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap();
        assert_eq!(v.pipeline.status, PipelineStatus::Complete, "{action}");
        assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
        scenario.teardown();
    }
}

/// Continue later (prorch's `on_continue`), for a plain eval and a pipeline step: the
/// capacity comes back at once, the same eval is placed again only once the delay has
/// passed, its next job gets the saved state, and continuations do not use up retries.
pub async fn service_continue_later(b: Backend) {
    let settings = Settings { max_retry: 1, ..Settings::default() };
    let (l, clock) = crate::lineup_with(&b, settings);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 2).await.worker.worker_id;
    let eval = l.submit_eval(&ADMIN, &pool.pool_id, crate::new_eval(2, None)).await.unwrap().eval.eval_id;
    let mut state = serde_json::json!({"cursor": 0});
    // Three continuations in a row: more than MAX_RETRY, and none counts as a retry.
    for round in 1..=3u32 {
        schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 1).await;
        let a = poll_n(&l, &pool, &w, 1).await.remove(0);
        assert_eq!(a.eval_id, eval);
        assert_eq!(a.state, (round > 1).then(|| state.clone()), "round {round}: the saved state");
        state = serde_json::json!({"cursor": round});
        let cont =
            Finish::Continue { after_ms: 1_000, state: Some(state.clone()), output: Some(format!("part {round}")) };
        l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, cont).await.unwrap();
        let e = l.eval(&ADMIN, &pool.pool_id, &eval).await.unwrap();
        assert_eq!((e.status, e.continuation.as_ref().map(|c| c.count)), (EvalStatus::Queued, Some(round)));
        assert_eq!(crate::service::free_of(&l, &pool, &w).await, 2, "capacity back while it waits");
        // Not before its time (the message is looked at, and put back).
        let early = l.schedule_pass(&pool, &crate::fast_opts()).await.unwrap();
        assert_eq!(early.placed, 0, "round {round}: placed before its time");
        clock.advance_secs(1);
    }
    // A failure now is its first retry (max_retry 1), not its fourth.
    schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 1).await;
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, Finish::Fail { reason: "flaky".into() }).await.unwrap();
    assert_eq!(l.eval(&ADMIN, &pool.pool_id, &eval).await.unwrap().status, EvalStatus::Failed, "retried, not dead");
    schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 1).await;
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, Finish::Complete { exit_code: 0, output: Some("done".into()) })
        .await
        .unwrap();
    let e = l.eval(&ADMIN, &pool.pool_id, &eval).await.unwrap();
    assert_eq!((e.status, e.output.as_deref()), (EvalStatus::Complete, Some("done")));

    // A pipeline step that continues is not finished: its dependent waits for it.
    let spec = Spec { steps: vec![StepSpec::new("poll", 1), StepSpec::new("then", 1).after(&["poll"])] };
    let (v, _) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec, None).await.unwrap();
    let id = v.pipeline.pipeline_id.clone();
    schedule_until(&l, &pool, Duration::from_secs(30), |s| s.placed >= 1).await;
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    let cont = Finish::Continue { after_ms: 1_000, state: None, output: None };
    l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, cont).await.unwrap();
    let v = l.pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap();
    assert_eq!(status_of(&v)[1], ("then".into(), StepStatus::Waiting));
    clock.advance_secs(1);
    let got = run_n(&l, &pool, &w, 1).await;
    assert_eq!(got[0].step.as_ref().map(|s| s.step.as_str()), Some("poll"));
    let got = run_n(&l, &pool, &w, 1).await;
    assert_eq!(got[0].step.as_ref().map(|s| s.step.as_str()), Some("then"));
    assert_eq!(l.pipeline(&ADMIN, &pool.pool_id, &id).await.unwrap().pipeline.status, PipelineStatus::Complete);
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
}

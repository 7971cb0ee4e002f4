//! Dead-letter redrive on the backend under test: a fresh retry budget, exactly once
//! under concurrent calls, and what is not redriven says why.

use std::collections::HashSet;
use std::time::Duration;

use lineup_core::pipeline::{Spec, StepSpec};
use lineup_core::service::Finish;
use lineup_core::*;

use crate::service::{poll_n, pool_with, worker};
use crate::*;

/// Places and fails every waiting eval of `pool` until each listed one is dead.
async fn fail_until_dead(l: &Lineup, pool: &Pool, w: &WorkerId, evals: &[EvalId]) {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut dead = 0;
        for id in evals {
            if l.eval(&ADMIN, &pool.pool_id, id).await.unwrap().status == EvalStatus::Dead {
                dead += 1;
            }
        }
        if dead == evals.len() {
            return;
        }
        assert!(tokio::time::Instant::now() < end, "{dead} of {} dead", evals.len());
        let s = l.schedule_pass(pool, &fast_opts()).await.unwrap();
        if s.placed == 0 {
            continue;
        }
        for a in poll_n(l, pool, w, s.placed as usize).await {
            l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, Finish::Fail { reason: "boom".into() }).await.unwrap();
        }
    }
}

pub async fn service_redrive(b: Backend) {
    let settings = Settings { max_retry: 1, ..Settings::default() };
    let (l, _clock) = lineup_with(&b, settings);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 10).await.worker.worker_id;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.unwrap().eval.eval_id);
    }
    fail_until_dead(&l, &pool, &w, &ids).await;

    // A queued eval, an unknown id and a pipeline's dead step are not redriven, and say why.
    let queued = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(100, None)).await.unwrap().eval.eval_id;
    let unknown = EvalId::generate();
    let spec = Spec { steps: vec![StepSpec::new("only", 1)] };
    let (p, _) = l.submit_pipeline(&ADMIN, &pool.pool_id, spec, None).await.unwrap();
    let step_eval = p.steps[0].eval_ids[0].clone();
    fail_until_dead(&l, &pool, &w, std::slice::from_ref(&step_eval)).await;
    let out = l
        .redrive(&ADMIN, &pool.pool_id, Some(vec![queued.clone(), unknown.clone(), step_eval.clone(), ids[0].clone()]))
        .await
        .unwrap();
    assert_eq!(out.redriven.iter().map(|e| &e.eval_id).collect::<Vec<_>>(), vec![&ids[0]]);
    let why: std::collections::HashMap<_, _> = out.skipped.iter().cloned().collect();
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(why[&queued].contains("not dead"), "{why:?}");
    assert!(why[&unknown].contains("not found"), "{why:?}");
    assert!(why[&step_eval].contains("pipeline"), "{why:?}");

    // Two redrives of "all" at once: each dead eval is redriven by exactly one of them.
    let (a, c) = tokio::join!(l.redrive(&ADMIN, &pool.pool_id, None), l.redrive(&ADMIN, &pool.pool_id, None));
    let (a, c) = (a.unwrap(), c.unwrap());
    let got_a: HashSet<_> = a.redriven.iter().map(|e| e.eval_id.clone()).collect();
    let got_c: HashSet<_> = c.redriven.iter().map(|e| e.eval_id.clone()).collect();
    assert!(got_a.is_disjoint(&got_c), "redriven twice: {:?}", got_a.intersection(&got_c).collect::<Vec<_>>());
    let all: HashSet<_> = got_a.union(&got_c).cloned().collect();
    let want: HashSet<_> = ids[1..].iter().cloned().collect();
    assert_eq!(all, want, "every other dead eval, once");

    // A fresh budget: each fails once (a retry, max_retry 1), then completes.
    for id in &ids {
        let e = l.eval(&ADMIN, &pool.pool_id, id).await.unwrap();
        assert_eq!((e.status, e.attempt, e.redrive.as_ref().map(|r| r.count)), (EvalStatus::Queued, 3, Some(1)));
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut runs: std::collections::HashMap<EvalId, u32> = Default::default();
    let mut placements = HashSet::new();
    while runs.values().filter(|n| **n >= 2).count() < ids.len() {
        assert!(tokio::time::Instant::now() < end, "runs so far: {runs:?}");
        let s = l.schedule_pass(&pool, &fast_opts()).await.unwrap();
        if s.placed == 0 {
            continue;
        }
        for a in poll_n(&l, &pool, &w, s.placed as usize).await {
            assert!(placements.insert((a.eval_id.clone(), a.attempt)), "placed twice: {:?}", a.eval_id);
            let n = runs.entry(a.eval_id.clone()).or_default();
            *n += 1;
            let fin = if *n == 1 { Finish::Fail { reason: "once more".into() } } else { complete(0) };
            l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, fin).await.unwrap();
        }
    }
    for id in &ids {
        let e = l.eval(&ADMIN, &pool.pool_id, id).await.unwrap();
        assert_eq!((e.status, e.attempt), (EvalStatus::Complete, 4), "{id}: retried within its fresh budget");
    }
    // Nothing dead is left but the pipeline's step.
    let dead = l.evals(&ADMIN, &pool.pool_id, Some(EvalStatus::Dead), 100).await.unwrap();
    assert_eq!(dead.iter().map(|e| &e.eval_id).collect::<Vec<_>>(), vec![&step_eval]);
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;

    // More ids than one call takes is a clear error.
    let many = (0..=lineup_core::service::MAX_REDRIVE).map(|_| EvalId::generate()).collect();
    assert!(matches!(l.redrive(&ADMIN, &pool.pool_id, Some(many)).await, Err(Error::Invalid { .. })));
}

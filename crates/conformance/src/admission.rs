//! Admission conformance: priorities (and, as they land, limits and health) hold on
//! every backend, through the real scheduler loop.

use std::time::Duration;

use lineup_core::service::{NewEval, PoolScheduler};
use lineup_core::*;

use crate::service::{poll_n, pool_with, worker};
use crate::{complete, fast_opts, lineup, new_eval, Backend, ADMIN};

async fn submit(l: &Lineup, pool: &Pool, priority: i64) -> EvalId {
    let new = NewEval { priority: Priority::new(priority).unwrap(), ..new_eval(1, None) };
    l.submit_eval(&ADMIN, &pool.pool_id, new).await.unwrap().eval.eval_id
}

/// Steps `ps` until `cond` holds; the placements made meanwhile are returned.
async fn step_until(ps: &mut PoolScheduler, what: &str, mut cond: impl FnMut(&PoolScheduler, usize) -> bool) -> usize {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut placed = 0;
    while !cond(ps, placed) {
        assert!(tokio::time::Instant::now() < end, "{what}: not reached in 30 s (held {}, placed {placed})", ps.held());
        placed += ps.step(Duration::from_secs(1)).await.unwrap().placed;
    }
    placed
}

/// A higher-priority eval submitted behind a backlog of lower ones is placed before
/// the rest of it as soon as capacity allows; equal priorities go in order of
/// submission.
pub async fn admission_priority_jumps_the_backlog(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let mut lows = Vec::new();
    for _ in 0..12 {
        lows.push(submit(&l, &pool, 10).await);
    }
    let mut ps = PoolScheduler::new(l.clone(), pool.clone(), fast_opts());
    // No worker yet: the whole backlog ends up held.
    step_until(&mut ps, "backlog held", |ps, _| ps.held() >= 12).await;
    let high = submit(&l, &pool, 90).await;
    // It joins the held set though nothing can be placed (a duplicate message would be
    // deleted, not held twice).
    step_until(&mut ps, "high-priority eval held", |ps, _| ps.held() == 13).await;
    let w = worker(&l, &pool, 1).await.worker.worker_id;
    step_until(&mut ps, "first placement", |_, placed| placed == 1).await;
    let got = l.eval(&ADMIN, &pool.pool_id, &high).await.unwrap();
    assert_eq!(got.status, EvalStatus::Placed, "the high-priority eval goes first");
    assert_eq!(got.priority, Priority::new(90).unwrap());
    // Its capacity back: now the oldest of the backlog.
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    assert_eq!(a.eval_id, high);
    l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(0)).await.unwrap();
    step_until(&mut ps, "second placement", |_, placed| placed == 1).await;
    assert_eq!(l.eval(&ADMIN, &pool.pool_id, &lows[0]).await.unwrap().status, EvalStatus::Placed);
    for id in &lows[1..] {
        assert_eq!(l.eval(&ADMIN, &pool.pool_id, id).await.unwrap().status, EvalStatus::Queued);
    }
    ps.release_held().await.unwrap();
}

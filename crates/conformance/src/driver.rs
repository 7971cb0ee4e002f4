//! The driver (`Lineup::schedule_until`, what the `schedule` function runs): a pool
//! whose backlog outruns one loop gets more, an idle pool keeps one.

use std::collections::HashSet;
use std::time::Duration;

use lineup_core::service::SchedulerOptions;
use lineup_core::*;

use crate::{assert_capacity_conserved, fast_opts, lineup, new_eval, pool_with, worker, Backend, ADMIN};

/// A backlog in one pool, another pool idle: the busy pool's full passes start extra
/// loops (at most `loops` at once), and every eval is placed exactly once.
pub async fn service_backlog_gets_more_loops(b: Backend) {
    let (l, _clock) = lineup(&b);
    let hot = pool_with(&l, Strategy::Spread).await;
    let idle = pool_with(&l, Strategy::Spread).await;
    for _ in 0..3 {
        worker(&l, &hot, 40).await;
    }
    worker(&l, &idle, 5).await;
    const N: usize = 60;
    for _ in 0..N {
        l.submit_eval(&ADMIN, &hot.pool_id, new_eval(1, None)).await.unwrap();
    }
    // Passes of 10 against a backlog of 60: the first comes back full.
    let opts = SchedulerOptions { batch: 10, wait: Duration::from_millis(200), loops: 3, ..fast_opts() };
    // schedule_until runs to its deadline: long enough for 60 placements on a faulty emulator.
    let sum = l.schedule_until(tokio::time::Instant::now() + Duration::from_secs(15), &opts).await.unwrap();
    assert_eq!(sum.pools, 2, "{sum:?}");
    assert!(sum.helpers >= 1, "no extra loop for a backlog: {sum:?}");
    assert_eq!(sum.placed, N, "{sum:?}");

    let placed = l.store.list_evals(&hot.pool_id, Some(EvalStatus::Placed), 1_000).await.unwrap();
    assert_eq!(placed.len(), N);
    let allocs = l.store.live_allocs(&hot.pool_id, None).await.unwrap();
    let evals: HashSet<&EvalId> = allocs.iter().map(|a| &a.eval_id).collect();
    assert_eq!((allocs.len(), evals.len()), (N, N), "an eval placed twice");
    assert!(l.store.live_allocs(&idle.pool_id, None).await.unwrap().is_empty());
    assert_capacity_conserved(l.store.as_ref(), &hot.pool_id).await;
}

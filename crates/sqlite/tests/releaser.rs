//! The releaser isolates failures: a pool whose records cannot be read is logged and
//! counted, and every other pool is still released; a pass cut short by its deadline
//! says so and resumes after the last pool it visited.

use std::sync::Arc;

use lineup_conformance::{lineup, Backend, ADMIN};
use lineup_core::{Strategy, Worker};
use lineup_sqlite::{Durability, SqliteBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_pool_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(SqliteBackend::open_dir(dir.path(), Durability::Process).unwrap());
    let backend = Backend { store: b.clone(), queues: b.clone() };
    let (l, clock) = lineup(&backend);
    let mut pools = Vec::new();
    for _ in 0..3 {
        let p = l.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
        let w: Worker = l.register_worker(&ADMIN, &p.pool_id, 4).await.unwrap().worker;
        pools.push((p.pool_id, w.worker_id));
    }
    pools.sort();
    // The middle pool's worker record is damaged: reading it fails.
    let conn = rusqlite::Connection::open(dir.path().join("lineup.db")).unwrap();
    conn.execute("UPDATE workers SET capacity='damaged' WHERE pool_id=?1", [pools[1].0.as_str()]).unwrap();
    drop(conn);
    clock.advance_secs(61);

    let sum = l.release_pass().await.unwrap();
    assert_eq!((sum.pools_failed, sum.errors, sum.workers_removed), (1, 1, 2), "{sum:?}");
    for (i, (p, w)) in pools.iter().enumerate() {
        let gone = l.store.get_worker(p, w).await.map(|w| w.is_none()).unwrap_or(false);
        assert_eq!(gone, i != 1, "pool {i}");
    }

    // A deadline already past: nothing visited, and the next call resumes where asked.
    let past = tokio::time::Instant::now();
    let (sum, resume) = l.release_until(past, Some(&pools[0].0)).await.unwrap();
    assert!(sum.cut_short);
    assert_eq!(resume.as_ref(), Some(&pools[0].0));
    // From after the first pool, wrapping around: every pool is visited once.
    let far = past + std::time::Duration::from_secs(60);
    let (sum, resume) = l.release_until(far, Some(&pools[0].0)).await.unwrap();
    assert!(!sum.cut_short && resume.is_none());
    assert_eq!(sum.pools_failed, 1, "the damaged pool is visited again, and fails again");
}

/// The embedded store purges what expired itself (DynamoDB's TTL does it on AWS):
/// the finished eval and its released alloc, once the retention has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_releaser_purges_expired_history() {
    use lineup_conformance::{complete, fast_opts, new_eval, poll_n};
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(SqliteBackend::open_dir(dir.path(), Durability::Process).unwrap());
    let backend = Backend { store: b.clone(), queues: b.clone() };
    let settings = lineup_core::Settings { history_retention: 60, ..Default::default() };
    let (l, clock) = lineup_conformance::lineup_with(&backend, settings);
    l.init().await.unwrap();
    let p = l.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
    let w = l.register_worker(&ADMIN, &p.pool_id, 4).await.unwrap().worker.worker_id;
    let e = l.submit_eval(&ADMIN, &p.pool_id, new_eval(1, None)).await.unwrap().eval.eval_id;
    assert_eq!(l.schedule_pass(&p, &fast_opts()).await.unwrap().placed, 1);
    let a = poll_n(&l, &p, &w, 1).await.remove(0);
    l.finish_alloc(&ADMIN, &p.pool_id, &a.alloc_id, complete(0)).await.unwrap();
    // Keep the worker alive across the wait.
    clock.advance_secs(59);
    l.heartbeat(&ADMIN, &p.pool_id, &w, lineup_conformance::hb_req(&[], &[])).await.unwrap();
    assert_eq!(l.release_pass().await.unwrap().history_purged, 0, "not before the retention ran out");
    clock.advance_secs(2);
    let sum = l.release_pass().await.unwrap();
    assert_eq!(sum.history_purged, 1, "the eval, 60 s after it finished: {sum:?}");
    assert!(l.store.get_eval(&p.pool_id, &e).await.unwrap().is_none());
    // The alloc goes 60 s after its lease would have ended (30 s after placement).
    assert!(l.store.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().is_some());
    clock.advance_secs(30);
    l.heartbeat(&ADMIN, &p.pool_id, &w, lineup_conformance::hb_req(&[], &[])).await.unwrap();
    assert_eq!(l.release_pass().await.unwrap().history_purged, 1, "the alloc");
    assert!(l.store.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().is_none());
}

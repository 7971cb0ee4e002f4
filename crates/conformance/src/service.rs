//! Service-level conformance: the eval's whole journey through `Lineup` (the code the
//! API, `lineup dev` and the Lambdas run) on the backend under test.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lineup_core::service::{CancelOutcome, Finish, FinishOutcome, NewEval};
use lineup_core::*;

use crate::*;

const POLL: Duration = Duration::from_millis(500);

pub(crate) async fn pool_with(l: &Lineup, strategy: Strategy) -> Pool {
    l.init().await.unwrap();
    l.create_pool(&ADMIN, strategy).await.unwrap()
}

pub(crate) async fn worker(l: &Lineup, pool: &Pool, capacity: u32) -> lineup_core::service::RegisteredWorker {
    l.register_worker(&ADMIN, &pool.pool_id, capacity).await.unwrap()
}

pub(crate) async fn free_of(l: &Lineup, pool: &Pool, w: &WorkerId) -> u32 {
    l.store.get_worker(&pool.pool_id, w).await.unwrap().unwrap().free
}

/// Polls `w`'s queue until `n` distinct allocs arrived.
pub async fn poll_n(l: &Lineup, pool: &Pool, w: &WorkerId, n: usize) -> Vec<AllocMessage> {
    let mut out: Vec<AllocMessage> = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        assert!(tokio::time::Instant::now() < end, "only {} of {n} allocs arrived", out.len());
        for a in l.poll(&ADMIN, &pool.pool_id, w, POLL, 10).await.unwrap() {
            // SQS delivers at least once (a send retried after its response was lost
            // sends twice): a copy of an alloc already here is ignored, as the agent does.
            if !out.iter().any(|o| o.alloc_id == a.alloc_id) {
                out.push(a);
            }
        }
    }
    out
}

pub async fn service_original_story(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let reg = worker(&l, &pool, 10).await;
    let w = reg.worker.worker_id.clone();
    assert!(reg.queue_url.contains(&w.to_string()));

    // The worker's token acts for it, and only for it.
    let me = l.authenticate(&reg.token).await.unwrap();
    assert_eq!(me, Principal::Worker { pool: pool.pool_id.clone(), worker: w.clone() });
    assert!(matches!(l.authenticate("nope").await, Err(Error::Unauthorized)));
    assert!(matches!(l.authenticate(&format!("{}x", reg.token)).await, Err(Error::Unauthorized)));
    assert!(matches!(l.submit_eval(&me, &pool.pool_id, new_eval(1, None)).await, Err(Error::Forbidden(_))));
    assert!(matches!(
        l.heartbeat(&me, &pool.pool_id, &WorkerId::generate(), hb_req(&[], &[])).await,
        Err(Error::Forbidden(_))
    ));

    l.heartbeat(&me, &pool.pool_id, &w, hb_req(&["d1"], &[])).await.unwrap();
    let sub = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(3, Some("d1"))).await.unwrap();
    assert!(sub.created);
    assert_eq!(sub.eval.status, EvalStatus::Queued);

    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    let got = poll_n(&l, &pool, &w, 1).await;
    let a = &got[0];
    assert_eq!((&a.eval_id, a.size, a.dataset.as_deref(), a.attempt), (&sub.eval.eval_id, 3, Some("d1"), 1));
    assert_eq!(free_of(&l, &pool, &w).await, 7);
    let e = l.eval(&ADMIN, &pool.pool_id, &sub.eval.eval_id).await.unwrap();
    assert_eq!(
        (e.status, e.worker_id.as_ref(), e.alloc_id.as_ref()),
        (EvalStatus::Placed, Some(&w), Some(&a.alloc_id))
    );

    let stop = l.heartbeat(&me, &pool.pool_id, &w, hb_req(&["d1"], std::slice::from_ref(&a.alloc_id))).await.unwrap();
    assert!(stop.is_empty());
    let (done, eval) = l.finish_alloc(&me, &pool.pool_id, &a.alloc_id, complete(0)).await.unwrap();
    assert_eq!(done, FinishOutcome::Released(Some(EvalStatus::Complete)));
    let eval = eval.unwrap();
    assert_eq!((eval.status, eval.exit_code, eval.output.as_deref()), (EvalStatus::Complete, Some(0), Some("done")));
    assert_eq!(free_of(&l, &pool, &w).await, 10);
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
}

pub async fn service_locality_and_strategies(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w1 = worker(&l, &pool, 10).await.worker.worker_id;
    let w2 = worker(&l, &pool, 10).await.worker.worker_id;
    l.heartbeat(&ADMIN, &pool.pool_id, &w2, hb_req(&["d1"], &[])).await.unwrap();
    let e = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(2, Some("d1"))).await.unwrap().eval;
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    assert_eq!(
        l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap().worker_id,
        Some(w2.clone()),
        "the replica holder wins"
    );
    // No dataset: spread goes to the worker with the most free capacity.
    let e = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(2, None)).await.unwrap().eval;
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    assert_eq!(l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap().worker_id, Some(w1.clone()));

    let bp = l.create_pool(&ADMIN, Strategy::Binpack).await.unwrap();
    let big = worker(&l, &bp, 10).await.worker.worker_id;
    let small = worker(&l, &bp, 4).await.worker.worker_id;
    let e1 = l.submit_eval(&ADMIN, &bp.pool_id, new_eval(3, None)).await.unwrap().eval;
    schedule_until(&l, &bp, Duration::from_secs(10), |s| s.placed == 1).await;
    assert_eq!(
        l.eval(&ADMIN, &bp.pool_id, &e1.eval_id).await.unwrap().worker_id,
        Some(small.clone()),
        "binpack: least free that fits"
    );
    let e2 = l.submit_eval(&ADMIN, &bp.pool_id, new_eval(3, None)).await.unwrap().eval;
    schedule_until(&l, &bp, Duration::from_secs(10), |s| s.placed == 1).await;
    assert_eq!(l.eval(&ADMIN, &bp.pool_id, &e2.eval_id).await.unwrap().worker_id, Some(big.clone()));
}

pub async fn service_retry_then_dead(b: Backend) {
    let settings = Settings { max_retry: 2, ..Settings::default() };
    let (l, clock) = lineup_with(&b, settings);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 5).await.worker.worker_id;
    let e = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.unwrap().eval;

    for attempt in 1..=3u32 {
        schedule_until(&l, &pool, Duration::from_secs(15), |s| s.placed == 1).await;
        let got = l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap();
        assert_eq!((got.status, got.attempt), (EvalStatus::Placed, attempt));
        // The worker heartbeats but never lists the alloc: it expires.
        clock.advance_secs(31);
        l.heartbeat(&ADMIN, &pool.pool_id, &w, hb_req(&[], &[])).await.unwrap();
        let sum = l.release_pass().await.unwrap();
        assert_eq!(sum.allocs_released, 1, "attempt {attempt}");
        assert_eq!(free_of(&l, &pool, &w).await, 5);
        let got = l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap();
        if attempt < 3 {
            assert_eq!((got.status, got.attempt), (EvalStatus::Failed, attempt + 1));
            assert!(got.reason.as_deref().unwrap_or("").contains("expired"), "{:?}", got.reason);
        } else {
            assert_eq!((got.status, got.attempt), (EvalStatus::Dead, 3), "retried MAX_RETRY times, then dead");
        }
    }
    let dead = l.evals(&ADMIN, &pool.pool_id, Some(EvalStatus::Dead), 100).await.unwrap();
    assert_eq!(dead.iter().map(|e| &e.eval_id).collect::<Vec<_>>(), vec![&e.eval_id]);
    // The dead-letter queue heard about it, where the backend keeps one.
    let dlq = l.settings.dead_letter_queue();
    let got = b.queues.receive(&dlq, 10, Duration::from_secs(2), Duration::from_secs(30)).await;
    if b.queues.announces_dead_letters() {
        assert!(got.unwrap().iter().any(|m| m.body.contains(e.eval_id.as_str())));
    } else {
        assert!(matches!(got, Err(Error::QueueGone(_))), "no dead-letter queue: {got:?}");
    }
    // Nothing left to place.
    let s = l.schedule_pass(&pool, &fast_opts()).await.unwrap();
    assert_eq!(s.placed, 0);
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
}

pub async fn service_expired_worker_evals_move(b: Backend) {
    let (l, clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w1 = worker(&l, &pool, 5).await.worker.worker_id;
    let e = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(2, None)).await.unwrap().eval;
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    let w2 = worker(&l, &pool, 5).await.worker.worker_id;
    clock.advance_secs(40);
    // w2 keeps heartbeating, w1 has gone quiet.
    l.heartbeat(&ADMIN, &pool.pool_id, &w2, hb_req(&[], &[])).await.unwrap();
    clock.advance_secs(21);
    assert!(matches!(l.heartbeat(&ADMIN, &pool.pool_id, &w1, hb_req(&[], &[])).await, Err(Error::Expired(_))));
    let sum = l.release_pass().await.unwrap();
    assert_eq!((sum.workers_removed, sum.allocs_released), (1, 1));
    assert_eq!(l.store.get_worker(&pool.pool_id, &w1).await.unwrap(), None);
    assert!(matches!(
        b.queues.receive(&l.settings.worker_queue(&pool.pool_id, &w1), 1, Duration::ZERO, Duration::from_secs(1)).await,
        Err(Error::QueueGone(_))
    ));
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    let got = l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap();
    assert_eq!((got.status, got.attempt, got.worker_id.as_ref()), (EvalStatus::Placed, 2, Some(&w2)));
    // Idempotent: a second pass finds nothing to do.
    assert_eq!(l.release_pass().await.unwrap().allocs_released, 0);
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
}

pub async fn service_redelivered_message_placed_once(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 10).await.worker.worker_id;
    let e = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(2, None)).await.unwrap().eval;
    // The same message again, as SQS may deliver it twice.
    let body = serde_json::to_string(&EvalMessage::of(&e)).unwrap();
    b.queues.send(&l.settings.pool_queue(&pool.pool_id), &[body]).await.unwrap();
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.received >= 2).await;
    assert_eq!(l.store.live_allocs(&pool.pool_id, None).await.unwrap().len(), 1, "placed once");
    assert_eq!(free_of(&l, &pool, &w).await, 8);
    let got = poll_n(&l, &pool, &w, 1).await;
    assert_eq!(got.len(), 1);
    assert!(l.poll(&ADMIN, &pool.pool_id, &w, Duration::from_millis(300), 10).await.unwrap().is_empty());
}

type AllocsByEval = HashMap<EvalId, std::collections::HashSet<AllocId>>;

pub async fn service_concurrent_schedulers(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let mut workers = Vec::new();
    for i in 0..10u32 {
        workers.push(worker(&l, &pool, 1 + (i * 7) % 8).await.worker.worker_id);
    }
    workers.push(worker(&l, &pool, 8).await.worker.worker_id);
    const N: usize = 150;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1 + (i as u32 % 4), None)).await.unwrap().eval.eval_id);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut schedulers = Vec::new();
    for _ in 0..2 {
        let (l, pool, stop) = (l.clone(), pool.clone(), stop.clone());
        schedulers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                l.schedule_pass(&pool, &fast_opts()).await.unwrap();
            }
        }));
    }
    // Workers, each on its own task: long-poll, complete what arrives.
    // Alloc ids delivered per eval: SQS may deliver one alloc twice (a send retried after
    // its response was lost), which the agent ignores; two allocs would be two placements.
    let delivered: Arc<std::sync::Mutex<AllocsByEval>> = Arc::default();
    let mut runners = Vec::new();
    for w in workers.clone() {
        let (l, pool, delivered) = (l.clone(), pool.clone(), delivered.clone());
        runners.push(tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(120);
            while delivered.lock().unwrap().len() < N && tokio::time::Instant::now() < end {
                for a in l.poll(&ADMIN, &pool.pool_id, &w, Duration::from_secs(1), 10).await.unwrap() {
                    delivered.lock().unwrap().entry(a.eval_id.clone()).or_default().insert(a.alloc_id.clone());
                    l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(0)).await.unwrap();
                }
            }
        }));
    }
    for r in runners {
        r.await.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), N, "every eval delivered");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in schedulers {
        s.await.unwrap();
    }
    assert!(delivered.values().all(|allocs| allocs.len() == 1), "an eval was placed twice");
    for id in &ids {
        let e = l.eval(&ADMIN, &pool.pool_id, id).await.unwrap();
        assert_eq!((e.status, e.attempt), (EvalStatus::Complete, 1));
    }
    for w in l.store.list_workers(&pool.pool_id).await.unwrap() {
        assert_eq!(w.free, w.capacity, "capacity fully back");
    }
}

pub async fn service_cancel(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let queued = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.unwrap().eval;
    let CancelOutcome::Cancelled(c) = l.cancel_eval(&ADMIN, &pool.pool_id, &queued.eval_id).await.unwrap() else {
        panic!("queued eval not cancelled")
    };
    assert_eq!(c.status, EvalStatus::Cancelled);
    let w = worker(&l, &pool, 4).await.worker.worker_id;
    let s = l.schedule_pass(&pool, &fast_opts()).await.unwrap();
    // One message, or two when the submit's send was retried after a lost response.
    assert_eq!(s.placed, 0, "a cancelled eval is never placed");
    assert!(s.dropped >= 1, "its message is dropped: {s:?}");

    let e = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(3, None)).await.unwrap().eval;
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    assert!(matches!(l.cancel_eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap(), CancelOutcome::Cancelled(_)));
    // The capacity stays held until the worker has stopped it.
    assert_eq!(free_of(&l, &pool, &w).await, 1);
    let stop = l.heartbeat(&ADMIN, &pool.pool_id, &w, hb_req(&[], std::slice::from_ref(&a.alloc_id))).await.unwrap();
    assert_eq!(stop, vec![a.alloc_id.clone()], "the heartbeat tells the worker to stop it");
    l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, Finish::Fail { reason: "killed".into() }).await.unwrap();
    assert_eq!(free_of(&l, &pool, &w).await, 4);
    let got = l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap();
    assert_eq!(got.status, EvalStatus::Cancelled, "a cancelled eval is not retried");
    assert!(matches!(
        l.cancel_eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap(),
        CancelOutcome::AlreadyFinished(_)
    ));
    assert!(matches!(l.cancel_eval(&ADMIN, &pool.pool_id, &EvalId::generate()).await, Err(Error::NotFound(_))));
}

pub async fn service_idempotency(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let mk = || NewEval {
        size: 1,
        dataset: None,
        payload: Some(serde_json::json!({"x": 1})),
        priority: Priority::DEFAULT,
        idempotency_key: Some("job-42".into()),
    };
    let first = l.submit_eval(&ADMIN, &pool.pool_id, mk()).await.unwrap();
    let again = l.submit_eval(&ADMIN, &pool.pool_id, mk()).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.eval.eval_id, again.eval.eval_id);
    let (_, stats) = l.pool(&ADMIN, &pool.pool_id).await.unwrap();
    assert_eq!(stats.queued, 1);
    // The key reused for another eval: refused, nothing created.
    let other = NewEval { size: 2, ..mk() };
    assert!(matches!(l.submit_eval(&ADMIN, &pool.pool_id, other).await, Err(Error::IdempotencyMismatch(_))));
    assert_eq!(l.pool(&ADMIN, &pool.pool_id).await.unwrap().1.queued, 1);
}

pub async fn service_disband_in_flight(b: Backend) {
    let (l, clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 2).await.worker.worker_id;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.unwrap().eval.eval_id);
    }
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 2 && s.blocked >= 1).await;
    let allocs = poll_n(&l, &pool, &w, 2).await;

    l.disband_pool(&ADMIN, &pool.pool_id).await.unwrap();
    l.disband_pool(&ADMIN, &pool.pool_id).await.unwrap();
    for id in &ids {
        assert_eq!(l.eval(&ADMIN, &pool.pool_id, id).await.unwrap().status, EvalStatus::Cancelled);
    }
    // A pool loop (what `schedule` runs) sees the queue gone, ends, and its process
    // keeps nothing of the pool.
    let mut ps = lineup_core::service::PoolScheduler::new(l.clone(), pool.clone(), fast_opts());
    assert!(l.holds_pool(&pool.pool_id));
    assert!(ps.step(Duration::from_secs(1)).await.unwrap().pool_gone);
    assert!(ps.gone && !l.holds_pool(&pool.pool_id), "a disbanded pool's held set is kept");
    let s = l.schedule_pass(&pool, &fast_opts()).await.unwrap();
    assert!(s.pool_gone, "the scheduler sees the queue gone and stops, no error loop");
    assert!(matches!(l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await, Err(Error::Disbanded(_))));
    assert!(matches!(l.register_worker(&ADMIN, &pool.pool_id, 1).await, Err(Error::Disbanded(_))));
    assert!(matches!(l.heartbeat(&ADMIN, &pool.pool_id, &w, hb_req(&[], &[])).await, Err(Error::Disbanded(_))));
    // Workers still report what they were running; the evals stay cancelled.
    l.finish_alloc(&ADMIN, &pool.pool_id, &allocs[0].alloc_id, complete(0)).await.unwrap();
    assert_eq!(l.eval(&ADMIN, &pool.pool_id, &allocs[0].eval_id).await.unwrap().status, EvalStatus::Cancelled);
    // The other alloc expires; still cancelled, capacity back.
    // A submit that raced the disband: its message sent before the queue went, its
    // record written after disband's sweep. A store that checks the pool refuses it;
    // otherwise the releaser cancels the straggler.
    let straggler = Eval::queued(pool.pool_id.clone(), 1, None, None, Priority::DEFAULT, None, l.now());
    let refused = matches!(l.store.insert_eval(&straggler).await, Err(Error::Disbanded(_)));
    assert_eq!(refused, l.store.insert_checks_pool());
    clock.advance_secs(31);
    l.release_pass().await.unwrap();
    assert_eq!(l.eval(&ADMIN, &pool.pool_id, &allocs[1].eval_id).await.unwrap().status, EvalStatus::Cancelled);
    if !refused {
        let e = l.eval(&ADMIN, &pool.pool_id, &straggler.eval_id).await.unwrap();
        assert_eq!(e.status, EvalStatus::Cancelled, "{e:?}");
    }
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
    // Records go after POOL_TTL.
    clock.advance_secs(l.settings.pool_ttl + 1);
    assert_eq!(l.release_pass().await.unwrap().pools_purged, 1);
    assert!(matches!(l.pool(&ADMIN, &pool.pool_id).await, Err(Error::NotFound(_))));
}

pub async fn service_blocked_reason_and_wake(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    worker(&l, &pool, 2).await;
    let e = l.submit_eval(&ADMIN, &pool.pool_id, new_eval(5, None)).await.unwrap().eval;
    // At least once: a submit whose send was retried after a lost response leaves two
    // messages, both blocked.
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.blocked >= 1).await;
    let got = l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap();
    assert_eq!(got.status, EvalStatus::Queued);
    let reason = got.reason.unwrap_or_default();
    assert!(reason.starts_with("blocked: no live worker with 5 free; largest free is 2"), "{reason}");
    // Capacity appears: the blocked eval is placed promptly.
    let w = worker(&l, &pool, 8).await.worker.worker_id;
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    let got = l.eval(&ADMIN, &pool.pool_id, &e.eval_id).await.unwrap();
    assert_eq!((got.status, got.worker_id.as_ref(), got.reason), (EvalStatus::Placed, Some(&w), None));
}

pub async fn service_complete_twice(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let w = worker(&l, &pool, 3).await.worker.worker_id;
    l.submit_eval(&ADMIN, &pool.pool_id, new_eval(3, None)).await.unwrap();
    schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed == 1).await;
    let a = poll_n(&l, &pool, &w, 1).await.remove(0);
    let (first, _) = l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(3)).await.unwrap();
    let (second, eval) = l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(0)).await.unwrap();
    assert_eq!(first, FinishOutcome::Released(Some(EvalStatus::Complete)));
    assert_eq!(second, FinishOutcome::AlreadyReleased);
    assert_eq!(eval.unwrap().exit_code, Some(3), "the second completion changes nothing");
    assert_eq!(free_of(&l, &pool, &w).await, 3);
    assert!(matches!(
        l.finish_alloc(&ADMIN, &pool.pool_id, &AllocId::generate(), complete(0)).await,
        Err(Error::NotFound(_))
    ));
}

/// A scheduler loop holds blocked evals instead of cycling them through the queue; when
/// capacity appears they are placed within a recheck, and a message is never placed twice.
pub async fn service_held_evals_placed_when_capacity_appears(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    worker(&l, &pool, 1).await;
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(l.submit_eval(&ADMIN, &pool.pool_id, new_eval(2, None)).await.unwrap().eval.eval_id);
    }
    let mut ps = lineup_core::service::PoolScheduler::new(l.clone(), pool.clone(), fast_opts());
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    // Until all are held and a pass finds nothing more (a duplicate message, as a send
    // retried after a lost response leaves, is received and deleted, not held twice).
    let mut received = 1;
    while ps.held() < 25 || received > 0 {
        assert!(tokio::time::Instant::now() < end, "only {} held", ps.held());
        received = ps.step(Duration::from_secs(1)).await.unwrap().received;
    }
    assert_eq!(ps.held(), 25);
    // All blocked, all held: the queue has nothing visible.
    let q = l.settings.pool_queue(&pool.pool_id);
    assert!(b.queues.receive(&q, 10, Duration::ZERO, Duration::from_secs(30)).await.unwrap().is_empty());
    let w = worker(&l, &pool, 100).await.worker.worker_id;
    let started = tokio::time::Instant::now();
    let mut placed = 0;
    while placed < 25 {
        assert!(tokio::time::Instant::now() < end, "only {placed} placed");
        placed += ps.step(Duration::from_secs(1)).await.unwrap().placed;
    }
    assert!(started.elapsed() < Duration::from_secs(10), "placed {:?} after capacity appeared", started.elapsed());
    assert_eq!(ps.held(), 0);
    assert_eq!(free_of(&l, &pool, &w).await, 50);
    for id in &ids {
        assert_eq!(l.eval(&ADMIN, &pool.pool_id, id).await.unwrap().status, EvalStatus::Placed);
    }
    // Handing back an empty hold is fine; nothing is left to place.
    ps.release_held().await.unwrap();
    assert_eq!(ps.step(Duration::from_secs(1)).await.unwrap().placed, 0);
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
}

/// No eval is stranded: when a pool queue loses its messages (an operator's purge,
/// SQS's retention), the releaser re-sends them; an eval waiting for a week gets its
/// message again before the retention could drop it; and the duplicates this makes are
/// never placed twice.
pub async fn service_stranded_evals_get_their_message_back(b: Backend) {
    use lineup_core::service::{RECONCILE_EVERY_MS, RESEND_AFTER_MS};
    let (l, clock) = lineup(&b);
    let pool = pool_with(&l, Strategy::Spread).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.unwrap().eval.eval_id);
    }
    // Purge the pool queue, as an operator might.
    let q = l.settings.pool_queue(&pool.pool_id);
    let mut purged = 0;
    while purged < 5 {
        let got = b.queues.receive(&q, 10, Duration::from_secs(1), Duration::from_secs(300)).await.unwrap();
        assert!(!got.is_empty(), "only {purged} messages to purge");
        b.queues.delete(&q, &got.iter().map(|m| m.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
        purged += got.len();
    }
    // Not at once (a message may be in flight for a moment), but within the next round.
    assert_eq!(l.release_pass().await.unwrap().messages_resent, 0);
    clock.advance_secs((RECONCILE_EVERY_MS / 1000 + 1) as u64);
    assert_eq!(l.release_pass().await.unwrap().messages_resent, 5);
    // Now the queue holds them: nothing more until a week has passed.
    clock.advance_secs((RECONCILE_EVERY_MS / 1000 + 1) as u64);
    assert_eq!(l.release_pass().await.unwrap().messages_resent, 0);
    clock.advance_secs((RESEND_AFTER_MS / 1000) as u64);
    assert_eq!(l.release_pass().await.unwrap().messages_resent, 5, "a week old: re-sent before retention ends");

    // Two messages per eval now; each eval is placed once.
    let w = worker(&l, &pool, 10).await.worker.worker_id;
    schedule_until(&l, &pool, Duration::from_secs(20), |s| s.placed == 5).await;
    let allocs = poll_n(&l, &pool, &w, 5).await;
    let placed: std::collections::HashSet<_> = allocs.iter().map(|a| a.eval_id.clone()).collect();
    assert_eq!(placed.len(), 5);
    for _ in 0..3 {
        assert_eq!(l.schedule_pass(&pool, &fast_opts()).await.unwrap().placed, 0, "a duplicate placed");
    }
    for id in &ids {
        let e = l.eval(&ADMIN, &pool.pool_id, id).await.unwrap();
        assert_eq!((e.status, e.attempt), (EvalStatus::Placed, 1));
    }
    assert_capacity_conserved(l.store.as_ref(), &pool.pool_id).await;
}

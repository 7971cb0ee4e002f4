//! Admission conformance: priorities, `max_running` and health hold on every backend,
//! at the store and through the real scheduler loop.

use std::time::Duration;

use lineup_core::service::{NewEval, NewPool, PoolScheduler};
use lineup_core::*;

use crate::service::{poll_n, pool_with, worker};
use crate::store::{alloc_for, eval_rec, place_new, placed, setup};
use crate::{assert_capacity_conserved, complete, fast_opts, lineup, new_eval, Backend, ADMIN, T0};

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

/// `max_running` at the store: a counted claim holds only under the limit and at the
/// current limits version; setting a cap counts the allocs already live; releases take
/// counted allocs off; a claim made against older limits loses, capped or not.
pub async fn admission_store_max_running_is_atomic(b: Backend) {
    let s = b.store.as_ref();
    let (p, w) = setup(&b, 10).await;
    let pool = &p.pool_id;
    // Placed before any cap: not counted.
    let mut before = Vec::new();
    for _ in 0..3 {
        before.push(place_new(s, pool, &w, 1, T0 + 60_000).await.1);
    }
    let capped = s.set_max_running(pool, Some(2)).await.unwrap();
    let l = &capped.limits;
    assert_eq!((l.max_running, l.running, l.counting), (Some(2), 3, false), "the live allocs are counted");
    assert!(l.version > p.limits.version);

    let w = &w;
    let attempt = |claim: Claim| async move {
        let e = eval_rec(pool, 1);
        s.insert_eval(&e).await.unwrap();
        let mut a = alloc_for(&e, w, T0 + 60_000);
        a.counted = claim.limit.is_some();
        s.place(&a, &placed(&e, &a), 1, claim, T0).await.map(|()| a)
    };
    // Older limits lose, with or without a limit of their own.
    assert!(attempt(Claim::default()).await.unwrap_err().is_conflict());
    assert!(attempt(Claim { version: p.limits.version, limit: Some(5) }).await.unwrap_err().is_conflict());
    let claim = Claim { version: l.version, limit: Some(2) };
    assert!(attempt(claim).await.unwrap_err().is_conflict(), "3 running of 2");
    // Two released (as read now: counted), and one more fits, then none.
    for a in &before[..2] {
        let a = s.get_alloc(pool, &a.alloc_id).await.unwrap().unwrap();
        assert!(a.counted);
        s.release(&a, None, None).await.unwrap();
    }
    // A release by a stale read (not counted, but counted since) takes the count off
    // all the same: as stored (embedded), or after a conflict and a fresh read (DynamoDB).
    if let Err(e) = s.release(&before[2], None, None).await {
        assert!(e.is_conflict(), "{e}");
        let a = s.get_alloc(pool, &before[2].alloc_id).await.unwrap().unwrap();
        s.release(&a, None, None).await.unwrap();
    }
    assert_eq!(s.get_pool(pool).await.unwrap().unwrap().limits.running, 0);
    attempt(claim).await.unwrap();
    let third = attempt(claim).await.unwrap();
    assert!(attempt(claim).await.unwrap_err().is_conflict(), "2 running of 2");
    assert_eq!(s.get_pool(pool).await.unwrap().unwrap().limits.running, 2);

    // Cap removed: placements at the new version are not counted; counted ones still
    // come off when released.
    let open = s.set_max_running(pool, None).await.unwrap();
    assert_eq!((open.limits.max_running, open.limits.running), (None, 2));
    let free = attempt(Claim { version: open.limits.version, limit: None }).await.unwrap();
    s.release(&third, None, None).await.unwrap();
    s.release(&free, None, None).await.unwrap();
    assert_eq!(s.get_pool(pool).await.unwrap().unwrap().limits.running, 1);
    assert_capacity_conserved(s, pool).await;
}

/// With several schedulers at once, a pool never has more allocs live than its
/// `max_running`, and a cap set while allocs run counts them too.
pub async fn admission_max_running_never_exceeded(b: Backend) {
    let (l, _clock) = lineup(&b);
    let pool = l.create_pool_with(&ADMIN, NewPool { max_running: Some(3), ..Default::default() }).await.unwrap();
    assert_eq!(pool.limits.max_running, Some(3));
    let workers = [worker(&l, &pool, 10).await.worker.worker_id, worker(&l, &pool, 10).await.worker.worker_id];
    const N: usize = 20;
    for _ in 0..N {
        submit(&l, &pool, 50).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut schedulers = Vec::new();
    for _ in 0..2 {
        let (l, pool, stop) = (l.clone(), pool.clone(), stop.clone());
        schedulers.push(tokio::spawn(async move {
            let mut ps = PoolScheduler::new(l, pool, fast_opts());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                ps.step(Duration::from_millis(200)).await.unwrap();
            }
            ps.release_held().await.unwrap();
        }));
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut done, mut peak) = (0, 0);
    while done < N {
        assert!(tokio::time::Instant::now() < end, "only {done} of {N} complete");
        let live = l.store.live_allocs(&pool.pool_id, None).await.unwrap();
        peak = peak.max(live.len());
        assert!(live.len() <= 3, "{} allocs live with max_running 3", live.len());
        // Complete one at a time once the cap is reached (or all that is left runs),
        // so the schedulers race for each freed slot.
        match live.first().filter(|_| live.len() >= 3.min(N - done)) {
            Some(a) => {
                l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(0)).await.unwrap();
                done += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in schedulers {
        s.await.unwrap();
    }
    assert_eq!(peak, 3, "the cap was reached");
    let p = l.store.get_pool(&pool.pool_id).await.unwrap().unwrap();
    assert_eq!(p.limits.running, 0, "every counted alloc came off");
    for w in &workers {
        let w = l.store.get_worker(&pool.pool_id, w).await.unwrap().unwrap();
        assert_eq!(w.free, w.capacity);
    }
}

/// The blocked reason names the limit that holds; a pushed health level lowers the
/// limit until its TTL ends; a lower level never stops what runs.
pub async fn admission_health_throttles_and_lapses(b: Backend) {
    let (l, clock) = lineup(&b);
    let pool = l.create_pool_with(&ADMIN, NewPool { max_running: Some(4), ..Default::default() }).await.unwrap();
    let w = worker(&l, &pool, 10).await.worker.worker_id;
    let ids: Vec<EvalId> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(submit(&l, &pool, 50).await);
        }
        v
    };
    crate::schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed >= 4).await;
    crate::schedule_until(&l, &pool, Duration::from_secs(10), |s| s.blocked >= 1).await;
    let waiting = l.eval(&ADMIN, &pool.pool_id, &ids[5]).await.unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("capped: 4 running of max_running 4"));
    // Health 2 → limit 2: the 4 running keep running.
    let p = l.push_health(&ADMIN, &pool.pool_id, 2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(p.limits.limit(l.now(), None).unwrap().limit, 2);
    let running = poll_n(&l, &pool, &w, 4).await;
    for a in &running[..3] {
        l.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(0)).await.unwrap();
    }
    // 1 running of limit 2: exactly one more goes.
    crate::schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed >= 1).await;
    crate::schedule_until(&l, &pool, Duration::from_secs(10), |s| s.blocked >= 1).await;
    assert_eq!(l.store.live_allocs(&pool.pool_id, None).await.unwrap().len(), 2);
    let queued = l.evals(&ADMIN, &pool.pool_id, Some(EvalStatus::Queued), 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].reason.as_deref(),
        Some("throttled: health 2 (pushed) → limit 2 of max_running 4"),
        "the reason names the health level"
    );
    // The TTL ends without a new report: healthy again, the last one goes. (Within the
    // worker's and the allocs' TTLs, which the manual clock also moves.)
    clock.advance_secs(6);
    // Its message is parked with a backoff in the meantime: allow for it.
    crate::schedule_until(&l, &pool, Duration::from_secs(40), |s| s.placed >= 1).await;
    assert_eq!(l.store.live_allocs(&pool.pool_id, None).await.unwrap().len(), 3);
}

/// A probe whose values the test sets, by check name.
#[derive(Default)]
pub struct FakeProbe {
    values: std::sync::Mutex<std::collections::HashMap<String, f64>>,
}

impl FakeProbe {
    pub fn set(&self, check: &str, v: f64) {
        self.values.lock().unwrap().insert(check.to_owned(), v);
    }
}

#[async_trait::async_trait]
impl lineup_core::health::Probe for FakeProbe {
    async fn read(&self, check: &lineup_core::health::HealthCheck) -> Result<f64> {
        self.values.lock().unwrap().get(&check.name).copied().ok_or_else(|| Error::Backend("no value".into()))
    }
}

/// A pulled check throttles like a pushed level, says which check, is read at most once
/// per period, and lets go when its value does.
pub async fn admission_pulled_health_throttles(b: Backend) {
    let (l, clock) = lineup(&b);
    let probe = std::sync::Arc::new(FakeProbe::default());
    let l = l.with_probe(probe.clone());
    probe.set("load", 75.0);
    let check: lineup_core::health::HealthCheck = serde_json::from_value(serde_json::json!({
        "name": "load", "url": "http://probe.test/load", "period": 10,
        "feelings": {"1": 90, "2": 70}, "comparison": ">="
    }))
    .unwrap();
    let pool = l
        .create_pool_with(
            &ADMIN,
            NewPool { max_running: Some(4), health_checks: Some(vec![check]), ..Default::default() },
        )
        .await
        .unwrap();
    worker(&l, &pool, 10).await;
    for _ in 0..6 {
        submit(&l, &pool, 50).await;
    }
    crate::schedule_until(&l, &pool, Duration::from_secs(10), |s| s.placed >= 2).await;
    crate::schedule_until(&l, &pool, Duration::from_secs(10), |s| s.blocked >= 1).await;
    assert_eq!(l.store.live_allocs(&pool.pool_id, None).await.unwrap().len(), 2, "limit floor(0.5 × 4)");
    let queued = l.evals(&ADMIN, &pool.pool_id, Some(EvalStatus::Queued), 10).await.unwrap();
    assert!(
        queued
            .iter()
            .any(|e| e.reason.as_deref()
                == Some("throttled: health 2 (check load = 75 ≥ 70) → limit 2 of max_running 4")),
        "{:?}",
        queued.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()
    );
    // Healthy again, but the reading is cached for its period...
    probe.set("load", 10.0);
    let readings = l.pulled_health(&l.store.get_pool(&pool.pool_id).await.unwrap().unwrap()).await;
    assert_eq!((readings[0].value, readings[0].level), (Some(75.0), 2), "read at most once per period");
    // ...after which the next read lets two more through.
    clock.advance_secs(11);
    let readings = l.pulled_health(&l.store.get_pool(&pool.pool_id).await.unwrap().unwrap()).await;
    assert_eq!((readings[0].value, readings[0].level), (Some(10.0), 4));
    crate::schedule_until(&l, &pool, Duration::from_secs(40), |s| s.placed >= 2).await;
    assert_eq!(l.store.live_allocs(&pool.pool_id, None).await.unwrap().len(), 4);
}

//! Overlapping schedulers and releasers on the AWS backend (moto, real SDK): two of
//! each on one pool with 500 evals, while workers complete most allocs and silently
//! drop some (which expire and are retried). No over-allocation, no eval placed twice
//! for the same attempt, capacity conserved, every eval accounted for. Then again, with
//! fewer evals, while moto throttles, fails, cancels transactions for conflicts and
//! loses responses after applying writes (`Moto::faulty`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::{complete, new_eval, ADMIN};
use lineup_core::service::SchedulerOptions;
use lineup_core::*;

const WORKERS: usize = 10;

/// Alloc ids delivered, by eval and attempt.
type Deliveries = HashMap<(EvalId, u32), std::collections::HashSet<AllocId>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_two_releasers_500_evals() {
    race(Moto::shared(), 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_two_releasers_under_injected_faults() {
    let moto = Moto::faulty();
    // `make soak` runs it bigger, over several fault seeds.
    let evals = std::env::var("LINEUP_SOAK_EVALS").ok().and_then(|n| n.parse().ok()).unwrap_or(120);
    race(moto, evals).await;
    let injected = moto.injected();
    println!("faults injected: {injected:?}");
    for kind in ["conflict", "throttle", "500", "lost", "sqs-lost"] {
        assert!(injected.get(kind).copied().unwrap_or(0) > 0, "no {kind} was injected: {injected:?}");
    }
}

async fn race(moto: &Moto, evals: usize) {
    #[allow(non_snake_case)]
    let EVALS = evals;
    let prefix = format!("r{}", PoolId::generate());
    let backend = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    create_tables(backend.dynamodb(), backend.tables()).await.unwrap();
    let settings = Settings { deployment: prefix.clone(), alloc_ttl: 4, max_retry: 20, ..Settings::default() };
    // Four independent service instances, as four Lambda invocations would be.
    let mk = || Lineup::new(backend.clone(), backend.clone(), Arc::new(SystemClock), settings.clone(), "t");
    let l = mk();
    l.init().await.unwrap();
    let pool = l.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(l.register_worker(&ADMIN, &pool.pool_id, 8).await.unwrap().worker);
    }
    let mut submitters = Vec::new();
    for t in 0..4 {
        let (l, pool) = (mk(), pool.pool_id.clone());
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EVALS / 4 {
                ids.push(
                    l.submit_eval(&ADMIN, &pool, new_eval(1 + ((i + t) % 3) as u32, None)).await.unwrap().eval.eval_id,
                );
            }
            ids
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (l, p, st) = (mk(), pool.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            let (pool, stop) = (p, st);
            let opts = SchedulerOptions { wait: Duration::from_secs(1), ..SchedulerOptions::default() };
            while !stop.load(Ordering::SeqCst) {
                l.schedule_pass(&pool, &opts).await.unwrap();
            }
        }));
        let (l, st) = (mk(), stop.clone());
        loops.push(tokio::spawn(async move {
            let stop = st;
            while !stop.load(Ordering::SeqCst) {
                l.release_pass().await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    // Workers: complete what arrives, except every seventh alloc, which is dropped on
    // the floor (no heartbeat lists it, nobody completes it).
    // Alloc ids delivered per (eval, attempt): one alloc delivered twice is SQS's
    // at-least-once (the agent ignores the copy); two allocs would be a double placement.
    let deliveries: Arc<Mutex<Deliveries>> = Arc::default();
    let mut runners = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let (l, pool, w, deliveries, stop) =
            (mk(), pool.pool_id.clone(), w.worker_id.clone(), deliveries.clone(), stop.clone());
        runners.push(tokio::spawn(async move {
            let mut n = i;
            while !stop.load(Ordering::SeqCst) {
                l.heartbeat(&ADMIN, &pool, &w, lineup_conformance::hb_req(&[], &[])).await.unwrap();
                for a in l.poll(&ADMIN, &pool, &w, Duration::from_secs(1), 10).await.unwrap() {
                    deliveries
                        .lock()
                        .unwrap()
                        .entry((a.eval_id.clone(), a.attempt))
                        .or_default()
                        .insert(a.alloc_id.clone());
                    n += 1;
                    if n % 7 != 0 {
                        l.finish_alloc(&ADMIN, &pool, &a.alloc_id, complete(0)).await.unwrap();
                    }
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for s in submitters {
        ids.extend(s.await.unwrap());
    }
    println!("submitted {EVALS} in {:?}", started.elapsed());
    let end = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        // Never over capacity, as far as any reader can see.
        for w in l.store.list_workers(&pool.pool_id).await.unwrap() {
            assert!(w.free <= w.capacity, "{w:?}");
        }
        let done = l.store.list_evals(&pool.pool_id, Some(EvalStatus::Complete), EVALS + 1).await.unwrap().len();
        if done == EVALS {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "only {done} of {EVALS} complete");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in loops.into_iter().chain(runners) {
        t.await.unwrap();
    }

    let evals = l.store.get_evals(&pool.pool_id, &ids).await.unwrap();
    assert_eq!(evals.len(), EVALS, "every eval accounted for");
    let deliveries = deliveries.lock().unwrap().clone();
    assert!(deliveries.values().all(|allocs| allocs.len() == 1), "an eval was placed twice for one attempt");
    let mut retried = 0;
    for e in &evals {
        assert_eq!(e.status, EvalStatus::Complete);
        // The attempt that completed was delivered (earlier ones may have expired before
        // their worker polled: then the poll skips them, as it should).
        assert!(deliveries.contains_key(&(e.eval_id.clone(), e.attempt)), "{} completed undelivered", e.eval_id);
        assert!(deliveries.keys().filter(|(id, _)| id == &e.eval_id).all(|(_, a)| *a <= e.attempt));
        retried += (e.attempt > 1) as usize;
    }
    assert!(retried > 0, "some allocs expired and were retried");
    assert!(l.store.live_allocs(&pool.pool_id, None).await.unwrap().is_empty());
    for w in l.store.list_workers(&pool.pool_id).await.unwrap() {
        assert_eq!(w.free, w.capacity, "capacity conserved on {}", w.worker_id);
    }
    let calls = backend.calls().snapshot();
    let total: u64 = calls.values().sum();
    println!("all complete after {:?}", started.elapsed());
    println!("AWS calls for {EVALS} evals ({retried} retried), all roles: {total}; by operation: {calls:?}");
}

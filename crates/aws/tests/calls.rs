//! AWS calls per placement, counted by operation: 100 evals on 10 workers, each role on
//! its own clients (as the three functions are), so the scheduler's share is exact.
//! The Go original made about 7 round trips per eval in its scheduler alone.

use std::sync::Arc;
use std::time::Duration;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::{complete, new_eval, ADMIN};
use lineup_core::service::{PoolScheduler, SchedulerOptions};
use lineup_core::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_placement() {
    let moto = Moto::shared();
    let prefix = format!("c{}", PoolId::generate());
    let gateway_b = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    let scheduler_b = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    create_tables(gateway_b.dynamodb(), gateway_b.tables()).await.unwrap();
    let settings = Settings { deployment: prefix, ..Settings::default() };
    let gw = Lineup::new(gateway_b.clone(), gateway_b.clone(), Arc::new(SystemClock), settings.clone(), "t");
    let sched = Lineup::new(scheduler_b.clone(), scheduler_b.clone(), Arc::new(SystemClock), settings, "t");
    gw.init().await.unwrap();
    let pool = gw.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..10 {
        workers.push(gw.register_worker(&ADMIN, &pool.pool_id, 10).await.unwrap().worker.worker_id);
    }
    gateway_b.calls().reset();
    for _ in 0..100 {
        gw.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.unwrap();
    }
    let submit = gateway_b.calls().snapshot();
    gateway_b.calls().reset();

    let mut ps = PoolScheduler::new(
        sched.clone(),
        pool.clone(),
        SchedulerOptions { wait: Duration::from_secs(1), ..Default::default() },
    );
    let mut placed = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while placed < 100 {
        assert!(tokio::time::Instant::now() < end, "only {placed} placed");
        placed += ps.step(Duration::from_secs(1)).await.unwrap().placed;
    }
    let schedule = scheduler_b.calls().snapshot();

    let mut done = 0;
    for w in &workers {
        let allocs = gw.poll(&ADMIN, &pool.pool_id, w, Duration::from_secs(1), 10).await.unwrap();
        for a in allocs {
            gw.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(0)).await.unwrap();
            done += 1;
        }
    }
    assert_eq!(done, 100);
    let work = gateway_b.calls().snapshot();

    let per = |m: &std::collections::BTreeMap<String, u64>| m.values().sum::<u64>() as f64 / 100.0;
    println!("calls per eval: submit {:.2} {submit:?}", per(&submit));
    println!("calls per eval: schedule {:.2} {schedule:?}", per(&schedule));
    println!("calls per eval: poll + complete {:.2} {work:?}", per(&work));
    println!(
        "CALLS_PER_PLACEMENT schedule={:.2} submit={:.2} worker={:.2} total={:.2}",
        per(&schedule),
        per(&submit),
        per(&work),
        per(&submit) + per(&schedule) + per(&work)
    );
    // The scheduler's share: one transaction per pass of ten (spread over ten workers:
    // one claim each), batched receive, read and delete, and a send per worker.
    assert!(per(&schedule) <= 1.6, "scheduler made {:.2} calls per placement: {schedule:?}", per(&schedule));
    assert_eq!(
        schedule.get("DynamoDB.TransactWriteItems"),
        Some(&10),
        "one transaction per pass of ten placements, no lost claims"
    );
    // A poll checks what it hands out in one batch read, not one read per alloc.
    assert_eq!(work.get("DynamoDB.BatchGetItem"), Some(&10), "{work:?}");
}

/// A heartbeat's cost is bounded: 150 listed allocs are renewed in 2 transactions (100
/// each), not 230 writes; a worker token cannot spend more than that per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_renews_allocs_in_batches() {
    use lineup_conformance::{hb, place_new, pool_rec, worker_rec, T0};
    use lineup_core::Store;
    let prefix = format!("hb{}", lineup_core::PoolId::generate());
    let b = lineup_aws::AwsBackend::for_emulator(&lineup_conformance::moto::Moto::shared().endpoint, &prefix).await;
    lineup_aws::create_tables(b.dynamodb(), b.tables()).await.unwrap();
    let now = T0;
    let p = pool_rec(lineup_core::Strategy::Spread);
    b.create_pool(&p).await.unwrap();
    let w = worker_rec(&p.pool_id, 300, now + 60_000);
    b.register_worker(&w).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(place_new(&b, &p.pool_id, &w, 1, now + 1_000).await.1.alloc_id);
    }
    b.calls().reset();
    let stop = b.heartbeat(&hb(&p.pool_id, &w.worker_id, now + 500, &[], &ids)).await.unwrap();
    assert!(stop.is_empty());
    let calls = b.calls().snapshot();
    assert_eq!(calls.get("DynamoDB.TransactWriteItems"), Some(&2), "{calls:?}");
    assert!(b.calls().total() <= 3, "{calls:?}");
}

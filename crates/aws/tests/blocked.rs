//! Blocked evals do not spin on SQS (the Go original re-received them every second,
//! forever): an idle pool holding 100 blocked evals costs a small, fixed number of AWS
//! calls per minute, and capacity that appears gets them placed within one recheck.

use std::sync::Arc;
use std::time::Duration;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::{new_eval, ADMIN};
use lineup_core::service::{PoolScheduler, SchedulerOptions};
use lineup_core::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pool_with_100_blocked_evals_is_cheap_and_wakes_promptly() {
    let prefix = format!("b{}", PoolId::generate());
    let backend = Arc::new(AwsBackend::for_emulator(&Moto::shared().endpoint, &prefix).await);
    create_tables(backend.dynamodb(), backend.tables()).await.unwrap();
    let settings = Settings { deployment: prefix, ..Settings::default() };
    let l = Lineup::new(backend.clone(), backend.clone(), Arc::new(SystemClock), settings, "t");
    l.init().await.unwrap();
    let pool = l.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
    l.register_worker(&ADMIN, &pool.pool_id, 1).await.unwrap();
    for _ in 0..100 {
        l.submit_eval(&ADMIN, &pool.pool_id, new_eval(2, None)).await.unwrap();
    }
    // Production settings: 20 s long polls, a recheck every 5 s.
    let opts = SchedulerOptions { wait: Duration::from_secs(20), ..SchedulerOptions::default() };
    let recheck = opts.recheck;
    let mut ps = PoolScheduler::new(l.clone(), pool.clone(), opts);
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while ps.held() < 100 {
        assert!(tokio::time::Instant::now() < end, "only {} held", ps.held());
        ps.step(Duration::from_secs(20)).await.unwrap();
    }

    // Steady state: count calls over 20 s.
    backend.calls().reset();
    let window = Duration::from_secs(20);
    let start = tokio::time::Instant::now();
    while start.elapsed() < window {
        ps.step(window.saturating_sub(start.elapsed())).await.unwrap();
    }
    let calls = backend.calls().snapshot();
    let per_minute = backend.calls().total() as f64 * 60.0 / start.elapsed().as_secs_f64();
    println!("idle pool, 100 blocked evals: {per_minute:.0} AWS calls/minute: {calls:?}");
    // One candidate query and one receive per recheck, nothing per eval; and one
    // visibility change per 10 held messages every HOLD / 2, which bounds recovery.
    let held = ps.held() as f64;
    let hold = lineup_core::service::HOLD.as_secs_f64();
    let bound = 2.0 * 60.0 / recheck.as_secs_f64() + (held / 10.0).ceil() * 60.0 / (hold / 2.0) + 4.0;
    assert!(per_minute <= bound, "{per_minute:.0} calls/min > {bound}: {calls:?}");
    assert!(!calls.contains_key("DynamoDB.TransactWriteItems"), "{calls:?}");

    // Capacity appears: all 100 placed within a recheck (plus moto's own time).
    let w = l.register_worker(&ADMIN, &pool.pool_id, 200).await.unwrap().worker.worker_id;
    let appeared = tokio::time::Instant::now();
    let mut placed = 0;
    let mut first = None;
    while placed < 100 {
        assert!(appeared.elapsed() < Duration::from_secs(90), "only {placed} placed");
        placed += ps.step(Duration::from_secs(1)).await.unwrap().placed;
        if placed > 0 && first.is_none() {
            first = Some(appeared.elapsed());
        }
    }
    let (first, all) = (first.unwrap_or_default(), appeared.elapsed());
    println!(
        "capacity appeared: first placements after {first:?}, all 100 after {all:?} (moto: ~0.1 s per transaction)"
    );
    // Looked at again within one recheck; the rest is moto's speed.
    assert!(first < recheck + Duration::from_secs(10), "{first:?}");
    assert_eq!(l.store.get_worker(&pool.pool_id, &w).await.unwrap().unwrap().free, 0);
}

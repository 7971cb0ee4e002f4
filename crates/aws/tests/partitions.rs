//! A hot pool on DynamoDB's per-partition limits (moto's partition mode, scaled far
//! down): the wrapper throttles the pool's hot keys as DynamoDB would — with one index
//! shard, its index partitions — single writes and transactions alike, and the AWS
//! backend rides it out: every submit and placement lands, none twice, with the units
//! the docs count (docs/SCALE.md).

use std::sync::Arc;
use std::time::Duration;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::{new_eval, ADMIN};
use lineup_core::service::{PoolScheduler, SchedulerOptions};
use lineup_core::*;

/// moto in partition mode with `spec`, a fresh deployment's tables on it, and a
/// `Lineup` over them (and the deployment's prefix).
async fn metered(spec: &str) -> (Moto, Arc<AwsBackend>, Lineup, String) {
    let moto = Moto::partitioned(spec);
    let prefix = format!("t{}", PoolId::generate());
    let b = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    create_tables(b.dynamodb(), b.tables()).await.unwrap();
    let settings = Settings { deployment: prefix.clone(), ..Default::default() };
    let l = Lineup::new(b.clone(), b.clone(), Arc::new(SystemClock), settings, "t");
    (moto, b, l, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_hot_pool_loses_nothing() {
    // 8 write units a second per key: a submit writes its eval's key 1 and the pool's
    // index shard 2 (`by_status`, `by_created`), a placement moves it in both.
    let (moto, _, l, _) = metered("wcu=8,rcu=24").await;
    l.init().await.unwrap();
    let pool = l.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
    let worker = l.register_worker(&ADMIN, &pool.pool_id, 100).await.unwrap().worker.worker_id;
    moto.units(true);

    // Submits faster than the evals key takes them: throttled, retried, all accepted.
    const N: usize = 30;
    let mut ids = Vec::new();
    let mut refused = 0;
    while ids.len() < N {
        match l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await {
            Ok(s) => ids.push(s.eval.eval_id),
            // Throttled past the SDK's retries (its retry quota runs dry under sustained
            // throttling): a 5xx the client retries after a pause. Never a 4xx.
            Err(Error::Backend(_)) if refused < 2_000 => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("submit refused: {e}"),
        }
    }
    let meter = moto.units(false);
    let throttled: u64 =
        meter["partitions"].as_object().unwrap().values().map(|v| v["throttled"].as_u64().unwrap()).sum();
    assert!(throttled > 0, "the hot key was never throttled: {meter}");

    // Placements throttle too (transactions cancelled with ThrottlingError): all land.
    let mut ps = PoolScheduler::new(
        l.clone(),
        pool.clone(),
        SchedulerOptions { wait: Duration::from_secs(1), ..Default::default() },
    );
    let end = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut placed = 0;
    while placed < N {
        assert!(tokio::time::Instant::now() < end, "only {placed} placed");
        // A pass throttled past every retry leaves its messages to come back.
        if let Ok(p) = ps.step(Duration::from_secs(1)).await {
            placed += p.placed;
        }
    }
    assert_eq!(placed, N, "placed more than once");
    for id in &ids {
        let e = l.store.get_eval(&pool.pool_id, id).await.unwrap().unwrap();
        assert_eq!(e.status, EvalStatus::Placed, "{id}");
    }
    let w = l.store.get_worker(&pool.pool_id, &worker).await.unwrap().unwrap();
    assert_eq!(w.free, 100 - N as u32, "capacity claimed once per eval");
    let meter = moto.units(false);
    let parts = meter["partitions"].as_object().unwrap();
    let sum = |part: &str| -> f64 {
        parts.iter().filter(|(k, _)| k.contains(part)).map(|(_, v)| v["wcu"].as_f64().unwrap()).sum()
    };
    // Every eval on its own key: a submit's plain put (1 unit), a placement's
    // transactional put (2), on keys no other eval shares.
    let eval_keys = parts.keys().filter(|k| k.contains("-evals:")).count();
    assert!(eval_keys >= N, "{eval_keys} eval keys: {meter}");
    assert!(sum("-evals:") >= 3.0 * N as f64, "{meter}");
    // The pool's one index shard takes each eval in at submit and moves it at
    // placement: the hot key of a one-shard pool, and where the throttling was.
    assert!(sum("-evals/by_created:") >= 2.0 * N as f64, "{meter}");
    // And no submit touched the pool item.
    assert_eq!(sum("-pools:"), 0.0, "{meter}");
    // Registrations, each a transaction with a check of the pool item, in a burst the
    // item's budget cannot take: retryable (5xx) while throttled, never a conflict (a
    // throttled transaction was once read as "worker id exists").
    let mut more = 0;
    let mut throttled_registrations = 0;
    while more < 6 {
        match l.register_worker(&ADMIN, &pool.pool_id, 1).await {
            Ok(_) => more += 1,
            Err(Error::Backend(_)) if throttled_registrations < 2_000 => {
                throttled_registrations += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("registration refused: {e}"),
        }
    }
    assert_eq!(l.store.list_workers(&pool.pool_id).await.unwrap().len(), 7);
}

/// The scheduler's and the releaser's sweep of the pools (every few seconds, per
/// invocation) reads eventually consistent: half the read units of the API's listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_sweep_costs_half_the_listing() {
    let (moto, b, l, prefix) = metered("meter").await;
    let pool = l.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
    let scan_units = |meter: serde_json::Value| meter["partitions"][format!("{prefix}-pools:*")]["rcu"].as_f64();

    moto.units(true);
    let listed = b.list_pools().await.unwrap();
    let consistent = scan_units(moto.units(true));
    let swept = b.sweep_pools().await.unwrap();
    let eventual = scan_units(moto.units(true));
    assert_eq!(listed.iter().map(|p| &p.pool_id).collect::<Vec<_>>(), vec![&pool.pool_id]);
    assert_eq!(swept.iter().map(|p| &p.pool_id).collect::<Vec<_>>(), vec![&pool.pool_id]);
    assert_eq!((consistent, eventual), (Some(1.0), Some(0.5)), "one small pool item: 1 unit, or half");
}

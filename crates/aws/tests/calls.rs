//! Bounds on what one request may cost in AWS calls. (Calls per placement over the
//! whole lifecycle are counted in `crates/bench/tests/lifecycle.rs`, the same run
//! `make bench` prints.)

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

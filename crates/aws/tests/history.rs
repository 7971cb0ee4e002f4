//! What DynamoDB's TTL removes, as the AWS backend writes it: a released alloc and an
//! idempotency key carry `purge_at` from the deployment's retention (not a fixed day),
//! and an expired key whose eval is gone is taken over by a new submit instead of
//! blocking its key forever.

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::{eval_rec, place_new, pool_rec, worker_rec, T0};
use lineup_core::*;

const RETENTION: u64 = 3600;

async fn backend() -> AwsBackend {
    let prefix = format!("h{}", PoolId::generate());
    let b = AwsBackend::for_emulator(&Moto::shared().endpoint, &prefix).await;
    create_tables(b.dynamodb(), b.tables()).await.unwrap();
    b.set_history_retention(RETENTION);
    b
}

async fn purge_at_of(b: &AwsBackend, table: &str, pool: &PoolId, local_id: &str) -> Option<i64> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let item = b
        .dynamodb()
        .get_item()
        .table_name(table)
        // Every record is keyed by its own id in its pool (crates/aws/src/keys.rs).
        .key("id", AttributeValue::S(format!("{pool}/{local_id}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("item");
    item.get("purge_at").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_allocs_and_keys_expire_after_the_retention() {
    let b = backend().await;
    let p = pool_rec(Strategy::Spread);
    b.create_pool(&p).await.unwrap();
    let w = worker_rec(&p.pool_id, 4, T0 + 60_000);
    b.register_worker(&w).await.unwrap();
    let lease = T0 + 30_000;
    let (_, a) = place_new(&b, &p.pool_id, &w, 1, lease).await;
    b.release(&a, None, None).await.unwrap();
    let at = purge_at_of(&b, &b.tables().allocs, &p.pool_id, a.alloc_id.as_str()).await;
    assert_eq!(at, Some(lease / 1000 + RETENTION as i64), "a released alloc: its lease end plus the retention");

    // A key: remembered for the retention after its submit.
    let mut keyed = eval_rec(&p.pool_id, 1);
    keyed.idempotency_key = Some("job-7".into());
    assert_eq!(b.insert_eval(&keyed).await.unwrap(), None);
    let key = format!("k#{}", "job-7");
    let at = purge_at_of(&b, &b.tables().evals, &p.pool_id, &key).await;
    assert_eq!(at, Some(keyed.created_at / 1000 + RETENTION as i64));
    // While it lasts, the same key answers with the first eval.
    let mut again = eval_rec(&p.pool_id, 1);
    again.idempotency_key = keyed.idempotency_key.clone();
    assert_eq!(b.insert_eval(&again).await.unwrap().map(|e| e.eval_id), Some(keyed.eval_id.clone()));
    // Once it expired and its eval is gone (DynamoDB's TTL removes each in its own
    // time), a new submit takes the key over.
    b.dynamodb()
        .delete_item()
        .table_name(&b.tables().evals)
        .key("id", aws_sdk_dynamodb::types::AttributeValue::S(format!("{}/{}", p.pool_id, keyed.eval_id)))
        .send()
        .await
        .unwrap();
    let mut later = eval_rec(&p.pool_id, 1);
    later.idempotency_key = keyed.idempotency_key.clone();
    later.created_at = keyed.created_at + (RETENTION as i64 + 1) * 1000;
    assert_eq!(b.find_eval_by_key(&p.pool_id, "job-7").await.unwrap(), None);
    assert_eq!(b.insert_eval(&later).await.unwrap(), None, "the expired key is taken over");
    assert_eq!(b.find_eval_by_key(&p.pool_id, "job-7").await.unwrap().map(|e| e.eval_id), Some(later.eval_id));
}

//! The shared conformance suite on the AWS backend: DynamoDB and SQS through the real
//! SDK against moto on loopback. Each test gets its own tables. Pools here spread their
//! records over 4 index shards (`LINEUP_INDEX_SHARDS`), so every listing is a merge of
//! concurrent queries; `template.rs` runs the suite again at the deployed default, 1.

use std::sync::Arc;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::Backend;

pub async fn aws_backend() -> AwsBackend {
    let prefix = format!("t{}", lineup_core::PoolId::generate());
    let b = AwsBackend::for_emulator(&Moto::shared().endpoint, &prefix).await;
    create_tables(b.dynamodb(), b.tables()).await.expect("create tables");
    b.set_index_shards(4);
    b
}

async fn backend() -> Backend {
    let b = Arc::new(aws_backend().await);
    Backend { store: b.clone(), queues: b }
}

lineup_conformance::conformance_tests!(backend);

#[tokio::test]
async fn calls_are_counted_by_operation() {
    use lineup_core::Store;
    let b = aws_backend().await;
    b.calls().reset();
    b.list_pools().await.unwrap();
    b.get_pool(&lineup_core::PoolId::generate()).await.unwrap();
    lineup_core::Queues::create_queue(&b, &format!("c{}", lineup_core::PoolId::generate())).await.unwrap();
    let calls = b.calls().snapshot();
    assert_eq!(calls.get("DynamoDB.Scan"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("DynamoDB.GetItem"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("SQS.CreateQueue"), Some(&1), "{calls:?}");
    assert_eq!(b.calls().total(), 3);
}

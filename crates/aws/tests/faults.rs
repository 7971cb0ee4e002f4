//! The whole conformance suite on the AWS backend while moto injects what real DynamoDB
//! and SQS do under load (`Moto::faulty`: throttling, 500s, transactions cancelled for
//! conflicts, responses lost after the write was applied): every store, queue and
//! service rule still holds.

use std::sync::Arc;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::Backend;

async fn backend() -> Backend {
    let prefix = format!("f{}", lineup_core::PoolId::generate());
    let b = AwsBackend::for_emulator(&Moto::faulty().endpoint, &prefix).await;
    create_tables(b.dynamodb(), b.tables()).await.expect("create tables");
    let b = Arc::new(b);
    Backend { store: b.clone(), queues: b }
}

lineup_conformance::conformance_tests!(backend);

/// The fault mode is on: the suite above ran against real faults, not a quiet server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_and_ridden_out() {
    let b = backend().await;
    let kinds = ["throttle", "throughput", "500", "lost"];
    let seen_all =
        |i: &std::collections::BTreeMap<String, u64>| kinds.iter().all(|k| i.get(*k).is_some_and(|n| *n > 0));
    // A bounded number of calls, each of which must succeed through the retries.
    for n in 0..3_000 {
        b.store.list_pools().await.expect("every call succeeds through the retries");
        if n % 100 == 99 && seen_all(&Moto::faulty().injected()) {
            return;
        }
    }
    panic!("not every kind of fault was injected: {:?}", Moto::faulty().injected());
}

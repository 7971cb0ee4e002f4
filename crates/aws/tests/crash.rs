//! A crash at every step on DynamoDB + SQS (moto), and again while moto injects faults.
//! Its own test binary: fault points are armed process-wide (see
//! `lineup_conformance::service_crash_at_every_step`); the two tests here serialize on
//! the fail crate's scenario lock.

use std::sync::Arc;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::Backend;

async fn backend(moto: &Moto) -> Backend {
    let prefix = format!("x{}", lineup_core::PoolId::generate());
    let b = AwsBackend::for_emulator(&moto.endpoint, &prefix).await;
    create_tables(b.dynamodb(), b.tables()).await.expect("create tables");
    let b = Arc::new(b);
    Backend { store: b.clone(), queues: b }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step() {
    lineup_conformance::service_crash_at_every_step(backend(Moto::shared()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_under_faults() {
    lineup_conformance::service_crash_at_every_step(backend(Moto::faulty()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_crash_before_record() {
    lineup_conformance::service_pipeline_crash_before_record(backend(Moto::shared()).await).await;
}

//! The shared conformance suite on the AWS backend: DynamoDB and SQS through the real
//! SDK against moto on loopback. Each test gets its own tables.

use std::sync::Arc;

use lineup_aws::{create_tables, AwsBackend, AwsOptions};
use lineup_conformance::moto::Moto;
use lineup_conformance::Backend;

pub async fn aws_backend() -> AwsBackend {
    let moto = Moto::shared();
    let prefix = format!("t{}", lineup_core::PoolId::generate());
    let opts = AwsOptions {
        endpoint_url: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
        static_credentials: Some(("test".into(), "test".into())),
        table_prefix: prefix,
    };
    let b = AwsBackend::connect(&opts).await;
    create_tables(b.dynamodb(), b.tables()).await.expect("create tables");
    b
}

async fn backend() -> Backend {
    let b = Arc::new(aws_backend().await);
    Backend { store: b.clone(), queues: b }
}

lineup_conformance::conformance_tests!(backend);

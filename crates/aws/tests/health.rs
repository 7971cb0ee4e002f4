//! Health checks that read CloudWatch, through the real SDK against moto's CloudWatch:
//! a published metric sets the pool's level and limit; a metric with no datapoints
//! counts as the check's `on_error` level.

use std::sync::Arc;

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::ADMIN;
use lineup_core::service::NewPool;
use lineup_core::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_check_reads_cloudwatch() {
    let prefix = format!("h{}", PoolId::generate());
    let b = AwsBackend::for_emulator(&Moto::shared().endpoint, &prefix).await;
    create_tables(b.dynamodb(), b.tables()).await.unwrap();
    // An RDS-like metric, published as a monitor would.
    let namespace = format!("Lineup/Test{}", PoolId::generate());
    b.cloudwatch()
        .put_metric_data()
        .namespace(&namespace)
        .metric_data(
            MetricDatum::builder()
                .metric_name("CPUUtilization")
                .dimensions(Dimension::builder().name("DBInstanceIdentifier").value("db1").build())
                .value(75.0)
                .timestamp(DateTime::from(std::time::SystemTime::now()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let b = Arc::new(b);
    let l = Lineup::new(b.clone(), b.clone(), Arc::new(SystemClock), Settings::default(), "t")
        .with_probe(Arc::new(b.probe()));
    l.init().await.unwrap();
    let checks: Vec<health::HealthCheck> = serde_json::from_value(serde_json::json!([
        {"name": "rds-cpu", "period": 60, "feelings": {"1": 90, "2": 70}, "comparison": "GreaterThanOrEqualToThreshold",
         "metric": {"namespace": namespace, "name": "CPUUtilization", "dimensions": {"DBInstanceIdentifier": "db1"}, "statistic": "Average"}},
        {"name": "silent", "period": 60, "feelings": {"1": 1}, "comparison": ">=", "on_error": 3,
         "metric": {"namespace": namespace, "name": "NothingHere"}}
    ]))
    .unwrap();
    let pool = l
        .create_pool_with(&ADMIN, NewPool { max_running: Some(8), health_checks: Some(checks), ..Default::default() })
        .await
        .unwrap();
    let readings = l.pulled_health(&pool).await;
    assert_eq!((readings[0].value, readings[0].level), (Some(75.0), 2), "{readings:?}");
    assert_eq!(readings[0].to_string(), "check rds-cpu = 75 ≥ 70");
    assert_eq!((readings[1].value, readings[1].level), (None, 3), "{readings:?}");
    assert!(readings[1].error.as_deref().is_some_and(|e| e.contains("no datapoints")), "{readings:?}");
    let pulled = health::worst(&readings);
    let limit = pool.limits.limit(l.now(), pulled.as_ref()).unwrap();
    assert_eq!(limit.limit, 4, "floor(0.5 × 8)");
    assert_eq!(limit.to_string(), "throttled: health 2 (check rds-cpu = 75 ≥ 70) → limit 4 of max_running 8");
}

//! Admission through the real `lineup dev` and its CLI: priorities, `max_running`,
//! pushed health, and clear 400s for bad values. (The rules themselves, on both
//! backends and with several schedulers, are in the conformance suite: `admission_*`.)

use std::time::Duration;

use lineup_tests::TestApp;
use reqwest::Method;

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_cap_and_health_through_the_api_and_cli() {
    let app = TestApp::spawn().await;
    admission_story(&app).await;
}

/// The same on `lineup dev --backend aws` (DynamoDB + SQS on moto), and a health check
/// reading a CloudWatch metric from moto's CloudWatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_cap_and_health_on_dynamodb_sqs_and_cloudwatch() {
    use lineup_conformance::moto::Moto;
    let moto = Moto::shared();
    let (app, _, _) = lineup_tests::spawn_on_moto("ad", &[]).await;
    let pool = admission_story(&app).await;

    // A monitor publishes a metric; the pool's check reads it through CloudWatch.
    let namespace = format!("Lineup/Test{}", lineup_core::PoolId::generate());
    let cw = lineup_aws::AwsBackend::for_emulator(&moto.endpoint, "unused").await;
    cw.cloudwatch()
        .put_metric_data()
        .namespace(&namespace)
        .metric_data(
            aws_sdk_cloudwatch::types::MetricDatum::builder()
                .metric_name("CPUUtilization")
                .value(95.0)
                .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(std::time::SystemTime::now()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let body = serde_json::json!({"max_running": 10, "health_checks": [{
        "name": "db-cpu", "metric": {"namespace": namespace, "name": "CPUUtilization"},
        "feelings": {"1": 90, "2": 70}, "comparison": ">="
    }]})
    .to_string();
    let (st, v) = app.raw(Method::PATCH, &format!("/v1/pools/{pool}"), Some(&app.token), Some(&body)).await;
    assert_eq!(st, 200, "{v}");
    let h = &v["health"];
    assert_eq!((h["level"].as_u64(), h["source"].as_str()), (Some(1), Some("check")), "{v}");
    assert_eq!(h["checks"][0]["value"].as_f64(), Some(95.0));
    assert_eq!(v["limit"].as_u64(), Some(0), "level 1: no new placements");
}

/// Priority, cap and pushed health through the CLI and the API; returns the pool.
async fn admission_story(app: &TestApp) -> String {
    // The CLI as the README says.
    let pool = stdout(&app.cli(&["pool", "create", "--max-running", "2"]));
    let (st, v) = app.raw(Method::GET, &format!("/v1/pools/{pool}"), Some(&app.token), None).await;
    assert_eq!(st, 200);
    assert_eq!((v["max_running"].as_u64(), v["limit"].as_u64(), v["running"].as_u64()), (Some(2), Some(2), Some(0)));
    assert_eq!(v["health"]["level"].as_u64(), Some(4));
    // A backlog first (no worker yet), the low-priority eval oldest in it.
    let low = stdout(&app.cli(&["eval", "submit", "--pool", &pool, "--size", "1", "--priority", "5"]));
    let (_, e) = app.raw(Method::GET, &format!("/v1/pools/{pool}/evals/{low}"), Some(&app.token), None).await;
    assert_eq!(e["priority"].as_u64(), Some(5));
    for _ in 0..3 {
        stdout(&app.cli(&["eval", "submit", "--pool", &pool, "--size", "1"]));
    }
    app.admin.register_worker(&pool, 10).await.unwrap();
    // Capacity for 10, but 2 at most run: poll until 2 are placed and they stay 2.
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = app.raw(Method::GET, &format!("/v1/pools/{pool}"), Some(&app.token), None).await;
        if v["running"].as_u64() == Some(2) {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "never 2 running: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, evals) =
        app.raw(Method::GET, &format!("/v1/pools/{pool}/evals?status=queued"), Some(&app.token), None).await;
    let queued = evals["evals"].as_array().unwrap();
    assert_eq!(queued.len(), 2);
    assert!(queued.iter().any(|e| e["eval_id"].as_str() == Some(&low)), "the low-priority eval waits: {evals}");

    // Health 2 halves the cap; `pool health` and the PUT route are the same thing.
    let v = stdout(&app.cli(&["--json", "pool", "health", &pool, "--level", "2", "--ttl", "60"]));
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!((v["limit"].as_u64(), v["health"]["source"].as_str()), (Some(1), Some("pushed")));
    // The cap raised and removed with PATCH.
    let body = r#"{"max_running": 8}"#;
    let (st, v) = app.raw(Method::PATCH, &format!("/v1/pools/{pool}"), Some(&app.token), Some(body)).await;
    assert_eq!((st, v["limit"].as_u64()), (200, Some(4)));
    let v = stdout(&app.cli(&["--json", "pool", "update", &pool, "--no-max-running"]));
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert!(v["max_running"].is_null() && v["limit"].is_null(), "{v}");

    // Bad values: a clear 400 each, and nothing changed.
    for (m, path, body, code) in [
        (Method::POST, format!("/v1/pools/{pool}/evals"), r#"{"size":1,"priority":101}"#, "invalid_priority"),
        (Method::POST, "/v1/pools".to_string(), r#"{"max_running":0}"#, "invalid_max_running"),
        (Method::PATCH, format!("/v1/pools/{pool}"), r#"{"coefficients":[0,1]}"#, "invalid_coefficients"),
        (Method::PATCH, format!("/v1/pools/{pool}"), r#"{"max_running":-3}"#, "invalid_max_running"),
        (Method::PUT, format!("/v1/pools/{pool}/health"), r#"{"level":5,"ttl":10}"#, "invalid_level"),
        (Method::PUT, format!("/v1/pools/{pool}/health"), r#"{"level":1}"#, "missing_field"),
        (Method::PUT, format!("/v1/pools/{pool}/health"), r#"{"level":1,"ttl":0}"#, "invalid_ttl"),
    ] {
        let (st, v) = app.raw(m.clone(), &path, Some(&app.token), Some(body)).await;
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{m} {path} {body}: {v}");
    }
    let (_, v) = app.raw(Method::GET, &format!("/v1/pools/{pool}"), Some(&app.token), None).await;
    assert!(v["max_running"].is_null(), "{v}");
    assert_eq!(v["health"]["level"].as_u64(), Some(2));
    let bad = app.cli(&["eval", "submit", "--pool", &pool, "--size", "1", "--priority", "101"]);
    assert!(!bad.status.success());
    pool
}

/// A URL health check, read by the real `lineup dev` from a real HTTP server: the pool
/// shows the reading and throttles by it; a bad check is a 400 that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_health_check_throttles_the_pool() {
    let value = std::sync::Arc::new(std::sync::Mutex::new("75".to_string()));
    let v2 = value.clone();
    let monitor = axum::Router::new().route(
        "/load",
        axum::routing::get(move || {
            let v = v2.clone();
            async move { v.lock().unwrap().clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/load", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, monitor).await });

    let app = TestApp::spawn().await;
    let body = serde_json::json!({
        "max_running": 4,
        "health_checks": [{"name": "load", "url": url, "period": 1, "feelings": {"1": 90, "2": 70}, "comparison": ">="}]
    })
    .to_string();
    let (st, v) = app.raw(Method::POST, "/v1/pools", Some(&app.token), Some(&body)).await;
    assert_eq!(st, 201, "{v}");
    let pool = v["pool_id"].as_str().unwrap().to_owned();
    let h = &v["health"];
    assert_eq!((h["level"].as_u64(), h["source"].as_str()), (Some(2), Some("check")), "{v}");
    assert_eq!(h["checks"][0]["value"].as_f64(), Some(75.0));
    assert_eq!(v["limit"].as_u64(), Some(2));
    assert_eq!(h["why"].as_str(), Some("check load = 75 ≥ 70"));

    // The monitor recovers: within a period or two the pool is healthy again.
    *value.lock().unwrap() = "12".into();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = app.raw(Method::GET, &format!("/v1/pools/{pool}"), Some(&app.token), None).await;
        if v["health"]["level"].as_u64() == Some(4) {
            assert_eq!(v["limit"].as_u64(), Some(4));
            break;
        }
        assert!(tokio::time::Instant::now() < end, "still unhealthy: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Unreadable: fails open (on_error 4), and says why.
    *value.lock().unwrap() = "not a number".into();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, v) = app.raw(Method::GET, &format!("/v1/pools/{pool}"), Some(&app.token), None).await;
    assert_eq!(v["health"]["level"].as_u64(), Some(4));
    assert!(v["health"]["checks"][0]["error"].as_str().is_some_and(|e| e.contains("not a number")), "{v}");

    let bad = r#"{"health_checks": [{"name": "x", "url": "ftp://h/x", "feelings": {"1": 1}, "comparison": ">="}]}"#;
    let (st, v) = app.raw(Method::PATCH, &format!("/v1/pools/{pool}"), Some(&app.token), Some(bad)).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_health_check")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("check x"), "{v}");
    let bad = r#"{"health_checks": [{"name": "x", "url": "http://h/x", "feelings": {"1": 1}, "comparison": "~"}]}"#;
    let (st, v) = app.raw(Method::PATCH, &format!("/v1/pools/{pool}"), Some(&app.token), Some(bad)).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_health_check")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("health_checks[0]"), "{v}");
}

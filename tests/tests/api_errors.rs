//! Bad input gets a clear 4xx with `{"code","message"}` and loses nothing; auth is
//! enforced on every route but /health.

use lineup_client::SubmitEval;
use lineup_tests::TestApp;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_401_and_403() {
    let app = TestApp::spawn().await;
    let (st, v) = app.raw(Method::GET, "/health", None, None).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
    let (st, v) = app.raw(Method::GET, "/v1/pools", None, None).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")));
    let (st, _) = app.raw(Method::GET, "/v1/pools", Some("not-the-token"), None).await;
    assert_eq!(st, 401);

    let pool = app.admin.create_pool(None).await.unwrap();
    let w1 = app.admin.register_worker(&pool.pool_id, 2).await.unwrap();
    let w2 = app.admin.register_worker(&pool.pool_id, 2).await.unwrap();
    let t1 = w1.token.clone().unwrap();
    // A worker token: its own heartbeat and poll only.
    let own = format!("/v1/pools/{}/workers/{}/heartbeat", pool.pool_id, w1.worker_id);
    assert_eq!(app.raw(Method::POST, &own, Some(&t1), Some("{}")).await.0, 200);
    let other = format!("/v1/pools/{}/workers/{}/heartbeat", pool.pool_id, w2.worker_id);
    let (st, v) = app.raw(Method::POST, &other, Some(&t1), Some("{}")).await;
    assert_eq!((st, v["code"].as_str()), (403, Some("forbidden")));
    for (m, path, body) in [
        (Method::GET, "/v1/pools".to_string(), None),
        (Method::POST, format!("/v1/pools/{}/evals", pool.pool_id), Some(r#"{"size":1}"#)),
        (Method::DELETE, format!("/v1/pools/{}", pool.pool_id), None),
        (Method::POST, format!("/v1/pools/{}/workers", pool.pool_id), Some(r#"{"capacity":1}"#)),
    ] {
        let (st, _) = app.raw(m.clone(), &path, Some(&t1), body).await;
        assert_eq!(st, 403, "{m} {path}");
    }
    // A worker cannot complete another worker's alloc.
    app.admin.submit_eval(&pool.pool_id, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let alloc = loop {
        assert!(tokio::time::Instant::now() < end, "alloc never arrived");
        let a1 = app.admin.poll(&pool.pool_id, &w1.worker_id, std::time::Duration::from_secs(1), 1).await.unwrap();
        let a2 = app.admin.poll(&pool.pool_id, &w2.worker_id, std::time::Duration::from_secs(1), 1).await.unwrap();
        if let Some(a) = a1.into_iter().chain(a2).next() {
            break a;
        }
    };
    let wrong = if alloc.worker_id.as_str() == w1.worker_id { w2.token.clone().unwrap() } else { t1.clone() };
    let path = format!("/v1/pools/{}/allocs/{}/complete", pool.pool_id, alloc.alloc_id);
    assert_eq!(app.raw(Method::POST, &path, Some(&wrong), Some("{}")).await.0, 403);
    // A token whose secret is off by one character: 401.
    let mut forged = t1.clone();
    forged.pop();
    forged.push(if t1.ends_with('0') { '1' } else { '0' });
    assert_eq!(app.raw(Method::POST, &own, Some(&forged), Some("{}")).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_out_of_range_input() {
    let app = TestApp::spawn().await;
    let t = Some(app.token.as_str());
    let pool = app.admin.create_pool(None).await.unwrap();
    let evals = format!("/v1/pools/{}/evals", pool.pool_id);
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (Method::POST, evals.clone(), Some("{".into()), 400, "invalid_json"),
        (Method::POST, evals.clone(), Some("[]".into()), 400, "invalid_json"),
        (Method::POST, evals.clone(), Some("{}".into()), 400, "missing_field"),
        (Method::POST, evals.clone(), Some(r#"{"size":0}"#.into()), 400, "invalid_size"),
        (Method::POST, evals.clone(), Some(r#"{"size":-4}"#.into()), 400, "invalid_size"),
        (Method::POST, evals.clone(), Some(r#"{"size":"big"}"#.into()), 400, "invalid_json"),
        (Method::POST, evals.clone(), Some(r#"{"size":99999999999}"#.into()), 400, "invalid_size"),
        (Method::POST, evals.clone(), Some(r#"{"size":1,"dataset":"has space"}"#.into()), 400, "invalid_dataset"),
        (
            Method::POST,
            evals.clone(),
            Some(format!(r#"{{"size":1,"idempotency_key":"{}"}}"#, "k".repeat(200))),
            400,
            "invalid_idempotency_key",
        ),
        (Method::POST, "/v1/pools".into(), Some(r#"{"strategy":"random"}"#.into()), 400, "invalid_strategy"),
        (
            Method::POST,
            format!("/v1/pools/{}/workers", pool.pool_id),
            Some(r#"{"capacity":0}"#.into()),
            400,
            "invalid_capacity",
        ),
        (Method::GET, "/v1/pools/not-an-id".into(), None, 400, "invalid_id"),
        (Method::GET, "/v1/pools/..%2F..%2Fetc".into(), None, 400, "invalid_id"),
        (Method::GET, format!("/v1/pools/{}", "0".repeat(20)), None, 404, "not_found"),
        (Method::GET, format!("{evals}/{}", "a".repeat(20)), None, 404, "not_found"),
        (Method::GET, format!("{evals}?status=bogus"), None, 400, "invalid_status"),
        (
            Method::POST,
            format!("/v1/pools/{}/workers/{}/poll?wait=abc", pool.pool_id, "b".repeat(20)),
            None,
            400,
            "invalid_query",
        ),
        (
            Method::POST,
            format!("/v1/pools/{}/workers/{}/poll?wait=60", pool.pool_id, "b".repeat(20)),
            None,
            400,
            "invalid_wait",
        ),
        (Method::GET, "/v2/nothing".into(), None, 404, "not_found"),
        (Method::PUT, "/v1/pools".into(), None, 405, "method_not_allowed"),
        (Method::POST, "/ScheduleEval".into(), Some(r#"{"pool_id":"x","size":1}"#.into()), 400, "invalid_id"),
        // A path segment that is not UTF-8 once decoded.
        (Method::GET, "/v1/pools/%FF%FE".into(), None, 400, "invalid_path"),
        (Method::GET, format!("{evals}/%C3%28"), None, 400, "invalid_path"),
        // An array or a scalar where an object is expected (serde would read `[2]` as
        // the fields in order).
        (Method::POST, format!("/v1/pools/{}/workers", pool.pool_id), Some("[2]".into()), 400, "invalid_json"),
        (Method::POST, evals.clone(), Some("7".into()), 400, "invalid_json"),
        (Method::POST, evals.clone(), Some(r#""size""#.into()), 400, "invalid_json"),
        // Unknown fields on /v1, named.
        (Method::POST, evals.clone(), Some(r#"{"size":1,"sise":2}"#.into()), 400, "invalid_json"),
        (Method::POST, "/v1/pools".into(), Some(r#"{"strategy":"spread","x":1}"#.into()), 400, "invalid_json"),
        // The compat routes stay lenient about fields, not about JSON.
        (Method::POST, "/CreatePool".into(), Some(r#"{"PoolID":"#.into()), 400, "invalid_json"),
    ];
    for (m, path, body, want, code) in cases {
        let (st, v) = app.raw(m.clone(), &path, t, body.as_deref()).await;
        assert_eq!(st, want, "{m} {path} {body:?} → {v}");
        assert_eq!(v["code"].as_str(), Some(code), "{m} {path} → {v}");
        assert!(v["message"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    }
    let (st, v) = app.raw(Method::POST, &evals, t, Some(r#"{"size":1,"sise":2}"#)).await;
    assert!(st == 400 && v["message"].as_str().unwrap().contains("sise"), "the unknown field is named: {v}");
    // The compat route takes fields it does not know.
    let (st, v) = app.raw(Method::POST, "/CreatePool", t, Some(r#"{"Anything":1}"#)).await;
    assert_eq!(st, 200, "{v}");
    // An idempotency key reused for a different eval: 409, nothing created.
    let k = json!({"size": 1, "idempotency_key": "once"}).to_string();
    assert_eq!(app.raw(Method::POST, &evals, t, Some(&k)).await.0, 202);
    assert_eq!(app.raw(Method::POST, &evals, t, Some(&k)).await.0, 200, "the same request again: a replay");
    let other = json!({"size": 2, "idempotency_key": "once"}).to_string();
    let (st, v) = app.raw(Method::POST, &evals, t, Some(&other)).await;
    assert_eq!((st, v["code"].as_str()), (409, Some("idempotency_mismatch")), "{v}");
    let kept = app.admin.evals(&pool.pool_id, None, 100).await.unwrap();
    assert_eq!(kept.len(), 1);
    app.admin.cancel_eval(&pool.pool_id, &kept[0].eval_id).await.unwrap();
    // Body over 256 KiB: 413, as JSON.
    let big = json!({"size": 1, "payload": "x".repeat(300 * 1024)}).to_string();
    let (st, v) = app.raw(Method::POST, &evals, t, Some(&big)).await;
    assert_eq!((st, v["code"].as_str()), (413, Some("body_too_large")));
    // Nothing was created by any of it but the one keyed eval, and the server is fine.
    assert_eq!(app.admin.evals(&pool.pool_id, None, 100).await.unwrap().len(), 1);
    let ok = app.admin.submit_eval(&pool.pool_id, &SubmitEval { size: 1, ..Default::default() }).await.unwrap();
    assert_eq!(ok.status, "queued");
}

/// Headers: too many get a JSON 431; a client that never finishes its headers is
/// disconnected (it does not hold a connection forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let addr = app.endpoint.trim_start_matches("http://").to_owned();

    let mut req = String::from("GET /v1/pools HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..150 {
        req.push_str(&format!("X-Filler-{i}: y\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(out.contains("application/json") && out.contains("\"code\":\"too_many_headers\""), "{out}");

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf)).await;
    let n = read.expect("the server never closed a connection whose headers never came");
    assert!(matches!(n, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"), "{n:?}");
    println!("closed after {:?}", started.elapsed());
    // And the server still serves.
    assert!(app.admin.health().await.is_ok());
}

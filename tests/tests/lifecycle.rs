//! The Go original's story, end to end over HTTP, through the REST routes and the
//! compatibility routes; locality and both strategies.

use std::time::Duration;

use lineup_client::SubmitEval;
use lineup_tests::{poll_n, TestApp};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_story_over_rest() {
    let app = TestApp::spawn().await;
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();
    assert_eq!((pool.strategy.as_str(), pool.status.as_str()), ("spread", "active"));
    let reg = admin.register_worker(&pool.pool_id, 10).await.unwrap();
    let me = admin.with_token(reg.token.as_deref().unwrap());
    me.heartbeat(&pool.pool_id, &reg.worker_id, &["d1".into()], &[]).await.unwrap();

    let sub = admin
        .submit_eval(
            &pool.pool_id,
            &SubmitEval { size: 3, dataset: Some("d1".into()), payload: Some(json!({"n": 1})), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(sub.status, "queued");
    assert_eq!(sub.url, format!("/v1/pools/{}/evals/{}", pool.pool_id, sub.eval_id));

    let allocs = poll_n(&me, &pool.pool_id, &reg.worker_id, 1).await;
    let a = &allocs[0];
    assert_eq!((a.eval_id.as_str(), a.size, a.dataset.as_deref(), a.attempt), (sub.eval_id.as_str(), 3, Some("d1"), 1));
    assert_eq!(a.payload, Some(json!({"n": 1})));
    assert_eq!(admin.workers(&pool.pool_id).await.unwrap()[0].free, 7);
    let shown = admin.pool(&pool.pool_id).await.unwrap();
    assert_eq!((shown.workers, shown.capacity, shown.free, shown.allocs), (1, 10, 7, 1));

    let hb = me.heartbeat(&pool.pool_id, &reg.worker_id, &["d1".into()], &[a.alloc_id.to_string()]).await.unwrap();
    assert!(hb.cancelled.is_empty());
    me.complete(&pool.pool_id, a.alloc_id.as_str(), 0, Some("ok")).await.unwrap();
    assert_eq!(admin.workers(&pool.pool_id).await.unwrap()[0].free, 10);
    let ev = admin.eval(&pool.pool_id, &sub.eval_id).await.unwrap();
    assert_eq!((ev.status.as_str(), ev.exit_code, ev.output.as_deref()), ("complete", Some(0), Some("ok")));
    assert_eq!(ev.worker_id.as_deref(), Some(reg.worker_id.as_str()));
}

/// What the Go client sends: its field names, `null` lists, `""` for no dataset, no
/// Content-Type, and (under /compat/{token}/) no Authorization header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_story_over_compat_routes() {
    let app = TestApp::spawn().await;
    for prefix in [String::new(), format!("/compat/{}", app.token)] {
        let token = if prefix.is_empty() { Some(app.token.as_str()) } else { None };
        let call = |route: &str, body: serde_json::Value| {
            let path = format!("{prefix}/{route}");
            let body = body.to_string();
            let app = &app;
            async move { app.raw(Method::POST, &path, token, Some(&body)).await }
        };
        let (st, v) = call("CreatePool", json!({})).await;
        assert_eq!(st, 200, "{v}");
        let pool = v["pool_id"].as_str().unwrap().to_owned();
        let (st, v) = call("RegisterWorker", json!({"pool_id": pool, "capacity": 10})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["capacity"], 10);
        assert!(v["queue_url"].as_str().unwrap().contains(v["worker_id"].as_str().unwrap()));
        let worker = v["worker_id"].as_str().unwrap().to_owned();
        let (st, v) =
            call("SendHeartbeat", json!({"pool_id": pool, "worker_id": worker, "allocs": null, "datasets": ["d1"]}))
                .await;
        assert_eq!(st, 200, "{v}");
        let (st, v) = call("ScheduleEval", json!({"pool_id": pool, "dataset_id": "d1", "size": 3})).await;
        assert_eq!(st, 200, "{v}");
        let (st, v) = call("ScheduleEval", json!({"pool_id": pool, "dataset_id": "", "size": 1})).await;
        assert_eq!(st, 200, "{v}");

        let allocs = poll_n(&app.admin, &pool, &worker, 2).await;
        let d1 = allocs.iter().find(|a| a.size == 3).unwrap();
        assert_eq!(d1.dataset.as_deref(), Some("d1"));
        assert_eq!(allocs.iter().find(|a| a.size == 1).unwrap().dataset, None, "\"\" means no dataset");
        let ids: Vec<String> = allocs.iter().map(|a| a.alloc_id.to_string()).collect();
        let (st, _) =
            call("SendHeartbeat", json!({"pool_id": pool, "worker_id": worker, "allocs": ids, "datasets": null})).await;
        assert_eq!(st, 200);
        for a in &allocs {
            let (st, v) = call("CompleteAlloc", json!({"pool_id": pool, "alloc_id": a.alloc_id})).await;
            assert_eq!(st, 200, "{v}");
        }
        assert_eq!(app.admin.workers(&pool).await.unwrap()[0].free, 10);
        let (st, _) = call("DisbandPool", json!({"pool_id": pool})).await;
        assert_eq!(st, 200);
        assert_eq!(app.admin.pool(&pool).await.unwrap().status, "disbanded");
    }
    // Without a token in the header or the path: 401.
    let (st, v) = app.raw(Method::POST, "/CreatePool", None, Some("{}")).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")));
    let (st, _) = app.raw(Method::POST, "/compat/wrong-token/CreatePool", None, Some("{}")).await;
    assert_eq!(st, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_and_strategies() {
    let app = TestApp::spawn().await;
    let admin = &app.admin;
    let spread = admin.create_pool(Some("spread")).await.unwrap();
    let w1 = admin.register_worker(&spread.pool_id, 10).await.unwrap();
    let w2 = admin.register_worker(&spread.pool_id, 10).await.unwrap();
    admin.heartbeat(&spread.pool_id, &w2.worker_id, &["d1".into()], &[]).await.unwrap();
    let e = admin
        .submit_eval(&spread.pool_id, &SubmitEval { size: 2, dataset: Some("d1".into()), ..Default::default() })
        .await
        .unwrap();
    poll_n(admin, &spread.pool_id, &w2.worker_id, 1).await;
    assert_eq!(
        admin.eval(&spread.pool_id, &e.eval_id).await.unwrap().worker_id.as_deref(),
        Some(w2.worker_id.as_str())
    );
    // Spread: the most free capacity next, so w1.
    let e = admin.submit_eval(&spread.pool_id, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();
    poll_n(admin, &spread.pool_id, &w1.worker_id, 1).await;
    assert_eq!(
        admin.eval(&spread.pool_id, &e.eval_id).await.unwrap().worker_id.as_deref(),
        Some(w1.worker_id.as_str())
    );

    let bp = admin.create_pool(Some("binpack")).await.unwrap();
    assert_eq!(bp.strategy, "binpack");
    let big = admin.register_worker(&bp.pool_id, 10).await.unwrap();
    let small = admin.register_worker(&bp.pool_id, 4).await.unwrap();
    let e1 = admin.submit_eval(&bp.pool_id, &SubmitEval { size: 3, ..Default::default() }).await.unwrap();
    poll_n(admin, &bp.pool_id, &small.worker_id, 1).await;
    assert_eq!(
        admin.eval(&bp.pool_id, &e1.eval_id).await.unwrap().worker_id.as_deref(),
        Some(small.worker_id.as_str())
    );
    let e2 = admin.submit_eval(&bp.pool_id, &SubmitEval { size: 3, ..Default::default() }).await.unwrap();
    poll_n(admin, &bp.pool_id, &big.worker_id, 1).await;
    assert_eq!(admin.eval(&bp.pool_id, &e2.eval_id).await.unwrap().worker_id.as_deref(), Some(big.worker_id.as_str()));
    let _ = Duration::ZERO;
}

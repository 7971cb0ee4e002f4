//! What goes wrong: allocs that never complete, workers that vanish, cancel,
//! idempotent submit, disband with work in flight. Short TTLs come from the
//! environment, as an operator would set them.

use std::time::Duration;

use lineup_client::SubmitEval;
use lineup_tests::{poll_n, wait_for_async, TestApp};

const FAST: &[(&str, &str)] = &[
    ("LINEUP_ALLOC_TTL", "1"),
    ("LINEUP_WORKER_TTL", "3"),
    ("LINEUP_RELEASE_INTERVAL", "1"),
    ("LINEUP_MAX_RETRY", "2"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_completed_is_retried_then_dead_lettered() {
    let app = TestApp::spawn_with(FAST, &[]).await;
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();
    let w = admin.register_worker(&pool.pool_id, 4).await.unwrap();
    let me = admin.with_token(w.token.as_deref().unwrap());
    let e = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();

    // The worker takes each attempt, keeps heartbeating, and never lists or completes it.
    let mut attempts = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(tokio::time::Instant::now() < end, "eval never went dead; attempts seen {attempts:?}");
        me.heartbeat(&pool.pool_id, &w.worker_id, &[], &[]).await.unwrap();
        for a in me.poll(&pool.pool_id, &w.worker_id, Duration::from_secs(1), 10).await.unwrap() {
            attempts.push(a.attempt);
        }
        if admin.eval(&pool.pool_id, &e.eval_id).await.unwrap().status == "dead" {
            break;
        }
    }
    assert_eq!(attempts, vec![1, 2, 3], "first attempt plus MAX_RETRY=2 retries");
    let ev = admin.eval(&pool.pool_id, &e.eval_id).await.unwrap();
    assert_eq!(ev.attempts, 3);
    assert!(ev.reason.unwrap_or_default().contains("expired"));
    let dead = admin.dead_letters(&pool.pool_id).await.unwrap();
    assert_eq!(dead.iter().map(|d| d.eval_id.as_str()).collect::<Vec<_>>(), vec![e.eval_id.as_str()]);
    assert_eq!(admin.workers(&pool.pool_id).await.unwrap()[0].free, 4, "capacity back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_worker_is_removed_and_its_evals_move() {
    let app = TestApp::spawn_with(
        &[("LINEUP_WORKER_TTL", "2"), ("LINEUP_ALLOC_TTL", "30"), ("LINEUP_RELEASE_INTERVAL", "1")],
        &[],
    )
    .await;
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();
    let quiet = admin.register_worker(&pool.pool_id, 4).await.unwrap();
    let e = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 3, ..Default::default() }).await.unwrap();
    poll_n(admin, &pool.pool_id, &quiet.worker_id, 1).await;
    let steady = admin.register_worker(&pool.pool_id, 4).await.unwrap();

    // `steady` heartbeats; `quiet` never does again.
    let ev = wait_for_async(Duration::from_secs(30), || {
        let (admin, pool, steady, e) =
            (admin.clone(), pool.pool_id.clone(), steady.worker_id.clone(), e.eval_id.clone());
        async move {
            admin.heartbeat(&pool, &steady, &[], &[]).await.unwrap();
            let ev = admin.eval(&pool, &e).await.unwrap();
            (ev.status == "placed" && ev.worker_id.as_deref() == Some(steady.as_str())).then_some(ev)
        }
    })
    .await;
    assert_eq!(ev.attempts, 2);
    let workers = admin.workers(&pool.pool_id).await.unwrap();
    assert_eq!(workers.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), vec![steady.worker_id.as_str()]);
    // Its queue is gone: polling as it fails clearly.
    let err = admin.poll(&pool.pool_id, &quiet.worker_id, Duration::ZERO, 1).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    let a = poll_n(admin, &pool.pool_id, &steady.worker_id, 1).await;
    assert_eq!((a[0].eval_id.as_str(), a[0].attempt), (e.eval_id.as_str(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_idempotency_and_disband() {
    let app = TestApp::spawn().await;
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();

    // Idempotency key: the same eval back, not a second one.
    let req = SubmitEval { size: 1, idempotency_key: Some("nightly-2026-11-23".into()), ..Default::default() };
    let a = admin.submit_eval(&pool.pool_id, &req).await.unwrap();
    let b = admin.submit_eval(&pool.pool_id, &req).await.unwrap();
    assert!(a.created && !b.created);
    assert_eq!(a.eval_id, b.eval_id);
    assert_eq!(admin.evals(&pool.pool_id, None, 100).await.unwrap().len(), 1);

    // Cancel while queued.
    let c = admin.cancel_eval(&pool.pool_id, &a.eval_id).await.unwrap();
    assert_eq!(c.status, "cancelled");

    // Cancel while placed: the worker hears it on its next heartbeat.
    let w = admin.register_worker(&pool.pool_id, 2).await.unwrap();
    let placed = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();
    let alloc = poll_n(admin, &pool.pool_id, &w.worker_id, 1).await.remove(0);
    assert_eq!(alloc.eval_id.as_str(), placed.eval_id, "the cancelled eval was never placed");
    assert_eq!(admin.cancel_eval(&pool.pool_id, &placed.eval_id).await.unwrap().status, "cancelled");
    let hb = admin.heartbeat(&pool.pool_id, &w.worker_id, &[], &[alloc.alloc_id.to_string()]).await.unwrap();
    assert_eq!(hb.cancelled, vec![alloc.alloc_id.to_string()]);
    admin.fail(&pool.pool_id, alloc.alloc_id.as_str(), "killed").await.unwrap();
    assert_eq!(admin.workers(&pool.pool_id).await.unwrap()[0].free, 2);
    assert_eq!(admin.eval(&pool.pool_id, &placed.eval_id).await.unwrap().status, "cancelled");
    // A finished eval cannot be cancelled.
    let done = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 1, ..Default::default() }).await.unwrap();
    let al = poll_n(admin, &pool.pool_id, &w.worker_id, 1).await.remove(0);
    admin.complete(&pool.pool_id, al.alloc_id.as_str(), 0, None).await.unwrap();
    let err = admin.cancel_eval(&pool.pool_id, &done.eval_id).await.unwrap_err();
    assert_eq!(err.status(), Some(409));

    // Disband with one eval in flight and one queued.
    let running = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();
    poll_n(admin, &pool.pool_id, &w.worker_id, 1).await;
    let queued = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();
    let d = admin.disband_pool(&pool.pool_id).await.unwrap();
    assert_eq!(d.status, "disbanded");
    for id in [&running.eval_id, &queued.eval_id] {
        assert_eq!(admin.eval(&pool.pool_id, id).await.unwrap().status, "cancelled");
    }
    let err = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    let err = admin.register_worker(&pool.pool_id, 1).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    // Disbanding again is harmless.
    admin.disband_pool(&pool.pool_id).await.unwrap();
    assert!(app.server_log().matches("schedule pass failed").count() == 0, "no error loop after disband");
}

/// Dead evals go back with a fresh retry budget: by the CLI and by the API at the same
/// time, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redriven_once() {
    let app = TestApp::spawn_with(&[("LINEUP_MAX_RETRY", "1")], &[]).await;
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();
    let w = admin.register_worker(&pool.pool_id, 4).await.unwrap();
    let me = admin.with_token(w.token.as_deref().unwrap());
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            admin.submit_eval(&pool.pool_id, &SubmitEval { size: 1, ..Default::default() }).await.unwrap().eval_id,
        );
    }
    // Every attempt fails, until all three are dead (first attempt plus one retry).
    let mut runs = 0;
    while admin.dead_letters(&pool.pool_id).await.unwrap().len() < 3 {
        runs += 1;
        assert!(runs <= 20, "not dead after {runs} rounds");
        for a in me.poll(&pool.pool_id, &w.worker_id, Duration::from_secs(1), 10).await.unwrap() {
            me.fail(&pool.pool_id, a.alloc_id.as_str(), "boom").await.unwrap();
        }
    }

    let args = ["--json", "eval", "redrive", "--pool", &pool.pool_id, "--all"];
    let (out, api) = tokio::join!(app.cli_async(&args), admin.redrive(&pool.pool_id, None));
    let api = api.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_cli: lineup_client::Redriven = serde_json::from_slice(&out.stdout).unwrap();
    let mut all: Vec<_> = api.redriven.iter().chain(&by_cli.redriven).map(|e| e.eval_id.clone()).collect();
    all.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(all, want, "each dead eval redriven by exactly one of the two calls");

    // A fresh budget: one more failure each is a retry, then they complete.
    let mut failed = std::collections::HashSet::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while admin.evals(&pool.pool_id, Some("complete"), 10).await.unwrap().len() < 3 {
        assert!(tokio::time::Instant::now() < end, "not complete in time");
        for a in me.poll(&pool.pool_id, &w.worker_id, Duration::from_secs(1), 10).await.unwrap() {
            if failed.insert(a.eval_id.clone()) {
                me.fail(&pool.pool_id, a.alloc_id.as_str(), "once more").await.unwrap();
            } else {
                me.complete(&pool.pool_id, a.alloc_id.as_str(), 0, None).await.unwrap();
            }
        }
    }
    for id in &ids {
        let e = admin.eval(&pool.pool_id, id).await.unwrap();
        assert_eq!((e.status.as_str(), e.attempts), ("complete", 4), "{id}");
    }
    // Naming an eval that is not dead says so; a bad id is a 400.
    let again = admin.redrive(&pool.pool_id, Some(&ids[..1])).await.unwrap();
    assert!(again.redriven.is_empty() && again.skipped[0].reason.contains("not dead"), "{again:?}");
    let path = format!("/v1/pools/{}/dead-letters/redrive", pool.pool_id);
    let (status, body) =
        app.raw(reqwest::Method::POST, &path, Some(admin.token()), Some(r#"{"eval_ids": ["nope"]}"#)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_id")), "{body}");
}

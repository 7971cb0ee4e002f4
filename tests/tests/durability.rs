//! `kill -9` during a submit burst, then restart: every acknowledged eval is still
//! there (and still gets placed). SIGTERM shuts down cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lineup_client::SubmitEval;
use lineup_tests::{poll_n, wait_for_async, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    let mut app = TestApp::spawn().await;
    let pool = app.admin.create_pool(None).await.unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (c, pool, acked, stop) = (app.admin.clone(), pool.pool_id.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let req = SubmitEval { size: 1, idempotency_key: Some(format!("burst-{i}-{n}")), ..Default::default() };
                match c.submit_eval(&pool, &req).await {
                    Ok(s) => acked.lock().unwrap().push(s.eval_id),
                    Err(_) => return, // the server died under us
                }
                n += 1;
            }
        }));
    }
    // Kill in the middle of the burst.
    wait_for_async(Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 200).then_some(()) }
    })
    .await;
    app.kill();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    app.start().await;
    let all = app.admin.evals(&pool.pool_id, None, 10_000).await.unwrap();
    let stored: std::collections::HashSet<&str> = all.iter().map(|e| e.eval_id.as_str()).collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(id.as_str())).collect();
    assert!(lost.is_empty(), "{} acknowledged evals lost after kill -9: {:?}", lost.len(), &lost[..lost.len().min(5)]);

    // And they are still queued for real: a worker gets every one of them.
    let w = app.admin.register_worker(&pool.pool_id, 1000).await.unwrap();
    let got = poll_n(&app.admin, &pool.pool_id, &w.worker_id, all.len()).await;
    let delivered: std::collections::HashSet<&str> = got.iter().map(|a| a.eval_id.as_str()).collect();
    assert!(acked.iter().all(|id| delivered.contains(id.as_str())), "an acknowledged eval was never delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_state_survives() {
    let mut app = TestApp::spawn().await;
    let pool = app.admin.create_pool(None).await.unwrap();
    let e = app.admin.submit_eval(&pool.pool_id, &SubmitEval { size: 1, ..Default::default() }).await.unwrap();
    let status = app.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(!app.is_running());
    app.start().await;
    assert_eq!(app.admin.eval(&pool.pool_id, &e.eval_id).await.unwrap().status, "queued");
    // The admin token stayed the same across the restart (it was saved in the data dir).
    assert_eq!(app.admin.pools().await.unwrap().len(), 1);
}

/// Recovery is bounded: evals a scheduler held (blocked, hidden in memory) when the
/// process was killed come back and are placed within 60 s of capacity appearing, on
/// both backends (the bound: `HOLD`, then one long poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_evals_are_placed_within_a_minute_after_kill_9() {
    recover_after_kill(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_evals_are_placed_within_a_minute_after_kill_9_on_aws() {
    use lineup_conformance::moto::{sdk_env, Moto};
    let moto = Moto::shared();
    let deployment = format!("k{}", &lineup_core::PoolId::generate().as_str()[8..]);
    let mut env: Vec<(String, String)> = sdk_env(moto).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.push(("LINEUP_DEPLOYMENT".into(), deployment));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    recover_after_kill(&env, &["--backend", "aws", "--aws-endpoint", &moto.endpoint, "--init"]).await;
}

async fn recover_after_kill(env: &[(&str, &str)], args: &[&str]) {
    let mut app = TestApp::spawn_with(env, args).await;
    let pool = app.admin.create_pool(None).await.unwrap().pool_id;
    app.admin.register_worker(&pool, 1).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.admin.submit_eval(&pool, &SubmitEval { size: 1, ..Default::default() }).await.unwrap().eval_id);
    }
    // One placed; some blocked and held (hidden) by the scheduler. (While it holds
    // blocked evals and no capacity is free, it leaves the rest in the queue.)
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let evals = app.admin.evals(&pool, None, 100).await.unwrap();
        let blocked = evals.iter().filter(|e| e.reason.as_deref().is_some_and(|r| r.contains("blocked"))).count();
        let placed = evals.iter().filter(|e| e.status == "placed").count();
        if placed == 1 && blocked >= 1 {
            break;
        }
        let seen: Vec<_> = evals.iter().map(|e| (e.status.clone(), e.reason.clone())).collect();
        assert!(std::time::Instant::now() < end, "not 1 placed and some held: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.kill();
    app.start().await;
    let appeared = std::time::Instant::now();
    app.admin.register_worker(&pool, 100).await.unwrap();
    wait_for_async(Duration::from_secs(60), || {
        let (c, pool) = (app.admin.clone(), pool.clone());
        async move {
            let evals = c.evals(&pool, None, 100).await.ok()?;
            (evals.iter().filter(|e| e.status == "placed").count() == 10).then_some(())
        }
    })
    .await;
    println!("all placed {:?} after capacity appeared", appeared.elapsed());
}

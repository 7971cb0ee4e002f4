//! 1,000 evals on 50 workers of random capacity, placed concurrently by two scheduler
//! loops: no worker ever holds more than its capacity, every eval is placed exactly
//! once, and all capacity is back at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lineup_client::SubmitEval;
use lineup_tests::TestApp;
use rand::Rng;

const EVALS: usize = 1_000;
const WORKERS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_evals_fifty_workers_two_schedulers() {
    let app = TestApp::spawn_with(&[], &["--schedulers", "2"]).await;
    let admin = app.admin.clone();
    let pool = admin.create_pool(None).await.unwrap().pool_id;
    let mut rng = rand::rng();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let cap: u32 = rng.random_range(1..=8);
        let w = admin.register_worker(&pool, cap).await.unwrap();
        workers.push((w.worker_id.clone(), cap, admin.with_token(w.token.as_deref().unwrap())));
    }
    let sizes: Vec<u32> = (0..EVALS).map(|_| rng.random_range(1..=4)).collect();

    // Submit from 4 connections.
    let mut submitters = Vec::new();
    for chunk in sizes.chunks(EVALS / 4) {
        let (admin, pool, chunk) = (admin.clone(), pool.clone(), chunk.to_vec());
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for size in chunk {
                ids.push(admin.submit_eval(&pool, &SubmitEval { size, ..Default::default() }).await.unwrap().eval_id);
            }
            ids
        }));
    }

    // Each simulated worker: what it holds never exceeds its capacity; it completes
    // each alloc after a moment.
    let delivered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut runners = Vec::new();
    for (id, cap, client) in workers.clone() {
        let (pool, delivered) = (pool.clone(), delivered.clone());
        runners.push(tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(240);
            while delivered.lock().unwrap().len() < EVALS && tokio::time::Instant::now() < end {
                let got = client.poll(&pool, &id, Duration::from_secs(1), 10).await.unwrap();
                let held: u32 = got.iter().map(|a| a.size).sum();
                assert!(held <= cap, "worker {id} of capacity {cap} was handed {held} at once");
                for a in &got {
                    *delivered.lock().unwrap().entry(a.eval_id.to_string()).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                for a in got {
                    client.complete(&pool, a.alloc_id.as_str(), 0, None).await.unwrap();
                }
            }
        }));
    }
    let mut ids = Vec::new();
    for s in submitters {
        ids.extend(s.await.unwrap());
    }
    // Meanwhile, the capacity invariant as the API shows it.
    let end = tokio::time::Instant::now() + Duration::from_secs(240);
    while delivered.lock().unwrap().len() < EVALS {
        assert!(tokio::time::Instant::now() < end, "only {} of {EVALS} delivered", delivered.lock().unwrap().len());
        for w in admin.workers(&pool).await.unwrap() {
            assert!(w.free <= w.capacity, "{w:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in runners {
        r.await.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), EVALS);
    assert!(delivered.values().all(|&n| n == 1), "an eval was delivered twice");
    assert!(ids.iter().all(|id| delivered.contains_key(id)));
    let evals = admin.evals(&pool, Some("complete"), 10_000).await.unwrap();
    assert_eq!(evals.len(), EVALS);
    assert!(evals.iter().all(|e| e.attempts == 1), "no eval needed a retry");
    for w in admin.workers(&pool).await.unwrap() {
        assert_eq!(w.free, w.capacity, "capacity fully back on {}", w.worker_id);
    }
    let p = admin.pool(&pool).await.unwrap();
    assert_eq!((p.queued, p.allocs), (0, 0));
}

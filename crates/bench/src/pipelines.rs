//! Pipeline scenarios on the embedded store: what a step costs over a plain eval.
//! - `wide`: 1,000 independent steps against 1,000 plain evals, same pool shape, workers
//!   completing as fast as they receive; the difference per step is the overhead.
//! - `chain`: 100 steps each after the one before, one worker: from the completion of a
//!   step to its successor's alloc reaching the worker (target: 50 ms).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lineup_client::{Client, SubmitEval};
use serde_json::json;

use crate::{report, Args, Rows, SameToken, Server};

const WIDE: usize = 1_000;
const CHAIN: usize = 100;

/// `workers` workers of capacity 100 completing everything they receive, until
/// `done` reaches `n`; returns the time from `start`.
async fn complete_all(s: &Server, pool: &str, workers: usize, n: u64, start: Instant) -> Duration {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let reg = s.admin.register_worker(pool, 100).await.expect("worker");
        let c = s.admin.with_token(reg.token.as_deref().unwrap_or_default());
        let (pool, done, stop) = (pool.to_owned(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(allocs) = c.poll(&pool, &reg.worker_id, Duration::from_secs(1), 10).await else { continue };
                for a in allocs {
                    if c.complete(&pool, a.alloc_id.as_str(), 0, None).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    while done.load(Ordering::Relaxed) < n && start.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    took
}

async fn wait_pipeline(c: &Client, pool: &str, id: &str) {
    let end = Instant::now() + Duration::from_secs(600);
    while Instant::now() < end {
        if c.pipeline(pool, id).await.map(|p| p.is_final()).unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("pipeline {id} did not end in 600 s");
}

pub async fn wide(args: &Args, rows: &mut Rows) {
    // Plain evals first, then the same number of steps, each on a fresh server.
    let s = Server::start(args, &[]);
    let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
    let start = Instant::now();
    for _ in 0..WIDE {
        s.admin.submit_eval(&pool, &SubmitEval { size: 1, ..Default::default() }).await.expect("submit");
    }
    let plain = complete_all(&s, &pool, 10, WIDE as u64, start).await;
    drop(s);

    let s = Server::start(args, &[]);
    let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
    let steps: Vec<_> = (0..WIDE).map(|i| json!({"name": format!("s{i}"), "size": 1})).collect();
    let start = Instant::now();
    let p = s.admin.submit_pipeline(&pool, &json!({ "steps": steps })).await.expect("pipeline");
    let watcher = s.admin.with_token_same();
    let ended = async {
        // From a few ms after the last completion: not to weigh on the run itself.
        tokio::time::sleep(plain).await;
        wait_pipeline(&watcher, &pool, &p.pipeline_id).await;
        start.elapsed()
    };
    let (piped, ended) = tokio::join!(complete_all(&s, &pool, 10, WIDE as u64, start), ended);
    report(rows, "pipeline_1000_steps_s", ended.as_secs_f64(), "s", "printed");
    report(rows, "plain_1000_evals_s", plain.as_secs_f64(), "s", "printed");
    let per = (piped.as_secs_f64() - plain.as_secs_f64()) / WIDE as f64 * 1000.0;
    report(rows, "pipeline_overhead_per_step_ms", per, "ms", "printed");
}

pub async fn chain(args: &Args, rows: &mut Rows) {
    let s = Server::start(args, &[]);
    let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
    let reg = s.admin.register_worker(&pool, 1).await.expect("worker");
    let c = s.admin.with_token(reg.token.as_deref().unwrap_or_default());
    let steps: Vec<_> = (0..CHAIN)
        .map(|i| {
            let after: Vec<String> = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
            json!({"name": format!("s{i}"), "size": 1, "after": after})
        })
        .collect();
    let admin = s.admin.with_token_same();
    let start = Instant::now();
    let p = admin.submit_pipeline(&pool, &json!({ "steps": steps })).await.expect("pipeline");
    let mut gaps = Vec::with_capacity(CHAIN);
    let mut completed_at: Option<Instant> = None;
    let mut done = 0;
    while done < CHAIN && start.elapsed() < Duration::from_secs(300) {
        let Ok(allocs) = c.poll(&pool, &reg.worker_id, Duration::from_secs(1), 10).await else { continue };
        for a in allocs {
            if let Some(t) = completed_at {
                gaps.push(t.elapsed());
            }
            c.complete(&pool, a.alloc_id.as_str(), 0, None).await.expect("complete");
            completed_at = Some(Instant::now());
            done += 1;
        }
    }
    wait_pipeline(&admin, &pool, &p.pipeline_id).await;
    gaps.sort();
    let pct = |q: f64| gaps.get(((gaps.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
    report(rows, "pipeline_chain_100_s", start.elapsed().as_secs_f64(), "s", "printed");
    report(rows, "pipeline_chain_next_step_p50_ms", pct(0.5).as_secs_f64() * 1000.0, "ms", "<= 50");
    report(rows, "pipeline_chain_next_step_p99_ms", pct(0.99).as_secs_f64() * 1000.0, "ms", "printed");
}

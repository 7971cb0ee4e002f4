//! Admission must not cost the drain figures: a drain onto 1,000 workers with mixed
//! priorities, and a pool with `max_running` whose workers complete as fast as they
//! receive (the cap is then the bottleneck by design; the figure is the rate it allows).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lineup_client::SubmitEval;
use serde_json::json;

use crate::{register_1000, report, wait_queued_zero, Args, Rows, SameToken, Server};

/// `n` size-1 evals with priorities spread over 0–100, over `conns` connections.
async fn submit_mixed(s: &Server, pool: &str, n: usize, conns: usize) {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (admin, pool) = (s.admin.with_token_same(), pool.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(conns) {
                let req = SubmitEval { size: 1, priority: Some((i * 37 % 101) as u8), ..Default::default() };
                admin.submit_eval(&pool, &req).await.expect("submit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("submitter");
    }
}

pub async fn priorities(args: &Args, rows: &mut Rows) {
    let s = Server::start(args, &[]);
    let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
    submit_mixed(&s, &pool, args.evals, args.connections).await;
    let start = Instant::now();
    register_1000(args, &s, &pool).await;
    wait_queued_zero(&s.admin, &pool, Duration::from_secs(600)).await;
    // From the first registration to the last placement, as in `drain1000`.
    let took = start.elapsed();
    report(
        rows,
        "drain_1000_workers_mixed_priorities_placements_per_s",
        args.evals as f64 / took.as_secs_f64(),
        "placements/s",
        ">= 20000",
    );
}

pub async fn capped(args: &Args, rows: &mut Rows) {
    const CAP: u64 = 200;
    let s = Server::start(args, &[]);
    let pool = s.admin.create_pool_with(&json!({ "max_running": CAP })).await.expect("pool").pool_id;
    let n = (args.evals / 4).max(1);
    submit_mixed(&s, &pool, n, args.connections).await;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..20 {
        let reg = s.admin.register_worker(&pool, 1_000).await.expect("worker");
        let c = s.admin.with_token(reg.token.as_deref().unwrap_or_default());
        let (pool, done, stop) = (pool.clone(), done.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
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
    let mut peak = 0;
    while done.load(Ordering::Relaxed) < n as u64 && start.elapsed() < Duration::from_secs(600) {
        if let Ok(p) = s.admin.pool(&pool).await {
            peak = peak.max(p.running);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    report(rows, "capped_pool_completions_per_s", n as f64 / took.as_secs_f64(), "evals/s", "printed");
    report(rows, "capped_pool_peak_running_sampled", peak as f64, "allocs", &format!("<= {CAP}"));
}

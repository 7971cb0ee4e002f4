//! A crash at every step: each fault point of `lineup_core::faults` armed in turn, to
//! fail the step there (`return`) or to kill the task running it there (`panic`), while
//! an eval's whole journey runs; then a fresh service on the same backend (a restart)
//! drains the pool. Whatever the point: capacity is conserved on every worker, every
//! accepted eval ends in exactly one terminal state, and no eval is placed twice for
//! one attempt.
//!
//! Fault points are armed process-wide, so this test must run in a test binary of its
//! own (`crates/sqlite/tests/crash.rs`, `crates/aws/tests/crash.rs`), never beside the
//! rest of the suite, whose steps would hit the armed point.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lineup_core::faults::POINTS;
use lineup_core::service::Finish;
use lineup_core::*;

use crate::{assert_capacity_conserved, complete, fast_opts, hb_req, lineup, new_eval, Backend, ADMIN};

type Deliveries = HashMap<(EvalId, u32), HashSet<AllocId>>;

/// Short polls: a drain round looks at what is there and moves the clock on; nothing
/// here waits for a message to arrive.
fn opts() -> lineup_core::service::SchedulerOptions {
    lineup_core::service::SchedulerOptions { wait: Duration::ZERO, ..fast_opts() }
}

pub async fn service_crash_at_every_step(b: Backend) {
    for point in POINTS {
        for action in ["return", "panic"] {
            crash_at(&b, point, action).await;
        }
    }
}

/// Runs `f` as its own task: a panic there ends the task, as a crash ends a process.
/// Notes in `hit` whether the armed point fired (the task died, or failed with the
/// injected error).
async fn task<T: Send + 'static>(
    hit: &mut bool,
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Option<Result<T>> {
    let out = tokio::spawn(f).await.ok();
    match &out {
        None => *hit = true,
        Some(Err(e)) if e.to_string().contains("injected fault at") => *hit = true,
        _ => {}
    }
    out
}

/// The armed `panic`s are the point of the test: keep them out of its output (any other
/// panic is still reported as before).
fn quiet_fault_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or_default();
            if !(msg.starts_with("failpoint ") && msg.ends_with(" panic")) {
                report(info);
            }
        }));
    });
}

async fn crash_at(b: &Backend, point: &str, action: &str) {
    quiet_fault_panics();
    let scenario = fail::FailScenario::setup();
    let (l, clock) = lineup(b);
    let pool = l.create_pool(&ADMIN, Strategy::Spread).await.unwrap();
    let p = pool.pool_id.clone();
    let w1 = l.register_worker(&ADMIN, &p, 3).await.unwrap().worker.worker_id;
    let w2 = l.register_worker(&ADMIN, &p, 3).await.unwrap().worker.worker_id;
    let mut deliveries = Deliveries::new();
    let mut hit = false;
    fail::cfg(point, action).unwrap();

    // The journey, armed: submit, place and deliver, poll, complete one, fail one, let
    // one expire, and (for its point) disband.
    let mut accepted = Vec::new();
    for _ in 0..4 {
        let (l, p) = (l.clone(), p.clone());
        if let Some(Ok(s)) = task(&mut hit, async move { l.submit_eval(&ADMIN, &p, new_eval(1, None)).await }).await {
            accepted.push(s.eval.eval_id);
        }
    }
    for _ in 0..3 {
        let (l, pool) = (l.clone(), pool.clone());
        let _ = task(&mut hit, async move { l.schedule_pass(&pool, &opts()).await }).await;
    }
    let mut got = Vec::new();
    for w in [&w1, &w2] {
        let (l, p, w) = (l.clone(), p.clone(), w.clone());
        if let Some(Ok(a)) = task(&mut hit, async move { l.poll(&ADMIN, &p, &w, Duration::ZERO, 10).await }).await {
            got.extend(a);
        }
    }
    for a in &got {
        deliveries.entry((a.eval_id.clone(), a.attempt)).or_default().insert(a.alloc_id.clone());
    }
    let finishes = [complete(0), Finish::Fail { reason: "boom".into() }];
    for (a, f) in got.iter().zip(finishes) {
        let (l, p, id) = (l.clone(), p.clone(), a.alloc_id.clone());
        let _ = task(&mut hit, async move { l.finish_alloc(&ADMIN, &p, &id, f).await }).await;
    }
    // Whatever is left running expires.
    clock.advance_secs(31);
    for w in [&w1, &w2] {
        let _ = l.heartbeat(&ADMIN, &p, w, hb_req(&[], &[])).await;
    }
    let rl = l.clone();
    // The releaser isolates a pool's failure: it says so in its summary.
    if let Some(Ok(sum)) = task(&mut hit, async move { rl.release_pass().await }).await {
        hit |= sum.pools_failed > 0;
    }
    if point == "disband.after_mark" {
        let (l, p) = (l.clone(), p.clone());
        let _ = task(&mut hit, async move { l.disband_pool(&ADMIN, &p).await }).await;
    }

    // The embedded store submits in one transaction: there is no step after the send;
    // and it completes in one (no `complete_first`).
    let unreached = (point == "submit.after_send" && accepted.len() == 4)
        || (point == "finish.after_complete_first" && !completes_eval_first(b).await);
    assert!(hit || unreached, "{point} ({action}) never fired");

    // Restart: the point disarmed, a fresh service on the same records and queues.
    fail::remove(point);
    let l2 = {
        let (fresh, _) = lineup(b);
        Lineup::new(fresh.store.clone(), fresh.queues.clone(), clock.clone(), (*l.settings).clone(), "admin-secret")
    };
    drain(&l2, &clock, &pool, &[&w1, &w2], &accepted, &mut deliveries, point, action).await;
    scenario.teardown();
}

/// Whether the store writes a completed eval on its own first (`Store::complete_first`).
async fn completes_eval_first(b: &Backend) -> bool {
    let pool = PoolId::generate();
    let a = crate::alloc_for(&crate::eval_rec(&pool, 1), &crate::worker_rec(&pool, 1, 0), 0);
    let done = Completion { exit_code: 0, output: None, at: 0, purge_at: 0 };
    b.store.complete_first(&a, &done).await.is_some()
}

#[allow(clippy::too_many_arguments)]
async fn drain(
    l: &Lineup,
    clock: &ManualClock,
    pool: &Pool,
    workers: &[&WorkerId],
    accepted: &[EvalId],
    deliveries: &mut Deliveries,
    point: &str,
    action: &str,
) {
    let p = &pool.pool_id;
    let at = format!("after a fault ({action}) at {point}");
    for _round in 0..12 {
        for w in workers {
            let _ = l.heartbeat(&ADMIN, p, w, hb_req(&[], &[])).await;
        }
        for _ in 0..4 {
            match l.schedule_pass(pool, &opts()).await {
                Ok(s) if s.received == 0 => break,
                _ => {}
            }
        }
        for w in workers {
            for a in l.poll(&ADMIN, p, w, Duration::ZERO, 10).await.unwrap_or_default() {
                deliveries.entry((a.eval_id.clone(), a.attempt)).or_default().insert(a.alloc_id.clone());
                let _ = l.finish_alloc(&ADMIN, p, &a.alloc_id, complete(0)).await;
            }
        }
        let evals = l.store.get_evals(p, accepted).await.unwrap();
        if evals.len() == accepted.len() && evals.iter().all(|e| e.status.is_terminal()) {
            break;
        }
        clock.advance_secs(31);
        l.release_pass().await.unwrap();
    }
    let evals = l.store.get_evals(p, accepted).await.unwrap();
    assert_eq!(evals.len(), accepted.len(), "an accepted eval was lost {at}");
    for e in &evals {
        assert!(e.status.is_terminal(), "eval {} still {:?} {at}", e.eval_id, e.status);
    }
    for ((eval, attempt), allocs) in deliveries.iter() {
        assert_eq!(allocs.len(), 1, "eval {eval} placed twice for attempt {attempt} {at}");
    }
    assert!(l.store.live_allocs(p, None).await.unwrap().is_empty(), "a live alloc left {at}");
    assert_capacity_conserved(l.store.as_ref(), p).await;
    for w in l.store.list_workers(p).await.unwrap() {
        assert_eq!(w.free, w.capacity, "capacity not all back {at}");
    }
}

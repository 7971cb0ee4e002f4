//! The many-pools simulation (issue 15, target 2): the real scheduler, as the `schedule`
//! function runs it (`Lineup::schedule_until` with `lineup_lambda::schedule_options`),
//! over `POOLS` pools on the embedded store, every store and queue call delayed by
//! `LATENCY` as a remote backend's would be (`MeteredStore::latency`), the pools split
//! over `SHARDS` concurrent invocations as the EventBridge rules' inputs split them.
//! One pool is busy (`BUSY` evals queued, workers with room for all of them); every
//! other pool is idle, with `WORKERS` idle workers of its own (100,000 in all). It
//! prints the busy pool's placement rate with one scheduler loop, with as many as the
//! template allows (`ScheduleLoops`: more start while its passes come back full), and
//! among the other pools; and the calls the idle pools made, per pool and minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lineup_conformance::{new_eval, ADMIN};
use lineup_core::metered::{MeteredQueues, MeteredStore};
use lineup_core::service::Shard;
use lineup_core::*;
use lineup_sqlite::{Durability, SqliteBackend};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{report, Rows};

const POOLS: usize = 10_000;
const SHARDS: u32 = 4;
const BUSY: usize = 5_000;
/// Workers per pool: 100,000 in all among `POOLS`.
const WORKERS: usize = 10;
const LATENCY: Duration = Duration::from_millis(10);
/// How long the idle pools are watched: three long polls of 20 s each.
const WATCH: Duration = Duration::from_secs(60);

struct Sim {
    /// The busy pool's placements per second.
    rate: f64,
    /// Calls by operation over `WATCH`, all pools.
    calls: Vec<(String, f64)>,
}

pub async fn scenario(rows: &mut Rows) {
    let metrics = match PrometheusBuilder::new().install_recorder() {
        Ok(h) => h,
        Err(e) => return println!("pools: no metrics recorder: {e}"),
    };
    println!();
    println!(
        "many pools: the real scheduler over the embedded store, {} ms per call, {SHARDS} shards",
        LATENCY.as_millis()
    );
    // The schedule function's settings as the template deploys them.
    let deployed = match crate::deployed_functions() {
        Ok(f) => f,
        Err(e) => return println!("pools: the template's schedule function: {e}"),
    };
    let one_loop = lineup_lambda::FunctionSettings { schedule_loops: 1, ..deployed.clone() };
    let single = match run(1, &one_loop, &metrics).await {
        Ok(s) => s,
        Err(e) => return println!("pools (one loop): failed: {e}"),
    };
    let alone = match run(1, &deployed, &metrics).await {
        Ok(s) => s,
        Err(e) => return println!("pools (alone): failed: {e}"),
    };
    let many = match run(POOLS, &deployed, &metrics).await {
        Ok(s) => s,
        Err(e) => return println!("pools ({POOLS}): failed: {e}"),
    };
    println!(
        "busy pool: {:.0} placements/s with one loop, {:.0}/s with up to {} (the template's ScheduleLoops), \
         {:.0}/s among {POOLS} pools and {} workers",
        single.rate,
        alone.rate,
        deployed.schedule_loops,
        many.rate,
        POOLS * WORKERS
    );
    let minutes = WATCH.as_secs_f64() / 60.0;
    let idle = (POOLS - 1) as f64;
    let mut per_pool = 0.0;
    for (op, n) in &many.calls {
        let alone_n = alone.calls.iter().find(|(o, _)| o == op).map_or(0.0, |(_, n)| *n);
        // What the idle pools added: all calls less the busy pool's own (alone).
        let extra = (n - alone_n).max(0.0) / idle / minutes;
        per_pool += extra;
        println!("  {op:<28} {extra:>8.2} calls per idle pool per minute");
    }
    println!("  {:<28} {per_pool:>8.2}", "(all)");
    report(rows, "pools_busy_one_loop_per_s", single.rate, "placements/s", "printed");
    report(rows, "pools_busy_alone_per_s", alone.rate, "placements/s", "> one loop's");
    report(rows, "pools_busy_among_10k_per_s", many.rate, "placements/s", "≈ alone (not starved)");
    report(rows, "pools_idle_calls_per_pool_minute", per_pool, "calls", "printed");
}

/// `pools` pools (the first busy), scheduled by `SHARDS` invocations for `WATCH`.
async fn run(
    pools: usize,
    functions: &lineup_lambda::FunctionSettings,
    metrics: &PrometheusHandle,
) -> Result<Sim, String> {
    let err = |e: Error| e.to_string();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let b = Arc::new(SqliteBackend::open_dir(dir.path(), Durability::Process).map_err(|e| e.to_string())?);
    let settings = Settings::default();
    // Set up without latency; scheduled with it.
    let setup = Lineup::new(b.clone(), b.clone(), Arc::new(SystemClock), settings.clone(), "sim");
    setup.init().await.map_err(err)?;
    let busy = setup.create_pool(&ADMIN, Strategy::Spread).await.map_err(err)?;
    for _ in 1..pools {
        let idle = setup.create_pool(&ADMIN, Strategy::Spread).await.map_err(err)?;
        // Idle workers too (100,000 among 10,000 pools): a pass reads its own pool's.
        for _ in 0..WORKERS {
            setup.register_worker(&ADMIN, &idle.pool_id, 4).await.map_err(err)?;
        }
    }
    for _ in 0..WORKERS {
        setup.register_worker(&ADMIN, &busy.pool_id, BUSY as u32).await.map_err(err)?;
    }
    for _ in 0..BUSY {
        setup.submit_eval(&ADMIN, &busy.pool_id, new_eval(1, None)).await.map_err(err)?;
    }
    let store = Arc::new(MeteredStore { inner: b.clone(), backend: "sim", latency: LATENCY });
    let queues = Arc::new(MeteredQueues { inner: b.clone(), backend: "sim", latency: LATENCY });
    let l = Lineup::new(store, queues, Arc::new(SystemClock), settings, "sim");
    let before = calls(metrics);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + WATCH;
    let mut invocations = Vec::new();
    for k in 0..SHARDS {
        let (l, opts) = (l.clone(), lineup_lambda::schedule_options(functions, Shard::new(k, SHARDS)));
        invocations.push(tokio::spawn(async move { l.schedule_until(deadline, &opts).await }));
    }
    let mut rate = 0.0;
    while start.elapsed() < WATCH {
        let queued = b.pool_stats(&busy.pool_id, setup.now()).await.map_err(err)?.queued;
        if queued == 0 && rate == 0.0 {
            rate = BUSY as f64 / start.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if rate == 0.0 {
        // Not drained within the watch: what it placed in it.
        let queued = b.pool_stats(&busy.pool_id, setup.now()).await.map_err(err)?.queued;
        rate = (BUSY as u64).saturating_sub(queued) as f64 / start.elapsed().as_secs_f64();
    }
    for i in invocations {
        i.await.map_err(|e| e.to_string())?.map_err(err)?;
    }
    let after = calls(metrics);
    let calls = after.into_iter().map(|(op, n)| {
        let was = before.iter().find(|(o, _)| *o == op).map_or(0.0, |(_, n)| *n);
        (op, n - was)
    });
    Ok(Sim { rate, calls: calls.filter(|(_, n)| *n > 0.0).collect() })
}

/// The simulated backend's calls so far, by operation (`lineup_backend_calls_total`).
fn calls(metrics: &PrometheusHandle) -> Vec<(String, f64)> {
    let text = metrics.render();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(lineup_core::metrics::BACKEND_CALLS)) {
        if !line.contains("backend=\"sim\"") {
            continue;
        }
        let op = line.split("op=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        out.push((op.to_owned(), n));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

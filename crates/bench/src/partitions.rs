//! The partition scenario: DynamoDB's per-partition-key limits, scaled down, enforced
//! by moto's wrapper (`crates/conformance/python/partitions.py`, which meters and
//! throttles global secondary indexes' keys too), with the whole lifecycle running
//! against them: submit, schedule (the `schedule` function's settings from the
//! template), poll, complete. For one pool at each index shard count from 1 to 32 (the
//! curve) and a capped one with 2 (`max_running` too high to bind, so only its count
//! costs), it prints the units each placement consumed on each kind of key (the
//! hottest key of the kind), the ceiling those units predict for the budgets, and the
//! rate measured under them. In the same run, the Go seed's key design (every table
//! keyed by pool) under the same budgets, written the original's way
//! (`lineup_aws::Keys::ByPool`): placed and completed step by step by as many workers.
//!
//! The budgets are DynamoDB's per-partition limits (1,000 write and 3,000 read units a
//! second) divided by `SCALE`, so that moto's own speed is not what binds below ~16
//! shards: without budgets this lifecycle runs at ~26–33 placements/s on moto, and
//! `SCALE` 400 puts the predicted ceilings from 1.25/s (one shard) to ~20/s (32).
//! Multiply a figure by `SCALE` for DynamoDB's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lineup_aws::{create_pool_keyed_tables, create_tables, AwsBackend, Keys};
use lineup_conformance::moto::Moto;
use lineup_conformance::{complete, new_eval, ADMIN};
use lineup_core::service::NewPool;
use lineup_core::*;

use crate::{report, Rows};

pub const SCALE: f64 = 400.0;
const WCU: f64 = 1_000.0 / SCALE;
const RCU: f64 = 3_000.0 / SCALE;

/// One pool's shape: its index shards (0: the Go seed's keys), its cap, and how many
/// workers and evals run through it.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    shards: u32,
    cap: Option<u32>,
    workers: usize,
    evals: usize,
}

impl Shape {
    /// An uncapped pool with `shards`, with workers enough that no worker's own key
    /// binds (each takes ≈ 4 units a placement it gets; 2.5 workers per shard share a
    /// pool rate of ~2.5 × shards / 3 a second, about half of each one's budget), and
    /// evals enough for ~15 s at the predicted rate.
    const fn sharded(name: &'static str, shards: u32) -> Shape {
        let s = shards as usize;
        Shape {
            name,
            shards,
            cap: None,
            workers: if s < 4 { 10 } else { 5 * s / 2 },
            evals: if s < 4 { 40 } else { 12 * s },
        }
    }
}

/// The runs: the shard count's curve, a capped pool, the seed's keys.
const SHAPES: [Shape; 8] = [
    Shape::sharded("one_shard", 1),
    Shape::sharded("2_shards", 2),
    Shape::sharded("4_shards", 4),
    Shape::sharded("8_shards", 8),
    Shape::sharded("16_shards", 16),
    Shape::sharded("32_shards", 32),
    // `max_running` too high to bind: only its count costs.
    Shape { name: "capped_2_shards", shards: 2, cap: Some(100_000), workers: 10, evals: 40 },
    Shape { name: "seed_keys", shards: 0, cap: None, workers: 10, evals: 40 },
];

/// One pool's run: placements per second measured, and units per placement by
/// partition (`table: key`).
struct Run {
    rate: f64,
    units: BTreeMap<String, (f64, f64)>,
    throttled: u64,
}

impl Run {
    /// The rate the busiest partition allows: its budget over its units per placement.
    fn ceiling(&self) -> (f64, String) {
        self.units
            .iter()
            .map(|(k, (w, r))| {
                let by_w = if *w > 0.0 { WCU / w } else { f64::INFINITY };
                let by_r = if *r > 0.0 { RCU / r } else { f64::INFINITY };
                (by_w.min(by_r), k.clone())
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::INFINITY, String::new()))
    }
}

pub async fn scenario(rows: &mut Rows) {
    let moto = Moto::partitioned(&format!("wcu={WCU},rcu={RCU}"));
    println!();
    println!("DynamoDB partition limits scaled 1/{SCALE} ({WCU} write, {RCU} read units/s per key), moto");
    // The schedule function as the template deploys it (its loops, its long poll).
    let functions = match crate::deployed_functions() {
        Ok(f) => f,
        Err(e) => return println!("partitions: the template's schedule function: {e}"),
    };
    let mut curve = Vec::new();
    for shape in SHAPES {
        let name = shape.name;
        let run = if shape.shards == 0 {
            original_keys(&moto, shape).await
        } else {
            one_pool(&moto, shape, &functions).await
        };
        let run = match run {
            Ok(r) => r,
            Err(e) => return println!("partitions ({name}): failed: {e}"),
        };
        let (ceiling, hot) = run.ceiling();
        println!("{name} pool: units per placement over the lifecycle (write, read), by partition:");
        for (k, (w, r)) in &run.units {
            println!("  {k:<44} {w:>6.2} {r:>6.2}");
        }
        println!(
            "{name} pool: predicted ceiling {ceiling:.1}/s (hottest: {hot}), measured {:.1}/s, {} requests throttled; \
             at DynamoDB's limits ×{SCALE}: {:.0}/s predicted",
            run.rate,
            run.throttled,
            ceiling * SCALE
        );
        report(rows, &format!("partitions_{name}_placements_per_s"), run.rate, "placements/s", "printed");
        report(rows, &format!("partitions_{name}_predicted_per_s"), ceiling, "placements/s", "measured ≈ predicted");
        curve.push((shape, ceiling, run));
    }
    println!();
    println!("the curve, ×{SCALE} for DynamoDB's limits (measured far below predicted with few requests throttled: moto's own speed bound it, not the budgets):");
    println!(
        "  {:<16} {:>6} {:>8} {:>11} {:>10} {:>10} {:>10}",
        "pool", "shards", "workers", "throttled", "predicted", "measured", "×SCALE"
    );
    for (shape, ceiling, run) in &curve {
        println!(
            "  {:<16} {:>6} {:>8} {:>11} {:>8.1}/s {:>8.1}/s {:>8.0}/s",
            shape.name,
            shape.shards,
            shape.workers,
            run.throttled,
            ceiling,
            run.rate,
            run.rate * SCALE
        );
    }
}

/// The Go seed's keys: the shape's evals submitted, then placed and completed step by
/// step (claim, alloc, eval; read alloc, release, give back, complete) by one task per
/// worker at once, metered from the first placement. No queues: only the table keys are measured.
async fn original_keys(moto: &Moto, shape: Shape) -> Result<Run, String> {
    let err = |e: Error| e.to_string();
    // Lineup's own tables only lend a pool record and `placement_of` (pure).
    let prefix = format!("o{}", PoolId::generate());
    let lb = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    create_tables(lb.dynamodb(), lb.tables()).await.map_err(err)?;
    let settings = Settings { deployment: prefix.clone(), ..Settings::default() };
    let l = Lineup::new(lb.clone(), lb.clone(), Arc::new(SystemClock), settings, "bench");
    l.init().await.map_err(err)?;
    let pool = l.create_pool(&ADMIN, Strategy::Spread).await.map_err(err)?;
    let ob = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &format!("{prefix}-seed")).await);
    create_pool_keyed_tables(ob.dynamodb(), ob.tables()).await.map_err(err)?;
    let now = l.now();
    let mut workers = Vec::new();
    for _ in 0..shape.workers {
        let w = Worker {
            pool_id: pool.pool_id.clone(),
            worker_id: WorkerId::generate(),
            capacity: 100,
            free: 100,
            ttl: now + 3_600_000,
            token_hash: String::new(),
            queue: String::new(),
            created_at: now,
        };
        retry(|| ob.original_put_worker(&w)).await?;
        workers.push(w.worker_id);
    }
    let mut evals = Vec::new();
    for _ in 0..shape.evals {
        let e = Eval::queued(pool.pool_id.clone(), 1, None, None, Priority::DEFAULT, None, l.now());
        retry(|| ob.original_put_eval(&e, Keys::ByPool)).await?;
        evals.push(e);
    }
    moto.units(true);
    let start = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(evals));
    let mut tasks: Vec<tokio::task::JoinHandle<Result<(), String>>> = Vec::new();
    for w in workers {
        let (l, ob, pool, queue) = (l.clone(), ob.clone(), pool.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(eval) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else { return Ok(()) };
                let now = l.now();
                let (alloc, next) = l.placement_of(&pool, &eval, &w, Claim::default(), now);
                retry(|| ob.place_in_steps(&alloc, &next, eval.version, now, Keys::ByPool)).await?;
                retry(|| ob.complete_in_steps(&pool.pool_id, &alloc.alloc_id, l.now(), Keys::ByPool)).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let rate = shape.evals as f64 / start.elapsed().as_secs_f64();
    let run = units_of(&moto.units(false), &prefix, &pool, rate, shape.evals);
    let _ = lineup_aws::delete_tables(lb.dynamodb(), lb.tables()).await;
    Ok(run)
}

/// `op` until it succeeds: a write throttled past the SDK's retries is tried again
/// after a pause (the original's steps are not atomic, so a step that failed after
/// some of its writes landed writes them again; the bench counts keys, not capacity).
async fn retry<T, F, Fut>(mut op: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    for _ in 0..2_000 {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Error::Backend(_)) => tokio::time::sleep(Duration::from_millis(300)).await,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("throttled 2,000 times".into())
}

/// Submits the shape's evals, then runs the schedule function with `functions` and the
/// shape's polling workers until all are complete, metering the partitions from the
/// first placement to the last completion.
async fn one_pool(moto: &Moto, shape: Shape, functions: &lineup_lambda::FunctionSettings) -> Result<Run, String> {
    let Shape { shards, cap, .. } = shape;
    let prefix = format!("p{}", PoolId::generate());
    let backend = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    create_tables(backend.dynamodb(), backend.tables()).await.map_err(|e| e.to_string())?;
    // As a deployment's LINEUP_INDEX_SHARDS does (the Lambda deps and `lineup dev`).
    backend.set_index_shards(shards);
    let settings = Settings { deployment: prefix.clone(), index_shards: shards, ..Settings::default() };
    let l = Lineup::new(backend.clone(), backend.clone(), Arc::new(SystemClock), settings, "bench");
    let err = |e: Error| e.to_string();
    l.init().await.map_err(err)?;
    let new = NewPool { strategy: Strategy::Spread, max_running: cap, ..Default::default() };
    let pool = l.create_pool_with(&ADMIN, new).await.map_err(err)?;
    let mut workers = Vec::new();
    for _ in 0..shape.workers {
        // Registration checks the pool item in its transaction: under these budgets a
        // capped pool's item may stay throttled past every retry (a 5xx the worker
        // retries, as it would any).
        workers.push(retry(|| l.register_worker(&ADMIN, &pool.pool_id, 100)).await?.worker.worker_id);
    }
    let mut submitted = 0;
    let mut refused = 0;
    while submitted < shape.evals {
        // A client's retry of a 5xx (throttled past the backend's retries).
        // (The SDK's retry quota runs dry under sustained throttling; then a throttled
        // write fails at once, and the client backs off.)
        match l.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await {
            Ok(_) => submitted += 1,
            Err(Error::Backend(_)) if refused < 2_000 => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    moto.units(true);
    let start = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in workers {
        let (l, pool, done, stop) = (l.clone(), pool.pool_id.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Throttled past the SDK's retries (its retry quota runs dry under
                // sustained throttling, and then a call fails at once): back off and
                // try again, as the agent does.
                let Ok(allocs) = l.poll(&ADMIN, &pool, &w, Duration::from_secs(1), 10).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                for a in allocs {
                    for _ in 0..300 {
                        if l.finish_alloc(&ADMIN, &pool, &a.alloc_id, complete(0)).await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    let opts = lineup_lambda::schedule_options(functions, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let schedule = {
        let l = l.clone();
        tokio::spawn(async move { l.schedule_until(deadline, &opts).await })
    };
    while done.load(Ordering::Relaxed) < shape.evals {
        if tokio::time::Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            schedule.abort();
            return Err(format!("only {} of {} complete", done.load(Ordering::Relaxed), shape.evals));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    schedule.abort();
    let rate = shape.evals as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let run = units_of(&moto.units(false), &prefix, &pool, rate, shape.evals);
    let _ = lineup_aws::delete_tables(backend.dynamodb(), backend.tables()).await;
    Ok(run)
}

/// A meter reading as units per placement by kind of key (the hottest key of each).
fn units_of(meter: &serde_json::Value, prefix: &str, pool: &Pool, rate: f64, evals: usize) -> Run {
    let mut units: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut throttled = 0;
    if let Some(parts) = meter["partitions"].as_object() {
        for (key, v) in parts {
            throttled += v["throttled"].as_u64().unwrap_or(0);
            let (w, r) = (v["wcu"].as_f64().unwrap_or(0.0), v["rcu"].as_f64().unwrap_or(0.0));
            if w + r > 0.0 {
                // Keys of one kind (one item each) share a label: the hottest stands for them.
                let e = units.entry(label(key, prefix, pool)).or_insert((0.0, 0.0));
                *e = (e.0.max(w / evals as f64), e.1.max(r / evals as f64));
            }
        }
    }
    Run { rate, units, throttled }
}

/// A key by kind (crates/aws/src/keys.rs): `p…-evals:{"S": "<pool>/<id>"}` → `evals:
/// a record`, `p…-evals/by_status:{"S": "<pool>#placed#3"}` → `evals/by_status: placed
/// shard`, `…:{"S": "<pool>#3"}` → `…: shard`, the pools table's → `pools: the pool`.
fn label(key: &str, prefix: &str, pool: &Pool) -> String {
    let (table, value) = key.split_once(':').unwrap_or((key, ""));
    let table = table.rsplit_once(prefix).map(|(_, t)| t.trim_start_matches('-')).unwrap_or(table);
    let v: String = serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|j| j.get("S").and_then(|s| s.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let rest = v.strip_prefix(pool.pool_id.as_str()).unwrap_or("?");
    let kind = match rest.chars().next() {
        None => "the pool".to_string(),
        Some('/') => "a record".to_string(),
        Some('#') => match rest[1..].split('#').collect::<Vec<_>>().as_slice() {
            [status, _] => format!("{status} shard"),
            _ => "shard".to_string(),
        },
        _ => "other".to_string(),
    };
    format!("{table}: {kind}")
}

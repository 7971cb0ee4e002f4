//! The AWS scenario: the whole lifecycle of 100 evals on 10 workers over moto, every
//! AWS call counted by operation and every DynamoDB unit metered (moto's partition
//! mode with budgets too large to bind), in two shapes measured in the same run:
//!
//! - **Lineup's**: the gateway's submit, poll, heartbeat and complete, and the
//!   scheduler's passes (batched receive, one candidate query and one batch read per
//!   receive, one `TransactWriteItems` per pass, sends grouped by worker);
//! - **the Go original's**: put the eval and send; one message per receive, a read and
//!   a candidate query per eval, claim then put then write the eval, one send and one
//!   delete per eval; workers reading their SQS queue one message at a time; a
//!   heartbeat that writes the worker and each alloc; a completion that reads the
//!   alloc, then releases it, gives the capacity back and marks the eval, each a plain
//!   write (`lineup_aws::AwsBackend::place_in_steps` and its neighbours).
//!
//! The lifecycle: submit, place and deliver, poll, one heartbeat per alloc (each
//! worker heartbeats once, listing the allocs it runs, as the agent does), complete.
//! Calls and units, not time: moto is far slower than AWS. Idle long polls (empty
//! receives) are left out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lineup_aws::{create_tables, AwsBackend, Keys};
use lineup_conformance::moto::Moto;
use lineup_conformance::{complete, hb_req, new_eval, ADMIN};
use lineup_core::service::{PoolScheduler, SchedulerOptions};
use lineup_core::*;

const EVALS: usize = 100;
const WORKERS: usize = 10;
pub const PHASES: [&str; 5] = ["submit", "place + deliver", "poll", "heartbeat", "complete"];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Lineup,
    Original,
}

/// One shape's lifecycle, per placement.
pub struct Lifecycle {
    /// Calls by operation, per phase (`PHASES`).
    pub phases: Vec<BTreeMap<String, f64>>,
    /// DynamoDB write and read units, as metered.
    pub wcu: f64,
    pub rcu: f64,
    /// Per phase (`PHASES`): write units on tables, write units on indexes, read units.
    pub units: Vec<Units>,
    /// Requests through API Gateway to the gateway function.
    pub gateway: f64,
}

impl Lifecycle {
    pub fn calls(&self) -> f64 {
        self.phases.iter().map(total).sum()
    }

    pub fn sqs(&self) -> f64 {
        self.phases.iter().flat_map(|p| p.iter()).filter(|(op, _)| op.starts_with("SQS.")).map(|(_, n)| n).sum()
    }

    /// Dollars per million placements at `PRICES`: DynamoDB, SQS, API Gateway + Lambda requests.
    pub fn dollars(&self) -> (f64, f64, f64) {
        (self.wcu * WRU + self.rcu * RRU, self.sqs() * SQS, self.gateway * (HTTP_API + LAMBDA))
    }
}

/// One phase's metered DynamoDB units, per placement.
#[derive(Clone, Copy, Default)]
pub struct Units {
    pub table_wcu: f64,
    pub index_wcu: f64,
    pub rcu: f64,
}

pub fn total(m: &BTreeMap<String, f64>) -> f64 {
    m.values().sum()
}

/// Whether moto can be started (the venv `make test` and `make bench` install).
pub fn moto_available() -> bool {
    std::env::var("LINEUP_MOTO_PYTHON").map(|p| Path::new(&p).exists()).unwrap_or(false)
        || Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python")).exists()
}

fn per_eval(m: BTreeMap<String, u64>, idle_receives: u64) -> BTreeMap<String, f64> {
    m.into_iter()
        .map(|(op, n)| {
            let n = if op == "SQS.ReceiveMessage" { n.saturating_sub(idle_receives) } else { n };
            (op, n as f64 / EVALS as f64)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// A moto server metering DynamoDB units, with budgets that never bind.
pub fn meter() -> Moto {
    Moto::partitioned("wcu=1000000000,rcu=1000000000")
}

/// Runs one shape's lifecycle against `moto` (see the module doc).
pub async fn measure(moto: &Moto, shape: Shape) -> Result<Lifecycle, String> {
    let prefix = format!("b{}", PoolId::generate());
    // Each role on its own clients, as the functions are, so each share is exact.
    let gateway_b = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    let sched_b = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &prefix).await);
    create_tables(gateway_b.dynamodb(), gateway_b.tables()).await.map_err(|e| e.to_string())?;
    let settings = Settings { deployment: prefix, ..Settings::default() };
    let gw = Lineup::new(gateway_b.clone(), gateway_b.clone(), Arc::new(SystemClock), settings.clone(), "bench");
    let sched = Lineup::new(sched_b.clone(), sched_b.clone(), Arc::new(SystemClock), settings.clone(), "bench");
    let err = |e: Error| e.to_string();
    gw.init().await.map_err(err)?;
    let pool = gw.create_pool(&ADMIN, Strategy::Spread).await.map_err(err)?;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(gw.register_worker(&ADMIN, &pool.pool_id, 10).await.map_err(err)?.worker);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let late = |what: &str, n: usize| {
        if tokio::time::Instant::now() > deadline {
            Err(format!("only {n} {what}"))
        } else {
            Ok(())
        }
    };
    let mut phases = Vec::new();
    let mut units = Vec::new();
    let mut gateway = 0usize;
    moto.units(true);

    // ---- submit
    gateway_b.calls().reset();
    for _ in 0..EVALS {
        match shape {
            Shape::Lineup => {
                gw.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.map_err(err)?;
            }
            Shape::Original => {
                let e = Eval::queued(pool.pool_id.clone(), 1, None, None, Priority::DEFAULT, None, gw.now());
                gateway_b.original_put_eval(&e, Keys::Lineup).await.map_err(err)?;
                let body = serde_json::to_string(&EvalMessage::of(&e)).map_err(|e| e.to_string())?;
                gw.queues.send(&settings.pool_queue(&pool.pool_id), &[body]).await.map_err(err)?;
            }
        }
        gateway += 1;
    }
    phases.push(per_eval(gateway_b.calls().snapshot(), 0));
    units.push(metered(&moto.units(true)));

    // ---- place + deliver
    sched_b.calls().reset();
    let (mut placed, mut idle) = (0, 0u64);
    let opts = SchedulerOptions { wait: Duration::from_secs(1), ..Default::default() };
    let mut ps = (shape == Shape::Lineup).then(|| PoolScheduler::new(sched.clone(), pool.clone(), opts));
    while placed < EVALS {
        late("placed", placed)?;
        match &mut ps {
            Some(ps) => {
                let pass = ps.step(Duration::from_secs(1)).await.map_err(err)?;
                idle += u64::from(pass.received == 0);
                placed += pass.placed;
            }
            None if original_step(&sched, &sched_b, &settings, &pool).await.map_err(err)? => placed += 1,
            None => idle += 1,
        }
    }
    phases.push(per_eval(sched_b.calls().snapshot(), idle));
    units.push(metered(&moto.units(true)));

    // ---- poll: every alloc reaches its worker
    gateway_b.calls().reset();
    let mut running: Vec<Vec<AllocId>> = vec![Vec::new(); WORKERS];
    let (mut got, mut idle) = (0, 0u64);
    while got < EVALS {
        late("delivered", got)?;
        for (i, w) in workers.iter().enumerate() {
            let ids = match shape {
                Shape::Lineup => {
                    gateway += 1;
                    let msgs =
                        gw.poll(&ADMIN, &pool.pool_id, &w.worker_id, Duration::from_secs(1), 10).await.map_err(err)?;
                    msgs.into_iter().map(|m| m.alloc_id).collect()
                }
                Shape::Original => original_poll(&gw, &settings, w).await.map_err(err)?,
            };
            idle += u64::from(ids.is_empty());
            got += ids.len();
            running[i].extend(ids);
        }
    }
    phases.push(per_eval(gateway_b.calls().snapshot(), idle));
    units.push(metered(&moto.units(true)));

    // ---- heartbeat: each worker once, listing what it runs
    gateway_b.calls().reset();
    for (w, allocs) in workers.iter().zip(&running) {
        gateway += 1;
        match shape {
            Shape::Lineup => {
                let stop = gw.heartbeat(&ADMIN, &pool.pool_id, &w.worker_id, hb_req(&[], allocs)).await.map_err(err)?;
                if !stop.is_empty() {
                    return Err(format!("heartbeat told {} allocs to stop", stop.len()));
                }
            }
            Shape::Original => {
                let ttl = gw.now() + settings.worker_ttl_ms();
                gateway_b.heartbeat_in_steps(w, allocs, ttl, Keys::Lineup).await.map_err(err)?;
            }
        }
    }
    phases.push(per_eval(gateway_b.calls().snapshot(), 0));
    units.push(metered(&moto.units(true)));

    // ---- complete
    gateway_b.calls().reset();
    for a in running.iter().flatten() {
        gateway += 1;
        match shape {
            Shape::Lineup => {
                gw.finish_alloc(&ADMIN, &pool.pool_id, a, complete(0)).await.map_err(err)?;
            }
            Shape::Original => {
                gateway_b.complete_in_steps(&pool.pool_id, a, gw.now(), Keys::Lineup).await.map_err(err)?
            }
        }
    }
    phases.push(per_eval(gateway_b.calls().snapshot(), 0));
    units.push(metered(&moto.units(true)));

    let _ = lineup_aws::delete_tables(gateway_b.dynamodb(), gateway_b.tables()).await;
    let per = EVALS as f64;
    let wcu = units.iter().map(|u| u.table_wcu + u.index_wcu).sum();
    let rcu = units.iter().map(|u| u.rcu).sum();
    Ok(Lifecycle { phases, wcu, rcu, units, gateway: gateway as f64 / per })
}

/// A meter reading's write units (on tables, on indexes: partitions named
/// `table/index:key`) and read units, per placement.
fn metered(reading: &serde_json::Value) -> Units {
    let per = EVALS as f64;
    let parts = reading["partitions"].as_object().into_iter().flat_map(|m| m.iter());
    parts.fold(Units::default(), |u, (key, v)| {
        let (w, r) = (v["wcu"].as_f64().unwrap_or(0.0) / per, v["rcu"].as_f64().unwrap_or(0.0) / per);
        let on_index = key.split(':').next().is_some_and(|at| at.contains('/'));
        Units {
            table_wcu: u.table_wcu + if on_index { 0.0 } else { w },
            index_wcu: u.index_wcu + if on_index { w } else { 0.0 },
            rcu: u.rcu + r,
        }
    })
}

/// One eval the Go original's way. False if the receive was empty.
async fn original_step(l: &Lineup, b: &AwsBackend, settings: &Settings, pool: &Pool) -> Result<bool> {
    let queue = settings.pool_queue(&pool.pool_id);
    let Some(m) = l.queues.receive(&queue, 1, Duration::from_secs(1), Duration::from_secs(30)).await?.pop() else {
        return Ok(false);
    };
    let msg: EvalMessage = serde_json::from_str(&m.body).map_err(|e| Error::backend("decode", e))?;
    let eval = l.store.get_eval(&pool.pool_id, &msg.eval_id).await?.ok_or_else(|| Error::not_found("eval"))?;
    let now = l.now();
    let cands: Vec<placement::Candidate> = l
        .store
        .candidates(&pool.pool_id, eval.size, now)
        .await?
        .into_iter()
        .map(|w| placement::Candidate { worker_id: w.worker_id, free: w.free, ttl: w.ttl })
        .collect();
    let idx = placement::best(eval.size, &Default::default(), &cands, pool.strategy, now)
        .map_err(|b| Error::backend("place", b))?;
    let worker = cands[idx].worker_id.clone();
    let (alloc, next) = l.placement_of(pool, &eval, &worker, lineup_core::Claim::default(), now);
    b.place_in_steps(&alloc, &next, eval.version, now, Keys::Lineup).await?;
    let body = lineup_core::service::alloc_message(pool, &eval, &alloc)?;
    l.queues.send(&settings.worker_queue(&pool.pool_id, &worker), &[body]).await?;
    l.queues.delete(&queue, &[m.receipt]).await?;
    Ok(true)
}

/// A worker of the original: one message per receive from its own queue, then deleted.
async fn original_poll(l: &Lineup, settings: &Settings, w: &Worker) -> Result<Vec<AllocId>> {
    let queue = settings.worker_queue(&w.pool_id, &w.worker_id);
    let Some(m) = l.queues.receive(&queue, 1, Duration::from_secs(1), Duration::from_secs(30)).await?.pop() else {
        return Ok(Vec::new());
    };
    l.queues.delete(&queue, &[m.receipt]).await?;
    let a: AllocMessage = serde_json::from_str(&m.body).map_err(|e| Error::backend("decode", e))?;
    Ok(vec![a.alloc_id])
}

/// On-demand prices, us-east-1, as published on the AWS pricing pages (read
/// 2026-12-03), dollars per million: DynamoDB write and read request units, SQS
/// standard requests (first 64 KB), API Gateway HTTP API requests (first 300 M),
/// Lambda requests (duration not included).
pub const PRICES: &str =
    "us-east-1 on-demand (read 2026-12-03): DynamoDB $0.625/M WRU, $0.125/M RRU; SQS $0.40/M requests; \
     API Gateway HTTP API $1.00/M; Lambda $0.20/M requests (duration not included)";
const WRU: f64 = 0.625;
const RRU: f64 = 0.125;
const SQS: f64 = 0.40;
const HTTP_API: f64 = 1.00;
const LAMBDA: f64 = 0.20;

//! The AWS scenario: the AWS backend over moto, 100 evals on 10 workers, the
//! scheduler's calls counted by operation, in two shapes measured in the same run:
//! Lineup's (10 messages per receive, one candidate query and one batch read per
//! receive, one `TransactWriteItems` per placement, sends grouped by worker) and the Go
//! original's (one message per receive, a read and a candidate query per eval, claim
//! then put then write the eval, one send and one delete per eval). Calls, not time:
//! moto is far slower than AWS. Idle long polls (empty receives) are left out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::moto::Moto;
use lineup_conformance::{complete, new_eval, ADMIN};
use lineup_core::service::{PoolScheduler, SchedulerOptions};
use lineup_core::*;

const EVALS: usize = 100;
const WORKERS: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Lineup,
    Original,
}

/// Calls per placement by operation, for one shape.
pub struct Counted {
    pub schedule: BTreeMap<String, f64>,
    /// Lineup's shape only: the gateway's calls per eval for submit, and for poll + complete.
    pub submit: BTreeMap<String, f64>,
    pub worker: BTreeMap<String, f64>,
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

pub async fn measure(shape: Shape) -> Result<Counted, String> {
    let moto = Moto::shared();
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
        workers.push(gw.register_worker(&ADMIN, &pool.pool_id, 10).await.map_err(err)?.worker.worker_id);
    }
    gateway_b.calls().reset();
    for _ in 0..EVALS {
        gw.submit_eval(&ADMIN, &pool.pool_id, new_eval(1, None)).await.map_err(err)?;
    }
    let submit = gateway_b.calls().snapshot();
    sched_b.calls().reset();

    let mut placed = 0;
    let mut idle = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    match shape {
        Shape::Lineup => {
            let opts = SchedulerOptions { wait: Duration::from_secs(1), ..Default::default() };
            let mut ps = PoolScheduler::new(sched.clone(), pool.clone(), opts);
            while placed < EVALS {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("only {placed} placed"));
                }
                let pass = ps.step(Duration::from_secs(1)).await.map_err(err)?;
                if pass.received == 0 && pass.placed == 0 {
                    idle += 1;
                }
                placed += pass.placed;
            }
        }
        Shape::Original => {
            while placed < EVALS {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("only {placed} placed"));
                }
                if original_step(&sched, &sched_b, &settings, &pool).await.map_err(err)? {
                    placed += 1;
                } else {
                    idle += 1;
                }
            }
        }
    }
    let schedule = sched_b.calls().snapshot();

    // The workers' side (Lineup's gateway either way): poll and complete everything.
    gateway_b.calls().reset();
    let mut done = 0;
    while done < EVALS {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("only {done} completed"));
        }
        for w in &workers {
            for a in gw.poll(&ADMIN, &pool.pool_id, w, Duration::from_secs(1), 10).await.map_err(err)? {
                gw.finish_alloc(&ADMIN, &pool.pool_id, &a.alloc_id, complete(0)).await.map_err(err)?;
                done += 1;
            }
        }
    }
    let worker = gateway_b.calls().snapshot();
    let _ = lineup_aws::delete_tables(gateway_b.dynamodb(), gateway_b.tables()).await;
    Ok(Counted { schedule: per_eval(schedule, idle), submit: per_eval(submit, 0), worker: per_eval(worker, 0) })
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
    b.place_in_steps(&alloc, &next, eval.version, now).await?;
    let body = lineup_core::service::alloc_message(pool, &eval, &alloc)?;
    l.queues.send(&settings.worker_queue(&pool.pool_id, &worker), &[body]).await?;
    l.queues.delete(&queue, &[m.receipt]).await?;
    Ok(true)
}

/// On-demand prices, us-east-1 (2026), dollars per million: DynamoDB write and read
/// request units, SQS requests.
const WRU: f64 = 0.625;
const RRU: f64 = 0.125;
const SQS: f64 = 0.40;

/// Dollars per million placements for calls per placement `m`, items under 1 KB:
/// `TransactWriteItems` of a placement writes 3 items at 2 WRU each; a plain write is
/// 1 WRU; `GetItem` and `BatchGetItem` (strongly consistent) 1 RRU per item, one eval
/// each per placement; a `Query` on an index (eventually consistent, under 4 KB) 0.5 RRU;
/// every SQS request one request.
pub fn dollars_per_million(m: &BTreeMap<String, f64>) -> (f64, f64) {
    let mut ddb = 0.0;
    let mut sqs = 0.0;
    for (op, calls) in m {
        match op.as_str() {
            "DynamoDB.TransactWriteItems" => ddb += calls * 6.0 * WRU,
            "DynamoDB.UpdateItem" | "DynamoDB.PutItem" | "DynamoDB.DeleteItem" => ddb += calls * WRU,
            "DynamoDB.GetItem" => ddb += calls * RRU,
            // One eval per placement, however many calls carried them.
            "DynamoDB.BatchGetItem" => ddb += RRU,
            "DynamoDB.Query" => ddb += calls * 0.5 * RRU,
            op if op.starts_with("SQS.") => sqs += calls * SQS,
            _ => {}
        }
    }
    (ddb, sqs)
}

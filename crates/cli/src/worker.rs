//! `lineup worker run`: the worker agent. Registers, heartbeats at a third of the
//! shorter of the worker and alloc TTLs (listing its datasets and running allocs),
//! long-polls its queue, runs the command once per alloc, never more than its capacity
//! at once, and reports the exit code (0 → complete, else fail). On SIGTERM/SIGINT it
//! stops taking allocs, lets the running ones finish, and exits.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lineup_client::{is_transient, Client, ClientError};
use lineup_core::validate;
use lineup_core::AllocMessage;
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::CliError;

pub struct WorkerOptions {
    pub pool: String,
    pub capacity: u32,
    pub datasets: Vec<String>,
    pub command: Vec<String>,
    /// Seconds per long poll.
    pub wait: u64,
    /// Read the queue straight from SQS (AWS credentials needed) instead of polling the API.
    pub sqs: bool,
    /// With `sqs`: an emulator's URL.
    pub aws_endpoint: Option<String>,
}

/// Where allocs come from: the API's poll route, or the worker's SQS queue itself.
enum Source {
    Api,
    Sqs(lineup_aws::DirectQueue),
}

/// Running allocs: id → the handle that kills it.
type Running = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

fn lock(r: &Running) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

pub async fn run(admin: Client, opts: WorkerOptions) -> Result<(), CliError> {
    if opts.command.is_empty() {
        return Err(CliError::Usage(
            "give the command to run after --, e.g. `lineup worker run --pool P --capacity 4 -- ./job.sh`".into(),
        ));
    }
    let reg = admin.register_worker(&opts.pool, opts.capacity).await?;
    let token = reg.token.clone().ok_or_else(|| CliError::Usage("registration returned no worker token".into()))?;
    let client = admin.with_token(&token);
    let worker = reg.worker_id.clone();
    let ttl = reg.ttl.min(reg.alloc_ttl.unwrap_or(reg.ttl)).max(1);
    let interval = Duration::from_millis(ttl * 1000 / 3);
    println!("worker {worker} registered in pool {} with capacity {}", opts.pool, opts.capacity);

    let running: Running = Arc::default();
    let slots = Arc::new(Semaphore::new(opts.capacity as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let opts = Arc::new(opts);

    let hb = tokio::spawn(heartbeat_loop(
        client.clone(),
        opts.clone(),
        worker.clone(),
        running.clone(),
        interval,
        stop_rx.clone(),
    ));
    let source = if opts.sqs {
        Source::Sqs(lineup_aws::DirectQueue::connect(&reg.queue_url, opts.aws_endpoint.as_deref()).await)
    } else {
        Source::Api
    };
    let poller = tokio::spawn(poll_loop(
        client.clone(),
        opts.clone(),
        worker.clone(),
        running.clone(),
        slots.clone(),
        stop_rx.clone(),
        source,
    ));

    tokio::select! {
        _ = crate::dev_signal() => info!("signal: no new allocs; waiting for running ones"),
        r = poller => {
            // The poll loop only ends on its own when the worker can no longer work.
            let _ = stop_tx.send(true);
            hb.abort();
            return match r {
                Ok(Err(e)) => Err(e),
                _ => Ok(()),
            };
        }
    }
    let _ = stop_tx.send(true);
    // Every running alloc holds its permits; when all are back, all have finished.
    let _ = slots.acquire_many(opts.capacity).await;
    hb.abort();
    println!("worker {worker} stopped");
    Ok(())
}

async fn heartbeat_loop(
    client: Client,
    opts: Arc<WorkerOptions>,
    worker: String,
    running: Running,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let allocs: Vec<String> = lock(&running).keys().cloned().collect();
        match client.heartbeat(&opts.pool, &worker, &opts.datasets, &allocs).await {
            Ok(reply) => {
                for a in reply.cancelled {
                    if let Some(kill) = lock(&running).remove(&a) {
                        info!(alloc = %a, "alloc cancelled; stopping it");
                        let _ = kill.send(());
                    }
                }
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            // Keep heartbeating while allocs drain after a stop; the task is aborted at the end.
            _ = stop.changed() => {}
        }
    }
}

async fn poll_loop(
    client: Client,
    opts: Arc<WorkerOptions>,
    worker: String,
    running: Running,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    source: Source,
) -> Result<(), CliError> {
    let wait = Duration::from_secs(opts.wait.min(20));
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let got = tokio::select! {
            r = next_allocs(&client, &source, &opts.pool, &worker, wait) => r,
            _ = stop.changed() => return Ok(()),
        };
        let allocs = match got {
            Ok(a) => a,
            Err(e) if is_transient(&e) => {
                warn!(error = %e, "poll failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(ClientError::Api { status: 409 | 410 | 404, message, .. }) => {
                return Err(CliError::Usage(format!("worker {worker} cannot go on: {message}")));
            }
            Err(e) => return Err(e.into()),
        };
        for a in allocs {
            // The server never sends more than the free capacity; this keeps the
            // promise locally too, even if a cancelled alloc is still winding down.
            let permits = match slots.clone().acquire_many_owned(a.size.min(opts.capacity)).await {
                Ok(p) => p,
                Err(_) => return Ok(()),
            };
            let (kill_tx, kill_rx) = oneshot::channel();
            lock(&running).insert(a.alloc_id.to_string(), kill_tx);
            let (client, opts, running) = (client.clone(), opts.clone(), running.clone());
            tokio::spawn(async move {
                run_alloc(&client, &opts, &a, kill_rx).await;
                lock(&running).remove(a.alloc_id.as_str());
                drop(permits);
            });
        }
    }
}

async fn next_allocs(
    client: &Client,
    source: &Source,
    pool: &str,
    worker: &str,
    wait: Duration,
) -> Result<Vec<AllocMessage>, ClientError> {
    match source {
        Source::Api => client.poll(pool, worker, wait, 10).await,
        Source::Sqs(q) => match q.take(10, wait).await {
            Ok(bodies) => Ok(bodies
                .iter()
                .filter_map(|b| match serde_json::from_str::<AllocMessage>(b) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        warn!(error = %e, "dropping malformed alloc message");
                        None
                    }
                })
                .collect()),
            Err(lineup_core::Error::QueueGone(_)) => Err(ClientError::Api {
                status: 410,
                code: "queue_gone".into(),
                message: "the worker's queue is gone (worker removed or pool disbanded)".into(),
            }),
            Err(e) => Err(ClientError::Decode { url: "sqs".into(), message: e.to_string() }),
        },
    }
}

/// Runs the command for one alloc and reports how it ended.
async fn run_alloc(client: &Client, opts: &WorkerOptions, a: &AllocMessage, kill: oneshot::Receiver<()>) {
    let alloc = a.alloc_id.to_string();
    let payload = a.payload.as_ref().map(|p| p.to_string()).unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..])
        .env("LINEUP_ALLOC_ID", &alloc)
        .env("LINEUP_EVAL_ID", a.eval_id.as_str())
        .env("LINEUP_POOL_ID", a.pool_id.as_str())
        .env("LINEUP_WORKER_ID", a.worker_id.as_str())
        .env("LINEUP_DATASET", a.dataset.as_deref().unwrap_or(""))
        .env("LINEUP_PAYLOAD", &payload)
        .env("LINEUP_ATTEMPT", a.attempt.to_string())
        .env("LINEUP_SIZE", a.size.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            report(client, &opts.pool, &alloc, Err(format!("cannot start {:?}: {e}", opts.command[0]))).await;
            return;
        }
    };
    info!(alloc = %alloc, eval = %a.eval_id, "alloc started");
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let read_all = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let ro = async {
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_end(&mut o).await;
            }
        };
        let re = async {
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut e).await;
            }
        };
        tokio::join!(ro, re);
        o.extend_from_slice(&e);
        o
    };
    let (status, output) = tokio::select! {
        (status, output) = async { let output = read_all.await; (child.wait().await, output) } => (status, output),
        _ = kill => {
            let _ = child.kill().await;
            report(client, &opts.pool, &alloc, Err("cancelled: stopped by the worker".into())).await;
            return;
        }
    };
    let text = validate::output(&String::from_utf8_lossy(&output));
    let result = match status {
        Ok(s) if s.success() => Ok(text),
        Ok(s) => Err(format!(
            "exit status {}: {}",
            s.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
            validate::reason(&text)
        )),
        Err(e) => Err(format!("waiting for the command: {e}")),
    };
    report(client, &opts.pool, &alloc, result).await;
}

/// Completes or fails the alloc, retrying while the server is unreachable.
async fn report(client: &Client, pool: &str, alloc: &str, result: Result<String, String>) {
    for attempt in 0..30u32 {
        let r = match &result {
            Ok(out) => client.complete(pool, alloc, 0, Some(out)).await,
            Err(reason) => client.fail(pool, alloc, reason).await,
        };
        match r {
            Ok(_) => {
                info!(alloc, ok = result.is_ok(), "alloc reported");
                return;
            }
            Err(e) if is_transient(&e) => {
                warn!(alloc, error = %e, attempt, "report failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                warn!(alloc, error = %e, "report refused");
                return;
            }
        }
    }
}

//! `lineup worker run`: the worker agent. Registers, heartbeats at a third of the
//! shorter of the worker and alloc TTLs (listing its datasets and running allocs),
//! long-polls its queue, runs the command once per alloc (`job.rs`), never more than
//! its capacity at once, and reports the exit code (0 → complete, else fail).
//!
//! Delivery is at least once (SQS redelivers; a poll's answer can be lost and sent
//! again): `ledger.rs` remembers running and recently finished allocs, so a duplicate of
//! a running alloc is ignored and one of a finished alloc re-reports its result.
//!
//! A job stops — its whole process group, SIGTERM then SIGKILL — when the server says
//! the alloc is no longer ours (cancelled, or expired), when the agent could not renew
//! its lease for most of the alloc TTL (so it is dead before the releaser may run the
//! eval elsewhere), and on SIGTERM/SIGINT, which also stops taking allocs; stopped jobs
//! are reported failed, so their evals are retried.
//!
//! A job sees only what the operator chose: PATH, HOME, the `LINEUP_*` job variables
//! and the variables named by `--pass-env`; never a Lineup token. It runs in a private
//! directory of its own, removed afterwards.

mod continuation;
mod job;
mod ledger;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lineup_client::{is_transient, Client, ClientError};
use lineup_core::validate;
use lineup_core::AllocMessage;
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

use self::ledger::{Delivery, Ledger, Outcome};
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
    /// Variables of the agent's environment a job also gets.
    pub pass_env: Vec<String>,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub kill_timeout: Duration,
    /// Where jobs' private directories are made.
    pub work_root: PathBuf,
}

/// Variables never handed to a job, whatever `--pass-env` says.
const NEVER_PASSED: [&str; 4] = ["LINEUP_TOKEN", "LINEUP_ADMIN_TOKEN", "LINEUP_ADMIN_TOKEN_SHA256", "LINEUP_ENDPOINT"];

impl WorkerOptions {
    pub fn check(&self) -> Result<(), CliError> {
        if self.command.is_empty() {
            return Err(CliError::Usage(
                "give the command to run after --, e.g. `lineup worker run --pool P --capacity 4 -- ./job.sh`".into(),
            ));
        }
        if let Some(v) = self.pass_env.iter().find(|v| NEVER_PASSED.contains(&v.as_str())) {
            return Err(CliError::Usage(format!("--pass-env {v}: a Lineup credential is never passed to a job")));
        }
        Ok(())
    }

    /// The environment of a job: PATH, HOME, the passed-through variables, then the
    /// job's own `LINEUP_*` (which nothing passed through can override).
    fn job_env(&self, a: &AllocMessage, workdir: &std::path::Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        env.push(("PATH".into(), path));
        if let Ok(home) = std::env::var("HOME") {
            env.push(("HOME".into(), home));
        }
        for name in &self.pass_env {
            if let Ok(v) = std::env::var(name) {
                env.push((name.clone(), v));
            }
        }
        let payload = a.payload.as_ref().map(|p| p.to_string()).unwrap_or_default();
        for (k, v) in [
            ("LINEUP_ALLOC_ID", a.alloc_id.to_string()),
            ("LINEUP_EVAL_ID", a.eval_id.to_string()),
            ("LINEUP_POOL_ID", a.pool_id.to_string()),
            ("LINEUP_WORKER_ID", a.worker_id.to_string()),
            ("LINEUP_DATASET", a.dataset.clone().unwrap_or_default()),
            ("LINEUP_PAYLOAD", payload),
            ("LINEUP_ATTEMPT", a.attempt.to_string()),
            ("LINEUP_SIZE", a.size.to_string()),
            ("LINEUP_CONTINUE_FILE", continuation::file(workdir).display().to_string()),
            ("LINEUP_STATE", a.state.as_ref().map(|s| s.to_string()).unwrap_or_default()),
        ] {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v));
        }
        // A pipeline step's job: which of the step's evals it is, and what the steps
        // it waited for produced (docs: README, "Pipelines").
        if let Some(st) = &a.step {
            let inputs = st.inputs.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "{}".into());
            for (k, v) in [
                ("LINEUP_PIPELINE_ID", st.pipeline_id.to_string()),
                ("LINEUP_STEP", st.step.clone()),
                ("LINEUP_INDEX", st.index.to_string()),
                ("LINEUP_INPUTS", inputs),
            ] {
                env.retain(|(name, _)| name != k);
                env.push((k.into(), v));
            }
        }
        env
    }
}

/// Where allocs come from: the API's poll route, or the worker's SQS queue itself.
enum Source {
    Api,
    Sqs(lineup_aws::DirectQueue),
}

pub async fn run(admin: Client, opts: WorkerOptions) -> Result<(), CliError> {
    opts.check()?;
    let reg = admin.register_worker(&opts.pool, opts.capacity).await?;
    let token = reg.token.clone().ok_or_else(|| CliError::Usage("registration returned no worker token".into()))?;
    let client = admin.with_token(&token);
    let worker = reg.worker_id.clone();
    let alloc_ttl = Duration::from_secs(reg.alloc_ttl.unwrap_or(reg.ttl).max(1));
    let ttl = reg.ttl.min(reg.alloc_ttl.unwrap_or(reg.ttl)).max(1);
    let interval = Duration::from_millis(ttl * 1000 / 3);
    println!("worker {worker} registered in pool {} with capacity {}", opts.pool, opts.capacity);

    let ledger = Ledger::new(alloc_ttl, opts.kill_timeout);
    let slots = Arc::new(Semaphore::new(opts.capacity as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let opts = Arc::new(opts);

    let hb = tokio::spawn(heartbeat_loop(client.clone(), opts.clone(), worker.clone(), ledger.clone(), interval));
    let source = if opts.sqs {
        Source::Sqs(lineup_aws::DirectQueue::connect(&reg.queue_url, opts.aws_endpoint.as_deref()).await)
    } else {
        Source::Api
    };
    let poller = tokio::spawn(poll_loop(
        client.clone(),
        opts.clone(),
        worker.clone(),
        ledger.clone(),
        slots.clone(),
        stop_rx.clone(),
        source,
    ));

    let result = tokio::select! {
        _ = crate::dev_signal() => {
            info!("signal: taking no more allocs; stopping the running ones");
            Ok(())
        }
        r = poller => match r {
            // The poll loop only ends on its own when the worker can no longer work.
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        },
    };
    let _ = stop_tx.send(true);
    ledger.stop_all("stopped: the worker is shutting down");
    // Every running alloc holds its permits; when all are back, all have reported.
    let _ = slots.acquire_many(opts.capacity).await;
    hb.abort();
    println!("worker {worker} stopped");
    result
}

async fn heartbeat_loop(client: Client, opts: Arc<WorkerOptions>, worker: String, ledger: Ledger, interval: Duration) {
    loop {
        let (allocs, sent_at) = (ledger.running(), tokio::time::Instant::now());
        match client.heartbeat(&opts.pool, &worker, &opts.datasets, &allocs).await {
            Ok(reply) => {
                for a in &reply.cancelled {
                    if ledger.stop(a, "stopped: the server released this alloc (cancelled or expired)") {
                        info!(alloc = %a, "alloc no longer ours; stopping it");
                    }
                }
                ledger.renewed(&allocs, &reply.cancelled, sent_at);
            }
            Err(ClientError::Api { status: 404 | 409 | 410, message, .. }) => {
                // The worker expired or is gone: every lease it held is lost.
                warn!(%message, "the server no longer knows this worker; stopping every job");
                ledger.stop_all("stopped: the worker expired");
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
        // A lease not renewed for most of the alloc TTL may be released any moment:
        // stop the job first, so the eval never runs twice at once.
        for a in ledger.stop_unrenewed(tokio::time::Instant::now()) {
            warn!(alloc = %a, "lease not renewed in time; stopped the job");
        }
        tokio::time::sleep(interval).await;
    }
}

async fn poll_loop(
    client: Client,
    opts: Arc<WorkerOptions>,
    worker: String,
    ledger: Ledger,
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
            let id = a.alloc_id.to_string();
            match ledger.delivered(&id) {
                Delivery::Running => {
                    debug!(alloc = %id, "duplicate delivery of a running alloc; ignored");
                    continue;
                }
                Delivery::Finished(outcome) => {
                    debug!(alloc = %id, "duplicate delivery of a finished alloc; reporting again");
                    let (client, pool) = (client.clone(), opts.pool.clone());
                    tokio::spawn(async move { report(&client, &pool, &id, &outcome).await });
                    continue;
                }
                Delivery::New => {}
            }
            // The server never sends more than the free capacity; this keeps the
            // promise locally too, even if a stopped alloc is still winding down.
            let permits = match slots.clone().acquire_many_owned(a.size.min(opts.capacity)).await {
                Ok(p) => p,
                Err(_) => return Ok(()),
            };
            let (stop_tx, stop_rx) = oneshot::channel();
            if !ledger.start(&id, stop_tx) {
                continue;
            }
            let (client, opts, ledger) = (client.clone(), opts.clone(), ledger.clone());
            tokio::spawn(async move {
                let outcome = run_alloc(&opts, &a, stop_rx).await;
                ledger.finished(&id, outcome.clone());
                report(&client, &opts.pool, &id, &outcome).await;
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

/// Runs the job for one alloc in a private directory; how it ended, as a report.
async fn run_alloc(opts: &WorkerOptions, a: &AllocMessage, stop: oneshot::Receiver<String>) -> Outcome {
    let workdir = opts.work_root.join(format!("lineup-alloc-{}", a.alloc_id));
    if let Err(e) = lineup_sqlite::private_dir(&workdir) {
        return Outcome::Failed(format!("cannot make the job's directory {}: {e}", workdir.display()));
    }
    info!(alloc = %a.alloc_id, eval = %a.eval_id, "alloc started");
    let spec = job::Spec {
        command: opts.command.clone(),
        env: opts.job_env(a, &workdir),
        workdir: workdir.clone(),
        grace: opts.kill_timeout,
    };
    let outcome = match job::run(spec, stop).await {
        Err(e) => Outcome::Failed(e),
        Ok((job::Ended::Stopped(why), _)) => Outcome::Failed(why),
        Ok((job::Ended::Exited(s), out)) if s.success() => Outcome::Complete(validate::output(&out)),
        Ok((job::Ended::Exited(s), out)) if s.code() == Some(continuation::EXIT_CONTINUE) => {
            match continuation::read(&workdir) {
                Ok((after, state)) => Outcome::Continue { after, state, output: validate::output(&out) },
                Err(why) => Outcome::Failed(why),
            }
        }
        Ok((job::Ended::Exited(s), out)) => Outcome::Failed(format!(
            "exit status {}: {}",
            s.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
            validate::reason(&out)
        )),
    };
    if let Err(e) = std::fs::remove_dir_all(&workdir) {
        warn!(dir = %workdir.display(), error = %e, "could not remove the job's directory");
    }
    outcome
}

/// Completes or fails the alloc, retrying while the server is unreachable.
async fn report(client: &Client, pool: &str, alloc: &str, outcome: &Outcome) {
    for attempt in 0..30u32 {
        let r = match outcome {
            Outcome::Complete(out) => client.complete(pool, alloc, 0, Some(out)).await,
            Outcome::Continue { after, state, output } => {
                client.complete_continue(pool, alloc, *after, state.as_ref(), Some(output)).await
            }
            Outcome::Failed(reason) => client.fail(pool, alloc, reason).await,
        };
        match r {
            Ok(_) => {
                info!(alloc, ok = !matches!(outcome, Outcome::Failed(_)), "alloc reported");
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

//! `lineup dev`: API + scheduler + releaser in one process on the embedded store.
//!
//! The scheduler supervisor keeps `--schedulers` loops per active pool, each
//! long-polling the pool's queue; the releaser runs every `LINEUP_RELEASE_INTERVAL`
//! seconds. Shutdown (SIGINT/SIGTERM) is one `watch` channel every loop selects on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lineup_core::events::EventLog;
use lineup_core::service::{PoolScheduler, SchedulerOptions};
use lineup_core::{Lineup, PoolId, PoolStatus, Settings, SystemClock};
use lineup_sqlite::{Durability, SqliteBackend};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::CliError;

pub struct DevOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub schedulers: usize,
    pub backend: BackendChoice,
}

pub enum BackendChoice {
    /// One SQLite file in the data dir.
    Sqlite(Durability),
    /// DynamoDB + SQS: real AWS from the usual chain, or an emulator at `endpoint`.
    Aws { endpoint: Option<String>, table_prefix: Option<String>, init: bool },
}

type Backends =
    (Arc<dyn lineup_core::Store>, Arc<dyn lineup_core::Queues>, String, Option<lineup_aws::CloudWatchProbe>);

async fn open_backend(settings: &Settings, opts: &DevOptions) -> Result<Backends, CliError> {
    match &opts.backend {
        BackendChoice::Sqlite(durability) => {
            let b = Arc::new(SqliteBackend::open_dir(&opts.data_dir, *durability)?);
            // This process owns the file: what a previous process had in flight is redelivered now.
            let redelivered = b.redeliver_in_flight().await?;
            if redelivered > 0 {
                info!(redelivered, "messages in flight at the last stop are visible again");
            }
            let what = format!("sqlite {}", b.path().display());
            Ok((metered(b.clone(), "sqlite"), metered_queues(b, "sqlite"), what, None))
        }
        BackendChoice::Aws { endpoint, table_prefix, init } => {
            let prefix = table_prefix.clone().unwrap_or_else(|| settings.deployment.clone());
            let b = crate::aws_backend(endpoint.as_deref(), &prefix).await;
            b.set_history_retention(settings.history_retention);
            b.set_index_shards(settings.index_shards);
            if *init {
                lineup_aws::create_tables(b.dynamodb(), b.tables()).await?;
            }
            let what = format!("aws tables {prefix}-* {}", endpoint.as_deref().unwrap_or(""));
            let probe = b.probe();
            let b = Arc::new(b);
            Ok((metered(b.clone(), "dynamodb"), metered_queues(b, "sqs"), what, Some(probe)))
        }
    }
}

fn metered(inner: Arc<dyn lineup_core::Store>, backend: &'static str) -> Arc<dyn lineup_core::Store> {
    Arc::new(lineup_core::metered::MeteredStore { inner, backend, latency: Default::default() })
}

fn metered_queues(inner: Arc<dyn lineup_core::Queues>, backend: &'static str) -> Arc<dyn lineup_core::Queues> {
    Arc::new(lineup_core::metered::MeteredQueues { inner, backend, latency: Default::default() })
}

/// Installs the Prometheus recorder every figure goes to; `/metrics` renders it.
fn prometheus(settings: &Settings) -> Result<lineup_api::MetricsExport, CliError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), lineup_core::metrics::BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| CliError::Usage(format!("metrics recorder: {e}")))?;
    lineup_core::metrics::describe();
    // The exporter's upkeep (draining histograms' old samples) runs at render; a
    // process nobody scrapes would keep them, so run it now and then.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let token_hash = settings.metrics_token.as_deref().filter(|t| !t.is_empty()).map(lineup_core::auth::hash);
    Ok(lineup_api::MetricsExport { render: Arc::new(move || handle.render()), token_hash })
}

pub const TOKEN_FILE: &str = "admin.token";
pub const ENDPOINT_FILE: &str = "endpoint";

/// The admin token: `LINEUP_ADMIN_TOKEN`, else the one saved in the data dir, else a
/// new one, saved there (mode 0600) for the CLI to read.
fn admin_token(settings: &Settings, dir: &Path) -> Result<String, CliError> {
    if let Some(t) = settings.admin_token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(t.to_owned());
    }
    let path = dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let token = format!("lineup-admin-{}", lineup_core::auth::random_secret());
    write_private(&path, &token)?;
    Ok(token)
}

/// Written to a temporary file created 0600 (never readable by others, not even while
/// being written), then renamed into place.
fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(&tmp).map_err(|e| CliError::io(&tmp, e))?;
    f.write_all(contents.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| CliError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| CliError::io(path, e))
}

pub async fn run(settings: Settings, opts: DevOptions) -> Result<(), CliError> {
    lineup_sqlite::private_dir(&opts.data_dir).map_err(|e| CliError::io(&opts.data_dir, e))?;
    let (store, queues, what, metrics) = open_backend(&settings, &opts).await?;
    let token = admin_token(&settings, &opts.data_dir)?;
    let export = prometheus(&settings)?;
    // Indexes from the start time in µs keep increasing across restarts (`events.rs`).
    let first = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
    let events = Arc::new(EventLog::new(first, lineup_core::events::HISTORY));
    let lineup = Lineup::new(store, queues, Arc::new(SystemClock), settings, &token)
        .with_probe(Arc::new(crate::probe::Probes { http: crate::probe::HttpProbe::new()?, metrics }))
        .with_events(events.clone());
    lineup.init().await?;

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", opts.listen)))?;
    let addr = listener.local_addr().map_err(|e| CliError::Usage(format!("listener address: {e}")))?;
    let endpoint = format!("http://{addr}");
    write_private(&opts.data_dir.join(ENDPOINT_FILE), &endpoint)?;
    println!("Lineup dev listening on {endpoint}");
    println!("data:  {what}");
    println!("token: {}", opts.data_dir.join(TOKEN_FILE).display());
    println!("try:   lineup --data-dir {} pool create", opts.data_dir.display());

    let (stop_tx, stop_rx) = watch::channel(false);
    let sched = tokio::spawn(supervise_schedulers(lineup.clone(), opts.schedulers.max(1), stop_rx.clone()));
    let rel = tokio::spawn(releaser_loop(lineup.clone(), stop_rx.clone()));

    let mut server_stop = stop_rx.clone();
    let app = lineup_api::router_with(lineup.clone(), lineup_api::Extras { metrics: Some(export), ui: true });
    let server = tokio::spawn(crate::serve::serve(listener, app, async move {
        stopped(&mut server_stop).await;
    }));

    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    // Event streams end now, so they do not hold the server's drain.
    events.close();
    let _ = sched.await;
    let _ = rel.await;
    match tokio::time::timeout(Duration::from_secs(30), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "server task failed"),
        // Long polls may still be open; they end with the process.
        Err(_) => warn!("server did not drain in time"),
    }
    println!("Lineup dev stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Keeps `per_pool` scheduler loops running for every active pool.
async fn supervise_schedulers(lineup: Lineup, per_pool: usize, mut stop: watch::Receiver<bool>) {
    let changed = lineup.pools_changed();
    let mut running: HashMap<PoolId, Vec<JoinHandle<()>>> = HashMap::new();
    loop {
        let notified = changed.notified();
        match lineup.store.list_pools().await {
            Ok(pools) => {
                for p in pools.into_iter().filter(|p| p.status == PoolStatus::Active) {
                    let tasks = running.entry(p.pool_id.clone()).or_default();
                    tasks.retain(|t| !t.is_finished());
                    while tasks.len() < per_pool {
                        tasks.push(tokio::spawn(scheduler_loop(lineup.clone(), p.clone(), stop.clone())));
                    }
                }
                running.retain(|_, tasks| {
                    tasks.retain(|t| !t.is_finished());
                    !tasks.is_empty()
                });
            }
            Err(e) => warn!(error = %e, "listing pools for the schedulers"),
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    for (_, tasks) in running {
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn scheduler_loop(lineup: Lineup, pool: lineup_core::Pool, mut stop: watch::Receiver<bool>) {
    // Locally a candidate read is cheap: look at held (blocked) evals every second.
    // Locally a receive may take more than SQS's 10: big batches are what drain a
    // backlog fast (one group commit places the whole batch).
    let opts = SchedulerOptions {
        batch: 500,
        wait: Duration::from_secs(2),
        recheck: Duration::from_secs(1),
        ..SchedulerOptions::default()
    };
    let mut ps = PoolScheduler::new(lineup, pool.clone(), opts);
    loop {
        tokio::select! {
            r = ps.step(Duration::from_secs(2)) => match r {
                Ok(_) if ps.gone => return,
                Ok(_) => {}
                Err(e) => {
                    warn!(pool = %pool.pool_id, error = %e, "schedule pass failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
    }
    if let Err(e) = ps.release_held().await {
        warn!(pool = %pool.pool_id, error = %e, "handing back held evals");
    }
}

async fn releaser_loop(lineup: Lineup, mut stop: watch::Receiver<bool>) {
    let every = lineup.settings.release_interval();
    loop {
        match lineup.release_pass().await {
            Ok(s) if s != Default::default() => info!(?s, "release pass"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "release pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once the shutdown flag is set. (Not `watch::Receiver::wait_for`: its
/// future holds a read guard and is not `Send`.)
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

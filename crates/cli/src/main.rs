//! `lineup`: the dev server, the worker agent and the admin commands.
//!
//! # Layout
//! - `main.rs`: arguments (clap), endpoint/token discovery, the admin commands.
//! - `dev.rs`: `lineup dev`. `worker.rs`: `lineup worker run`. `table.rs`: output.

mod dev;
mod eval;
mod events;
mod many;
mod pipeline;
mod pool;
mod probe;
mod serve;
mod table;
mod top;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lineup_client::{Client, ClientError};
use lineup_core::Settings;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Api(#[from] ClientError),
    #[error("{0}")]
    Core(#[from] lineup_core::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl CliError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        CliError::Io { path: path.to_owned(), source }
    }
}

#[derive(Parser)]
#[command(name = "lineup", version, about = "Lineup: a capacity scheduler for pools of workers")]
struct Cli {
    /// API endpoint; defaults to the one `lineup dev` wrote into the data dir.
    #[arg(long, global = true, env = "LINEUP_ENDPOINT")]
    endpoint: Option<String>,
    /// Bearer token; defaults to the admin token `lineup dev` wrote into the data dir.
    #[arg(long, global = true, env = "LINEUP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where `lineup dev` keeps lineup.db, admin.token and endpoint.
    #[arg(long, global = true, env = "LINEUP_DATA_DIR", default_value = ".lineup")]
    data_dir: PathBuf,
    /// Print JSON instead of tables (as `--output json`).
    #[arg(long, global = true)]
    json: bool,
    /// How to print answers.
    #[arg(long, short = 'o', global = true, value_enum)]
    output: Option<Output>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

impl Cli {
    fn as_json(&self) -> bool {
        self.json || self.output == Some(Output::Json)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run API, scheduler and releaser in one process on the embedded store.
    Dev(DevArgs),
    /// Create, list, show and disband pools.
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Submit, show, list and cancel evals.
    #[command(subcommand)]
    Eval(eval::EvalCmd),
    /// Submit, show, list and cancel pipelines (steps with dependencies).
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCmd),
    /// Print a completion script for SHELL (e.g. `lineup completions bash > /etc/bash_completion.d/lineup`).
    Completions { shell: clap_complete::Shell },
    /// Follow the event stream of state changes (evals, allocs, workers, pools) until
    /// interrupted; reconnects where it left off.
    Events {
        #[arg(long)]
        pool: Option<String>,
        /// Comma-separated: eval, alloc, worker, pool.
        #[arg(long)]
        types: Option<String>,
        /// Resume after this event index.
        #[arg(long)]
        after: Option<u64>,
    },
    /// List workers, or run the worker agent.
    #[command(subcommand)]
    Worker(WorkerCmd),
    /// Set up the AWS backend.
    #[command(subcommand)]
    Aws(AwsCmd),
}

#[derive(Subcommand)]
enum AwsCmd {
    /// Create the DynamoDB tables and the dead-letter queue if missing.
    Init {
        /// An emulator's URL (e.g. moto); real AWS from the usual chain when absent.
        #[arg(long, env = "LINEUP_AWS_ENDPOINT")]
        aws_endpoint: Option<String>,
        /// Table name prefix; defaults to LINEUP_DEPLOYMENT.
        #[arg(long, env = "LINEUP_TABLE_PREFIX")]
        table_prefix: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BackendArg {
    /// One SQLite file in the data dir.
    Sqlite,
    /// DynamoDB + SQS.
    Aws,
}

#[derive(Args)]
struct DevArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Scheduler loops per pool. Two keep the store busy while one of them reads.
    #[arg(long, default_value_t = 2)]
    schedulers: usize,
    /// `process`: commits survive the process being killed; `machine`: also power loss (fsync per commit).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Process)]
    durability: DurabilityArg,
    /// Where records and queues live.
    #[arg(long, value_enum, default_value_t = BackendArg::Sqlite)]
    backend: BackendArg,
    /// With `--backend aws`: an emulator's URL; real AWS from the usual chain when absent.
    #[arg(long, env = "LINEUP_AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
    /// With `--backend aws`: table name prefix; defaults to LINEUP_DEPLOYMENT.
    #[arg(long, env = "LINEUP_TABLE_PREFIX")]
    table_prefix: Option<String>,
    /// With `--backend aws`: create missing tables first (as `lineup aws init`).
    #[arg(long)]
    init: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Process,
    Machine,
}

#[derive(Subcommand)]
enum WorkerCmd {
    List {
        #[arg(long)]
        pool: String,
    },
    /// Register and run allocs with CMD until SIGTERM.
    Run {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        capacity: u32,
        /// A dataset this worker holds (repeatable); evals naming it prefer this worker.
        #[arg(long = "dataset")]
        datasets: Vec<String>,
        /// Seconds per long poll (at most 20).
        #[arg(long, default_value_t = 20)]
        poll_wait: u64,
        /// Read allocs straight from the worker's SQS queue (needs AWS credentials; the
        /// AWS backend only) instead of the API's poll route.
        #[arg(long)]
        sqs: bool,
        /// With --sqs: an emulator's URL.
        #[arg(long, env = "LINEUP_AWS_ENDPOINT")]
        aws_endpoint: Option<String>,
        /// A variable of this environment that jobs also get (repeatable). Jobs get only
        /// PATH, HOME and their LINEUP_* job variables otherwise; never a Lineup token.
        #[arg(long = "pass-env", value_name = "NAME")]
        pass_env: Vec<String>,
        /// Seconds a stopped job gets between SIGTERM and SIGKILL (to its process group).
        #[arg(long, default_value_t = 5)]
        kill_timeout: u64,
        /// Where each job's private working directory is made (removed after the job).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<std::path::PathBuf>,
        /// The command run once per alloc.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// SIGINT or SIGTERM.
pub(crate) async fn dev_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut t) => {
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The AWS backend: an emulator at `endpoint`, or real AWS from the usual chain.
pub(crate) async fn aws_backend(endpoint: Option<&str>, table_prefix: &str) -> lineup_aws::AwsBackend {
    match endpoint {
        Some(ep) => lineup_aws::AwsBackend::for_emulator(ep, table_prefix).await,
        None => {
            lineup_aws::AwsBackend::connect(&lineup_aws::AwsOptions {
                table_prefix: table_prefix.to_owned(),
                ..Default::default()
            })
            .await
        }
    }
}

fn client(cli: &Cli) -> Result<Client, CliError> {
    let read = |name: &str| std::fs::read_to_string(cli.data_dir.join(name)).ok().map(|s| s.trim().to_owned());
    let endpoint = cli.endpoint.clone().or_else(|| read(dev::ENDPOINT_FILE)).ok_or_else(|| {
        CliError::Usage(format!(
            "no endpoint: pass --endpoint or LINEUP_ENDPOINT, or start `lineup dev` with data dir {}",
            cli.data_dir.display()
        ))
    })?;
    let token = cli.token.clone().or_else(|| read(dev::TOKEN_FILE)).ok_or_else(|| {
        CliError::Usage(format!(
            "no token: pass --token or LINEUP_TOKEN, or use the data dir of `lineup dev` ({})",
            cli.data_dir.display()
        ))
    })?;
    Ok(Client::new(&endpoint, &token))
}

/// `v` as JSON with `--output json`, else what `human` prints.
fn render<T: serde::Serialize>(as_json: bool, v: &T, human: impl FnOnce()) {
    if as_json {
        print_json(v)
    } else {
        human()
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match &cli.cmd {
        Cmd::Dev(a) => {
            let settings = Settings::from_env()?;
            let durability = match a.durability {
                DurabilityArg::Process => lineup_sqlite::Durability::Process,
                DurabilityArg::Machine => lineup_sqlite::Durability::Machine,
            };
            let backend = match a.backend {
                BackendArg::Sqlite => dev::BackendChoice::Sqlite(durability),
                BackendArg::Aws => dev::BackendChoice::Aws {
                    endpoint: a.aws_endpoint.clone(),
                    table_prefix: a.table_prefix.clone(),
                    init: a.init,
                },
            };
            let opts =
                dev::DevOptions { data_dir: cli.data_dir.clone(), listen: a.listen, schedulers: a.schedulers, backend };
            dev::run(settings, opts).await?;
        }
        Cmd::Aws(AwsCmd::Init { aws_endpoint, table_prefix }) => {
            let settings = Settings::from_env()?;
            let prefix = table_prefix.clone().unwrap_or_else(|| settings.deployment.clone());
            let b = aws_backend(aws_endpoint.as_deref(), &prefix).await;
            lineup_aws::create_tables(b.dynamodb(), b.tables()).await?;
            let dlq = lineup_core::Queues::create_queue(&b, &settings.dead_letter_queue()).await?;
            println!("tables {} ready; dead-letter queue {dlq}", b.tables().all().join(", "));
        }
        Cmd::Pool(p) => {
            let c = client(&cli)?;
            return pool::run(&c, p, cli.as_json()).await;
        }
        Cmd::Pipeline(p) => {
            let c = client(&cli)?;
            return pipeline::run(&c, p, cli.as_json()).await;
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "lineup", &mut std::io::stdout());
        }
        Cmd::Events { pool, types, after } => {
            let c = client(&cli)?;
            return events::follow(&c, pool.as_deref(), types.as_deref(), *after, cli.as_json()).await;
        }
        Cmd::Eval(e) => {
            let c = client(&cli)?;
            return eval::run(&c, e, cli.as_json()).await;
        }
        Cmd::Worker(w) => {
            let c = client(&cli)?;
            match w {
                WorkerCmd::List { pool } => {
                    let ws = c.workers(pool).await?;
                    if cli.as_json() {
                        print_json(&json!({ "workers": ws }))
                    } else {
                        table::workers(&ws)
                    }
                }
                WorkerCmd::Run {
                    pool,
                    capacity,
                    datasets,
                    poll_wait,
                    sqs,
                    aws_endpoint,
                    pass_env,
                    kill_timeout,
                    work_dir,
                    command,
                } => {
                    let opts = worker::WorkerOptions {
                        pool: pool.clone(),
                        capacity: *capacity,
                        datasets: datasets.clone(),
                        command: command.clone(),
                        wait: *poll_wait,
                        sqs: *sqs,
                        aws_endpoint: aws_endpoint.clone(),
                        pass_env: pass_env.clone(),
                        kill_timeout: std::time::Duration::from_secs(*kill_timeout),
                        work_root: work_dir.clone().unwrap_or_else(std::env::temp_dir),
                    };
                    worker::run(c, opts).await?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LINEUP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("LINEUP_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

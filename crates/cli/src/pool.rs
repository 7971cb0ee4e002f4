//! `lineup pool …`: create, update, report health, list, show, top and disband pools.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use lineup_client::Client;
use serde_json::json;

use crate::{render, table, top, CliError};

#[derive(Subcommand)]
pub enum PoolCmd {
    Create {
        /// spread (most free first) or binpack (least free that fits).
        #[arg(long)]
        strategy: Option<String>,
        /// The most allocs live in the pool at once, whatever the free capacity.
        #[arg(long)]
        max_running: Option<u32>,
        /// max_running's multiplier at each health level 0-4, e.g. 0,0,0.5,0.75,1.
        #[arg(long, value_delimiter = ',')]
        coefficients: Option<Vec<f64>>,
    },
    /// Change a pool's max_running or health coefficients.
    Update {
        pool: String,
        #[arg(long, conflicts_with = "no_max_running")]
        max_running: Option<u32>,
        /// Remove the pool's max_running.
        #[arg(long)]
        no_max_running: bool,
        #[arg(long, value_delimiter = ',')]
        coefficients: Option<Vec<f64>>,
    },
    /// Report the pool's health level (0-4, 4 healthy) for a while, as a monitor would.
    Health {
        pool: String,
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=4))]
        level: u8,
        /// Seconds until the level lapses to 4 unless reported again.
        #[arg(long)]
        ttl: u64,
    },
    List,
    /// A live view of the pools (or one): capacity, free, queued, allocs, limit, health.
    Top {
        #[arg(long)]
        pool: Option<String>,
        /// Seconds between redraws.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many redraws.
        #[arg(long)]
        count: Option<u32>,
    },
    Show {
        pool: String,
    },
    Disband {
        pool: String,
    },
}

pub async fn run(c: &Client, cmd: &PoolCmd, as_json: bool) -> Result<ExitCode, CliError> {
    match cmd {
        PoolCmd::Create { strategy, max_running, coefficients } => {
            let mut body = serde_json::Map::new();
            if let Some(s) = strategy {
                body.insert("strategy".into(), json!(s));
            }
            if let Some(m) = max_running {
                body.insert("max_running".into(), json!(m));
            }
            if let Some(c) = coefficients {
                body.insert("coefficients".into(), json!(c));
            }
            let pool = c.create_pool_with(&serde_json::Value::Object(body)).await?;
            render(as_json, &pool, || println!("{}", pool.pool_id));
        }
        PoolCmd::Update { pool, max_running, no_max_running, coefficients } => {
            let mut body = serde_json::Map::new();
            if *no_max_running {
                body.insert("max_running".into(), serde_json::Value::Null);
            } else if let Some(m) = max_running {
                body.insert("max_running".into(), json!(m));
            }
            if let Some(c) = coefficients {
                body.insert("coefficients".into(), json!(c));
            }
            if body.is_empty() {
                return Err(CliError::Usage(
                    "nothing to change: give --max-running, --no-max-running or --coefficients".into(),
                ));
            }
            let p = c.change_pool(pool, &serde_json::Value::Object(body)).await?;
            render(as_json, &p, || table::pools(std::slice::from_ref(&p)));
        }
        PoolCmd::Health { pool, level, ttl } => {
            let p = c.push_health(pool, *level, *ttl).await?;
            render(as_json, &p, || table::pools(std::slice::from_ref(&p)));
        }
        PoolCmd::Top { pool, interval, count } => {
            if !interval.is_finite() || *interval < 0.1 {
                return Err(CliError::Usage("--interval must be at least 0.1 seconds".into()));
            }
            return top::run(c, pool.as_deref(), Duration::from_secs_f64(*interval), *count).await;
        }
        PoolCmd::List => {
            let pools = c.pools().await?;
            render(as_json, &json!({ "pools": pools }), || table::pools(&pools));
        }
        PoolCmd::Show { pool } => {
            let p = c.pool(pool).await?;
            render(as_json, &p, || table::pools(std::slice::from_ref(&p)));
        }
        PoolCmd::Disband { pool } => {
            let p = c.disband_pool(pool).await?;
            render(as_json, &p, || println!("pool {} disbanded", p.pool_id));
        }
    }
    Ok(ExitCode::SUCCESS)
}

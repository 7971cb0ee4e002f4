//! `lineup eval …`: submit (and wait), show, list, cancel, the dead letters and their
//! redrive.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use lineup_client::{Client, SubmitEval};
use serde_json::json;

use crate::{print_json, render, table, CliError};

#[derive(Subcommand)]
pub enum EvalCmd {
    Submit {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        size: u32,
        #[arg(long)]
        dataset: Option<String>,
        /// JSON handed to the worker as LINEUP_PAYLOAD.
        #[arg(long)]
        payload: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// 0–100, default 50: among waiting evals that fit, higher is placed first.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        priority: Option<u8>,
        /// Wait until the eval is complete, dead or cancelled; exit non-zero unless it completed with 0.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Submit this many evals alike (an idempotency key gets `-0`, `-1`, … appended);
        /// with `--wait`, a progress bar on a terminal.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=crate::many::MAX_COUNT as i64))]
        count: u32,
    },
    Show {
        #[arg(long)]
        pool: String,
        eval: String,
    },
    Cancel {
        #[arg(long)]
        pool: String,
        eval: String,
    },
    /// Show the eval's changes as they happen, until it ends; exit non-zero unless it
    /// completed with 0.
    Watch {
        #[arg(long)]
        pool: String,
        eval: String,
    },
    List {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Evals that ran out of retries.
    DeadLetters {
        #[arg(long)]
        pool: String,
    },
    /// Send dead evals back to the queue with a fresh retry budget: the ones named, or
    /// with `--all` every dead eval of the pool.
    Redrive {
        #[arg(long)]
        pool: String,
        #[arg(long, conflicts_with = "evals", required_unless_present = "evals")]
        all: bool,
        evals: Vec<String>,
    },
}

pub async fn run(c: &Client, cmd: &EvalCmd, as_json: bool) -> Result<ExitCode, CliError> {
    match cmd {
        EvalCmd::Submit { pool, size, dataset, payload, idempotency_key, priority, wait, timeout, count } => {
            let payload = payload
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| CliError::Usage(format!("--payload is not valid JSON: {e}")))?;
            let req = SubmitEval {
                size: *size,
                dataset: dataset.clone(),
                payload,
                priority: *priority,
                idempotency_key: idempotency_key.clone(),
            };
            if *count > 1 {
                let timeout = Duration::from_secs(*timeout);
                return crate::many::submit(c, pool, &req, *count, *wait, timeout, as_json).await;
            }
            let sub = c.submit_eval(pool, &req).await?;
            if !*wait {
                render(as_json, &sub, || println!("{}", sub.eval_id));
                return Ok(ExitCode::SUCCESS);
            }
            let end = tokio::time::Instant::now() + Duration::from_secs(*timeout);
            let ev = loop {
                let ev = c.eval(pool, &sub.eval_id).await?;
                if ev.is_terminal() {
                    break ev;
                }
                if tokio::time::Instant::now() >= end {
                    return Err(CliError::Usage(format!("eval {} still {} after {timeout} s", ev.eval_id, ev.status)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            render(as_json, &ev, || table::evals(std::slice::from_ref(&ev)));
            let ok = ev.status == "complete" && ev.exit_code == Some(0);
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        EvalCmd::Show { pool, eval } => {
            let ev = c.eval(pool, eval).await?;
            render(as_json, &ev, || table::eval_detail(&ev));
        }
        EvalCmd::Cancel { pool, eval } => {
            let ev = c.cancel_eval(pool, eval).await?;
            render(as_json, &ev, || println!("eval {} {}", ev.eval_id, ev.status));
        }
        EvalCmd::List { pool, status, limit } => {
            let evs = c.evals(pool, status.as_deref(), *limit).await?;
            render(as_json, &json!({ "evals": evs }), || table::evals(&evs));
        }
        EvalCmd::DeadLetters { pool } => {
            let evs = c.dead_letters(pool).await?;
            render(as_json, &json!({ "evals": evs }), || table::evals(&evs));
        }
        EvalCmd::Watch { pool, eval } => return crate::events::watch_eval(c, pool, eval, as_json).await,
        EvalCmd::Redrive { pool, all, evals } => {
            let ids = if *all { None } else { Some(evals.as_slice()) };
            let r = c.redrive(pool, ids).await?;
            if as_json {
                print_json(&r)
            } else {
                for e in &r.redriven {
                    println!("{} redriven (attempt {})", e.eval_id, e.attempts);
                }
                for s in &r.skipped {
                    println!("{} skipped: {}", s.eval_id, s.reason);
                }
                if r.more {
                    println!("more dead evals are left: run it again");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

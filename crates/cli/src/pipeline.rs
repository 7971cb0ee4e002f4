//! `lineup pipeline …`: submit a pipeline from a JSON or YAML file, show it (live until
//! it ends with `--wait`), list and cancel.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use lineup_client::{Client, PipelineView};
use serde_json::{json, Value};

use crate::{render, table, CliError};

#[derive(Subcommand)]
pub enum PipelineCmd {
    /// Submit the pipeline in FILE (JSON or YAML: `{"steps": [...]}`; `-` reads stdin).
    Submit {
        #[arg(long)]
        pool: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Resubmitting with the same key returns the pipeline submitted first.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Show the steps live until the pipeline ends; exit non-zero unless complete.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Show a pipeline's steps; with `--wait`, live until it ends.
    Show {
        #[arg(long)]
        pool: String,
        pipeline: String,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    List {
        #[arg(long)]
        pool: String,
        /// running, complete, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Cancel every unfinished step.
    Cancel {
        #[arg(long)]
        pool: String,
        pipeline: String,
    },
}

/// The file's pipeline, as the API's JSON: JSON if it parses as JSON, else YAML.
fn read_spec(path: &PathBuf) -> Result<Value, CliError> {
    let io = |source| CliError::Io { path: path.clone(), source };
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map_err(io)?;
    } else {
        text = std::fs::read_to_string(path).map_err(io)?;
    }
    let spec: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(json_err) => serde_norway::from_str(&text).map_err(|yaml_err| {
            CliError::Usage(format!("{}: neither JSON ({json_err}) nor YAML ({yaml_err})", path.display()))
        })?,
    };
    if !spec.is_object() {
        return Err(CliError::Usage(format!("{}: expected an object with \"steps\"", path.display())));
    }
    Ok(spec)
}

pub async fn run(c: &Client, cmd: &PipelineCmd, as_json: bool) -> Result<ExitCode, CliError> {
    match cmd {
        PipelineCmd::Submit { pool, file, idempotency_key, wait, timeout } => {
            let mut body = read_spec(file)?;
            if let Some(k) = idempotency_key {
                body["idempotency_key"] = json!(k);
            }
            let p = c.submit_pipeline(pool, &body).await?;
            if *wait {
                return watch(c, pool, &p.pipeline_id, *timeout, as_json).await;
            }
            render(as_json, &p, || println!("{}", p.pipeline_id));
        }
        PipelineCmd::Show { pool, pipeline, wait, timeout } => {
            if *wait {
                return watch(c, pool, pipeline, *timeout, as_json).await;
            }
            let p = c.pipeline(pool, pipeline).await?;
            render(as_json, &p, || table::pipeline(&p));
        }
        PipelineCmd::List { pool, status, limit } => {
            let ps = c.pipelines(pool, status.as_deref(), *limit).await?;
            render(as_json, &json!({ "pipelines": ps }), || table::pipelines(&ps));
        }
        PipelineCmd::Cancel { pool, pipeline } => {
            let p = c.cancel_pipeline(pool, pipeline).await?;
            render(as_json, &p, || println!("pipeline {} {}", p.pipeline_id, p.status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows the pipeline until it ends: on a terminal the step table redrawn in place
/// every half second; otherwise one line per step whose status changed. Exits 0 only
/// if it completed.
async fn watch(c: &Client, pool: &str, id: &str, timeout: u64, as_json: bool) -> Result<ExitCode, CliError> {
    let live = std::io::stdout().is_terminal() && !as_json;
    let end = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut shown: Option<PipelineView> = None;
    let mut drawn = 0usize;
    loop {
        let p = c.pipeline(pool, id).await?;
        if live {
            if drawn > 0 {
                // Back over the last table, and clear it.
                print!("\x1b[{drawn}A\x1b[J");
            }
            drawn = table::pipeline_lines(&p).len();
            for l in table::pipeline_lines(&p) {
                println!("{l}");
            }
            let _ = std::io::stdout().flush();
        } else if !as_json {
            for s in &p.steps {
                let before = shown.as_ref().and_then(|o| o.steps.iter().find(|x| x.name == s.name));
                if before.is_none_or(|b| b.status != s.status) {
                    println!("step {} {}", s.name, s.status);
                }
            }
        }
        let done = p.is_final();
        shown = Some(p);
        if done {
            break;
        }
        if tokio::time::Instant::now() >= end {
            return Err(CliError::Usage(format!("pipeline {id} still running after {timeout} s")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(p) = shown else { return Ok(ExitCode::FAILURE) };
    render(as_json, &p, || println!("pipeline {} {}", p.pipeline_id, p.status));
    Ok(if p.status == "complete" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

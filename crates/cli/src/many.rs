//! `lineup eval submit --count N [--wait]`: N evals alike, and with `--wait` a progress
//! bar (indicatif) on a terminal, plain progress lines otherwise, until every one ended.
//! Progress comes from the event stream (subscribed before the first submit, so no
//! change is missed); when the stream ends or lost events, each unfinished eval is read.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lineup_client::{Client, EvalView, StreamItem, SubmitEval};
use serde_json::json;

use crate::{print_json, render, table, CliError};

pub const MAX_COUNT: u32 = 10_000;

/// Tallies of how the evals ended.
#[derive(Default)]
struct Ended {
    by_id: HashMap<String, String>,
}

impl Ended {
    fn note(&mut self, id: &str, state: &str) {
        if matches!(state, "complete" | "dead" | "cancelled") {
            self.by_id.insert(id.to_owned(), state.to_owned());
        }
    }
    fn summary(&self) -> String {
        let n = |s: &str| self.by_id.values().filter(|v| *v == s).count();
        format!("complete {} · dead {} · cancelled {}", n("complete"), n("dead"), n("cancelled"))
    }
}

pub async fn submit(
    c: &Client,
    pool: &str,
    req: &SubmitEval,
    count: u32,
    wait: bool,
    timeout: Duration,
    as_json: bool,
) -> Result<ExitCode, CliError> {
    let mut stream = if wait { Some(c.events(Some(pool), Some("eval"), None).await?) } else { None };
    let mut ids = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut r = req.clone();
        r.idempotency_key = req.idempotency_key.as_ref().map(|k| format!("{k}-{i}"));
        ids.push(c.submit_eval(pool, &r).await?.eval_id);
    }
    let Some(mut stream) = stream.take() else {
        render(as_json, &json!({ "eval_ids": ids }), || ids.iter().for_each(|id| println!("{id}")));
        return Ok(ExitCode::SUCCESS);
    };

    let tty = std::io::stderr().is_terminal();
    let bar = if tty { ProgressBar::new(count.into()) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mine: HashSet<&String> = ids.iter().collect();
    let mut ended = Ended::default();
    let mut last_line = String::new();
    let end = tokio::time::Instant::now() + timeout;
    let mut recheck = true;
    loop {
        if recheck {
            let open: Vec<&String> = ids.iter().filter(|id| !ended.by_id.contains_key(*id)).collect();
            for id in open {
                let e = c.eval(pool, id).await?;
                ended.note(id, &e.status);
            }
            recheck = false;
        }
        bar.set_position(ended.by_id.len() as u64);
        bar.set_message(ended.summary());
        let line = format!("{}/{} ended: {}", ended.by_id.len(), ids.len(), ended.summary());
        if !tty && line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if ended.by_id.len() == ids.len() {
            break;
        }
        let next = tokio::time::timeout_at(end, stream.next()).await.map_err(|_| {
            CliError::Usage(format!(
                "{} of {} evals still running after {} s",
                ids.len() - ended.by_id.len(),
                ids.len(),
                timeout.as_secs()
            ))
        })?;
        match next {
            Some(Ok(StreamItem::Event(e))) if mine.contains(&e.id) => ended.note(&e.id, &e.state),
            Some(Ok(StreamItem::Event(_))) => {}
            Some(Ok(StreamItem::Lost { .. })) => recheck = true,
            Some(Err(_)) | None => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                stream = c.events(Some(pool), Some("eval"), None).await?;
                recheck = true;
            }
        }
    }
    bar.finish_and_clear();
    let mut evals: Vec<EvalView> = Vec::with_capacity(ids.len());
    for id in &ids {
        evals.push(c.eval(pool, id).await?);
    }
    if as_json {
        print_json(&json!({ "evals": evals }))
    } else {
        println!("{} evals ended: {}", ids.len(), ended.summary());
        let not_ok: Vec<EvalView> =
            evals.iter().filter(|e| !(e.status == "complete" && e.exit_code == Some(0))).cloned().collect();
        if !not_ok.is_empty() {
            table::evals(&not_ok);
        }
    }
    let ok = evals.iter().all(|e| e.status == "complete" && e.exit_code == Some(0));
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

//! `lineup events` (the event stream, resumed across reconnects) and `lineup eval watch`
//! (one eval's changes until it ends).

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use lineup_client::{Client, EventView, StreamItem};

use crate::{render, table, CliError};

/// Waited before connecting again after the stream ended (the server restarting, say).
const RECONNECT: Duration = Duration::from_secs(1);

fn line(e: &EventView) -> String {
    let mut s = format!("{:>20} {:<6} {} {} {}", e.index, e.topic, e.pool_id, e.id, e.state);
    if let Some(a) = e.attempt {
        s.push_str(&format!(" attempt={a}"));
    }
    if let Some(w) = &e.worker_id {
        s.push_str(&format!(" worker={w}"));
    }
    if let Some(r) = &e.reason {
        s.push_str(&format!(" reason={r:?}"));
    }
    s
}

/// Prints events as they come, one per line (JSON lines with `--json`), until
/// interrupted; reconnects with the last index seen, so nothing in between is missed
/// while the server's history reaches back.
pub async fn follow(
    c: &Client,
    pool: Option<&str>,
    types: Option<&str>,
    mut after: Option<u64>,
    as_json: bool,
) -> Result<ExitCode, CliError> {
    let mut connected_once = false;
    loop {
        let mut stream = match c.events(pool, types, after).await {
            Ok(s) => s,
            // A bad request stays bad; a server that is not there (yet) may come back.
            Err(e) if e.status().is_some() || !connected_once => return Err(e.into()),
            Err(e) => {
                eprintln!("event stream: {e}; reconnecting");
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        connected_once = true;
        while let Some(item) = stream.next().await {
            match item {
                Ok(StreamItem::Event(e)) => {
                    after = Some(e.index);
                    if as_json {
                        // One line per event (JSON lines), for `jq` and friends.
                        println!("{}", serde_json::to_string(&e).unwrap_or_default())
                    } else {
                        println!("{}", line(&e))
                    }
                }
                Ok(StreamItem::Lost { resumed_from, message }) => {
                    eprintln!("warning: {message} (resuming after {resumed_from})");
                    after = Some(resumed_from);
                }
                Err(e) => {
                    eprintln!("event stream: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Prints the eval's state, then each change until it is complete, dead or cancelled.
/// Exits non-zero unless it completed with exit code 0.
pub async fn watch_eval(c: &Client, pool: &str, eval: &str, as_json: bool) -> Result<ExitCode, CliError> {
    // Subscribed before reading the eval, so no change falls between the two.
    let mut stream = c.events(Some(pool), Some("eval"), None).await?;
    let mut ev = c.eval(pool, eval).await?;
    show(&ev, as_json);
    while !ev.is_terminal() {
        match stream.next().await {
            Some(Ok(StreamItem::Event(e))) if e.id == eval => {
                ev = c.eval(pool, eval).await?;
                show(&ev, as_json);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => {
                // The server closed the stream: carry on from a fresh read.
                stream = c.events(Some(pool), Some("eval"), None).await?;
                ev = c.eval(pool, eval).await?;
                show(&ev, as_json);
            }
        }
    }
    let ok = ev.status == "complete" && ev.exit_code == Some(0);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn show(ev: &lineup_client::EvalView, as_json: bool) {
    render(as_json, ev, || table::evals(std::slice::from_ref(ev)));
}

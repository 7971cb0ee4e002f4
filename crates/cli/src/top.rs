//! `lineup pool top`: the pools table, redrawn every interval (on a terminal in place,
//! otherwise one block per interval) until interrupted or `--count` rounds.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use lineup_client::Client;

use crate::{table, CliError};

pub async fn run(c: &Client, pool: Option<&str>, interval: Duration, count: Option<u32>) -> Result<ExitCode, CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut round = 0u32;
    loop {
        let pools = match pool {
            Some(p) => vec![c.pool(p).await?],
            None => c.pools().await?.into_iter().filter(|p| p.status == "active").collect(),
        };
        let running: u64 = pools.iter().map(|p| p.allocs).sum();
        let queued: u64 = pools.iter().map(|p| p.queued).sum();
        let now = lineup_core::clock::rfc3339(lineup_core::Clock::now(&lineup_core::SystemClock));
        if tty {
            // Clear the screen and go home: the table stays in place.
            print!("\x1b[2J\x1b[H");
        }
        println!("lineup pool top  {now}  pools {}  running {running}  queued {queued}", pools.len());
        table::pools(&pools);
        if !tty {
            println!();
        }
        let _ = std::io::stdout().flush();
        round += 1;
        if count.is_some_and(|n| round >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

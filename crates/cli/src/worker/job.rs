//! One job: the command run for one alloc, in a process group of its own, with the
//! environment the operator chose, in a private working directory, its output streamed
//! into a bounded tail. Stopping it (cancel, shutdown, a lost lease) signals the whole
//! group: SIGTERM, then SIGKILL after the grace period. When the job's main process
//! ends, whatever it left running in its group is killed too: a job never outlives
//! its alloc.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lineup_core::model::MAX_OUTPUT_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;

pub struct Spec {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// How a job ended.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    /// Stopped by the agent, with why.
    Stopped(String),
}

/// The last `MAX_OUTPUT_BYTES` of stdout and stderr, as they arrive.
#[derive(Default)]
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(MAX_OUTPUT_BYTES)..];
        let over = (self.0.len() + bytes.len()).saturating_sub(MAX_OUTPUT_BYTES);
        self.0.drain(..over);
        self.0.extend(bytes);
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, into: Arc<Mutex<Tail>>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        into.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]);
    }
}

/// Sends `signal` to every process of the group `pgid` (the job's own group: see
/// `run`). A group already gone is not an error.
#[cfg(unix)]
fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: killpg only sends a signal; `pgid` is the group `run` created for this
    // job (never 0 or 1, which would mean our own group or init).
    if pgid > 1 {
        unsafe {
            libc::killpg(pgid as libc::pid_t, signal);
        }
    }
}

/// Runs the job until it exits or `stop` says why it must end. Returns how it ended and
/// the tail of its output. `Err` if it could not start.
pub async fn run(spec: Spec, stop: oneshot::Receiver<String>) -> Result<(Ended, String), String> {
    let mut cmd = tokio::process::Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A group of its own, so that a stop reaches what the job started too.
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {:?}: {e}", spec.command[0]))?;
    let pgid = child.id().unwrap_or(0);
    let tail = Arc::new(Mutex::new(Tail::default()));
    let readers = [
        child.stdout.take().map(|o| tokio::spawn(pump(o, tail.clone()))),
        child.stderr.take().map(|e| tokio::spawn(pump(e, tail.clone()))),
    ];
    let ended = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Ended::Exited(s),
            Err(e) => Ended::Stopped(format!("waiting for the command: {e}")),
        },
        why = stop => {
            let why = why.unwrap_or_else(|_| "stopped: the agent is going away".into());
            #[cfg(unix)]
            signal_group(pgid, libc::SIGTERM);
            #[cfg(not(unix))]
            let _ = child.start_kill();
            if tokio::time::timeout(spec.grace, child.wait()).await.is_err() {
                let _ = child.start_kill();
            }
            let _ = child.wait().await;
            Ended::Stopped(why)
        }
    };
    // Whatever the job left behind in its group goes with it.
    #[cfg(unix)]
    signal_group(pgid, libc::SIGKILL);
    for r in readers.into_iter().flatten() {
        // Pipes close once the group is gone; a process that escaped the group
        // (setsid) could hold them open, so do not wait for it forever.
        let abort = r.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), r).await.is_err() {
            abort.abort();
        }
    }
    let bytes: Vec<u8> = tail.lock().unwrap_or_else(|p| p.into_inner()).0.iter().copied().collect();
    Ok((ended, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&vec![b'a'; MAX_OUTPUT_BYTES - 2]);
        t.push(b"bcde");
        assert_eq!(t.0.len(), MAX_OUTPUT_BYTES);
        assert!(t.0.iter().rev().take(4).eq(b"edcb".iter()));
        t.push(&vec![b'z'; MAX_OUTPUT_BYTES * 3]);
        assert!(t.0.len() == MAX_OUTPUT_BYTES && t.0.iter().all(|b| *b == b'z'));
    }
}

//! Group commit. One thread owns the write connection; every write is a job sent to
//! it. The thread takes whatever jobs are waiting (up to `MAX_BATCH`), runs each inside
//! its own savepoint of one transaction, commits once, and only then answers each job.
//!
//! Why: a commit costs far more than the few statements of one job, and with many
//! requests in flight (submits over 8 connections, a scheduler, polls, heartbeats) the
//! jobs queue up while one commit runs, so the next commit carries all of them. A job
//! whose statements fail is rolled back to its savepoint alone; the others still commit.
//! No caller is told "done" before the commit that holds its writes, so an acknowledged
//! write survives `kill -9` exactly as before. Async callers await a oneshot instead of
//! blocking a runtime thread on a mutex while another request writes.

use std::panic::{catch_unwind, AssertUnwindSafe};

use lineup_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// At most this many jobs share one commit, so that one huge burst cannot make a
/// single transaction (and the answers waiting on it) grow without bound.
const MAX_BATCH: usize = 512;

trait Job: Send {
    /// Runs the job's statements. False if it failed (its savepoint is rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Hands the result over once the batch committed, or the commit's failure.
    fn reply(self: Box<Self>, commit: &std::result::Result<(), String>);
}

struct Typed<R, F> {
    f: Option<F>,
    out: Option<Result<R>>,
    tx: oneshot::Sender<Result<R>>,
}

impl<R, F> Job for Typed<R, F>
where
    R: Send + 'static,
    F: FnOnce(&Connection) -> Result<R> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return false };
        // A panic in one job must not take the writer (and every later write) down.
        let out = catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(Error::backend("sqlite write", "the write panicked")));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn reply(self: Box<Self>, commit: &std::result::Result<(), String>) {
        let out = match (commit, self.out) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(ok)) => ok,
            (Err(e), Some(Ok(_))) => Err(Error::backend("commit", e.clone())),
            (_, None) => Err(Error::backend("sqlite write", "the write did not run")),
        };
        // The caller may have gone away (request cancelled); its write stands anyway.
        let _ = self.tx.send(out);
    }
}

/// The sending side; cheap to share.
pub(crate) struct Writer {
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `conn`. The thread ends when the `Writer` is dropped
    /// and the jobs already sent are done.
    pub(crate) fn start(conn: Connection) -> Result<Writer> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("lineup-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| Error::backend("start sqlite writer", e))?;
        Ok(Writer { jobs: tx })
    }

    /// Runs `f` in the next group commit and returns its result once committed. If `f`
    /// returns an error, none of its writes are kept.
    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(Typed { f: Some(f), out: None, tx }))
            .map_err(|_| Error::backend("sqlite write", "the writer thread has stopped"))?;
        rx.await.map_err(|_| Error::backend("sqlite write", "the writer thread has stopped"))?
    }
}

fn run(conn: Connection, mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let commit = run_batch(&conn, &mut batch);
        if let Err(e) = &commit {
            error!(error = %e, jobs = batch.len(), "sqlite group commit failed");
        }
        for job in batch.drain(..) {
            job.reply(&commit);
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> std::result::Result<(), String> {
    let mut body = || -> rusqlite::Result<()> {
        exec(conn, "BEGIN IMMEDIATE")?;
        for job in batch.iter_mut() {
            exec(conn, "SAVEPOINT job")?;
            if !job.run(conn) {
                exec(conn, "ROLLBACK TO job")?;
            }
            exec(conn, "RELEASE job")?;
        }
        exec(conn, "COMMIT")
    };
    body().map_err(|e| {
        if !conn.is_autocommit() {
            if let Err(r) = conn.execute_batch("ROLLBACK") {
                warn!(error = %r, "rollback after a failed group commit");
            }
        }
        e.to_string()
    })
}

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
use std::time::Duration;

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
    /// Starts the writer thread on `conn`, and the checkpointer on `checkpoint_conn`.
    /// The threads end when the `Writer` is dropped and the jobs already sent are done.
    pub(crate) fn start(conn: Connection, checkpoint_conn: Connection) -> Result<Writer> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (committed_tx, committed_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("lineup-sqlite-writer".into())
            .spawn(move || run(conn, rx, committed_tx))
            .map_err(|e| Error::backend("start sqlite writer", e))?;
        std::thread::Builder::new()
            .name("lineup-sqlite-checkpoint".into())
            .spawn(move || checkpoints(checkpoint_conn, committed_rx))
            .map_err(|e| Error::backend("start sqlite checkpointer", e))?;
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

fn run(conn: Connection, mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>, committed: std::sync::mpsc::SyncSender<()>) {
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
        // Full means a checkpoint is already due: nothing to add.
        let _ = committed.try_send(());
    }
}

/// How long the checkpointer gathers commits before copying them into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies committed WAL pages back into the database file, off the writer thread. In
/// SQLite's default the committing thread does it every 1,000 pages and everything
/// waits meanwhile (a 4 MB copy and an fsync: tens of ms of no writes at all). A
/// PASSIVE checkpoint runs beside the writer instead. Idle, this thread sleeps in
/// `recv` and costs nothing.
///
/// Under steady writes a PASSIVE checkpoint never catches the WAL's end (frames keep
/// coming while it copies), so the WAL cannot start over; the writer's own
/// autocheckpoint (`CHECKPOINT_PAGES` in lib.rs) catches up between two of its commits,
/// copying only the little this thread left, and the WAL starts over.
fn checkpoints(conn: Connection, committed: std::sync::mpsc::Receiver<()>) {
    while committed.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_EVERY);
        while committed.try_recv().is_ok() {}
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            warn!(error = %e, "wal checkpoint");
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

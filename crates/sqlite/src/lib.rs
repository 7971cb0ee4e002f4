//! The embedded backend: every record and every queue in one SQLite file
//! (`<data-dir>/lineup.db`, WAL mode). Implements `lineup_core::Store` and
//! `lineup_core::Queues`; passes the shared conformance suite.
//!
//! # Layout
//! - `schema.rs`: tables and indexes, created on open.
//! - `store.rs`: records; each multi-record write is one SQLite transaction.
//! - `queues.rs`: SQS semantics over a `messages` table: visibility timeout, receive
//!   count, long polls woken by an in-process `Notify`, parked messages woken early.
//!
//! Two connections: writes go to one thread that group-commits them (`writer.rs`);
//! reads use a second connection behind a mutex (WAL lets it read the last commit
//! while the writer writes; statements take microseconds and no lock is held across
//! an `.await`). A write is answered only after its commit, so a read that follows it
//! sees it.

mod queues;
mod schema;
mod store;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use lineup_core::Error;
use rusqlite::Connection;
use tokio::sync::Notify;

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit survives the process being killed
    /// (`kill -9`); the last commits may be lost if the machine itself loses power.
    #[default]
    Process,
    /// `synchronous=FULL`: every commit is fsynced; survives power loss.
    Machine,
}

/// Page cache of the write connection and of the read connection.
const WRITE_CACHE_KIB: u32 = 32 * 1024;
const READ_CACHE_KIB: u32 = 16 * 1024;
/// WAL pages between checkpoints (SQLite's default is 1,000). Queue pages are written
/// over and over (send, receive, delete); a longer WAL copies each back to the database
/// once per checkpoint instead of many times.
const CHECKPOINT_PAGES: u32 = 10_000;

pub struct SqliteBackend {
    /// For reads only.
    conn: Mutex<Connection>,
    writer: writer::Writer,
    path: PathBuf,
    /// Long-poll wakeups, per queue name. In-process only: a second process on the
    /// same file still sees messages, at the next poll deadline.
    signals: Mutex<HashMap<String, Arc<Signal>>>,
}

impl SqliteBackend {
    /// Opens (creating if needed) `<dir>/lineup.db`.
    pub fn open_dir(dir: &Path, durability: Durability) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::backend(format!("create data dir {}", dir.display()), e))?;
        Self::open(&dir.join("lineup.db"), durability)
    }

    pub fn open(path: &Path, durability: Durability) -> Result<Self, Error> {
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Machine => "FULL",
        };
        let open = |cache_kib: u32| -> Result<Connection, Error> {
            let conn = Connection::open(path).map_err(|e| Error::backend(format!("open {}", path.display()), e))?;
            // The page caches bound memory; they are sized for the keys' working set of
            // a large backlog (random ids insert all over the primary key's B-tree).
            conn.execute_batch(&format!(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=10000; \
                 PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{cache_kib}; \
                 PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES};"
            ))
            .map_err(|e| Error::backend("configure sqlite", e))?;
            conn.set_prepared_statement_cache_capacity(64);
            Ok(conn)
        };
        let write_conn = open(WRITE_CACHE_KIB)?;
        schema::create(&write_conn)?;
        let read_conn = open(READ_CACHE_KIB)?;
        Ok(SqliteBackend {
            conn: Mutex::new(read_conn),
            writer: writer::Writer::start(write_conn)?,
            path: path.to_owned(),
            signals: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The read connection.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction behind
        // (rusqlite rolls back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, queue: &str) -> Arc<Signal> {
        let mut map = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }
}

/// What long polls on one queue wait for.
#[derive(Default)]
struct Signal {
    /// A message arrived, became visible, or the queue went away.
    notify: Notify,
    /// Bumped by `Queues::wake`: a poll that started before it returns at once.
    wakes: AtomicU64,
}

/// Maps an SQLite error to the core's error, with what was being done.
pub(crate) fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::backend(context, e)
}

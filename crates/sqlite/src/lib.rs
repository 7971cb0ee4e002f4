//! The embedded backend: every record and every queue in one SQLite file
//! (`<data-dir>/lineup.db`, WAL mode). Implements `lineup_core::Store` and
//! `lineup_core::Queues`; passes the shared conformance suite.
//!
//! # Layout
//! - `schema.rs`: tables and indexes, created on open.
//! - `store.rs`: records; each multi-record write is one write job (all or nothing).
//! - `queues.rs`: SQS semantics over a `messages` table: visibility timeout, receive
//!   count, long polls woken by an in-process `Notify`, parked messages woken early.
//! - `writer.rs`: the writer thread (group commit) and the checkpointer thread.
//!
//! Writes go to one thread that group-commits them (`writer.rs`); reads use a few
//! connections of their own, each behind a mutex (WAL lets them read the last commit
//! while the writer writes; no lock is held across an `.await`, and a reader takes
//! whichever connection is free, so a long read does not stall a short one on another
//! runtime thread). A write is answered only after its commit, so a read that follows
//! it sees it.

mod pipelines;
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
const READ_CACHE_KIB: u32 = 8 * 1024;
/// Read connections: more than the runtime has threads, so a reader rarely waits.
const READERS: usize = 4;
const CHECKPOINT_CACHE_KIB: u32 = 1024;
/// WAL pages (32 MB) after which the writer checkpoints itself after a commit. The
/// checkpointer thread (`writer.rs`) does the copying beside it; under steady writes it
/// cannot reach the WAL's end, and this lets the writer finish the little left so that
/// the WAL starts over instead of growing.
const CHECKPOINT_PAGES: u32 = 8_000;

pub struct SqliteBackend {
    /// For reads only.
    readers: Vec<Mutex<Connection>>,
    writer: writer::Writer,
    path: PathBuf,
    /// Long-poll wakeups, per queue name. In-process only: a second process on the
    /// same file still sees messages, at the next poll deadline.
    signals: Mutex<HashMap<String, Arc<Signal>>>,
}

impl SqliteBackend {
    /// Opens (creating if needed) `<dir>/lineup.db`.
    pub fn open_dir(dir: &Path, durability: Durability) -> Result<Self, Error> {
        private_dir(dir).map_err(|e| Error::backend(format!("create data dir {}", dir.display()), e))?;
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
        // The file holds token hashes and payloads: created 0600 before SQLite opens it,
        // and SQLite gives its WAL and shared-memory files the database file's mode.
        private_file(path).map_err(|e| Error::backend(format!("create {}", path.display()), e))?;
        let write_conn = open(WRITE_CACHE_KIB)?;
        schema::create(&write_conn)?;
        let checkpoint_conn = open(CHECKPOINT_CACHE_KIB)?;
        let readers = (0..READERS).map(|_| open(READ_CACHE_KIB).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteBackend {
            readers,
            writer: writer::Writer::start(write_conn, checkpoint_conn)?,
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
        for r in &self.readers {
            match r.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        // All busy (more readers than connections): wait for one, spread by thread.
        let i = thread_index() % self.readers.len();
        self.readers[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, queue: &str) -> Arc<Signal> {
        let mut map = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }
}

/// A small number that differs between threads, to spread waiting readers.
fn thread_index() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
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

/// Creates `dir` (and its parents) if missing, the last one 0700 from the start.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `path` empty with mode 0600 if it does not exist (no window where it is
/// wider: the mode is given to `open`, and the umask only narrows it).
pub fn private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).map(drop)
}

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
//! One connection behind a mutex: SQLite serialises writers anyway, statements here
//! take microseconds, and no lock is held across an `.await`.

mod queues;
mod schema;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

pub struct SqliteBackend {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Long-poll wakeups, per queue name. In-process only: a second process on the
    /// same file still sees messages, at the next poll deadline.
    notifiers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl SqliteBackend {
    /// Opens (creating if needed) `<dir>/lineup.db`.
    pub fn open_dir(dir: &Path, durability: Durability) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::backend(format!("create data dir {}", dir.display()), e))?;
        Self::open(&dir.join("lineup.db"), durability)
    }

    pub fn open(path: &Path, durability: Durability) -> Result<Self, Error> {
        let conn = Connection::open(path).map_err(|e| Error::backend(format!("open {}", path.display()), e))?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Machine => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY;"
        ))
        .map_err(|e| Error::backend("configure sqlite", e))?;
        schema::create(&conn)?;
        Ok(SqliteBackend { conn: Mutex::new(conn), path: path.to_owned(), notifiers: Mutex::new(HashMap::new()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction behind
        // (rusqlite rolls back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notifier(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.notifiers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_insert_with(|| Arc::new(Notify::new())).clone()
    }
}

/// Maps an SQLite error to the core's error, with what was being done.
pub(crate) fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::backend(context, e)
}

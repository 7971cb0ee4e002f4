//! The shared conformance suite on the embedded backend, each test on a fresh file.

use std::sync::Arc;

use lineup_conformance::Backend;
use lineup_sqlite::{Durability, SqliteBackend};

async fn backend() -> Backend {
    // The directory must outlive the test: leak it (the OS temp dir is cleaned anyway).
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let b = Arc::new(SqliteBackend::open_dir(&dir, Durability::Process).expect("open sqlite"));
    Backend { store: b.clone(), queues: b }
}

lineup_conformance::conformance_tests!(backend);

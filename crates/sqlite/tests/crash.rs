//! A crash at every step on the embedded backend, and one between starting a pipeline
//! step and recording it. Its own test binary: fault points
//! are armed process-wide (see `lineup_conformance::service_crash_at_every_step`).

use std::sync::Arc;

use lineup_conformance::Backend;
use lineup_sqlite::{Durability, SqliteBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = Arc::new(SqliteBackend::open_dir(dir.path(), Durability::Process).expect("open sqlite"));
    lineup_conformance::service_crash_at_every_step(Backend { store: b.clone(), queues: b }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_crash_before_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = Arc::new(SqliteBackend::open_dir(dir.path(), Durability::Process).expect("open sqlite"));
    lineup_conformance::service_pipeline_crash_before_record(Backend { store: b.clone(), queues: b }).await;
}

//! Pipelines in SQLite: one row each, the record as JSON in `body`, with the columns
//! the queries need (status, idempotency key, creation time) beside it. Writes are
//! conditioned on `version`, like evals.

use lineup_core::pipeline::{Pipeline, PipelineStatus};
use lineup_core::*;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{db, SqliteBackend};

const COLS: &str = "body";

pub(crate) fn pipeline_row(row: &Row) -> rusqlite::Result<Pipeline> {
    let body: String = row.get(0)?;
    serde_json::from_str(&body)
        .map_err(|e| rusqlite::Error::InvalidColumnType(0, format!("pipeline: {e}"), rusqlite::types::Type::Text))
}

fn body(p: &Pipeline) -> Result<String> {
    serde_json::to_string(p).map_err(|e| Error::backend("encode pipeline", e))
}

/// `Store::insert_pipeline` inside a write job.
pub(crate) fn insert_job(tx: &Connection, p: &Pipeline) -> Result<Option<Pipeline>> {
    SqliteBackend::check_active(tx, &p.pool_id)?;
    if let Some(key) = &p.idempotency_key {
        let existing = tx
            .prepare_cached(&format!("SELECT {COLS} FROM pipelines WHERE pool_id=?1 AND idempotency_key=?2"))
            .and_then(|mut st| st.query_row([p.pool_id.as_str(), key], pipeline_row).optional())
            .map_err(db("read pipeline by key"))?;
        if existing.is_some() {
            return Ok(existing);
        }
    }
    let body = body(p)?;
    tx.prepare_cached(
        "INSERT INTO pipelines (pool_id, pipeline_id, status, version, idempotency_key, created_at, body, purge_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        let (id, status, key) = (p.pipeline_id.as_str(), p.status.as_str(), &p.idempotency_key);
        st.execute(params![p.pool_id.as_str(), id, status, p.version as i64, key, p.created_at, body, p.purge_at])
    })
    .map_err(db("insert pipeline"))?;
    Ok(None)
}

/// `Store::update_pipeline` inside a write job.
pub(crate) fn update_job(tx: &Connection, p: &Pipeline, expected: u64) -> Result<()> {
    let body = body(p)?;
    let n = tx
        .prepare_cached(
            "UPDATE pipelines SET status=?3, version=?4, body=?5, purge_at=?7
             WHERE pool_id=?1 AND pipeline_id=?2 AND version=?6",
        )
        .and_then(|mut st| {
            let (id, status) = (p.pipeline_id.as_str(), p.status.as_str());
            st.execute(params![p.pool_id.as_str(), id, status, p.version as i64, body, expected as i64, p.purge_at])
        })
        .map_err(db("update pipeline"))?;
    if n == 1 {
        Ok(())
    } else {
        Err(Error::Conflict("pipeline changed".into()))
    }
}

pub(crate) fn get_sql() -> String {
    format!("SELECT {COLS} FROM pipelines WHERE pool_id=?1 AND pipeline_id=?2")
}

pub(crate) fn list_sql(status: Option<PipelineStatus>) -> String {
    match status {
        Some(_) => format!(
            "SELECT {COLS} FROM pipelines WHERE pool_id=?1 AND status=?2 ORDER BY created_at DESC, pipeline_id DESC LIMIT ?3"
        ),
        None => format!("SELECT {COLS} FROM pipelines WHERE pool_id=?1 ORDER BY created_at DESC, pipeline_id DESC LIMIT ?2"),
    }
}

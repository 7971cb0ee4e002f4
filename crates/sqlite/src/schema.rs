//! The schema. Keys mirror the DynamoDB tables (pool first), so the two backends
//! answer the same questions the same way.

use lineup_core::Error;
use rusqlite::Connection;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS pools (
    pool_id      TEXT PRIMARY KEY,
    strategy     TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    disbanded_at INTEGER,
    max_running    INTEGER,
    running        INTEGER NOT NULL DEFAULT 0,
    limits_version INTEGER NOT NULL DEFAULT 0,
    coefficients   TEXT,
    pushed_level   INTEGER,
    pushed_until   INTEGER,
    checks         TEXT
);

CREATE TABLE IF NOT EXISTS workers (
    pool_id    TEXT NOT NULL,
    worker_id  TEXT NOT NULL,
    capacity   INTEGER NOT NULL,
    free       INTEGER NOT NULL,
    ttl        INTEGER NOT NULL,
    token_hash TEXT NOT NULL,
    queue      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (pool_id, worker_id),
    -- The capacity invariant, enforced by the database as a last line of defence.
    CHECK (free >= 0 AND free <= capacity)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workers_ttl ON workers (pool_id, ttl);

CREATE TABLE IF NOT EXISTS replicas (
    pool_id   TEXT NOT NULL,
    dataset   TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    ttl       INTEGER NOT NULL,
    PRIMARY KEY (pool_id, dataset, worker_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replicas_ttl ON replicas (pool_id, ttl);
CREATE INDEX IF NOT EXISTS replicas_worker ON replicas (pool_id, worker_id);

CREATE TABLE IF NOT EXISTS evals (
    pool_id         TEXT NOT NULL,
    eval_id         TEXT NOT NULL,
    size            INTEGER NOT NULL,
    dataset         TEXT,
    payload         TEXT,
    status          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    worker_id       TEXT,
    alloc_id        TEXT,
    exit_code       INTEGER,
    output          TEXT,
    reason          TEXT,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    priority        INTEGER NOT NULL DEFAULT 50,
    step            TEXT,
    continuation    TEXT,
    redrive         TEXT,
    purge_at        INTEGER,
    PRIMARY KEY (pool_id, eval_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS evals_key ON evals (pool_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS evals_status ON evals (pool_id, status, created_at);
CREATE INDEX IF NOT EXISTS evals_created ON evals (pool_id, created_at);

CREATE TABLE IF NOT EXISTS pipelines (
    pool_id         TEXT NOT NULL,
    pipeline_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    -- The whole record as JSON (steps, their states, the eval block): read and written
    -- whole, under the version condition.
    body            TEXT NOT NULL,
    PRIMARY KEY (pool_id, pipeline_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS pipelines_key ON pipelines (pool_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS pipelines_status ON pipelines (pool_id, status, created_at);

CREATE TABLE IF NOT EXISTS allocs (
    pool_id    TEXT NOT NULL,
    alloc_id   TEXT NOT NULL,
    worker_id  TEXT NOT NULL,
    eval_id    TEXT NOT NULL,
    size       INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    ttl        INTEGER NOT NULL,
    state      TEXT NOT NULL,
    stop       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    counted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pool_id, alloc_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS allocs_live_ttl ON allocs (pool_id, ttl) WHERE state = 'live';
CREATE INDEX IF NOT EXISTS allocs_live_worker ON allocs (pool_id, worker_id) WHERE state = 'live';

CREATE TABLE IF NOT EXISTS queues (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    body          TEXT NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    parked        INTEGER NOT NULL DEFAULT 0,
    sent_at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at, id);
CREATE INDEX IF NOT EXISTS messages_parked ON messages (queue) WHERE parked = 1;
"#;

/// Columns added after the first release, for data directories made before them:
/// (table, column, definition).
const ADDED: &[(&str, &str, &str)] = &[
    ("evals", "priority", "INTEGER NOT NULL DEFAULT 50"),
    ("pools", "max_running", "INTEGER"),
    ("pools", "running", "INTEGER NOT NULL DEFAULT 0"),
    ("pools", "limits_version", "INTEGER NOT NULL DEFAULT 0"),
    ("pools", "coefficients", "TEXT"),
    ("pools", "pushed_level", "INTEGER"),
    ("pools", "pushed_until", "INTEGER"),
    ("pools", "checks", "TEXT"),
    ("allocs", "counted", "INTEGER NOT NULL DEFAULT 0"),
    ("evals", "step", "TEXT"),
    ("evals", "continuation", "TEXT"),
    ("evals", "redrive", "TEXT"),
    ("evals", "purge_at", "INTEGER"),
    ("pipelines", "purge_at", "INTEGER"),
];

pub fn create(conn: &Connection) -> Result<(), Error> {
    conn.execute_batch(SCHEMA).map_err(|e| Error::backend("create schema", e))?;
    for (table, column, def) in ADDED {
        let exists: bool = conn
            .query_row(&format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"), [column], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
            .map_err(|e| Error::backend("read schema", e))?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))
                .map_err(|e| Error::backend("add column", e))?;
        }
    }
    // Indexes on added columns, once they exist: the releaser's purge of what expired.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS evals_purge ON evals (pool_id, purge_at) WHERE purge_at IS NOT NULL;
         CREATE INDEX IF NOT EXISTS allocs_released_ttl ON allocs (pool_id, ttl) WHERE state = 'released';
         CREATE INDEX IF NOT EXISTS pipelines_purge ON pipelines (pool_id, purge_at) WHERE purge_at IS NOT NULL;",
    )
    .map_err(|e| Error::backend("create purge indexes", e))?;
    Ok(())
}

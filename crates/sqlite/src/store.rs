//! `Store` over SQLite. Multi-record writes are one transaction; conditions are
//! `UPDATE ... WHERE <condition>` with the changed-row count checked, mirroring the
//! DynamoDB condition expressions.

use async_trait::async_trait;
use lineup_core::admission;
use lineup_core::backend::{Claim, Heartbeat, Placement};
use lineup_core::*;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use crate::pipelines::pipeline_row;
use crate::{db, SqliteBackend};
use lineup_core::pipeline::{Pipeline, PipelineStatus};

const POOL_COLS: &str = "pool_id, strategy, status, created_at, disbanded_at, max_running, running, limits_version, \
                         coefficients, pushed_level, pushed_until, checks";
const WORKER_COLS: &str = "pool_id, worker_id, capacity, free, ttl, token_hash, queue, created_at";
const EVAL_COLS: &str = "pool_id, eval_id, size, dataset, payload, status, attempt, version, worker_id, alloc_id, \
                         exit_code, output, reason, idempotency_key, created_at, updated_at, priority, step, continuation, redrive, purge_at";
const ALLOC_COLS: &str = "pool_id, alloc_id, worker_id, eval_id, size, attempt, ttl, state, stop, created_at, counted";

/// Reads a column that must hold a valid id; a bad one means a corrupt row.
fn id_col<T: std::str::FromStr>(row: &Row, i: usize) -> rusqlite::Result<T> {
    let s: String = row.get(i)?;
    s.parse().map_err(|_| rusqlite::Error::InvalidColumnType(i, format!("id {s:?}"), rusqlite::types::Type::Text))
}

fn opt_id_col<T: std::str::FromStr>(row: &Row, i: usize) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = row.get(i)?;
    s.map(|s| {
        s.parse().map_err(|_| rusqlite::Error::InvalidColumnType(i, format!("id {s:?}"), rusqlite::types::Type::Text))
    })
    .transpose()
}

fn bad(i: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(i, what, rusqlite::types::Type::Text)
}

fn pool_row(row: &Row) -> rusqlite::Result<Pool> {
    let strategy: String = row.get(1)?;
    let status: String = row.get(2)?;
    Ok(Pool {
        pool_id: id_col(row, 0)?,
        strategy: Strategy::parse(&strategy).map_err(|e| bad(1, e.to_string()))?,
        status: PoolStatus::parse(&status).map_err(|e| bad(2, e.to_string()))?,
        created_at: row.get(3)?,
        disbanded_at: row.get(4)?,
        limits: limits_row(row)?,
    })
}

/// Columns 5.. of `POOL_COLS`.
fn limits_row(row: &Row) -> rusqlite::Result<admission::PoolLimits> {
    let coefficients: Option<String> = row.get(8)?;
    let pushed = match (row.get::<_, Option<u8>>(9)?, row.get::<_, Option<Millis>>(10)?) {
        (Some(level), Some(until)) => Some(admission::Pushed { level, until }),
        _ => None,
    };
    Ok(admission::PoolLimits {
        max_running: row.get(5)?,
        running: row.get(6)?,
        version: row.get::<_, i64>(7)? as u64,
        counting: false,
        coefficients: coefficients
            .map(|c| serde_json::from_str(&c).map_err(|e| bad(8, e.to_string())))
            .transpose()?
            .unwrap_or_default(),
        pushed,
        checks: row
            .get::<_, Option<String>>(11)?
            .map(|c| serde_json::from_str(&c).map_err(|e| bad(11, e.to_string())))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn worker_row(row: &Row) -> rusqlite::Result<Worker> {
    Ok(Worker {
        pool_id: id_col(row, 0)?,
        worker_id: id_col(row, 1)?,
        capacity: row.get(2)?,
        free: row.get(3)?,
        ttl: row.get(4)?,
        token_hash: row.get(5)?,
        queue: row.get(6)?,
        created_at: row.get(7)?,
    })
}

fn eval_row(row: &Row) -> rusqlite::Result<Eval> {
    let payload: Option<String> = row.get(4)?;
    let status: String = row.get(5)?;
    Ok(Eval {
        pool_id: id_col(row, 0)?,
        eval_id: id_col(row, 1)?,
        size: row.get(2)?,
        dataset: row.get(3)?,
        payload: payload.map(|p| serde_json::from_str(&p).map_err(|e| bad(4, e.to_string()))).transpose()?,
        status: EvalStatus::parse(&status).map_err(|e| bad(5, e.to_string()))?,
        attempt: row.get(6)?,
        version: row.get::<_, i64>(7)? as u64,
        worker_id: opt_id_col(row, 8)?,
        alloc_id: opt_id_col(row, 9)?,
        exit_code: row.get(10)?,
        output: row.get(11)?,
        reason: row.get(12)?,
        idempotency_key: row.get(13)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        priority: Priority::new(row.get(16)?).map_err(|e| bad(16, e.to_string()))?,
        step: row
            .get::<_, Option<String>>(17)?
            .map(|s| serde_json::from_str(&s).map_err(|e| bad(17, e.to_string())))
            .transpose()?,
        continuation: row
            .get::<_, Option<String>>(18)?
            .map(|s| serde_json::from_str(&s).map_err(|e| bad(18, e.to_string())))
            .transpose()?,
        redrive: row
            .get::<_, Option<String>>(19)?
            .map(|s| serde_json::from_str(&s).map_err(|e| bad(19, e.to_string())))
            .transpose()?,
        purge_at: row.get(20)?,
    })
}

fn alloc_row(row: &Row) -> rusqlite::Result<Alloc> {
    let state: String = row.get(7)?;
    Ok(Alloc {
        pool_id: id_col(row, 0)?,
        alloc_id: id_col(row, 1)?,
        worker_id: id_col(row, 2)?,
        eval_id: id_col(row, 3)?,
        size: row.get(4)?,
        attempt: row.get(5)?,
        ttl: row.get(6)?,
        state: match state.as_str() {
            "live" => AllocState::Live,
            "released" => AllocState::Released,
            other => return Err(bad(7, format!("alloc state {other:?}"))),
        },
        stop: row.get(8)?,
        created_at: row.get(9)?,
        counted: row.get(10)?,
    })
}

fn payload_text(e: &Eval) -> Option<String> {
    e.payload.as_ref().map(|p| p.to_string())
}

/// An eval's values in `EVAL_COLS` order, for `?1`..`?21`.
fn eval_values(e: &Eval) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    let opt = |v: Option<String>| v.map(Value::Text).unwrap_or(Value::Null);
    vec![
        Value::Text(e.pool_id.to_string()),
        Value::Text(e.eval_id.to_string()),
        Value::Integer(e.size.into()),
        opt(e.dataset.clone()),
        opt(payload_text(e)),
        Value::Text(e.status.as_str().to_owned()),
        Value::Integer(e.attempt.into()),
        Value::Integer(e.version as i64),
        opt(e.worker_id.as_ref().map(|w| w.to_string())),
        opt(e.alloc_id.as_ref().map(|a| a.to_string())),
        e.exit_code.map(|c| Value::Integer(c.into())).unwrap_or(Value::Null),
        opt(e.output.clone()),
        opt(e.reason.clone()),
        opt(e.idempotency_key.clone()),
        Value::Integer(e.created_at),
        Value::Integer(e.updated_at),
        Value::Integer(e.priority.get().into()),
        opt(e.step.as_ref().map(|st| serde_json::to_string(st).unwrap_or_default())),
        opt(e.continuation.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default())),
        opt(e.redrive.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default())),
        e.purge_at.map(Value::Integer).unwrap_or(Value::Null),
    ]
}

/// Writes every field of `e` if its stored version is `expected` (`?22`); false if not.
/// Idempotency key, creation time, priority and step (`?14`, `?15`, `?17`, `?18`) never
/// change and go unused.
fn update_eval_tx(tx: &Connection, e: &Eval, expected: u64) -> rusqlite::Result<bool> {
    let mut values = eval_values(e);
    values.push(rusqlite::types::Value::Integer(expected as i64));
    let n = tx
        .prepare_cached(
            "UPDATE evals SET size=?3, dataset=?4, payload=?5, status=?6, attempt=?7, version=?8, worker_id=?9,
                alloc_id=?10, exit_code=?11, output=?12, reason=?13, updated_at=?16, continuation=?19,
                redrive=?20, purge_at=?21
         WHERE pool_id=?1 AND eval_id=?2 AND version=?22",
        )?
        .execute(params_from_iter(values))?;
    Ok(n == 1)
}

fn conflict(what: &str) -> Error {
    Error::Conflict(what.to_owned())
}

/// `Store::insert_eval` inside a write job.
fn insert_eval_job(tx: &Connection, e: &Eval) -> Result<Option<Eval>> {
    SqliteBackend::check_active(tx, &e.pool_id)?;
    if let Some(key) = &e.idempotency_key {
        let existing = tx
            .prepare_cached(&format!("SELECT {EVAL_COLS} FROM evals WHERE pool_id=?1 AND idempotency_key=?2"))
            .and_then(|mut st| st.query_row([e.pool_id.as_str(), key], eval_row).optional())
            .map_err(db("read eval by key"))?;
        if existing.is_some() {
            return Ok(existing);
        }
    }
    // An id that exists (a pipeline step's, fixed in advance, started twice) writes
    // nothing: the existing eval is returned, at no extra read when it is new.
    let inserted = tx
        .prepare_cached(&format!(
            "INSERT INTO evals ({EVAL_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21)
             ON CONFLICT (pool_id, eval_id) DO NOTHING"
        ))
        .and_then(|mut st| st.execute(params_from_iter(eval_values(e))))
        .map_err(db("insert eval"))?;
    if inserted == 1 {
        return Ok(None);
    }
    tx.prepare_cached(&format!("SELECT {EVAL_COLS} FROM evals WHERE pool_id=?1 AND eval_id=?2"))
        .and_then(|mut st| st.query_row([e.pool_id.as_str(), e.eval_id.as_str()], eval_row).optional())
        .map_err(db("read eval"))
}

/// `Store::update_eval` inside a write job.
fn update_eval_job(tx: &Connection, e: &Eval, expected: u64) -> Result<()> {
    if update_eval_tx(tx, e, expected).map_err(db("update eval"))? {
        Ok(())
    } else {
        Err(conflict("eval changed"))
    }
}

/// `Store::place` inside a write job: claim, write the eval, insert the alloc. A
/// `Conflict` has written nothing (so a batch needs no savepoint per item: a lost
/// eval condition gives the claim back in the same transaction, which no one else can
/// see in between); any other error fails the whole job, which its savepoint undoes.
fn place_job(tx: &Connection, a: &Alloc, e: &Eval, expected: u64, claim: Claim, now: Millis) -> Result<()> {
    let (pool, worker) = (a.pool_id.as_str(), a.worker_id.as_str());
    // The pool's side first, read only: nothing is written before every check passed
    // (a conflict does not undo the job's savepoint).
    let limits: Option<(u64, u32)> = tx
        .prepare_cached("SELECT limits_version, running FROM pools WHERE pool_id=?1")
        .and_then(|mut st| st.query_row([pool], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))).optional())
        .map_err(db("read pool limits"))?;
    match limits {
        Some((version, _)) if version != claim.version => return Err(conflict("the pool's limits changed")),
        Some((_, running)) if claim.limit.is_some_and(|l| running >= l) => {
            return Err(conflict("the pool's running limit is reached"))
        }
        None => return Err(conflict("pool gone")),
        Some(_) => {}
    }
    let claimed = tx
        .prepare_cached("UPDATE workers SET free=free-?3 WHERE pool_id=?1 AND worker_id=?2 AND free>=?3 AND ttl>?4")
        .and_then(|mut st| st.execute(params![pool, worker, a.size, now]))
        .map_err(db("claim capacity"))?;
    if claimed != 1 {
        return Err(conflict("worker has not enough free capacity or is not live"));
    }
    if !update_eval_tx(tx, e, expected).map_err(db("update eval"))? {
        tx.prepare_cached("UPDATE workers SET free=free+?3 WHERE pool_id=?1 AND worker_id=?2")
            .and_then(|mut st| st.execute(params![pool, worker, a.size]))
            .map_err(db("give back claim"))?;
        return Err(conflict("eval changed"));
    }
    if claim.limit.is_some() {
        tx.prepare_cached("UPDATE pools SET running=running+1 WHERE pool_id=?1")
            .and_then(|mut st| st.execute([pool]))
            .map_err(db("count alloc"))?;
    }
    // A duplicate alloc id (80 random bits) fails the insert, and with it the job.
    tx.prepare_cached(&format!("INSERT INTO allocs ({ALLOC_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"))
        .and_then(|mut st| {
            st.execute(params![
                pool,
                a.alloc_id.as_str(),
                worker,
                a.eval_id.as_str(),
                a.size,
                a.attempt,
                a.ttl,
                "live",
                a.stop,
                a.created_at,
                claim.limit.is_some()
            ])
        })
        .map_err(db("insert alloc"))?;
    Ok(())
}

/// Runs `f` for each item. `f` writes nothing when it returns `Conflict`, so a lost
/// condition stays that item's result while the others are written; any other error
/// fails the whole job (its savepoint undoes everything).
fn each_item<T>(items: &[T], f: impl Fn(&T) -> Result<()>) -> Result<Vec<Result<()>>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match f(item) {
            Ok(()) => out.push(Ok(())),
            Err(Error::Conflict(why)) => out.push(Err(Error::Conflict(why))),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

impl SqliteBackend {
    fn query_vec<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: fn(&Row) -> rusqlite::Result<T>,
        context: &'static str,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(db(context))?;
        let rows = stmt.query_map(params, f).map_err(db(context))?;
        rows.collect::<rusqlite::Result<Vec<T>>>().map_err(db(context))
    }

    fn query_opt<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: fn(&Row) -> rusqlite::Result<T>,
        context: &'static str,
    ) -> Result<Option<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(db(context))?;
        stmt.query_row(params, f).optional().map_err(db(context))
    }

    /// Fails with `NotFound`/`Disbanded` unless the pool is active; inside a write job.
    pub(crate) fn check_active(tx: &Connection, pool: &PoolId) -> Result<()> {
        let status: Option<String> = tx
            .prepare_cached("SELECT status FROM pools WHERE pool_id=?1")
            .and_then(|mut st| st.query_row([pool.as_str()], |r| r.get(0)).optional())
            .map_err(db("read pool"))?;
        match status.as_deref() {
            None => Err(Error::not_found(format!("pool {pool}"))),
            Some("active") => Ok(()),
            Some(_) => Err(Error::Disbanded(pool.to_string())),
        }
    }
}

#[async_trait]
impl Store for SqliteBackend {
    async fn create_pool(&self, p: &Pool) -> Result<()> {
        let p = p.clone();
        self.writer
            .write(move |c| {
                let l = &p.limits;
                let coefficients =
                    serde_json::to_string(&l.coefficients).map_err(|e| Error::backend("encode coefficients", e))?;
                let checks = serde_json::to_string(&l.checks).map_err(|e| Error::backend("encode checks", e))?;
                c.execute(
                    &format!(
                        "INSERT INTO pools ({POOL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                    ),
                    params![
                        p.pool_id.as_str(),
                        p.strategy.as_str(),
                        p.status.as_str(),
                        p.created_at,
                        p.disbanded_at,
                        l.max_running,
                        l.running,
                        l.version as i64,
                        coefficients,
                        l.pushed.map(|p| p.level),
                        l.pushed.map(|p| p.until),
                        checks
                    ],
                )
                .map_err(db("insert pool"))?;
                Ok(())
            })
            .await
    }

    async fn set_max_running(&self, pool: &PoolId, max_running: Option<u32>) -> Result<Pool> {
        let id = pool.clone();
        self.writer
            .write(move |tx| {
                let p = id.as_str();
                // One transaction: the live allocs are counted as the cap is set, and no
                // claim can land in between (the writer is the only one).
                let counted = match max_running {
                    Some(_) => tx
                        .execute("UPDATE allocs SET counted=1 WHERE pool_id=?1 AND state='live' AND counted=0", [p])
                        .map_err(db("count live allocs"))?,
                    None => 0,
                };
                let n = tx
                    .execute(
                        "UPDATE pools SET max_running=?2, running=running+?3, limits_version=limits_version+1
                         WHERE pool_id=?1",
                        params![p, max_running, counted as i64],
                    )
                    .map_err(db("set max_running"))?;
                if n == 0 {
                    return Err(Error::not_found(format!("pool {id}")));
                }
                Ok(())
            })
            .await?;
        self.get_pool(pool).await?.ok_or_else(|| Error::not_found(format!("pool {pool}")))
    }

    async fn set_health(
        &self,
        pool: &PoolId,
        coefficients: admission::Coefficients,
        pushed: Option<admission::Pushed>,
        checks: &[lineup_core::health::HealthCheck],
    ) -> Result<Pool> {
        let id = pool.clone();
        let coefficients =
            serde_json::to_string(&coefficients).map_err(|e| Error::backend("encode coefficients", e))?;
        let checks = serde_json::to_string(checks).map_err(|e| Error::backend("encode checks", e))?;
        self.writer
            .write(move |tx| {
                let n = tx
                    .execute(
                        "UPDATE pools SET coefficients=?2, pushed_level=?3, pushed_until=?4, checks=?5 WHERE pool_id=?1",
                        params![id.as_str(), coefficients, pushed.map(|p| p.level), pushed.map(|p| p.until), checks],
                    )
                    .map_err(db("set health"))?;
                if n == 0 {
                    return Err(Error::not_found(format!("pool {id}")));
                }
                Ok(())
            })
            .await?;
        self.get_pool(pool).await?.ok_or_else(|| Error::not_found(format!("pool {pool}")))
    }

    async fn get_pool(&self, pool: &PoolId) -> Result<Option<Pool>> {
        self.query_opt(
            &format!("SELECT {POOL_COLS} FROM pools WHERE pool_id=?1"),
            [pool.as_str()],
            pool_row,
            "get pool",
        )
    }

    async fn list_pools(&self) -> Result<Vec<Pool>> {
        self.query_vec(
            &format!("SELECT {POOL_COLS} FROM pools ORDER BY created_at, pool_id"),
            [],
            pool_row,
            "list pools",
        )
    }

    async fn disband_pool(&self, pool: &PoolId, now: Millis) -> Result<Pool> {
        let id = pool.clone();
        self.writer
            .write(move |c| {
                c.execute(
                    "UPDATE pools SET status='disbanded', disbanded_at=?2 WHERE pool_id=?1 AND status='active'",
                    params![id.as_str(), now],
                )
                .map_err(db("disband pool"))
            })
            .await?;
        self.get_pool(pool).await?.ok_or_else(|| Error::not_found(format!("pool {pool}")))
    }

    async fn purge_pool(&self, pool: &PoolId) -> Result<()> {
        let pool = pool.clone();
        self.writer
            .write(move |tx| {
                for table in ["allocs", "evals", "pipelines", "replicas", "workers", "pools"] {
                    tx.execute(&format!("DELETE FROM {table} WHERE pool_id=?1"), [pool.as_str()])
                        .map_err(db("purge pool"))?;
                }
                Ok(())
            })
            .await
    }

    async fn pool_stats(&self, pool: &PoolId, now: Millis) -> Result<PoolStats> {
        let conn = self.conn();
        let p = pool.as_str();
        let (workers, capacity, free): (i64, i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(capacity),0), COALESCE(SUM(free),0) FROM workers WHERE pool_id=?1 AND ttl>?2",
                params![p, now],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(db("worker stats"))?;
        let queued: i64 = conn
            .query_row("SELECT COUNT(*) FROM evals WHERE pool_id=?1 AND status IN ('queued','failed')", [p], |r| {
                r.get(0)
            })
            .map_err(db("eval stats"))?;
        let allocs: i64 = conn
            .query_row("SELECT COUNT(*) FROM allocs WHERE pool_id=?1 AND state='live'", [p], |r| r.get(0))
            .map_err(db("alloc stats"))?;
        Ok(PoolStats {
            workers: workers as u64,
            capacity: capacity as u64,
            free: free as u64,
            queued: queued as u64,
            allocs: allocs as u64,
        })
    }

    async fn register_worker(&self, w: &Worker) -> Result<()> {
        let w = w.clone();
        self.writer
            .write(move |tx| {
                Self::check_active(tx, &w.pool_id)?;
                tx.execute(
                    &format!("INSERT INTO workers ({WORKER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                    params![
                        w.pool_id.as_str(),
                        w.worker_id.as_str(),
                        w.capacity,
                        w.free,
                        w.ttl,
                        w.token_hash,
                        w.queue,
                        w.created_at
                    ],
                )
                .map_err(db("insert worker"))?;
                Ok(())
            })
            .await
    }

    async fn get_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<Option<Worker>> {
        self.query_opt(
            &format!("SELECT {WORKER_COLS} FROM workers WHERE pool_id=?1 AND worker_id=?2"),
            [pool.as_str(), worker.as_str()],
            worker_row,
            "get worker",
        )
    }

    async fn list_workers(&self, pool: &PoolId) -> Result<Vec<Worker>> {
        self.query_vec(
            &format!("SELECT {WORKER_COLS} FROM workers WHERE pool_id=?1 ORDER BY created_at, worker_id"),
            [pool.as_str()],
            worker_row,
            "list workers",
        )
    }

    async fn candidates(&self, pool: &PoolId, min_free: u32, now: Millis) -> Result<Vec<Worker>> {
        self.query_vec(
            &format!("SELECT {WORKER_COLS} FROM workers WHERE pool_id=?1 AND ttl>?2 AND free>=?3"),
            params![pool.as_str(), now, min_free],
            worker_row,
            "candidate workers",
        )
    }

    async fn expired_workers(&self, pool: &PoolId, now: Millis) -> Result<Vec<Worker>> {
        self.query_vec(
            &format!("SELECT {WORKER_COLS} FROM workers WHERE pool_id=?1 AND ttl<=?2"),
            params![pool.as_str(), now],
            worker_row,
            "expired workers",
        )
    }

    async fn delete_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<()> {
        let (pool, worker) = (pool.clone(), worker.clone());
        self.writer
            .write(move |tx| {
                tx.execute("DELETE FROM replicas WHERE pool_id=?1 AND worker_id=?2", [pool.as_str(), worker.as_str()])
                    .map_err(db("delete replicas"))?;
                tx.execute("DELETE FROM workers WHERE pool_id=?1 AND worker_id=?2", [pool.as_str(), worker.as_str()])
                    .map_err(db("delete worker"))?;
                Ok(())
            })
            .await
    }

    async fn heartbeat(&self, hb: &Heartbeat) -> Result<Vec<AllocId>> {
        let hb = hb.clone();
        self.writer.write(move |tx| heartbeat_job(tx, &hb)).await
    }

    async fn replicas(&self, pool: &PoolId, datasets: &[String], now: Millis) -> Result<Vec<Replica>> {
        let mut out = Vec::new();
        for chunk in datasets.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT pool_id, dataset, worker_id, ttl FROM replicas WHERE pool_id=? AND ttl>? AND dataset IN ({marks})"
            );
            let mut params: Vec<rusqlite::types::Value> = vec![pool.as_str().to_owned().into(), now.into()];
            params.extend(chunk.iter().map(|d| d.clone().into()));
            out.extend(self.query_vec(
                &sql,
                params_from_iter(params),
                |r| {
                    Ok(Replica { pool_id: id_col(r, 0)?, dataset: r.get(1)?, worker_id: id_col(r, 2)?, ttl: r.get(3)? })
                },
                "read replicas",
            )?);
        }
        Ok(out)
    }

    async fn delete_expired_replicas(&self, pool: &PoolId, now: Millis) -> Result<u64> {
        let pool = pool.clone();
        let n = self
            .writer
            .write(move |c| {
                c.execute("DELETE FROM replicas WHERE pool_id=?1 AND ttl<=?2", params![pool.as_str(), now])
                    .map_err(db("delete expired replicas"))
            })
            .await?;
        Ok(n as u64)
    }

    async fn purge_history(&self, pool: &PoolId, now: Millis, released_before: Millis) -> Result<u64> {
        let pool = pool.clone();
        let n = self
            .writer
            .write(move |c| {
                let p = pool.as_str();
                let evals = c
                    .execute("DELETE FROM evals WHERE pool_id=?1 AND purge_at<=?2", params![p, now])
                    .map_err(db("purge evals"))?;
                let allocs = c
                    .execute(
                        "DELETE FROM allocs WHERE pool_id=?1 AND state='released' AND ttl<=?2",
                        params![p, released_before],
                    )
                    .map_err(db("purge allocs"))?;
                // An ended pipeline's step evals carry its `purge_at`: they went above.
                let pipelines = c
                    .execute("DELETE FROM pipelines WHERE pool_id=?1 AND purge_at<=?2", params![p, now])
                    .map_err(db("purge pipelines"))?;
                Ok(evals + allocs + pipelines)
            })
            .await?;
        Ok(n as u64)
    }

    async fn insert_eval(&self, e: &Eval) -> Result<Option<Eval>> {
        let e = e.clone();
        self.writer.write(move |tx| insert_eval_job(tx, &e)).await
    }

    async fn insert_eval_with_message(&self, e: &Eval, queue: &str, body: &str) -> Option<Result<Option<Eval>>> {
        let (e, q, body) = (e.clone(), queue.to_owned(), vec![body.to_owned()]);
        let res = self
            .writer
            .write(move |tx| {
                let existing = insert_eval_job(tx, &e)?;
                if existing.is_none() {
                    crate::queues::send_job(tx, &q, &body, crate::queues::now_ms())?;
                }
                Ok(existing)
            })
            .await;
        if matches!(res, Ok(None)) {
            self.signal(queue).notify.notify_waiters();
        }
        Some(res)
    }

    async fn insert_pipeline(&self, p: &Pipeline) -> Result<Option<Pipeline>> {
        let p = p.clone();
        self.writer.write(move |tx| crate::pipelines::insert_job(tx, &p)).await
    }

    async fn get_pipeline(&self, pool: &PoolId, id: &PipelineId) -> Result<Option<Pipeline>> {
        self.query_opt(&crate::pipelines::get_sql(), [pool.as_str(), id.as_str()], pipeline_row, "get pipeline")
    }

    async fn list_pipelines(
        &self,
        pool: &PoolId,
        status: Option<PipelineStatus>,
        limit: usize,
    ) -> Result<Vec<Pipeline>> {
        let sql = crate::pipelines::list_sql(status);
        match status {
            Some(s) => {
                self.query_vec(&sql, params![pool.as_str(), s.as_str(), limit as i64], pipeline_row, "list pipelines")
            }
            None => self.query_vec(&sql, params![pool.as_str(), limit as i64], pipeline_row, "list pipelines"),
        }
    }

    async fn update_pipeline(&self, p: &Pipeline, expected: u64) -> Result<()> {
        let p = p.clone();
        self.writer.write(move |tx| crate::pipelines::update_job(tx, &p, expected)).await
    }

    async fn get_eval(&self, pool: &PoolId, eval: &EvalId) -> Result<Option<Eval>> {
        self.query_opt(
            &format!("SELECT {EVAL_COLS} FROM evals WHERE pool_id=?1 AND eval_id=?2"),
            [pool.as_str(), eval.as_str()],
            eval_row,
            "get eval",
        )
    }

    async fn find_eval_by_key(&self, pool: &PoolId, key: &str) -> Result<Option<Eval>> {
        self.query_opt(
            &format!("SELECT {EVAL_COLS} FROM evals WHERE pool_id=?1 AND idempotency_key=?2"),
            [pool.as_str(), key],
            eval_row,
            "get eval by key",
        )
    }

    async fn get_evals(&self, pool: &PoolId, ids: &[EvalId]) -> Result<Vec<Eval>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!("SELECT {EVAL_COLS} FROM evals WHERE pool_id=? AND eval_id IN ({marks})");
            let params = std::iter::once(pool.as_str()).chain(chunk.iter().map(|e| e.as_str()));
            out.extend(self.query_vec(&sql, params_from_iter(params), eval_row, "get evals")?);
        }
        Ok(out)
    }

    async fn list_evals(&self, pool: &PoolId, status: Option<EvalStatus>, limit: usize) -> Result<Vec<Eval>> {
        match status {
            Some(s) => self.query_vec(
                &format!(
                    "SELECT {EVAL_COLS} FROM evals WHERE pool_id=?1 AND status=?2 ORDER BY created_at DESC, eval_id LIMIT ?3"
                ),
                params![pool.as_str(), s.as_str(), limit as i64],
                eval_row,
                "list evals",
            ),
            None => self.query_vec(
                &format!("SELECT {EVAL_COLS} FROM evals WHERE pool_id=?1 ORDER BY created_at DESC, eval_id LIMIT ?2"),
                params![pool.as_str(), limit as i64],
                eval_row,
                "list evals",
            ),
        }
    }

    async fn unfinished_evals(&self, pool: &PoolId) -> Result<Vec<Eval>> {
        self.query_vec(
            &format!("SELECT {EVAL_COLS} FROM evals WHERE pool_id=?1 AND status IN ('queued','placed','failed')"),
            [pool.as_str()],
            eval_row,
            "unfinished evals",
        )
    }

    async fn update_eval(&self, e: &Eval, expected: u64) -> Result<()> {
        let e = e.clone();
        self.writer.write(move |tx| update_eval_job(tx, &e, expected)).await
    }

    async fn update_evals(&self, evals: &[(Eval, u64)]) -> Result<Vec<Result<()>>> {
        let evals = evals.to_vec();
        self.writer.write(move |tx| each_item(&evals, |(e, expected)| update_eval_job(tx, e, *expected))).await
    }

    async fn get_alloc(&self, pool: &PoolId, alloc: &AllocId) -> Result<Option<Alloc>> {
        self.query_opt(
            &format!("SELECT {ALLOC_COLS} FROM allocs WHERE pool_id=?1 AND alloc_id=?2"),
            [pool.as_str(), alloc.as_str()],
            alloc_row,
            "get alloc",
        )
    }

    async fn live_allocs(&self, pool: &PoolId, worker: Option<&WorkerId>) -> Result<Vec<Alloc>> {
        match worker {
            Some(w) => self.query_vec(
                &format!("SELECT {ALLOC_COLS} FROM allocs WHERE pool_id=?1 AND worker_id=?2 AND state='live'"),
                [pool.as_str(), w.as_str()],
                alloc_row,
                "live allocs",
            ),
            None => self.query_vec(
                &format!("SELECT {ALLOC_COLS} FROM allocs WHERE pool_id=?1 AND state='live'"),
                [pool.as_str()],
                alloc_row,
                "live allocs",
            ),
        }
    }

    async fn expired_allocs(&self, pool: &PoolId, now: Millis) -> Result<Vec<Alloc>> {
        self.query_vec(
            &format!("SELECT {ALLOC_COLS} FROM allocs WHERE pool_id=?1 AND state='live' AND ttl<=?2"),
            params![pool.as_str(), now],
            alloc_row,
            "expired allocs",
        )
    }

    async fn place(&self, a: &Alloc, e: &Eval, expected: u64, claim: Claim, now: Millis) -> Result<()> {
        let (a, e) = (a.clone(), e.clone());
        self.writer.write(move |tx| place_job(tx, &a, &e, expected, claim, now)).await
    }

    async fn place_many(&self, items: &[(Alloc, Eval, u64)], claim: Claim, now: Millis) -> Result<Vec<Result<()>>> {
        let items = items.to_vec();
        self.writer
            .write(move |tx| each_item(&items, |(a, e, expected)| place_job(tx, a, e, *expected, claim, now)))
            .await
    }

    async fn place_and_deliver(
        &self,
        pool_queue: &str,
        items: &[Placement],
        claim: Claim,
        now: Millis,
    ) -> Option<Result<Vec<Result<()>>>> {
        let (owned, pool_queue) = (items.to_vec(), pool_queue.to_owned());
        let res = self
            .writer
            .write(move |tx| {
                let sent_at = crate::queues::now_ms();
                each_item(&owned, |p| {
                    place_job(tx, &p.alloc, &p.eval, p.expected_version, claim, now)?;
                    match crate::queues::send_job(tx, &p.deliver_to, std::slice::from_ref(&p.body), sent_at) {
                        // The worker was removed meanwhile: the releaser releases its allocs.
                        Ok(()) | Err(Error::QueueGone(_)) => {}
                        Err(e) => return Err(e),
                    }
                    crate::queues::delete_job(tx, &pool_queue, std::slice::from_ref(&p.receipt))
                })
            })
            .await;
        if let Ok(results) = &res {
            let mut woken = std::collections::HashSet::new();
            for (p, r) in items.iter().zip(results) {
                if r.is_ok() && woken.insert(p.deliver_to.as_str()) {
                    self.signal(&p.deliver_to).notify.notify_waiters();
                }
            }
        }
        Some(res)
    }

    async fn release(&self, a: &Alloc, eval: Option<(&Eval, u64)>, expired_by: Option<Millis>) -> Result<()> {
        let a = a.clone();
        let eval = eval.map(|(e, v)| (e.clone(), v));
        self.writer.write(move |tx| release_job(tx, &a, eval.as_ref(), expired_by)).await
    }

    async fn cancel_placed(&self, e: &Eval, expected: u64, alloc: &AllocId) -> Result<()> {
        let (e, alloc) = (e.clone(), alloc.clone());
        self.writer
            .write(move |tx| {
                update_eval_job(tx, &e, expected)?;
                tx.execute(
                    "UPDATE allocs SET stop=1 WHERE pool_id=?1 AND alloc_id=?2 AND state='live'",
                    [e.pool_id.as_str(), alloc.as_str()],
                )
                .map_err(db("flag alloc stop"))?;
                Ok(())
            })
            .await
    }
}

fn release_job(tx: &Connection, a: &Alloc, eval: Option<&(Eval, u64)>, expired_by: Option<Millis>) -> Result<()> {
    let (p, id) = (a.pool_id.as_str(), a.alloc_id.as_str());
    let row: Option<(u32, Millis, bool)> = tx
        .prepare_cached("SELECT size, ttl, counted FROM allocs WHERE pool_id=?1 AND alloc_id=?2 AND state='live'")
        .and_then(|mut st| st.query_row([p, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
        .map_err(db("read alloc"))?;
    let (size, counted) = match row {
        None => return Err(conflict("alloc already released")),
        Some((_, ttl, _)) if expired_by.is_some_and(|by| ttl > by) => return Err(conflict("alloc renewed")),
        Some((size, _, counted)) => (size, counted),
    };
    if let Some((e, expected)) = eval {
        // Checked before anything is written (a conflict does not undo the savepoint).
        let version: Option<i64> = tx
            .prepare_cached("SELECT version FROM evals WHERE pool_id=?1 AND eval_id=?2")
            .and_then(|mut st| st.query_row([p, e.eval_id.as_str()], |r| r.get(0)).optional())
            .map_err(db("read eval"))?;
        if version != Some(*expected as i64) {
            return Err(conflict("eval changed"));
        }
    }
    if counted {
        tx.prepare_cached("UPDATE pools SET running=running-1 WHERE pool_id=?1 AND running>0")
            .and_then(|mut st| st.execute([p]))
            .map_err(db("uncount alloc"))?;
    }
    tx.prepare_cached("UPDATE allocs SET state='released' WHERE pool_id=?1 AND alloc_id=?2")
        .and_then(|mut st| st.execute([p, id]))
        .map_err(db("release alloc"))?;
    // No row when the worker was removed: then there is nothing to give back to.
    tx.prepare_cached("UPDATE workers SET free=free+?3 WHERE pool_id=?1 AND worker_id=?2")
        .and_then(|mut st| st.execute(params![p, a.worker_id.as_str(), size]))
        .map_err(db("return capacity"))?;
    match eval {
        Some((e, expected)) => update_eval_job(tx, e, *expected),
        None => Ok(()),
    }
}

fn heartbeat_job(tx: &Connection, hb: &Heartbeat) -> Result<Vec<AllocId>> {
    let (p, w) = (hb.pool.as_str(), hb.worker.as_str());
    let ttl: Option<Millis> = tx
        .prepare_cached("SELECT ttl FROM workers WHERE pool_id=?1 AND worker_id=?2")
        .and_then(|mut st| st.query_row([p, w], |r| r.get(0)).optional())
        .map_err(db("read worker"))?;
    match ttl {
        None => return Err(Error::not_found(format!("worker {}", hb.worker))),
        Some(t) if t <= hb.now => return Err(Error::Expired(hb.worker.to_string())),
        Some(_) => {}
    }
    tx.prepare_cached("UPDATE workers SET ttl=?3 WHERE pool_id=?1 AND worker_id=?2")
        .and_then(|mut st| st.execute(params![p, w, hb.ttl]))
        .map_err(db("extend worker"))?;
    {
        let mut up = tx
            .prepare_cached(
                "INSERT INTO replicas (pool_id, dataset, worker_id, ttl) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (pool_id, dataset, worker_id) DO UPDATE SET ttl=excluded.ttl",
            )
            .map_err(db("prepare replica upsert"))?;
        for d in &hb.datasets {
            up.execute(params![p, d, w, hb.replica_ttl]).map_err(db("upsert replica"))?;
        }
    }
    let mut stop = Vec::new();
    let mut ext = tx
        .prepare_cached(
            "UPDATE allocs SET ttl=MAX(ttl, ?4) WHERE pool_id=?1 AND alloc_id=?2 AND worker_id=?3
             AND state='live' AND stop=0 AND ttl > ?5",
        )
        .map_err(db("prepare alloc extend"))?;
    for a in &hb.allocs {
        if ext.execute(params![p, a.as_str(), w, hb.alloc_ttl, hb.now]).map_err(db("extend alloc"))? == 0 {
            stop.push(a.clone());
        }
    }
    Ok(stop)
}

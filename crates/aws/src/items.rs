//! DynamoDB items and their conversion to the core's model. Attribute names follow the
//! Go original where it had one (`pool`, `wrk`, `cap`, `ttl`, `rpl`, `alloc`). `None`
//! is never written as NULL: absent attributes keep the sparse indexes sparse.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use lineup_core::admission::{Coefficients, PoolLimits, Pushed};
use lineup_core::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub type Item = HashMap<String, AttributeValue>;

pub fn to_item<T: Serialize>(v: &T) -> Result<Item> {
    serde_dynamo::to_item(v).map_err(|e| Error::backend("encode item", e))
}

pub fn from_item<T: DeserializeOwned>(i: Item) -> Result<T> {
    serde_dynamo::from_item(i).map_err(|e| Error::backend("decode item", e))
}

pub fn to_attr<T: Serialize>(v: &T) -> Result<AttributeValue> {
    serde_dynamo::to_attribute_value(v).map_err(|e| Error::backend("encode attribute", e))
}

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The pools table's key.
pub fn pool_key(pool: &PoolId) -> Item {
    HashMap::from([("pool".to_owned(), s(pool.as_str()))])
}

/// Any other table's key: the record's own id in its pool (`keys.rs`).
pub fn rec_key(pool: &PoolId, local: &str) -> Item {
    HashMap::from([("id".to_owned(), s(crate::keys::id(pool, local)))])
}

/// A key from a record's `id` as a listing returned it.
pub fn id_key(id: &AttributeValue) -> Item {
    HashMap::from([("id".to_owned(), id.clone())])
}

/// Seconds since the epoch, for the DynamoDB TTL attribute `purge_at`.
pub fn purge_at(ms: Millis, keep_secs: i64) -> i64 {
    ms / 1000 + keep_secs
}

pub const DAY: i64 = 24 * 3600;

#[derive(Serialize, Deserialize)]
pub struct PoolItem {
    pub pool: PoolId,
    pub strategy: Strategy,
    pub status: PoolStatus,
    pub created: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disbanded_at: Option<Millis>,
    /// `max_running`; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxrun: Option<u32>,
    /// Allocs counted against the cap (`PoolLimits::running`).
    #[serde(default)]
    pub run: u32,
    /// `PoolLimits::version`; workers carry the version that fenced them (`WorkerItem::lv`).
    #[serde(default)]
    pub lv: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counting: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coef: Option<Coefficients>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<Pushed>,
    /// The health checks as JSON text (their thresholds are a map keyed by level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<String>,
    /// The pool's index shards (`keys.rs`), fixed at creation; absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sh: Option<u32>,
}

impl PoolItem {
    pub fn shards(&self) -> u32 {
        self.sh.unwrap_or(1).clamp(1, crate::keys::MAX_SHARDS)
    }
}

impl From<&Pool> for PoolItem {
    fn from(p: &Pool) -> Self {
        let l = &p.limits;
        PoolItem {
            pool: p.pool_id.clone(),
            strategy: p.strategy,
            status: p.status,
            created: p.created_at,
            disbanded_at: p.disbanded_at,
            maxrun: l.max_running,
            run: l.running,
            lv: l.version,
            counting: l.counting,
            coef: (l.coefficients != Coefficients::default()).then_some(l.coefficients),
            pushed: l.pushed,
            checks: (!l.checks.is_empty()).then(|| serde_json::to_string(&l.checks).unwrap_or_default()),
            sh: None,
        }
    }
}

impl From<PoolItem> for Pool {
    fn from(p: PoolItem) -> Self {
        Pool {
            pool_id: p.pool,
            strategy: p.strategy,
            status: p.status,
            created_at: p.created,
            disbanded_at: p.disbanded_at,
            limits: PoolLimits {
                max_running: p.maxrun,
                running: p.run,
                version: p.lv,
                counting: p.counting,
                coefficients: p.coef.unwrap_or_default(),
                pushed: p.pushed,
                checks: p.checks.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default(),
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct WorkerItem {
    pub id: String,
    /// Index partition (`by_pool`), spread by worker id.
    pub ps: String,
    pub pool: PoolId,
    pub wrk: WorkerId,
    pub capacity: u32,
    /// Free capacity.
    pub cap: u32,
    pub ttl: Millis,
    pub token_hash: String,
    pub queue: String,
    pub created: Millis,
    /// The pool's limits version when the worker was registered or fenced: claims made
    /// against an older version lose on this worker (`Store::set_max_running`).
    #[serde(default)]
    pub lv: u64,
}

impl WorkerItem {
    pub fn new(w: &Worker, shards: u32) -> Self {
        WorkerItem {
            id: crate::keys::id(&w.pool_id, w.worker_id.as_str()),
            ps: crate::keys::ps(&w.pool_id, w.worker_id.as_str(), shards),
            pool: w.pool_id.clone(),
            wrk: w.worker_id.clone(),
            capacity: w.capacity,
            cap: w.free,
            ttl: w.ttl,
            token_hash: w.token_hash.clone(),
            queue: w.queue.clone(),
            created: w.created_at,
            lv: 0,
        }
    }
}

impl From<WorkerItem> for Worker {
    fn from(w: WorkerItem) -> Self {
        Worker {
            pool_id: w.pool,
            worker_id: w.wrk,
            capacity: w.capacity,
            free: w.cap,
            ttl: w.ttl,
            token_hash: w.token_hash,
            queue: w.queue,
            created_at: w.created,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct ReplicaItem {
    pub id: String,
    /// Index partition (`by_ttl`), spread by dataset: a dataset's replicas are one query.
    pub ps: String,
    pub pool: PoolId,
    /// `{dataset}:{worker}`, the original's key.
    pub rpl: String,
    pub dataset: String,
    pub wrk: WorkerId,
    pub ttl: Millis,
    pub purge_at: i64,
}

impl From<ReplicaItem> for Replica {
    fn from(r: ReplicaItem) -> Self {
        Replica { pool_id: r.pool, dataset: r.dataset, worker_id: r.wrk, ttl: r.ttl }
    }
}

#[derive(Serialize, Deserialize)]
pub struct AllocItem {
    pub id: String,
    /// Index partition (`by_due`), spread by alloc id.
    pub ps: String,
    pub pool: PoolId,
    pub alloc: AllocId,
    pub wrk: WorkerId,
    pub eval: EvalId,
    pub size: u32,
    pub attempt: u32,
    /// The lease; present only while live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Millis>,
    /// When the releaser next looks at it (`by_due`'s key): the lease as last seen
    /// there, not renewed by heartbeats. Present only while live, so `by_due` holds
    /// live allocs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Millis>,
    /// The alloc's TTL, kept after release.
    pub exp: Millis,
    pub state: AllocState,
    pub stop: bool,
    pub created: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<i64>,
    /// Counted in the pool's `run`; absent when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counted: bool,
}

impl AllocItem {
    pub fn new(a: &Alloc, shards: u32) -> Self {
        let live = a.state == AllocState::Live;
        AllocItem {
            id: crate::keys::id(&a.pool_id, a.alloc_id.as_str()),
            ps: crate::keys::ps(&a.pool_id, a.alloc_id.as_str(), shards),
            pool: a.pool_id.clone(),
            alloc: a.alloc_id.clone(),
            wrk: a.worker_id.clone(),
            eval: a.eval_id.clone(),
            size: a.size,
            attempt: a.attempt,
            ttl: live.then_some(a.ttl),
            due: live.then_some(a.ttl),
            exp: a.ttl,
            state: a.state,
            stop: a.stop,
            created: a.created_at,
            purge_at: None,
            counted: a.counted,
        }
    }
}

impl From<AllocItem> for Alloc {
    fn from(a: AllocItem) -> Self {
        Alloc {
            pool_id: a.pool,
            alloc_id: a.alloc,
            worker_id: a.wrk,
            eval_id: a.eval,
            size: a.size,
            attempt: a.attempt,
            ttl: a.ttl.unwrap_or(a.exp),
            state: a.state,
            stop: a.stop,
            created_at: a.created,
            counted: a.counted,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct EvalItem {
    pub id: String,
    /// Index partition (`by_created`), spread by eval id.
    pub ps: String,
    pub pool: PoolId,
    pub eval: EvalId,
    pub size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The payload as JSON text: exact, whatever its shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Absent on items written before priorities existed: the default.
    #[serde(default)]
    pub priority: Priority,
    pub status: EvalStatus,
    pub attempt: u32,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrk: Option<WorkerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_id: Option<AllocId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ikey: Option<String>,
    pub created: Millis,
    pub updated: Millis,
    /// `{pool}#{status}#{shard}`: the `by_status` index's partition.
    pub pst: String,
    /// The pipeline step, as JSON text (its inputs are any JSON, kept exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The continuation, as JSON text (its state is any JSON, kept exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cont: Option<String>,
    /// The redrive, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<String>,
    /// A finished eval's expiry, epoch seconds: the table's TTL attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<i64>,
}

/// The `by_status` partition of `pool`'s evals in `status` and shard `k`.
pub fn pst(pool: &PoolId, status: EvalStatus, k: u32) -> String {
    format!("{pool}#{}#{k}", status.as_str())
}

impl EvalItem {
    pub fn new(e: &Eval, shards: u32) -> Self {
        let k = lineup_core::id::bucket(e.eval_id.as_str(), shards);
        EvalItem {
            id: crate::keys::id(&e.pool_id, e.eval_id.as_str()),
            ps: crate::keys::shard_key(&e.pool_id, k),
            pool: e.pool_id.clone(),
            eval: e.eval_id.clone(),
            size: e.size,
            dataset: e.dataset.clone(),
            payload: e.payload.as_ref().map(|p| p.to_string()),
            priority: e.priority,
            status: e.status,
            attempt: e.attempt,
            version: e.version,
            wrk: e.worker_id.clone(),
            alloc_id: e.alloc_id.clone(),
            exit_code: e.exit_code,
            output: e.output.clone(),
            reason: e.reason.clone(),
            ikey: e.idempotency_key.clone(),
            created: e.created_at,
            updated: e.updated_at,
            pst: pst(&e.pool_id, e.status, k),
            step: e.step.as_ref().and_then(|st| serde_json::to_string(st).ok()),
            cont: e.continuation.as_ref().and_then(|c| serde_json::to_string(c).ok()),
            redrive: e.redrive.as_ref().and_then(|r| serde_json::to_string(r).ok()),
            purge_at: e.purge_at.map(|ms| purge_at(ms, 0)),
        }
    }
}

impl TryFrom<EvalItem> for Eval {
    type Error = Error;
    fn try_from(e: EvalItem) -> Result<Self> {
        let payload = e
            .payload
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|err| Error::backend("decode payload", err))?;
        let step =
            e.step.map(|st| serde_json::from_str(&st)).transpose().map_err(|err| Error::backend("decode step", err))?;
        let continuation = e
            .cont
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|err| Error::backend("decode continuation", err))?;
        let redrive = e
            .redrive
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|err| Error::backend("decode redrive", err))?;
        Ok(Eval {
            step,
            continuation,
            redrive,
            purge_at: e.purge_at.map(|s| s * 1000),
            pool_id: e.pool,
            eval_id: e.eval,
            size: e.size,
            dataset: e.dataset,
            payload,
            priority: e.priority,
            status: e.status,
            attempt: e.attempt,
            version: e.version,
            worker_id: e.wrk,
            alloc_id: e.alloc_id,
            exit_code: e.exit_code,
            output: e.output,
            reason: e.reason,
            idempotency_key: e.ikey,
            created_at: e.created,
            updated_at: e.updated,
        })
    }
}

/// An idempotency key's claim, stored in the evals table beside the evals.
#[derive(Serialize, Deserialize)]
pub struct KeyItem {
    pub id: String,
    pub pool: PoolId,
    /// `k#{key}`: never a valid eval id, so it cannot collide with one.
    pub eval: String,
    pub target: EvalId,
    /// Epoch seconds: the table's TTL attribute. Absent on keys written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<i64>,
}

pub fn key_sk(key: &str) -> String {
    format!("k#{key}")
}

pub fn eval_from_item(i: Item) -> Result<Eval> {
    Eval::try_from(from_item::<EvalItem>(i)?)
}

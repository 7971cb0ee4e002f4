//! `Store` over DynamoDB. The writes that move capacity are single
//! `TransactWriteItems`; a cancelled transaction is read from its cancellation
//! reasons. Records are keyed by their own id (`keys.rs`) and read strongly
//! consistent; a pool's records are listed through global secondary indexes, which are
//! eventually consistent, so every listing is used where a stale answer is harmless or
//! re-checked: candidates by the conditional claim, expired allocs by the release's
//! lease condition, expired workers by a consistent re-read. Every query paginates.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};
use lineup_core::backend::{Claim, Heartbeat};
use lineup_core::pipeline::{Pipeline, PipelineStatus};
use lineup_core::*;

use crate::ddb::{build, ccf, names, TxError};
use crate::items::*;
use crate::keys::shard_key;
use crate::tables::{BY_CREATED, BY_DUE, BY_POOL, BY_STATUS, BY_TTL};
use crate::{sdk_err, AwsBackend};

impl AwsBackend {
    /// Items of `pool` in `table` whose `ttl` has passed, shard `k`, through its
    /// `by_ttl` index (eventually consistent: the caller re-checks what it acts on).
    pub(crate) fn expired_query(&self, table: &str, pool: &PoolId, k: u32, now: Millis) -> QueryFluentBuilder {
        self.due_query(table, BY_TTL, "ttl", pool, k, now)
    }

    /// Entries of `index` (keyed `ps`, `key`) in shard `k` of `pool` at or before `now`.
    pub(crate) fn due_query(
        &self,
        table: &str,
        index: &str,
        key: &str,
        pool: &PoolId,
        k: u32,
        now: Millis,
    ) -> QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(table)
            .index_name(index)
            .key_condition_expression("#p = :p AND #t <= :now")
            .expression_attribute_names("#p", "ps")
            .expression_attribute_names("#t", key)
            .expression_attribute_values(":p", s(shard_key(pool, k)))
            .expression_attribute_values(":now", n(now))
    }

    /// `pool`'s evals in `status`, shard `k` (`by_status`, oldest first).
    fn status_query(&self, pool: &PoolId, status: EvalStatus, k: u32) -> QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(&self.tables.evals)
            .index_name(BY_STATUS)
            .key_condition_expression("#k = :k")
            .expression_attribute_names("#k", "pst")
            .expression_attribute_values(":k", s(pst(pool, status, k)))
    }

    /// The pool item, whose shard count is remembered on the way.
    pub(crate) async fn get_pool_item(&self, pool: &PoolId) -> Result<Option<PoolItem>> {
        let Some(i) = self.get(&self.tables.pools, pool_key(pool)).await? else { return Ok(None) };
        let item: PoolItem = from_item(i)?;
        self.remember_shards(pool, item.shards());
        Ok(Some(item))
    }

    /// `NotFound` or `Disbanded`, after a check that the pool is active failed.
    pub(crate) async fn pool_not_active(&self, pool: &PoolId) -> Error {
        match self.get_pool(pool).await {
            Ok(None) => Error::not_found(format!("pool {pool}")),
            Ok(Some(p)) if p.status == PoolStatus::Active => Error::Conflict("pool changed; try again".into()),
            Ok(Some(_)) => Error::Disbanded(pool.to_string()),
            Err(e) => e,
        }
    }

    pub(crate) async fn pool_or_not_found(&self, pool: &PoolId) -> Result<Pool> {
        self.get_pool(pool).await?.ok_or_else(|| Error::not_found(format!("pool {pool}")))
    }

    /// `pool_is_active`, and its limits still at `version`.
    pub(crate) fn pool_is_active_at(&self, pool: &PoolId, version: u64) -> Result<TransactWriteItem> {
        let check = build(
            ConditionCheck::builder()
                .table_name(&self.tables.pools)
                .set_key(Some(pool_key(pool)))
                .condition_expression(format!("#s = :active AND {}", crate::limits::VERSION_IS))
                .set_expression_attribute_names(names(&[("#s", "status"), ("#lv", "lv")]))
                .expression_attribute_values(":active", s("active"))
                .expression_attribute_values(":lv", n(version))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    pub(crate) fn pool_is_active(&self, pool: &PoolId) -> Result<TransactWriteItem> {
        let check = build(
            ConditionCheck::builder()
                .table_name(&self.tables.pools)
                .set_key(Some(pool_key(pool)))
                .condition_expression("#s = :active")
                .set_expression_attribute_names(names(&[("#s", "status")]))
                .expression_attribute_values(":active", s("active"))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// `e` written whole, conditioned on its version (or on being new); `shards`: its pool's.
    pub(crate) fn put_eval(&self, e: &Eval, expected: Option<u64>, shards: u32) -> Result<TransactWriteItem> {
        let mut put = Put::builder().table_name(&self.tables.evals).set_item(Some(to_item(&EvalItem::new(e, shards))?));
        put = match expected {
            Some(v) => put
                .condition_expression("#v = :v")
                .set_expression_attribute_names(names(&[("#v", "version")]))
                .expression_attribute_values(":v", n(v)),
            None => put
                .condition_expression("attribute_not_exists(#e)")
                .set_expression_attribute_names(names(&[("#e", "eval")])),
        };
        Ok(TransactWriteItem::builder().put(build(put.build())?).build())
    }

    /// A new eval without an idempotency key: one conditional `PutItem`.
    async fn put_new_eval(&self, e: &Eval) -> Result<Option<Eval>> {
        let shards = self.shards(&e.pool_id).await?;
        let r = self
            .ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::new(e, shards))?))
            .condition_expression("attribute_not_exists(#e)")
            .expression_attribute_names("#e", "eval")
            .send()
            .await;
        match r {
            Ok(_) => Ok(None),
            Err(err) if ccf(&err) => match self.get_eval(&e.pool_id, &e.eval_id).await? {
                // The SDK retried a put whose first response was lost after it was
                // applied (or a step's eval was started twice with the same content):
                // the eval that exists is this very one.
                Some(existing) if existing == *e => Ok(None),
                // A pipeline step's eval (ids fixed in advance) started twice.
                Some(existing) => Ok(Some(existing)),
                None => Err(Error::Conflict("eval id taken; try again".into())),
            },
            Err(err) => Err(sdk_err("put eval", err)),
        }
    }

    pub(crate) fn items<T: serde::de::DeserializeOwned>(items: Vec<Item>) -> Result<Vec<T>> {
        items.into_iter().map(from_item).collect()
    }

    /// Every pool, oldest first; `consistent` for a strongly consistent scan (twice the
    /// read units).
    async fn scan_pools(&self, consistent: bool) -> Result<Vec<Pool>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let r = self
                .ddb
                .scan()
                .table_name(&self.tables.pools)
                .consistent_read(consistent)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_err("scan pools", e))?;
            for i in r.items.unwrap_or_default() {
                let item: PoolItem = from_item(i)?;
                self.remember_shards(&item.pool, item.shards());
                out.push(Pool::from(item));
            }
            match r.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.pool_id).cmp(&(b.created_at, &b.pool_id)));
        Ok(out)
    }
}

#[async_trait]
impl Store for AwsBackend {
    async fn create_pool(&self, p: &Pool) -> Result<()> {
        let mut item = PoolItem::from(p);
        item.sh = Some(self.new_pool_shards());
        let r = self
            .ddb
            .put_item()
            .table_name(&self.tables.pools)
            .set_item(Some(to_item(&item)?))
            .condition_expression("attribute_not_exists(#p)")
            .expression_attribute_names("#p", "pool")
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            // The SDK retried a put whose first response was lost after it was applied:
            // the pool that exists is this very one.
            Err(e) if ccf(&e) => match self.get_pool(&p.pool_id).await? {
                Some(existing) if existing == *p => Ok(()),
                _ => Err(Error::Conflict("pool id exists".into())),
            },
            Err(e) => Err(sdk_err("put pool", e)),
        }
    }

    async fn set_max_running(&self, pool: &PoolId, max_running: Option<u32>) -> Result<Pool> {
        self.set_max_running_steps(pool, max_running).await
    }

    async fn set_health(
        &self,
        pool: &PoolId,
        coefficients: lineup_core::admission::Coefficients,
        pushed: Option<lineup_core::admission::Pushed>,
        checks: &[lineup_core::health::HealthCheck],
    ) -> Result<Pool> {
        self.set_health_item(pool, coefficients, pushed, checks).await
    }

    async fn get_pool(&self, pool: &PoolId) -> Result<Option<Pool>> {
        Ok(self.get_pool_item(pool).await?.map(Pool::from))
    }

    async fn list_pools(&self) -> Result<Vec<Pool>> {
        self.scan_pools(true).await
    }

    async fn sweep_pools(&self) -> Result<Vec<Pool>> {
        self.scan_pools(false).await
    }

    async fn disband_pool(&self, pool: &PoolId, now: Millis) -> Result<Pool> {
        let r = self
            .ddb
            .update_item()
            .table_name(&self.tables.pools)
            .set_key(Some(pool_key(pool)))
            .update_expression("SET #s = :d, #at = :now")
            .condition_expression("#s = :active")
            .set_expression_attribute_names(names(&[("#s", "status"), ("#at", "disbanded_at")]))
            .expression_attribute_values(":d", s("disbanded"))
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match r {
            Ok(_) => {}
            Err(e) if ccf(&e) => {}
            Err(e) => return Err(sdk_err("disband pool", e)),
        }
        self.get_pool(pool).await?.ok_or_else(|| Error::not_found(format!("pool {pool}")))
    }

    async fn purge_pool(&self, pool: &PoolId) -> Result<()> {
        // Each table through the index that lists all its pool's records, with their
        // idempotency keys' items. Released allocs are not indexed (`by_due` holds the
        // live ones): their ids are never reused, and their TTL takes them.
        let t = &self.tables;
        let tables = [
            (&t.allocs, BY_DUE, "id"),
            (&t.evals, BY_CREATED, "id, ikey"),
            (&t.pipelines, BY_CREATED, "id, ikey"),
            (&t.replicas, BY_TTL, "id"),
            (&t.workers, BY_POOL, "id"),
        ];
        for (table, index, attrs) in tables {
            let q = |k| self.index_query(table, index, &shard_key(pool, k)).projection_expression(attrs);
            let mut keys = Vec::new();
            for i in self.query_shards(pool, q, "purge query").await? {
                if let Some(AttributeValue::S(ikey)) = i.get("ikey") {
                    keys.push(rec_key(pool, &key_sk(ikey)));
                }
                keys.extend(i.get("id").map(id_key));
            }
            self.batch_delete(table, keys).await?;
        }
        self.ddb
            .delete_item()
            .table_name(&t.pools)
            .set_key(Some(pool_key(pool)))
            .send()
            .await
            .map_err(|e| sdk_err("delete pool", e))?;
        self.forget_shards(pool);
        Ok(())
    }

    async fn pool_stats(&self, pool: &PoolId, now: Millis) -> Result<PoolStats> {
        let mut st = PoolStats::default();
        for w in self.list_workers(pool).await? {
            if w.is_live(now) {
                st.workers += 1;
                st.capacity += w.capacity as u64;
                st.free += w.free as u64;
            }
        }
        for status in [EvalStatus::Queued, EvalStatus::Failed] {
            st.queued += self.count_shards(pool, |k| self.status_query(pool, status, k), "count evals").await?;
        }
        let q = |k| self.index_query(&self.tables.allocs, BY_DUE, &shard_key(pool, k));
        st.allocs = self.count_shards(pool, q, "count allocs").await?;
        Ok(st)
    }

    async fn register_worker(&self, w: &Worker) -> Result<()> {
        self.register_worker_item(w).await
    }

    async fn get_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<Option<Worker>> {
        match self.get(&self.tables.workers, rec_key(pool, worker.as_str())).await? {
            Some(i) => Ok(Some(from_item::<WorkerItem>(i)?.into())),
            None => Ok(None),
        }
    }

    async fn list_workers(&self, pool: &PoolId) -> Result<Vec<Worker>> {
        let q = |k| self.index_query(&self.tables.workers, BY_POOL, &shard_key(pool, k));
        let items = self.query_shards(pool, q, "list workers").await?;
        let mut ws: Vec<Worker> = Self::items::<WorkerItem>(items)?.into_iter().map(Worker::from).collect();
        ws.sort_by(|a, b| (a.created_at, &a.worker_id).cmp(&(b.created_at, &b.worker_id)));
        Ok(ws)
    }

    async fn candidates(&self, pool: &PoolId, min_free: u32, now: Millis) -> Result<Vec<Worker>> {
        self.candidate_items(pool, min_free, now).await
    }

    async fn expired_workers(&self, pool: &PoolId, now: Millis) -> Result<Vec<Worker>> {
        self.expired_worker_items(pool, now).await
    }

    async fn delete_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<()> {
        self.delete_worker_item(pool, worker).await
    }

    async fn heartbeat(&self, hb: &Heartbeat) -> Result<Vec<AllocId>> {
        self.heartbeat_items(hb).await
    }

    async fn replicas(&self, pool: &PoolId, datasets: &[String], now: Millis) -> Result<Vec<Replica>> {
        self.replica_items(pool, datasets, now).await
    }

    async fn delete_expired_replicas(&self, pool: &PoolId, now: Millis) -> Result<u64> {
        self.delete_expired_replica_items(pool, now).await
    }

    async fn insert_eval(&self, e: &Eval) -> Result<Option<Eval>> {
        // No pool check (see `insert_checks_pool`): a ConditionCheck on the pool item
        // in every submit would make that item as hot as the pool's submit rate, and
        // cost 2 write units besides. Without a key, one plain put (1 write unit).
        let Some(k) = &e.idempotency_key else { return self.put_new_eval(e).await };
        // A key is remembered for the retention after its submit (as an API's
        // idempotency keys usually are, for a window): then DynamoDB's TTL removes its
        // item, and until it does, an expired one is as good as absent.
        let expires = purge_at(e.created_at, self.retention_secs());
        let claim = KeyItem {
            id: crate::keys::id(&e.pool_id, &key_sk(k)),
            pool: e.pool_id.clone(),
            eval: key_sk(k),
            target: e.eval_id.clone(),
            purge_at: Some(expires),
        };
        let put = build(
            Put::builder()
                .table_name(&self.tables.evals)
                .set_item(Some(to_item(&claim)?))
                .condition_expression("attribute_not_exists(#e) OR #pa <= :now")
                .expression_attribute_names("#e", "eval")
                .expression_attribute_names("#pa", "purge_at")
                .expression_attribute_values(":now", n(e.created_at / 1000))
                .build(),
        )?;
        let shards = self.shards(&e.pool_id).await?;
        let items = vec![self.put_eval(e, None, shards)?, TransactWriteItem::builder().put(put).build()];
        match self.transact(items, "insert eval").await {
            Ok(()) => Ok(None),
            // The id exists: a pipeline step's eval (ids fixed in advance) started twice.
            Err(TxError::Cancelled(r)) if TxError::failed(&r, 0) => {
                match self.get_eval(&e.pool_id, &e.eval_id).await? {
                    Some(existing) => Ok(Some(existing)),
                    None => Err(Error::Conflict("eval id taken; try again".into())),
                }
            }
            Err(TxError::Cancelled(r)) if TxError::failed(&r, 1) => match self.find_eval_by_key(&e.pool_id, k).await? {
                Some(existing) => Ok(Some(existing)),
                None => Err(Error::Conflict("idempotency key being claimed; try again".into())),
            },
            Err(TxError::Cancelled(r)) => Err(Error::Conflict(format!("insert eval cancelled: {r:?}"))),
            Err(TxError::Other(e)) => Err(e),
        }
    }

    fn insert_checks_pool(&self) -> bool {
        false
    }

    async fn insert_pipeline(&self, p: &Pipeline) -> Result<Option<Pipeline>> {
        self.insert_pipeline_item(p).await
    }

    async fn get_pipeline(&self, pool: &PoolId, id: &PipelineId) -> Result<Option<Pipeline>> {
        self.get_pipeline_item(pool, id).await
    }

    async fn list_pipelines(
        &self,
        pool: &PoolId,
        status: Option<PipelineStatus>,
        limit: usize,
    ) -> Result<Vec<Pipeline>> {
        self.list_pipeline_items(pool, status, limit).await
    }

    async fn update_pipeline(&self, p: &Pipeline, expected: u64) -> Result<()> {
        self.update_pipeline_item(p, expected).await
    }

    async fn get_eval(&self, pool: &PoolId, eval: &EvalId) -> Result<Option<Eval>> {
        match self.get(&self.tables.evals, rec_key(pool, eval.as_str())).await? {
            Some(i) => Ok(Some(eval_from_item(i)?)),
            None => Ok(None),
        }
    }

    async fn find_eval_by_key(&self, pool: &PoolId, k: &str) -> Result<Option<Eval>> {
        let Some(i) = self.get(&self.tables.evals, rec_key(pool, &key_sk(k))).await? else {
            return Ok(None);
        };
        // An expired key whose eval is still kept answers with it (a key is remembered
        // at least for the retention); once the eval is gone, a new submit may take
        // the key over (its put is conditioned on the old one having expired).
        let claim: KeyItem = from_item(i)?;
        self.get_eval(pool, &claim.target).await
    }

    async fn get_evals(&self, pool: &PoolId, ids: &[EvalId]) -> Result<Vec<Eval>> {
        let keys = unique(ids).map(|id| rec_key(pool, id.as_str())).collect();
        self.batch_get(&self.tables.evals, keys).await?.into_iter().map(eval_from_item).collect()
    }

    async fn list_evals(&self, pool: &PoolId, status: Option<EvalStatus>, limit: usize) -> Result<Vec<Eval>> {
        // Newest first in each shard; merged and cut here.
        let q = |k| {
            match status {
                Some(st) => self.status_query(pool, st, k),
                None => self.index_query(&self.tables.evals, BY_CREATED, &shard_key(pool, k)),
            }
            .scan_index_forward(false)
        };
        let items = self.query_shards_limit(pool, q, limit, "list evals").await?;
        let mut evals = items.into_iter().map(eval_from_item).collect::<Result<Vec<_>>>()?;
        evals.sort_by(|a, b| (b.created_at, &b.eval_id).cmp(&(a.created_at, &a.eval_id)));
        evals.truncate(limit);
        Ok(evals)
    }

    async fn unfinished_evals(&self, pool: &PoolId) -> Result<Vec<Eval>> {
        let mut out = Vec::new();
        for st in [EvalStatus::Queued, EvalStatus::Placed, EvalStatus::Failed] {
            for i in self.query_shards(pool, |k| self.status_query(pool, st, k), "unfinished evals").await? {
                out.push(eval_from_item(i)?);
            }
        }
        Ok(out)
    }

    async fn update_eval(&self, e: &Eval, expected: u64) -> Result<()> {
        let shards = self.shards(&e.pool_id).await?;
        let r = self
            .ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::new(e, shards))?))
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", n(expected))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            // The SDK retried a put whose first response was lost after it was applied:
            // if the stored eval is this very write, it succeeded.
            Err(err) if ccf(&err) => match self.get_eval(&e.pool_id, &e.eval_id).await? {
                Some(stored) if stored == *e => Ok(()),
                _ => Err(Error::Conflict("eval changed".into())),
            },
            Err(err) => Err(sdk_err("update eval", err)),
        }
    }

    async fn get_alloc(&self, pool: &PoolId, alloc: &AllocId) -> Result<Option<Alloc>> {
        match self.get(&self.tables.allocs, rec_key(pool, alloc.as_str())).await? {
            Some(i) => Ok(Some(from_item::<AllocItem>(i)?.into())),
            None => Ok(None),
        }
    }

    async fn get_allocs(&self, pool: &PoolId, ids: &[AllocId]) -> Result<Vec<Alloc>> {
        let keys = unique(ids).map(|id| rec_key(pool, id.as_str())).collect();
        let items = self.batch_get(&self.tables.allocs, keys).await?;
        Ok(Self::items::<AllocItem>(items)?.into_iter().map(Alloc::from).collect())
    }

    async fn live_allocs(&self, pool: &PoolId, worker: Option<&WorkerId>) -> Result<Vec<Alloc>> {
        self.live_alloc_items(pool, worker).await
    }

    async fn expired_allocs(&self, pool: &PoolId, now: Millis) -> Result<Vec<Alloc>> {
        // Each released under the condition that its lease is still over.
        self.due_allocs(pool, now).await
    }

    async fn place(&self, a: &Alloc, e: &Eval, expected: u64, claim: Claim, now: Millis) -> Result<()> {
        self.place_alone(a, e, expected, claim, now).await
    }

    async fn place_many(&self, items: &[(Alloc, Eval, u64)], claim: Claim, now: Millis) -> Result<Vec<Result<()>>> {
        self.place_batched(items, claim, now).await
    }

    async fn release(&self, a: &Alloc, eval: Option<(&Eval, u64)>, expired_by: Option<Millis>) -> Result<()> {
        self.release_alloc(a, eval, expired_by).await
    }

    async fn complete_first(&self, a: &Alloc, done: &Completion) -> Option<Result<Option<Eval>>> {
        Some(self.complete_eval_first(a, done).await)
    }

    async fn cancel_placed(&self, e: &Eval, expected: u64, alloc: &AllocId) -> Result<()> {
        self.cancel_placed_alloc(e, expected, alloc).await
    }
}

/// `ids` without repeats (a `BatchGetItem` may not name one key twice).
fn unique<T: Ord>(ids: &[T]) -> impl Iterator<Item = &T> {
    let mut v: Vec<&T> = ids.iter().collect();
    v.sort();
    v.dedup();
    v.into_iter()
}

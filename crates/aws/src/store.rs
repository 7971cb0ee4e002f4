//! `Store` over DynamoDB. The writes that move capacity are single
//! `TransactWriteItems`; a cancelled transaction is read from its cancellation
//! reasons. Reads of records are strongly consistent; the `by_cap` and `by_status`
//! GSIs are eventually consistent and used only where a stale answer is harmless
//! (candidates are re-checked by the conditional claim). Every query paginates.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::types::{ConditionCheck, Put, PutRequest, TransactWriteItem, Update, WriteRequest};
use lineup_core::backend::{Claim, Heartbeat};
use lineup_core::pipeline::{Pipeline, PipelineStatus};
use lineup_core::*;

use crate::ddb::{build, ccf, names, TxError};
use crate::items::*;
use crate::tables::{BY_CAP, BY_CREATED, BY_STATUS, BY_TTL};
use crate::{sdk_err, AwsBackend};

/// Registration re-reads the pool's limits version this often before giving up.
const MAX_REGISTER_TRIES: usize = 5;

impl AwsBackend {
    /// Items of `pool` whose `ttl` has passed, through the table's `by_ttl` index
    /// (read consistently: it is a local index).
    fn expired(&self, table: &str, pool: &PoolId, now: Millis) -> QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(table)
            .index_name(BY_TTL)
            .key_condition_expression("#p = :p AND #t <= :now")
            .expression_attribute_names("#p", "pool")
            .expression_attribute_names("#t", "ttl")
            .expression_attribute_values(":p", s(pool.as_str()))
            .expression_attribute_values(":now", n(now))
            .consistent_read(true)
    }

    pub(crate) fn by_pool(&self, table: &str, pool: &PoolId) -> QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(table)
            .key_condition_expression("#p = :p")
            .expression_attribute_names("#p", "pool")
            .expression_attribute_values(":p", s(pool.as_str()))
            .consistent_read(true)
    }

    /// A heartbeat's alloc renewals: each `ttl` moved on if the alloc is this worker's,
    /// live, not flagged to stop and its lease has not run out. One `UpdateItem` for a
    /// single alloc; otherwise 100 to a transaction (a constant number of calls for up
    /// to `MAX_ALLOCS_PER_HEARTBEAT`), where a cancellation names every alloc that failed
    /// its condition: those are the ones to stop, and the rest are renewed in a retry.
    async fn extend_allocs(&self, hb: &Heartbeat) -> Result<Vec<AllocId>> {
        let mut listed = hb.allocs.clone();
        listed.sort();
        listed.dedup();
        let extend = |a: &AllocId| {
            Update::builder()
                .table_name(&self.tables.allocs)
                .set_key(Some(key(&hb.pool, Some(("alloc", a.as_str())))))
                .update_expression("SET #t = :t, #e = :t")
                .condition_expression("#w = :w AND #st = :live AND #stop = :no AND #t > :now")
                .set_expression_attribute_names(names(&[
                    ("#t", "ttl"),
                    ("#e", "exp"),
                    ("#w", "wrk"),
                    ("#st", "state"),
                    ("#stop", "stop"),
                ]))
                .expression_attribute_values(":t", n(hb.alloc_ttl))
                .expression_attribute_values(":w", s(hb.worker.as_str()))
                .expression_attribute_values(":live", s("live"))
                .expression_attribute_values(":no", aws_sdk_dynamodb::types::AttributeValue::Bool(false))
                .expression_attribute_values(":now", n(hb.now))
        };
        let mut stop = Vec::new();
        if let [only] = listed.as_slice() {
            let u = extend(only);
            let r = self
                .ddb
                .update_item()
                .table_name(&self.tables.allocs)
                .set_key(u.get_key().clone())
                .set_update_expression(u.get_update_expression().clone())
                .set_condition_expression(u.get_condition_expression().clone())
                .set_expression_attribute_names(u.get_expression_attribute_names().clone())
                .set_expression_attribute_values(u.get_expression_attribute_values().clone())
                .send()
                .await;
            return match r {
                Ok(_) => Ok(stop),
                Err(e) if ccf(&e) => Ok(vec![only.clone()]),
                Err(e) => Err(sdk_err("extend alloc", e)),
            };
        }
        for chunk in listed.chunks(100) {
            let mut pending: Vec<&AllocId> = chunk.iter().collect();
            while !pending.is_empty() {
                let items = pending
                    .iter()
                    .map(|a| Ok(TransactWriteItem::builder().update(build(extend(a).build())?).build()))
                    .collect::<Result<Vec<_>>>()?;
                match self.transact(items, "extend allocs").await {
                    Ok(()) => break,
                    Err(TxError::Cancelled(reasons)) => {
                        let failed: Vec<usize> = (0..pending.len()).filter(|i| TxError::failed(&reasons, *i)).collect();
                        if failed.is_empty() {
                            return Err(Error::Conflict("renewing allocs kept conflicting; try again".into()));
                        }
                        for i in failed.into_iter().rev() {
                            stop.push(pending.remove(i).clone());
                        }
                    }
                    Err(TxError::Other(e)) => return Err(e),
                }
            }
        }
        Ok(stop)
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
    fn pool_is_active_at(&self, pool: &PoolId, version: u64) -> Result<TransactWriteItem> {
        let check = build(
            ConditionCheck::builder()
                .table_name(&self.tables.pools)
                .set_key(Some(key(pool, None)))
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
                .set_key(Some(key(pool, None)))
                .condition_expression("#s = :active")
                .set_expression_attribute_names(names(&[("#s", "status")]))
                .expression_attribute_values(":active", s("active"))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    pub(crate) fn put_eval(&self, e: &Eval, expected: Option<u64>) -> Result<TransactWriteItem> {
        let mut put = Put::builder().table_name(&self.tables.evals).set_item(Some(to_item(&EvalItem::from(e))?));
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
        let r = self
            .ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::from(e))?))
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

    fn items<T: serde::de::DeserializeOwned>(items: Vec<Item>) -> Result<Vec<T>> {
        items.into_iter().map(from_item).collect()
    }
}

#[async_trait]
impl Store for AwsBackend {
    async fn create_pool(&self, p: &Pool) -> Result<()> {
        let r = self
            .ddb
            .put_item()
            .table_name(&self.tables.pools)
            .set_item(Some(to_item(&PoolItem::from(p))?))
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
        match self.get(&self.tables.pools, key(pool, None)).await? {
            Some(i) => Ok(Some(from_item::<PoolItem>(i)?.into())),
            None => Ok(None),
        }
    }

    async fn list_pools(&self) -> Result<Vec<Pool>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let r = self
                .ddb
                .scan()
                .table_name(&self.tables.pools)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_err("scan pools", e))?;
            for i in r.items.unwrap_or_default() {
                out.push(Pool::from(from_item::<PoolItem>(i)?));
            }
            match r.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.pool_id).cmp(&(b.created_at, &b.pool_id)));
        Ok(out)
    }

    async fn disband_pool(&self, pool: &PoolId, now: Millis) -> Result<Pool> {
        let r = self
            .ddb
            .update_item()
            .table_name(&self.tables.pools)
            .set_key(Some(key(pool, None)))
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
        let t = &self.tables;
        let tables = [
            (&t.allocs, "alloc"),
            (&t.evals, "eval"),
            (&t.pipelines, "pipeline"),
            (&t.replicas, "rpl"),
            (&t.workers, "wrk"),
        ];
        for (table, range) in tables {
            let q = self.by_pool(table, pool).projection_expression("#p, #r").expression_attribute_names("#r", range);
            let keys = self.query_all(q, "purge query").await?;
            self.batch_delete(table, keys).await?;
        }
        self.ddb
            .delete_item()
            .table_name(&t.pools)
            .set_key(Some(key(pool, None)))
            .send()
            .await
            .map_err(|e| sdk_err("delete pool", e))?;
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
            let q = self
                .ddb
                .query()
                .table_name(&self.tables.evals)
                .index_name(BY_STATUS)
                .key_condition_expression("#k = :k")
                .expression_attribute_names("#k", "pst")
                .expression_attribute_values(":k", s(pst(pool, status)));
            st.queued += self.count_all(q, "count evals").await?;
        }
        let q = self.by_pool(&self.tables.allocs, pool).index_name(BY_TTL);
        st.allocs = self.count_all(q, "count allocs").await?;
        Ok(st)
    }

    async fn register_worker(&self, w: &Worker) -> Result<()> {
        // The worker starts fenced at the pool's current limits version, checked in the
        // same transaction: a cap set meanwhile makes this try again with the new one.
        for _ in 0..MAX_REGISTER_TRIES {
            let Some(pool) = self.get_pool(&w.pool_id).await? else {
                return Err(Error::not_found(format!("pool {}", w.pool_id)));
            };
            let version = pool.limits.version;
            let mut item = WorkerItem::from(w);
            item.lv = version;
            let put = build(
                Put::builder()
                    .table_name(&self.tables.workers)
                    .set_item(Some(to_item(&item)?))
                    .condition_expression("attribute_not_exists(#w)")
                    .expression_attribute_names("#w", "wrk")
                    .build(),
            )?;
            let items =
                vec![self.pool_is_active_at(&w.pool_id, version)?, TransactWriteItem::builder().put(put).build()];
            match self.transact(items, "register worker").await {
                Ok(()) => return Ok(()),
                Err(TxError::Cancelled(r)) if TxError::failed(&r, 0) => match self.pool_not_active(&w.pool_id).await {
                    Error::Conflict(_) => continue,
                    e => return Err(e),
                },
                Err(TxError::Cancelled(_)) => {
                    // A retried transaction whose first response was lost: this very worker.
                    return match self.get_worker(&w.pool_id, &w.worker_id).await? {
                        Some(got) if got.token_hash == w.token_hash => Ok(()),
                        _ => Err(Error::Conflict("worker id exists".into())),
                    };
                }
                Err(TxError::Other(e)) => return Err(e),
            }
        }
        Err(Error::Conflict("the pool's limits kept changing; try again".into()))
    }

    async fn get_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<Option<Worker>> {
        match self.get(&self.tables.workers, key(pool, Some(("wrk", worker.as_str())))).await? {
            Some(i) => Ok(Some(from_item::<WorkerItem>(i)?.into())),
            None => Ok(None),
        }
    }

    async fn list_workers(&self, pool: &PoolId) -> Result<Vec<Worker>> {
        let items = self.query_all(self.by_pool(&self.tables.workers, pool), "list workers").await?;
        let mut ws: Vec<Worker> = Self::items::<WorkerItem>(items)?.into_iter().map(Worker::from).collect();
        ws.sort_by(|a, b| (a.created_at, &a.worker_id).cmp(&(b.created_at, &b.worker_id)));
        Ok(ws)
    }

    async fn candidates(&self, pool: &PoolId, min_free: u32, now: Millis) -> Result<Vec<Worker>> {
        // The GSI cannot be read consistently: a hint, which the claim re-checks.
        let q = self
            .ddb
            .query()
            .table_name(&self.tables.workers)
            .index_name(BY_CAP)
            .key_condition_expression("#p = :p AND #c >= :m")
            .filter_expression("#t > :now")
            .set_expression_attribute_names(names(&[("#p", "pool"), ("#c", "cap"), ("#t", "ttl")]))
            .expression_attribute_values(":p", s(pool.as_str()))
            .expression_attribute_values(":m", n(min_free))
            .expression_attribute_values(":now", n(now));
        let items = self.query_all(q, "candidate workers").await?;
        Ok(Self::items::<WorkerItem>(items)?.into_iter().map(Worker::from).collect())
    }

    async fn expired_workers(&self, pool: &PoolId, now: Millis) -> Result<Vec<Worker>> {
        let items = self.query_all(self.expired(&self.tables.workers, pool, now), "expired workers").await?;
        Ok(Self::items::<WorkerItem>(items)?.into_iter().map(Worker::from).collect())
    }

    async fn delete_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<()> {
        let q = self
            .by_pool(&self.tables.replicas, pool)
            .filter_expression("#w = :w")
            .projection_expression("#p, #r")
            .expression_attribute_names("#w", "wrk")
            .expression_attribute_names("#r", "rpl")
            .expression_attribute_values(":w", s(worker.as_str()));
        let keys = self.query_all(q, "replicas of worker").await?;
        self.batch_delete(&self.tables.replicas, keys).await?;
        self.ddb
            .delete_item()
            .table_name(&self.tables.workers)
            .set_key(Some(key(pool, Some(("wrk", worker.as_str())))))
            .send()
            .await
            .map_err(|e| sdk_err("delete worker", e))?;
        Ok(())
    }

    async fn heartbeat(&self, hb: &Heartbeat) -> Result<Vec<AllocId>> {
        let r = self
            .ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(key(&hb.pool, Some(("wrk", hb.worker.as_str())))))
            .update_expression("SET #t = :t")
            .condition_expression("attribute_exists(#w) AND #t > :now")
            .set_expression_attribute_names(names(&[("#t", "ttl"), ("#w", "wrk")]))
            .expression_attribute_values(":t", n(hb.ttl))
            .expression_attribute_values(":now", n(hb.now))
            .send()
            .await;
        match r {
            Ok(_) => {}
            Err(e) if ccf(&e) => {
                return Err(match self.get_worker(&hb.pool, &hb.worker).await? {
                    None => Error::not_found(format!("worker {}", hb.worker)),
                    Some(_) => Error::Expired(hb.worker.to_string()),
                });
            }
            Err(e) => return Err(sdk_err("heartbeat", e)),
        }
        if !hb.datasets.is_empty() {
            let mut reqs = Vec::with_capacity(hb.datasets.len());
            for d in &hb.datasets {
                let item = ReplicaItem {
                    pool: hb.pool.clone(),
                    rpl: format!("{d}:{}", hb.worker),
                    dataset: d.clone(),
                    wrk: hb.worker.clone(),
                    ttl: hb.replica_ttl,
                    purge_at: purge_at(hb.replica_ttl, DAY),
                };
                let put = build(PutRequest::builder().set_item(Some(to_item(&item)?)).build())?;
                reqs.push(WriteRequest::builder().put_request(put).build());
            }
            self.batch_write(&self.tables.replicas, reqs).await?;
        }
        self.extend_allocs(hb).await
    }

    async fn replicas(&self, pool: &PoolId, datasets: &[String], now: Millis) -> Result<Vec<Replica>> {
        let mut out = Vec::new();
        for d in datasets {
            let q = self
                .ddb
                .query()
                .table_name(&self.tables.replicas)
                .key_condition_expression("#p = :p AND begins_with(#r, :prefix)")
                .filter_expression("#t > :now AND #d = :d")
                .set_expression_attribute_names(names(&[
                    ("#p", "pool"),
                    ("#r", "rpl"),
                    ("#t", "ttl"),
                    ("#d", "dataset"),
                ]))
                .expression_attribute_values(":p", s(pool.as_str()))
                .expression_attribute_values(":prefix", s(format!("{d}:")))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":d", s(d.as_str()))
                .consistent_read(true);
            let items = self.query_all(q, "replicas").await?;
            out.extend(Self::items::<ReplicaItem>(items)?.into_iter().map(Replica::from));
        }
        Ok(out)
    }

    async fn delete_expired_replicas(&self, pool: &PoolId, now: Millis) -> Result<u64> {
        let q = self
            .expired(&self.tables.replicas, pool, now)
            .projection_expression("#p, #r")
            .expression_attribute_names("#r", "rpl");
        let keys = self.query_all(q, "expired replicas").await?;
        let count = keys.len() as u64;
        self.batch_delete(&self.tables.replicas, keys).await?;
        Ok(count)
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
        let claim =
            KeyItem { pool: e.pool_id.clone(), eval: key_sk(k), target: e.eval_id.clone(), purge_at: Some(expires) };
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
        let items = vec![self.put_eval(e, None)?, TransactWriteItem::builder().put(put).build()];
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
            // Throttled (a hot pool) or contended past every retry: the caller may try again.
            Err(TxError::Cancelled(r)) if TxError::transient(&r) => {
                Err(Error::backend("insert eval", format!("throttled or contended, try again: {r:?}")))
            }
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
        match self.get(&self.tables.evals, key(pool, Some(("eval", eval.as_str())))).await? {
            Some(i) => Ok(Some(eval_from_item(i)?)),
            None => Ok(None),
        }
    }

    async fn find_eval_by_key(&self, pool: &PoolId, k: &str) -> Result<Option<Eval>> {
        let Some(i) = self.get(&self.tables.evals, key(pool, Some(("eval", &key_sk(k))))).await? else {
            return Ok(None);
        };
        // An expired key whose eval is still kept answers with it (a key is remembered
        // at least for the retention); once the eval is gone, a new submit may take
        // the key over (its put is conditioned on the old one having expired).
        let claim: KeyItem = from_item(i)?;
        self.get_eval(pool, &claim.target).await
    }

    async fn get_evals(&self, pool: &PoolId, ids: &[EvalId]) -> Result<Vec<Eval>> {
        let keys = unique(ids).map(|id| key(pool, Some(("eval", id.as_str())))).collect();
        self.batch_get(&self.tables.evals, keys).await?.into_iter().map(eval_from_item).collect()
    }

    async fn list_evals(&self, pool: &PoolId, status: Option<EvalStatus>, limit: usize) -> Result<Vec<Eval>> {
        let q = match status {
            Some(st) => self
                .ddb
                .query()
                .table_name(&self.tables.evals)
                .index_name(BY_STATUS)
                .key_condition_expression("#k = :k")
                .expression_attribute_names("#k", "pst")
                .expression_attribute_values(":k", s(pst(pool, st))),
            None => self.by_pool(&self.tables.evals, pool).index_name(BY_CREATED),
        };
        let items = self.query_limit(q.scan_index_forward(false), limit, "list evals").await?;
        items.into_iter().map(eval_from_item).collect()
    }

    async fn unfinished_evals(&self, pool: &PoolId) -> Result<Vec<Eval>> {
        let mut out = Vec::new();
        for st in [EvalStatus::Queued, EvalStatus::Placed, EvalStatus::Failed] {
            let q = self
                .ddb
                .query()
                .table_name(&self.tables.evals)
                .index_name(BY_STATUS)
                .key_condition_expression("#k = :k")
                .expression_attribute_names("#k", "pst")
                .expression_attribute_values(":k", s(pst(pool, st)));
            for i in self.query_all(q, "unfinished evals").await? {
                out.push(eval_from_item(i)?);
            }
        }
        Ok(out)
    }

    async fn update_eval(&self, e: &Eval, expected: u64) -> Result<()> {
        let r = self
            .ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::from(e))?))
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
        match self.get(&self.tables.allocs, key(pool, Some(("alloc", alloc.as_str())))).await? {
            Some(i) => Ok(Some(from_item::<AllocItem>(i)?.into())),
            None => Ok(None),
        }
    }

    async fn get_allocs(&self, pool: &PoolId, ids: &[AllocId]) -> Result<Vec<Alloc>> {
        let keys = unique(ids).map(|id| key(pool, Some(("alloc", id.as_str())))).collect();
        let items = self.batch_get(&self.tables.allocs, keys).await?;
        Ok(Self::items::<AllocItem>(items)?.into_iter().map(Alloc::from).collect())
    }

    async fn live_allocs(&self, pool: &PoolId, worker: Option<&WorkerId>) -> Result<Vec<Alloc>> {
        // The sparse by_ttl index holds exactly the live allocs.
        let mut q = self.by_pool(&self.tables.allocs, pool).index_name(BY_TTL);
        if let Some(w) = worker {
            q = q
                .filter_expression("#w = :w")
                .expression_attribute_names("#w", "wrk")
                .expression_attribute_values(":w", s(w.as_str()));
        }
        let items = self.query_all(q, "live allocs").await?;
        Ok(Self::items::<AllocItem>(items)?.into_iter().map(Alloc::from).collect())
    }

    async fn expired_allocs(&self, pool: &PoolId, now: Millis) -> Result<Vec<Alloc>> {
        let items = self.query_all(self.expired(&self.tables.allocs, pool, now), "expired allocs").await?;
        Ok(Self::items::<AllocItem>(items)?.into_iter().map(Alloc::from).collect())
    }

    async fn place(&self, a: &Alloc, e: &Eval, expected: u64, claim: Claim, now: Millis) -> Result<()> {
        self.place_alone(a, e, expected, claim, now).await
    }

    async fn place_many(&self, items: &[(Alloc, Eval, u64)], claim: Claim, now: Millis) -> Result<Vec<Result<()>>> {
        self.place_batched(items, claim, now).await
    }

    async fn release(&self, a: &Alloc, eval: Option<(&Eval, u64)>, expired_by: Option<Millis>) -> Result<()> {
        let mut free_alloc = Update::builder()
            .table_name(&self.tables.allocs)
            .set_key(Some(key(&a.pool_id, Some(("alloc", a.alloc_id.as_str())))))
            .update_expression("SET #st = :rel, #pa = :pa REMOVE #t")
            .set_expression_attribute_names(names(&[
                ("#st", "state"),
                ("#pa", "purge_at"),
                ("#t", "ttl"),
                ("#cnt", "counted"),
            ]))
            .expression_attribute_values(":rel", s("released"))
            .expression_attribute_values(":live", s("live"))
            .expression_attribute_values(":pa", n(purge_at(a.ttl.max(0), self.retention_secs())));
        // Counted or not as the caller read it: a cap set meanwhile may have counted
        // it, and then the pool's count must come down with it (a conflict re-reads).
        let counted = if a.counted {
            free_alloc = free_alloc.expression_attribute_values(":yes", AttributeValue::Bool(true));
            "#cnt = :yes"
        } else {
            "attribute_not_exists(#cnt)"
        };
        free_alloc = match expired_by {
            // The lease must still be expired when this lands (see Store::release).
            Some(by) => free_alloc
                .condition_expression(format!("#st = :live AND {counted} AND #t <= :by"))
                .expression_attribute_values(":by", n(by)),
            None => free_alloc.condition_expression(format!("#st = :live AND {counted}")),
        };
        let free_alloc = build(free_alloc.build())?;
        let give_back = build(
            Update::builder()
                .table_name(&self.tables.workers)
                .set_key(Some(key(&a.pool_id, Some(("wrk", a.worker_id.as_str())))))
                .update_expression("SET #c = #c + :size")
                .condition_expression("attribute_exists(#w)")
                .set_expression_attribute_names(names(&[("#c", "cap"), ("#w", "wrk")]))
                .expression_attribute_values(":size", n(a.size))
                .build(),
        )?;
        let eval_put = eval.map(|(e, v)| self.put_eval(e, Some(v))).transpose()?;
        let uncount = a.counted.then(|| self.uncount_in_pool(&a.pool_id)).transpose()?;
        // First with the worker; if only the worker is gone, again without it: a removed
        // worker must not make release fail forever.
        for with_worker in [true, false] {
            let mut items = vec![TransactWriteItem::builder().update(free_alloc.clone()).build()];
            if with_worker {
                items.push(TransactWriteItem::builder().update(give_back.clone()).build());
            }
            if let Some(p) = &eval_put {
                items.push(p.clone());
            }
            if let Some(u) = &uncount {
                items.push(u.clone());
            }
            let eval_idx = if with_worker { 2 } else { 1 };
            match self.transact(items, "release").await {
                Ok(()) => return Ok(()),
                Err(TxError::Cancelled(r)) if TxError::failed(&r, 0) => {
                    return Err(Error::Conflict("alloc already released or renewed".into()))
                }
                Err(TxError::Cancelled(r)) if eval.is_some() && TxError::failed(&r, eval_idx) => {
                    return Err(Error::Conflict("eval changed".into()))
                }
                Err(TxError::Cancelled(r)) if with_worker && TxError::failed(&r, 1) => continue,
                Err(TxError::Cancelled(r)) => return Err(Error::Conflict(format!("release cancelled: {r:?}"))),
                Err(TxError::Other(e)) => return Err(e),
            }
        }
        Err(Error::Conflict("release cancelled".into()))
    }

    async fn cancel_placed(&self, e: &Eval, expected: u64, alloc: &AllocId) -> Result<()> {
        let flag = build(
            Update::builder()
                .table_name(&self.tables.allocs)
                .set_key(Some(key(&e.pool_id, Some(("alloc", alloc.as_str())))))
                .update_expression("SET #stop = :yes")
                .condition_expression("#st = :live")
                .set_expression_attribute_names(names(&[("#stop", "stop"), ("#st", "state")]))
                .expression_attribute_values(":yes", aws_sdk_dynamodb::types::AttributeValue::Bool(true))
                .expression_attribute_values(":live", s("live"))
                .build(),
        )?;
        let items = vec![self.put_eval(e, Some(expected))?, TransactWriteItem::builder().update(flag).build()];
        match self.transact(items, "cancel placed").await {
            Ok(()) => Ok(()),
            Err(TxError::Cancelled(_)) => Err(Error::Conflict("eval or alloc changed".into())),
            Err(TxError::Other(e)) => Err(e),
        }
    }
}

/// `ids` without repeats (a `BatchGetItem` may not name one key twice).
fn unique<T: Ord>(ids: &[T]) -> impl Iterator<Item = &T> {
    let mut v: Vec<&T> = ids.iter().collect();
    v.sort();
    v.dedup();
    v.into_iter()
}

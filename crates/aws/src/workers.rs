//! Workers and what they report on DynamoDB: registration (fenced at the pool's limits
//! version), candidates and expiry through the `by_pool` index's shards, heartbeats
//! (the worker's lease, its replicas, its allocs' leases). `Store` (store.rs) delegates.

use aws_sdk_dynamodb::types::{Put, PutRequest, TransactWriteItem, Update, WriteRequest};
use lineup_core::backend::Heartbeat;
use lineup_core::*;

use crate::ddb::{build, ccf, names, TxError};
use crate::items::*;
use crate::keys::shard_key;
use crate::tables::{BY_POOL, BY_TTL};
use crate::{sdk_err, AwsBackend};

/// Registration re-reads the pool's limits version this often before giving up.
const MAX_REGISTER_TRIES: usize = 5;

impl AwsBackend {
    pub(crate) async fn register_worker_item(&self, w: &Worker) -> Result<()> {
        // The worker starts fenced at the pool's current limits version, checked in the
        // same transaction: a cap set meanwhile makes this try again with the new one.
        for _ in 0..MAX_REGISTER_TRIES {
            let Some(pool) = self.get_pool_item(&w.pool_id).await? else {
                return Err(Error::not_found(format!("pool {}", w.pool_id)));
            };
            let version = pool.lv;
            let mut item = WorkerItem::new(w, pool.shards());
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

    pub(crate) async fn candidate_items(&self, pool: &PoolId, min_free: u32, now: Millis) -> Result<Vec<Worker>> {
        // The GSI cannot be read consistently: a hint, which the claim re-checks. Every
        // worker is read (`cap` is not the index's key: a claim would move the entry,
        // 2 index writes, where changing it costs 1), and those with room kept.
        let q = |k| {
            self.ddb
                .query()
                .table_name(&self.tables.workers)
                .index_name(BY_POOL)
                .key_condition_expression("#p = :p")
                .filter_expression("#c >= :m AND #t > :now")
                .set_expression_attribute_names(names(&[("#p", "ps"), ("#c", "cap"), ("#t", "ttl")]))
                .expression_attribute_values(":p", s(shard_key(pool, k)))
                .expression_attribute_values(":m", n(min_free))
                .expression_attribute_values(":now", n(now))
        };
        let items = self.query_shards(pool, q, "candidate workers").await?;
        Ok(Self::items::<WorkerItem>(items)?.into_iter().map(Worker::from).collect())
    }

    pub(crate) async fn expired_worker_items(&self, pool: &PoolId, now: Millis) -> Result<Vec<Worker>> {
        // Workers have no `ttl` index (every heartbeat would write it): all of them
        // through `by_pool`, filtered.
        let q = |k| {
            self.index_query(&self.tables.workers, BY_POOL, &shard_key(pool, k))
                .filter_expression("#t <= :now")
                .projection_expression("id")
                .expression_attribute_names("#t", "ttl")
                .expression_attribute_values(":now", n(now))
        };
        let hinted = self.query_shards(pool, q, "expired workers").await?;
        if hinted.is_empty() {
            return Ok(Vec::new());
        }
        // The index may lag a heartbeat that renewed the lease in time: what the
        // releaser removes is read again, consistently. (A lease that ran out stays
        // out: a heartbeat is conditioned on it not having.)
        let keys = hinted.iter().filter_map(|i| i.get("id")).map(id_key).collect();
        let items = self.batch_get(&self.tables.workers, keys).await?;
        let ws = Self::items::<WorkerItem>(items)?.into_iter().map(Worker::from);
        Ok(ws.filter(|w| w.ttl <= now).collect())
    }

    pub(crate) async fn delete_worker_item(&self, pool: &PoolId, worker: &WorkerId) -> Result<()> {
        let q = |k| {
            self.index_query(&self.tables.replicas, BY_TTL, &shard_key(pool, k))
                .filter_expression("#w = :w")
                .projection_expression("id")
                .expression_attribute_names("#w", "wrk")
                .expression_attribute_values(":w", s(worker.as_str()))
        };
        let keys = self.query_shards(pool, q, "replicas of worker").await?;
        self.batch_delete(&self.tables.replicas, keys).await?;
        self.ddb
            .delete_item()
            .table_name(&self.tables.workers)
            .set_key(Some(rec_key(pool, worker.as_str())))
            .send()
            .await
            .map_err(|e| sdk_err("delete worker", e))?;
        Ok(())
    }

    pub(crate) async fn heartbeat_items(&self, hb: &Heartbeat) -> Result<Vec<AllocId>> {
        let r = self
            .ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(rec_key(&hb.pool, hb.worker.as_str())))
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
            let shards = self.shards(&hb.pool).await?;
            let mut reqs = Vec::with_capacity(hb.datasets.len());
            for d in &hb.datasets {
                let rpl = format!("{d}:{}", hb.worker);
                let item = ReplicaItem {
                    id: crate::keys::id(&hb.pool, &rpl),
                    ps: crate::keys::ps(&hb.pool, d, shards),
                    pool: hb.pool.clone(),
                    rpl,
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

    pub(crate) async fn replica_items(&self, pool: &PoolId, datasets: &[String], now: Millis) -> Result<Vec<Replica>> {
        let mut out = Vec::new();
        let shards = if datasets.is_empty() { 1 } else { self.shards(pool).await? };
        for d in datasets {
            // A dataset's replicas share one shard: one query each.
            let q = self
                .ddb
                .query()
                .table_name(&self.tables.replicas)
                .index_name(BY_TTL)
                .key_condition_expression("#p = :p AND #t > :now")
                .filter_expression("#d = :d")
                .set_expression_attribute_names(names(&[("#p", "ps"), ("#t", "ttl"), ("#d", "dataset")]))
                .expression_attribute_values(":p", s(crate::keys::ps(pool, d, shards)))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":d", s(d.as_str()));
            let items = self.query_all(q, "replicas").await?;
            out.extend(Self::items::<ReplicaItem>(items)?.into_iter().map(Replica::from));
        }
        Ok(out)
    }

    pub(crate) async fn delete_expired_replica_items(&self, pool: &PoolId, now: Millis) -> Result<u64> {
        let q = |k| self.expired_query(&self.tables.replicas, pool, k, now).projection_expression("id");
        let keys = self.query_shards(pool, q, "expired replicas").await?;
        let count = keys.len() as u64;
        self.batch_delete(&self.tables.replicas, keys).await?;
        Ok(count)
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
                .set_key(Some(rec_key(&hb.pool, a.as_str())))
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
}

//! Allocs on DynamoDB: the live ones listed through `by_due` and read consistently,
//! expiry found by when an alloc is due (a renewed one moved on, not returned), a
//! release as one transaction, a cancellation flagging the live alloc to stop.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use futures_util::future::try_join_all;
use lineup_core::*;

use crate::ddb::{build, ccf, names, TxError};
use crate::items::*;
use crate::keys::shard_key;
use crate::tables::BY_DUE;
use crate::{sdk_err, AwsBackend};

/// Renewed allocs' `due` moved concurrently, at most this many at once.
const MOVES_AT_ONCE: usize = 32;

impl AwsBackend {
    /// Live allocs whose `due` has passed, read consistently: those whose lease ran out
    /// are returned; those a heartbeat renewed get `due` moved to their lease (once per
    /// lease period, not once per heartbeat), so the next pass skips them until then.
    pub(crate) async fn due_allocs(&self, pool: &PoolId, now: Millis) -> Result<Vec<Alloc>> {
        let q = |k| self.due_query(&self.tables.allocs, BY_DUE, "due", pool, k, now).projection_expression("id");
        let keys = self.query_shards(pool, q, "due allocs").await?;
        let mut expired = Vec::new();
        let mut renewed = Vec::new();
        for item in Self::items::<AllocItem>(self.batch_get(&self.tables.allocs, keys).await?)? {
            match (item.ttl, item.due) {
                (Some(lease), Some(_)) if lease > now => renewed.push((item, lease)),
                (Some(_), Some(_)) => expired.push(Alloc::from(item)),
                // Released since the index was read.
                _ => {}
            }
        }
        // A pool running thousands of long jobs has as many to move every lease
        // period: a few dozen at a time, not one after another.
        for chunk in renewed.chunks(MOVES_AT_ONCE) {
            try_join_all(chunk.iter().map(|(item, lease)| self.move_due(item, *lease))).await?;
        }
        Ok(expired)
    }

    /// Moves a renewed alloc's `due` to its lease, if it is still live (a released
    /// alloc must not come back into `by_due`). A lost race is harmless: the next
    /// pass reads it again.
    async fn move_due(&self, a: &AllocItem, lease: Millis) -> Result<()> {
        let r = self
            .ddb
            .update_item()
            .table_name(&self.tables.allocs)
            .set_key(Some(rec_key(&a.pool, a.alloc.as_str())))
            .update_expression("SET #d = :d")
            .condition_expression("attribute_exists(#d)")
            .expression_attribute_names("#d", "due")
            .expression_attribute_values(":d", n(lease))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if ccf(&e) => Ok(()),
            Err(e) => Err(sdk_err("move alloc due", e)),
        }
    }

    /// `Store::live_allocs`.
    pub(crate) async fn live_alloc_items(&self, pool: &PoolId, worker: Option<&WorkerId>) -> Result<Vec<Alloc>> {
        // The sparse by_due index holds exactly the live allocs (their keys and worker);
        // the allocs themselves are read consistently.
        let q = |k| {
            let q = self.index_query(&self.tables.allocs, BY_DUE, &shard_key(pool, k)).projection_expression("id");
            match worker {
                Some(w) => q
                    .filter_expression("#w = :w")
                    .expression_attribute_names("#w", "wrk")
                    .expression_attribute_values(":w", s(w.as_str())),
                None => q,
            }
        };
        let keys = self.query_shards(pool, q, "live allocs").await?;
        let items = Self::items::<AllocItem>(self.batch_get(&self.tables.allocs, keys).await?)?;
        Ok(items.into_iter().map(Alloc::from).filter(|a| a.state == AllocState::Live).collect())
    }

    /// `Store::release`.
    pub(crate) async fn release_alloc(
        &self,
        a: &Alloc,
        eval: Option<(&Eval, u64)>,
        expired_by: Option<Millis>,
    ) -> Result<()> {
        let mut free_alloc = Update::builder()
            .table_name(&self.tables.allocs)
            .set_key(Some(rec_key(&a.pool_id, a.alloc_id.as_str())))
            .update_expression("SET #st = :rel, #pa = :pa REMOVE #t, #due")
            .set_expression_attribute_names(names(&[
                ("#st", "state"),
                ("#pa", "purge_at"),
                ("#t", "ttl"),
                ("#due", "due"),
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
                .set_key(Some(rec_key(&a.pool_id, a.worker_id.as_str())))
                .update_expression("SET #c = #c + :size")
                .condition_expression("attribute_exists(#w)")
                .set_expression_attribute_names(names(&[("#c", "cap"), ("#w", "wrk")]))
                .expression_attribute_values(":size", n(a.size))
                .build(),
        )?;
        let shards = self.shards(&a.pool_id).await?;
        let eval_put = eval.map(|(e, v)| self.put_eval(e, Some(v), shards)).transpose()?;
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

    /// `Store::cancel_placed`.
    pub(crate) async fn cancel_placed_alloc(&self, e: &Eval, expected: u64, alloc: &AllocId) -> Result<()> {
        let flag = build(
            Update::builder()
                .table_name(&self.tables.allocs)
                .set_key(Some(rec_key(&e.pool_id, alloc.as_str())))
                .update_expression("SET #stop = :yes")
                .condition_expression("#st = :live")
                .set_expression_attribute_names(names(&[("#stop", "stop"), ("#st", "state")]))
                .expression_attribute_values(":yes", aws_sdk_dynamodb::types::AttributeValue::Bool(true))
                .expression_attribute_values(":live", s("live"))
                .build(),
        )?;
        let shards = self.shards(&e.pool_id).await?;
        let items = vec![self.put_eval(e, Some(expected), shards)?, TransactWriteItem::builder().update(flag).build()];
        match self.transact(items, "cancel placed").await {
            Ok(()) => Ok(()),
            Err(TxError::Cancelled(_)) => Err(Error::Conflict("eval or alloc changed".into())),
            Err(TxError::Other(e)) => Err(e),
        }
    }
}

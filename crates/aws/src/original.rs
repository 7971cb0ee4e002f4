//! The Go original's way with the same tables, for `make bench` to measure beside
//! Lineup's whole lifecycle (`crates/bench/src/aws.rs`): every step a plain write of
//! its own, in sequence, none atomic with the next. A crash between two of them leaves
//! capacity claimed for no alloc, or an alloc released with its capacity not given
//! back; Lineup's transactions exist to rule that out. Nothing in Lineup calls these.

use aws_sdk_dynamodb::types::AttributeValue;
use lineup_core::*;

use crate::ddb::{ccf, names};
use crate::items::*;
use crate::{sdk_err, AwsBackend};

impl AwsBackend {
    /// Submit: put the eval (`PutItem`).
    pub async fn original_put_eval(&self, e: &Eval) -> Result<()> {
        self.ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::new(e, self.shards(&e.pool_id).await?))?))
            .send()
            .await
            .map_err(|e| sdk_err("put eval", e))?;
        Ok(())
    }

    /// Place: claim (`UpdateItem`), then put the alloc (`PutItem`), then write the eval
    /// (`PutItem`): three calls instead of one transaction.
    pub async fn place_in_steps(&self, a: &Alloc, e: &Eval, expected: u64, now: Millis) -> Result<()> {
        self.ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(rec_key(&a.pool_id, a.worker_id.as_str())))
            .update_expression("SET #c = #c - :size")
            .condition_expression("#c >= :size AND #t > :now")
            .set_expression_attribute_names(names(&[("#c", "cap"), ("#t", "ttl")]))
            .expression_attribute_values(":size", n(a.size))
            .expression_attribute_values(":now", n(now))
            .send()
            .await
            .map_err(|e| if ccf(&e) { Error::Conflict("claim lost".into()) } else { sdk_err("claim", e) })?;
        self.ddb
            .put_item()
            .table_name(&self.tables.allocs)
            .set_item(Some(to_item(&AllocItem::new(a, self.shards(&a.pool_id).await?))?))
            .send()
            .await
            .map_err(|e| sdk_err("put alloc", e))?;
        self.put_eval_at(e, expected).await
    }

    async fn put_eval_at(&self, e: &Eval, expected: u64) -> Result<()> {
        self.ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::new(e, self.shards(&e.pool_id).await?))?))
            .condition_expression("#v = :v")
            .set_expression_attribute_names(names(&[("#v", "version")]))
            .expression_attribute_values(":v", n(expected))
            .send()
            .await
            .map_err(|e| if ccf(&e) { Error::Conflict("eval changed".into()) } else { sdk_err("put eval", e) })?;
        Ok(())
    }

    /// Heartbeat: the worker's TTL (`UpdateItem`), then each alloc's (`UpdateItem` each).
    pub async fn heartbeat_in_steps(&self, w: &Worker, allocs: &[AllocId], ttl: Millis) -> Result<()> {
        self.ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(rec_key(&w.pool_id, w.worker_id.as_str())))
            .update_expression("SET #t = :t")
            .set_expression_attribute_names(names(&[("#t", "ttl")]))
            .expression_attribute_values(":t", n(ttl))
            .send()
            .await
            .map_err(|e| sdk_err("heartbeat", e))?;
        for a in allocs {
            self.ddb
                .update_item()
                .table_name(&self.tables.allocs)
                .set_key(Some(rec_key(&w.pool_id, a.as_str())))
                .update_expression("SET #t = :t, #e = :t")
                .set_expression_attribute_names(names(&[("#t", "ttl"), ("#e", "exp")]))
                .expression_attribute_values(":t", n(ttl))
                .send()
                .await
                .map_err(|e| sdk_err("extend alloc", e))?;
        }
        Ok(())
    }

    /// Complete: read the alloc (`GetItem`), release it (`UpdateItem`), give the
    /// capacity back (`UpdateItem`), mark the eval complete (`UpdateItem`).
    pub async fn complete_in_steps(&self, pool: &PoolId, alloc: &AllocId, now: Millis) -> Result<()> {
        let a = lineup_core::Store::get_alloc(self, pool, alloc).await?.ok_or_else(|| Error::not_found("alloc"))?;
        let k = lineup_core::id::bucket(a.eval_id.as_str(), self.shards(pool).await?);
        self.ddb
            .update_item()
            .table_name(&self.tables.allocs)
            .set_key(Some(rec_key(pool, alloc.as_str())))
            .update_expression("SET #st = :rel REMOVE #t")
            .set_expression_attribute_names(names(&[("#st", "state"), ("#t", "ttl")]))
            .expression_attribute_values(":rel", AttributeValue::S("released".into()))
            .send()
            .await
            .map_err(|e| sdk_err("release alloc", e))?;
        self.ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(rec_key(pool, a.worker_id.as_str())))
            .update_expression("SET #c = #c + :size")
            .set_expression_attribute_names(names(&[("#c", "cap")]))
            .expression_attribute_values(":size", n(a.size))
            .send()
            .await
            .map_err(|e| sdk_err("give back", e))?;
        self.ddb
            .update_item()
            .table_name(&self.tables.evals)
            .set_key(Some(rec_key(pool, a.eval_id.as_str())))
            .update_expression("SET #s = :done, #pst = :pst, #x = :zero, #u = :now ADD #v :one")
            .set_expression_attribute_names(names(&[
                ("#s", "status"),
                ("#pst", "pst"),
                ("#x", "exit_code"),
                ("#u", "updated"),
                ("#v", "version"),
            ]))
            .expression_attribute_values(":done", AttributeValue::S("complete".into()))
            .expression_attribute_values(":pst", AttributeValue::S(pst(pool, EvalStatus::Complete, k)))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(|e| sdk_err("complete eval", e))?;
        Ok(())
    }
}

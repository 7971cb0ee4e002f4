//! The Go original's way, for `make bench` to measure beside Lineup's whole lifecycle
//! (`crates/bench/src/lifecycle.rs`, `partitions.rs`): every step a plain write of its
//! own, in sequence, none atomic with the next. A crash between two of them leaves
//! capacity claimed for no alloc, or an alloc released with its capacity not given
//! back; Lineup's transactions exist to rule that out. Nothing in Lineup calls these.
//!
//! The steps write either Lineup's tables (the original's calls on today's keys) or
//! tables keyed as the Go seed keyed them (`Keys::ByPool`: every table by pool, the
//! record's id its range key; `create_pool_keyed_tables`), whose hot key is the pool.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
use lineup_core::*;

use crate::ddb::{ccf, names};
use crate::items::*;
use crate::{sdk_err, AwsBackend, Tables};

/// How the tables the original's steps write are keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Lineup's tables (`keys.rs`).
    Lineup,
    /// The Go seed's: `pool` + the record's id (`eval`, `alloc`, `wrk`).
    ByPool,
}

impl Keys {
    fn of(self, pool: &PoolId, range: &str, v: &str) -> Item {
        match self {
            Keys::Lineup => rec_key(pool, v),
            Keys::ByPool => HashMap::from([("pool".to_owned(), s(pool.as_str())), (range.to_owned(), s(v))]),
        }
    }
}

/// Tables keyed as the Go seed keyed them, for the original's steps with `Keys::ByPool`
/// (the seed's local indexes are left out: their writes land on the same keys).
pub async fn create_pool_keyed_tables(ddb: &aws_sdk_dynamodb::Client, t: &Tables) -> Result<()> {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| sdk_err("attribute", e))
    };
    let key = |n: &str, k: KeyType| {
        KeySchemaElement::builder().attribute_name(n).key_type(k).build().map_err(|e| sdk_err("key", e))
    };
    for (table, range) in [(&t.workers, "wrk"), (&t.allocs, "alloc"), (&t.evals, "eval")] {
        ddb.create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pool")?)
            .attribute_definitions(attr(range)?)
            .key_schema(key("pool", KeyType::Hash)?)
            .key_schema(key(range, KeyType::Range)?)
            .send()
            .await
            .map_err(|e| sdk_err(format!("create table {table}"), e))?;
    }
    Ok(())
}

impl AwsBackend {
    /// Registers a worker on `Keys::ByPool` tables (the steps' claims need one).
    pub async fn original_put_worker(&self, w: &Worker) -> Result<()> {
        self.ddb
            .put_item()
            .table_name(&self.tables.workers)
            .set_item(Some(to_item(&WorkerItem::new(w, 1))?))
            .send()
            .await
            .map_err(|e| sdk_err("put worker", e))?;
        Ok(())
    }

    /// Submit: put the eval (`PutItem`).
    pub async fn original_put_eval(&self, e: &Eval, keys: Keys) -> Result<()> {
        let shards = self.original_shards(&e.pool_id, keys).await?;
        self.ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::new(e, shards))?))
            .send()
            .await
            .map_err(|e| sdk_err("put eval", e))?;
        Ok(())
    }

    /// Place: claim (`UpdateItem`), then put the alloc (`PutItem`), then write the eval
    /// (`PutItem`): three calls instead of one transaction.
    pub async fn place_in_steps(&self, a: &Alloc, e: &Eval, expected: u64, now: Millis, keys: Keys) -> Result<()> {
        let shards = self.original_shards(&a.pool_id, keys).await?;
        self.ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(keys.of(&a.pool_id, "wrk", a.worker_id.as_str())))
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
            .set_item(Some(to_item(&AllocItem::new(a, shards))?))
            .send()
            .await
            .map_err(|e| sdk_err("put alloc", e))?;
        self.ddb
            .put_item()
            .table_name(&self.tables.evals)
            .set_item(Some(to_item(&EvalItem::new(e, shards))?))
            .condition_expression("#v = :v")
            .set_expression_attribute_names(names(&[("#v", "version")]))
            .expression_attribute_values(":v", n(expected))
            .send()
            .await
            .map_err(|e| if ccf(&e) { Error::Conflict("eval changed".into()) } else { sdk_err("put eval", e) })?;
        Ok(())
    }

    /// Heartbeat: the worker's TTL (`UpdateItem`), then each alloc's (`UpdateItem` each).
    /// The seed had one lease attribute, its index's key (a local index on `ttl`), so a
    /// renewal moved the index entry; on Lineup's tables that key is `due`, written with it.
    pub async fn heartbeat_in_steps(&self, w: &Worker, allocs: &[AllocId], ttl: Millis, keys: Keys) -> Result<()> {
        self.ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(keys.of(&w.pool_id, "wrk", w.worker_id.as_str())))
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
                .set_key(Some(keys.of(&w.pool_id, "alloc", a.as_str())))
                .update_expression("SET #t = :t, #e = :t, #d = :t")
                .set_expression_attribute_names(names(&[("#t", "ttl"), ("#e", "exp"), ("#d", "due")]))
                .expression_attribute_values(":t", n(ttl))
                .send()
                .await
                .map_err(|e| sdk_err("extend alloc", e))?;
        }
        Ok(())
    }

    /// Complete: read the alloc (`GetItem`), release it (`UpdateItem`), give the
    /// capacity back (`UpdateItem`), mark the eval complete (`UpdateItem`).
    pub async fn complete_in_steps(&self, pool: &PoolId, alloc: &AllocId, now: Millis, keys: Keys) -> Result<()> {
        let item = self.get(&self.tables.allocs, keys.of(pool, "alloc", alloc.as_str())).await?;
        let a: AllocItem = from_item(item.ok_or_else(|| Error::not_found("alloc"))?)?;
        let k = lineup_core::id::bucket(a.eval.as_str(), self.original_shards(pool, keys).await?);
        self.ddb
            .update_item()
            .table_name(&self.tables.allocs)
            .set_key(Some(keys.of(pool, "alloc", alloc.as_str())))
            .update_expression("SET #st = :rel REMOVE #t, #d")
            .set_expression_attribute_names(names(&[("#st", "state"), ("#t", "ttl"), ("#d", "due")]))
            .expression_attribute_values(":rel", AttributeValue::S("released".into()))
            .send()
            .await
            .map_err(|e| sdk_err("release alloc", e))?;
        self.ddb
            .update_item()
            .table_name(&self.tables.workers)
            .set_key(Some(keys.of(pool, "wrk", a.wrk.as_str())))
            .update_expression("SET #c = #c + :size")
            .set_expression_attribute_names(names(&[("#c", "cap")]))
            .expression_attribute_values(":size", n(a.size))
            .send()
            .await
            .map_err(|e| sdk_err("give back", e))?;
        self.ddb
            .update_item()
            .table_name(&self.tables.evals)
            .set_key(Some(keys.of(pool, "eval", a.eval.as_str())))
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

    /// The pool's index shards on Lineup's tables; the seed's tables have no shards.
    async fn original_shards(&self, pool: &PoolId, keys: Keys) -> Result<u32> {
        match keys {
            Keys::Lineup => self.shards(pool).await,
            Keys::ByPool => Ok(1),
        }
    }
}

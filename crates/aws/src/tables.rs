//! Table names and shapes. Keys follow the Go original so its data model carries over:
//! every table is partitioned by `pool`.
//!
//! | table | key | indexes |
//! |---|---|---|
//! | pools | `pool` | |
//! | workers | `pool` + `wrk` | GSI `by_cap` (`pool`, `cap`): who has room (a hint: eventually consistent); LSI `by_ttl` (`pool`, `ttl`): expiry |
//! | replicas | `pool` + `rpl` (`{dataset}:{worker}`) | LSI `by_ttl` |
//! | allocs | `pool` + `alloc` | LSI `by_ttl`, sparse: only live allocs carry `ttl` |
//! | evals | `pool` + `eval` | GSI `by_status` (`pst` = `{pool}#{status}`, `created`); LSI `by_created` (`pool`, `created`) |
//! | pipelines | `pool` + `pipeline` | none (no LSI: the collection may grow past 10 GB; listing queries the pool's partition newest first and filters) |
//!
//! Idempotency keys live in the evals table as items `eval = "k#{key}"` pointing at
//! their eval, so claiming a key and writing the eval are one transaction; a pipeline's
//! idempotency key, likewise, is an item `pipeline = "k#{key}"` in the pipelines table. The TTL
//! attribute (`purge_at`, epoch seconds) only cleans up finished records; nothing
//! relies on DynamoDB deleting anything on time.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, LocalSecondaryIndex, Projection,
    ProjectionType, ScalarAttributeType,
};
use lineup_core::{Error, Result};

use crate::sdk_err;

pub const BY_CAP: &str = "by_cap";
pub const BY_TTL: &str = "by_ttl";
pub const BY_STATUS: &str = "by_status";
pub const BY_CREATED: &str = "by_created";

#[derive(Debug, Clone)]
pub struct Tables {
    pub pools: String,
    pub workers: String,
    pub replicas: String,
    pub allocs: String,
    pub evals: String,
    pub pipelines: String,
}

impl Tables {
    pub fn new(prefix: &str) -> Self {
        Tables {
            pools: format!("{prefix}-pools"),
            workers: format!("{prefix}-workers"),
            replicas: format!("{prefix}-replicas"),
            allocs: format!("{prefix}-allocs"),
            evals: format!("{prefix}-evals"),
            pipelines: format!("{prefix}-pipelines"),
        }
    }

    pub fn all(&self) -> [&str; 6] {
        [&self.pools, &self.workers, &self.replicas, &self.allocs, &self.evals, &self.pipelines]
    }
}

fn attr(name: &str, t: ScalarAttributeType) -> Result<AttributeDefinition> {
    AttributeDefinition::builder().attribute_name(name).attribute_type(t).build().map_err(|e| sdk_err("attribute", e))
}

fn key(name: &str, t: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder().attribute_name(name).key_type(t).build().map_err(|e| sdk_err("key", e))
}

fn all() -> Projection {
    Projection::builder().projection_type(ProjectionType::All).build()
}

fn lsi(name: &str, range: &str) -> Result<LocalSecondaryIndex> {
    LocalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key("pool", KeyType::Hash)?)
        .key_schema(key(range, KeyType::Range)?)
        .projection(all())
        .build()
        .map_err(|e| sdk_err("lsi", e))
}

fn gsi(name: &str, hash: &str, range: &str) -> Result<GlobalSecondaryIndex> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash)?)
        .key_schema(key(range, KeyType::Range)?)
        .projection(all())
        .build()
        .map_err(|e| sdk_err("gsi", e))
}

/// Creates the tables (on-demand billing) if they don't exist, and waits until active.
pub async fn create_tables(ddb: &aws_sdk_dynamodb::Client, t: &Tables) -> Result<()> {
    use ScalarAttributeType::{N, S};
    let specs = vec![
        (t.pools.clone(), vec![attr("pool", S)?], None, vec![], vec![]),
        (
            t.workers.clone(),
            vec![attr("pool", S)?, attr("wrk", S)?, attr("cap", N)?, attr("ttl", N)?],
            Some("wrk"),
            vec![gsi(BY_CAP, "pool", "cap")?],
            vec![lsi(BY_TTL, "ttl")?],
        ),
        (
            t.replicas.clone(),
            vec![attr("pool", S)?, attr("rpl", S)?, attr("ttl", N)?],
            Some("rpl"),
            vec![],
            vec![lsi(BY_TTL, "ttl")?],
        ),
        (
            t.allocs.clone(),
            vec![attr("pool", S)?, attr("alloc", S)?, attr("ttl", N)?],
            Some("alloc"),
            vec![],
            vec![lsi(BY_TTL, "ttl")?],
        ),
        (
            t.evals.clone(),
            vec![attr("pool", S)?, attr("eval", S)?, attr("pst", S)?, attr("created", N)?],
            Some("eval"),
            vec![gsi(BY_STATUS, "pst", "created")?],
            vec![lsi(BY_CREATED, "created")?],
        ),
        (t.pipelines.clone(), vec![attr("pool", S)?, attr("pipeline", S)?], Some("pipeline"), vec![], vec![]),
    ];
    for (name, attrs, range, gsis, lsis) in specs {
        let mut req = ddb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(attrs))
            .key_schema(key("pool", KeyType::Hash)?);
        if let Some(r) = range {
            req = req.key_schema(key(r, KeyType::Range)?);
        }
        if !gsis.is_empty() {
            req = req.set_global_secondary_indexes(Some(gsis));
        }
        if !lsis.is_empty() {
            req = req.set_local_secondary_indexes(Some(lsis));
        }
        match req.send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(sdk_err(format!("create table {name}"), e)),
        }
    }
    for name in t.all() {
        for _ in 0..120 {
            let d = ddb
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(|e| sdk_err(format!("describe {name}"), e))?;
            if d.table().and_then(|t| t.table_status()).is_some_and(|s| s.as_str() == "ACTIVE") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Deletes the tables (missing ones are fine).
pub async fn delete_tables(ddb: &aws_sdk_dynamodb::Client, t: &Tables) -> Result<()> {
    for name in t.all() {
        match ddb.delete_table().table_name(name).send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {}
            Err(e) => return Err(Error::backend(format!("delete table {name}"), e)),
        }
    }
    Ok(())
}

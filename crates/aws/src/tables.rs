//! Table names and shapes. No table but `pools` is keyed by pool: every record is
//! keyed by its own id, `id = "{pool}/{local id}"`, and a pool's records are listed
//! through global secondary indexes partitioned by `ps = "{pool}#{shard}"` (`keys.rs`).
//! No local secondary index anywhere: an item collection with one is held in a single
//! partition and capped at 10 GB, which made every pool a hot key (docs/SCALE.md).
//!
//! | table | key | indexes (all GSI, projecting all attributes unless said) |
//! |---|---|---|
//! | pools | `pool` | |
//! | workers | `id` | `by_pool` (`ps`, `wrk`): every worker; not keyed by `cap`, so a claim changes the index entry (1 write), not its key (2) |
//! | replicas | `id` (`{pool}/{dataset}:{worker}`) | `by_ttl` (`ps` spread by dataset, `ttl`) |
//! | allocs | `id` | `by_due` (`ps`, `due`), sparse: only live allocs carry `due`; projects the keys and `wrk` only |
//! | evals | `id` | `by_status` (`pst` = `{pool}#{status}#{shard}`, `created`); `by_created` (`ps`, `created`) |
//! | pipelines | `id` | `by_created` (`ps`, `created`) |
//!
//! An alloc's lease (`ttl`) is not an index key: a heartbeat renews it without touching
//! `by_due`, whose `due` is when the releaser next looks (set to the lease at placement,
//! moved to the lease the releaser finds renewed: `due_allocs` in allocs.rs). Keyed by
//! the lease, every renewal moved the entry (2 index writes per alloc per heartbeat, more
//! than the renewal itself); now an alloc's entry moves once per lease period at most.
//!
//! Idempotency keys live in the evals table as items `{pool}/k#{key}` pointing at
//! their eval (not indexed), so claiming a key and writing the eval are one
//! transaction; a pipeline's idempotency key, likewise, in the pipelines table. The TTL
//! attribute (`purge_at`, epoch seconds) only cleans up finished records; nothing
//! relies on DynamoDB deleting anything on time.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use lineup_core::{Error, Result};

use crate::sdk_err;

pub const BY_POOL: &str = "by_pool";
pub const BY_TTL: &str = "by_ttl";
pub const BY_DUE: &str = "by_due";
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

/// The keys and `attrs`: an update that changes neither writes nothing to the index.
fn include(attrs: &[&str]) -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::Include)
        .set_non_key_attributes(Some(attrs.iter().map(|a| a.to_string()).collect()))
        .build()
}

fn gsi(name: &str, hash: &str, range: &str) -> Result<GlobalSecondaryIndex> {
    gsi_projecting(name, hash, range, all())
}

fn gsi_projecting(name: &str, hash: &str, range: &str, projection: Projection) -> Result<GlobalSecondaryIndex> {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash)?)
        .key_schema(key(range, KeyType::Range)?)
        .projection(projection)
        .build()
        .map_err(|e| sdk_err("gsi", e))
}

/// Creates the tables (on-demand billing) if they don't exist, and waits until active.
pub async fn create_tables(ddb: &aws_sdk_dynamodb::Client, t: &Tables) -> Result<()> {
    use ScalarAttributeType::{N, S};
    let specs = vec![
        (t.pools.clone(), "pool", vec![attr("pool", S)?], vec![]),
        (
            t.workers.clone(),
            "id",
            vec![attr("id", S)?, attr("ps", S)?, attr("wrk", S)?],
            vec![gsi(BY_POOL, "ps", "wrk")?],
        ),
        (
            t.replicas.clone(),
            "id",
            vec![attr("id", S)?, attr("ps", S)?, attr("ttl", N)?],
            vec![gsi(BY_TTL, "ps", "ttl")?],
        ),
        (
            t.allocs.clone(),
            "id",
            vec![attr("id", S)?, attr("ps", S)?, attr("due", N)?],
            vec![gsi_projecting(BY_DUE, "ps", "due", include(&["wrk"]))?],
        ),
        (
            t.evals.clone(),
            "id",
            vec![attr("id", S)?, attr("ps", S)?, attr("pst", S)?, attr("created", N)?],
            vec![gsi(BY_STATUS, "pst", "created")?, gsi(BY_CREATED, "ps", "created")?],
        ),
        (
            t.pipelines.clone(),
            "id",
            vec![attr("id", S)?, attr("ps", S)?, attr("created", N)?],
            vec![gsi(BY_CREATED, "ps", "created")?],
        ),
    ];
    for (name, hash, attrs, gsis) in specs {
        let mut req = ddb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(attrs))
            .key_schema(key(hash, KeyType::Hash)?);
        if !gsis.is_empty() {
            req = req.set_global_secondary_indexes(Some(gsis));
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

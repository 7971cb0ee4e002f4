//! The key design (issue 15): no table is keyed by pool, so no pool has a hot key.
//!
//! Every record is keyed by its own id, `id = "{pool}/{local id}"` (pool ids never hold
//! a `/`), so a placement's writes land on keys that only its eval, its alloc and its
//! worker use. A pool's records are listed through global secondary indexes whose
//! partition key is `ps = "{pool}#{k}"`, `k` a shard: the record's local id hashed into
//! the pool's shard count (`bucket`). A pool with `n` shards spreads its index writes
//! over `n` keys, and a listing queries the `n` shards concurrently and merges.
//!
//! A pool's shard count is fixed when it is created (the pool item's `sh`, from the
//! deployment's `LINEUP_INDEX_SHARDS`, 1 unless set), so changing the setting never
//! hides a record: pools made before keep theirs. One shard costs one query per
//! listing, as a pool key did; a hot pool wants 32 (docs/SCALE.md).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use futures_util::future::try_join_all;
use lineup_core::id::bucket;
use lineup_core::*;

use crate::items::{s, Item};
use crate::AwsBackend;

/// At most this many shards per pool: a listing is this many queries.
pub const MAX_SHARDS: u32 = 64;

/// How long a pool's shard count is trusted from memory. It never changes while the
/// pool lives; the bound only covers a pool purged and made again under the same id.
const SHARDS_FRESH: Duration = Duration::from_secs(300);

/// A record's table key value.
pub fn id(pool: &PoolId, local: &str) -> String {
    format!("{pool}/{local}")
}

/// The index partition of a record whose shard is chosen by `spread_by`.
pub fn ps(pool: &PoolId, spread_by: &str, shards: u32) -> String {
    shard_key(pool, bucket(spread_by, shards))
}

pub fn shard_key(pool: &PoolId, k: u32) -> String {
    format!("{pool}#{k}")
}

/// Shard counts of pools, by pool.
pub(crate) type ShardCache = std::sync::Mutex<HashMap<PoolId, (u32, Instant)>>;

impl AwsBackend {
    /// The shard count given to pools created from now on (the deployment's
    /// `LINEUP_INDEX_SHARDS`), clamped to 1..=`MAX_SHARDS`.
    pub fn set_index_shards(&self, n: u32) {
        self.new_pool_shards.store(n.clamp(1, MAX_SHARDS), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn new_pool_shards(&self) -> u32 {
        self.new_pool_shards.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn remember_shards(&self, pool: &PoolId, n: u32) {
        let mut c = self.shard_cache.lock().unwrap_or_else(|p| p.into_inner());
        c.insert(pool.clone(), (n, Instant::now()));
    }

    pub(crate) fn forget_shards(&self, pool: &PoolId) {
        self.shard_cache.lock().unwrap_or_else(|p| p.into_inner()).remove(pool);
    }

    /// `pool`'s shard count: from memory, else from its item (one read, then
    /// remembered). A pool that does not exist has 1 (its writes fail elsewhere).
    pub(crate) async fn shards(&self, pool: &PoolId) -> Result<u32> {
        {
            let c = self.shard_cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((n, at)) = c.get(pool) {
                if at.elapsed() < SHARDS_FRESH {
                    return Ok(*n);
                }
            }
        }
        // get_pool remembers the count it reads.
        Ok(match self.get_pool_item(pool).await? {
            Some(p) => p.shards(),
            None => 1,
        })
    }

    /// `read(k)` for each shard `k` of `pool`, concurrently, in shard order.
    async fn per_shard<T, F: Future<Output = Result<T>>>(
        &self,
        pool: &PoolId,
        read: impl Fn(u32) -> F,
    ) -> Result<Vec<T>> {
        try_join_all((0..self.shards(pool).await?).map(read)).await
    }

    /// Every page of `make(k)` for each shard `k` of `pool`, queried concurrently.
    pub(crate) async fn query_shards(
        &self,
        pool: &PoolId,
        make: impl Fn(u32) -> QueryFluentBuilder,
        context: &str,
    ) -> Result<Vec<Item>> {
        let pages = self.per_shard(pool, |k| self.query_all(make(k), context)).await?;
        Ok(pages.into_iter().flatten().collect())
    }

    /// Up to `limit` items of each shard (newest first where the index sorts so); the
    /// caller merges and cuts.
    pub(crate) async fn query_shards_limit(
        &self,
        pool: &PoolId,
        make: impl Fn(u32) -> QueryFluentBuilder,
        limit: usize,
        context: &str,
    ) -> Result<Vec<Item>> {
        let pages = self.per_shard(pool, |k| self.query_limit(make(k), limit, context)).await?;
        Ok(pages.into_iter().flatten().collect())
    }

    pub(crate) async fn count_shards(
        &self,
        pool: &PoolId,
        make: impl Fn(u32) -> QueryFluentBuilder,
        context: &str,
    ) -> Result<u64> {
        Ok(self.per_shard(pool, |k| self.count_all(make(k), context)).await?.into_iter().sum())
    }

    /// A query of `index` on `table` for one index partition (`ps` = `hash`).
    pub(crate) fn index_query(&self, table: &str, index: &str, hash: &str) -> QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(table)
            .index_name(index)
            .key_condition_expression("#p = :p")
            .expression_attribute_names("#p", "ps")
            .expression_attribute_values(":p", s(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_shards() {
        let pool = PoolId::generate();
        assert_eq!(id(&pool, "abc"), format!("{pool}/abc"));
        assert_eq!(ps(&pool, "abc", 1), format!("{pool}#0"));
        let spread: std::collections::HashSet<String> = (0..1000).map(|i| ps(&pool, &format!("{i:020}"), 32)).collect();
        assert_eq!(spread.len(), 32, "a thousand ids reach every one of 32 shards");
    }
}

//! A pool's `max_running` on DynamoDB, enforced in the placement transaction.
//!
//! The running count lives on the pool item (`run`) and only a capped pool's placements
//! and releases touch it: a hot pool without a cap never writes its pool item, and a
//! capped one pays one more item per transaction (and shares one item's write budget,
//! docs/SCALE.md). Every claim carries the pool's limits version (`lv`): a capped claim
//! checks it on the pool item, every claim checks it on the worker item (`lv` there is
//! the version that fenced the worker), so no scheduler places by limits it has not seen.
//!
//! Setting a cap on a pool with live uncounted allocs cannot be one transaction (they
//! may be thousands), so it goes in steps, each safe if the process dies after it:
//! 1. the pool item: new `maxrun`, `lv + 1`, `counting` (placements stop: the planner
//!    reads `counting` as a limit of 0, and a capped claim requires it absent);
//! 2. every worker fenced at the new `lv`: from then on, no claim made against the old
//!    limits can land, so the set of uncounted live allocs only shrinks;
//! 3. each uncounted live alloc counted (alloc `counted` + pool `run + 1`, one
//!    transaction each; a release in between conditions on `counted` and retries);
//! 4. `counting` removed. Placements resume against an exact count.
//!
//! A crash leaves `counting` set; the next `set_max_running` (the releaser calls it for
//! such pools) runs the steps again, each of which is idempotent.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use lineup_core::admission::{Coefficients, Pushed};
use lineup_core::*;
use tracing::info;

use crate::ddb::{build, ccf, names};
use crate::items::*;
use crate::AwsBackend;

/// How long a global secondary index usually takes to show a write ("typically within
/// a fraction of a second", DynamoDB's guide); `set_max_running` waits it out.
const INDEX_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The pool item's limits version is `:lv` (pools written before versions had none: 0).
pub const VERSION_IS: &str = "(#lv = :lv OR attribute_not_exists(#lv))";

impl AwsBackend {
    /// The pool side of `k` capped claims: room for `k` more under `limit`, limits at
    /// `version`, no count in progress; then `k` more counted.
    pub(crate) fn count_in_pool(&self, pool: &PoolId, version: u64, limit: u32, k: u32) -> Result<TransactWriteItem> {
        // `run + k <= limit`, written as `run <= limit - k` (a caller never asks for
        // more than the limit: `place_batched` splits such a batch).
        let u = build(
            Update::builder()
                .table_name(&self.tables.pools)
                .set_key(Some(pool_key(pool)))
                .update_expression("SET #run = if_not_exists(#run, :zero) + :k")
                .condition_expression(format!(
                    "attribute_exists(#p) AND {VERSION_IS} AND attribute_not_exists(#counting) \
                     AND (attribute_not_exists(#run) OR #run <= :room)"
                ))
                .set_expression_attribute_names(names(&[
                    ("#p", "pool"),
                    ("#run", "run"),
                    ("#lv", "lv"),
                    ("#counting", "counting"),
                ]))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":k", n(k))
                .expression_attribute_values(":lv", n(version))
                .expression_attribute_values(":room", n(i64::from(limit) - i64::from(k)))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().update(u).build())
    }

    /// A counted alloc's release: one fewer counted.
    pub(crate) fn uncount_in_pool(&self, pool: &PoolId) -> Result<TransactWriteItem> {
        self.move_run(pool, false)
    }

    /// `run` one up (counting an alloc already live) or one down (releasing a counted
    /// one), on a pool that exists.
    fn move_run(&self, pool: &PoolId, up: bool) -> Result<TransactWriteItem> {
        let (update, condition) = if up {
            ("SET #run = if_not_exists(#run, :zero) + :one", "attribute_exists(#p)")
        } else {
            ("SET #run = #run - :one", "attribute_exists(#p) AND #run > :zero")
        };
        let u = build(
            Update::builder()
                .table_name(&self.tables.pools)
                .set_key(Some(pool_key(pool)))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(names(&[("#p", "pool"), ("#run", "run")]))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":one", n(1))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().update(u).build())
    }

    pub(crate) async fn set_max_running_steps(&self, pool: &PoolId, max_running: Option<u32>) -> Result<Pool> {
        let p = self.pool_or_not_found(pool).await?;
        let old = &p.limits;
        let version = old.version + 1;
        let count = max_running.is_some() && (old.max_running.is_none() || old.counting);
        // Step 1.
        let mut u = self
            .ddb
            .update_item()
            .table_name(&self.tables.pools)
            .set_key(Some(pool_key(pool)))
            .condition_expression(format!("attribute_exists(#p) AND {VERSION_IS}"))
            .expression_attribute_names("#p", "pool")
            .expression_attribute_names("#lv", "lv")
            .expression_attribute_names("#m", "maxrun")
            .expression_attribute_values(":lv", n(old.version))
            .expression_attribute_values(":nv", n(version));
        u = match (max_running, count) {
            (Some(m), true) => u
                .update_expression("SET #m = :m, #lv = :nv, #counting = :yes")
                .expression_attribute_names("#counting", "counting")
                .expression_attribute_values(":m", n(m))
                .expression_attribute_values(":yes", AttributeValue::Bool(true)),
            (Some(m), false) => u.update_expression("SET #m = :m, #lv = :nv").expression_attribute_values(":m", n(m)),
            (None, _) => u.update_expression("SET #lv = :nv REMOVE #m"),
        };
        match u.send().await {
            Ok(_) => {}
            Err(e) if ccf(&e) => {
                // Applied, with the response lost and the SDK's retry finding it so?
                let now = self.pool_or_not_found(pool).await?;
                if !(now.limits.version == version && now.limits.max_running == max_running) {
                    return Err(Error::Conflict("the pool's limits changed meanwhile; try again".into()));
                }
            }
            Err(e) => return Err(crate::sdk_err("set max_running", e)),
        }
        if count {
            // Workers and allocs are listed through eventually consistent indexes
            // (keys.rs): each listing waits out their usual lag behind what was written
            // before the step it follows. An alloc the count still misses is placed
            // over the cap until it ends (uncounted, it does not bring `run` down).
            tokio::time::sleep(INDEX_SETTLE).await;
            self.fence_workers(pool, version).await?;
            tokio::time::sleep(INDEX_SETTLE).await;
            let counted = self.count_live_allocs(pool).await?;
            // Step 4, only if no newer change came meanwhile (it counts for itself).
            let r = self
                .ddb
                .update_item()
                .table_name(&self.tables.pools)
                .set_key(Some(pool_key(pool)))
                .update_expression("REMOVE #counting")
                .condition_expression("#lv = :nv")
                .expression_attribute_names("#counting", "counting")
                .expression_attribute_names("#lv", "lv")
                .expression_attribute_values(":nv", n(version))
                .send()
                .await;
            match r {
                Ok(_) => {}
                Err(e) if ccf(&e) => {}
                Err(e) => return Err(crate::sdk_err("finish counting", e)),
            }
            info!(pool = %pool, counted, "live allocs counted for the new max_running");
        }
        self.pool_or_not_found(pool).await
    }

    /// Step 2: every worker of the pool at `version` at least.
    async fn fence_workers(&self, pool: &PoolId, version: u64) -> Result<()> {
        for w in self.list_workers(pool).await?.into_iter().map(|w| w.worker_id) {
            let r = self
                .ddb
                .update_item()
                .table_name(&self.tables.workers)
                .set_key(Some(rec_key(pool, w.as_str())))
                .update_expression("SET #lv = :nv")
                .condition_expression("attribute_exists(#w) AND (attribute_not_exists(#lv) OR #lv < :nv)")
                .expression_attribute_names("#w", "wrk")
                .expression_attribute_names("#lv", "lv")
                .expression_attribute_values(":nv", n(version))
                .send()
                .await;
            match r {
                // Gone, or fenced already (by a newer change, or a retry of this one).
                Ok(_) => {}
                Err(e) if ccf(&e) => {}
                Err(e) => return Err(crate::sdk_err("fence worker", e)),
            }
        }
        Ok(())
    }

    /// Step 3: each live alloc not yet counted, counted. Returns how many.
    async fn count_live_allocs(&self, pool: &PoolId) -> Result<u64> {
        let mut counted = 0;
        for a in self.live_allocs(pool, None).await?.into_iter().filter(|a| !a.counted) {
            let mark = build(
                Update::builder()
                    .table_name(&self.tables.allocs)
                    .set_key(Some(rec_key(pool, a.alloc_id.as_str())))
                    .update_expression("SET #cnt = :yes")
                    .condition_expression("#st = :live AND attribute_not_exists(#cnt)")
                    .set_expression_attribute_names(names(&[("#cnt", "counted"), ("#st", "state")]))
                    .expression_attribute_values(":yes", AttributeValue::Bool(true))
                    .expression_attribute_values(":live", s("live"))
                    .build(),
            )?;
            let items = vec![TransactWriteItem::builder().update(mark).build(), self.move_run(pool, true)?];
            // A cancellation means it was released or counted meanwhile: either way done.
            // (ClientRequestToken makes a retried transaction count once.)
            if self.transact_ok(items, "count alloc").await? {
                counted += 1;
            }
        }
        Ok(counted)
    }

    pub(crate) async fn set_health_item(
        &self,
        pool: &PoolId,
        coefficients: Coefficients,
        pushed: Option<Pushed>,
        checks: &[lineup_core::health::HealthCheck],
    ) -> Result<Pool> {
        let checks = serde_json::to_string(checks).map_err(|e| Error::backend("encode checks", e))?;
        let mut u = self
            .ddb
            .update_item()
            .table_name(&self.tables.pools)
            .set_key(Some(pool_key(pool)))
            .condition_expression("attribute_exists(#p)")
            .expression_attribute_names("#p", "pool")
            .expression_attribute_names("#coef", "coef")
            .expression_attribute_names("#pushed", "pushed")
            .expression_attribute_names("#checks", "checks")
            .expression_attribute_values(":coef", to_attr(&coefficients)?)
            .expression_attribute_values(":checks", s(checks));
        u = match pushed {
            Some(p) => u
                .update_expression("SET #coef = :coef, #checks = :checks, #pushed = :pushed")
                .expression_attribute_values(":pushed", to_attr(&p)?),
            None => u.update_expression("SET #coef = :coef, #checks = :checks REMOVE #pushed"),
        };
        match u.send().await {
            Ok(_) => self.pool_or_not_found(pool).await,
            Err(e) if ccf(&e) => Err(Error::not_found(format!("pool {pool}"))),
            Err(e) => Err(crate::sdk_err("set health", e)),
        }
    }
}

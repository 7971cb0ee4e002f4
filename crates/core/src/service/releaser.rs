//! The releaser: takes back what stopped being live. For every pool: allocs past their
//! TTL are released (their eval retried or dead-lettered), workers past their TTL are
//! removed with their queue after their allocs are released, expired replicas are
//! deleted, and disbanded pools are purged once `POOL_TTL` has passed. Every step is
//! idempotent, so overlapping runs and a crash mid-way are both fine.

use tracing::{info, warn};

use super::finish::{Finish, Finished};
use super::Lineup;
use crate::error::Result;
use crate::events::{Change, Topic};
use crate::id::PoolId;
use crate::model::{Pool, PoolStatus};

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseSummary {
    pub allocs_released: usize,
    pub workers_removed: usize,
    pub replicas_removed: u64,
    /// Finished evals and released allocs purged past the retention (embedded store).
    pub history_purged: u64,
    pub pools_purged: usize,
    /// Messages of waiting evals re-sent by the reconciler (`reconcile.rs`).
    pub messages_resent: usize,
    /// Running pipelines advanced by the sweep (`pipelines.rs`).
    pub pipelines_swept: usize,
    /// Pools whose release failed part-way (counted in `errors` too).
    pub pools_failed: usize,
    pub errors: usize,
    /// The deadline came before every pool was visited.
    pub cut_short: bool,
}

impl ReleaseSummary {
    fn add(&mut self, o: &ReleaseSummary) {
        self.allocs_released += o.allocs_released;
        self.workers_removed += o.workers_removed;
        self.replicas_removed += o.replicas_removed;
        self.history_purged += o.history_purged;
        self.pools_purged += o.pools_purged;
        self.messages_resent += o.messages_resent;
        self.pipelines_swept += o.pipelines_swept;
        self.pools_failed += o.pools_failed;
        self.errors += o.errors;
    }
}

impl Lineup {
    /// One pass over every pool, with no deadline.
    pub async fn release_pass(&self) -> Result<ReleaseSummary> {
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);
        Ok(self.release_until(far, None).await?.0)
    }

    /// Releases pool by pool (in id order, starting after `resume`) until every pool was
    /// visited or `deadline` is near. A pool that fails is logged and counted, and the
    /// others are still visited. Returns the summary and, when the deadline cut the pass
    /// short, the last pool visited: the next call resumes after it.
    pub async fn release_until(
        &self,
        deadline: tokio::time::Instant,
        resume: Option<&PoolId>,
    ) -> Result<(ReleaseSummary, Option<PoolId>)> {
        let mut sum = ReleaseSummary::default();
        let mut pools = self.store.sweep_pools().await?;
        pools.sort_by(|a, b| a.pool_id.cmp(&b.pool_id));
        // Start after `resume`, wrapping around.
        let at = resume.map(|r| pools.partition_point(|p| p.pool_id <= *r)).unwrap_or(0).min(pools.len());
        pools.rotate_left(at);
        let mut last = resume.cloned();
        for pool in &pools {
            if tokio::time::Instant::now() >= deadline {
                sum.cut_short = true;
                return Ok((sum, last));
            }
            last = Some(pool.pool_id.clone());
            let mut one = ReleaseSummary::default();
            match self.release_pool(pool, &mut one).await {
                Ok(()) => {}
                Err(e) => {
                    warn!(pool = %pool.pool_id, error = %e, "releasing a pool failed; going on with the others");
                    one.errors += 1;
                    one.pools_failed += 1;
                }
            }
            sum.add(&one);
        }
        Ok((sum, None))
    }

    async fn release_pool(&self, pool: &Pool, sum: &mut ReleaseSummary) -> Result<()> {
        let now = self.now();
        let id = &pool.pool_id;
        if pool.status == PoolStatus::Disbanded
            && pool.disbanded_at.is_some_and(|t| t + self.settings.pool_ttl_ms() <= now)
        {
            for w in self.store.list_workers(id).await? {
                self.queues.delete_queue(&self.worker_queue(id, &w.worker_id)).await?;
            }
            self.store.purge_pool(id).await?;
            info!(pool = %id, "disbanded pool purged");
            sum.pools_purged += 1;
            return Ok(());
        }
        if pool.status == PoolStatus::Disbanded {
            // Disband cancelled what it could see; an index that lags (DynamoDB's
            // GSI) may have hidden a few. Until the purge, cancel any left over.
            for e in self.store.unfinished_evals(id).await? {
                if let Err(err) = self.cancel_unfinished(e).await {
                    warn!(pool = %id, error = %err, "cancelling a straggler of a disbanded pool");
                    sum.errors += 1;
                }
            }
            if let Err(err) = self.cancel_pipelines_of(id).await {
                warn!(pool = %id, error = %err, "cancelling the pipelines of a disbanded pool");
                sum.errors += 1;
            }
        }

        for alloc in self.store.expired_allocs(id, now).await? {
            crate::fault!("release.before_expire");
            let (a, e) = (alloc.alloc_id.clone(), alloc.eval_id.clone());
            match self.expire(alloc, "alloc expired: no heartbeat listed it in time", now).await {
                Ok((Finished::Released(_), _)) => sum.allocs_released += 1,
                Ok((Finished::AlreadyReleased | Finished::Renewed, _)) => {}
                Err(err) => {
                    warn!(pool = %id, alloc = %a, eval = %e, error = %err, "releasing expired alloc");
                    sum.errors += 1;
                }
            }
        }

        for worker in self.store.expired_workers(id, now).await? {
            let wid = &worker.worker_id;
            let mut ok = true;
            for alloc in self.store.live_allocs(id, Some(wid)).await? {
                let a = alloc.alloc_id.clone();
                match self.finish(alloc, &Finish::Fail { reason: format!("worker {wid} expired") }).await {
                    Ok((Finished::Released(_), _)) => sum.allocs_released += 1,
                    Ok((Finished::AlreadyReleased | Finished::Renewed, _)) => {}
                    Err(err) => {
                        warn!(pool = %id, worker = %wid, alloc = %a, error = %err, "releasing alloc of expired worker");
                        sum.errors += 1;
                        ok = false;
                    }
                }
            }
            // Only once its allocs are released, so nothing is left holding capacity
            // on a worker that no longer exists; the next run tries again otherwise.
            if ok {
                self.store.delete_worker(id, wid).await?;
                self.queues.delete_queue(&self.worker_queue(id, wid)).await?;
                info!(pool = %id, worker = %wid, "expired worker removed");
                self.emit(|| Change::new(Topic::Worker, id, wid, "removed"));
                sum.workers_removed += 1;
            }
        }

        sum.replicas_removed += self.store.delete_expired_replicas(id, now).await?;
        sum.history_purged += self.store.purge_history(id, now, now - self.settings.history_retention_ms()).await?;
        if pool.status == PoolStatus::Active && pool.limits.counting {
            // A cap set by a process that died before it had counted the live allocs:
            // finish it (each step is idempotent), or the pool would place nothing.
            self.store.set_max_running(id, pool.limits.max_running).await?;
        }
        if pool.status == PoolStatus::Active && self.reconcile_due(pool, now) {
            sum.messages_resent += self.reconcile_pool(pool, now).await?;
        }
        if pool.status == PoolStatus::Active {
            sum.pipelines_swept += self.sweep_pipelines(id, now).await?;
        }
        Ok(())
    }
}

//! The releaser: takes back what stopped being live. For every pool: allocs past their
//! TTL are released (their eval retried or dead-lettered), workers past their TTL are
//! removed with their queue after their allocs are released, expired replicas are
//! deleted, and disbanded pools are purged once `POOL_TTL` has passed. Every step is
//! idempotent, so overlapping runs and a crash mid-way are both fine.

use tracing::{info, warn};

use super::finish::{Finish, Finished};
use super::Lineup;
use crate::error::Result;
use crate::model::PoolStatus;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseSummary {
    pub allocs_released: usize,
    pub workers_removed: usize,
    pub replicas_removed: u64,
    pub pools_purged: usize,
    pub errors: usize,
}

impl Lineup {
    pub async fn release_pass(&self) -> Result<ReleaseSummary> {
        let mut sum = ReleaseSummary::default();
        for pool in self.store.list_pools().await? {
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
                continue;
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
            }

            for alloc in self.store.expired_allocs(id, now).await? {
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
                    sum.workers_removed += 1;
                }
            }

            sum.replicas_removed += self.store.delete_expired_replicas(id, now).await?;
        }
        Ok(sum)
    }
}

//! The driver: one `PoolScheduler` per active pool until a deadline (more on a pool
//! whose backlog outruns one, up to `SchedulerOptions::loops`), the pool list read
//! again as it goes. `lineup dev` runs its own supervisor over the same
//! `PoolScheduler`; the `schedule` function calls `schedule_until`.

use std::collections::HashSet;
use std::time::Duration;

use tracing::{debug, warn};

use super::{PassSummary, PoolScheduler, SchedulerOptions};
use crate::error::Result;
use crate::id::PoolId;
use crate::model::{Pool, PoolStatus};
use crate::service::Lineup;

/// What `schedule_until` did, summed over its pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleSummary {
    pub pools: usize,
    /// Extra loops started on pools whose passes came back full (`SchedulerOptions::loops`).
    pub helpers: usize,
    pub passes: usize,
    pub received: usize,
    pub placed: usize,
    pub blocked: usize,
    pub dropped: usize,
    pub deferred: usize,
    pub errors: usize,
}

impl ScheduleSummary {
    fn add_pass(&mut self, p: &PassSummary) {
        self.passes += 1;
        self.received += p.received;
        self.placed += p.placed;
        self.blocked += p.blocked;
        self.dropped += p.dropped;
        self.deferred += p.deferred;
    }

    fn merge(&mut self, o: &ScheduleSummary) {
        self.helpers += o.helpers;
        self.passes += o.passes;
        self.received += o.received;
        self.placed += o.placed;
        self.blocked += o.blocked;
        self.dropped += o.dropped;
        self.deferred += o.deferred;
        self.errors += o.errors;
    }
}

impl Lineup {
    /// Schedules every active pool (of `opts.shard`, if given) concurrently until
    /// `deadline` (the schedule Lambda passes its own deadline minus a safety margin). No pass starts a long poll that
    /// would outlast the deadline. Overlapping calls are safe.
    ///
    /// The pool list is read again every `opts.pool_refresh`: one invocation runs for
    /// most of a minute, and a pool created meanwhile should not wait for the next.
    pub async fn schedule_until(
        &self,
        deadline: tokio::time::Instant,
        opts: &SchedulerOptions,
    ) -> Result<ScheduleSummary> {
        let mut sum = ScheduleSummary::default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut started: HashSet<PoolId> = HashSet::new();
        let mut first = true;
        loop {
            match self.store.sweep_pools().await {
                Ok(pools) => {
                    let mine = |p: &Pool| opts.shard.is_none_or(|s| s.owns(&p.pool_id));
                    for pool in pools.into_iter().filter(|p| p.status == PoolStatus::Active && mine(p)) {
                        if started.insert(pool.pool_id.clone()) {
                            sum.pools += 1;
                            tasks.spawn(self.clone().schedule_pool_until(pool, deadline, opts.clone()));
                        }
                    }
                }
                // Nothing started yet: the invocation fails and says why.
                Err(e) if first => return Err(e),
                Err(e) => {
                    warn!(error = %e, "listing pools failed; the running pools go on");
                    sum.errors += 1;
                }
            }
            first = false;
            let refresh = tokio::time::Instant::now() + opts.pool_refresh;
            if refresh + Duration::from_secs(1) >= deadline {
                break;
            }
            // Collect the pools that are done (gone, disbanded) while waiting.
            loop {
                tokio::select! {
                    Some(r) = tasks.join_next(), if !tasks.is_empty() => merge_task(&mut sum, r),
                    _ = tokio::time::sleep_until(refresh) => break,
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            merge_task(&mut sum, r);
        }
        Ok(sum)
    }

    async fn schedule_pool_until(
        self,
        pool: Pool,
        deadline: tokio::time::Instant,
        opts: SchedulerOptions,
    ) -> ScheduleSummary {
        let mut s = ScheduleSummary::default();
        let mut helpers = tokio::task::JoinSet::new();
        let mut ps = PoolScheduler::new(self.clone(), pool.clone(), opts.clone());
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_secs(1) || ps.gone {
                break;
            }
            match ps.step(left - Duration::from_secs(1)).await {
                Ok(p) => {
                    s.add_pass(&p);
                    // A full pass: the backlog outruns one loop. Another joins it.
                    if p.received >= opts.batch && helpers.len() + 1 < opts.loops {
                        s.helpers += 1;
                        debug!(pool = %pool.pool_id, loops = helpers.len() + 2, "backlog: another loop");
                        let ps = PoolScheduler::new(self.clone(), pool.clone(), opts.clone());
                        helpers.spawn(Self::help(ps, deadline));
                    }
                }
                Err(e) => {
                    warn!(pool = %ps.pool.pool_id, error = %e, "schedule pass failed");
                    s.errors += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            while let Some(r) = helpers.try_join_next() {
                merge_task(&mut s, r);
            }
        }
        while let Some(r) = helpers.join_next().await {
            merge_task(&mut s, r);
        }
        // The next invocation picks up what this one held (the extra loops' too).
        if let Err(e) = ps.release_held().await {
            warn!(pool = %ps.pool.pool_id, error = %e, "handing back held evals");
            s.errors += 1;
        }
        s
    }

    /// An extra loop on a pool with a backlog: passes until one receives nothing. What
    /// it holds blocked is in the pool's shared set (`Lineup::held_set`), which the
    /// pool's own loop rechecks and hands back at the end; it hands back nothing itself.
    async fn help(mut ps: PoolScheduler, deadline: tokio::time::Instant) -> ScheduleSummary {
        let mut s = ScheduleSummary::default();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_secs(1) || ps.gone {
                break;
            }
            match ps.step(Duration::ZERO).await {
                Ok(p) if p.received == 0 => break,
                Ok(p) => s.add_pass(&p),
                Err(e) => {
                    warn!(pool = %ps.pool.pool_id, error = %e, "schedule pass failed (extra loop)");
                    s.errors += 1;
                    break;
                }
            }
        }
        s
    }
}

fn merge_task(sum: &mut ScheduleSummary, r: std::result::Result<ScheduleSummary, tokio::task::JoinError>) {
    match r {
        Ok(s) => sum.merge(&s),
        Err(e) => {
            warn!(error = %e, "scheduler task failed");
            sum.errors += 1;
        }
    }
}

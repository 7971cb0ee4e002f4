//! The services: what the API, the scheduler loop and the releaser loop (or the three
//! Lambda handlers) call. They hold no state of their own beyond the backend handles,
//! so any number of them may run at once, in one process or many; correctness comes
//! from the store's conditional writes.
//!
//! - `gateway.rs`: pools, workers, heartbeats, polls, eval submit/cancel, complete/fail.
//! - `scheduler/`: receive evals from a pool queue, plan, commit, deliver allocs, hold the blocked.
//! - `limits.rs`: a pool's `max_running`, health coefficients and pushed health.
//! - `releaser.rs`: expire allocs, workers and replicas; purge disbanded pools.
//! - `finish.rs`: the one path by which an alloc gives its capacity back.
//! - `pipelines.rs`: accept, advance (as steps' evals finish), cancel and show pipelines.
//! - `redrive.rs`: send dead evals back to their queue with a fresh retry budget.
//!
//! The ordering rule that keeps evals from being lost: a message that *re-queues* an
//! eval is sent before the write that makes the eval waiting, and a pool-queue message
//! is deleted only after its eval was placed or finished. A crash in between leaves a
//! duplicate or early message, which the scheduler recognises by the eval's attempt
//! number; never a waiting eval without a message.

mod backoff;
mod finish;
mod gateway;
mod health;
mod history;
mod limits;
mod pipelines;
mod reconcile;
mod redrive;
mod releaser;
mod scheduler;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use finish::Finish;
pub use gateway::{
    CancelOutcome, FinishOutcome, HeartbeatRequest, NewEval, RegisteredWorker, SubmitOutcome, MAX_POLL_BATCH,
    MAX_POLL_WAIT,
};
pub use limits::{validate_checks, NewPool, PoolChange, MAX_HEALTH_TTL};
pub use pipelines::{PipelineView, StepView, MAX_PIPELINE_BYTES};
pub use reconcile::{RECONCILE_EVERY_MS, RESEND_AFTER_MS, RESEND_GRACE_MS};
pub use redrive::{RedriveOutcome, MAX_REDRIVE};
pub use releaser::ReleaseSummary;
pub use scheduler::{alloc_message, PassSummary, PoolScheduler, ScheduleSummary, SchedulerOptions, Shard, HOLD};

use crate::auth::{self, Principal};
use crate::backend::{Queues, Store};
use crate::clock::Clock;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::events::{Change, EventLog};
use crate::id::{PoolId, WorkerId};
use crate::model::EvalMessage;

/// The handles every service needs. Cheap to clone.
#[derive(Clone)]
pub struct Lineup {
    pub store: Arc<dyn Store>,
    pub queues: Arc<dyn Queues>,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<Settings>,
    admin_hash: Arc<str>,
    /// Fired when a pool is created, so a local scheduler supervisor starts on it at once.
    pools_changed: Arc<tokio::sync::Notify>,
    /// Bumped when capacity appears in this process (a worker registers, an alloc is
    /// released), so a local scheduler looks at its blocked evals at once rather than
    /// at its next recheck. Other processes (Lambda) rely on the recheck.
    capacity_epoch: Arc<AtomicU64>,
    capacity_notify: Arc<tokio::sync::Notify>,
    /// When each pool was last reconciled by this process (`reconcile.rs`).
    reconciled: Arc<std::sync::Mutex<std::collections::HashMap<PoolId, crate::Millis>>>,
    /// When each pool's running pipelines were last swept by this process (`pipelines.rs`).
    pipelines_swept: Arc<std::sync::Mutex<std::collections::HashMap<PoolId, crate::Millis>>>,
    /// Pools as the scheduler last read them, and when (`scheduler/mod.rs` `current_pool`).
    pool_reads: Arc<std::sync::Mutex<std::collections::HashMap<PoolId, (crate::model::Pool, tokio::time::Instant)>>>,
    /// Reads health checks (`service/health.rs`); `None`: every check is unreadable.
    probe: Option<Arc<dyn crate::health::Probe>>,
    /// Each pool's held (blocked) messages in this process (`scheduler/hold.rs`).
    held_sets: Arc<std::sync::Mutex<std::collections::HashMap<PoolId, scheduler::HeldSet>>>,
    /// Each check's last reading, by pool and check name.
    readings: Arc<std::sync::Mutex<std::collections::HashMap<(PoolId, String), crate::health::Reading>>>,
    /// Where state changes are published (`events.rs`); `None` behind Lambda.
    events: Option<Arc<EventLog>>,
}

impl Lineup {
    /// `admin_token` is hashed here and then forgotten.
    pub fn new(
        store: Arc<dyn Store>,
        queues: Arc<dyn Queues>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        admin_token: &str,
    ) -> Self {
        Self::with_admin_hash(store, queues, clock, settings, &auth::hash(admin_token))
    }

    /// As `new`, given only the admin token's SHA-256 (lowercase hex).
    pub fn with_admin_hash(
        store: Arc<dyn Store>,
        queues: Arc<dyn Queues>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        admin_hash: &str,
    ) -> Self {
        Lineup {
            store,
            queues,
            clock,
            settings: Arc::new(settings),
            admin_hash: admin_hash.into(),
            pools_changed: Arc::new(tokio::sync::Notify::new()),
            capacity_epoch: Arc::new(AtomicU64::new(0)),
            capacity_notify: Arc::new(tokio::sync::Notify::new()),
            reconciled: Arc::default(),
            pipelines_swept: Arc::default(),
            pool_reads: Arc::default(),
            probe: None,
            held_sets: Arc::default(),
            readings: Arc::default(),
            events: None,
        }
    }

    /// Publishes this process's state changes to `log` (`lineup dev`).
    pub fn with_events(mut self, log: Arc<EventLog>) -> Self {
        self.events = Some(log);
        self
    }

    /// The event log, where this process keeps one.
    pub fn events(&self) -> Option<&Arc<EventLog>> {
        self.events.as_ref()
    }

    /// Publishes a change, made only when someone keeps a log.
    fn emit(&self, change: impl FnOnce() -> Change) {
        if let Some(log) = &self.events {
            log.publish(self.now(), change());
        }
    }

    /// Creates what every deployment needs once: the dead-letter queue where the
    /// backend announces dead evals, and otherwise removes one an older version left.
    pub async fn init(&self) -> Result<()> {
        let dlq = self.settings.dead_letter_queue();
        if self.queues.announces_dead_letters() {
            self.queues.create_queue(&dlq).await?;
        } else {
            self.queues.delete_queue(&dlq).await?;
        }
        Ok(())
    }

    pub fn now(&self) -> crate::Millis {
        self.clock.now()
    }

    pub fn pools_changed(&self) -> Arc<tokio::sync::Notify> {
        self.pools_changed.clone()
    }

    /// Resolves a bearer token to who it acts as.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        if auth::hash_matches(token, &self.admin_hash) {
            return Ok(Principal::Admin);
        }
        let Some((pool, worker)) = auth::parse_worker_token(token) else {
            return Err(Error::Unauthorized);
        };
        match self.store.get_worker(&pool, &worker).await? {
            Some(w) if auth::hash_matches(token, &w.token_hash) => Ok(Principal::Worker { pool, worker }),
            _ => Err(Error::Unauthorized),
        }
    }

    /// Capacity appeared: wake blocked messages parked in the pool's queue, and tell
    /// local schedulers holding blocked evals.
    async fn capacity_appeared(&self, pool: &PoolId) -> Result<()> {
        // A capped pool's running count just went down: plan from a fresh read.
        self.forget_pool(pool);
        self.capacity_epoch.fetch_add(1, Ordering::AcqRel);
        self.capacity_notify.notify_waiters();
        self.queues.wake(&self.pool_queue(pool)).await
    }

    fn capacity_epoch(&self) -> u64 {
        self.capacity_epoch.load(Ordering::Acquire)
    }

    /// When a finished eval is purged: the retention after its last change; never for a
    /// pipeline's step (its pipeline reads it; pipelines are not purged yet).
    pub(crate) fn purge_at(&self, finished: &crate::model::Eval) -> Option<crate::Millis> {
        // A pipeline's step is kept while its pipeline runs (it reads its steps' evals);
        // it gets its pipeline's once that ends (`history.rs`).
        finished.step.is_none().then(|| self.retained_until(finished.updated_at))
    }

    /// `changed` plus the retention, in whole seconds: DynamoDB's TTL attribute holds
    /// seconds, and the record must read back exactly as written.
    pub(crate) fn retained_until(&self, changed: crate::Millis) -> crate::Millis {
        let at = changed + self.settings.history_retention_ms();
        (at + 999).div_euclid(1000) * 1000
    }

    fn pool_queue(&self, pool: &PoolId) -> String {
        self.settings.pool_queue(pool)
    }

    fn worker_queue(&self, pool: &PoolId, worker: &WorkerId) -> String {
        self.settings.worker_queue(pool, worker)
    }

    async fn send_eval_message(&self, pool: &PoolId, msg: &EvalMessage) -> Result<()> {
        let body = serde_json::to_string(msg).map_err(|e| Error::backend("encode eval message", e))?;
        self.queues.send(&self.pool_queue(pool), &[body]).await
    }
}

/// Runs `f` on every item, at most `limit` at once; the results in the order they
/// finish. A task that panicked is a backend error naming `what`.
pub(crate) async fn bounded<I, T, F, Fut>(items: I, limit: usize, what: &'static str, f: F) -> Vec<Result<T>>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = items.into_iter();
    let mut out = Vec::new();
    loop {
        while tasks.len() < limit {
            let Some(item) = pending.next() else { break };
            tasks.spawn(f(item));
        }
        match tasks.join_next().await {
            None => return out,
            Some(Ok(r)) => out.push(r),
            Some(Err(join)) => out.push(Err(Error::backend(what, join))),
        }
    }
}

pub(crate) fn require_admin(p: &Principal) -> Result<()> {
    match p {
        Principal::Admin => Ok(()),
        Principal::Worker { .. } => Err(Error::Forbidden("this route needs the admin token".into())),
    }
}

/// The admin, or the worker itself.
pub(crate) fn require_worker(p: &Principal, pool: &PoolId, worker: &WorkerId) -> Result<()> {
    match p {
        Principal::Admin => Ok(()),
        Principal::Worker { pool: p, worker: w } if p == pool && w == worker => Ok(()),
        Principal::Worker { .. } => Err(Error::Forbidden("a worker token acts only for its own worker".into())),
    }
}

//! The backend conformance suite: the same tests for every backend. A backend crate
//! runs them all with one line in a test file:
//!
//! ```text
//! lineup_conformance::conformance_tests!(my_backend_factory);
//! ```
//!
//! where `my_backend_factory()` is an `async fn() -> lineup_conformance::Backend` that
//! returns a fresh, empty backend. Store tests drive the traits directly; service
//! tests drive `Lineup` (the same code the API and the Lambdas run) with a manual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lineup_core::backend::Heartbeat;
use lineup_core::service::{Finish, HeartbeatRequest, NewEval, SchedulerOptions};
use lineup_core::*;

mod admission;
mod crash;
pub mod deployment;
mod driver;
mod history;
mod leases;
pub mod moto;
mod pipeline_service;
mod pipelines;
mod queues;
mod redrive;
mod service;
mod store;

pub use admission::*;
pub use crash::*;
pub use driver::*;
pub use history::*;
pub use leases::*;
pub use pipeline_service::*;
pub use pipelines::*;
pub use queues::*;
pub use redrive::*;
pub use service::*;
pub use store::*;

/// A fresh backend under test.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub queues: Arc<dyn Queues>,
}

/// Generates one `#[tokio::test]` per conformance test, each on a fresh backend from `$factory`.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@each $factory;
            store_pools, store_workers_and_candidates, store_heartbeat, store_heartbeat_many_allocs, store_place_is_atomic,
            store_release_returns_capacity_once, store_renewed_lease_expires_later, store_complete_first, store_lease_decided_once, store_release_without_worker, store_evals,
            store_cancel_placed, store_replicas, store_batches_each_item_alone,
            store_insert_with_message, store_place_and_deliver,
            queue_send_receive_delete, queue_send_many, queue_visibility_and_receive_count, queue_long_poll_wakes,
            queue_gone, queue_wake_parked, queue_batch_of_ten,
            service_original_story, service_locality_and_strategies, service_retry_then_dead,
            service_expired_worker_evals_move, service_redelivered_message_placed_once,
            service_concurrent_schedulers, service_cancel, service_idempotency, service_disband_in_flight,
            service_blocked_reason_and_wake, service_complete_twice, service_held_evals_placed_when_capacity_appears,
            service_stranded_evals_get_their_message_back, service_backlog_gets_more_loops,
            service_idle_pool_only_receives,
            admission_priority_jumps_the_backlog, admission_store_max_running_is_atomic,
            admission_max_running_never_exceeded, admission_health_throttles_and_lapses,
            admission_pulled_health_throttles,
            store_pipelines, store_step_evals_created_once,
            service_pipeline_runs_steps_in_order, service_pipeline_failure_and_cancel, service_continue_later,
            service_redrive, service_history_is_bounded
        );
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $factory().await;
                $crate::$name(backend).await;
            }
        )*
    };
}

pub const T0: Millis = 1_700_000_000_000;

/// A `Lineup` over the backend with a manual clock at `T0` and the default settings.
pub fn lineup(b: &Backend) -> (Lineup, Arc<ManualClock>) {
    lineup_with(b, Settings::default())
}

pub fn lineup_with(b: &Backend, settings: Settings) -> (Lineup, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let l = Lineup::new(b.store.clone(), b.queues.clone(), clock.clone(), settings, "admin-secret");
    (l, clock)
}

/// A long poll of 1 s: SQS counts waits in whole seconds, and a shorter one would be a
/// short poll that spins.
pub fn fast_opts() -> SchedulerOptions {
    SchedulerOptions { wait: Duration::from_secs(1), recheck: Duration::from_secs(1), ..SchedulerOptions::default() }
}

pub const ADMIN: Principal = Principal::Admin;

pub fn new_eval(size: u32, dataset: Option<&str>) -> NewEval {
    NewEval {
        size,
        dataset: dataset.map(str::to_owned),
        payload: None,
        priority: Priority::DEFAULT,
        idempotency_key: None,
    }
}

/// Asserts the capacity invariant for every worker of `pool`: free plus the sizes of
/// its live allocs equals its capacity.
pub async fn assert_capacity_conserved(store: &dyn Store, pool: &PoolId) {
    let allocs = store.live_allocs(pool, None).await.expect("live allocs");
    let mut used: HashMap<WorkerId, u32> = HashMap::new();
    for a in &allocs {
        *used.entry(a.worker_id.clone()).or_default() += a.size;
    }
    for w in store.list_workers(pool).await.expect("workers") {
        let u = used.get(&w.worker_id).copied().unwrap_or(0);
        assert_eq!(
            w.free + u,
            w.capacity,
            "worker {} free {} + live {} != capacity {}",
            w.worker_id,
            w.free,
            u,
            w.capacity
        );
    }
}

/// Runs scheduler passes until `cond` holds or `deadline` passes.
pub async fn schedule_until(l: &Lineup, pool: &Pool, deadline: Duration, mut cond: impl FnMut(&PassSummary) -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    let mut total = PassSummary::default();
    loop {
        let s = l.schedule_pass(pool, &fast_opts()).await.expect("schedule pass");
        total.add(&s);
        if cond(&total) {
            return;
        }
        assert!(tokio::time::Instant::now() < end, "condition not reached in {deadline:?}; so far {total:?}");
    }
}

use lineup_core::service::PassSummary;

pub fn hb(pool: &PoolId, worker: &WorkerId, now: Millis, datasets: &[&str], allocs: &[AllocId]) -> Heartbeat {
    Heartbeat {
        pool: pool.clone(),
        worker: worker.clone(),
        now,
        ttl: now + 60_000,
        datasets: datasets.iter().map(|s| s.to_string()).collect(),
        replica_ttl: now + 30_000,
        allocs: allocs.to_vec(),
        alloc_ttl: now + 30_000,
    }
}

pub fn hb_req(datasets: &[&str], allocs: &[AllocId]) -> HeartbeatRequest {
    HeartbeatRequest { datasets: datasets.iter().map(|s| s.to_string()).collect(), allocs: allocs.to_vec() }
}

pub fn complete(code: i32) -> Finish {
    Finish::Complete { exit_code: code, output: Some("done".into()) }
}

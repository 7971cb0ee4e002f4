//! `Store` and `Queues` decorators that count every operation and its failures
//! (`metrics::backend_call`), the same on every backend. `lineup dev` and the Lambdas
//! wrap their backend in them; without a recorder installed they cost a branch. A
//! simulation may give them a `latency`, added to every call, to run the real code
//! against a fast local backend as if it were a remote one (the product leaves it zero).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{Claim, Completion, Heartbeat, Placement, Queues, Received, Store};
use crate::error::Result;
use crate::id::{AllocId, EvalId, PipelineId, PoolId, WorkerId};
use crate::model::{Alloc, Eval, EvalStatus, Millis, Pool, PoolStats, Replica, Worker};
use crate::pipeline::{Pipeline, PipelineStatus};

async fn pause(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

async fn m<T>(
    backend: &'static str,
    latency: Duration,
    op: &'static str,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    pause(latency).await;
    let r = f.await;
    crate::metrics::backend_call(backend, op, r.as_ref().err());
    r
}

/// Counts `inner`'s operations under `backend` ("sqlite", "dynamodb", "sqs").
pub struct MeteredStore {
    pub inner: Arc<dyn Store>,
    pub backend: &'static str,
    /// Added to every call (simulations only; zero in the product).
    pub latency: Duration,
}

#[async_trait]
impl Store for MeteredStore {
    async fn create_pool(&self, pool: &Pool) -> Result<()> {
        m(self.backend, self.latency, "create_pool", self.inner.create_pool(pool)).await
    }
    async fn get_pool(&self, pool: &PoolId) -> Result<Option<Pool>> {
        m(self.backend, self.latency, "get_pool", self.inner.get_pool(pool)).await
    }
    async fn list_pools(&self) -> Result<Vec<Pool>> {
        m(self.backend, self.latency, "list_pools", self.inner.list_pools()).await
    }
    async fn sweep_pools(&self) -> Result<Vec<Pool>> {
        m(self.backend, self.latency, "sweep_pools", self.inner.sweep_pools()).await
    }
    async fn disband_pool(&self, pool: &PoolId, now: Millis) -> Result<Pool> {
        m(self.backend, self.latency, "disband_pool", self.inner.disband_pool(pool, now)).await
    }
    async fn purge_pool(&self, pool: &PoolId) -> Result<()> {
        m(self.backend, self.latency, "purge_pool", self.inner.purge_pool(pool)).await
    }
    async fn pool_stats(&self, pool: &PoolId, now: Millis) -> Result<PoolStats> {
        m(self.backend, self.latency, "pool_stats", self.inner.pool_stats(pool, now)).await
    }
    async fn set_max_running(&self, pool: &PoolId, max_running: Option<u32>) -> Result<Pool> {
        m(self.backend, self.latency, "set_max_running", self.inner.set_max_running(pool, max_running)).await
    }
    async fn set_health(
        &self,
        pool: &PoolId,
        coefficients: crate::admission::Coefficients,
        pushed: Option<crate::admission::Pushed>,
        checks: &[crate::health::HealthCheck],
    ) -> Result<Pool> {
        m(self.backend, self.latency, "set_health", self.inner.set_health(pool, coefficients, pushed, checks)).await
    }
    async fn register_worker(&self, worker: &Worker) -> Result<()> {
        m(self.backend, self.latency, "register_worker", self.inner.register_worker(worker)).await
    }
    async fn get_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<Option<Worker>> {
        m(self.backend, self.latency, "get_worker", self.inner.get_worker(pool, worker)).await
    }
    async fn list_workers(&self, pool: &PoolId) -> Result<Vec<Worker>> {
        m(self.backend, self.latency, "list_workers", self.inner.list_workers(pool)).await
    }
    async fn candidates(&self, pool: &PoolId, min_free: u32, now: Millis) -> Result<Vec<Worker>> {
        m(self.backend, self.latency, "candidates", self.inner.candidates(pool, min_free, now)).await
    }
    async fn expired_workers(&self, pool: &PoolId, now: Millis) -> Result<Vec<Worker>> {
        m(self.backend, self.latency, "expired_workers", self.inner.expired_workers(pool, now)).await
    }
    async fn delete_worker(&self, pool: &PoolId, worker: &WorkerId) -> Result<()> {
        m(self.backend, self.latency, "delete_worker", self.inner.delete_worker(pool, worker)).await
    }
    async fn heartbeat(&self, hb: &Heartbeat) -> Result<Vec<AllocId>> {
        m(self.backend, self.latency, "heartbeat", self.inner.heartbeat(hb)).await
    }
    async fn replicas(&self, pool: &PoolId, datasets: &[String], now: Millis) -> Result<Vec<Replica>> {
        m(self.backend, self.latency, "replicas", self.inner.replicas(pool, datasets, now)).await
    }
    async fn delete_expired_replicas(&self, pool: &PoolId, now: Millis) -> Result<u64> {
        m(self.backend, self.latency, "delete_expired_replicas", self.inner.delete_expired_replicas(pool, now)).await
    }
    async fn purge_history(&self, pool: &PoolId, now: Millis, released_before: Millis) -> Result<u64> {
        m(self.backend, self.latency, "purge_history", self.inner.purge_history(pool, now, released_before)).await
    }
    async fn insert_eval(&self, eval: &Eval) -> Result<Option<Eval>> {
        m(self.backend, self.latency, "insert_eval", self.inner.insert_eval(eval)).await
    }
    async fn insert_eval_with_message(&self, eval: &Eval, queue: &str, body: &str) -> Option<Result<Option<Eval>>> {
        pause(self.latency).await;
        let r = self.inner.insert_eval_with_message(eval, queue, body).await?;
        crate::metrics::backend_call(self.backend, "insert_eval_with_message", r.as_ref().err());
        Some(r)
    }
    fn insert_checks_pool(&self) -> bool {
        self.inner.insert_checks_pool()
    }
    async fn get_eval(&self, pool: &PoolId, eval: &EvalId) -> Result<Option<Eval>> {
        m(self.backend, self.latency, "get_eval", self.inner.get_eval(pool, eval)).await
    }
    async fn find_eval_by_key(&self, pool: &PoolId, key: &str) -> Result<Option<Eval>> {
        m(self.backend, self.latency, "find_eval_by_key", self.inner.find_eval_by_key(pool, key)).await
    }
    async fn get_evals(&self, pool: &PoolId, ids: &[EvalId]) -> Result<Vec<Eval>> {
        m(self.backend, self.latency, "get_evals", self.inner.get_evals(pool, ids)).await
    }
    async fn list_evals(&self, pool: &PoolId, status: Option<EvalStatus>, limit: usize) -> Result<Vec<Eval>> {
        m(self.backend, self.latency, "list_evals", self.inner.list_evals(pool, status, limit)).await
    }
    async fn unfinished_evals(&self, pool: &PoolId) -> Result<Vec<Eval>> {
        m(self.backend, self.latency, "unfinished_evals", self.inner.unfinished_evals(pool)).await
    }
    async fn update_eval(&self, eval: &Eval, expected_version: u64) -> Result<()> {
        m(self.backend, self.latency, "update_eval", self.inner.update_eval(eval, expected_version)).await
    }
    async fn update_evals(&self, evals: &[(Eval, u64)]) -> Result<Vec<Result<()>>> {
        m(self.backend, self.latency, "update_evals", self.inner.update_evals(evals)).await
    }
    async fn insert_pipeline(&self, p: &Pipeline) -> Result<Option<Pipeline>> {
        m(self.backend, self.latency, "insert_pipeline", self.inner.insert_pipeline(p)).await
    }
    async fn get_pipeline(&self, pool: &PoolId, id: &PipelineId) -> Result<Option<Pipeline>> {
        m(self.backend, self.latency, "get_pipeline", self.inner.get_pipeline(pool, id)).await
    }
    async fn list_pipelines(
        &self,
        pool: &PoolId,
        status: Option<PipelineStatus>,
        limit: usize,
    ) -> Result<Vec<Pipeline>> {
        m(self.backend, self.latency, "list_pipelines", self.inner.list_pipelines(pool, status, limit)).await
    }
    async fn update_pipeline(&self, p: &Pipeline, expected_version: u64) -> Result<()> {
        m(self.backend, self.latency, "update_pipeline", self.inner.update_pipeline(p, expected_version)).await
    }
    async fn get_alloc(&self, pool: &PoolId, alloc: &AllocId) -> Result<Option<Alloc>> {
        m(self.backend, self.latency, "get_alloc", self.inner.get_alloc(pool, alloc)).await
    }
    async fn get_allocs(&self, pool: &PoolId, ids: &[AllocId]) -> Result<Vec<Alloc>> {
        m(self.backend, self.latency, "get_allocs", self.inner.get_allocs(pool, ids)).await
    }
    async fn live_allocs(&self, pool: &PoolId, worker: Option<&WorkerId>) -> Result<Vec<Alloc>> {
        m(self.backend, self.latency, "live_allocs", self.inner.live_allocs(pool, worker)).await
    }
    async fn expired_allocs(&self, pool: &PoolId, now: Millis) -> Result<Vec<Alloc>> {
        m(self.backend, self.latency, "expired_allocs", self.inner.expired_allocs(pool, now)).await
    }
    async fn place(&self, alloc: &Alloc, eval: &Eval, expected_version: u64, claim: Claim, now: Millis) -> Result<()> {
        m(self.backend, self.latency, "place", self.inner.place(alloc, eval, expected_version, claim, now)).await
    }
    async fn place_many(&self, items: &[(Alloc, Eval, u64)], claim: Claim, now: Millis) -> Result<Vec<Result<()>>> {
        m(self.backend, self.latency, "place_many", self.inner.place_many(items, claim, now)).await
    }
    async fn place_and_deliver(
        &self,
        pool_queue: &str,
        items: &[Placement],
        claim: Claim,
        now: Millis,
    ) -> Option<Result<Vec<Result<()>>>> {
        pause(self.latency).await;
        let r = self.inner.place_and_deliver(pool_queue, items, claim, now).await?;
        crate::metrics::backend_call(self.backend, "place_and_deliver", r.as_ref().err());
        Some(r)
    }
    async fn release(&self, alloc: &Alloc, eval: Option<(&Eval, u64)>, expired_by: Option<Millis>) -> Result<()> {
        m(self.backend, self.latency, "release", self.inner.release(alloc, eval, expired_by)).await
    }
    async fn complete_first(&self, alloc: &Alloc, done: &Completion) -> Option<Result<Option<Eval>>> {
        pause(self.latency).await;
        let r = self.inner.complete_first(alloc, done).await?;
        crate::metrics::backend_call(self.backend, "complete_first", r.as_ref().err());
        Some(r)
    }
    async fn cancel_placed(&self, eval: &Eval, expected_version: u64, alloc: &AllocId) -> Result<()> {
        m(self.backend, self.latency, "cancel_placed", self.inner.cancel_placed(eval, expected_version, alloc)).await
    }
}

/// Counts `inner`'s queue operations under `backend`.
pub struct MeteredQueues {
    pub inner: Arc<dyn Queues>,
    pub backend: &'static str,
    /// Added to every call (simulations only; zero in the product).
    pub latency: Duration,
}

#[async_trait]
impl Queues for MeteredQueues {
    async fn create_queue(&self, name: &str) -> Result<String> {
        m(self.backend, self.latency, "create_queue", self.inner.create_queue(name)).await
    }
    async fn delete_queue(&self, name: &str) -> Result<()> {
        m(self.backend, self.latency, "delete_queue", self.inner.delete_queue(name)).await
    }
    async fn send(&self, name: &str, bodies: &[String]) -> Result<()> {
        m(self.backend, self.latency, "send", self.inner.send(name, bodies)).await
    }
    async fn send_many(&self, batches: &[(String, Vec<String>)]) -> Vec<Result<()>> {
        pause(self.latency).await;
        let out = self.inner.send_many(batches).await;
        for r in &out {
            crate::metrics::backend_call(self.backend, "send", r.as_ref().err());
        }
        out
    }
    async fn receive(&self, name: &str, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Received>> {
        m(self.backend, self.latency, "receive", self.inner.receive(name, max, wait, visibility)).await
    }
    async fn delete(&self, name: &str, receipts: &[String]) -> Result<()> {
        m(self.backend, self.latency, "delete", self.inner.delete(name, receipts)).await
    }
    async fn change_visibility(&self, name: &str, changes: &[(String, Duration)], parked: bool) -> Result<()> {
        m(self.backend, self.latency, "change_visibility", self.inner.change_visibility(name, changes, parked)).await
    }
    async fn depth(&self, name: &str) -> Result<Option<u64>> {
        m(self.backend, self.latency, "depth", self.inner.depth(name)).await
    }
    async fn wake(&self, name: &str) -> Result<()> {
        m(self.backend, self.latency, "wake", self.inner.wake(name)).await
    }
    fn announces_dead_letters(&self) -> bool {
        self.inner.announces_dead_letters()
    }
}

//! The driver (`Lineup::schedule_until`, what the `schedule` function runs): a pool
//! whose backlog outruns one loop gets more, an idle pool keeps one.

use std::collections::HashSet;
use std::time::Duration;

use lineup_core::service::SchedulerOptions;
use lineup_core::*;

use crate::{assert_capacity_conserved, fast_opts, lineup, new_eval, pool_with, worker, Backend, ADMIN};

/// A backlog in one pool, another pool idle: the busy pool's full passes start extra
/// loops (at most `loops` at once), and every eval is placed exactly once.
pub async fn service_backlog_gets_more_loops(b: Backend) {
    let (l, _clock) = lineup(&b);
    let hot = pool_with(&l, Strategy::Spread).await;
    let idle = pool_with(&l, Strategy::Spread).await;
    for _ in 0..3 {
        worker(&l, &hot, 40).await;
    }
    worker(&l, &idle, 5).await;
    const N: usize = 60;
    for _ in 0..N {
        l.submit_eval(&ADMIN, &hot.pool_id, new_eval(1, None)).await.unwrap();
    }
    // Passes of 10 against a backlog of 60: the first comes back full.
    let opts = SchedulerOptions { batch: 10, wait: Duration::from_millis(200), loops: 3, ..fast_opts() };
    // schedule_until runs to its deadline: long enough for 60 placements on a faulty emulator.
    let sum = l.schedule_until(tokio::time::Instant::now() + Duration::from_secs(15), &opts).await.unwrap();
    assert_eq!(sum.pools, 2, "{sum:?}");
    assert!(sum.helpers >= 1, "no extra loop for a backlog: {sum:?}");
    assert_eq!(sum.placed, N, "{sum:?}");

    let placed = l.store.list_evals(&hot.pool_id, Some(EvalStatus::Placed), 1_000).await.unwrap();
    assert_eq!(placed.len(), N);
    let allocs = l.store.live_allocs(&hot.pool_id, None).await.unwrap();
    let evals: HashSet<&EvalId> = allocs.iter().map(|a| &a.eval_id).collect();
    assert_eq!((allocs.len(), evals.len()), (N, N), "an eval placed twice");
    assert!(l.store.live_allocs(&idle.pool_id, None).await.unwrap().is_empty());
    assert_capacity_conserved(l.store.as_ref(), &hot.pool_id).await;
}

/// An idle pool's loop, for a whole invocation, only receives: no hand-back of held
/// evals it does not have, no send, no delete (each would be a call per idle pool per
/// minute, 10,000 pools over).
pub async fn service_idle_pool_only_receives(b: Backend) {
    let counted = std::sync::Arc::new(CountingQueues { inner: b.queues.clone(), calls: Default::default() });
    let b = Backend { store: b.store.clone(), queues: counted.clone() };
    let (l, _clock) = lineup(&b);
    let idle = pool_with(&l, Strategy::Spread).await;
    worker(&l, &idle, 5).await;
    counted.calls.lock().unwrap().clear();
    let sum = l.schedule_until(tokio::time::Instant::now() + Duration::from_secs(3), &fast_opts()).await.unwrap();
    assert_eq!((sum.pools, sum.placed), (1, 0), "{sum:?}");
    let calls = counted.calls.lock().unwrap().clone();
    assert!(calls.get("receive").copied().unwrap_or(0) >= 1, "{calls:?}");
    assert_eq!(calls.keys().copied().collect::<Vec<_>>(), vec!["receive"], "an idle pool made other calls: {calls:?}");
}

/// `inner`, counting its calls by operation.
pub struct CountingQueues {
    pub inner: std::sync::Arc<dyn Queues>,
    pub calls: std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>,
}

impl CountingQueues {
    fn count(&self, op: &'static str) {
        *self.calls.lock().unwrap_or_else(|e| e.into_inner()).entry(op).or_default() += 1;
    }
}

#[async_trait::async_trait]
impl Queues for CountingQueues {
    async fn create_queue(&self, name: &str) -> Result<String> {
        self.count("create_queue");
        self.inner.create_queue(name).await
    }
    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.count("delete_queue");
        self.inner.delete_queue(name).await
    }
    async fn send(&self, name: &str, bodies: &[String]) -> Result<()> {
        self.count("send");
        self.inner.send(name, bodies).await
    }
    async fn send_many(&self, batches: &[(String, Vec<String>)]) -> Vec<Result<()>> {
        self.count("send");
        self.inner.send_many(batches).await
    }
    async fn receive(&self, name: &str, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Received>> {
        self.count("receive");
        self.inner.receive(name, max, wait, visibility).await
    }
    async fn delete(&self, name: &str, receipts: &[String]) -> Result<()> {
        self.count("delete");
        self.inner.delete(name, receipts).await
    }
    async fn change_visibility(&self, name: &str, changes: &[(String, Duration)], parked: bool) -> Result<()> {
        self.count("change_visibility");
        self.inner.change_visibility(name, changes, parked).await
    }
    async fn depth(&self, name: &str) -> Result<Option<u64>> {
        self.count("depth");
        self.inner.depth(name).await
    }
    async fn wake(&self, name: &str) -> Result<()> {
        self.count("wake");
        self.inner.wake(name).await
    }
    fn announces_dead_letters(&self) -> bool {
        self.inner.announces_dead_letters()
    }
}

//! What the agent knows of its allocs: the running ones (with the handle that stops
//! each and when its lease was last renewed) and the recently finished ones (with how
//! they ended, to report again if the alloc is delivered again).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How many finished allocs are remembered for duplicate deliveries. SQS redelivers
/// within the visibility timeout; a thousand covers that at any sane rate.
const FINISHED_KEPT: usize = 1_000;

/// How an alloc ended, as reported.
#[derive(Debug, Clone)]
pub enum Outcome {
    Complete(String),
    Failed(String),
    /// Finished for now: run again after `after` seconds with `state`.
    Continue {
        after: u64,
        state: Option<serde_json::Value>,
        output: String,
    },
}

/// What a delivery is to this agent.
pub enum Delivery {
    New,
    Running,
    Finished(Outcome),
}

struct Job {
    /// `None` once asked to stop.
    stop: Option<oneshot::Sender<String>>,
    renewed: Instant,
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Job>,
    finished: HashMap<String, Outcome>,
    order: VecDeque<String>,
}

#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
    /// A job whose lease was not renewed for this long is stopped.
    fence: Duration,
}

impl Ledger {
    /// `alloc_ttl`: the server's lease; `grace`: how long a stop may take. The fence
    /// leaves the grace and a second before the server may release the alloc, but never
    /// less than two thirds of the TTL (two missed heartbeats).
    pub fn new(alloc_ttl: Duration, grace: Duration) -> Ledger {
        let fence = alloc_ttl.saturating_sub(grace + Duration::from_secs(1)).max(alloc_ttl * 2 / 3);
        Ledger { inner: Arc::default(), fence }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn delivered(&self, id: &str) -> Delivery {
        let inner = self.lock();
        if inner.running.contains_key(id) {
            Delivery::Running
        } else if let Some(o) = inner.finished.get(id) {
            Delivery::Finished(o.clone())
        } else {
            Delivery::New
        }
    }

    /// Records a new running job; false if it is already known (a duplicate that raced).
    pub fn start(&self, id: &str, stop: oneshot::Sender<String>) -> bool {
        let mut inner = self.lock();
        if inner.running.contains_key(id) || inner.finished.contains_key(id) {
            return false;
        }
        inner.running.insert(id.to_owned(), Job { stop: Some(stop), renewed: Instant::now() });
        true
    }

    pub fn finished(&self, id: &str, outcome: Outcome) {
        let mut inner = self.lock();
        inner.running.remove(id);
        inner.finished.insert(id.to_owned(), outcome);
        inner.order.push_back(id.to_owned());
        while inner.order.len() > FINISHED_KEPT {
            if let Some(old) = inner.order.pop_front() {
                inner.finished.remove(&old);
            }
        }
    }

    pub fn running(&self) -> Vec<String> {
        self.lock().running.keys().cloned().collect()
    }

    /// Asks the job to stop; true if it was running and not yet asked.
    pub fn stop(&self, id: &str, why: &str) -> bool {
        match self.lock().running.get_mut(id).and_then(|j| j.stop.take()) {
            Some(tx) => tx.send(why.to_owned()).is_ok(),
            None => false,
        }
    }

    pub fn stop_all(&self, why: &str) {
        for j in self.lock().running.values_mut() {
            if let Some(tx) = j.stop.take() {
                let _ = tx.send(why.to_owned());
            }
        }
    }

    /// A heartbeat sent at `at` listing `listed` succeeded; the server refused to renew
    /// `refused`.
    pub fn renewed(&self, listed: &[String], refused: &[String], at: Instant) {
        let mut inner = self.lock();
        for id in listed.iter().filter(|id| !refused.contains(id)) {
            if let Some(j) = inner.running.get_mut(id) {
                j.renewed = j.renewed.max(at);
            }
        }
    }

    /// Stops the jobs whose lease was not renewed within the fence at `now`; returns them.
    pub fn stop_unrenewed(&self, now: Instant) -> Vec<String> {
        let mut stopped = Vec::new();
        for (id, j) in self.lock().running.iter_mut() {
            if now.duration_since(j.renewed) >= self.fence {
                if let Some(tx) = j.stop.take() {
                    let _ = tx.send("stopped: the agent could not renew the alloc's lease in time".into());
                    stopped.push(id.clone());
                }
            }
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_finished() {
        let l = Ledger::new(Duration::from_secs(30), Duration::from_secs(5));
        assert!(matches!(l.delivered("a"), Delivery::New));
        let (tx, mut rx) = oneshot::channel();
        assert!(l.start("a", tx));
        assert!(matches!(l.delivered("a"), Delivery::Running));
        let (tx2, _) = oneshot::channel();
        assert!(!l.start("a", tx2), "a second start of a running alloc");
        assert!(l.stop("a", "why"));
        assert!(!l.stop("a", "again"), "asked once");
        assert_eq!(rx.try_recv().unwrap(), "why");
        l.finished("a", Outcome::Failed("why".into()));
        assert!(matches!(l.delivered("a"), Delivery::Finished(Outcome::Failed(_))));
        assert!(l.running().is_empty());
        for i in 0..FINISHED_KEPT {
            l.finished(&format!("x{i}"), Outcome::Complete(String::new()));
        }
        assert!(matches!(l.delivered("a"), Delivery::New), "forgotten after {FINISHED_KEPT}");
    }

    #[test]
    fn unrenewed_leases_are_stopped_before_the_ttl() {
        let l = Ledger::new(Duration::from_secs(30), Duration::from_secs(5));
        let (tx, _rx) = oneshot::channel();
        l.start("a", tx);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        l.renewed(&["a".into()], &[], t0 + s(20));
        assert!(l.stop_unrenewed(t0 + s(43)).is_empty(), "renewed 23 s before: the fence is 24 s");
        assert_eq!(l.stop_unrenewed(t0 + s(44)), vec!["a".to_owned()]);
        assert!(l.stop_unrenewed(t0 + s(50)).is_empty(), "stopped once");
    }
}

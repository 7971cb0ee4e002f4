//! The event stream: state changes of evals, allocs, workers and pools made by this
//! process, each with an increasing index, kept in a bounded history so a reader that
//! reconnects with the last index it saw resumes without a gap (`GET /v1/events`).
//!
//! Indexes start at the process's start time in microseconds, so they keep increasing
//! across restarts of `lineup dev`: a reader that resumes from an index of an earlier
//! process is told that history was lost, never handed events it already has.
//! Only this process's changes are seen: `lineup dev` runs the API, the scheduler and
//! the releaser in one process; behind Lambda each invocation is its own process and
//! the stream is not served.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::watch;

use crate::id::{PoolId, WorkerId};
use crate::model::Millis;

/// How many events are kept for readers that resume.
pub const HISTORY: usize = 10_000;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    Eval,
    Alloc,
    Worker,
    Pool,
}

impl Topic {
    pub const ALL: [Topic; 4] = [Topic::Eval, Topic::Alloc, Topic::Worker, Topic::Pool];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Eval => "eval",
            Topic::Alloc => "alloc",
            Topic::Worker => "worker",
            Topic::Pool => "pool",
        }
    }

    pub fn parse(s: &str) -> crate::Result<Topic> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            crate::Error::invalid("invalid_type", format!("unknown event type {s:?}: one of eval, alloc, worker, pool"))
        })
    }
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub index: u64,
    /// When it happened (ms since the epoch).
    pub at: Millis,
    #[serde(rename = "type")]
    pub topic: Topic,
    pub pool_id: PoolId,
    /// The eval, alloc, worker or pool id.
    pub id: String,
    /// The new state: an eval's status; an alloc's `live` / `released`; a worker's
    /// `registered` / `removed`; a pool's `active` / `changed` / `disbanded`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An event before the log gives it its index and time.
#[derive(Debug, Clone)]
pub struct Change {
    pub topic: Topic,
    pub pool_id: PoolId,
    pub id: String,
    pub state: String,
    pub attempt: Option<u32>,
    pub worker_id: Option<WorkerId>,
    pub reason: Option<String>,
}

impl Change {
    pub fn new(topic: Topic, pool_id: &PoolId, id: impl ToString, state: impl Into<String>) -> Change {
        Change {
            topic,
            pool_id: pool_id.clone(),
            id: id.to_string(),
            state: state.into(),
            attempt: None,
            worker_id: None,
            reason: None,
        }
    }

    pub fn eval(e: &crate::model::Eval) -> Change {
        Change {
            attempt: Some(e.attempt),
            worker_id: e.worker_id.clone().filter(|_| e.status == crate::model::EvalStatus::Placed),
            reason: e.reason.clone(),
            ..Change::new(Topic::Eval, &e.pool_id, &e.eval_id, e.status.as_str())
        }
    }

    pub fn alloc(a: &crate::model::Alloc, state: &str) -> Change {
        Change {
            attempt: Some(a.attempt),
            worker_id: Some(a.worker_id.clone()),
            ..Change::new(Topic::Alloc, &a.pool_id, &a.alloc_id, state)
        }
    }
}

/// What a reader asked for from `index` on.
#[derive(Debug, PartialEq)]
pub struct Since {
    pub events: Vec<Event>,
    /// The last index looked at (matched or not): where the reader goes on from.
    pub upto: u64,
    /// Events after the reader's index were dropped from the history before it came back.
    pub lost: bool,
}

/// The bounded history and a signal of its newest index.
pub struct EventLog {
    inner: Mutex<Inner>,
    newest: watch::Sender<u64>,
    capacity: usize,
    /// Set at shutdown: open streams end (else they would hold the server's drain).
    closed: std::sync::atomic::AtomicBool,
}

struct Inner {
    events: VecDeque<Event>,
    next: u64,
}

impl EventLog {
    /// `first`: the first index (the process's start in µs, say).
    pub fn new(first: u64, capacity: usize) -> EventLog {
        let (newest, _) = watch::channel(first.saturating_sub(1));
        EventLog {
            inner: Mutex::new(Inner { events: VecDeque::with_capacity(capacity.min(1024)), next: first }),
            newest,
            capacity: capacity.max(1),
            closed: Default::default(),
        }
    }

    /// Ends every open stream (they see `is_closed` when they wake).
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.newest.send_modify(|_| {});
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn publish(&self, at: Millis, c: Change) {
        let index = {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let index = g.next;
            g.next += 1;
            if g.events.len() == self.capacity {
                g.events.pop_front();
            }
            g.events.push_back(Event {
                index,
                at,
                topic: c.topic,
                pool_id: c.pool_id,
                id: c.id,
                state: c.state,
                attempt: c.attempt,
                worker_id: c.worker_id,
                reason: c.reason,
            });
            index
        };
        self.newest.send_replace(index);
    }

    /// The newest index given out (one less than the first when none was).
    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// Wakes when an event is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// Events with an index above `after`, at most `max`, that `keep` accepts.
    pub fn since(&self, after: u64, max: usize, keep: impl Fn(&Event) -> bool) -> Since {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = g.events.front().map_or(g.next, |e| e.index);
        let newest = g.next.saturating_sub(1);
        // The reader saw `after`: it lost something if the next one it needs is gone, or
        // if `after` is not one of ours (newer than any: a clock that went back).
        let lost = after > newest || after.saturating_add(1) < oldest;
        let after = if lost { oldest.saturating_sub(1) } else { after };
        let start = g.events.partition_point(|e| e.index <= after);
        let mut events = Vec::new();
        let mut upto = after;
        for e in g.events.range(start..) {
            if events.len() == max {
                break;
            }
            upto = e.index;
            if keep(e) {
                events.push(e.clone());
            }
        }
        Since { events, upto, lost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u32) -> Change {
        Change { attempt: Some(n), ..Change::new(Topic::Eval, &PoolId::generate(), n, "queued") }
    }

    #[test]
    fn readers_resume_after_their_index_and_learn_of_lost_history() {
        let log = EventLog::new(100, 3);
        assert_eq!(log.newest(), 99);
        assert_eq!(log.since(99, 10, |_| true), Since { events: vec![], upto: 99, lost: false });
        for n in 0..5 {
            log.publish(1, change(n));
        }
        assert_eq!(log.newest(), 104);
        let s = log.since(102, 10, |_| true);
        assert_eq!((s.events.iter().map(|e| e.index).collect::<Vec<_>>(), s.lost), (vec![103, 104], false));
        let s = log.since(101, 10, |_| true);
        assert_eq!((s.events.iter().map(|e| e.index).collect::<Vec<_>>(), s.lost), (vec![102, 103, 104], false));
        // 101 was dropped: a reader that saw only 100 lost it.
        let s = log.since(100, 10, |_| true);
        assert_eq!((s.events.len(), s.lost), (3, true));
        // A reader from an earlier process (a smaller index) lost what happened since.
        assert!(log.since(7, 10, |_| true).lost);
        // An index from the future is not ours: start over from the oldest.
        assert_eq!((log.since(500, 10, |_| true).events.len(), log.since(500, 10, |_| true).lost), (3, true));
        // Up to date: nothing, nothing lost; filters and limits apply.
        assert_eq!(log.since(104, 10, |_| true), Since { events: vec![], upto: 104, lost: false });
        let s = log.since(101, 1, |e| e.attempt == Some(3));
        assert_eq!((s.events.len(), s.upto), (1, 103), "the first match, and the skipped event before it");
        let s = log.since(101, 10, |_| false);
        assert_eq!((s.events.len(), s.upto), (0, 104), "nothing matched: the reader moves past them all");
    }
}

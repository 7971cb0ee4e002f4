//! The planner: a batch of waiting evals and a snapshot of the pool in, a `Plan` out.
//! Pure (no I/O, no clock, no randomness), as Nomad's scheduler is: the service reads
//! the snapshot, asks for a plan, and a backend commits it (`service/scheduler/commit.rs`),
//! each placement atomically and conditioned on what the snapshot assumed. A plan built
//! on a stale snapshot loses some claims; it never breaks an invariant.
//!
//! Order: higher priority first; equal priorities by arrival (creation time, then id,
//! which starts with the time). Each eval goes through admission (the pool's limit on
//! allocs running at once, if any) and then placement (`placement::best`); each choice
//! takes its size off the local view, so one batch never overfills a worker or a limit.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::id::WorkerId;
use crate::model::{Eval, Millis, Strategy};
use crate::placement::{self, Candidate};

/// Why an eval waits. Typed until the API or the eval record renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// No live worker has room for it.
    Capacity(placement::Blocked),
    /// The pool's `max_running` (scaled by its health) is reached.
    Limit(Limit),
    /// Claims on workers that looked free kept losing races to other schedulers.
    Contended,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::Capacity(b) => b.fmt(f),
            Blocked::Limit(l) => l.fmt(f),
            Blocked::Contended => write!(f, "blocked: capacity claims kept losing races; will retry"),
        }
    }
}

impl From<placement::Blocked> for Blocked {
    fn from(b: placement::Blocked) -> Self {
        Blocked::Capacity(b)
    }
}

/// A pool's admission limit as the snapshot saw it: at most `limit` allocs live at
/// once, `running` of them counted now (`admission::PoolLimits::limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub running: u32,
    pub limit: u32,
    pub max_running: Option<u32>,
    /// The health level that lowered the limit, and its source, rendered
    /// ("health 2 (pushed)"); `None` when health does not limit.
    pub health: Option<String>,
    /// A new cap's running allocs are being counted: nothing is placed meanwhile.
    pub counting: bool,
}

impl Limit {
    /// How many more allocs the limit lets start.
    pub fn slots(&self) -> u32 {
        if self.counting {
            0
        } else {
            self.limit.saturating_sub(self.running)
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.health, self.max_running) {
            _ if self.counting => write!(
                f,
                "capped: counting the running allocs for the new max_running {}",
                self.max_running.unwrap_or(self.limit)
            ),
            (Some(h), Some(max)) => write!(f, "throttled: {h} → limit {} of max_running {max}", self.limit),
            (Some(h), None) => write!(f, "throttled: {h} → no new placements"),
            (None, max) => {
                write!(f, "capped: {} running of max_running {}", self.running, max.unwrap_or(self.limit))
            }
        }
    }
}

/// What the planner knows of the pool.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub strategy: Strategy,
    pub now: Millis,
    /// Live workers with room (and perhaps some without: they count for the reason).
    pub candidates: Vec<Candidate>,
    /// For each dataset the batch asks for, the workers holding a live replica.
    pub holders: HashMap<String, HashSet<WorkerId>>,
    /// The pool's admission limit, if it has one.
    pub limit: Option<Limit>,
    /// What the store must check of the pool for each placement.
    pub claim: crate::backend::Claim,
}

/// One placement: `batch[item]` goes to `candidates[worker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub item: usize,
    pub worker: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In the order they should be committed: highest priority first.
    pub placements: Vec<Planned>,
    /// Indices into the batch, with why each waits.
    pub blocked: Vec<(usize, Blocked)>,
}

/// The order in which `batch` is considered: indices, highest priority first, then
/// oldest first.
pub fn order(batch: &[&Eval]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..batch.len()).collect();
    idx.sort_by(|&a, &b| {
        let (a, b) = (batch[a], batch[b]);
        b.priority.cmp(&a.priority).then(a.created_at.cmp(&b.created_at)).then(a.eval_id.cmp(&b.eval_id))
    });
    idx
}

/// Plans `batch` against `snap`, taking each placement's size (and one running slot)
/// off the snapshot, which then describes the pool as the plan leaves it.
pub fn plan(batch: &[&Eval], snap: &mut Snapshot) -> Plan {
    let mut out = Plan::default();
    let none = HashSet::new();
    for i in order(batch) {
        let eval = batch[i];
        if let Some(l) = snap.limit.as_ref().filter(|l| l.slots() == 0) {
            out.blocked.push((i, Blocked::Limit(l.clone())));
            continue;
        }
        let holders = eval.dataset.as_ref().and_then(|d| snap.holders.get(d)).unwrap_or(&none);
        match placement::best(eval.size, holders, &snap.candidates, snap.strategy, snap.now) {
            Ok(w) => {
                snap.candidates[w].free -= eval.size;
                if let Some(l) = snap.limit.as_mut() {
                    l.running += 1;
                }
                out.placements.push(Planned { item: i, worker: w });
            }
            Err(why) => out.blocked.push((i, why.into())),
        }
    }
    out
}

/// How many more size units `snap` could take: the free capacity of its live workers,
/// but no more than the number of allocs the limit still lets start (every eval takes
/// at least one unit). What a scheduler loop with held evals may take from its queue.
pub fn room(snap: &Snapshot) -> u64 {
    let free: u64 = snap.candidates.iter().filter(|c| c.ttl > snap.now).map(|c| u64::from(c.free)).sum();
    match &snap.limit {
        Some(l) => free.min(u64::from(l.slots())),
        None => free,
    }
}

#[cfg(test)]
mod tests;

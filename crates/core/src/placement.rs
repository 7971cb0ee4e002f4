//! Placement: a pure function from (eval, candidate workers, replicas, strategy) to a
//! ranked list of workers, or the reason nothing fits. No I/O, no async: the scheduler
//! service feeds it a snapshot and commits the first choice with a conditional write.
//!
//! Pipeline, in Nomad's words: feasibility (live, enough free capacity) → rank
//! (dataset locality first, then the pool's strategy) → the caller tries each in turn.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;

use crate::id::WorkerId;
use crate::model::{Millis, Strategy};

/// What placement needs to know of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub worker_id: WorkerId,
    pub free: u32,
    pub ttl: Millis,
}

/// Why an eval could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// No live worker has any free capacity (or none is live).
    NoLiveWorker { size: u32 },
    /// Live workers exist but none has room.
    NoRoom { size: u32, largest_free: u32, live_workers: usize },
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::NoLiveWorker { size } => {
                write!(f, "blocked: no live worker with {size} free; no live worker has free capacity")
            }
            Blocked::NoRoom { size, largest_free, live_workers } => write!(
                f,
                "blocked: no live worker with {size} free; largest free is {largest_free} ({live_workers} live workers)"
            ),
        }
    }
}

/// Ranks `candidates` for an eval of `size`. Returns indices into `candidates`, best
/// first, or why none fits.
///
/// Order: workers holding a live replica of the eval's dataset first; within each
/// group, `Spread` puts the most free capacity first (the original's behaviour) and
/// `Binpack` the least free capacity that fits. Ties go to the lower worker id so the
/// result is deterministic.
pub fn rank(
    size: u32,
    holders: &HashSet<WorkerId>,
    candidates: &[Candidate],
    strategy: Strategy,
    now: Millis,
) -> Result<Vec<usize>, Blocked> {
    let mut fits: Vec<usize> = Vec::new();
    scan(size, candidates, now, |i| fits.push(i))?;
    fits.sort_by(|&a, &b| compare(&candidates[a], &candidates[b], holders, strategy));
    Ok(fits)
}

/// The first of `rank`'s order, in one pass without sorting: what a scheduler placing
/// thousands of evals on a thousand workers asks for each eval.
pub fn best(
    size: u32,
    holders: &HashSet<WorkerId>,
    candidates: &[Candidate],
    strategy: Strategy,
    now: Millis,
) -> Result<usize, Blocked> {
    let mut best: Option<usize> = None;
    scan(size, candidates, now, |i| {
        if best.is_none_or(|b| compare(&candidates[i], &candidates[b], holders, strategy).is_lt()) {
            best = Some(i);
        }
    })?;
    // `scan` returns an error whenever nothing fits, so `best` is set here.
    best.ok_or(Blocked::NoLiveWorker { size })
}

/// Calls `fit` with each live candidate that has room, or says why there is none.
fn scan(size: u32, candidates: &[Candidate], now: Millis, mut fit: impl FnMut(usize)) -> Result<(), Blocked> {
    let mut live = 0usize;
    let mut largest_free = 0u32;
    let mut any = false;
    for (i, c) in candidates.iter().enumerate() {
        if c.ttl <= now {
            continue;
        }
        live += 1;
        largest_free = largest_free.max(c.free);
        if c.free >= size {
            any = true;
            fit(i);
        }
    }
    if any {
        Ok(())
    } else if live == 0 {
        Err(Blocked::NoLiveWorker { size })
    } else {
        Err(Blocked::NoRoom { size, largest_free, live_workers: live })
    }
}

/// `Less` when `a` goes before `b`.
fn compare(a: &Candidate, b: &Candidate, holders: &HashSet<WorkerId>, strategy: Strategy) -> Ordering {
    let local = if holders.is_empty() {
        Ordering::Equal
    } else {
        holders.contains(&b.worker_id).cmp(&holders.contains(&a.worker_id))
    };
    let by_free = match strategy {
        Strategy::Spread => b.free.cmp(&a.free),
        Strategy::Binpack => a.free.cmp(&b.free),
    };
    local.then(by_free).then_with(|| a.worker_id.cmp(&b.worker_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(id: u8, free: u32, ttl: Millis) -> Candidate {
        Candidate { worker_id: WorkerId::parse(&format!("{:020x}", id)).unwrap(), free, ttl }
    }

    #[test]
    fn spread_prefers_most_free_binpack_least() {
        let cs = vec![cand(1, 3, 100), cand(2, 10, 100), cand(3, 5, 100)];
        let none = HashSet::new();
        assert_eq!(rank(3, &none, &cs, Strategy::Spread, 0).unwrap(), vec![1, 2, 0]);
        assert_eq!(rank(3, &none, &cs, Strategy::Binpack, 0).unwrap(), vec![0, 2, 1]);
        assert_eq!(rank(4, &none, &cs, Strategy::Binpack, 0).unwrap(), vec![2, 1]);
    }

    #[test]
    fn locality_comes_first() {
        let cs = vec![cand(1, 3, 100), cand(2, 10, 100)];
        let holders: HashSet<_> = [cs[0].worker_id.clone()].into();
        assert_eq!(rank(3, &holders, &cs, Strategy::Spread, 0).unwrap(), vec![0, 1]);
        // A holder without room is skipped, not waited for.
        assert_eq!(rank(4, &holders, &cs, Strategy::Spread, 0).unwrap(), vec![1]);
    }

    #[test]
    fn expired_workers_are_not_candidates() {
        let cs = vec![cand(1, 10, 50), cand(2, 2, 100)];
        assert_eq!(
            rank(3, &HashSet::new(), &cs, Strategy::Spread, 60),
            Err(Blocked::NoRoom { size: 3, largest_free: 2, live_workers: 1 })
        );
        assert_eq!(rank(3, &HashSet::new(), &cs, Strategy::Spread, 200), Err(Blocked::NoLiveWorker { size: 3 }));
    }

    #[test]
    fn blocked_reason_reads_well() {
        let b = Blocked::NoRoom { size: 5, largest_free: 3, live_workers: 2 };
        assert_eq!(b.to_string(), "blocked: no live worker with 5 free; largest free is 3 (2 live workers)");
    }

    fn arb_candidates() -> impl proptest::strategy::Strategy<Value = Vec<Candidate>> {
        proptest::collection::vec((0u32..20, 0i64..200), 0..30)
            .prop_map(|v| v.into_iter().enumerate().map(|(i, (free, ttl))| cand(i as u8, free, ttl)).collect())
    }
    use crate::model::Strategy;
    use proptest::strategy::Strategy as _;

    proptest! {
        #[test]
        fn ranking_is_sound_and_complete(
            cs in arb_candidates(),
            size in 1u32..25,
            now in 0i64..200,
            holders_mask in any::<u32>(),
            binpack in any::<bool>(),
        ) {
            let strategy = if binpack { Strategy::Binpack } else { Strategy::Spread };
            let holders: HashSet<WorkerId> = cs.iter().enumerate()
                .filter(|(i, _)| holders_mask & (1 << (i % 32)) != 0)
                .map(|(_, c)| c.worker_id.clone()).collect();
            let feasible: Vec<usize> = (0..cs.len()).filter(|&i| cs[i].ttl > now && cs[i].free >= size).collect();
            let first = best(size, &holders, &cs, strategy, now);
            match rank(size, &holders, &cs, strategy, now) {
                Ok(order) => {
                    // `best` is `rank`'s first choice.
                    prop_assert_eq!(first, Ok(order[0]));
                    // Exactly the feasible workers, each once.
                    let mut sorted = order.clone();
                    sorted.sort();
                    prop_assert_eq!(sorted, feasible);
                    // Holders before non-holders; within a group, ordered by the strategy.
                    for w in order.windows(2) {
                        let (a, b) = (&cs[w[0]], &cs[w[1]]);
                        let (ha, hb) = (holders.contains(&a.worker_id), holders.contains(&b.worker_id));
                        prop_assert!(ha >= hb);
                        if ha == hb {
                            match strategy {
                                Strategy::Spread => prop_assert!(a.free >= b.free),
                                Strategy::Binpack => prop_assert!(a.free <= b.free),
                            }
                        }
                    }
                }
                Err(blocked) => {
                    prop_assert_eq!(first, Err(blocked.clone()));
                    prop_assert!(feasible.is_empty());
                    let live: Vec<&Candidate> = cs.iter().filter(|c| c.ttl > now).collect();
                    match blocked {
                        Blocked::NoLiveWorker { .. } => prop_assert!(live.is_empty()),
                        Blocked::NoRoom { largest_free, live_workers, .. } => {
                            prop_assert_eq!(live_workers, live.len());
                            prop_assert_eq!(largest_free, live.iter().map(|c| c.free).max().unwrap());
                            prop_assert!(largest_free < size);
                        }
                    }
                }
            }
        }
    }
}

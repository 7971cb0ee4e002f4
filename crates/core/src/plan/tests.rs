//! The planner in memory: no backend, only evals and a snapshot.

use proptest::prelude::*;

use super::*;
use crate::id::PoolId;
use crate::model::Priority;
use crate::model::Strategy;

fn eval(size: u32, priority: u8, created: Millis) -> Eval {
    Eval::queued(PoolId::generate(), size, None, None, Priority::new(priority.into()).unwrap(), None, created)
}

fn worker(free: u32) -> Candidate {
    Candidate { worker_id: WorkerId::generate(), free, ttl: 1_000 }
}

fn snap(cands: Vec<Candidate>, limit: Option<(u32, u32)>) -> Snapshot {
    Snapshot {
        strategy: Strategy::Spread,
        now: 0,
        candidates: cands,
        holders: HashMap::new(),
        limit: limit.map(|(running, limit)| Limit {
            running,
            limit,
            max_running: Some(limit),
            health: None,
            counting: false,
        }),
        claim: Default::default(),
    }
}

fn placed(batch: &[&Eval], p: &Plan) -> Vec<u32> {
    p.placements.iter().map(|pl| batch[pl.item].size).collect()
}

#[test]
fn higher_priority_first_then_arrival() {
    let (low_old, high_new, mid, low_new) = (eval(1, 10, 1), eval(2, 90, 9), eval(3, 50, 5), eval(4, 10, 7));
    let batch = [&low_old, &high_new, &mid, &low_new];
    assert_eq!(order(&batch), vec![1, 2, 0, 3]);
    // Room for two: the two highest go, whatever their arrival.
    let mut s = snap(vec![worker(5)], None);
    let p = plan(&batch, &mut s);
    assert_eq!(placed(&batch, &p), vec![2, 3]);
    assert_eq!(p.blocked.len(), 2);
    assert_eq!(s.candidates[0].free, 0, "the plan's sizes came off the view");
}

#[test]
fn a_high_priority_eval_that_does_not_fit_lets_lower_ones_through() {
    let (big, small) = (eval(8, 90, 1), eval(1, 10, 2));
    let batch = [&big, &small];
    let p = plan(&batch, &mut snap(vec![worker(2)], None));
    assert_eq!(placed(&batch, &p), vec![1]);
    assert!(matches!(p.blocked[..], [(0, Blocked::Capacity(_))]));
}

#[test]
fn the_limit_holds_whatever_the_capacity() {
    let evals: Vec<Eval> = (0..6).map(|i| eval(1, 50, i)).collect();
    let batch: Vec<&Eval> = evals.iter().collect();
    let mut s = snap(vec![worker(100)], Some((1, 3)));
    let p = plan(&batch, &mut s);
    assert_eq!(p.placements.len(), 2, "3 allowed, 1 running");
    assert_eq!(s.limit.as_ref().unwrap().running, 3);
    let (_, why) = &p.blocked[0];
    assert_eq!(why.to_string(), "capped: 3 running of max_running 3");
    // The oldest two went.
    assert_eq!(p.placements.iter().map(|pl| pl.item).collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn capacity_and_limit_together_follow_priority() {
    let (a, b, c) = (eval(3, 20, 1), eval(3, 80, 2), eval(1, 60, 3));
    let batch = [&a, &b, &c];
    // Limit 2: b (80) and c (60) go; a (20) is capped although capacity is left.
    let mut s = snap(vec![worker(10)], Some((0, 2)));
    let p = plan(&batch, &mut s);
    assert_eq!(p.placements.iter().map(|pl| pl.item).collect::<Vec<_>>(), vec![1, 2]);
    assert!(matches!(p.blocked[..], [(0, Blocked::Limit(_))]));
}

#[test]
fn no_live_worker_is_a_capacity_reason() {
    let e = eval(1, 50, 1);
    let mut s = snap(vec![Candidate { worker_id: WorkerId::generate(), free: 5, ttl: 0 }], None);
    let p = plan(&[&e], &mut s);
    assert!(p.placements.is_empty());
    assert_eq!(p.blocked[0].1.to_string(), "blocked: no live worker with 1 free; no live worker has free capacity");
}

proptest! {
    /// No plan ever exceeds a worker's free capacity or the pool's limit, every eval is
    /// either placed or blocked (once), and placements come in priority order.
    #[test]
    fn plans_respect_capacity_limit_and_priority(
        sizes in prop::collection::vec((1u32..6, 0u8..=100), 0..40),
        frees in prop::collection::vec(0u32..12, 0..8),
        limit in prop::option::of((0u32..10, 0u32..12)),
    ) {
        let evals: Vec<Eval> = sizes.iter().enumerate().map(|(i, (s, p))| eval(*s, *p, i as Millis)).collect();
        let batch: Vec<&Eval> = evals.iter().collect();
        let cands: Vec<Candidate> = frees.iter().map(|f| worker(*f)).collect();
        let mut s = snap(cands.clone(), limit);
        let p = plan(&batch, &mut s);

        let mut used = vec![0u32; cands.len()];
        for pl in &p.placements {
            used[pl.worker] += batch[pl.item].size;
        }
        for (i, c) in cands.iter().enumerate() {
            prop_assert!(used[i] <= c.free, "worker {i} overfilled");
            prop_assert_eq!(s.candidates[i].free, c.free - used[i]);
        }
        if let Some((running, lim)) = limit {
            prop_assert!(running as usize + p.placements.len() <= (lim.max(running)) as usize, "limit exceeded");
            if running >= lim {
                prop_assert!(p.placements.is_empty());
            }
        }
        let mut seen: Vec<usize> = p.placements.iter().map(|pl| pl.item).chain(p.blocked.iter().map(|b| b.0)).collect();
        seen.sort();
        prop_assert_eq!(seen, (0..batch.len()).collect::<Vec<_>>());
        for w in p.placements.windows(2) {
            prop_assert!(batch[w[0].item].priority >= batch[w[1].item].priority);
        }
    }
}

#[test]
fn room_is_the_free_capacity_bounded_by_the_limit_slots() {
    let mut expired = worker(50);
    expired.ttl = 0;
    assert_eq!(room(&snap(vec![worker(3), worker(4), expired.clone()], None)), 7, "expired workers have no room");
    assert_eq!(room(&snap(vec![worker(30), worker(40)], Some((8, 10)))), 2, "a capped pool: its free slots");
    assert_eq!(room(&snap(vec![worker(1)], Some((0, 10)))), 1, "capacity, when it binds first");
    assert_eq!(room(&snap(vec![worker(30)], Some((10, 10)))), 0);
    let mut counting = snap(vec![worker(30)], Some((0, 10)));
    if let Some(l) = counting.limit.as_mut() {
        l.counting = true;
    }
    assert_eq!(room(&counting), 0, "nothing is placed while a new cap's allocs are counted");
}

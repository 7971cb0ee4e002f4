//! Store-level conformance: the conditional and atomic writes the invariants rest on.

use std::time::Duration;

use lineup_core::*;

use crate::{hb, Backend, T0};

pub fn pool_rec(strategy: Strategy) -> Pool {
    Pool {
        pool_id: PoolId::generate(),
        strategy,
        status: PoolStatus::Active,
        created_at: T0,
        disbanded_at: None,
        limits: Default::default(),
    }
}

pub fn worker_rec(pool: &PoolId, capacity: u32, ttl: Millis) -> Worker {
    let worker_id = WorkerId::generate();
    Worker {
        pool_id: pool.clone(),
        queue: format!("t-{pool}-{worker_id}"),
        worker_id,
        capacity,
        free: capacity,
        ttl,
        token_hash: "0".repeat(64),
        created_at: T0,
    }
}

pub fn eval_rec(pool: &PoolId, size: u32) -> Eval {
    let payload = serde_json::json!({"cmd": ["echo", "hi"], "n": 1});
    Eval::queued(pool.clone(), size, None, Some(payload), Priority::DEFAULT, None, T0)
}

pub fn alloc_for(e: &Eval, w: &Worker, ttl: Millis) -> Alloc {
    Alloc {
        pool_id: e.pool_id.clone(),
        alloc_id: AllocId::generate(),
        worker_id: w.worker_id.clone(),
        eval_id: e.eval_id.clone(),
        size: e.size,
        attempt: e.attempt,
        ttl,
        state: AllocState::Live,
        stop: false,
        created_at: T0,
        counted: false,
    }
}

pub fn placed(e: &Eval, a: &Alloc) -> Eval {
    let mut n = e.clone();
    n.status = EvalStatus::Placed;
    n.version += 1;
    n.worker_id = Some(a.worker_id.clone());
    n.alloc_id = Some(a.alloc_id.clone());
    n
}

/// A new eval of `size`, placed on `w` by a fresh alloc expiring at `ttl`.
pub async fn place_new(s: &dyn Store, pool: &PoolId, w: &Worker, size: u32, ttl: Millis) -> (Eval, Alloc) {
    let e = eval_rec(pool, size);
    s.insert_eval(&e).await.unwrap();
    let a = alloc_for(&e, w, ttl);
    s.place(&a, &placed(&e, &a), 1, Claim::default(), T0).await.unwrap();
    (e, a)
}

pub(crate) async fn setup(b: &Backend, capacity: u32) -> (Pool, Worker) {
    let p = pool_rec(Strategy::Spread);
    b.store.create_pool(&p).await.unwrap();
    let w = worker_rec(&p.pool_id, capacity, T0 + 60_000);
    b.store.register_worker(&w).await.unwrap();
    (p, w)
}

pub async fn store_pools(b: Backend) {
    let s = &b.store;
    let p = pool_rec(Strategy::Binpack);
    s.create_pool(&p).await.unwrap();
    assert_eq!(s.get_pool(&p.pool_id).await.unwrap(), Some(p.clone()));
    assert!(s.list_pools().await.unwrap().iter().any(|x| x.pool_id == p.pool_id));
    assert_eq!(s.get_pool(&PoolId::generate()).await.unwrap(), None);

    let d = s.disband_pool(&p.pool_id, T0 + 5).await.unwrap();
    assert_eq!(d.status, PoolStatus::Disbanded);
    assert_eq!(d.disbanded_at, Some(T0 + 5));
    // A second disband changes nothing.
    let d2 = s.disband_pool(&p.pool_id, T0 + 99).await.unwrap();
    assert_eq!(d2.disbanded_at, Some(T0 + 5));
    assert!(matches!(s.disband_pool(&PoolId::generate(), T0).await, Err(Error::NotFound(_))));

    // A disbanded pool takes no workers and no evals.
    let w = worker_rec(&p.pool_id, 4, T0 + 60_000);
    assert!(matches!(s.register_worker(&w).await, Err(Error::Disbanded(_))));
    if s.insert_checks_pool() {
        assert!(matches!(s.insert_eval(&eval_rec(&p.pool_id, 1)).await, Err(Error::Disbanded(_))));
    }
    let missing = worker_rec(&PoolId::generate(), 4, T0 + 60_000);
    assert!(matches!(s.register_worker(&missing).await, Err(Error::NotFound(_))));

    s.purge_pool(&p.pool_id).await.unwrap();
    assert_eq!(s.get_pool(&p.pool_id).await.unwrap(), None);
}

pub async fn store_workers_and_candidates(b: Backend) {
    let s = &b.store;
    let p = pool_rec(Strategy::Spread);
    s.create_pool(&p).await.unwrap();
    let big = worker_rec(&p.pool_id, 10, T0 + 60_000);
    let small = worker_rec(&p.pool_id, 2, T0 + 60_000);
    let dead = worker_rec(&p.pool_id, 50, T0 - 1);
    for w in [&big, &small, &dead] {
        s.register_worker(w).await.unwrap();
    }
    assert_eq!(s.get_worker(&p.pool_id, &big.worker_id).await.unwrap(), Some(big.clone()));
    assert_eq!(s.list_workers(&p.pool_id).await.unwrap().len(), 3);

    let mut c: Vec<WorkerId> =
        s.candidates(&p.pool_id, 3, T0).await.unwrap().into_iter().map(|w| w.worker_id).collect();
    assert_eq!(c, vec![big.worker_id.clone()], "expired and too-small workers are not candidates");
    c = s.candidates(&p.pool_id, 1, T0).await.unwrap().into_iter().map(|w| w.worker_id).collect();
    c.sort();
    let mut want = vec![big.worker_id.clone(), small.worker_id.clone()];
    want.sort();
    assert_eq!(c, want);

    let exp: Vec<WorkerId> =
        s.expired_workers(&p.pool_id, T0).await.unwrap().into_iter().map(|w| w.worker_id).collect();
    assert_eq!(exp, vec![dead.worker_id.clone()]);

    s.delete_worker(&p.pool_id, &dead.worker_id).await.unwrap();
    assert_eq!(s.get_worker(&p.pool_id, &dead.worker_id).await.unwrap(), None);
    // Deleting again is fine.
    s.delete_worker(&p.pool_id, &dead.worker_id).await.unwrap();

    let stats = s.pool_stats(&p.pool_id, T0).await.unwrap();
    assert_eq!((stats.workers, stats.capacity, stats.free), (2, 12, 12));
}

pub async fn store_place_is_atomic(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    let e = eval_rec(&p.pool_id, 3);
    s.insert_eval(&e).await.unwrap();

    // Wrong eval version: nothing written, capacity untouched.
    let a = alloc_for(&e, &w, T0 + 30_000);
    assert!(s.place(&a, &placed(&e, &a), 7, Claim::default(), T0).await.unwrap_err().is_conflict());
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 5);
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap(), None);

    // Worker no longer live: conflict.
    assert!(s.place(&a, &placed(&e, &a), 1, Claim::default(), T0 + 60_000).await.unwrap_err().is_conflict());
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap(), None);

    s.place(&a, &placed(&e, &a), 1, Claim::default(), T0).await.unwrap();
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 2);
    let got = s.get_eval(&p.pool_id, &e.eval_id).await.unwrap().unwrap();
    assert_eq!((got.status, got.version, got.alloc_id.as_ref()), (EvalStatus::Placed, 2, Some(&a.alloc_id)));
    assert_eq!(got.payload, e.payload, "payload survives the round trip");

    // Same eval again (a redelivered message): the version moved on.
    let a2 = alloc_for(&e, &w, T0 + 30_000);
    let mut e2 = e.clone();
    e2.size = 1;
    assert!(s.place(&a2, &placed(&e2, &a2), 1, Claim::default(), T0).await.unwrap_err().is_conflict());

    // Not enough room: conflict, nothing written.
    let big = eval_rec(&p.pool_id, 3);
    s.insert_eval(&big).await.unwrap();
    let a3 = alloc_for(&big, &w, T0 + 30_000);
    assert!(s.place(&a3, &placed(&big, &a3), 1, Claim::default(), T0).await.unwrap_err().is_conflict());
    assert_eq!(s.get_eval(&p.pool_id, &big.eval_id).await.unwrap().unwrap().status, EvalStatus::Queued);
    assert_eq!(s.get_alloc(&p.pool_id, &a3.alloc_id).await.unwrap(), None);
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 2);
    crate::assert_capacity_conserved(s.as_ref(), &p.pool_id).await;
}

/// `place_many` and `update_evals`: each item atomic on its own, one result each, in
/// order; a lost condition writes nothing of that item and does not stop the others.
pub async fn store_batches_each_item_alone(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 4).await;
    let evals: Vec<Eval> = (0..4).map(|_| eval_rec(&p.pool_id, 1)).collect();
    for e in &evals {
        s.insert_eval(e).await.unwrap();
    }
    let big = eval_rec(&p.pool_id, 3);
    s.insert_eval(&big).await.unwrap();
    let mut items: Vec<(Alloc, Eval, u64)> = evals
        .iter()
        .map(|e| {
            let a = alloc_for(e, &w, T0 + 30_000);
            let n = placed(e, &a);
            (a, n, 1)
        })
        .collect();
    items[1].2 = 9; // wrong version
    let a_big = alloc_for(&big, &w, T0 + 30_000);
    // After three size-1 claims, only 1 is left: the size-3 eval must lose.
    items.push((a_big.clone(), placed(&big, &a_big), 1));
    let res = s.place_many(&items, Claim::default(), T0).await.unwrap();
    let conflicts: Vec<bool> = res.iter().map(|r| matches!(r, Err(e) if e.is_conflict())).collect();
    assert_eq!(conflicts, vec![false, true, false, false, true], "{res:?}");
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 1);
    assert_eq!(s.get_alloc(&p.pool_id, &items[1].0.alloc_id).await.unwrap(), None);
    assert_eq!(s.get_alloc(&p.pool_id, &a_big.alloc_id).await.unwrap(), None);
    assert_eq!(s.get_eval(&p.pool_id, &evals[1].eval_id).await.unwrap().unwrap().status, EvalStatus::Queued);
    assert_eq!(s.get_eval(&p.pool_id, &big.eval_id).await.unwrap().unwrap().status, EvalStatus::Queued);
    for i in [0, 2, 3] {
        let got = s.get_eval(&p.pool_id, &evals[i].eval_id).await.unwrap().unwrap();
        assert_eq!(got.alloc_id.as_ref(), Some(&items[i].0.alloc_id));
    }
    crate::assert_capacity_conserved(s.as_ref(), &p.pool_id).await;

    // update_evals: the stale version loses alone.
    let mut a = s.get_eval(&p.pool_id, &evals[1].eval_id).await.unwrap().unwrap();
    let mut c = s.get_eval(&p.pool_id, &big.eval_id).await.unwrap().unwrap();
    a.reason = Some("a".into());
    a.version += 1;
    c.reason = Some("c".into());
    c.version += 1;
    let res = s.update_evals(&[(a.clone(), 1), (c.clone(), 5)]).await.unwrap();
    assert!(res[0].is_ok() && matches!(&res[1], Err(e) if e.is_conflict()), "{res:?}");
    assert_eq!(s.get_eval(&p.pool_id, &a.eval_id).await.unwrap().unwrap().reason.as_deref(), Some("a"));
    assert_eq!(s.get_eval(&p.pool_id, &c.eval_id).await.unwrap().unwrap().reason, None);
}

/// `insert_eval_with_message`, where supported: record and message together; an
/// idempotency key match writes neither; a gone queue writes nothing.
pub async fn store_insert_with_message(b: Backend) {
    let (s, q) = (&b.store, &b.queues);
    let p = pool_rec(Strategy::Spread);
    s.create_pool(&p).await.unwrap();
    let queue = format!("t-{}", PoolId::generate());
    q.create_queue(&queue).await.unwrap();
    let mut e = eval_rec(&p.pool_id, 1);
    e.idempotency_key = Some("k1".into());
    let Some(res) = s.insert_eval_with_message(&e, &queue, "first").await else {
        return; // unsupported: the gateway sends, then inserts
    };
    assert_eq!(res.unwrap(), None);
    assert!(s.get_eval(&p.pool_id, &e.eval_id).await.unwrap().is_some());
    let again = Eval { eval_id: EvalId::generate(), ..e.clone() };
    let existing = s.insert_eval_with_message(&again, &queue, "second").await.unwrap().unwrap();
    assert_eq!(existing.map(|x| x.eval_id), Some(e.eval_id.clone()));
    let got: Vec<String> = q
        .receive(&queue, 10, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(got, vec!["first"], "a matched key sends nothing");
    let lost = eval_rec(&p.pool_id, 1);
    let gone = format!("t-{}", PoolId::generate());
    assert!(matches!(s.insert_eval_with_message(&lost, &gone, "x").await, Some(Err(Error::QueueGone(_)))));
    assert!(s.get_eval(&p.pool_id, &lost.eval_id).await.unwrap().is_none(), "nothing written");
}

/// `place_and_deliver`, where supported: a placement that wins is delivered and its
/// pool message deleted with it; one that loses leaves its message and writes nothing.
pub async fn store_place_and_deliver(b: Backend) {
    let (s, q) = (&b.store, &b.queues);
    let (p, w) = setup(&b, 1).await;
    let (pool_q, worker_q) = (format!("t-{}", PoolId::generate()), format!("t-{}", PoolId::generate()));
    q.create_queue(&pool_q).await.unwrap();
    q.create_queue(&worker_q).await.unwrap();
    let evals = [eval_rec(&p.pool_id, 1), eval_rec(&p.pool_id, 1)];
    for e in &evals {
        s.insert_eval(e).await.unwrap();
    }
    q.send(&pool_q, &["m0".into(), "m1".into()]).await.unwrap();
    let mut msgs = q.receive(&pool_q, 10, Duration::ZERO, Duration::from_secs(30)).await.unwrap();
    msgs.sort_by(|a, b| a.body.cmp(&b.body));
    let items: Vec<backend::Placement> = evals
        .iter()
        .zip(&msgs)
        .map(|(e, m)| {
            let a = alloc_for(e, &w, T0 + 30_000);
            backend::Placement {
                eval: placed(e, &a),
                expected_version: 1,
                deliver_to: worker_q.clone(),
                body: format!("alloc {}", a.alloc_id),
                receipt: m.receipt.clone(),
                alloc: a,
            }
        })
        .collect();
    let Some(res) = s.place_and_deliver(&pool_q, &items, Claim::default(), T0).await else {
        return; // unsupported: the scheduler places, sends, then deletes
    };
    let res = res.unwrap();
    // Capacity 1: the first wins, the second loses its claim.
    assert!(res[0].is_ok() && matches!(&res[1], Err(e) if e.is_conflict()), "{res:?}");
    let got: Vec<String> = q
        .receive(&worker_q, 10, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(got, vec![items[0].body.clone()]);
    // The loser's message is still in flight (hidden), the winner's gone: make both
    // visible and only the loser's comes back.
    let receipts: Vec<(String, Duration)> = msgs.iter().map(|m| (m.receipt.clone(), Duration::ZERO)).collect();
    q.change_visibility(&pool_q, &receipts, false).await.unwrap();
    let left: Vec<String> = q
        .receive(&pool_q, 10, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(left, vec!["m1"]);
    assert_eq!(s.get_eval(&p.pool_id, &evals[1].eval_id).await.unwrap().unwrap().status, EvalStatus::Queued);
    assert_eq!(s.get_alloc(&p.pool_id, &items[1].alloc.alloc_id).await.unwrap(), None);
    crate::assert_capacity_conserved(s.as_ref(), &p.pool_id).await;
}

pub async fn store_evals(b: Backend) {
    let s = &b.store;
    let (p, _w) = setup(&b, 5).await;
    let mut e1 = eval_rec(&p.pool_id, 1);
    e1.idempotency_key = Some("k1".into());
    e1.dataset = Some("d1".into());
    assert_eq!(s.insert_eval(&e1).await.unwrap(), None);
    let mut dup = eval_rec(&p.pool_id, 2);
    dup.idempotency_key = Some("k1".into());
    assert_eq!(s.insert_eval(&dup).await.unwrap(), Some(e1.clone()), "same key returns the first eval");
    assert_eq!(s.get_eval(&p.pool_id, &dup.eval_id).await.unwrap(), None, "and writes nothing");
    assert_eq!(s.find_eval_by_key(&p.pool_id, "k1").await.unwrap(), Some(e1.clone()));
    assert_eq!(s.find_eval_by_key(&p.pool_id, "k2").await.unwrap(), None);

    let mut e2 = eval_rec(&p.pool_id, 1);
    e2.created_at = T0 + 10;
    s.insert_eval(&e2).await.unwrap();
    let mut got = s.get_evals(&p.pool_id, &[e1.eval_id.clone(), e2.eval_id.clone(), EvalId::generate()]).await.unwrap();
    got.sort_by_key(|e| e.created_at);
    assert_eq!(got, vec![e1.clone(), e2.clone()]);

    let mut dead = e2.clone();
    dead.status = EvalStatus::Dead;
    dead.version = 2;
    assert!(s.update_eval(&dead, 5).await.unwrap_err().is_conflict());
    s.update_eval(&dead, 1).await.unwrap();
    assert_eq!(s.list_evals(&p.pool_id, Some(EvalStatus::Dead), 10).await.unwrap(), vec![dead.clone()]);
    let all = s.list_evals(&p.pool_id, None, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| &e.eval_id).collect::<Vec<_>>(), vec![&e2.eval_id, &e1.eval_id], "newest first");
    assert_eq!(s.list_evals(&p.pool_id, None, 1).await.unwrap().len(), 1);
    let unfinished = s.unfinished_evals(&p.pool_id).await.unwrap();
    assert_eq!(unfinished, vec![e1.clone()]);
    assert_eq!(s.pool_stats(&p.pool_id, T0).await.unwrap().queued, 1);
}

pub async fn store_cancel_placed(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    let e = eval_rec(&p.pool_id, 2);
    s.insert_eval(&e).await.unwrap();
    let a = alloc_for(&e, &w, T0 + 30_000);
    let pe = placed(&e, &a);
    s.place(&a, &pe, 1, Claim::default(), T0).await.unwrap();
    let mut c = pe.clone();
    c.status = EvalStatus::Cancelled;
    c.version += 1;
    assert!(s.cancel_placed(&c, 1, &a.alloc_id).await.unwrap_err().is_conflict());
    assert!(!s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().stop);
    s.cancel_placed(&c, pe.version, &a.alloc_id).await.unwrap();
    let got = s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap();
    assert!(got.stop && got.state == AllocState::Live, "capacity stays held until the worker stops it");
    let stop =
        s.heartbeat(&hb(&p.pool_id, &w.worker_id, T0 + 10, &[], std::slice::from_ref(&a.alloc_id))).await.unwrap();
    assert_eq!(stop, vec![a.alloc_id.clone()]);
}

pub async fn store_replicas(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    s.heartbeat(&hb(&p.pool_id, &w.worker_id, T0, &["d1", "d2"], &[])).await.unwrap();
    let mut r = s.replicas(&p.pool_id, &["d1".into(), "d3".into()], T0).await.unwrap();
    assert_eq!(r.len(), 1);
    let r = r.remove(0);
    assert_eq!((r.dataset.as_str(), &r.worker_id), ("d1", &w.worker_id));
    assert_eq!(r.key(), format!("d1:{}", w.worker_id));
    // Expired replicas are ignored when reading, and deleted by the releaser.
    assert!(s.replicas(&p.pool_id, &["d1".into()], T0 + 30_000).await.unwrap().is_empty());
    assert_eq!(s.delete_expired_replicas(&p.pool_id, T0 + 30_000).await.unwrap(), 2);
    assert_eq!(s.delete_expired_replicas(&p.pool_id, T0 + 30_000).await.unwrap(), 0);
}

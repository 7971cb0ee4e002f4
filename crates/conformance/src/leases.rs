//! Leases and releases: a heartbeat renews what its worker runs, an expiry is decided
//! once, a release gives capacity back once, and a completion may write its eval first.

use lineup_core::*;

use crate::store::{alloc_for, eval_rec, place_new, placed, setup, worker_rec};
use crate::{hb, Backend, T0};

pub async fn store_heartbeat(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 10).await;
    let other = worker_rec(&p.pool_id, 10, T0 + 60_000);
    s.register_worker(&other).await.unwrap();

    let e = eval_rec(&p.pool_id, 3);
    s.insert_eval(&e).await.unwrap();
    let a = alloc_for(&e, &w, T0 + 1_000);
    s.place(&a, &placed(&e, &a), 1, Claim::default(), T0).await.unwrap();

    let unknown = AllocId::generate();
    let stop = s
        .heartbeat(&hb(&p.pool_id, &w.worker_id, T0 + 500, &["d1"], &[a.alloc_id.clone(), unknown.clone()]))
        .await
        .unwrap();
    assert_eq!(stop, vec![unknown], "an unknown alloc is reported back as one to stop");
    let got = s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap();
    assert_eq!(got.ttl, T0 + 500 + 60_000);
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().ttl, T0 + 500 + 30_000);

    // Another worker cannot extend this worker's alloc.
    let stop =
        s.heartbeat(&hb(&p.pool_id, &other.worker_id, T0 + 900, &[], std::slice::from_ref(&a.alloc_id))).await.unwrap();
    assert_eq!(stop, vec![a.alloc_id.clone()]);
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().ttl, T0 + 500 + 30_000);

    assert!(matches!(s.heartbeat(&hb(&p.pool_id, &WorkerId::generate(), T0, &[], &[])).await, Err(Error::NotFound(_))));
    // Past its TTL a worker does not come back.
    assert!(matches!(
        s.heartbeat(&hb(&p.pool_id, &w.worker_id, T0 + 500 + 60_000, &[], &[])).await,
        Err(Error::Expired(_))
    ));
}

/// A heartbeat listing many allocs (as many as a busy worker runs) renews the live ones
/// and reports exactly the rest: released, unknown, listed twice or not.
pub async fn store_heartbeat_many_allocs(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 300).await;
    let mut allocs = Vec::new();
    for _ in 0..150 {
        allocs.push(place_new(s.as_ref(), &p.pool_id, &w, 1, T0 + 1_000).await.1);
    }
    for a in &allocs[..3] {
        s.release(a, None, None).await.unwrap();
    }
    let unknown = [AllocId::generate(), AllocId::generate()];
    let mut listed: Vec<AllocId> = allocs.iter().map(|a| a.alloc_id.clone()).chain(unknown.clone()).collect();
    listed.push(allocs[10].alloc_id.clone());
    let mut stop = s.heartbeat(&hb(&p.pool_id, &w.worker_id, T0 + 500, &[], &listed)).await.unwrap();
    stop.sort();
    let mut want: Vec<AllocId> = allocs[..3].iter().map(|a| a.alloc_id.clone()).chain(unknown).collect();
    want.sort();
    assert_eq!(stop, want);
    for a in &allocs[3..] {
        assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().ttl, T0 + 500 + 30_000);
    }
}

pub async fn store_release_returns_capacity_once(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    let e = eval_rec(&p.pool_id, 4);
    s.insert_eval(&e).await.unwrap();
    let a = alloc_for(&e, &w, T0 + 1_000);
    let pe = placed(&e, &a);
    s.place(&a, &pe, 1, Claim::default(), T0).await.unwrap();
    assert_eq!(s.live_allocs(&p.pool_id, Some(&w.worker_id)).await.unwrap().len(), 1);
    assert_eq!(s.expired_allocs(&p.pool_id, T0 + 999).await.unwrap().len(), 0);
    assert_eq!(s.expired_allocs(&p.pool_id, T0 + 1_000).await.unwrap().len(), 1);

    let mut done = pe.clone();
    done.status = EvalStatus::Complete;
    done.version += 1;
    done.exit_code = Some(0);

    // Eval changed meanwhile: nothing written.
    assert!(s.release(&a, Some((&done, 99)), None).await.unwrap_err().is_conflict());
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 1);
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().state, AllocState::Live);

    s.release(&a, Some((&done, pe.version)), None).await.unwrap();
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 5);
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().state, AllocState::Released);
    assert_eq!(s.get_eval(&p.pool_id, &e.eval_id).await.unwrap().unwrap().exit_code, Some(0));
    // A second release (a racing releaser) returns nothing twice.
    assert!(s.release(&a, None, None).await.unwrap_err().is_conflict());
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 5);
    assert!(s.live_allocs(&p.pool_id, None).await.unwrap().is_empty());
    assert!(s.expired_allocs(&p.pool_id, T0 + 5_000).await.unwrap().is_empty());
}

/// A renewed lease is not expired where it first would have run out, however many
/// times the releaser looks, and is once the renewal runs out (DynamoDB: the releaser
/// finds it by when it is due, not by its lease, which heartbeats move unindexed).
pub async fn store_renewed_lease_expires_later(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    let e = eval_rec(&p.pool_id, 2);
    s.insert_eval(&e).await.unwrap();
    let a = alloc_for(&e, &w, T0 + 1_000);
    s.place(&a, &placed(&e, &a), 1, Claim::default(), T0).await.unwrap();
    let stop = s.heartbeat(&hb(&p.pool_id, &w.worker_id, T0 + 500, &[], std::slice::from_ref(&a.alloc_id))).await;
    assert_eq!(stop.unwrap(), Vec::<AllocId>::new());
    let lease = T0 + 500 + 30_000;
    for now in [T0 + 1_000, T0 + 2_000, lease - 1] {
        assert!(s.expired_allocs(&p.pool_id, now).await.unwrap().is_empty(), "renewed, yet expired at {now}");
    }
    assert_eq!(s.live_allocs(&p.pool_id, Some(&w.worker_id)).await.unwrap().len(), 1);
    let expired = s.expired_allocs(&p.pool_id, lease).await.unwrap();
    assert_eq!(expired.iter().map(|x| (&x.alloc_id, x.ttl)).collect::<Vec<_>>(), vec![(&a.alloc_id, lease)]);
    s.release(&expired[0], None, Some(lease)).await.unwrap();
    assert!(s.expired_allocs(&p.pool_id, lease + 60_000).await.unwrap().is_empty());
    assert!(s.live_allocs(&p.pool_id, None).await.unwrap().is_empty());
    crate::assert_capacity_conserved(s.as_ref(), &p.pool_id).await;
}

/// Where the store writes a completed eval on its own (`Store::complete_first`): only
/// an eval placed on this very alloc, and no pipeline step's, is completed, exactly as
/// the transactional path would write it; the alloc keeps its capacity until released.
pub async fn store_complete_first(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    let (e, a) = place_new(s.as_ref(), &p.pool_id, &w, 2, T0 + 30_000).await;
    let done = Completion { exit_code: 3, output: Some("bye".into()), at: T0 + 100, purge_at: T0 + 86_400_000 };
    let Some(first) = s.complete_first(&a, &done).await else {
        return; // The store completes in one `release` (the embedded one).
    };
    let got = first.unwrap().expect("placed on this alloc: completed");
    let mut want = placed(&e, &a);
    want.status = EvalStatus::Complete;
    want.version += 1;
    want.updated_at = T0 + 100;
    want.exit_code = Some(3);
    want.output = Some("bye".into());
    want.purge_at = Some(T0 + 86_400_000);
    assert_eq!(got, want);
    assert_eq!(s.get_eval(&p.pool_id, &e.eval_id).await.unwrap(), Some(want.clone()));
    assert_eq!(s.list_evals(&p.pool_id, Some(EvalStatus::Complete), 10).await.unwrap(), vec![want.clone()]);
    // The capacity is still the alloc's until it is released.
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 3);
    crate::assert_capacity_conserved(s.as_ref(), &p.pool_id).await;
    // Twice (a retried completion, even with another exit code): the first stands.
    let again = Completion { exit_code: 9, at: T0 + 200, ..done.clone() };
    assert_eq!(s.complete_first(&a, &again).await.unwrap().unwrap(), Some(want.clone()));
    assert_eq!(s.get_eval(&p.pool_id, &e.eval_id).await.unwrap(), Some(want));
    s.release(&a, None, None).await.unwrap();
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 5);

    // An eval placed on another alloc, and a pipeline step's, are left as they are.
    let (e2, a2) = place_new(s.as_ref(), &p.pool_id, &w, 1, T0 + 30_000).await;
    let mut stranger = a2.clone();
    stranger.alloc_id = AllocId::generate();
    assert_eq!(s.complete_first(&stranger, &done).await.unwrap().unwrap(), None);
    assert_eq!(s.get_eval(&p.pool_id, &e2.eval_id).await.unwrap().unwrap().status, EvalStatus::Placed);
    let mut step = eval_rec(&p.pool_id, 1);
    step.step = Some(StepRef { pipeline_id: PipelineId::generate(), step: "s".into(), index: 0, inputs: None });
    s.insert_eval(&step).await.unwrap();
    let a3 = alloc_for(&step, &w, T0 + 30_000);
    s.place(&a3, &placed(&step, &a3), 1, Claim::default(), T0).await.unwrap();
    assert_eq!(s.complete_first(&a3, &done).await.unwrap().unwrap(), None);
    assert_eq!(s.get_eval(&p.pool_id, &step.eval_id).await.unwrap().unwrap().status, EvalStatus::Placed);
}

/// A lease is decided once: a heartbeat never renews an alloc whose TTL passed (the
/// worker is told to stop it), and an expiry release never lands on a lease that a
/// heartbeat renewed after the releaser read it.
pub async fn store_lease_decided_once(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    let (_, a) = place_new(s.as_ref(), &p.pool_id, &w, 2, T0 + 1_000).await;

    // The releaser read it expired at T0+1000; a heartbeat renewed it just before
    // (at T0+999, when the lease was still valid): the expiry does not land.
    let stale = s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap();
    let stop = s.heartbeat(&hb(&p.pool_id, &w.worker_id, T0 + 999, &[], std::slice::from_ref(&a.alloc_id))).await;
    assert_eq!(stop.unwrap(), Vec::<AllocId>::new());
    let renewed = s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().ttl;
    assert!(renewed > T0 + 1_000);
    assert!(s.release(&stale, None, Some(T0 + 1_000)).await.unwrap_err().is_conflict());
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().state, AllocState::Live);
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 3);

    // Once the renewed lease has passed, a late heartbeat does not revive it: the worker
    // is told to stop, and the expiry lands.
    let stop = s.heartbeat(&hb(&p.pool_id, &w.worker_id, renewed, &[], std::slice::from_ref(&a.alloc_id))).await;
    assert_eq!(stop.unwrap(), vec![a.alloc_id.clone()], "an expired lease is never renewed");
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().ttl, renewed);
    let current = s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap();
    s.release(&current, None, Some(renewed)).await.unwrap();
    assert_eq!(s.get_worker(&p.pool_id, &w.worker_id).await.unwrap().unwrap().free, 5);
    assert!(s.release(&current, None, Some(renewed)).await.unwrap_err().is_conflict(), "once");
}

pub async fn store_release_without_worker(b: Backend) {
    let s = &b.store;
    let (p, w) = setup(&b, 5).await;
    let (_, a) = place_new(s.as_ref(), &p.pool_id, &w, 2, T0 + 1_000).await;
    s.delete_worker(&p.pool_id, &w.worker_id).await.unwrap();
    // The worker is gone: release must still succeed, or it would fail forever.
    s.release(&a, None, None).await.unwrap();
    assert_eq!(s.get_alloc(&p.pool_id, &a.alloc_id).await.unwrap().unwrap().state, AllocState::Released);
}

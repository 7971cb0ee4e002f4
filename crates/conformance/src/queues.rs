//! Queue conformance: the SQS semantics the services rely on.

use std::time::Duration;

use lineup_core::*;

use crate::Backend;

fn qname() -> String {
    format!("t-{}", PoolId::generate())
}

const NO_WAIT: Duration = Duration::ZERO;
const VIS: Duration = Duration::from_secs(30);

/// Every message visible now, up to `max` (SQS returns a sample of the visible messages
/// per call, so one receive may not return them all).
async fn receive_visible(b: &Backend, name: &str, max: usize, wait: Duration, vis: Duration) -> Vec<Received> {
    let mut got = b.queues.receive(name, max, wait, vis).await.unwrap();
    loop {
        let more = b.queues.receive(name, max, NO_WAIT, vis).await.unwrap();
        if more.is_empty() {
            return got;
        }
        got.extend(more);
    }
}

/// The distinct bodies: SQS delivers at least once, and a send retried after its
/// response was lost (as the fault mode does, as real SQS may) leaves two copies.
fn distinct(got: &[Received]) -> Vec<&str> {
    let mut bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    bodies.sort();
    bodies.dedup();
    bodies
}

pub async fn queue_send_receive_delete(b: Backend) {
    let q = &b.queues;
    let name = qname();
    let url = q.create_queue(&name).await.unwrap();
    assert!(url.contains(&name), "url {url} names the queue");
    assert_eq!(q.create_queue(&name).await.unwrap(), url, "create is idempotent");
    q.send(&name, &["a".into(), "b".into(), "c".into()]).await.unwrap();
    let got = receive_visible(&b, &name, 10, NO_WAIT, VIS).await;
    assert_eq!(distinct(&got), vec!["a", "b", "c"]);
    assert!(got.iter().all(|m| m.receive_count == 1));
    // Hidden while in flight.
    assert!(q.receive(&name, 10, NO_WAIT, VIS).await.unwrap().is_empty());
    let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
    q.delete(&name, &receipts).await.unwrap();
    q.delete(&name, &receipts).await.unwrap();
    q.delete_queue(&name).await.unwrap();
}

/// `send_many`: one result per queue; a gone queue fails alone.
pub async fn queue_send_many(b: Backend) {
    let q = &b.queues;
    let (one, gone, two) = (qname(), qname(), qname());
    q.create_queue(&one).await.unwrap();
    q.create_queue(&two).await.unwrap();
    let res = q
        .send_many(&[
            (one.clone(), vec!["1a".into(), "1b".into()]),
            (gone.clone(), vec!["x".into()]),
            (two.clone(), vec!["2a".into()]),
        ])
        .await;
    assert!(res[0].is_ok() && res[2].is_ok(), "{res:?}");
    assert!(matches!(res[1], Err(Error::QueueGone(_))), "{res:?}");
    assert_eq!(distinct(&receive_visible(&b, &one, 10, NO_WAIT, VIS).await), vec!["1a", "1b"]);
    assert_eq!(distinct(&receive_visible(&b, &two, 10, NO_WAIT, VIS).await), vec!["2a"]);
    q.delete_queue(&one).await.unwrap();
    q.delete_queue(&two).await.unwrap();
}

pub async fn queue_visibility_and_receive_count(b: Backend) {
    let q = &b.queues;
    let name = qname();
    q.create_queue(&name).await.unwrap();
    q.send(&name, &["x".into()]).await.unwrap();
    // One copy, or two if the send was retried after a lost response: each copy is
    // counted on its own, and every step below applies to each.
    let first = receive_visible(&b, &name, 10, NO_WAIT, Duration::from_secs(1)).await;
    let copies = first.len();
    assert!((1..=2).contains(&copies), "{first:?}");
    let all_back = |wait: Duration, vis: Duration| {
        let name = name.clone();
        let b = b.clone();
        async move {
            let end = tokio::time::Instant::now() + wait;
            let mut got = Vec::new();
            while got.len() < copies && tokio::time::Instant::now() < end {
                got.extend(q_receive(&b, &name, vis).await);
            }
            got
        }
    };
    // Comes back after its visibility timeout, with a higher receive count.
    let again = all_back(Duration::from_secs(5), VIS).await;
    assert_eq!(again.len(), copies, "message reappears after the visibility timeout");
    assert!(again.iter().all(|m| m.receive_count == 2), "{again:?}");
    // Hide it briefly, then it comes back once more.
    let receipts: Vec<(String, Duration)> = again.iter().map(|m| (m.receipt.clone(), Duration::ZERO)).collect();
    q.change_visibility(&name, &receipts, false).await.unwrap();
    let third = all_back(Duration::from_secs(5), VIS).await;
    assert_eq!(third.len(), copies);
    assert!(third.iter().all(|m| m.receive_count == 3), "{third:?}");
    // The first receipt is stale: deleting with it does not delete the message (on
    // SQS it may; the services never rely on either).
    let _ = first;
    let receipts: Vec<String> = third.iter().map(|m| m.receipt.clone()).collect();
    q.delete(&name, &receipts).await.unwrap();
    let zero: Vec<(String, Duration)> = receipts.iter().map(|r| (r.clone(), Duration::ZERO)).collect();
    q.change_visibility(&name, &zero, false).await.unwrap();
    assert!(q.receive(&name, 1, Duration::from_millis(300), VIS).await.unwrap().is_empty(), "deleted for good");
    q.delete_queue(&name).await.unwrap();
}

async fn q_receive(b: &Backend, name: &str, vis: Duration) -> Vec<Received> {
    b.queues.receive(name, 10, Duration::from_millis(500), vis).await.unwrap()
}

pub async fn queue_long_poll_wakes(b: Backend) {
    let q = b.queues.clone();
    let name = qname();
    q.create_queue(&name).await.unwrap();
    let (q2, n2) = (q.clone(), name.clone());
    let waiter = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let got = q2.receive(&n2, 10, Duration::from_secs(10), VIS).await.unwrap();
        (got, start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.send(&name, &["late".into()]).await.unwrap();
    let (got, took) = waiter.await.unwrap();
    assert_eq!(got.len(), 1, "the long poll returns the message sent while it waited");
    assert!(took < Duration::from_secs(9), "woke on arrival, not at the deadline ({took:?})");
    // An empty long poll waits about its wait time (SQS counts it in whole seconds),
    // then returns nothing.
    let start = tokio::time::Instant::now();
    assert!(q.receive(&name, 10, Duration::from_secs(1), VIS).await.unwrap().is_empty());
    assert!(start.elapsed() >= Duration::from_millis(800), "returned after {:?}", start.elapsed());
    q.delete_queue(&name).await.unwrap();
}

pub async fn queue_gone(b: Backend) {
    let q = &b.queues;
    let name = qname();
    q.create_queue(&name).await.unwrap();
    q.send(&name, &["x".into()]).await.unwrap();
    q.delete_queue(&name).await.unwrap();
    q.delete_queue(&name).await.unwrap();
    assert!(matches!(q.send(&name, &["y".into()]).await, Err(Error::QueueGone(_))));
    assert!(matches!(q.receive(&name, 1, NO_WAIT, VIS).await, Err(Error::QueueGone(_))));
}

pub async fn queue_wake_parked(b: Backend) {
    let q = &b.queues;
    let name = qname();
    q.create_queue(&name).await.unwrap();
    q.send(&name, &["blocked".into()]).await.unwrap();
    let m = q.receive(&name, 1, NO_WAIT, VIS).await.unwrap().remove(0);
    q.change_visibility(&name, &[(m.receipt.clone(), Duration::from_secs(2))], true).await.unwrap();
    q.wake(&name).await.unwrap();
    // Where the backend can wake parked messages they come back at once; where it
    // cannot (SQS) they come back when the backoff ends. Either way they come back.
    let again = q.receive(&name, 1, Duration::from_secs(5), VIS).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, "blocked");
    q.delete_queue(&name).await.unwrap();
}

pub async fn queue_batch_of_ten(b: Backend) {
    let q = &b.queues;
    let name = qname();
    q.create_queue(&name).await.unwrap();
    let bodies: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    q.send(&name, &bodies).await.unwrap();
    // At least once (the Queues contract: a send retried after its response was lost
    // may deliver a message twice, as SQS may), batches of at most ten.
    let mut seen = std::collections::BTreeSet::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 25 && tokio::time::Instant::now() < end {
        let got = q.receive(&name, 10, Duration::from_millis(200), VIS).await.unwrap();
        assert!(got.len() <= 10, "at most 10 per receive");
        q.delete(&name, &got.iter().map(|m| m.receipt.clone()).collect::<Vec<_>>()).await.unwrap();
        seen.extend(got.into_iter().map(|m| m.body));
    }
    let want: std::collections::BTreeSet<String> = bodies.iter().cloned().collect();
    assert_eq!(seen, want, "every message received");
    q.delete_queue(&name).await.unwrap();
}

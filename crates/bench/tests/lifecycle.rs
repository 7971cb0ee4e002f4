//! The whole lifecycle's AWS calls (submit, place and deliver, poll, one heartbeat per
//! alloc, complete), counted by operation over moto for 100 evals on 10 workers — the
//! same run `make bench` prints with its cost, beside the Go original's shape, which
//! the whole lifecycle must cost less than.

use lineup_bench::lifecycle::{measure, meter, moto_available, total, Shape, PHASES};

fn phase<'a>(l: &'a lineup_bench::lifecycle::Lifecycle, name: &str) -> &'a std::collections::BTreeMap<String, f64> {
    &l.phases[PHASES.iter().position(|p| *p == name).expect("phase")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_lifecycle_makes_at_most_six_calls_per_placement() {
    assert!(moto_available(), "make test installs moto into .venv");
    let moto = meter();
    let lineup = measure(&moto, Shape::Lineup).await.expect("lineup's lifecycle");
    let original = measure(&moto, Shape::Original).await.expect("the original's lifecycle");
    for (i, p) in PHASES.iter().enumerate() {
        println!("{p:<16} lineup {:.2} {:?}", total(&lineup.phases[i]), lineup.phases[i]);
        println!("{p:<16} original {:.2} {:?}", total(&original.phases[i]), original.phases[i]);
    }
    println!("total: lineup {:.2}, original {:.2}", lineup.calls(), original.calls());
    assert!(lineup.calls() <= 6.0, "lineup made {:.2} calls per placement", lineup.calls());
    assert!(original.calls() > 2.0 * lineup.calls(), "the original's shape is measured, not assumed");

    // Where the calls went: a submit is one write and one send, with no pool read.
    assert_eq!(phase(&lineup, "submit").get("DynamoDB.PutItem"), Some(&1.0));
    assert_eq!(total(phase(&lineup, "submit")), 2.0);
    // A pass over the deep queue places all 100: transactions of up to 32 placements,
    // one send per worker.
    let place = phase(&lineup, "place + deliver");
    assert!(place.get("DynamoDB.TransactWriteItems").is_some_and(|n| *n <= 0.05), "{place:?}");
    assert!(place.get("SQS.SendMessageBatch").is_some_and(|n| *n <= 0.2), "{place:?}");
    // A poll reads what it hands out in one batch, never one read per alloc.
    assert_eq!(phase(&lineup, "poll").get("DynamoDB.GetItem"), None);
    // A heartbeat renews the worker and its ten allocs in two writes.
    assert!(total(phase(&lineup, "heartbeat")) <= 0.25, "{:?}", phase(&lineup, "heartbeat"));
    // A heartbeat's renewals write nothing to the allocs' index (its key is when the
    // releaser looks, not the lease): only the worker's own entry changes, against the
    // original's two index writes per alloc (its lease was its index key).
    let hb = PHASES.iter().position(|p| *p == "heartbeat").expect("phase");
    assert!(lineup.units[hb].index_wcu <= 0.15, "lineup's heartbeat: {:.2} index units", lineup.units[hb].index_wcu);
    assert!(original.units[hb].index_wcu >= 2.0, "original's heartbeat: {:.2}", original.units[hb].index_wcu);
    // A completion writes the eval on its own first (returned by the write, not read)
    // and releases alloc and worker in one transaction.
    let done = phase(&lineup, "complete");
    assert_eq!((done.get("DynamoDB.GetItem"), done.get("DynamoDB.UpdateItem")), (Some(&1.0), Some(&1.0)), "{done:?}");
    // The whole lifecycle costs less than the original's shape, at the same prices.
    let dollars = |l: &lineup_bench::lifecycle::Lifecycle| {
        let (d, q, g) = l.dollars();
        d + q + g
    };
    assert!(dollars(&lineup) < dollars(&original), "${:.2} vs ${:.2}", dollars(&lineup), dollars(&original));
    // The original writes every item on its own: no transactions anywhere.
    assert!(original.phases.iter().all(|p| !p.contains_key("DynamoDB.TransactWriteItems")));
}

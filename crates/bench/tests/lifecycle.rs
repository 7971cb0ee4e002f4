//! The whole lifecycle's AWS calls (submit, place and deliver, poll, one heartbeat per
//! alloc, complete), counted by operation over moto for 100 evals on 10 workers — the
//! same run `make bench` prints with its cost, beside the Go original's shape.

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
    // The original writes every item on its own: no transactions anywhere.
    assert!(original.phases.iter().all(|p| !p.contains_key("DynamoDB.TransactWriteItems")));
}

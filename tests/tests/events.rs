//! The event stream of `lineup dev` (`GET /v1/events`, `lineup events`, `lineup eval
//! watch`), on the embedded store and on DynamoDB + SQS: every change of a story in
//! order with increasing indexes, resumed from `Last-Event-ID` without a gap, filters,
//! clear errors, lost history said out loud, and a shutdown no open stream holds up.

use std::time::Duration;

use futures_util::StreamExt;
use lineup_client::{EventView, StreamItem, SubmitEval};
use lineup_tests::{poll_n, TestApp};
use tokio::io::AsyncBufReadExt;

/// Reads `n` events (no `lost`) from the stream, with a deadline.
async fn take(
    stream: &mut (impl futures_util::Stream<Item = lineup_client::Result<StreamItem>> + Unpin),
    n: usize,
) -> Vec<EventView> {
    let mut out = Vec::new();
    while out.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events came: {out:#?}", out.len()))
            .expect("stream ended")
            .expect("event");
        match item {
            StreamItem::Event(e) => out.push(e),
            StreamItem::Lost { .. } => panic!("unexpected lost event after {out:#?}"),
        }
    }
    out
}

fn summary(evs: &[EventView]) -> Vec<(String, String)> {
    evs.iter().map(|e| (e.topic.clone(), e.state.clone())).collect()
}

/// The story, as the stream tells it. Returns the events seen.
async fn story(app: &TestApp) -> Vec<EventView> {
    let admin = &app.admin;
    let mut all = admin.events(None, None, None).await.unwrap();
    let pool = admin.create_pool(None).await.unwrap();
    let mut allocs_only = admin.events(Some(&pool.pool_id), Some("alloc"), None).await.unwrap();
    let w = admin.register_worker(&pool.pool_id, 4).await.unwrap();
    let me = admin.with_token(w.token.as_deref().unwrap());
    let e = admin.submit_eval(&pool.pool_id, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();
    let a = poll_n(&me, &pool.pool_id, &w.worker_id, 1).await.remove(0);
    me.complete(&pool.pool_id, a.alloc_id.as_str(), 0, Some("ok")).await.unwrap();

    let got = take(&mut all, 7).await;
    let want: Vec<(String, String)> = [
        ("pool", "active"),
        ("worker", "registered"),
        ("eval", "queued"),
        ("eval", "placed"),
        ("alloc", "live"),
        ("alloc", "released"),
        ("eval", "complete"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(summary(&got), want, "{got:#?}");
    assert!(got.windows(2).all(|w| w[0].index < w[1].index), "indexes increase: {got:#?}");
    assert_eq!(got[3].worker_id.as_deref(), Some(w.worker_id.as_str()));
    assert_eq!((got[2].id.as_str(), got[3].attempt), (e.eval_id.as_str(), Some(1)));

    // The pool filter and the type filter.
    let allocs = take(&mut allocs_only, 2).await;
    assert_eq!(summary(&allocs), want[4..6].to_vec());
    assert!(allocs.iter().all(|x| x.pool_id == pool.pool_id));

    // Resumed after the third event: the rest, the very same events, nothing missing.
    let mut resumed = admin.events(None, None, Some(got[2].index)).await.unwrap();
    assert_eq!(take(&mut resumed, 4).await, got[3..].to_vec());
    got
}

async fn errors(app: &TestApp) {
    let admin = &app.admin;
    let bad = admin.events(None, Some("eval,nope"), None).await.err().expect("unknown type refused");
    assert_eq!((bad.status(), code(&bad)), (Some(400), "invalid_type"));
    let (status, body) = app.raw(reqwest::Method::GET, "/v1/events?pool=zz", Some(admin.token()), None).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_id")), "{body}");
    let pool = admin.create_pool(None).await.unwrap();
    let w = admin.register_worker(&pool.pool_id, 1).await.unwrap();
    let worker = admin.with_token(w.token.as_deref().unwrap());
    let denied = worker.events(None, None, None).await.err().expect("workers may not read the stream");
    assert_eq!(denied.status(), Some(403));
    // A Last-Event-ID that is not an index is a 400, not a stream from somewhere.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/events", app.endpoint))
        .bearer_auth(admin.token())
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // An index from before this process's history: the stream says events were lost.
    let mut old = admin.events(None, None, Some(1)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), old.next()).await.unwrap().unwrap().unwrap() {
        StreamItem::Lost { resumed_from, .. } => assert!(resumed_from > 1),
        other => panic!("expected lost, got {other:?}"),
    }
}

fn code(e: &lineup_client::ClientError) -> &str {
    match e {
        lineup_client::ClientError::Api { code, .. } => code,
        _ => "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_on_the_embedded_store() {
    let mut app = TestApp::spawn().await;
    story(&app).await;
    errors(&app).await;

    // `lineup eval watch` follows one eval to its end, and says how it ended.
    let pool = app.admin.create_pool(None).await.unwrap();
    let w = app.admin.register_worker(&pool.pool_id, 1).await.unwrap();
    let me = app.admin.with_token(w.token.as_deref().unwrap());
    let e = app.admin.submit_eval(&pool.pool_id, &SubmitEval { size: 1, ..Default::default() }).await.unwrap();
    let args = ["eval", "watch", "--pool", &pool.pool_id, &e.eval_id];
    let finish = async {
        let a = poll_n(&me, &pool.pool_id, &w.worker_id, 1).await.remove(0);
        me.complete(&pool.pool_id, a.alloc_id.as_str(), 3, None).await.unwrap();
    };
    let (out, ()) = tokio::join!(app.cli_async(&args), finish);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "exit code 3 is not success: {text}");
    assert!(text.contains("complete"), "{text}");

    // An open stream does not hold up shutdown (the drain would wait 25 s for it).
    let _open = app.admin.events(None, None, None).await.unwrap();
    let t = std::time::Instant::now();
    assert!(app.terminate().success());
    assert!(t.elapsed() < Duration::from_secs(10), "shutdown took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_on_dynamodb_and_sqs() {
    let (app, _, _) = lineup_tests::spawn_on_moto("ev", &[]).await;
    story(&app).await;
}

/// `lineup events` prints the stream as JSON lines, resuming after `--after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineup_events_prints_the_stream() {
    let app = TestApp::spawn().await;
    let got = story(&app).await;
    let after = got[2].index.to_string();
    let mut cli =
        tokio::process::Command::from(app.cli_command(&["--json", "events", "--types", "eval", "--after", &after]))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("lineup events printed only {seen:?}"))
            .unwrap()
            .expect("a line");
        let e: EventView = serde_json::from_str(&line).unwrap();
        seen.push((e.index, e.state));
    }
    assert_eq!(seen, vec![(got[3].index, "placed".to_string()), (got[6].index, "complete".to_string())]);
}

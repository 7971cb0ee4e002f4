//! `GET /metrics` of `lineup dev`: Prometheus text with the eval counters, placement
//! latency, pool gauges and backend calls of a story, behind the admin or the
//! metrics-only token (`LINEUP_METRICS_TOKEN`, as an operator sets it).

use lineup_client::SubmitEval;
use lineup_tests::{poll_n, TestApp};

const SCRAPE: &str = "scrape-secret";

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{}/metrics", app.endpoint));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The value of the sample whose name and labels start with `series`, e.g.
/// `lineup_evals_placed_total{pool="…"}`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_story() {
    let app = TestApp::spawn_with(&[("LINEUP_METRICS_TOKEN", SCRAPE)], &[]).await;
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();
    let p = &pool.pool_id;
    let w = admin.register_worker(p, 4).await.unwrap();
    let me = admin.with_token(w.token.as_deref().unwrap());
    for _ in 0..2 {
        admin.submit_eval(p, &SubmitEval { size: 1, ..Default::default() }).await.unwrap();
    }
    let allocs = poll_n(&me, p, &w.worker_id, 2).await;
    me.complete(p, allocs[0].alloc_id.as_str(), 0, None).await.unwrap();
    me.fail(p, allocs[1].alloc_id.as_str(), "flaky").await.unwrap();
    poll_n(&me, p, &w.worker_id, 1).await;

    let (status, text) = scrape(&app, Some(SCRAPE)).await;
    assert_eq!(status, 200, "{text}");
    let pool_label = format!("{{pool=\"{p}\"}}");
    let of = |name: &str| value(&text, &format!("{name}{pool_label}"));
    assert_eq!(of("lineup_evals_submitted_total"), Some(2.0), "{text}");
    assert_eq!(of("lineup_evals_placed_total"), Some(3.0), "two first attempts and one retry: {text}");
    assert_eq!(of("lineup_evals_completed_total"), Some(1.0), "{text}");
    assert_eq!(of("lineup_evals_failed_total"), Some(1.0), "{text}");
    assert_eq!(of("lineup_placement_latency_seconds_count"), Some(2.0), "first attempts only: {text}");
    assert_eq!(of("lineup_pool_capacity"), Some(4.0), "{text}");
    assert_eq!(of("lineup_pool_free"), Some(3.0), "the retry runs: {text}");
    assert_eq!(of("lineup_pool_running"), Some(1.0), "{text}");
    assert_eq!(of("lineup_pool_workers_live"), Some(1.0), "{text}");
    assert_eq!(of("lineup_pool_queued"), Some(0.0), "{text}");
    assert!(of("lineup_schedule_pass_seconds_count").is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(value(&text, "lineup_backend_calls_total{backend=\"sqlite\",op=\"release\"}"), Some(2.0), "{text}");
    assert!(text.contains("# HELP lineup_evals_placed_total"), "{text}");

    // Who may scrape: the admin token, the metrics token; not a worker, not nobody.
    assert_eq!(scrape(&app, Some(admin.token())).await.0, 200);
    assert_eq!(scrape(&app, None).await.0, 401);
    assert_eq!(scrape(&app, Some(w.token.as_deref().unwrap())).await.0, 403);
    // The metrics token opens nothing else.
    let (status, body) = app.raw(reqwest::Method::GET, "/v1/pools", Some(SCRAPE), None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{body}");
    // And no token is in the server's log.
    assert!(!app.server_log().contains(SCRAPE));
}

//! No secret in a log line or a world-readable file: `lineup dev` at debug level, used
//! through every kind of credential (the admin token in a header and in a
//! `/compat/{token}/` path, a worker token), logs none of them nor their hashes; its
//! data dir, database, WAL and admin token file are private to the user.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use lineup_client::SubmitEval;
use lineup_tests::{poll_n, TestApp};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_hash_in_a_debug_log_and_private_files() {
    let app = TestApp::spawn_with(&[("LINEUP_LOG", "debug")], &[]).await;
    let (st, v) = app.raw(Method::POST, &format!("/compat/{}/CreatePool", app.token), None, Some("{}")).await;
    assert_eq!(st, 200, "{v}");
    let pool = v["pool_id"].as_str().unwrap().to_owned();
    let w = app.admin.register_worker(&pool, 2).await.unwrap();
    let wtoken = w.token.clone().unwrap();
    let worker = app.admin.with_token(&wtoken);
    worker.heartbeat(&pool, &w.worker_id, &["d1".to_owned()], &[]).await.unwrap();
    let sub = SubmitEval { size: 1, payload: Some(json!({"n": 1})), ..Default::default() };
    app.admin.submit_eval(&pool, &sub).await.unwrap();
    let allocs = poll_n(&worker, &pool, &w.worker_id, 1).await;
    worker.complete(&pool, allocs[0].alloc_id.as_str(), 0, Some("ok")).await.unwrap();
    // A wrong token in a compat path is logged redacted too.
    let (st, _) = app.raw(Method::POST, "/compat/wrong-but-secret/CreatePool", None, Some("{}")).await;
    assert_eq!(st, 401);

    let log = lineup_tests::wait_for_async(Duration::from_secs(10), || async {
        let log = app.server_log();
        log.contains("CompleteAlloc").then_some(()).or(log.contains("/complete").then_some(())).map(|_| log)
    })
    .await;
    assert!(log.contains("DEBUG"), "a debug-level run");
    assert!(log.contains("/compat/<token>/CreatePool"), "the compat path, redacted");
    let hash = lineup_core::auth::hash;
    for secret in [app.token.clone(), hash(&app.token), wtoken.clone(), hash(&wtoken), "wrong-but-secret".into()] {
        assert!(!log.contains(&secret), "a secret in the log: {}…", &secret[..8]);
    }

    for name in ["lineup.db", "lineup.db-wal", "lineup.db-shm", "admin.token"] {
        let path = app.dir.join(name);
        let mode = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{name}: {e}")).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} is {mode:o}");
    }
}

/// A data dir `lineup dev` creates is 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_dir_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/data");
    let mut child = std::process::Command::new(lineup_tests::lineup_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("LINEUP_ADMIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let token = dir.join("admin.token");
    lineup_tests::wait_for(Duration::from_secs(30), || token.exists().then_some(())).await;
    let _ = child.kill();
    let _ = child.wait();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data dir is {mode:o}");
}

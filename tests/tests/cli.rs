//! The CLI as a person uses it: the README walkthrough with the real worker agent,
//! failures and retries through `--wait`, the agent's capacity limit and SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lineup_tests::{lineup_bin, wait_for, TestApp};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn spawn_agent(app: &TestApp, pool: &str, capacity: u32, script: &str) -> Child {
    Command::new(lineup_bin())
        .arg("--data-dir")
        .arg(&app.dir)
        .args([
            "worker",
            "run",
            "--pool",
            pool,
            "--capacity",
            &capacity.to_string(),
            "--dataset",
            "d1",
            "--poll-wait",
            "1",
            "--",
        ])
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker agent")
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(std::time::Instant::now() < end, "agent did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_with_worker_agent() {
    let app = TestApp::spawn_with(&[("LINEUP_MAX_RETRY", "1")], &[]).await;
    let out = app.cli(&["pool", "create"]);
    assert!(out.status.success(), "{out:?}");
    let pool = stdout(&out);
    assert_eq!(pool.len(), 20);

    let log = app.dir.join("runs.log");
    // Fails when the payload says so; logs start/end so concurrency can be checked.
    let script = format!(
        r#"echo start >> {log}; sleep 0.3; echo "hello $LINEUP_DATASET $LINEUP_PAYLOAD"; echo end >> {log}; test "$LINEUP_PAYLOAD" != '"fail"'"#,
        log = log.display()
    );
    let mut agent = spawn_agent(&app, &pool, 2, &script);

    let out = app.cli(&[
        "eval",
        "submit",
        "--pool",
        &pool,
        "--size",
        "1",
        "--dataset",
        "d1",
        "--payload",
        r#"{"x":1}"#,
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("complete"), "{}", stdout(&out));
    let out = app.cli(&["--json", "eval", "list", "--pool", &pool]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["evals"][0]["output"].as_str().unwrap().trim(), r#"hello d1 {"x":1}"#);

    // A failing command is retried (MAX_RETRY=1), then dead: --wait exits non-zero.
    let out = app.cli(&[
        "eval",
        "submit",
        "--pool",
        &pool,
        "--size",
        "1",
        "--payload",
        r#""fail""#,
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("dead"), "{}", stdout(&out));
    let out = app.cli(&["eval", "dead-letters", "--pool", &pool]);
    assert_eq!(stdout(&out).lines().count(), 2, "header plus the one dead eval: {}", stdout(&out));

    // Six evals of size 1 on capacity 2: never more than two at once.
    let _ = std::fs::remove_file(&log);
    for _ in 0..6 {
        let out = app.cli(&["eval", "submit", "--pool", &pool, "--size", "1"]);
        assert!(out.status.success());
    }
    // Six more, one at a time, each waited for.
    for _ in 0..6 {
        let out = app.cli(&["eval", "submit", "--pool", &pool, "--size", "1", "--wait"]);
        assert!(out.status.success(), "{out:?}");
    }
    wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().filter(|l| *l == "end").count() >= 12).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let (mut now, mut max) = (0i32, 0i32);
    for l in text.lines() {
        now += if l == "start" { 1 } else { -1 };
        max = max.max(now);
    }
    assert!(max <= 2, "the agent ran {max} allocs at once on capacity 2");
    assert!(max == 2, "and it did use its capacity ({max})");

    // SIGTERM with an alloc running: the agent exits cleanly, the alloc reported either
    // way (done in time, or stopped and failed, so it is retried; tests/tests/agent.rs
    // stops a long job).
    let out = app.cli(&["eval", "submit", "--pool", &pool, "--size", "1"]);
    let last = stdout(&out);
    wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.lines().filter(|l| *l == "start").count() >= 13).then_some(())
    })
    .await;
    let status = sigterm(&mut agent);
    assert!(status.success(), "{status:?}");
    let out = app.cli(&["--json", "eval", "show", "--pool", &pool, &last]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Stopped and reported failed: then retried (attempt 2), placed again on this
    // still-registered worker or waiting.
    let stopped = v["attempts"] == 2 && v["status"] != "complete";
    assert!((v["status"] == "complete" && v["attempts"] == 1) || stopped, "the running alloc was reported: {v}");
    let out = app.cli(&["pool", "show", &pool]);
    assert!(stdout(&out).contains(&pool));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_are_clear() {
    let app = TestApp::spawn().await;
    let out = app.cli(&["eval", "submit", "--pool", "nope", "--size", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid pool id"), "{err}");
    let out = app.cli(&["eval", "submit", "--pool", &"0".repeat(20), "--size", "1", "--payload", "{not json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload is not valid JSON"));
    // No server in this data dir.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(lineup_bin())
        .arg("--data-dir")
        .arg(empty.path())
        .args(["pool", "list"])
        .env_remove("LINEUP_ENDPOINT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no endpoint"));
    // clap rejects a non-number with a usage error.
    let out = app.cli(&["eval", "submit", "--pool", "x", "--size", "many"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Completions, `--output`, `pool top`, and many evals submitted and waited for with
/// progress (plain lines when not on a terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_comforts() {
    let app = TestApp::spawn().await;
    let out = app.cli(&["completions", "bash"]);
    assert!(out.status.success());
    let script = stdout(&out);
    assert!(script.contains("_lineup") && script.contains("redrive"), "a bash completion of every command");
    assert!(!app.cli(&["completions", "tcsh"]).status.success(), "an unknown shell is refused");

    let pool = stdout(&app.cli(&["pool", "create"]));
    let json: serde_json::Value = serde_json::from_str(&stdout(&app.cli(&["-o", "json", "pool", "list"]))).unwrap();
    assert_eq!(json["pools"][0]["pool_id"], serde_json::json!(pool));
    assert!(stdout(&app.cli(&["--output", "table", "pool", "list"])).starts_with("POOL"));

    let top = app.cli(&["pool", "top", "--count", "2", "--interval", "0.2"]);
    assert!(top.status.success());
    let text = stdout(&top);
    assert_eq!(text.matches("lineup pool top").count(), 2, "{text}");
    assert_eq!(text.matches(&pool).count(), 2, "{text}");
    let bad = app.cli(&["pool", "top", "--interval", "0"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--interval"));

    let mut agent = spawn_agent(&app, &pool, 3, "true");
    let many = app.cli_async(&["eval", "submit", "--pool", &pool, "--size", "1", "--count", "12", "--wait"]).await;
    let err = String::from_utf8_lossy(&many.stderr);
    assert!(many.status.success(), "{err}");
    assert!(err.contains("12/12 ended: complete 12"), "plain progress lines off a terminal: {err}");
    assert!(stdout(&many).contains("12 evals ended: complete 12"), "{}", stdout(&many));
    let done = app.admin.evals(&pool, Some("complete"), 100).await.unwrap();
    assert_eq!(done.len(), 12);
    sigterm(&mut agent);
    let zero = app.cli(&["eval", "submit", "--pool", &pool, "--size", "1", "--count", "0"]);
    assert!(!zero.status.success());
}

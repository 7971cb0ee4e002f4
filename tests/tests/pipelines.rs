//! Pipelines through the real `lineup dev`, its CLI and the worker agent running real
//! processes, on the embedded store and on DynamoDB + SQS (moto): steps run in
//! dependency order with fan-out and data between them, a failed step fails the
//! pipeline and skips the rest, a cancelled pipeline cancels its steps, and bad
//! pipelines are clear 400s that create nothing. (The rules on both backends, and a
//! crash between starting a step and recording it, are in the conformance suite.)

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lineup_tests::{lineup_bin, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent, as the README runs it, with a job that prints `STEP-INDEX` (its output,
/// which dependents get as inputs), saves the `notify` step's inputs, fails the `bad`
/// step and sleeps in the `slow` one; a plain eval's job continues once (exit 75 with
/// its state in `$LINEUP_CONTINUE_FILE`) and then prints the state it resumed with.
fn agent(app: &TestApp, pool: &str) -> Agent {
    let inputs = app.dir.join(format!("inputs-{pool}.json"));
    let script = format!(
        r#"case "$LINEUP_STEP" in
             '') if [ -z "$LINEUP_STATE" ]; then
                   printf '{{"after": 1, "state": {{"n": 1}}}}' > "$LINEUP_CONTINUE_FILE"; exit 75
                 fi
                 printf 'resumed %s' "$LINEUP_STATE"; exit 0 ;;
             bad) exit 3 ;;
             slow) sleep 30 ;;
             notify) printf '%s' "$LINEUP_INPUTS" > '{}' ;;
           esac
           printf '%s-%s' "$LINEUP_STEP" "$LINEUP_INDEX""#,
        inputs.display()
    );
    let log = std::fs::File::create(app.dir.join(format!("agent-{pool}.log"))).unwrap();
    Agent(
        Command::new(lineup_bin())
            .arg("--data-dir")
            .arg(&app.dir)
            .args(["worker", "run", "--pool", pool, "--capacity", "4", "--poll-wait", "1", "--", "sh", "-c", &script])
            .env("LINEUP_TOKEN", &app.token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the agent"),
    )
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

async fn pipeline(app: &TestApp, pool: &str, id: &str) -> Value {
    let (st, v) = app.raw(Method::GET, &format!("/v1/pools/{pool}/pipelines/{id}"), Some(&app.token), None).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn until_status(app: &TestApp, pool: &str, id: &str, want: &str) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = pipeline(app, pool, id).await;
        if v["status"] == want {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "pipeline never {want}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn steps(v: &Value) -> Vec<(String, String)> {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().into(), s["status"].as_str().unwrap().into()))
        .collect()
}

async fn story(app: &TestApp) {
    let pool = stdout(&app.cli(&["pool", "create"]));
    let _agent = agent(app, &pool);

    // A YAML file, as the README shows, submitted with the CLI, which waits for the end.
    let file = app.dir.join("pipeline.yaml");
    std::fs::write(
        &file,
        "steps:\n  - {name: backup, size: 1}\n  - {name: transfer, size: 1, count: 3, after: [backup]}\n  \
         - {name: notify, size: 1, after: [transfer, backup]}\n",
    )
    .unwrap();
    let out =
        app.cli(&["pipeline", "submit", "--pool", &pool, "-f", file.to_str().unwrap(), "--wait", "--timeout", "60"]);
    let text = stdout(&out);
    assert!(text.contains("step notify complete") && text.ends_with("complete"), "{text}");
    let id = text.lines().last().unwrap().split_whitespace().nth(1).unwrap().to_owned();
    // Each step started only after what it waits for: transfer saw backup's output,
    // notify all three of transfer's by index.
    let inputs: Value =
        serde_json::from_str(&std::fs::read_to_string(app.dir.join(format!("inputs-{pool}.json"))).unwrap()).unwrap();
    assert_eq!(inputs, json!({"transfer": ["transfer-0", "transfer-1", "transfer-2"], "backup": "backup-0"}));
    let v = pipeline(app, &pool, &id).await;
    assert_eq!(v["status"], "complete");
    let transfer = &v["steps"][1];
    assert_eq!((transfer["count"].as_u64(), transfer["eval_ids"].as_array().unwrap().len()), (Some(3), 3));
    let eval = transfer["eval_ids"][2].as_str().unwrap();
    let (_, e) = app.raw(Method::GET, &format!("/v1/pools/{pool}/evals/{eval}"), Some(&app.token), None).await;
    assert_eq!(
        (e["pipeline_id"].as_str(), e["step"].as_str(), e["index"].as_u64()),
        (Some(id.as_str()), Some("transfer"), Some(2))
    );
    assert_eq!(e["output"], "transfer-2");

    // A failing step fails the pipeline; the step after it is skipped; `show` says so.
    let body = json!({"steps": [{"name": "bad", "size": 1}, {"name": "after", "size": 1, "after": ["bad"]}]});
    let (st, v) =
        app.raw(Method::POST, &format!("/v1/pools/{pool}/pipelines"), Some(&app.token), Some(&body.to_string())).await;
    assert_eq!(st, 202, "{v}");
    let failed = v["pipeline_id"].as_str().unwrap().to_owned();
    let v = until_status(app, &pool, &failed, "failed").await;
    assert_eq!(steps(&v), vec![("bad".into(), "failed".into()), ("after".into(), "skipped".into())]);
    let shown = stdout(&app.cli(&["pipeline", "show", "--pool", &pool, &failed]));
    assert!(shown.contains("failed") && shown.contains("skipped"), "{shown}");

    // Cancel through the CLI: the running step's eval is cancelled, the next skipped.
    let body = json!({"steps": [{"name": "slow", "size": 1}, {"name": "later", "size": 1, "after": ["slow"]}], "idempotency_key": "slow-1"});
    let (st, v) =
        app.raw(Method::POST, &format!("/v1/pools/{pool}/pipelines"), Some(&app.token), Some(&body.to_string())).await;
    assert_eq!(st, 202, "{v}");
    let slow = v["pipeline_id"].as_str().unwrap().to_owned();
    let (st, again) =
        app.raw(Method::POST, &format!("/v1/pools/{pool}/pipelines"), Some(&app.token), Some(&body.to_string())).await;
    assert_eq!(
        (st, again["pipeline_id"].as_str(), again["created"].as_bool()),
        (200, Some(slow.as_str()), Some(false))
    );
    let out = stdout(&app.cli(&["pipeline", "cancel", "--pool", &pool, &slow]));
    assert!(out.ends_with("cancelled"), "{out}");
    let v = pipeline(app, &pool, &slow).await;
    assert_eq!(steps(&v), vec![("slow".into(), "cancelled".into()), ("later".into(), "skipped".into())]);
    let listed = stdout(&app.cli(&["--json", "pipeline", "list", "--pool", &pool, "--status", "cancelled"]));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["pipelines"].as_array().unwrap().len(), 1);

    // Continue later, for a plain eval: the job ran twice, the second time with the
    // state the first saved; a continuation is not a failure.
    let (st, v) =
        app.raw(Method::POST, &format!("/v1/pools/{pool}/evals"), Some(&app.token), Some(r#"{"size":1}"#)).await;
    assert_eq!(st, 202, "{v}");
    let eval = v["eval_id"].as_str().unwrap().to_owned();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let e = loop {
        let (_, e) = app.raw(Method::GET, &format!("/v1/pools/{pool}/evals/{eval}"), Some(&app.token), None).await;
        if e["status"] == "complete" {
            break e;
        }
        assert!(tokio::time::Instant::now() < end, "never complete: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((e["output"].as_str(), e["continued"].as_u64()), (Some(r#"resumed {"n":1}"#), Some(1)), "{e}");
    // The continue fields are checked before anything is looked up.
    for (body, code) in [
        (json!({"state": {"a": 1}}), "invalid_state"),
        (json!({"continue_after": -1}), "invalid_continue_after"),
        (json!({"continue_after": 1, "state": "x".repeat(70_000)}), "state_too_large"),
    ] {
        let path = format!("/v1/pools/{pool}/allocs/{}/complete", lineup_core::AllocId::generate());
        let (st, v) = app.raw(Method::POST, &path, Some(&app.token), Some(&body.to_string())).await;
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{body}: {v}");
    }

    // Bad pipelines: a 400 naming the problem each, and nothing created.
    let before = app.raw(Method::GET, &format!("/v1/pools/{pool}/pipelines"), Some(&app.token), None).await.1;
    let step = |name: &str, after: &[&str]| json!({"name": name, "size": 1, "after": after});
    for (body, code, names) in [
        (json!({"steps": []}), "empty_pipeline", ""),
        (json!({}), "missing_field", "steps"),
        (json!({"steps": [step("a", &[]), step("a", &[])]}), "duplicate_step", "\"a\""),
        (json!({"steps": [step("a", &["nope"])]}), "unknown_step", "nope"),
        (json!({"steps": [step("a", &["b"]), step("b", &["a"])]}), "cycle", "a → b → a"),
        (json!({"steps": [{"name": "a", "size": 1, "count": 0}]}), "invalid_count", "\"a\""),
        (json!({"steps": [{"name": "a", "size": 1, "afterr": ["b"]}]}), "invalid_json", "afterr"),
        (json!({"steps": [{"name": "a", "size": 0}]}), "invalid_size", "\"a\""),
        (
            json!({"steps": (0..1001).map(|i| step(&format!("s{i}"), &[])).collect::<Vec<_>>()}),
            "too_many_steps",
            "1000",
        ),
    ] {
        let (st, v) = app
            .raw(Method::POST, &format!("/v1/pools/{pool}/pipelines"), Some(&app.token), Some(&body.to_string()))
            .await;
        assert_eq!((st, v["code"].as_str()), (400, Some(code)), "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(names), "{code}: {v}");
    }
    let after = app.raw(Method::GET, &format!("/v1/pools/{pool}/pipelines"), Some(&app.token), None).await.1;
    assert_eq!(before, after, "nothing created");
    // A file that is neither JSON nor YAML: a message and a non-zero exit.
    std::fs::write(&file, "steps: [unclosed").unwrap();
    let out = app.cli(&["pipeline", "submit", "--pool", &pool, "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither JSON"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_on_the_embedded_store() {
    let app = TestApp::spawn_with(&[("LINEUP_MAX_RETRY", "0")], &[]).await;
    story(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_on_dynamodb_and_sqs() {
    let (app, _, _) = lineup_tests::spawn_on_moto("pl", &[("LINEUP_MAX_RETRY", "0")]).await;
    story(&app).await;
}

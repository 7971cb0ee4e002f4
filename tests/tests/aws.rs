//! `lineup dev --backend aws` against moto (DynamoDB + SQS on loopback, through the
//! real SDK): `lineup aws init`, then the original story over HTTP.

use std::process::Command;

use lineup_client::SubmitEval;
use lineup_conformance::moto::{sdk_env, Moto};
use lineup_tests::{lineup_bin, poll_n};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_story_on_dynamodb_and_sqs() {
    let moto = Moto::shared();
    let (app, deployment, init) = lineup_tests::spawn_on_moto("bb", &[]).await;
    assert!(init.contains(&format!("{deployment}-workers")), "{init}");
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();
    let reg = admin.register_worker(&pool.pool_id, 10).await.unwrap();
    assert!(reg.queue_url.ends_with(&format!("/{deployment}_{}_{}", pool.pool_id, reg.worker_id)), "{}", reg.queue_url);
    let me = admin.with_token(reg.token.as_deref().unwrap());
    me.heartbeat(&pool.pool_id, &reg.worker_id, &["d1".into()], &[]).await.unwrap();
    let sub = admin
        .submit_eval(&pool.pool_id, &SubmitEval { size: 3, dataset: Some("d1".into()), ..Default::default() })
        .await
        .unwrap();
    let a = poll_n(&me, &pool.pool_id, &reg.worker_id, 1).await.remove(0);
    assert_eq!((a.eval_id.as_str(), a.size), (sub.eval_id.as_str(), 3));
    assert_eq!(admin.workers(&pool.pool_id).await.unwrap()[0].free, 7);
    me.heartbeat(&pool.pool_id, &reg.worker_id, &["d1".into()], &[a.alloc_id.to_string()]).await.unwrap();
    me.complete(&pool.pool_id, a.alloc_id.as_str(), 0, Some("ok")).await.unwrap();
    assert_eq!(admin.workers(&pool.pool_id).await.unwrap()[0].free, 10);
    let ev = admin.eval(&pool.pool_id, &sub.eval_id).await.unwrap();
    assert_eq!((ev.status.as_str(), ev.exit_code), ("complete", Some(0)));
    let p = admin.pool(&pool.pool_id).await.unwrap();
    assert_eq!((p.workers, p.capacity, p.free, p.queued, p.allocs), (1, 10, 10, 0, 0));

    // The worker agent reading its queue straight from SQS (--sqs), as the Go client did;
    // in a pool of its own, so nothing else can take the eval.
    let solo = admin.create_pool(None).await.unwrap().pool_id;
    let mut agent = Command::new(lineup_bin())
        .arg("--data-dir")
        .arg(&app.dir)
        .args(["worker", "run", "--pool", &solo, "--capacity", "2", "--sqs", "--poll-wait", "1"])
        .args(["--aws-endpoint", &moto.endpoint, "--", "sh", "-c", "echo from-sqs $LINEUP_EVAL_ID"])
        .envs(sdk_env(moto))
        .env("LINEUP_DEPLOYMENT", &deployment)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = app.cli(&["eval", "submit", "--pool", &solo, "--size", "2", "--wait", "--timeout", "60"]);
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("complete"), "{text}");

    admin.disband_pool(&pool.pool_id).await.unwrap();
    assert_eq!(
        admin.submit_eval(&pool.pool_id, &SubmitEval { size: 1, ..Default::default() }).await.unwrap_err().status(),
        Some(409)
    );
}

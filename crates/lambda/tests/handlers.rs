//! The three handlers invoked in-process with real-shaped events (the sample events
//! shipped with aws_lambda_events, in tests/data/), on the AWS backend over moto.

use std::time::Duration;

use http_body_util::BodyExt;
use lambda_runtime::{Context, LambdaEvent};
use lineup_aws::{create_tables, AwsBackend};
use lineup_conformance::deployment::Deployment;
use lineup_conformance::moto::Moto;
use lineup_core::auth;
use lineup_core::service::Shard;
use lineup_core::PoolId;
use lineup_lambda::*;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "handler-test-admin-token";

fn fixture(name: &str) -> Value {
    let path = format!("{}/../../tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// The three handlers' dependencies, configured as the template configures each
/// function (its environment, resolved for a fresh deployment whose admin token is
/// TOKEN), over tables of their own in moto.
async fn deployment() -> [Deps; 3] {
    let name = format!("h{}", &lineup_core::PoolId::generate().as_str()[8..]);
    let dep = Deployment::of_repo_template(&[("Deployment", &name), ("AdminTokenSha256", &auth::hash(TOKEN))]);
    let mut out = Vec::new();
    for role in [Role::Gateway, Role::Schedule, Role::Release] {
        let f = dep.function_named(&format!("-{}", role.name()));
        let config = Config::from_vars(role, f.env.clone()).unwrap();
        let backend = AwsBackend::for_emulator(&Moto::shared().endpoint, &config.table_prefix()).await;
        if role == Role::Gateway {
            create_tables(backend.dynamodb(), backend.tables()).await.unwrap();
        }
        let d = Deps::with_config(backend, config);
        d.lineup.init().await.unwrap();
        out.push(d);
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

async fn deps() -> Deps {
    let [gateway, _, _] = deployment().await;
    gateway
}

/// The REST (v1) sample event, aimed at our route. Its stage stays in the event, as
/// API Gateway sends it.
fn rest_event(method: &str, path: &str, token: &str, body: Option<Value>) -> String {
    let mut e = fixture("example-apigw-request.json");
    e["httpMethod"] = json!(method);
    e["path"] = json!(path);
    e["resource"] = json!("/{proxy+}");
    e["requestContext"]["path"] = json!(format!("/testStage{path}"));
    e["requestContext"]["httpMethod"] = json!(method);
    e["queryStringParameters"] = Value::Null;
    e["multiValueQueryStringParameters"] = Value::Null;
    e["headers"]["Authorization"] = json!(format!("Bearer {token}"));
    e["multiValueHeaders"]["Authorization"] = json!([format!("Bearer {token}")]);
    e["body"] = body.map(|b| json!(b.to_string())).unwrap_or(Value::Null);
    e.to_string()
}

/// The HTTP API (v2) sample event, aimed at our route.
fn http_event(method: &str, path: &str, token: &str, body: Option<Value>) -> String {
    let mut e = fixture("example-apigw-v2-request-no-authorizer.json");
    e["rawPath"] = json!(path);
    e["rawQueryString"] = json!("");
    e["requestContext"]["http"]["method"] = json!(method);
    e["requestContext"]["http"]["path"] = json!(path);
    e["headers"]["authorization"] = json!(format!("Bearer {token}"));
    match body {
        Some(b) => e["body"] = json!(b.to_string()),
        None => {
            e.as_object_mut().unwrap().remove("body");
        }
    }
    e.to_string()
}

async fn call(router: &axum::Router, event: String) -> (u16, Value) {
    let req = lambda_http::request::from_str(&event).expect("a valid API Gateway event");
    let resp = router.clone().oneshot(req.map(axum::body::Body::new)).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn ctx(arn: &str, budget: Duration) -> Context {
    let mut c = Context::default();
    c.invoked_function_arn = arn.to_owned();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    c.deadline = now + budget.as_millis() as u64;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_story_through_the_three_handlers() {
    ignore_stage_in_path();
    let [d, sched, rel] = deployment().await;
    let gw = gateway(&d);

    // REST v1: create the pool and register the worker.
    let (st, pool) = call(&gw, rest_event("POST", "/v1/pools", TOKEN, Some(json!({})))).await;
    assert_eq!(st, 201, "{pool}");
    let pool = pool["pool_id"].as_str().unwrap().to_owned();
    let (st, w) =
        call(&gw, rest_event("POST", &format!("/v1/pools/{pool}/workers"), TOKEN, Some(json!({"capacity": 10})))).await;
    assert_eq!(st, 201, "{w}");
    let (worker, wtoken) = (w["worker_id"].as_str().unwrap().to_owned(), w["token"].as_str().unwrap().to_owned());
    assert!(w["queue_url"].as_str().unwrap().starts_with("http://127.0.0.1"), "a real SQS queue URL: {w}");

    // HTTP API v2: heartbeat with d1, submit the eval.
    let hb = format!("/v1/pools/{pool}/workers/{worker}/heartbeat");
    let (st, _) = call(&gw, http_event("POST", &hb, &wtoken, Some(json!({"datasets": ["d1"]})))).await;
    assert_eq!(st, 200);
    let (st, sub) = call(
        &gw,
        http_event("POST", &format!("/v1/pools/{pool}/evals"), TOKEN, Some(json!({"size": 3, "dataset": "d1"}))),
    )
    .await;
    assert_eq!(st, 202, "{sub}");
    let eval = sub["eval_id"].as_str().unwrap().to_owned();

    // The schedule function, invoked by the EventBridge schedule.
    // Its deadline leaves three seconds past the margin it keeps.
    let budget = Duration::from_secs(sched.functions.schedule_margin + 3);
    let event = LambdaEvent::new(
        fixture("example-eventbridge-schedule.json"),
        ctx("arn:aws:lambda:us-east-1:123456789012:function:lineup-schedule", budget),
    );
    let sum = schedule(event, &sched).await.unwrap();
    assert_eq!((sum.pools, sum.placed, sum.errors), (1, 1, 0), "{sum:?}");
    // Fanned out (one EventBridge rule per shard, its input naming the shard): of two
    // shards' invocations, only the one that owns the pool schedules it.
    let owner = (0..2).find(|k| Shard::new(*k, 2).unwrap().owns(&PoolId::parse(&pool).unwrap())).unwrap();
    for k in 0..2 {
        let ctx = ctx("arn:aws:lambda:us-east-1:123456789012:function:lineup-schedule", budget);
        let sum = schedule(LambdaEvent::new(json!({"shard": k, "shards": 2}), ctx), &sched).await.unwrap();
        assert_eq!(sum.pools, usize::from(k == owner), "shard {k}: {sum:?}");
    }

    // The alloc is in the worker's queue.
    let (st, polled) =
        call(&gw, http_event("POST", &format!("/v1/pools/{pool}/workers/{worker}/poll"), &wtoken, None)).await;
    assert_eq!(st, 200, "{polled}");
    let alloc = polled["allocs"][0].clone();
    assert_eq!((alloc["eval_id"].as_str(), alloc["size"].as_u64()), (Some(eval.as_str()), Some(3)));
    let alloc_id = alloc["alloc_id"].as_str().unwrap().to_owned();
    let (_, ws) = call(&gw, rest_event("GET", &format!("/v1/pools/{pool}/workers"), TOKEN, None)).await;
    assert_eq!(ws["workers"][0]["free"], 7);

    let (st, _) =
        call(&gw, http_event("POST", &hb, &wtoken, Some(json!({"datasets": ["d1"], "allocs": [alloc_id]})))).await;
    assert_eq!(st, 200);
    let (st, done) = call(
        &gw,
        rest_event(
            "POST",
            &format!("/v1/pools/{pool}/allocs/{alloc_id}/complete"),
            &wtoken,
            Some(json!({"exit_code": 0})),
        ),
    )
    .await;
    assert_eq!(st, 200, "{done}");
    let (_, ws) = call(&gw, rest_event("GET", &format!("/v1/pools/{pool}/workers"), TOKEN, None)).await;
    assert_eq!(ws["workers"][0]["free"], 10, "capacity back");

    // The release function, on the same schedule event: nothing expired yet.
    let event = LambdaEvent::new(
        fixture("example-eventbridge-schedule.json"),
        ctx("arn:aws:lambda:us-east-1:123456789012:function:lineup-release", Duration::from_secs(30)),
    );
    let rel = release(event, &rel).await.unwrap();
    assert_eq!((rel.allocs_released, rel.errors), (0, 0));
    let (_, ev) = call(&gw, rest_event("GET", &format!("/v1/pools/{pool}/evals/{eval}"), TOKEN, None)).await;
    assert_eq!(ev["status"], "complete");

    // A handler invoked under the wrong function's ARN refuses.
    let event = LambdaEvent::new(
        json!({}),
        ctx("arn:aws:lambda:us-east-1:123456789012:function:lineup-gateway", Duration::from_secs(5)),
    );
    assert!(matches!(release(event, &d).await, Err(LambdaError::WrongRole { .. })));
    let _ = sched;
}

#[tokio::test]
async fn gateway_errors_are_json_through_api_gateway_events() {
    ignore_stage_in_path();
    let d = deps().await;
    let gw = gateway(&d);
    let (st, v) = call(&gw, rest_event("GET", "/v1/pools", "wrong", None)).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthorized")));
    let (st, v) = call(&gw, http_event("POST", "/v1/pools/nope/evals", TOKEN, Some(json!({"size": 1})))).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("invalid_id")));
    let (st, _) = call(&gw, http_event("GET", "/health", "", None)).await;
    assert_eq!(st, 200);
}

#[test]
fn dispatch_by_arn_suffix() {
    let arn = |name: &str| format!("arn:aws:lambda:eu-west-1:123456789012:function:{name}");
    assert_eq!(role_for(&arn("prod-schedule"), None).unwrap(), Role::Schedule);
    assert_eq!(role_for(&arn("prod-release"), None).unwrap(), Role::Release);
    assert_eq!(role_for(&arn("prod-gateway"), None).unwrap(), Role::Gateway);
    // A qualified ARN (alias or version) still names the function.
    assert_eq!(role_for(&format!("{}:live", arn("prod-gateway")), None).unwrap(), Role::Gateway);
    // Emulators report a placeholder: fall back to AWS_LAMBDA_FUNCTION_NAME.
    assert_eq!(role_for("function-arn", Some("lineup-release")).unwrap(), Role::Release);
    // The ARN wins over the name when it is real.
    assert_eq!(role_for(&arn("x-schedule"), Some("x-release")).unwrap(), Role::Schedule);
    let err = role_for(&arn("prod-worker"), None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("prod-worker") && msg.contains("-schedule, -release, -gateway"), "{msg}");
    assert!(role_for("function-arn", None).is_err());
    assert!(check_invocation("function-arn", Role::Schedule).is_ok());
    assert!(check_invocation(&arn("a-schedule"), Role::Schedule).is_ok());
    assert!(check_invocation(&arn("a-release"), Role::Schedule).is_err());
}

#[test]
fn unknown_suffix_fails_at_start() {
    // The dispatch binary, started under a name it does not know, exits with the message.
    let bin = env!("CARGO_MANIFEST_DIR").to_owned() + "/../../target/debug/dispatch";
    if !std::path::Path::new(&bin).exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo).args(["build", "-q", "-p", "lineup-fn-dispatch"]).status().unwrap();
        assert!(ok.success());
    }
    let out = std::process::Command::new(&bin).env("AWS_LAMBDA_FUNCTION_NAME", "lineup-worker").output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-schedule, -release, -gateway"), "{text}");
}

#[tokio::test]
async fn gateway_accepts_the_admin_token_by_its_hash() {
    ignore_stage_in_path();
    // The template deploys only the hash; the token itself appears nowhere.
    let d = deps().await;
    assert_eq!(d.lineup.settings.admin_token, None);
    let gw = gateway(&d);
    let (st, _) = call(&gw, http_event("GET", "/v1/pools", TOKEN, None)).await;
    assert_eq!(st, 200);
    let (st, _) = call(&gw, http_event("GET", "/v1/pools", &auth::hash(TOKEN), None)).await;
    assert_eq!(st, 401, "the hash is not a token");
}

//! The deployed shape (`make e2e`): the three functions as `infra/template.yaml`
//! deploys them — their environment, names, timeouts and event sources all read from
//! the template (`lineup_conformance::deployment`), their tables and dead-letter queue
//! made by CloudFormation (moto's) from the template itself — run as real bootstrap
//! processes under a Lambda Runtime API on loopback (`util::lambda`). The whole story
//! goes through API Gateway events, through the `dispatch` bootstrap and through the
//! three single-purpose binaries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lineup_conformance::deployment::Deployment;
use lineup_conformance::moto::{create_stack, template_json, Moto};
use lineup_tests::apigw::{Api, ApiKind};
use lineup_tests::lambda::{Bootstrap, Invoked, LambdaFunction};
use serde_json::{json, Value};

fn storage_template() -> &'static str {
    static T: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    T.get_or_init(|| template_json(Some("AWS::DynamoDB::Table,AWS::SQS::Queue")))
}

fn eventbridge() -> Value {
    let path = format!("{}/data/example-eventbridge-schedule.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

/// What EventBridge sends the schedule function: the input of the template's rule
/// (`ScheduleShard0`; one shard unless `ScheduleShards` says more).
fn schedule_event(dep: &Deployment) -> Value {
    let rules = dep.of_type("AWS::Events::Rule");
    assert_eq!(rules.len(), 1, "one schedule rule at the default ScheduleShards: {rules:?}");
    let props = dep.resolve(&dep.resource(&rules[0]).expect("rule")["Properties"]).expect("resolve").expect("props");
    serde_json::from_str(props["Targets"][0]["Input"].as_str().expect("an input")).expect("JSON")
}

/// A fresh deployment's name and admin token, and the template resolved with the
/// parameters an operator would pass (short TTLs, so that expiry fits in a test).
fn new_deployment(extra: &[(&str, &str)]) -> (Deployment, String) {
    let id = lineup_core::PoolId::generate();
    let name = format!("e{}", &id.as_str()[8..]);
    let token = format!("e2e-{}", lineup_core::auth::random_secret());
    let hash = lineup_core::auth::hash(&token);
    let mut params = vec![
        ("Deployment", name.as_str()),
        ("AdminTokenSha256", hash.as_str()),
        ("WorkerTtl", "3"),
        ("AllocTtl", "3"),
        ("MaxRetry", "1"),
        ("PoolTtl", "1"),
    ];
    params.extend_from_slice(extra);
    (Deployment::of_repo_template(&params), token)
}

fn code_uri(dep: &Deployment, suffix: &str) -> (lineup_conformance::deployment::Function, String) {
    let f = dep.function_named(suffix);
    let uri = dep.resource(&f.logical_id).expect("function")["Properties"]["CodeUri"].as_str().expect("CodeUri");
    (f.clone(), uri.to_owned())
}

async fn start(
    dep: &Deployment,
    suffix: &str,
    bootstrap: Bootstrap,
    instances: usize,
    env: &[(&str, &str)],
) -> LambdaFunction {
    let (f, uri) = code_uri(dep, suffix);
    LambdaFunction::start(f, &uri, bootstrap, instances, Moto::shared(), env, &[]).await
}

/// The API Gateway kind the template's gateway function is wired to.
fn declared_api(dep: &Deployment) -> ApiKind {
    let f = dep.function_named("-gateway");
    let events = dep.resource(&f.logical_id).expect("gateway")["Properties"]["Events"].clone();
    let kinds: Vec<ApiKind> = events
        .as_object()
        .expect("events")
        .values()
        .filter_map(|e| ApiKind::of_sam_event(e["Type"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(kinds.len(), 1, "one API in front of the gateway: {events}");
    kinds[0]
}

struct Deployed {
    dep: Deployment,
    token: String,
    api: Api,
    release: LambdaFunction,
    schedule: Arc<LambdaFunction>,
    schedules: Arc<Mutex<Vec<Value>>>,
    released: Mutex<serde_json::Map<String, Value>>,
    eventbridge: tokio::task::JoinHandle<()>,
}

impl Drop for Deployed {
    fn drop(&mut self) {
        self.eventbridge.abort();
    }
}

/// Deploys: the stack's tables and queue, then the functions, `schedule` invoked
/// again as soon as it returns (its rule fires every minute; it runs ~55 s of it).
async fn deploy(bootstrap: Bootstrap, kind: Option<ApiKind>, env: &[(&str, &str)]) -> Deployed {
    let (dep, token) = new_deployment(&[]);
    let deployment = dep.param("Deployment").to_owned();
    create_stack(Moto::shared(), &dep.stack, storage_template(), &[("Deployment", &deployment)]).await;
    let kind = kind.unwrap_or_else(|| declared_api(&dep));
    // Several gateway instances: a worker's long poll holds one, as on Lambda.
    let gateway = Arc::new(start(&dep, "-gateway", bootstrap, 4, env).await);
    let schedule = Arc::new(start(&dep, "-schedule", bootstrap, 1, env).await);
    let release = start(&dep, "-release", bootstrap, 1, env).await;
    let schedules = Arc::new(Mutex::new(Vec::new()));
    let eventbridge = {
        let (schedule, schedules, event) = (schedule.clone(), schedules.clone(), schedule_event(&dep));
        tokio::spawn(async move {
            loop {
                let out = schedule.invoke(event.clone()).await.ok();
                schedules.lock().expect("lock").push(out);
            }
        })
    };
    let released = Mutex::default();
    Deployed { dep, token, api: Api { function: gateway, kind }, release, schedule, schedules, released, eventbridge }
}

impl Deployed {
    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        self.api.call(method, path, Some(token), body).await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (st, v) = self.call(method, path, &self.token, body).await;
        assert_eq!(st, want, "{method} {path}: {v}");
        v
    }

    async fn eval(&self, pool: &str, eval: &str) -> Value {
        self.admin("GET", &format!("/v1/pools/{pool}/evals/{eval}"), None, 200).await
    }

    /// Polls the eval until `pred` holds (at most 40 s: the scheduler is running).
    async fn eval_until(&self, pool: &str, eval: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let e = self.eval(pool, eval).await;
            if pred(&e) {
                return e;
            }
            assert!(tokio::time::Instant::now() < end, "eval never {what}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Invokes `release` until `done` holds for the sum of every release summary of
    /// this deployment so far.
    async fn release_until(&self, what: &str, done: impl Fn(&Value) -> bool) {
        let end = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let sum = self.release.invoke(eventbridge()).await.ok();
            assert_eq!(sum["errors"], json!(0), "release: {sum}");
            let total = {
                let mut t = self.released.lock().unwrap();
                for (k, v) in sum.as_object().expect("a summary") {
                    let n = t.get(k).and_then(Value::as_u64).unwrap_or(0) + v.as_u64().unwrap_or(0);
                    t.insert(k.clone(), json!(n));
                }
                Value::Object(t.clone())
            };
            if done(&total) {
                return;
            }
            assert!(tokio::time::Instant::now() < end, "release never {what}: {total}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A worker as the agent behaves: heartbeats every second with the allocs it runs,
/// until it "dies"; remembers the allocs the API told it to stop.
struct Worker {
    id: String,
    token: String,
    running: Arc<Mutex<Vec<String>>>,
    cancelled: Arc<Mutex<Vec<String>>>,
    heart: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn register(d: &Deployed, pool: &str, capacity: u32, datasets: &[&str]) -> Worker {
        let w = d.admin("POST", &format!("/v1/pools/{pool}/workers"), Some(json!({"capacity": capacity})), 201).await;
        let (id, token) = (w["worker_id"].as_str().unwrap().to_owned(), w["token"].as_str().unwrap().to_owned());
        let queue = w["queue_url"].as_str().unwrap();
        assert!(queue.starts_with(&Moto::shared().endpoint), "the worker's real SQS queue: {w}");
        let deployment = d.dep.param("Deployment");
        assert!(queue.ends_with(&format!("/{deployment}_{pool}_{id}")), "named as the grants expect: {queue}");
        let (running, cancelled) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let beats = Arc::new(AtomicU32::new(0));
        let heart = {
            let beats = beats.clone();
            let (api, path, token) = (d.api.clone(), format!("/v1/pools/{pool}/workers/{id}/heartbeat"), token.clone());
            let (running, cancelled) = (running.clone(), cancelled.clone());
            let datasets: Vec<String> = datasets.iter().map(|s| s.to_string()).collect();
            tokio::spawn(async move {
                loop {
                    let allocs = running.lock().unwrap().clone();
                    let body = json!({"datasets": datasets, "allocs": allocs});
                    let (st, v) = api.call("POST", &path, Some(&token), Some(body)).await;
                    assert_eq!(st, 200, "heartbeat: {v}");
                    for a in v["cancelled"].as_array().into_iter().flatten() {
                        cancelled.lock().unwrap().push(a.as_str().unwrap().to_owned());
                    }
                    beats.fetch_add(1, Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            })
        };
        // One beat before going on, so the worker's datasets are known.
        lineup_tests::wait_for(Duration::from_secs(20), || (beats.load(Ordering::Acquire) > 0).then_some(())).await;
        Worker { id, token, running, cancelled, heart }
    }

    /// Long-polls (through the gateway) until the alloc for `eval` arrives.
    async fn take(&self, d: &Deployed, pool: &str, eval: &str) -> Value {
        let path = format!("/v1/pools/{pool}/workers/{}/poll?wait=5&max=10", self.id);
        let end = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let (st, v) = d.call("POST", &path, &self.token, None).await;
            assert_eq!(st, 200, "poll: {v}");
            let allocs = v["allocs"].as_array().unwrap();
            assert!(allocs.iter().all(|a| a["eval_id"] == json!(eval)), "only the expected alloc: {v}");
            if let Some(a) = allocs.first() {
                self.running.lock().unwrap().push(a["alloc_id"].as_str().unwrap().to_owned());
                return a.clone();
            }
            assert!(tokio::time::Instant::now() < end, "no alloc for {eval}");
        }
    }

    async fn finish(&self, d: &Deployed, pool: &str, alloc: &Value, how: &str, body: Value) -> Value {
        let id = alloc["alloc_id"].as_str().unwrap();
        let (st, v) = d.call("POST", &format!("/v1/pools/{pool}/allocs/{id}/{how}"), &self.token, Some(body)).await;
        assert_eq!(st, 200, "{how}: {v}");
        self.running.lock().unwrap().retain(|a| a != id);
        v
    }

    fn die(&self) {
        self.heart.abort();
    }
}

async fn worker_free(d: &Deployed, pool: &str, id: &str) -> Option<u64> {
    let ws = d.admin("GET", &format!("/v1/pools/{pool}/workers"), None, 200).await;
    ws["workers"].as_array().unwrap().iter().find(|w| w["worker_id"] == json!(id)).map(|w| w["free"].as_u64().unwrap())
}

async fn submit(d: &Deployed, pool: &str, body: Value) -> String {
    let v = d.admin("POST", &format!("/v1/pools/{pool}/evals"), Some(body), 202).await;
    assert_eq!(v["status"], json!("queued"), "{v}");
    v["eval_id"].as_str().unwrap().to_owned()
}

async fn story(bootstrap: Bootstrap, kind: Option<ApiKind>) {
    let d = deploy(bootstrap, kind, &[]).await;
    let (st, h) = d.api.call("GET", "/health", None, None).await;
    assert_eq!((st, &h["status"]), (200, &json!("ok")), "{h}");
    let (st, e) = d.call("GET", "/v1/pools", "not-the-token", None).await;
    assert_eq!((st, &e["code"]), (401, &json!("unauthorized")), "{e}");

    // A pool, created while `schedule` is already running, and two workers.
    let pool = d.admin("POST", "/v1/pools", Some(json!({})), 201).await["pool_id"].as_str().unwrap().to_owned();
    let w1 = Worker::register(&d, &pool, 4, &["d1"]).await;
    let w2 = Worker::register(&d, &pool, 4, &[]).await;

    // Locality: the eval near d1 goes to w1, through a long poll; run, complete.
    let e1 = submit(&d, &pool, json!({"size": 2, "dataset": "d1", "payload": {"n": 1}})).await;
    let a1 = w1.take(&d, &pool, &e1).await;
    assert_eq!((&a1["size"], &a1["payload"]), (&json!(2), &json!({"n": 1})), "{a1}");
    let e = d.eval(&pool, &e1).await;
    assert_eq!((&e["status"], &e["worker_id"]), (&json!("placed"), &json!(w1.id)), "{e}");
    assert_eq!(worker_free(&d, &pool, &w1.id).await, Some(2), "capacity claimed");
    w1.finish(&d, &pool, &a1, "complete", json!({"exit_code": 0, "output": "done"})).await;
    let e = d.eval(&pool, &e1).await;
    assert_eq!((&e["status"], &e["exit_code"], &e["output"]), (&json!("complete"), &json!(0), &json!("done")));
    assert_eq!(worker_free(&d, &pool, &w1.id).await, Some(4), "capacity back");

    // Fail until dead-lettered: MaxRetry 1 = two attempts.
    let e2 = submit(&d, &pool, json!({"size": 1})).await;
    for attempt in 1..=2 {
        let e = d
            .eval_until(&pool, &e2, "placed", |e| e["status"] == json!("placed") && e["attempts"] == json!(attempt))
            .await;
        let w = if e["worker_id"] == json!(w1.id) { &w1 } else { &w2 };
        let a = w.take(&d, &pool, &e2).await;
        assert_eq!(a["attempt"], json!(attempt), "{a}");
        w.finish(&d, &pool, &a, "fail", json!({"reason": "boom"})).await;
    }
    let e = d.eval_until(&pool, &e2, "dead", |e| e["status"] == json!("dead")).await;
    assert_eq!(e["attempts"], json!(2), "{e}");
    let dl = d.admin("GET", &format!("/v1/pools/{pool}/dead-letters"), None, 200).await;
    assert!(dl["evals"].as_array().unwrap().iter().any(|x| x["eval_id"] == json!(e2)), "{dl}");

    // A worker dies holding an alloc: `release` takes it back and the eval runs again
    // on the other worker.
    let e3 = submit(&d, &pool, json!({"size": 3})).await;
    let e = d.eval_until(&pool, &e3, "placed", |e| e["status"] == json!("placed")).await;
    let (dying, other) = if e["worker_id"] == json!(w1.id) { (&w1, &w2) } else { (&w2, &w1) };
    let first = dying.take(&d, &pool, &e3).await;
    dying.die();
    // Wait until its TTL has run out, so the retry cannot land on it again.
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ws = d.admin("GET", &format!("/v1/pools/{pool}/workers"), None, 200).await;
        let w = ws["workers"].as_array().unwrap().iter().find(|w| w["worker_id"] == json!(dying.id)).cloned();
        if w.is_some_and(|w| w["live"] == json!(false)) {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "the worker stays live without heartbeats: {ws}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.release_until("released the dead worker's alloc", |s| s["allocs_released"].as_u64().unwrap_or(0) > 0).await;
    let e =
        d.eval_until(&pool, &e3, "placed again", |e| e["status"] == json!("placed") && e["attempts"] == json!(2)).await;
    assert_eq!(e["worker_id"], json!(other.id), "{e}");
    let second = other.take(&d, &pool, &e3).await;
    assert_ne!(second["alloc_id"], first["alloc_id"]);
    other.finish(&d, &pool, &second, "complete", json!({"exit_code": 0})).await;
    d.release_until("removed the dead worker", |s| s["workers_removed"].as_u64().unwrap_or(0) > 0).await;
    assert_eq!(worker_free(&d, &pool, &dying.id).await, None, "the dead worker is gone");

    // Cancel: a queued eval, and a placed one (its worker is told to stop it).
    let e4 = submit(&d, &pool, json!({"size": 100})).await;
    let e = d.admin("DELETE", &format!("/v1/pools/{pool}/evals/{e4}"), None, 202).await;
    assert_eq!(e["status"], json!("cancelled"), "{e}");
    let e5 = submit(&d, &pool, json!({"size": 1})).await;
    let a5 = other.take(&d, &pool, &e5).await;
    d.admin("DELETE", &format!("/v1/pools/{pool}/evals/{e5}"), None, 202).await;
    let a5_id = a5["alloc_id"].as_str().unwrap().to_owned();
    lineup_tests::wait_for(Duration::from_secs(20), || other.cancelled.lock().unwrap().contains(&a5_id).then_some(()))
        .await;
    // The capacity stays claimed until the worker says the job stopped (or the alloc
    // expires): never two jobs on one claim.
    assert_eq!(worker_free(&d, &pool, &other.id).await, Some(3), "held until the worker stops the job");
    other.finish(&d, &pool, &a5, "fail", json!({"reason": "cancelled: stopped by the worker"})).await;
    assert_eq!(d.eval(&pool, &e5).await["status"], json!("cancelled"));
    assert_eq!(worker_free(&d, &pool, &other.id).await, Some(4), "capacity back once the job stopped");
    assert_eq!(d.eval(&pool, &e4).await["worker_id"], Value::Null, "a cancelled eval is never placed");

    // Disband: the pool stops taking evals; `release` purges it after PoolTtl.
    other.die();
    let p = d.admin("DELETE", &format!("/v1/pools/{pool}"), None, 202).await;
    assert_eq!(p["status"], json!("disbanded"), "{p}");
    let (st, e) = d.call("POST", &format!("/v1/pools/{pool}/evals"), &d.token, Some(json!({"size": 1}))).await;
    assert_eq!((st, &e["code"]), (409, &json!("pool_disbanded")), "{e}");
    d.release_until("purged the pool", |s| s["pools_purged"].as_u64().unwrap_or(0) > 0).await;
    let (st, _) = d.call("GET", &format!("/v1/pools/{pool}"), &d.token, None).await;
    assert_eq!(st, 404);

    // Each function wrote its figures to its log as Embedded Metric Format, in the
    // namespace the template gives it (what its alarms read).
    let ns = json!(format!("Lineup/{}", d.dep.param("Deployment")));
    let emf = |log: String, name: &str| -> f64 {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .filter(|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] == ns)
            .filter_map(|v| v[name].as_f64())
            .sum()
    };
    assert!(emf(d.api.function.log_text(), "lineup_evals_submitted_total") >= 5.0, "gateway EMF");
    assert!(emf(d.api.function.log_text(), "lineup_evals_completed_total") >= 2.0, "gateway EMF");
    assert!(emf(d.api.function.log_text(), "lineup_evals_dead_total") >= 1.0, "gateway EMF");
    // A schedule invocation writes its line when it ends (it runs until its deadline).
    lineup_tests::wait_for(Duration::from_secs(90), || {
        (emf(d.schedule.log_text(), "lineup_evals_placed_total") >= 5.0).then_some(())
    })
    .await;
    assert!(emf(d.schedule.log_text(), "lineup_backend_calls_total") >= 1.0, "schedule EMF");
    assert!(emf(d.release.log_text(), "lineup_evals_failed_total") >= 1.0, "release EMF: the dead worker's alloc");

    let sums = d.schedules.lock().unwrap().clone();
    assert!(sums.iter().all(|s| s["errors"] == json!(0)), "schedule errors: {sums:?}");
    assert!(d.schedule.function.reserved_concurrency.is_some(), "the scheduler has concurrency of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_through_dispatch_with_the_declared_api() {
    story(Bootstrap::Dispatch, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_through_the_single_binaries_with_a_rest_api() {
    story(Bootstrap::Single, Some(ApiKind::RestV1)).await;
}

/// Without the hash (or a token) the gateway cannot start, and says why to the
/// Runtime API; with a malformed one likewise. Both bootstraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_without_admin_credentials_fails_at_init() {
    let (dep, _) = new_deployment(&[]);
    let (f, uri) = code_uri(&dep, "-gateway");
    for bootstrap in [Bootstrap::Dispatch, Bootstrap::Single] {
        let g =
            LambdaFunction::start(f.clone(), &uri, bootstrap, 1, Moto::shared(), &[], &["LINEUP_ADMIN_TOKEN_SHA256"])
                .await;
        let out = g.invoke(json!({})).await;
        let Invoked::InitError { error_type, message } = out else { panic!("{bootstrap:?}: {out:?}") };
        assert_eq!(error_type, "Lineup.Config", "{message}");
        assert!(
            message.contains("LINEUP_ADMIN_TOKEN_SHA256") && message.contains("or LINEUP_ADMIN_TOKEN"),
            "{message}"
        );

        let g = LambdaFunction::start(
            f.clone(),
            &uri,
            bootstrap,
            1,
            Moto::shared(),
            &[("LINEUP_ADMIN_TOKEN_SHA256", "not-a-hash")],
            &["LINEUP_ADMIN_TOKEN_SHA256"],
        )
        .await;
        let Invoked::InitError { error_type, message } = g.invoke(json!({})).await else { panic!("started") };
        assert_eq!(error_type, "Lineup.Config", "{message}");
        assert!(message.contains("64 hex") && !message.contains("not-a-hash"), "{message}");
    }
}

/// At debug level, through the compat routes (token in the path) and the worker
/// routes: no token and no token hash in any function's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_in_the_functions_logs() {
    let d = deploy(Bootstrap::Dispatch, None, &[("LINEUP_LOG", "debug")]).await;
    let v = d.admin("POST", &format!("/compat/{}/CreatePool", d.token), Some(json!({})), 200).await;
    let pool = v["PoolID"].as_str().or(v["pool_id"].as_str()).unwrap_or_else(|| panic!("{v}")).to_owned();
    let w = Worker::register(&d, &pool, 2, &["d1"]).await;
    let e = submit(&d, &pool, json!({"size": 1})).await;
    let a = w.take(&d, &pool, &e).await;
    w.finish(&d, &pool, &a, "complete", json!({"exit_code": 0})).await;
    d.release.invoke(eventbridge()).await.ok();
    let logs = [d.api.function.log_text(), d.schedule.log_text(), d.release.log_text()].join("\n");
    assert!(logs.contains("DEBUG") || logs.contains("\"level\":\"DEBUG\""), "a debug-level run");
    assert!(logs.contains("/compat/"), "the compat request was logged (redacted)");
    for secret in [&d.token, &lineup_core::auth::hash(&d.token), &w.token, &lineup_core::auth::hash(&w.token)] {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs: {}…", &secret[..8]);
    }
}

//! A Lambda service on loopback, for the deployed-shape tests. The real bootstrap
//! binaries run as Lambda runs them: against the Runtime API
//! (`/2018-06-01/runtime/...`, served here), with the environment the template gives
//! the function and what Lambda itself sets, and nothing else; each invocation carries
//! the function's real ARN and a deadline from its timeout. Several instances of one
//! function take invocations from one queue, as Lambda scales a function out.
//!
//! The one concession to running off AWS: `AWS_ENDPOINT_URL` points the SDK at moto.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use lineup_conformance::deployment::{Function, ACCOUNT, REGION};
use lineup_conformance::moto::Moto;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Which binary serves a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// `dispatch`: one bootstrap for all three, picking its handler by name.
    Dispatch,
    /// The binary the template's `CodeUri` names (`target/lambda/<bin>/bootstrap.zip`).
    Single,
}

/// How an invocation ended.
#[derive(Debug)]
pub enum Invoked {
    Ok(Value),
    /// The handler's error (`/response` never came): `errorType`, `errorMessage`.
    Error {
        error_type: String,
        message: String,
    },
    /// The instance failed before it took the invocation (`/init/error`, or it exited).
    InitError {
        error_type: String,
        message: String,
    },
}

impl Invoked {
    pub fn ok(self) -> Value {
        match self {
            Invoked::Ok(v) => v,
            other => panic!("invocation failed: {other:?}"),
        }
    }
}

struct Pending {
    id: String,
    event: Value,
    deadline_ms: u64,
    reply: oneshot::Sender<Invoked>,
}

struct Shared {
    arn: String,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Invoked>>>,
    init_error: Mutex<Option<(String, String)>>,
}

/// A function: its Runtime API endpoint and the processes serving it.
pub struct LambdaFunction {
    pub function: Function,
    pub arn: String,
    pub logs: Vec<PathBuf>,
    tx: mpsc::UnboundedSender<Pending>,
    shared: Arc<Shared>,
    children: Mutex<Vec<Child>>,
    server: tokio::task::JoinHandle<()>,
    seq: std::sync::atomic::AtomicU64,
}

/// The bootstrap binaries, built once per test process (the Makefile builds them first).
pub fn bootstrap_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        let dir = exe.parent().and_then(std::path::Path::parent).expect("target dir").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "lineup-fn-dispatch", "-p", "lineup-fn-schedule"])
            .args(["-p", "lineup-fn-release", "-p", "lineup-fn-gateway"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the functions failed");
        dir
    })
    .clone()
}

fn binary(f: &Function, bootstrap: Bootstrap, code_uri: &str) -> PathBuf {
    let name = match bootstrap {
        Bootstrap::Dispatch => "dispatch".to_owned(),
        Bootstrap::Single => {
            let parts: Vec<&str> = code_uri.split('/').collect();
            assert!(
                parts.len() >= 3 && parts[parts.len() - 1] == "bootstrap.zip",
                "{}: CodeUri {code_uri} is not target/lambda/<bin>/bootstrap.zip",
                f.logical_id
            );
            parts[parts.len() - 2].to_owned()
        }
    };
    bootstrap_dir().join(name)
}

impl LambdaFunction {
    /// Starts `instances` processes of `function` as deployed. `code_uri` is the
    /// function's `CodeUri`; `extra_env` is what an operator adds (a log level) or a
    /// test takes away (`remove`).
    pub async fn start(
        function: Function,
        code_uri: &str,
        bootstrap: Bootstrap,
        instances: usize,
        moto: &Moto,
        extra_env: &[(&str, &str)],
        remove: &[&str],
    ) -> LambdaFunction {
        let arn = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{}", function.name);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            arn: arn.clone(),
            next: tokio::sync::Mutex::new(rx),
            waiting: Mutex::new(HashMap::new()),
            init_error: Mutex::new(None),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind runtime api");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let bin = binary(&function, bootstrap, code_uri);
        let log_group = function.log_group.clone().unwrap_or_else(|| format!("/aws/lambda/{}", function.name));
        let mut children = Vec::new();
        let mut logs = Vec::new();
        for i in 0..instances {
            let log = std::env::temp_dir().join(format!("lineup-fn-{}-{port}-{i}.log", function.name));
            let out = std::fs::File::create(&log).expect("function log");
            let mut cmd = Command::new(&bin);
            cmd.env_clear()
                .envs(function.env.iter().filter(|(k, _)| !remove.contains(&k.as_str())))
                .envs(extra_env.iter().copied())
                // What Lambda sets for a custom runtime.
                .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
                .env("AWS_LAMBDA_FUNCTION_NAME", &function.name)
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", function.memory_mb.to_string())
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_LOG_GROUP_NAME", &log_group)
                .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("2026/12/02/[$LATEST]instance{i}"))
                .env("AWS_REGION", REGION)
                .env("AWS_DEFAULT_REGION", REGION)
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_SESSION_TOKEN", "test")
                .env("_HANDLER", "bootstrap")
                .env("TZ", ":UTC")
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("AWS_ENDPOINT_URL", &moto.endpoint)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log"))
                .stderr(out);
            children.push(cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", bin.display())));
            logs.push(log);
        }
        LambdaFunction {
            function,
            arn,
            logs,
            tx,
            shared,
            children: Mutex::new(children),
            server,
            seq: Default::default(),
        }
    }

    /// Invokes the function with `event` and waits for the outcome (at most the
    /// function's timeout and a few seconds).
    pub async fn invoke(&self, event: Value) -> Invoked {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("req-{n:08}-{}", lineup_core::PoolId::generate());
        let timeout = Duration::from_secs(self.function.timeout_secs);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
        let (reply, rx) = oneshot::channel();
        let pending = Pending { id, event, deadline_ms: now_ms as u64 + timeout.as_millis() as u64, reply };
        if self.tx.send(pending).is_err() {
            panic!("{}: runtime API gone", self.function.name);
        }
        let end = Instant::now() + timeout + Duration::from_secs(5);
        tokio::pin!(rx);
        loop {
            tokio::select! {
                r = &mut rx => return r.expect("runtime API dropped the invocation"),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if let Some((error_type, message)) = self.shared.init_error.lock().expect("lock").clone() {
                return Invoked::InitError { error_type, message };
            }
            if self.all_exited() {
                return Invoked::InitError {
                    error_type: "Runtime.ExitError".into(),
                    message: format!("every instance exited; see {:?}", self.logs),
                };
            }
            assert!(Instant::now() < end, "{}: the invocation outlived its timeout", self.function.name);
        }
    }

    fn all_exited(&self) -> bool {
        let mut children = self.children.lock().expect("lock");
        children.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Everything the instances have logged so far.
    pub fn log_text(&self) -> String {
        self.logs.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for LambdaFunction {
    fn drop(&mut self) {
        for c in self.children.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.server.abort();
    }
}

async fn next(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let p = s.next.lock().await.recv().await;
    let Some(p) = p else { return (StatusCode::GONE, HeaderMap::new(), String::new()) };
    s.waiting.lock().expect("lock").insert(p.id.clone(), p.reply);
    let mut h = HeaderMap::new();
    let header = |v: String| v.parse().expect("header value");
    h.insert("lambda-runtime-aws-request-id", header(p.id));
    h.insert("lambda-runtime-deadline-ms", header(p.deadline_ms.to_string()));
    h.insert("lambda-runtime-invoked-function-arn", header(s.arn.clone()));
    h.insert("lambda-runtime-trace-id", header("Root=1-00000000-000000000000000000000000;Sampled=0".into()));
    h.insert("content-type", header("application/json".into()));
    (StatusCode::OK, h, p.event.to_string())
}

fn take(s: &Shared, id: &str) -> Option<oneshot::Sender<Invoked>> {
    s.waiting.lock().expect("lock").remove(id)
}

async fn response(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let Some(reply) = take(&s, &id) else { return StatusCode::BAD_REQUEST };
    let v = serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    let _ = reply.send(Invoked::Ok(v));
    StatusCode::ACCEPTED
}

fn diagnostic(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    (v["errorType"].as_str().unwrap_or_default().to_owned(), v["errorMessage"].as_str().unwrap_or_default().to_owned())
}

async fn error(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let Some(reply) = take(&s, &id) else { return StatusCode::BAD_REQUEST };
    let (error_type, message) = diagnostic(&body);
    let _ = reply.send(Invoked::Error { error_type, message });
    StatusCode::ACCEPTED
}

async fn init_error(State(s): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    *s.init_error.lock().expect("lock") = Some(diagnostic(&body));
    StatusCode::ACCEPTED
}

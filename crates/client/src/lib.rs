//! A typed client for Lineup's REST API (`/v1`), used by the CLI, the worker agent
//! and the black-box tests. Every call returns the server's `{"code","message"}` as
//! `ClientError::Api` when the server said no.

use std::time::Duration;

mod events;
pub use events::{EventView, StreamItem};

use lineup_core::AllocMessage;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and body.
    #[error("{status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    /// The request did not get an answer (connection refused, timeout, ...).
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    /// The answer was not what the API promises.
    #[error("unexpected response from {url}: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// An error status's `{"code","message"}` body, or what came instead.
fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    ClientError::Api {
        status: status.as_u16(),
        code: v["code"].as_str().unwrap_or("http_error").to_owned(),
        message: v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PoolView {
    pub pool_id: String,
    pub strategy: String,
    pub status: String,
    pub workers: u64,
    pub capacity: u64,
    pub free: u64,
    pub queued: u64,
    pub allocs: u64,
    #[serde(default)]
    pub max_running: Option<u32>,
    #[serde(default)]
    pub running: u64,
    /// The effective limit (max_running scaled by health); `None`: none.
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub health: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct WorkerView {
    pub worker_id: String,
    pub pool_id: String,
    pub capacity: u32,
    pub free: u32,
    pub queue_url: String,
    /// Seconds a worker stays live without a heartbeat.
    pub ttl: u64,
    #[serde(default)]
    pub live: bool,
    /// Only in the registration response.
    #[serde(default)]
    pub token: Option<String>,
    /// Only in the registration response: seconds an alloc stays live without a heartbeat.
    #[serde(default)]
    pub alloc_ttl: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct EvalView {
    pub eval_id: String,
    pub pool_id: String,
    pub status: String,
    pub size: u32,
    pub dataset: Option<String>,
    #[serde(default)]
    pub payload: Option<Value>,
    pub attempts: u32,
    pub worker_id: Option<String>,
    pub alloc_id: Option<String>,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output: Option<String>,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// What a redrive did.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Redriven {
    pub redriven: Vec<EvalView>,
    pub skipped: Vec<Skipped>,
    /// More dead evals are left than one call takes.
    pub more: bool,
    pub redrive_id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Skipped {
    pub eval_id: String,
    pub reason: String,
}

/// A pipeline as the API shows it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PipelineView {
    pub pipeline_id: String,
    pub pool_id: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub steps: Vec<StepView>,
    /// On submit: false when an idempotency key matched an earlier pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
}

impl PipelineView {
    pub fn is_final(&self) -> bool {
        self.status != "running"
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct StepView {
    pub name: String,
    pub status: String,
    pub eval_ids: Vec<String>,
    pub count: u32,
    #[serde(default)]
    pub after: Vec<String>,
}

#[derive(Deserialize)]
struct Pipelines {
    pipelines: Vec<PipelineView>,
}

impl EvalView {
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "complete" | "dead" | "cancelled")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Submitted {
    pub eval_id: String,
    pub status: String,
    pub url: String,
    pub created: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SubmitEval {
    pub size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HeartbeatReply {
    pub cancelled: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Pools {
    pools: Vec<PoolView>,
}
#[derive(Debug, Clone, Deserialize)]
struct Workers {
    workers: Vec<WorkerView>,
}
#[derive(Debug, Clone, Deserialize)]
struct Evals {
    evals: Vec<EvalView>,
}
#[derive(Debug, Clone, Deserialize)]
struct Allocs {
    allocs: Vec<AllocMessage>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: String,
}

/// How long any request may take beyond its own long-poll wait.
const SLACK: Duration = Duration::from_secs(30);

impl Client {
    pub fn new(endpoint: &str, token: &str) -> Self {
        Client {
            http: reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30)).build().unwrap_or_default(),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// The same server, acting with another token (a worker's).
    pub fn with_token(&self, token: &str) -> Self {
        Client { http: self.http.clone(), endpoint: self.endpoint.clone(), token: token.to_owned() }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends a request and decodes a JSON answer; the raw building block for the typed calls.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        wait: Duration,
    ) -> Result<T> {
        let url = format!("{}{}", self.endpoint, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token).timeout(wait + SLACK);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None, Duration::ZERO).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.call(Method::POST, path, Some(body), Duration::ZERO).await
    }

    pub async fn health(&self) -> Result<Value> {
        self.get("/health").await
    }

    pub async fn create_pool(&self, strategy: Option<&str>) -> Result<PoolView> {
        let body = match strategy {
            Some(s) => json!({ "strategy": s }),
            None => json!({}),
        };
        self.post("/v1/pools", &body).await
    }

    /// `POST /v1/pools` with a body of your own (`strategy`, `max_running`, `coefficients`).
    pub async fn create_pool_with(&self, body: &Value) -> Result<PoolView> {
        self.post("/v1/pools", body).await
    }

    /// `PATCH /v1/pools/{pool}`: `{"max_running": n | null, "coefficients": [...]}`.
    pub async fn change_pool(&self, pool: &str, body: &Value) -> Result<PoolView> {
        self.call(Method::PATCH, &format!("/v1/pools/{pool}"), Some(body), Duration::ZERO).await
    }

    /// `PUT /v1/pools/{pool}/health`: `level` (0–4) for `ttl_s` seconds.
    pub async fn push_health(&self, pool: &str, level: u8, ttl_s: u64) -> Result<PoolView> {
        let body = json!({ "level": level, "ttl": ttl_s });
        self.call(Method::PUT, &format!("/v1/pools/{pool}/health"), Some(&body), Duration::ZERO).await
    }

    pub async fn pools(&self) -> Result<Vec<PoolView>> {
        Ok(self.get::<Pools>("/v1/pools").await?.pools)
    }

    pub async fn pool(&self, pool: &str) -> Result<PoolView> {
        self.get(&format!("/v1/pools/{pool}")).await
    }

    pub async fn disband_pool(&self, pool: &str) -> Result<PoolView> {
        self.call(Method::DELETE, &format!("/v1/pools/{pool}"), None, Duration::ZERO).await
    }

    pub async fn register_worker(&self, pool: &str, capacity: u32) -> Result<WorkerView> {
        self.post(&format!("/v1/pools/{pool}/workers"), &json!({ "capacity": capacity })).await
    }

    pub async fn workers(&self, pool: &str) -> Result<Vec<WorkerView>> {
        Ok(self.get::<Workers>(&format!("/v1/pools/{pool}/workers")).await?.workers)
    }

    pub async fn heartbeat(
        &self,
        pool: &str,
        worker: &str,
        datasets: &[String],
        allocs: &[String],
    ) -> Result<HeartbeatReply> {
        self.post(
            &format!("/v1/pools/{pool}/workers/{worker}/heartbeat"),
            &json!({ "datasets": datasets, "allocs": allocs }),
        )
        .await
    }

    /// Long-polls the worker's queue for up to `wait` (whole seconds, at most 20).
    pub async fn poll(&self, pool: &str, worker: &str, wait: Duration, max: usize) -> Result<Vec<AllocMessage>> {
        let path = format!("/v1/pools/{pool}/workers/{worker}/poll?wait={}&max={max}", wait.as_secs());
        Ok(self.call::<Allocs>(Method::POST, &path, None, wait).await?.allocs)
    }

    pub async fn submit_eval(&self, pool: &str, eval: &SubmitEval) -> Result<Submitted> {
        let body = serde_json::to_value(eval)
            .map_err(|e| ClientError::Decode { url: "submit".into(), message: e.to_string() })?;
        self.post(&format!("/v1/pools/{pool}/evals"), &body).await
    }

    pub async fn eval(&self, pool: &str, eval: &str) -> Result<EvalView> {
        self.get(&format!("/v1/pools/{pool}/evals/{eval}")).await
    }

    pub async fn evals(&self, pool: &str, status: Option<&str>, limit: usize) -> Result<Vec<EvalView>> {
        let q = status.map(|s| format!("&status={s}")).unwrap_or_default();
        Ok(self.get::<Evals>(&format!("/v1/pools/{pool}/evals?limit={limit}{q}")).await?.evals)
    }

    pub async fn dead_letters(&self, pool: &str) -> Result<Vec<EvalView>> {
        Ok(self.get::<Evals>(&format!("/v1/pools/{pool}/dead-letters")).await?.evals)
    }

    /// Sends dead evals back to the queue: `ids`, or every dead eval when `None`.
    pub async fn redrive(&self, pool: &str, ids: Option<&[String]>) -> Result<Redriven> {
        let body = match ids {
            Some(ids) => json!({ "eval_ids": ids }),
            None => json!({}),
        };
        self.post(&format!("/v1/pools/{pool}/dead-letters/redrive"), &body).await
    }

    /// `body`: `{"steps": [...], "idempotency_key"?}` as the API takes it.
    pub async fn submit_pipeline(&self, pool: &str, body: &Value) -> Result<PipelineView> {
        self.post(&format!("/v1/pools/{pool}/pipelines"), body).await
    }

    pub async fn pipeline(&self, pool: &str, id: &str) -> Result<PipelineView> {
        self.get(&format!("/v1/pools/{pool}/pipelines/{id}")).await
    }

    pub async fn pipelines(&self, pool: &str, status: Option<&str>, limit: usize) -> Result<Vec<PipelineView>> {
        let q = status.map(|s| format!("&status={s}")).unwrap_or_default();
        Ok(self.get::<Pipelines>(&format!("/v1/pools/{pool}/pipelines?limit={limit}{q}")).await?.pipelines)
    }

    pub async fn cancel_pipeline(&self, pool: &str, id: &str) -> Result<PipelineView> {
        self.call(Method::DELETE, &format!("/v1/pools/{pool}/pipelines/{id}"), None, Duration::ZERO).await
    }

    pub async fn cancel_eval(&self, pool: &str, eval: &str) -> Result<EvalView> {
        self.call(Method::DELETE, &format!("/v1/pools/{pool}/evals/{eval}"), None, Duration::ZERO).await
    }

    /// Completes an alloc for now: its eval runs again after `after_s`, the next job
    /// getting `state`.
    pub async fn complete_continue(
        &self,
        pool: &str,
        alloc: &str,
        after_s: u64,
        state: Option<&Value>,
        output: Option<&str>,
    ) -> Result<Value> {
        self.post(
            &format!("/v1/pools/{pool}/allocs/{alloc}/complete"),
            &json!({ "continue_after": after_s, "state": state, "output": output }),
        )
        .await
    }

    pub async fn complete(&self, pool: &str, alloc: &str, exit_code: i32, output: Option<&str>) -> Result<Value> {
        self.post(
            &format!("/v1/pools/{pool}/allocs/{alloc}/complete"),
            &json!({ "exit_code": exit_code, "output": output }),
        )
        .await
    }

    pub async fn fail(&self, pool: &str, alloc: &str, reason: &str) -> Result<Value> {
        self.post(&format!("/v1/pools/{pool}/allocs/{alloc}/fail"), &json!({ "reason": reason })).await
    }
}

/// True for errors that say the server is unreachable rather than "no".
pub fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Http { .. } => true,
        ClientError::Api { status, .. } => *status >= 500 || *status == StatusCode::TOO_MANY_REQUESTS.as_u16(),
        ClientError::Decode { .. } => false,
    }
}

//! Lineup's Lambda handlers, shared by the thin binaries in `functions/`.
//!
//! - `schedule`: invoked by an EventBridge schedule; schedules every active pool until
//!   its deadline minus a safety margin; returns a summary.
//! - `release`: invoked by an EventBridge schedule; one release pass; returns a summary.
//! - `gateway`: the same axum router as `lineup dev`, served by `lambda_http` (REST v1
//!   and HTTP API v2 events; the stage prefix is ignored).
//!
//! As in the Go original, one `bootstrap` can serve all three: `role_for` maps the
//! suffix of the invoked function's ARN (`-schedule`, `-release`, `-gateway`) to its
//! handler, falling back to `AWS_LAMBDA_FUNCTION_NAME` where an emulator reports a
//! placeholder ARN.

mod emf;
pub mod env;
mod start;

use std::time::Duration;

use lambda_runtime::LambdaEvent;
use lineup_aws::{AwsBackend, AwsOptions};
use lineup_core::service::{ScheduleSummary, SchedulerOptions, Shard};
use lineup_core::{Lineup, Settings, SystemClock};
use serde::Deserialize;
use serde_json::Value;

pub use start::main;

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("cannot tell which handler to run for {0:?}: the function name must end in one of {SUFFIXES}")]
    UnknownRole(String),
    #[error("invoked as {invoked:?}, but this instance runs the {running} handler")]
    WrongRole { invoked: String, running: &'static str },
    #[error("configuration: {0}")]
    Config(String),
    #[error("event: {0}")]
    Event(String),
    #[error(transparent)]
    Core(#[from] lineup_core::Error),
}

impl From<LambdaError> for lambda_runtime::Diagnostic {
    fn from(e: LambdaError) -> Self {
        diagnostic(&e)
    }
}

fn diagnostic(e: &LambdaError) -> lambda_runtime::Diagnostic {
    let error_type = match e {
        LambdaError::UnknownRole(_) | LambdaError::WrongRole { .. } => "Lineup.Dispatch",
        LambdaError::Config(_) => "Lineup.Config",
        LambdaError::Event(_) => "Lineup.Event",
        LambdaError::Core(c) if c.code() == "invalid_config" => "Lineup.Config",
        LambdaError::Core(c) => c.code(),
    };
    lambda_runtime::Diagnostic { error_type: error_type.to_owned(), error_message: e.to_string() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Schedule,
    Release,
    Gateway,
}

/// The dispatch table: function-name suffix → handler.
pub const ROLES: [(&str, Role); 3] =
    [("-schedule", Role::Schedule), ("-release", Role::Release), ("-gateway", Role::Gateway)];
const SUFFIXES: &str = "-schedule, -release, -gateway";

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Schedule => "schedule",
            Role::Release => "release",
            Role::Gateway => "gateway",
        }
    }
}

/// The function name in an ARN (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:ALIAS]`),
/// or `None` for anything else (emulators send placeholders such as `function-arn`).
fn function_name_of(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.split(':').collect();
    (parts.len() >= 7 && parts[0] == "arn" && parts[5] == "function").then(|| parts[6])
}

/// Which handler serves `arn`; `function_name` (from `AWS_LAMBDA_FUNCTION_NAME`) is
/// used when the ARN is not a real one.
pub fn role_for(arn: &str, function_name: Option<&str>) -> Result<Role, LambdaError> {
    let name = function_name_of(arn).or(function_name).unwrap_or(arn);
    ROLES
        .iter()
        .find(|(suffix, _)| name.ends_with(suffix))
        .map(|(_, role)| *role)
        .ok_or_else(|| LambdaError::UnknownRole(name.to_owned()))
}

/// Checks that an invocation was meant for `running` (a real ARN with another suffix is
/// a deployment mistake worth failing loudly on).
pub fn check_invocation(arn: &str, running: Role) -> Result<(), LambdaError> {
    match function_name_of(arn) {
        Some(_) => match role_for(arn, None)? {
            r if r == running => Ok(()),
            _ => Err(LambdaError::WrongRole { invoked: arn.to_owned(), running: running.name() }),
        },
        None => Ok(()),
    }
}

/// Settings only the functions need, from `LINEUP_*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FunctionSettings {
    /// Table names are `{table_prefix}-pools` etc.; defaults to the deployment name.
    pub table_prefix: Option<String>,
    /// Seconds kept free before the schedule function's deadline.
    pub schedule_margin: u64,
    /// Long-poll wait per receive in the schedule function (at most 20).
    pub schedule_wait: u64,
    /// Longest one schedule invocation runs, in seconds, whatever its deadline says
    /// (emulators report deadlines that are not epoch times).
    pub schedule_max: u64,
    /// At most this many scheduler loops on one pool while its backlog outruns one
    /// (`SchedulerOptions::loops`; 1–16).
    pub schedule_loops: usize,
    /// The CloudWatch namespace of the functions' Embedded Metric Format figures.
    pub metrics_namespace: String,
}

impl Default for FunctionSettings {
    fn default() -> Self {
        FunctionSettings {
            table_prefix: None,
            schedule_margin: 5,
            schedule_wait: 20,
            schedule_max: 900,
            schedule_loops: 1,
            metrics_namespace: "Lineup".into(),
        }
    }
}

/// A handler's configuration: everything it reads from its environment.
#[derive(Clone)]
pub struct Config {
    pub role: Role,
    pub settings: Settings,
    pub functions: FunctionSettings,
    /// The admin token's SHA-256; for schedule and release, of a random token.
    admin_hash: String,
}

impl Config {
    /// From `vars` (the process environment, or a function's environment as the
    /// template deploys it). Warns about `LINEUP_*` variables `role` does not read.
    pub fn from_vars(role: Role, vars: impl IntoIterator<Item = (String, String)>) -> Result<Config, LambdaError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        for name in env::unread(role, vars.iter().map(|(k, _)| k.as_str())) {
            tracing::warn!(variable = name, role = role.name(), "set, but not read by this function");
        }
        let settings = Settings::from_vars(vars.iter().cloned())?;
        let functions: FunctionSettings =
            envy::prefixed("LINEUP_").from_iter(vars).map_err(|e| LambdaError::Config(e.to_string()))?;
        let admin_hash = match (role, settings.admin_hash()) {
            (_, Some(h)) => h,
            (Role::Gateway, None) => {
                return Err(LambdaError::Config(
                    "the gateway needs LINEUP_ADMIN_TOKEN_SHA256 (the SHA-256 of the admin token, 64 hex \
                     characters, as infra/template.yaml sets it) or LINEUP_ADMIN_TOKEN"
                        .into(),
                ))
            }
            // Schedule and release authenticate nobody; an unguessable token keeps it so.
            (_, None) => lineup_core::auth::hash(&lineup_core::auth::random_secret()),
        };
        Ok(Config { role, settings, functions, admin_hash })
    }

    /// Tables are `{prefix}-pools` etc.
    pub fn table_prefix(&self) -> String {
        self.functions.table_prefix.clone().unwrap_or_else(|| self.settings.deployment.clone())
    }
}

/// What every handler needs, built once per instance.
#[derive(Clone)]
pub struct Deps {
    pub lineup: Lineup,
    pub backend: AwsBackend,
    pub functions: FunctionSettings,
    /// Where the release handler's last pass stopped, if its deadline cut it short.
    pub release_cursor: std::sync::Arc<std::sync::Mutex<Option<lineup_core::PoolId>>>,
}

impl Deps {
    /// Settings from the environment, SDK clients from the usual chain.
    pub async fn from_env(role: Role) -> Result<Deps, LambdaError> {
        let config = Config::from_vars(
            role,
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )?;
        let backend =
            AwsBackend::connect(&AwsOptions { table_prefix: config.table_prefix(), ..Default::default() }).await;
        Ok(Deps::with_config(backend, config))
    }

    pub fn with_config(backend: AwsBackend, config: Config) -> Deps {
        Self::with_admin_hash(backend, config.settings, config.functions, &config.admin_hash)
    }

    pub fn new(backend: AwsBackend, settings: Settings, functions: FunctionSettings, admin_token: &str) -> Deps {
        Self::with_admin_hash(backend, settings, functions, &lineup_core::auth::hash(admin_token))
    }

    /// As `new`, given the admin token's SHA-256 (lowercase hex) only.
    pub fn with_admin_hash(
        backend: AwsBackend,
        settings: Settings,
        functions: FunctionSettings,
        admin_hash: &str,
    ) -> Deps {
        backend.set_history_retention(settings.history_retention);
        backend.set_index_shards(settings.index_shards);
        let b = std::sync::Arc::new(backend.clone());
        let store = std::sync::Arc::new(lineup_core::metered::MeteredStore {
            inner: b.clone(),
            backend: "dynamodb",
            latency: Default::default(),
        });
        let queues = std::sync::Arc::new(lineup_core::metered::MeteredQueues {
            inner: b,
            backend: "sqs",
            latency: Default::default(),
        });
        // Metric health checks read from CloudWatch; URL checks are not read from a
        // Lambda (it would reach into the operator's network): their `on_error` level.
        let lineup = Lineup::with_admin_hash(store, queues, std::sync::Arc::new(SystemClock), settings, admin_hash)
            .with_probe(std::sync::Arc::new(backend.probe()));
        Deps { lineup, backend, functions, release_cursor: Default::default() }
    }
}

/// How long the schedule handler may run: until the invocation's deadline (ms since
/// the epoch) minus the safety margin, and never more than `max`. A deadline that is not
/// in the future (none, or an emulator's relative number) leaves `max`.
pub fn schedule_budget(deadline_ms: u64, now_ms: u64, margin: Duration, max: Duration) -> Duration {
    let left = if deadline_ms <= now_ms { max } else { Duration::from_millis(deadline_ms - now_ms).min(max) };
    left.saturating_sub(margin)
}

/// The shard an invocation schedules, from its event: an EventBridge rule whose target
/// input is `{"shard": k, "shards": n}` (one rule per shard, so `n` invocations split
/// the pools between them: docs/DEPLOY.md); a scheduled event without them (the
/// template's one rule) schedules every pool.
pub fn shard_of(event: &Value) -> Result<Option<Shard>, LambdaError> {
    let (Some(k), Some(n)) = (event.get("shard"), event.get("shards")) else {
        return match event.get("shard").or(event.get("shards")) {
            Some(_) => Err(LambdaError::Event("\"shard\" and \"shards\" go together".into())),
            None => Ok(None),
        };
    };
    let num = |v: &Value| v.as_u64().and_then(|v| u32::try_from(v).ok());
    match (num(k), num(n)) {
        (Some(k), Some(n)) => Shard::new(k, n)
            .map(Some)
            .ok_or_else(|| LambdaError::Event(format!("shard {k} of {n}: the shard must be below the count"))),
        _ => Err(LambdaError::Event(format!("shard {k} of {n}: both must be whole numbers"))),
    }
}

/// How a `schedule` invocation runs its pool loops: the deployment's long-poll wait
/// (at most SQS's 20 s) and, when its event names one, its shard of the pools.
pub fn schedule_options(functions: &FunctionSettings, shard: Option<Shard>) -> SchedulerOptions {
    SchedulerOptions {
        wait: Duration::from_secs(functions.schedule_wait.min(20)),
        shard,
        loops: functions.schedule_loops.clamp(1, 16),
        ..SchedulerOptions::default()
    }
}

/// The schedule handler: an EventBridge event in, a summary out.
pub async fn schedule(event: LambdaEvent<Value>, deps: &Deps) -> Result<ScheduleSummary, LambdaError> {
    check_invocation(&event.context.invoked_function_arn, Role::Schedule)?;
    let now_ms = lineup_core::clock::Clock::now(&SystemClock) as u64;
    let budget = schedule_budget(
        event.context.deadline,
        now_ms,
        Duration::from_secs(deps.functions.schedule_margin),
        Duration::from_secs(deps.functions.schedule_max),
    );
    tracing::info!(
        deadline = event.context.deadline,
        now_ms,
        budget_ms = budget.as_millis() as u64,
        "schedule invocation"
    );
    let opts = schedule_options(&deps.functions, shard_of(&event.payload)?);
    let sum = deps.lineup.schedule_until(tokio::time::Instant::now() + budget, &opts).await?;
    tracing::info!(?sum, calls = deps.backend.calls().total(), "schedule invocation done");
    Ok(sum)
}

/// Kept free before the release function's deadline: one pool's release takes well
/// under a second, so a pass never runs into the timeout.
pub const RELEASE_MARGIN: Duration = Duration::from_secs(5);

/// The release handler: an EventBridge event in, a summary out.
pub async fn release(
    event: LambdaEvent<Value>,
    deps: &Deps,
) -> Result<lineup_core::service::ReleaseSummary, LambdaError> {
    check_invocation(&event.context.invoked_function_arn, Role::Release)?;
    let now_ms = lineup_core::clock::Clock::now(&SystemClock) as u64;
    let budget = schedule_budget(event.context.deadline, now_ms, RELEASE_MARGIN, Duration::from_secs(900));
    // A pass cut short by the deadline resumes after the last pool it visited, in the
    // next invocation this instance serves (a new instance starts from the first pool).
    let resume = deps.release_cursor.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (sum, next) = deps.lineup.release_until(tokio::time::Instant::now() + budget, resume.as_ref()).await?;
    *deps.release_cursor.lock().unwrap_or_else(|p| p.into_inner()) = next;
    tracing::info!(?sum, "release invocation done");
    Ok(sum)
}

/// The gateway: the API's router, for `lambda_http::run`.
pub fn gateway(deps: &Deps) -> axum::Router {
    lineup_api::router(deps.lineup.clone())
}

/// JSON logs for CloudWatch (which adds its own timestamps).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LINEUP_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().json().with_env_filter(filter).without_time().with_target(false).init();
}

/// `lambda_http` puts a REST API's stage in front of the path unless told not to; our
/// routes have no stage. Must run before any other thread exists (it sets the environment).
pub fn ignore_stage_in_path() {
    if std::env::var_os("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH").is_none() {
        std::env::set_var("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true");
    }
}

/// Runs `role`'s handler loop until the runtime stops. After each invocation the
/// figures it recorded go to the log as one Embedded Metric Format line (`emf.rs`).
pub async fn run(role: Role, deps: Deps) -> Result<(), lambda_runtime::Error> {
    use lambda_runtime::service_fn;
    let emf = emf::init(&deps.functions.metrics_namespace);
    match role {
        Role::Gateway => {
            let app =
                gateway(&deps).layer(axum::middleware::map_response(move |r: axum::response::Response| async move {
                    emf::flush(emf);
                    r
                }));
            lambda_http::run(app).await
        }
        Role::Schedule => {
            let deps = &deps;
            lambda_runtime::run(service_fn(move |ev| async move {
                let out = schedule(ev, deps).await;
                emf::flush(emf);
                out
            }))
            .await
        }
        Role::Release => {
            let deps = &deps;
            lambda_runtime::run(service_fn(move |ev| async move {
                let out = release(ev, deps).await;
                emf::flush(emf);
                out
            }))
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_the_margin() {
        let (m, max) = (Duration::from_secs(5), Duration::from_secs(900));
        assert_eq!(schedule_budget(100_000, 40_000, m, max), Duration::from_secs(55));
        assert_eq!(schedule_budget(41_000, 40_000, m, max), Duration::ZERO);
        // No usable deadline: the cap, less the margin.
        assert_eq!(schedule_budget(0, 40_000, m, Duration::from_secs(60)), Duration::from_secs(55));
        assert_eq!(schedule_budget(600_000, 1_795_407_291_973, m, Duration::from_secs(10)), Duration::from_secs(5));
        // The cap wins over a far deadline.
        assert_eq!(schedule_budget(1_000_000, 0, m, Duration::from_secs(60)), Duration::from_secs(55));
    }

    #[test]
    fn a_shard_comes_from_the_rules_input() {
        use serde_json::json;
        assert_eq!(shard_of(&json!({"shard": 2, "shards": 4})).unwrap(), Shard::new(2, 4));
        // EventBridge's own scheduled event: every pool.
        let scheduled = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(shard_of(&scheduled).unwrap(), None);
        for bad in [
            json!({"shard": 4, "shards": 4}),
            json!({"shard": 0, "shards": 0}),
            json!({"shard": -1, "shards": 4}),
            json!({"shard": "1", "shards": 4}),
            json!({"shard": 1}),
            json!({"shards": 4}),
        ] {
            let e = shard_of(&bad).unwrap_err();
            assert_eq!(diagnostic(&e).error_type, "Lineup.Event", "{bad}: {e}");
        }
    }
}

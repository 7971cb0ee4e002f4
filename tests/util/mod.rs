//! Helpers for the black-box tests: `TestApp::spawn` starts the real `lineup` binary
//! (`lineup dev`) on port 0 with a fresh data dir and returns typed clients for it.

pub mod apigw;
pub mod lambda;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use lineup_client::Client;

/// The `lineup` binary, built once if the test run has not built it.
pub fn lineup_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("LINEUP_BIN") {
            return PathBuf::from(p);
        }
        // target/debug/deps/<test> → target/debug/lineup
        let exe = std::env::current_exe().expect("test exe path");
        let dir = exe.parent().and_then(Path::parent).expect("target dir").to_owned();
        let bin = dir.join(format!("lineup{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "lineup-cli", "--bin", "lineup"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building lineup failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

pub struct TestApp {
    pub dir: PathBuf,
    pub endpoint: String,
    pub token: String,
    pub admin: Client,
    child: Option<Child>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestApp {
    /// `lineup dev` on a fresh data dir with extra environment and flags.
    pub async fn spawn_with(env: &[(&str, &str)], args: &[&str]) -> TestApp {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_owned();
        let mut app = TestApp {
            dir,
            endpoint: String::new(),
            token: String::new(),
            admin: Client::new("http://127.0.0.1:1", ""),
            child: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
        };
        app.start().await;
        app
    }

    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[], &[]).await
    }

    /// Starts (or restarts) the server on the same data dir.
    pub async fn start(&mut self) {
        let endpoint_file = self.dir.join("endpoint");
        let _ = std::fs::remove_file(&endpoint_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log");
        let mut cmd = Command::new(lineup_bin());
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.dir)
            .args(&self.args)
            .env_remove("LINEUP_ADMIN_TOKEN")
            .env("LINEUP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn lineup dev"));
        let endpoint = wait_for(Duration::from_secs(30), || std::fs::read_to_string(&endpoint_file).ok()).await;
        self.endpoint = endpoint.trim().to_owned();
        self.token = std::fs::read_to_string(self.dir.join("admin.token")).expect("admin token").trim().to_owned();
        self.admin = Client::new(&self.endpoint, &self.token);
        let admin = self.admin.clone();
        wait_for_async(Duration::from_secs(30), || {
            let a = admin.clone();
            async move { a.health().await.ok() }
        })
        .await;
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(std::time::Instant::now() < end, "lineup dev did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A raw request, for what the typed client would not send.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{}", self.endpoint, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// The `lineup` CLI against this server (endpoint and token from the data dir).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(lineup_bin());
        c.arg("--data-dir").arg(&self.dir).args(args).env_remove("LINEUP_ENDPOINT").env_remove("LINEUP_TOKEN");
        c
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_command(args).output().expect("run lineup")
    }

    /// `cli`, without blocking the runtime: for a CLI call racing others.
    pub async fn cli_async(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::from(self.cli_command(args)).output().await.expect("run lineup")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns `Some`, or panics after `deadline`.
pub async fn wait_for<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "condition not met within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(
    deadline: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "condition not met within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a worker's queue until `n` allocs arrived.
pub async fn poll_n(c: &Client, pool: &str, worker: &str, n: usize) -> Vec<lineup_core::AllocMessage> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(tokio::time::Instant::now() < end, "only {} of {n} allocs arrived", out.len());
        out.extend(c.poll(pool, worker, Duration::from_secs(1), 10).await.expect("poll"));
    }
    out
}

/// `lineup aws init`, then `lineup dev --backend aws`, against the shared moto, as the
/// README runs them, for a fresh deployment `{tag}` + 8 characters, with `extra_env`.
/// Returns the app, the deployment name and what `aws init` printed.
pub async fn spawn_on_moto(tag: &str, extra_env: &[(&str, &str)]) -> (TestApp, String, String) {
    use lineup_conformance::moto::{sdk_env, Moto};
    let moto = Moto::shared();
    let deployment = format!("{tag}{}", &lineup_core::PoolId::generate().as_str()[..8]);
    let mut env: Vec<(String, String)> = sdk_env(moto).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.push(("LINEUP_DEPLOYMENT".into(), deployment.clone()));
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let out = Command::new(lineup_bin())
        .args(["aws", "init", "--aws-endpoint", &moto.endpoint])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run lineup aws init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = TestApp::spawn_with(&env_refs, &["--backend", "aws", "--aws-endpoint", &moto.endpoint]).await;
    (app, deployment, String::from_utf8_lossy(&out.stdout).into_owned())
}

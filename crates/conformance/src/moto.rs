//! A moto server (DynamoDB + SQS) on a free loopback port, started once per test
//! process and stopped when the process ends. `make test` installs moto into `.venv`.
//!
//! Tests share the server and keep apart by naming: each test gets its own table
//! prefix and its own queue names, so they run in parallel without a reset between them.
//!
//! moto runs through `python/moto_serialized.py`, which serializes DynamoDB requests:
//! moto's own transactions are not isolated under concurrency (see that file).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The share of requests the fault mode fails (`Moto::faulty`).
pub const FAULT_RATE: f64 = 0.03;

pub struct Moto {
    pub endpoint: String,
    pub port: u16,
}

/// The venv's Python, which has moto.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("LINEUP_MOTO_PYTHON") {
        return PathBuf::from(p);
    }
    // crates/conformance → the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
}

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/moto_serialized.py")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200")
}

impl Moto {
    /// The shared server of this test process.
    pub fn shared() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| Moto::start(""))
    }

    /// A second server of this test process, in fault mode: a seeded `FAULT_RATE` of
    /// DynamoDB requests (and SQS sends and deletes) throttled, failed with a 500,
    /// cancelled for a transaction conflict, or applied with their response lost (see
    /// `python/moto_serialized.py`). `LINEUP_FAULT_SEED` picks another stream.
    pub fn faulty() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| {
            let seed = std::env::var("LINEUP_FAULT_SEED").unwrap_or_else(|_| "7".into());
            Moto::start(&format!("LINEUP_MOTO_FAULTS='seed={seed},rate={FAULT_RATE}' "))
        })
    }

    /// A server of its own in partition mode: DynamoDB's per-partition-key throughput
    /// limits, scaled down (`budgets` as `"wcu=50,rcu=150"`, or `"meter"` to count
    /// without limits; see `python/partitions.py`). Stopped when the process ends.
    pub fn partitioned(budgets: &str) -> Moto {
        assert!(budgets.chars().all(|c| c.is_ascii_alphanumeric() || "=,.".contains(c)), "budgets: {budgets}");
        Moto::start(&format!("LINEUP_MOTO_PARTITIONS='{budgets}' "))
    }

    /// What the fault mode injected so far, by kind.
    pub fn injected(&self) -> std::collections::BTreeMap<String, u64> {
        serde_json::from_str(&self.get("/lineup-faults")).unwrap_or_default()
    }

    /// The partition mode's meter since the last reset (`reset` starts a new count):
    /// `{"budgets": …, "partitions": {"table:key": {"wcu", "rcu", "throttled", "requests"}}}`.
    pub fn units(&self, reset: bool) -> serde_json::Value {
        let path = if reset { "/lineup-units?reset=1" } else { "/lineup-units" };
        serde_json::from_str(&self.get(path)).unwrap_or_default()
    }

    fn get(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return "{}".into() };
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split("\r\n\r\n").nth(1).unwrap_or("{}").to_owned()
    }

    /// `env`: assignments for the server's shell command line, each ending in a space.
    fn start(env: &str) -> Moto {
        let python = python();
        assert!(python.exists(), "{} not found: run `make test` (it installs moto into .venv)", python.display());
        let port = free_port();
        let log = std::env::temp_dir().join(format!("lineup-moto-{port}.log"));
        // A watchdog shell stops moto when this test process is gone, however it ends.
        let script = format!(
            "{env}\"{python}\" \"{launcher}\" -H 127.0.0.1 -p {port} >\"{log}\" 2>&1 & m=$!; \
             while kill -0 {pid} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done; kill $m 2>/dev/null",
            python = python.display(),
            launcher = launcher().display(),
            log = log.display(),
            pid = std::process::id(),
        );
        // Not waited for: the watchdog outlives us by design and ends on its own.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let end = Instant::now() + Duration::from_secs(30);
        while !ready(port) {
            assert!(Instant::now() < end, "moto_server did not answer on port {port}; see {}", log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { endpoint: format!("http://127.0.0.1:{port}"), port }
    }
}

/// Environment that points the AWS SDK (in this process or a child) at moto.
pub fn sdk_env(m: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", m.endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// Runs `infra/tools/template_json.py` with the venv's Python: the template as JSON,
/// `only` cutting it down to some resource types.
pub fn template_json(only: Option<&str>) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(python());
    cmd.arg(root.join("infra/tools/template_json.py")).arg(root.join("infra/template.yaml"));
    if let Some(types) = only {
        cmd.args(["--only", types]);
    }
    let out = cmd.output().expect("run template_json.py");
    assert!(out.status.success(), "template_json.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 JSON")
}

/// Creates a CloudFormation stack in moto (its Query API, posted by hand: the test
/// suite has no CloudFormation SDK client, and moto checks no signature).
pub async fn create_stack(m: &Moto, name: &str, template_body: &str, params: &[(&str, &str)]) {
    let mut form: Vec<(String, String)> = vec![
        ("Action".into(), "CreateStack".into()),
        ("Version".into(), "2010-05-15".into()),
        ("StackName".into(), name.into()),
        ("TemplateBody".into(), template_body.into()),
    ];
    for (i, (k, v)) in params.iter().enumerate() {
        form.push((format!("Parameters.member.{}.ParameterKey", i + 1), k.to_string()));
        form.push((format!("Parameters.member.{}.ParameterValue", i + 1), v.to_string()));
    }
    let resp = reqwest::Client::new()
        .post(&m.endpoint)
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/cloudformation/aws4_request, SignedHeaders=host, Signature=0",
        )
        .form(&form)
        .send()
        .await
        .expect("CreateStack request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "CreateStack {name}: {status}: {text}");
}

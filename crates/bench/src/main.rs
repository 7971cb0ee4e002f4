//! `make bench`: starts the release `lineup dev` as a separate process, drives it over
//! HTTP with keep-alive clients, and prints a table plus one `BENCH name value unit`
//! line per figure. A benchmark, not a test: it asserts nothing.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod admission;
use lineup_bench::lifecycle as aws;
mod partitions;
mod pipelines;
mod pools;

use clap::Parser;
use lineup_client::{Client, SubmitEval};

#[derive(Parser)]
struct Args {
    /// The `lineup` binary (a release build).
    #[arg(long, default_value = "target/release/lineup")]
    lineup: String,
    /// Evals for the submit and drain scenarios.
    #[arg(long, default_value_t = 20_000)]
    evals: usize,
    /// HTTP connections for submitting.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Workers registering at once in the 1,000-worker drain.
    #[arg(long, default_value_t = 64)]
    register_connections: usize,
    /// Seconds of offered load in the latency scenario.
    #[arg(long, default_value_t = 30)]
    latency_secs: u64,
    /// Evals per second offered in the latency scenario.
    #[arg(long, default_value_t = 1_000)]
    latency_rate: u64,
    /// Queued evals in the backlog scenario (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: usize,
    /// Run only these scenarios (comma-separated: drain, drain1000, priorities, capped,
    /// latency, idle, backlog, aws, partitions, pools, pipelines); all of them by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Extra arguments for `lineup dev` (e.g. `--schedulers=2`).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

struct Server {
    child: Child,
    admin: Client,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &Args, env: &[(&str, &str)]) -> Server {
        let bin = args.lineup.as_str();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(bin);
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(&args.server_arg)
            .stdout(Stdio::null());
        // `LINEUP_BENCH_LOG=info` shows the server's log (on stderr) while it runs.
        match std::env::var("LINEUP_BENCH_LOG") {
            Ok(level) => cmd.env("LINEUP_LOG", level).stderr(Stdio::inherit()),
            Err(_) => cmd.env("LINEUP_LOG", "warn").stderr(Stdio::null()),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start lineup dev");
        let endpoint_file = dir.path().join("endpoint");
        let start = Instant::now();
        while !endpoint_file.exists() {
            assert!(start.elapsed() < Duration::from_secs(30), "lineup dev did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let endpoint = std::fs::read_to_string(&endpoint_file).expect("endpoint").trim().to_owned();
        let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token").trim().to_owned();
        Server { child, admin: Client::new(&endpoint, &token), _dir: dir }
    }

    /// User + system CPU seconds of the server process so far.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }

    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `schedule` function's settings from its environment in `infra/template.yaml`.
fn deployed_functions() -> Result<lineup_lambda::FunctionSettings, String> {
    use lineup_conformance::deployment::Deployment;
    let dep = Deployment::of_repo_template(&[("AdminTokenSha256", &lineup_core::auth::hash("sim"))]);
    let f = dep.function_named("-schedule");
    let config = lineup_lambda::Config::from_vars(lineup_lambda::Role::Schedule, f.env).map_err(|e| e.to_string())?;
    Ok(config.functions)
}

type Rows = Vec<(String, f64, &'static str, String)>;

fn report(rows: &mut Rows, name: &str, value: f64, unit: &'static str, target: &str) {
    println!("BENCH {name} {value:.2} {unit}");
    rows.push((name.to_owned(), value, unit, target.to_owned()));
}

/// Submits `n` size-1 evals over `conns` connections; returns evals/s.
async fn submit(admin: &Client, pool: &str, n: usize, conns: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (admin, pool) = (admin.with_token_same(), pool.to_owned());
        let share = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                admin.submit_eval(&pool, &SubmitEval { size: 1, ..Default::default() }).await.expect("submit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("submitter");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// 1,000 workers with room for `args.evals` between them, come up together: each
/// registers on its own, so many at once (`--register-connections` of them).
async fn register_1000(args: &Args, s: &Server, pool: &str) {
    let per = (args.evals / 1000 + 1) as u32;
    let mut tasks = Vec::new();
    let conns = args.register_connections.max(1);
    for c in 0..conns {
        let (admin, pool) = (s.admin.with_token_same(), pool.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in (c..1000).step_by(conns) {
                admin.register_worker(&pool, per).await.expect("worker");
            }
        }));
    }
    for t in tasks {
        t.await.expect("registering");
    }
}

trait SameToken {
    fn with_token_same(&self) -> Client;
}

impl SameToken for Client {
    /// A client with its own connection pool (one keep-alive connection per task).
    fn with_token_same(&self) -> Client {
        Client::new(self.endpoint(), self.token())
    }
}

/// Waits until no eval is `queued` (nothing fails in these scenarios, so none is
/// `failed` either). Asks for one queued eval every 20 ms: an index seek, where the
/// pool's counts would scan the placed evals and weigh on the figure being measured.
async fn wait_queued_zero(admin: &Client, pool: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if admin.evals(pool, Some("queued"), 1).await.expect("evals").is_empty() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let p = admin.pool(pool).await.expect("pool");
            eprintln!("drain: still {} queued after {limit:?}", p.queued);
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn aws_scenario(rows: &mut Vec<(String, f64, &'static str, String)>) {
    let moto = aws::meter();
    let lineup = match aws::measure(&moto, aws::Shape::Lineup).await {
        Ok(c) => c,
        Err(e) => return println!("aws: failed: {e}"),
    };
    let original = match aws::measure(&moto, aws::Shape::Original).await {
        Ok(c) => c,
        Err(e) => return println!("aws: original's shape failed: {e}"),
    };
    println!();
    println!(
        "AWS calls per placement over the whole lifecycle (moto, 100 evals on 10 workers, idle long polls excluded)"
    );
    println!("{:<18} {:<32} {:>8} {:>9}", "phase", "operation", "lineup", "original");
    for (i, phase) in aws::PHASES.iter().enumerate() {
        let (l, o) = (&lineup.phases[i], &original.phases[i]);
        let ops: std::collections::BTreeSet<&String> = l.keys().chain(o.keys()).collect();
        for op in ops {
            let get = |m: &std::collections::BTreeMap<String, f64>| m.get(op).copied().unwrap_or(0.0);
            println!("{phase:<18} {op:<32} {:>8.2} {:>9.2}", get(l), get(o));
        }
        println!("{phase:<18} {:<32} {:>8.2} {:>9.2}", "(phase total)", aws::total(l), aws::total(o));
        let (lu, ou) = (lineup.units[i], original.units[i]);
        println!("{phase:<18} {:<32} {:>8.2} {:>9.2}", "(write units: tables)", lu.table_wcu, ou.table_wcu);
        println!("{phase:<18} {:<32} {:>8.2} {:>9.2}", "(write units: indexes)", lu.index_wcu, ou.index_wcu);
        println!("{phase:<18} {:<32} {:>8.2} {:>9.2}", "(read units)", lu.rcu, ou.rcu);
    }
    println!("{:<51} {:>8.2} {:>9.2}", "total calls", lineup.calls(), original.calls());
    println!("{:<51} {:>8.2} {:>9.2}", "DynamoDB write units (metered)", lineup.wcu, original.wcu);
    println!("{:<51} {:>8.2} {:>9.2}", "DynamoDB read units (metered)", lineup.rcu, original.rcu);
    println!("{:<51} {:>8.2} {:>9.2}", "gateway requests (API Gateway + Lambda)", lineup.gateway, original.gateway);
    let (ld, ls, lg) = lineup.dollars();
    let (od, os, og) = original.dollars();
    println!("{:<51} {:>8.2} {:>9.2}", "$ per million placements: DynamoDB", ld, od);
    println!("{:<51} {:>8.2} {:>9.2}", "$ per million placements: SQS", ls, os);
    println!("{:<51} {:>8.2} {:>9.2}", "$ per million placements: API Gateway + Lambda", lg, og);
    println!("{:<51} {:>8.2} {:>9.2}", "$ per million placements", ld + ls + lg, od + os + og);
    println!("prices: {}", aws::PRICES);
    report(rows, "aws_lifecycle_calls_per_placement", lineup.calls(), "calls", "<= 6");
    report(rows, "aws_lifecycle_calls_per_placement_original_shape", original.calls(), "calls", "printed beside");
    report(rows, "aws_scheduler_calls_per_placement", aws::total(&lineup.phases[1]), "calls", "");
    report(rows, "aws_lifecycle_dollars_per_million_placements", ld + ls + lg, "$", "< original's");
    report(rows, "aws_lifecycle_dollars_per_million_placements_original_shape", od + os + og, "$", "");
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut rows = Vec::new();
    println!(
        "lineup bench: {} ({} cores)",
        args.lineup,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    // ---- submit, then drain onto one worker
    if args.wants("drain") {
        let s = Server::start(&args, &[]);
        let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
        let rate = submit(&s.admin, &pool, args.evals, args.connections).await;
        report(&mut rows, "submit_evals_per_s", rate, "evals/s", ">= 5000");
        s.admin.register_worker(&pool, args.evals as u32).await.expect("worker");
        let took = wait_queued_zero(&s.admin, &pool, Duration::from_secs(600)).await;
        report(
            &mut rows,
            "drain_1_worker_placements_per_s",
            args.evals as f64 / took.as_secs_f64(),
            "placements/s",
            ">= 20000",
        );
    }
    // ---- drain onto 1,000 workers
    if args.wants("drain1000") {
        let s = Server::start(&args, &[]);
        let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
        submit(&s.admin, &pool, args.evals, args.connections).await;
        let start = Instant::now();
        register_1000(&args, &s, &pool).await;
        let registering = start.elapsed();
        report(&mut rows, "drain_1000_workers_registering_s", registering.as_secs_f64(), "s", "");
        let took = wait_queued_zero(&s.admin, &pool, Duration::from_secs(600)).await + registering;
        report(
            &mut rows,
            "drain_1000_workers_placements_per_s",
            args.evals as f64 / took.as_secs_f64(),
            "placements/s",
            ">= 20000",
        );
    }
    // ---- admission: mixed priorities onto 1,000 workers; a capped pool
    if args.wants("priorities") {
        admission::priorities(&args, &mut rows).await;
    }
    if args.wants("capped") {
        admission::capped(&args, &mut rows).await;
    }
    if args.wants("pipelines") {
        pipelines::wide(&args, &mut rows).await;
        pipelines::chain(&args, &mut rows).await;
    }
    // ---- latency: offered load, 50 workers long-polling and completing
    if args.wants("latency") {
        let s = Server::start(&args, &[]);
        let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..50 {
            let reg = s.admin.register_worker(&pool, 1_000).await.expect("worker");
            let c = s.admin.with_token(reg.token.as_deref().unwrap_or_default());
            let (pool, sent, lat, stop) = (pool.clone(), sent.clone(), lat.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(allocs) = c.poll(&pool, &reg.worker_id, Duration::from_secs(1), 10).await else { continue };
                    let now = Instant::now();
                    for a in &allocs {
                        if let Some(t) = sent.lock().unwrap().remove(a.eval_id.as_str()) {
                            lat.lock().unwrap().push(now - t);
                        }
                    }
                    for a in allocs {
                        let _ = c.complete(&pool, a.alloc_id.as_str(), 0, None).await;
                    }
                }
            }));
        }
        let total = args.latency_rate * args.latency_secs;
        let per_conn = args.connections as u64;
        let mut senders = Vec::new();
        let begin = Instant::now();
        for k in 0..per_conn {
            let (c, pool, sent) = (s.admin.with_token_same(), pool.clone(), sent.clone());
            let interval = Duration::from_secs_f64(per_conn as f64 / args.latency_rate as f64);
            senders.push(tokio::spawn(async move {
                let mut next = begin + interval.mul_f64(k as f64 / per_conn as f64);
                for _ in 0..total / per_conn {
                    tokio::time::sleep_until(next.into()).await;
                    let t = Instant::now();
                    if let Ok(sub) = c.submit_eval(&pool, &SubmitEval { size: 1, ..Default::default() }).await {
                        sent.lock().unwrap().insert(sub.eval_id, t);
                    }
                    next += interval;
                }
            }));
        }
        for t in senders {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            let _ = w.await;
        }
        let mut l = lat.lock().unwrap().clone();
        l.sort();
        let pct =
            |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
        report(&mut rows, "latency_p50_ms", pct(0.50).as_secs_f64() * 1e3, "ms", "< 10");
        report(&mut rows, "latency_p99_ms", pct(0.99).as_secs_f64() * 1e3, "ms", "< 50");
        report(&mut rows, "latency_samples", l.len() as f64, "evals", "");
    }
    // ---- idle: 1,000 workers heartbeating, 100 blocked evals
    if args.wants("idle") {
        let s = Server::start(&args, &[]);
        let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
        let mut regs = Vec::new();
        for _ in 0..1000 {
            let r = s.admin.register_worker(&pool, 1).await.expect("worker");
            regs.push((r.worker_id.clone(), s.admin.with_token(r.token.as_deref().unwrap_or_default())));
        }
        for _ in 0..100 {
            s.admin.submit_eval(&pool, &SubmitEval { size: 2, ..Default::default() }).await.expect("submit");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Heartbeats at a third of the 60 s TTL: 1,000 workers → 50 per second.
        let (cpu0, t0) = (s.cpu_secs(), Instant::now());
        let window = Duration::from_secs(20);
        let per_tick = regs.len() / 20;
        let mut i = 0;
        while t0.elapsed() < window {
            for _ in 0..per_tick {
                let (w, c) = &regs[i % regs.len()];
                let _ = c.heartbeat(&pool, w, &[], &[]).await;
                i += 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let cpu = (s.cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        report(&mut rows, "idle_server_cpu_percent", cpu, "% of one core", "< 5");
    }
    // ---- backlog: many queued evals, memory and submit rate first vs last
    if args.backlog > 0 && args.wants("backlog") {
        let s = Server::start(&args, &[]);
        let pool = s.admin.create_pool(None).await.expect("pool").pool_id;
        let rss0 = s.rss_mb();
        let chunk = (args.backlog / 10).max(1);
        let mut rates = Vec::new();
        for i in 0..10 {
            rates.push(submit(&s.admin, &pool, chunk, args.connections).await);
            println!("backlog: tenth {} at {:.0} evals/s, rss {:.1} MB", i + 1, rates[i], s.rss_mb());
        }
        let rss = s.rss_mb() - rss0;
        report(&mut rows, "backlog_evals", (chunk * 10) as f64, "evals", "1000000");
        report(&mut rows, "backlog_rss_growth_mb", rss, "MB", "< 100");
        report(&mut rows, "backlog_submit_first_tenth_per_s", rates[0], "evals/s", "");
        report(&mut rows, "backlog_submit_last_tenth_per_s", rates[9], "evals/s", "within 20% of first");
    }

    // ---- AWS calls per placement, Lineup's shape and the original's, over moto
    if args.wants("aws") {
        if aws::moto_available() {
            aws_scenario(&mut rows).await;
        } else {
            println!("aws: skipped (no moto: `make venv` installs it into .venv)");
        }
    }
    if args.wants("pools") {
        pools::scenario(&mut rows).await;
    }
    if args.wants("partitions") {
        if aws::moto_available() {
            partitions::scenario(&mut rows).await;
        } else {
            println!("partitions: skipped (no moto: `make venv` installs it into .venv)");
        }
    }

    println!();
    println!("{:<60} {:>12}  {:<16} target", "figure", "value", "unit");
    for (name, v, unit, target) in rows {
        println!("{name:<60} {v:>12.2}  {unit:<16} {target}");
    }
}

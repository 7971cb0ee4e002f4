//! `infra/template.yaml` against what the functions read (`lineup_lambda::env::VARS`),
//! both ways and per function, and its timeouts and concurrency against the code's
//! limits. A variable the code needs and the template forgets, or one the template
//! sets and nothing reads, fails here rather than in a deployment.

use lineup_conformance::deployment::Deployment;
use lineup_core::service::MAX_POLL_WAIT;
use lineup_lambda::env::{missing, unread};
use lineup_lambda::{role_for, Config, Role};

fn deployed() -> Deployment {
    Deployment::of_repo_template(&[("AdminTokenSha256", &lineup_core::auth::hash("t"))])
}

#[test]
fn each_function_gets_what_it_reads_and_reads_what_it_gets() {
    let dep = deployed();
    let functions = dep.functions();
    let mut roles: Vec<Role> = Vec::new();
    for f in &functions {
        let role = role_for(&f.name, None).unwrap_or_else(|e| panic!("{}: {e}", f.logical_id));
        roles.push(role);
        let names: Vec<&str> = f.env.keys().map(String::as_str).collect();
        assert_eq!(missing(role, names.iter().copied()), Vec::<&str>::new(), "{} lacks", f.name);
        assert_eq!(unread(role, names.iter().copied()), Vec::<&str>::new(), "{} sets, nothing reads", f.name);
        // And the values parse: the function would start with exactly these.
        let config = Config::from_vars(role, f.env.clone()).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!(config.settings.deployment, dep.param("Deployment"));
        assert_eq!(config.settings.admin_token, None, "{}: no plaintext token in a deployment", f.name);
    }
    roles.sort_by_key(|r| r.name());
    assert_eq!(roles, vec![Role::Gateway, Role::Release, Role::Schedule], "one function per handler");
}

#[test]
fn parameters_reach_the_functions() {
    let dep = Deployment::of_repo_template(&[
        ("AdminTokenSha256", &lineup_core::auth::hash("t")),
        ("Deployment", "prod-eu"),
        ("WorkerTtl", "17"),
        ("MaxRetry", "9"),
    ]);
    for f in dep.functions() {
        let config = Config::from_vars(role_for(&f.name, None).unwrap(), f.env.clone()).unwrap();
        assert_eq!(
            (config.settings.deployment.as_str(), config.settings.worker_ttl, config.settings.max_retry),
            ("prod-eu", 17, 9)
        );
        assert!(f.name.starts_with("prod-eu-"), "{}", f.name);
    }
}

/// API Gateway's HTTP API ends an integration at 30 s: the gateway function must end
/// first, and its longest poll, with a margin, before that. The scheduler and the
/// releaser keep concurrency of their own, whatever the workers' polls take.
#[test]
fn timeouts_and_concurrency_fit_the_long_polls() {
    let dep = deployed();
    let gateway = dep.function_named("-gateway");
    assert!(gateway.timeout_secs < 30, "the gateway outlives API Gateway's 30 s: {}", gateway.timeout_secs);
    assert!(
        gateway.timeout_secs >= MAX_POLL_WAIT.as_secs() + 5,
        "a {} s poll needs a margin inside {} s",
        MAX_POLL_WAIT.as_secs(),
        gateway.timeout_secs
    );
    assert_eq!(gateway.reserved_concurrency, None, "GatewayConcurrency defaults to the unreserved pool");
    let capped = Deployment::of_repo_template(&[
        ("AdminTokenSha256", &lineup_core::auth::hash("t")),
        ("GatewayConcurrency", "50"),
    ]);
    assert_eq!(capped.function_named("-gateway").reserved_concurrency, Some(50));
    for suffix in ["-schedule", "-release"] {
        let f = dep.function_named(suffix);
        assert!(f.reserved_concurrency.is_some_and(|n| n >= 1), "{suffix} has no reserved concurrency");
    }
    let release = dep.function_named("-release");
    assert!(lineup_lambda::RELEASE_MARGIN.as_secs() + 5 < release.timeout_secs, "release: no time left to release");
    let schedule = dep.function_named("-schedule");
    let config = Config::from_vars(Role::Schedule, schedule.env.clone()).unwrap();
    assert!(
        config.functions.schedule_margin + 1 < schedule.timeout_secs,
        "the schedule margin leaves no time to schedule"
    );
}

/// `ScheduleShards` = n: n rules, each invoking the schedule function every minute with
/// an input its handler accepts, together scheduling every pool exactly once, each
/// allowed to invoke it, with two invocations of concurrency reserved per shard.
#[test]
fn schedule_shards_split_the_pools_between_rules() {
    let pools: Vec<lineup_core::PoolId> = (0..2_000).map(|_| lineup_core::PoolId::generate()).collect();
    for n in [1u32, 2, 4, 8, 16] {
        let dep = Deployment::of_repo_template(&[
            ("AdminTokenSha256", &lineup_core::auth::hash("t")),
            ("ScheduleShards", &n.to_string()),
        ]);
        let schedule = dep.function_named("-schedule");
        let function_arn = dep.arn(&schedule.logical_id).unwrap();
        let rules = dep.of_type("AWS::Events::Rule");
        assert_eq!(rules.len(), n as usize, "{n} shards: {rules:?}");
        let mut shards = Vec::new();
        for r in &rules {
            let props = dep.resolve(&dep.resource(r).unwrap()["Properties"]).unwrap().unwrap();
            assert_eq!(props["ScheduleExpression"], "rate(1 minute)");
            let target = &props["Targets"][0];
            assert_eq!(target["Arn"].as_str(), Some(function_arn.as_str()), "{r}");
            let input: serde_json::Value = serde_json::from_str(target["Input"].as_str().unwrap()).unwrap();
            let shard = lineup_lambda::shard_of(&input).unwrap_or_else(|e| panic!("{r}: {e}")).expect("a shard");
            assert_eq!(shard.count, n);
            shards.push(shard);
            // EventBridge may invoke the function for this rule.
            let rule_arn = dep.arn(r).unwrap();
            let allowed = dep.of_type("AWS::Lambda::Permission").into_iter().any(|p| {
                let props = dep.resolve(&dep.resource(&p).unwrap()["Properties"]).unwrap().unwrap();
                props["SourceArn"].as_str() == Some(rule_arn.as_str())
                    && props["Principal"] == "events.amazonaws.com"
                    && props["Action"] == "lambda:InvokeFunction"
            });
            assert!(allowed, "{r}: no permission for EventBridge to invoke {}", schedule.name);
        }
        for p in &pools {
            assert_eq!(shards.iter().filter(|s| s.owns(p)).count(), 1, "{n} shards: pool {p}");
        }
        assert_eq!(schedule.reserved_concurrency, Some(2 * u64::from(n)), "{n} shards");
    }
}

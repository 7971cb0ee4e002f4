//! The template and the code cannot drift: the tables and queues of
//! `infra/template.yaml` are created in moto by its CloudFormation, from the template
//! itself, and the whole conformance suite runs against exactly those.

use std::sync::{Arc, OnceLock};

use lineup_aws::AwsBackend;
use lineup_conformance::moto::{create_stack, template_json, Moto};
use lineup_conformance::Backend;

fn storage_template() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| template_json(Some("AWS::DynamoDB::Table,AWS::SQS::Queue")))
}

async fn backend() -> Backend {
    let moto = Moto::shared();
    let deployment = format!("s{}", &lineup_core::PoolId::generate().as_str()[8..]);
    create_stack(moto, &format!("lineup-{deployment}"), storage_template(), &[("Deployment", &deployment)]).await;
    // The backend's table names come from the deployment, as in the functions: no
    // create_tables here, only what the stack made.
    let b = Arc::new(AwsBackend::for_emulator(&moto.endpoint, &deployment).await);
    Backend { store: b.clone(), queues: b }
}

lineup_conformance::conformance_tests!(backend);

#[tokio::test]
async fn stack_declares_the_tables_the_backend_uses() {
    let moto = Moto::shared();
    let deployment = format!("d{}", &lineup_core::PoolId::generate().as_str()[8..]);
    create_stack(moto, &format!("lineup-{deployment}"), storage_template(), &[("Deployment", &deployment)]).await;
    let b = AwsBackend::for_emulator(&moto.endpoint, &deployment).await;
    for table in b.tables().all() {
        let d =
            b.dynamodb().describe_table().table_name(table).send().await.unwrap_or_else(|e| panic!("{table}: {e:?}"));
        let t = d.table().unwrap();
        assert_eq!(
            t.billing_mode_summary().and_then(|s| s.billing_mode()).map(|m| m.as_str()),
            Some("PAY_PER_REQUEST"),
            "{table}"
        );
    }
    let q = b.sqs().get_queue_url().queue_name(format!("{deployment}_dead-letter")).send().await.unwrap();
    let attrs = b
        .sqs()
        .get_queue_attributes()
        .queue_url(q.queue_url().unwrap())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod)
        .send()
        .await
        .unwrap();
    let retention =
        attrs.attributes().and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod));
    assert_eq!(retention.map(String::as_str), Some("1209600"), "14 days, as in the original");
}

fn as_list(v: &serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// Every DynamoDB and SQS permission names this deployment's own tables and queues:
/// no `*` resources, no wildcard actions.
#[test]
fn iam_policies_name_only_the_deployments_resources() {
    let t: serde_json::Value = serde_json::from_str(&template_json(None)).unwrap();
    let resources = t["Resources"].as_object().unwrap();
    let of_type = |ty: &str| -> Vec<String> {
        resources.iter().filter(|(_, r)| r["Type"] == ty).map(|(k, _)| k.clone()).collect()
    };
    let tables = of_type("AWS::DynamoDB::Table");
    let queues = of_type("AWS::SQS::Queue");
    let log_groups = of_type("AWS::Logs::LogGroup");
    assert_eq!(tables.len(), 6);
    let sqs_prefix =
        serde_json::json!({"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${Deployment}_*"});
    let get_att = |r: &serde_json::Value, among: &[String]| {
        r["Fn::GetAtt"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a[1] == "Arn" && among.iter().any(|t| a[0] == t.as_str()))
    };
    let mut granted: std::collections::HashMap<String, std::collections::HashSet<String>> = Default::default();
    let roles = of_type("AWS::IAM::Role");
    assert_eq!(roles.len(), 3, "one role per function");
    for role in &roles {
        for policy in resources[role]["Properties"]["Policies"].as_array().unwrap() {
            for st in as_list(&policy["PolicyDocument"]["Statement"]) {
                let actions: Vec<String> =
                    as_list(&st["Action"]).iter().map(|a| a.as_str().unwrap().to_owned()).collect();
                let res = as_list(&st["Resource"]);
                // CloudWatch's GetMetricStatistics takes no resource-level permission: the
                // one '*' allowed, alone in its statement.
                if actions == ["cloudwatch:GetMetricStatistics"] {
                    assert_eq!(res, vec![serde_json::json!("*")], "{role}: {st}");
                    granted.entry(role.clone()).or_default().insert(actions[0].clone());
                    continue;
                }
                assert!(!res.iter().any(|r| r == "*"), "{role}: a '*' resource");
                for a in &actions {
                    assert!(!a.ends_with('*'), "{role}: wildcard action {a}");
                    granted.entry(role.clone()).or_default().insert(a.clone());
                }
                for r in &res {
                    if actions.iter().any(|a| a.starts_with("dynamodb:")) {
                        let index_of_table = r["Fn::Sub"]
                            .as_str()
                            .is_some_and(|s| tables.iter().any(|t| s == format!("${{{t}.Arn}}/index/*")));
                        assert!(
                            get_att(r, &tables) || index_of_table,
                            "{role}: DynamoDB resource {r} is not one of its tables"
                        );
                    } else if actions.iter().any(|a| a.starts_with("sqs:")) {
                        assert!(
                            *r == sqs_prefix || get_att(r, &queues),
                            "{role}: SQS resource {r} is not the deployment's"
                        );
                    } else if actions.iter().any(|a| a.starts_with("logs:")) {
                        assert!(get_att(r, &log_groups), "{role}: logs resource {r} is not its log group");
                    } else {
                        panic!("{role}: unexpected statement {st}");
                    }
                }
            }
        }
    }
    // And what the code calls is granted: the gateway creates and deletes queues, the
    // releaser deletes queues and batch-deletes records, the scheduler moves messages.
    let needs = [
        // Heartbeats batch-write replicas.
        (
            "GatewayRole",
            vec![
                "sqs:CreateQueue",
                "sqs:DeleteQueue",
                "sqs:ReceiveMessage",
                "dynamodb:ConditionCheckItem",
                "dynamodb:UpdateItem",
                "dynamodb:BatchWriteItem",
                "cloudwatch:GetMetricStatistics",
            ],
        ),
        (
            "ReleaseRole",
            vec![
                "sqs:DeleteQueue",
                "sqs:SendMessage",
                "sqs:GetQueueAttributes",
                "dynamodb:BatchWriteItem",
                "dynamodb:DeleteItem",
            ],
        ),
        (
            "ScheduleRole",
            vec![
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:SendMessage",
                "dynamodb:BatchGetItem",
                "dynamodb:PutItem",
                "cloudwatch:GetMetricStatistics",
            ],
        ),
    ];
    for (role, actions) in needs {
        for a in actions {
            assert!(granted[role].contains(a), "{role} lacks {a}");
        }
    }
}

#[test]
fn cfn_lint_finds_nothing() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(root.join(".venv/bin/cfn-lint"))
        .arg(root.join("infra/template.yaml"))
        .output()
        .expect("run cfn-lint (make test installs it into .venv)");
    // Its exit code is a bitmask: 2 errors, 4 warnings, 8 informational. Any is a failure.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No grant of one deployment matches a resource of another, even where one name is a
/// prefix of the other: every grant resolved for deployment A (as deployed, from the
/// template), against every resource of deployment B — its tables and their indexes,
/// its log groups, its dead-letter queue, and the queues the code creates at run time.
#[test]
fn deployments_grants_never_reach_each_other() {
    use lineup_conformance::deployment::{iam_matches, Deployment, ACCOUNT, REGION};
    let resources_of = |d: &Deployment| -> Vec<String> {
        let mut out = Vec::new();
        for t in d.of_type("AWS::DynamoDB::Table") {
            let arn = d.arn(&t).unwrap();
            out.push(format!("{arn}/index/by_ttl"));
            out.push(arn);
        }
        for l in d.of_type("AWS::Logs::LogGroup").iter().chain(&d.of_type("AWS::SQS::Queue")) {
            out.push(d.arn(l).unwrap());
        }
        let settings = lineup_core::Settings { deployment: d.param("Deployment").to_owned(), ..Default::default() };
        let (p, w) = (lineup_core::PoolId::generate(), lineup_core::WorkerId::generate());
        for q in [settings.pool_queue(&p), settings.worker_queue(&p, &w), settings.dead_letter_queue()] {
            out.push(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{q}"));
        }
        out
    };
    let pairs = [("lineup", "lineup-staging"), ("lineup-staging", "lineup"), ("a", "a-b-c"), ("prod", "prod-pools")];
    for (a, b) in pairs {
        let hash = lineup_core::auth::hash("t");
        let da = Deployment::of_repo_template(&[("Deployment", a), ("AdminTokenSha256", &hash)]);
        let db = Deployment::of_repo_template(&[("Deployment", b), ("AdminTokenSha256", &hash)]);
        let (own, theirs) = (resources_of(&da), resources_of(&db));
        let grants = da.grants();
        assert!(!grants.is_empty());
        for (role, actions, patterns) in &grants {
            // The metric read, on '*' of necessity, touches no deployment's resource.
            if actions.iter().all(|a| a == "cloudwatch:GetMetricStatistics") {
                continue;
            }
            for p in patterns {
                assert!(p != "*", "{a}/{role}: a '*' resource");
                for r in &theirs {
                    assert!(!iam_matches(p, r), "{a}'s {role} grant {p} reaches {b}'s {r}");
                }
            }
        }
        // And the grants do reach A's own runtime queues (the check above is not vacuous).
        let own_queue = own.iter().find(|r| r.contains(":sqs:") && !r.ends_with("dead-letter")).unwrap();
        assert!(grants.iter().any(|(_, _, ps)| ps.iter().any(|p| iam_matches(p, own_queue))), "{own_queue}");
    }
}

//! Lineup on AWS: records in DynamoDB, queues in SQS, behind the core's `Store` and
//! `Queues` traits. Passes the same conformance suite as the embedded backend, run
//! against moto's server through the real SDK.
//!
//! # Layout
//! - `tables.rs`: table and index names and shapes; `create_tables` for `lineup aws init`
//!   and tests. `infra/template.yaml` declares the same (a test keeps them together).
//! - `items.rs`: the DynamoDB items (attribute names from the Go original: `pool`,
//!   `wrk`, `cap`, `ttl`, `rpl`, `alloc`) and their conversion to the core's model.
//! - `keys.rs`: the key design: records keyed by their own id, a pool's records listed
//!   through index shards (`{pool}#{k}`), queried concurrently.
//! - `ddb.rs`: DynamoDB requests: consistent reads, paginated queries, batches retried
//!   until processed, transactions and their cancellation reasons (`TxError`).
//! - `store.rs`: `Store`; multi-record writes are one `TransactWriteItems`.
//! - `placing.rs`: placements as transactions, a scheduler's batch in as few as it takes.
//! - `workers.rs`: registration, candidates, expiry, heartbeats (leases, replicas, allocs).
//! - `limits.rs`: a pool's `max_running`: the counted claim, and setting a cap in fenced steps.
//! - `queues.rs`: `Queues` over SQS, batched.
//! - `original.rs`: the Go original's step-by-step writes, for `make bench` to measure beside.
//! - `calls.rs`: an SDK interceptor that counts calls by operation.
//! - `retry.rs`: backoff for throttling, 5xx and transaction conflicts.
//! - `probe.rs`: health checks that read a CloudWatch metric.

mod allocs;
mod calls;
mod completion;
mod ddb;
mod direct;
mod items;
mod keys;
mod limits;
mod original;
mod pipelines;
mod placing;
mod probe;
mod queues;
pub mod retry;
mod store;
mod tables;
mod workers;

use std::sync::{Arc, RwLock};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;

pub use calls::CallCounter;
pub use direct::DirectQueue;
pub use keys::MAX_SHARDS;
pub use original::{create_pool_keyed_tables, Keys};
pub use probe::CloudWatchProbe;
pub use tables::{create_tables, delete_tables, Tables};

/// `Settings::history_retention`'s default, seconds.
const DEFAULT_RETENTION: i64 = 7 * 24 * 3600;

/// How to reach AWS (or an emulator).
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// An emulator's URL (`http://127.0.0.1:PORT`); `None` for real AWS.
    pub endpoint_url: Option<String>,
    /// Overrides the region from the usual chain.
    pub region: Option<String>,
    /// Static credentials (access key, secret), e.g. for an emulator; `None` uses the usual chain.
    pub static_credentials: Option<(String, String)>,
    /// Table names are `{table_prefix}-pools` etc.
    pub table_prefix: String,
}

/// The AWS backend: both traits over one DynamoDB and one SQS client.
#[derive(Clone)]
pub struct AwsBackend {
    pub(crate) ddb: aws_sdk_dynamodb::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
    /// Reads metrics for health checks (`probe.rs`).
    cw: aws_sdk_cloudwatch::Client,
    pub(crate) tables: Tables,
    calls: CallCounter,
    /// `https://sqs.REGION.amazonaws.com/ACCOUNT/`: a queue's URL is this plus its name,
    /// learned from the first URL SQS gives us, so sends need no `GetQueueUrl`.
    pub(crate) queue_prefix: Arc<RwLock<Option<String>>>,
    /// `Settings::history_retention`, seconds: how long released allocs and
    /// idempotency keys are kept (`set_history_retention`; evals carry their own
    /// `purge_at`).
    pub(crate) retention: Arc<std::sync::atomic::AtomicI64>,
    /// The index shards new pools get (`keys.rs`, `set_index_shards`).
    pub(crate) new_pool_shards: Arc<std::sync::atomic::AtomicU32>,
    /// Pools' shard counts, read once from their items.
    pub(crate) shard_cache: Arc<keys::ShardCache>,
}

impl AwsBackend {
    /// Builds the clients once (the usual credential chain unless told otherwise).
    pub async fn connect(opts: &AwsOptions) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(ep) = &opts.endpoint_url {
            loader = loader.endpoint_url(ep);
        }
        if let Some(r) = &opts.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some((key, secret)) = &opts.static_credentials {
            loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "lineup-static"));
        }
        let conf = loader.load().await;
        Self::from_conf(&conf, &opts.table_prefix)
    }

    /// For a local emulator (moto): fixed region and static test credentials, unless the
    /// environment gives credentials of its own.
    pub async fn for_emulator(endpoint_url: &str, table_prefix: &str) -> Self {
        let creds = match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(k), Ok(s)) => (k, s),
            _ => ("test".to_owned(), "test".to_owned()),
        };
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
        Self::connect(&AwsOptions {
            endpoint_url: Some(endpoint_url.to_owned()),
            region: Some(region),
            static_credentials: Some(creds),
            table_prefix: table_prefix.to_owned(),
        })
        .await
    }

    pub fn from_conf(conf: &aws_config::SdkConfig, table_prefix: &str) -> Self {
        let calls = CallCounter::default();
        let ddb_conf = aws_sdk_dynamodb::config::Builder::from(conf)
            .retry_config(retry::config())
            .interceptor(calls.interceptor())
            .build();
        let sqs_conf = aws_sdk_sqs::config::Builder::from(conf)
            .retry_config(retry::config())
            .interceptor(calls.interceptor())
            .build();
        let cw_conf = aws_sdk_cloudwatch::config::Builder::from(conf)
            .retry_config(retry::config())
            .interceptor(calls.interceptor())
            .build();
        AwsBackend {
            ddb: aws_sdk_dynamodb::Client::from_conf(ddb_conf),
            sqs: aws_sdk_sqs::Client::from_conf(sqs_conf),
            cw: aws_sdk_cloudwatch::Client::from_conf(cw_conf),
            tables: Tables::new(table_prefix),
            calls,
            queue_prefix: Arc::default(),
            retention: Arc::new(std::sync::atomic::AtomicI64::new(DEFAULT_RETENTION)),
            new_pool_shards: Arc::new(std::sync::atomic::AtomicU32::new(1)),
            shard_cache: Arc::default(),
        }
    }

    /// How long released allocs and idempotency keys are kept, in seconds (the
    /// deployment's `LINEUP_HISTORY_RETENTION`; 7 days unless set).
    pub fn set_history_retention(&self, secs: u64) {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
        self.retention.store(secs, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn retention_secs(&self) -> i64 {
        self.retention.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// AWS calls made so far, by operation.
    pub fn calls(&self) -> &CallCounter {
        &self.calls
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    pub fn dynamodb(&self) -> &aws_sdk_dynamodb::Client {
        &self.ddb
    }

    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    pub fn cloudwatch(&self) -> &aws_sdk_cloudwatch::Client {
        &self.cw
    }

    /// The health-check probe for metric checks, on this backend's credentials.
    pub fn probe(&self) -> CloudWatchProbe {
        CloudWatchProbe { cw: self.cw.clone() }
    }
}

/// The full error text of an SDK error (its `Display` alone says only "service error").
pub(crate) fn sdk_err(context: impl std::fmt::Display, e: impl std::error::Error) -> lineup_core::Error {
    lineup_core::Error::backend(context, aws_smithy_types::error::display::DisplayErrorContext(e))
}

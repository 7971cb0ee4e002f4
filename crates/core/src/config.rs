//! Settings from the environment (`LINEUP_*`, read with envy). Defaults are the Go
//! original's, in seconds. The CLI overrides fields from its flags after loading.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::validate;

/// Between the deployment and the rest of a queue name; never part of a deployment name.
pub const QUEUE_SEP: char = '_';

#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Prefix of every queue name: `{deployment}_{pool}`, `{deployment}_{pool}_{worker}`.
    pub deployment: String,
    /// How long a disbanded pool's records are kept before they are purged.
    pub pool_ttl: u64,
    /// A worker that does not heartbeat within this many seconds is removed.
    pub worker_ttl: u64,
    /// How long a heartbeat's dataset listing counts as a replica.
    pub replica_ttl: u64,
    /// An alloc not extended by a heartbeat within this many seconds is released and retried.
    pub alloc_ttl: u64,
    /// Retries after the first attempt; then the eval is dead-lettered.
    pub max_retry: u32,
    /// How long a finished eval (and a released alloc) stays queryable, in seconds;
    /// then it is purged (a DynamoDB TTL on AWS, the releaser on the embedded store).
    pub history_retention: u64,
    /// Index shards a new pool gets on DynamoDB (1..=64): its records are listed through
    /// this many index partitions, so its index writes spread over as many keys. One is
    /// one query per listing; a pool placing thousands a second wants 32 (docs/SCALE.md).
    /// Fixed per pool when it is created: changing it affects pools created after.
    pub index_shards: u32,
    /// Seconds between releaser runs in `lineup dev`.
    pub release_interval: u64,
    /// Longest a blocked eval waits in its queue before it is looked at again, in seconds.
    /// New capacity wakes blocked evals at once where the backend can.
    pub blocked_backoff_max: u64,
    /// The admin token; `lineup dev` generates one when unset.
    pub admin_token: Option<String>,
    /// Instead of the token: its SHA-256, lowercase hex (what the template deploys, so the
    /// token itself is stored nowhere).
    pub admin_token_sha256: Option<String>,
    /// A token that opens `/metrics` and nothing else, for a Prometheus scraper.
    pub metrics_token: Option<String>,
}

/// By hand, so that no `{:?}` of the settings can print the admin token or its hash.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("Settings")
            .field("deployment", &self.deployment)
            .field("pool_ttl", &self.pool_ttl)
            .field("worker_ttl", &self.worker_ttl)
            .field("replica_ttl", &self.replica_ttl)
            .field("alloc_ttl", &self.alloc_ttl)
            .field("max_retry", &self.max_retry)
            .field("history_retention", &self.history_retention)
            .field("index_shards", &self.index_shards)
            .field("release_interval", &self.release_interval)
            .field("blocked_backoff_max", &self.blocked_backoff_max)
            .field("admin_token", &redacted(&self.admin_token))
            .field("admin_token_sha256", &redacted(&self.admin_token_sha256))
            .field("metrics_token", &redacted(&self.metrics_token))
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            deployment: "lineup".into(),
            pool_ttl: 300,
            worker_ttl: 60,
            replica_ttl: 30,
            alloc_ttl: 30,
            max_retry: 3,
            history_retention: 7 * 24 * 3600,
            index_shards: 1,
            release_interval: 5,
            blocked_backoff_max: 30,
            admin_token: None,
            admin_token_sha256: None,
            metrics_token: None,
        }
    }
}

impl Settings {
    /// Reads `LINEUP_*` variables; unknown ones are ignored, malformed ones are an error.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(std::env::vars())
    }

    /// As `from_env`, from the given variables (a function's environment as deployed).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let s: Settings = envy::prefixed("LINEUP_")
            .from_iter(vars)
            .map_err(|e| Error::invalid("invalid_config", format!("LINEUP_* environment: {e}")))?;
        s.validated()
    }

    pub fn validated(self) -> Result<Self> {
        validate::deployment(&self.deployment)?;
        let mut s = self;
        // Empty counts as unset: a template parameter or a shell export left blank.
        s.admin_token = s.admin_token.filter(|t| !t.is_empty());
        s.admin_token_sha256 = s.admin_token_sha256.filter(|h| !h.is_empty()).map(|h| h.to_ascii_lowercase());
        if let Some(h) = &s.admin_token_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                // Says what it got only by its length: the value is a credential.
                return Err(Error::invalid(
                    "invalid_config",
                    format!(
                        "LINEUP_ADMIN_TOKEN_SHA256 must be the SHA-256 of the admin token as 64 hex characters \
                         (`printf %s \"$TOKEN\" | sha256sum`), got {} characters{}",
                        h.len(),
                        if h.bytes().all(|b| b.is_ascii_hexdigit()) { "" } else { " with some not hex" }
                    ),
                ));
            }
            if let Some(t) = &s.admin_token {
                if !crate::auth::hash_matches(t, h) {
                    return Err(Error::invalid(
                        "invalid_config",
                        "LINEUP_ADMIN_TOKEN and LINEUP_ADMIN_TOKEN_SHA256 are both set and do not match: set one",
                    ));
                }
            }
        }
        let s = s;
        if !(1..=64).contains(&s.index_shards) {
            return Err(Error::invalid(
                "invalid_config",
                format!("LINEUP_INDEX_SHARDS must be from 1 to 64, got {}", s.index_shards),
            ));
        }
        for (name, v) in [
            ("LINEUP_WORKER_TTL", s.worker_ttl),
            ("LINEUP_ALLOC_TTL", s.alloc_ttl),
            ("LINEUP_REPLICA_TTL", s.replica_ttl),
            ("LINEUP_RELEASE_INTERVAL", s.release_interval),
            ("LINEUP_BLOCKED_BACKOFF_MAX", s.blocked_backoff_max),
        ] {
            if v == 0 {
                return Err(Error::invalid("invalid_config", format!("{name} must be at least 1 second")));
            }
        }
        Ok(s)
    }

    /// The admin token's SHA-256 (lowercase hex), from `LINEUP_ADMIN_TOKEN_SHA256` or by
    /// hashing `LINEUP_ADMIN_TOKEN`; `None` when neither is set. Call on validated
    /// settings (`from_env` validates).
    pub fn admin_hash(&self) -> Option<String> {
        self.admin_token_sha256.clone().or_else(|| self.admin_token.as_deref().map(crate::auth::hash))
    }

    pub fn worker_ttl_ms(&self) -> i64 {
        (self.worker_ttl * 1000) as i64
    }
    pub fn history_retention_ms(&self) -> i64 {
        (self.history_retention * 1000) as i64
    }
    pub fn alloc_ttl_ms(&self) -> i64 {
        (self.alloc_ttl * 1000) as i64
    }
    pub fn replica_ttl_ms(&self) -> i64 {
        (self.replica_ttl * 1000) as i64
    }
    pub fn pool_ttl_ms(&self) -> i64 {
        (self.pool_ttl * 1000) as i64
    }
    pub fn release_interval(&self) -> Duration {
        Duration::from_secs(self.release_interval)
    }

    // Queue names join the deployment to the rest with `_`, which a deployment name may
    // not contain: a grant on `{deployment}_*` then matches only that deployment's queues,
    // even where one deployment's name is a prefix of another's (`lineup`,
    // `lineup-staging`). Proved for the template's grants in crates/aws/tests/template.rs.

    /// `{deployment}_{pool}`: the pool's scheduling queue.
    pub fn pool_queue(&self, pool: &crate::PoolId) -> String {
        format!("{}{QUEUE_SEP}{}", self.deployment, pool)
    }

    /// `{deployment}_{pool}_{worker}`: the worker's alloc queue.
    pub fn worker_queue(&self, pool: &crate::PoolId, worker: &crate::WorkerId) -> String {
        format!("{}{QUEUE_SEP}{}{QUEUE_SEP}{}", self.deployment, pool, worker)
    }

    /// Where dead evals are announced (for alarms); the eval records stay the truth.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}{QUEUE_SEP}dead-letter", self.deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(token: Option<&str>, hash: Option<&str>) -> Result<Settings> {
        Settings {
            admin_token: token.map(str::to_owned),
            admin_token_sha256: hash.map(str::to_owned),
            ..Settings::default()
        }
        .validated()
    }

    #[test]
    fn admin_hash_from_either_variable() {
        let h = crate::auth::hash("t0ken");
        assert_eq!(with(None, Some(&h)).unwrap().admin_hash(), Some(h.clone()));
        assert_eq!(with(None, Some(&h.to_uppercase())).unwrap().admin_hash(), Some(h.clone()), "hex in any case");
        assert_eq!(with(Some("t0ken"), None).unwrap().admin_hash(), Some(h.clone()));
        assert_eq!(with(Some("t0ken"), Some(&h)).unwrap().admin_hash(), Some(h.clone()), "both, agreeing");
        assert_eq!(with(Some(""), Some("")).unwrap().admin_hash(), None, "empty is unset");
        assert_eq!(with(None, None).unwrap().admin_hash(), None);
    }

    #[test]
    fn a_bad_admin_hash_is_refused_without_echoing_it() {
        let h = crate::auth::hash("t0ken");
        for bad in [&h[..63], &format!("{}zz", &h[..62]), "s3cret-plaintext"] {
            let e = with(None, Some(bad)).unwrap_err().to_string();
            assert!(e.contains("LINEUP_ADMIN_TOKEN_SHA256"), "{e}");
            assert!(!e.contains(bad), "the error repeats the credential: {e}");
        }
        let e = with(Some("other"), Some(&h)).unwrap_err().to_string();
        assert!(e.contains("do not match"), "{e}");
    }

    #[test]
    fn debug_never_shows_credentials() {
        let s = with(Some("t0ken-plain"), None).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("t0ken-plain") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn queue_names_keep_deployments_apart() {
        let (p, w) = (crate::PoolId::generate(), crate::WorkerId::generate());
        let s = Settings { deployment: "lineup".into(), ..Settings::default() };
        let staging = Settings { deployment: "lineup-staging".into(), ..Settings::default() };
        for name in [staging.pool_queue(&p), staging.worker_queue(&p, &w), staging.dead_letter_queue()] {
            assert!(!name.starts_with(&format!("{}{QUEUE_SEP}", s.deployment)), "{name}");
        }
        let longest = Settings { deployment: "d".repeat(30), ..Settings::default() }.validated().unwrap();
        assert!(longest.worker_queue(&p, &w).len() <= 80, "SQS allows 80 characters");
    }
}

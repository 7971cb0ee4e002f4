//! Settings from the environment (`LINEUP_*`, read with envy). Defaults are the Go
//! original's, in seconds. The CLI overrides fields from its flags after loading.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::validate;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Prefix of every queue name: `{deployment}-{pool}`, `{deployment}-{pool}-{worker}`.
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
            release_interval: 5,
            blocked_backoff_max: 30,
            admin_token: None,
            admin_token_sha256: None,
        }
    }
}

impl Settings {
    /// Reads `LINEUP_*` variables; unknown ones are ignored, malformed ones are an error.
    pub fn from_env() -> Result<Self> {
        let s: Settings = envy::prefixed("LINEUP_")
            .from_env()
            .map_err(|e| Error::invalid("invalid_config", format!("LINEUP_* environment: {e}")))?;
        s.validated()
    }

    pub fn validated(self) -> Result<Self> {
        validate::deployment(&self.deployment)?;
        if let Some(h) = &self.admin_token_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(Error::invalid(
                    "invalid_config",
                    "LINEUP_ADMIN_TOKEN_SHA256 must be 64 lowercase hex characters",
                ));
            }
        }
        for (name, v) in [
            ("LINEUP_WORKER_TTL", self.worker_ttl),
            ("LINEUP_ALLOC_TTL", self.alloc_ttl),
            ("LINEUP_REPLICA_TTL", self.replica_ttl),
            ("LINEUP_RELEASE_INTERVAL", self.release_interval),
            ("LINEUP_BLOCKED_BACKOFF_MAX", self.blocked_backoff_max),
        ] {
            if v == 0 {
                return Err(Error::invalid("invalid_config", format!("{name} must be at least 1 second")));
            }
        }
        Ok(self)
    }

    pub fn worker_ttl_ms(&self) -> i64 {
        (self.worker_ttl * 1000) as i64
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

    /// `{deployment}-{pool}`: the pool's scheduling queue.
    pub fn pool_queue(&self, pool: &crate::PoolId) -> String {
        format!("{}-{}", self.deployment, pool)
    }

    /// `{deployment}-{pool}-{worker}`: the worker's alloc queue.
    pub fn worker_queue(&self, pool: &crate::PoolId, worker: &crate::WorkerId) -> String {
        format!("{}-{}-{}", self.deployment, pool, worker)
    }

    /// Where dead evals are announced (for alarms); the eval records stay the truth.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}-dead-letter", self.deployment)
    }
}

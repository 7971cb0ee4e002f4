//! Reading a pool's health checks: each at most once per its period in this process,
//! through the probe the process was given (`Lineup::with_probe`). A process without
//! one (or a check of a kind its probe does not read) sees the check as unreadable:
//! its `on_error` level.

use std::sync::Arc;

use super::Lineup;
use crate::error::Error;
use crate::health::{Probe, Reading};
use crate::model::Pool;

impl Lineup {
    /// The process reads health checks with `probe` (an HTTP one in `lineup dev`, a
    /// CloudWatch one where wired).
    pub fn with_probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// The pool's checks' readings, each read again only once its period has passed.
    pub async fn pulled_health(&self, pool: &Pool) -> Vec<Reading> {
        let now = self.now();
        let mut out = Vec::with_capacity(pool.limits.checks.len());
        for check in &pool.limits.checks {
            let key = (pool.pool_id.clone(), check.name.clone());
            let cached = self.readings.lock().ok().and_then(|m| m.get(&key).cloned());
            if let Some(r) = cached.filter(|r| now - r.read_at < check.period as i64 * 1000) {
                out.push(r);
                continue;
            }
            let read = match &self.probe {
                Some(p) => p.read(check).await,
                None => Err(Error::Backend("no health probe in this process".into())),
            };
            if let Err(e) = &read {
                tracing::warn!(pool = %pool.pool_id, check = %check.name, error = %e, level = check.on_error, "health check unreadable");
            }
            let r = Reading::of(check, read, now);
            if let Ok(mut m) = self.readings.lock() {
                m.insert(key, r.clone());
            }
            out.push(r);
        }
        out
    }
}

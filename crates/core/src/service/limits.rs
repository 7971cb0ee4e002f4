//! Admission settings of a pool: `max_running`, health coefficients, a pushed health
//! level. The store enforces the cap with every claim; see `admission.rs` for the rules.

use std::time::Duration;

use tracing::info;

use super::{require_admin, Lineup};
use crate::admission::{Coefficients, Pushed};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::events::{Change, Topic};
use crate::health::{HealthCheck, MAX_CHECKS};
use crate::id::PoolId;
use crate::model::{Pool, PoolStatus, Strategy};

/// The longest a pushed health level may last before it must be reported again.
pub const MAX_HEALTH_TTL: Duration = Duration::from_secs(24 * 3600);

/// A pool to create.
#[derive(Debug, Clone, Default)]
pub struct NewPool {
    pub strategy: Strategy,
    pub max_running: Option<u32>,
    pub coefficients: Option<Coefficients>,
    pub health_checks: Option<Vec<HealthCheck>>,
}

/// A change to a pool's admission settings; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct PoolChange {
    /// `Some(None)` removes the cap.
    pub max_running: Option<Option<u32>>,
    pub coefficients: Option<Coefficients>,
    /// Replaces the pool's checks (an empty list removes them).
    pub health_checks: Option<Vec<HealthCheck>>,
}

/// Checks every check, and that names are unique and few enough.
pub fn validate_checks(checks: &[HealthCheck]) -> Result<()> {
    if checks.len() > MAX_CHECKS {
        return Err(Error::invalid("invalid_health_check", format!("at most {MAX_CHECKS} health checks per pool")));
    }
    let mut names = std::collections::HashSet::new();
    for c in checks {
        c.validate()?;
        if !names.insert(c.name.as_str()) {
            return Err(Error::invalid("invalid_health_check", format!("two checks are named {:?}", c.name)));
        }
    }
    Ok(())
}

impl Lineup {
    pub async fn create_pool_with(&self, who: &Principal, new: NewPool) -> Result<Pool> {
        if let Some(c) = &new.health_checks {
            validate_checks(c)?;
        }
        let pool = self.create_pool(who, new.strategy).await?;
        let change = PoolChange {
            max_running: new.max_running.map(Some),
            coefficients: new.coefficients,
            health_checks: new.health_checks,
        };
        if change.max_running.is_none() && change.coefficients.is_none() && change.health_checks.is_none() {
            return Ok(pool);
        }
        self.change_pool(who, &pool.pool_id, change).await
    }

    /// `PATCH /v1/pools/{pool}`.
    pub async fn change_pool(&self, who: &Principal, pool: &PoolId, change: PoolChange) -> Result<Pool> {
        require_admin(who)?;
        if let Some(c) = &change.health_checks {
            validate_checks(c)?;
        }
        let mut p = self.active_pool_record(pool).await?;
        if change.coefficients.is_some() || change.health_checks.is_some() {
            let coefficients = change.coefficients.unwrap_or(p.limits.coefficients);
            let checks = change.health_checks.unwrap_or_else(|| p.limits.checks.clone());
            p = self.store.set_health(pool, coefficients, p.limits.pushed, &checks).await?;
            if let Ok(mut m) = self.readings.lock() {
                m.retain(|(id, _), _| id != pool);
            }
        }
        if let Some(max) = change.max_running {
            p = self.store.set_max_running(pool, max).await?;
            info!(pool = %pool, max_running = ?max, running = p.limits.running, "max_running set");
        }
        self.emit(|| Change::new(Topic::Pool, pool, pool, "changed"));
        // A higher limit may let held evals through at once. (Schedulers in other
        // processes see the change within a second: `scheduler::POOL_FRESH`.)
        self.forget_pool(pool);
        let _ = self.capacity_appeared(pool).await;
        Ok(p)
    }

    /// `PUT /v1/pools/{pool}/health`: `level` until `ttl` from now, then healthy again.
    pub async fn push_health(&self, who: &Principal, pool: &PoolId, level: u8, ttl: Duration) -> Result<Pool> {
        require_admin(who)?;
        if ttl.is_zero() || ttl > MAX_HEALTH_TTL {
            return Err(Error::invalid(
                "invalid_ttl",
                format!("ttl must be between 1 and {} seconds", MAX_HEALTH_TTL.as_secs()),
            ));
        }
        let p = self.active_pool_record(pool).await?;
        let until = self.now() + ttl.as_millis() as i64;
        let pushed = Some(Pushed { level, until });
        let p = self.store.set_health(pool, p.limits.coefficients, pushed, &p.limits.checks).await?;
        info!(pool = %pool, level, ttl_s = ttl.as_secs(), "health pushed");
        self.emit(|| Change {
            reason: Some(format!("health {level} pushed")),
            ..Change::new(Topic::Pool, pool, pool, "changed")
        });
        self.forget_pool(pool);
        let _ = self.capacity_appeared(pool).await;
        Ok(p)
    }

    async fn active_pool_record(&self, pool: &PoolId) -> Result<Pool> {
        match self.store.get_pool(pool).await? {
            Some(p) if p.status == PoolStatus::Active => Ok(p),
            Some(_) => Err(Error::Disbanded(pool.to_string())),
            None => Err(Error::not_found(format!("pool {pool}"))),
        }
    }
}

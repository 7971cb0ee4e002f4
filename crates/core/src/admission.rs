//! Admission: how many allocs a pool may run at once. A pool may have `max_running`;
//! its health level (0–4, the worst of what was pushed and what its checks read)
//! scales that by a coefficient, as sosw's EcologyManager does. Pure: the scheduler
//! reads the pool, asks for the effective `Limit`, and the store enforces it atomically
//! with the capacity claim (`backend::Claim`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Millis;
use crate::plan::Limit;

/// The healthiest level, and the one a pool has when nothing says otherwise.
pub const HEALTHY: u8 = 4;

/// The multiplier of `max_running` at each health level 0–4.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f64>", into = "Vec<f64>")]
pub struct Coefficients([f64; 5]);

impl Default for Coefficients {
    /// sosw's defaults: levels 0 and 1 stop new work, 2 halves it, 3 takes three quarters.
    fn default() -> Self {
        Coefficients([0.0, 0.0, 0.5, 0.75, 1.0])
    }
}

impl TryFrom<Vec<f64>> for Coefficients {
    type Error = Error;
    fn try_from(v: Vec<f64>) -> Result<Self> {
        let arr: [f64; 5] = v.try_into().map_err(|v: Vec<f64>| {
            Error::invalid(
                "invalid_coefficients",
                format!("coefficients must list 5 numbers, one per health level 0-4; got {}", v.len()),
            )
        })?;
        if arr.iter().any(|c| !(0.0..=1.0).contains(c)) {
            return Err(Error::invalid("invalid_coefficients", "each coefficient must be between 0 and 1"));
        }
        if arr.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::invalid("invalid_coefficients", "coefficients must not fall as health improves"));
        }
        Ok(Coefficients(arr))
    }
}

impl From<Coefficients> for Vec<f64> {
    fn from(c: Coefficients) -> Self {
        c.0.to_vec()
    }
}

impl Coefficients {
    pub fn at(&self, level: u8) -> f64 {
        self.0[usize::from(level.min(HEALTHY))]
    }
}

/// A level reported with `PUT /v1/pools/{pool}/health`, lapsing to healthy at `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    pub level: u8,
    pub until: Millis,
}

pub fn level(n: i64) -> Result<u8> {
    u8::try_from(n)
        .ok()
        .filter(|l| *l <= HEALTHY)
        .ok_or_else(|| Error::invalid("invalid_level", format!("level must be between 0 and {HEALTHY}, got {n}")))
}

pub fn max_running(n: i64) -> Result<u32> {
    u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
        Error::invalid("invalid_max_running", format!("max_running must be a positive integer or null, got {n}"))
    })
}

/// A pool's admission settings and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PoolLimits {
    /// The most allocs live in the pool at once; `None`: no cap.
    pub max_running: Option<u32>,
    /// Allocs counted against the cap (placed while the pool had one, or counted when
    /// one was set): exact while the pool has a cap.
    pub running: u32,
    /// Bumped by every change of `max_running`; a claim made against an older version
    /// loses (`backend::Claim`), so no scheduler places by a cap it has not seen.
    pub version: u64,
    /// A cap is being set on a pool with allocs not yet counted (DynamoDB only: the
    /// live allocs are counted one by one); nothing new is placed until it is done.
    pub counting: bool,
    pub coefficients: Coefficients,
    pub pushed: Option<Pushed>,
    /// Pulled health (`health.rs`).
    #[serde(default)]
    pub checks: Vec<crate::health::HealthCheck>,
}

/// Where a pool's current health level comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Nothing reports a problem.
    Default,
    Pushed,
    /// One of the pool's `health_checks`.
    Check,
}

impl PoolLimits {
    /// The health level at `now`, where it comes from, and why ("pushed",
    /// "check rds-cpu = 71 ≥ 70"): the worst of the pushed level (until it lapses) and
    /// `pulled`, the worst of the checks' readings (`health::worst`).
    pub fn health(&self, now: Millis, pulled: Option<&(u8, String)>) -> (u8, Source, String) {
        let pushed = self.pushed.filter(|p| p.until > now && p.level < HEALTHY);
        match (pushed, pulled) {
            (Some(p), Some((l, why))) if *l < p.level => (*l, Source::Check, why.clone()),
            (Some(p), _) => (p.level, Source::Pushed, "pushed".into()),
            (None, Some((l, why))) if *l < HEALTHY => (*l, Source::Check, why.clone()),
            _ => (HEALTHY, Source::Default, "default".into()),
        }
    }

    /// The effective limit at `now`: `floor(coefficient(level) × max_running)`;
    /// without a cap, a coefficient of 0 stops new placements and any other does not
    /// limit. `None`: no limit.
    pub fn limit(&self, now: Millis, pulled: Option<&(u8, String)>) -> Option<Limit> {
        if self.counting {
            return Some(Limit {
                running: self.running,
                limit: 0,
                max_running: self.max_running,
                health: None,
                counting: true,
            });
        }
        let (level, _, why) = self.health(now, pulled);
        let coef = self.coefficients.at(level);
        let health = (coef < 1.0).then(|| format!("health {level} ({why})"));
        match self.max_running {
            Some(max) => {
                // Floating point: 0.75 × 4 must be 3 exactly, not 2.9999.
                let limit = ((coef * f64::from(max)) + 1e-9).floor() as u32;
                Some(Limit {
                    running: self.running,
                    limit: limit.min(max),
                    max_running: Some(max),
                    health,
                    counting: false,
                })
            }
            None if coef <= 0.0 => {
                Some(Limit { running: self.running, limit: 0, max_running: None, health, counting: false })
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: Option<u32>, pushed: Option<u8>) -> PoolLimits {
        PoolLimits { max_running: max, pushed: pushed.map(|level| Pushed { level, until: 100 }), ..Default::default() }
    }

    #[test]
    fn the_limit_scales_with_health() {
        let got = |max, lvl: Option<u8>| limits(max, lvl).limit(50, None).map(|l| l.limit);
        assert_eq!(got(Some(10), None), Some(10));
        assert_eq!(got(Some(10), Some(3)), Some(7));
        assert_eq!(got(Some(4), Some(3)), Some(3));
        assert_eq!(got(Some(10), Some(2)), Some(5));
        assert_eq!(got(Some(10), Some(1)), Some(0));
        assert_eq!(got(None, None), None);
        assert_eq!(got(None, Some(2)), None, "without a cap, levels 2-4 do not limit");
        assert_eq!(got(None, Some(1)), Some(0), "without a cap, levels 0 and 1 stop new placements");
    }

    #[test]
    fn a_pushed_level_lapses() {
        let l = limits(Some(10), Some(2));
        assert_eq!(l.health(99, None).0, 2);
        assert_eq!(l.health(99, None).1, Source::Pushed);
        assert_eq!(l.health(100, None).1, Source::Default);
        assert_eq!(l.limit(100, None).unwrap().limit, 10);
        // A check reading worse than the pushed level wins, and says so.
        let pulled = (1, "check cpu = 95 ≥ 90".to_string());
        assert_eq!(l.health(99, Some(&pulled)), (1, Source::Check, pulled.1.clone()));
        assert_eq!(
            l.limit(99, Some(&pulled)).unwrap().to_string(),
            "throttled: health 1 (check cpu = 95 ≥ 90) → limit 0 of max_running 10"
        );
    }

    #[test]
    fn reasons_say_which_limit_holds() {
        let mut l = limits(Some(10), None);
        l.running = 10;
        assert_eq!(l.limit(0, None).unwrap().to_string(), "capped: 10 running of max_running 10");
        let mut l = limits(Some(10), Some(2));
        l.running = 5;
        assert_eq!(l.limit(0, None).unwrap().to_string(), "throttled: health 2 (pushed) → limit 5 of max_running 10");
    }

    #[test]
    fn coefficients_are_checked() {
        assert!(Coefficients::try_from(vec![0.0, 0.0, 0.5, 0.75, 1.0]).is_ok());
        assert!(Coefficients::try_from(vec![0.0, 0.5]).is_err());
        assert!(Coefficients::try_from(vec![0.0, 0.0, 0.5, 1.5, 1.0]).is_err());
        assert!(Coefficients::try_from(vec![1.0, 0.0, 0.5, 0.75, 1.0]).is_err());
        let c: Coefficients = serde_json::from_str("[0, 0.25, 0.5, 0.75, 1]").unwrap();
        assert_eq!(c.at(1), 0.25);
    }
}

//! Pulled health, as sosw's EcologyManager does it: a pool's `health_checks` each read
//! a number (a URL that returns one; a CloudWatch metric where a probe for it is
//! wired), map it to a level 0–4 through `feelings` thresholds and a `comparison`, and
//! the worst level of the checks and the pushed report wins (`admission.rs`).
//!
//! A check is read at most once per `period` per process and the reading cached
//! (`Lineup::pulled_health`). A check that cannot be read counts as its `on_error`
//! level, 4 by default: fail open. A monitoring outage then does not stop a pool's
//! work, which is what an operator wants more often than not; a check that guards a
//! resource that must not be overloaded sets `on_error` lower, and the reading shows
//! the error either way.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::admission::HEALTHY;
use crate::error::{Error, Result};
use crate::model::Millis;

/// At most this many checks per pool.
pub const MAX_CHECKS: usize = 10;

/// How a value is compared with a level's threshold: the level applies when
/// `value <op> threshold`. sosw's CloudWatch-style names are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">=", alias = "GreaterThanOrEqualToThreshold")]
    Ge,
    #[serde(rename = ">", alias = "GreaterThanThreshold")]
    Gt,
    #[serde(rename = "<=", alias = "LessThanOrEqualToThreshold")]
    Le,
    #[serde(rename = "<", alias = "LessThanThreshold")]
    Lt,
}

impl Comparison {
    fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Ge => value >= threshold,
            Comparison::Gt => value > threshold,
            Comparison::Le => value <= threshold,
            Comparison::Lt => value < threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Ge => "≥",
            Comparison::Gt => ">",
            Comparison::Le => "≤",
            Comparison::Lt => "<",
        }
    }
}

/// A CloudWatch metric: the latest datapoint of `statistic` over `period` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
    /// Average, Maximum, Minimum, Sum or SampleCount.
    #[serde(default = "average")]
    pub statistic: String,
}

fn average() -> String {
    "Average".into()
}

fn sixty() -> u64 {
    60
}

fn healthy() -> u8 {
    HEALTHY
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// An http(s) URL whose body is a number (or JSON `{"value": n}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seconds between two reads (and the metric's period).
    #[serde(default = "sixty")]
    pub period: u64,
    /// Level (0–3) → threshold: the lowest level whose threshold the value meets wins;
    /// none met → 4.
    pub feelings: BTreeMap<u8, f64>,
    pub comparison: Comparison,
    #[serde(default = "healthy")]
    pub on_error: u8,
}

impl HealthCheck {
    /// Checks everything a caller can get wrong, with a message naming the check.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("invalid_health_check", m));
        let n = &self.name;
        if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return bad(format!("check name must be 1-64 letters, digits, '-' or '_', got {n:?}"));
        }
        match (&self.metric, &self.url) {
            (Some(_), None) => {}
            (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
            (None, Some(u)) => return bad(format!("check {n}: url must be http:// or https://, got {u:?}")),
            _ => return bad(format!("check {n}: give exactly one of \"metric\" and \"url\"")),
        }
        if let Some(m) = &self.metric {
            if !["Average", "Maximum", "Minimum", "Sum", "SampleCount"].contains(&m.statistic.as_str()) {
                return bad(format!("check {n}: unknown statistic {:?}", m.statistic));
            }
            if m.namespace.is_empty() || m.name.is_empty() {
                return bad(format!("check {n}: metric needs a namespace and a name"));
            }
        }
        if !(1..=86_400).contains(&self.period) {
            return bad(format!("check {n}: period must be 1 to 86400 seconds"));
        }
        if self.feelings.is_empty() || self.feelings.keys().any(|l| *l >= HEALTHY) {
            return bad(format!("check {n}: feelings map levels 0-3 to thresholds, at least one"));
        }
        if self.feelings.values().any(|t| !t.is_finite()) {
            return bad(format!("check {n}: thresholds must be numbers"));
        }
        if self.on_error > HEALTHY {
            return bad(format!("check {n}: on_error must be a level 0-4"));
        }
        Ok(())
    }

    /// The level `value` means: the lowest level whose threshold it meets, else 4.
    pub fn level(&self, value: f64) -> (u8, Option<f64>) {
        for (level, threshold) in &self.feelings {
            if self.comparison.holds(value, *threshold) {
                return (*level, Some(*threshold));
            }
        }
        (HEALTHY, None)
    }
}

/// Reads a check's current value.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// `Err` when it cannot: unreachable, not a number, or a kind of check this probe
    /// does not read.
    async fn read(&self, check: &HealthCheck) -> Result<f64>;
}

/// A check's last reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub name: String,
    pub value: Option<f64>,
    pub error: Option<String>,
    pub level: u8,
    /// The threshold the value met, if any.
    #[serde(skip)]
    pub threshold: Option<f64>,
    #[serde(skip)]
    pub comparison: Option<Comparison>,
    pub read_at: Millis,
}

impl fmt::Display for Reading {
    /// "check rds-cpu = 71 ≥ 70", or "check rds-cpu unreadable".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.value, self.threshold, self.comparison) {
            (Some(v), Some(t), Some(c)) => write!(f, "check {} = {v} {} {t}", self.name, c.symbol()),
            (Some(v), _, _) => write!(f, "check {} = {v}", self.name),
            (None, _, _) => write!(f, "check {} unreadable", self.name),
        }
    }
}

impl Reading {
    pub fn of(check: &HealthCheck, read: Result<f64>, now: Millis) -> Reading {
        match read {
            Ok(v) => {
                let (level, threshold) = check.level(v);
                Reading {
                    name: check.name.clone(),
                    value: Some(v),
                    error: None,
                    level,
                    threshold,
                    comparison: Some(check.comparison),
                    read_at: now,
                }
            }
            Err(e) => Reading {
                name: check.name.clone(),
                value: None,
                error: Some(e.to_string()),
                level: check.on_error,
                threshold: None,
                comparison: None,
                read_at: now,
            },
        }
    }
}

/// The worst of `readings`: its level and why, if below healthy.
pub fn worst(readings: &[Reading]) -> Option<(u8, String)> {
    readings.iter().filter(|r| r.level < HEALTHY).min_by_key(|r| r.level).map(|r| (r.level, r.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: serde_json::Value) -> Result<HealthCheck> {
        let c: HealthCheck =
            serde_json::from_value(json).map_err(|e| Error::invalid("invalid_health_check", e.to_string()))?;
        c.validate().map(|()| c)
    }

    #[test]
    fn levels_follow_the_feelings() {
        let c = check(serde_json::json!({
            "name": "rds-cpu", "url": "http://127.0.0.1:9/cpu",
            "feelings": {"1": 90, "2": 70, "3": 50}, "comparison": ">="
        }))
        .unwrap();
        assert_eq!(c.level(95.0).0, 1);
        assert_eq!(c.level(71.0), (2, Some(70.0)));
        assert_eq!(c.level(50.0).0, 3);
        assert_eq!(c.level(10.0), (HEALTHY, None));
        let r = Reading::of(&c, Ok(71.0), 0);
        assert_eq!(r.to_string(), "check rds-cpu = 71 ≥ 70");
        let e = Reading::of(&c, Err(Error::Backend("down".into())), 0);
        assert_eq!((e.level, e.value), (HEALTHY, None), "fails open by default");
        assert_eq!(worst(&[r.clone(), e]), Some((2, "check rds-cpu = 71 ≥ 70".into())));
    }

    #[test]
    fn sosw_names_and_lower_is_worse() {
        let c = check(serde_json::json!({
            "name": "free-mem", "metric": {"namespace": "AWS/RDS", "name": "FreeableMemory"},
            "feelings": {"0": 100, "2": 500}, "comparison": "LessThanThreshold", "on_error": 2
        }))
        .unwrap();
        assert_eq!(c.level(50.0).0, 0);
        assert_eq!(c.level(300.0).0, 2);
        assert_eq!(c.level(900.0).0, HEALTHY);
        assert_eq!(Reading::of(&c, Err(Error::Backend("x".into())), 0).level, 2);
    }

    #[test]
    fn bad_checks_are_named() {
        for (json, says) in [
            (serde_json::json!({"name": "a", "feelings": {"1": 1}, "comparison": ">="}), "exactly one"),
            (
                serde_json::json!({"name": "a", "url": "file:///etc/passwd", "feelings": {"1": 1}, "comparison": ">="}),
                "http",
            ),
            (serde_json::json!({"name": "a b", "url": "http://x", "feelings": {"1": 1}, "comparison": ">="}), "name"),
            (
                serde_json::json!({"name": "a", "url": "http://x", "feelings": {"4": 1}, "comparison": ">="}),
                "levels 0-3",
            ),
            (
                serde_json::json!({"name": "a", "url": "http://x", "feelings": {"1": 1}, "comparison": "=="}),
                "unknown variant",
            ),
            (
                serde_json::json!({"name": "a", "url": "http://x", "feelings": {"1": 1}, "comparison": ">=", "period": 0}),
                "period",
            ),
        ] {
            let e = check(json).unwrap_err().to_string();
            assert!(e.contains(says), "{e} should say {says}");
        }
    }
}

//! Health checks that read a CloudWatch metric: the latest datapoint of the check's
//! statistic over its period (`GetMetricStatistics`), as sosw's EcologyManager reads
//! an RDS instance's `CPUUtilization`.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Datapoint, Dimension, Statistic};
use lineup_core::health::{HealthCheck, Probe};
use lineup_core::{Error, Result};

use crate::sdk_err;

#[derive(Clone)]
pub struct CloudWatchProbe {
    pub(crate) cw: aws_sdk_cloudwatch::Client,
}

fn value_of(d: &Datapoint, s: &Statistic) -> Option<f64> {
    match s {
        Statistic::Average => d.average,
        Statistic::Maximum => d.maximum,
        Statistic::Minimum => d.minimum,
        Statistic::Sum => d.sum,
        Statistic::SampleCount => d.sample_count,
        _ => None,
    }
}

#[async_trait]
impl Probe for CloudWatchProbe {
    async fn read(&self, check: &HealthCheck) -> Result<f64> {
        let Some(m) = &check.metric else {
            return Err(Error::Backend("URL checks are not read by the CloudWatch probe".into()));
        };
        // Standard-resolution metrics have datapoints per minute at best.
        let period = check.period.max(60);
        let now = SystemTime::now();
        // Three periods back: the latest one may not be published yet. The end a minute
        // ahead: times go over the wire in whole seconds, and a datapoint from this very
        // second must not fall after a truncated `now`.
        let start = now - Duration::from_secs(period * 3);
        let end = now + Duration::from_secs(60);
        let stat = Statistic::from(m.statistic.as_str());
        let dims: Vec<Dimension> =
            m.dimensions.iter().map(|(k, v)| Dimension::builder().name(k).value(v).build()).collect();
        let out = self
            .cw
            .get_metric_statistics()
            .namespace(&m.namespace)
            .metric_name(&m.name)
            .set_dimensions(Some(dims))
            .start_time(DateTime::from(start))
            .end_time(DateTime::from(end))
            .period(i32::try_from(period).unwrap_or(i32::MAX))
            .statistics(stat.clone())
            .send()
            .await
            .map_err(|e| sdk_err("read the metric", e))?;
        let mut points = out.datapoints.unwrap_or_default();
        points.sort_by_key(|d| d.timestamp.map(|t| (t.secs(), t.subsec_nanos())));
        points.last().and_then(|d| value_of(d, &stat)).ok_or_else(|| {
            Error::Backend(format!("no datapoints of {}/{} in the last {} s", m.namespace, m.name, period * 3))
        })
    }
}

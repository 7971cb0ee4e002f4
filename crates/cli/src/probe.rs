//! `lineup dev` reads URL health checks over HTTP (the body is a number, or JSON
//! `{"value": n}`) and, on the AWS backend, metric checks from CloudWatch. On the
//! embedded backend a metric check reads as unreadable (its `on_error` level).

use std::time::Duration;

use async_trait::async_trait;
use lineup_core::health::{HealthCheck, Probe};
use lineup_core::{Error, Result};

/// A check's URL must answer within this long.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Bodies longer than this are not a number.
const MAX_BODY: usize = 4096;

pub struct HttpProbe {
    http: reqwest::Client,
}

impl HttpProbe {
    pub fn new() -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::backend("build the health probe's client", e))?;
        Ok(HttpProbe { http })
    }
}

#[async_trait]
impl Probe for HttpProbe {
    async fn read(&self, check: &HealthCheck) -> Result<f64> {
        let Some(url) = &check.url else {
            return Err(Error::Backend("not a URL check".into()));
        };
        let r = self.http.get(url).send().await.map_err(|e| Error::backend("health check request", e.without_url()))?;
        if !r.status().is_success() {
            return Err(Error::Backend(format!("health check answered {}", r.status())));
        }
        // Read chunk by chunk and stop past the limit: a check pointed at something
        // that streams (or is huge) must not hold the process's memory.
        let too_long = || Error::Backend("health check body is not a number (too long)".into());
        if r.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_long());
        }
        let mut r = r;
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| Error::backend("health check body", e.without_url()))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(too_long());
            }
        }
        parse(&String::from_utf8_lossy(&body))
    }
}

fn parse(body: &str) -> Result<f64> {
    let body = body.trim();
    let n = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Number(n)) => n.as_f64(),
        Ok(serde_json::Value::Object(o)) => o.get("value").and_then(|v| v.as_f64()),
        _ => body.parse::<f64>().ok(),
    };
    n.filter(|n| n.is_finite()).ok_or_else(|| Error::Backend("health check body is not a number".into()))
}

/// URL checks over HTTP, metric checks through CloudWatch where there is one.
pub struct Probes {
    pub http: HttpProbe,
    pub metrics: Option<lineup_aws::CloudWatchProbe>,
}

#[async_trait]
impl Probe for Probes {
    async fn read(&self, check: &HealthCheck) -> Result<f64> {
        match (&check.metric, &self.metrics) {
            (Some(_), Some(cw)) => cw.read(check).await,
            (Some(_), None) => Err(Error::Backend("metric checks are read on the AWS backend only".into())),
            (None, _) => self.http.read(check).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies() {
        assert_eq!(super::parse("71\n").unwrap(), 71.0);
        assert_eq!(super::parse(r#"{"value": 0.5}"#).unwrap(), 0.5);
        assert!(super::parse("<html>").is_err());
        assert!(super::parse("NaN").is_err());
    }

    /// A check pointed at an endless stream errs once past the limit, not never.
    #[tokio::test]
    async fn an_endless_body_is_cut_short() {
        use lineup_core::health::Probe;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let endless = futures_util::stream::repeat_with(|| {
                Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'7'; 1024]))
            });
            let app = axum::Router::new()
                .route("/", axum::routing::get(move || async move { axum::body::Body::from_stream(endless) }));
            axum::serve(listener, app).await.unwrap();
        });
        let check: lineup_core::health::HealthCheck = serde_json::from_value(
            serde_json::json!({"name": "x", "url": url, "feelings": {"0": 1.0}, "comparison": "<="}),
        )
        .unwrap();
        let got =
            tokio::time::timeout(std::time::Duration::from_secs(10), super::HttpProbe::new().unwrap().read(&check))
                .await
                .expect("the read ended");
        assert!(got.unwrap_err().to_string().contains("too long"));
    }
}

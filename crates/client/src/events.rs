//! The event stream (`GET /v1/events`), read with `eventsource-stream`.

use eventsource_stream::Eventsource;
use futures_util::stream::{Stream, StreamExt};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{api_error, Client, ClientError, Result};

/// One state change, as the server sends it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct EventView {
    pub index: u64,
    /// ms since the epoch.
    pub at: i64,
    /// eval, alloc, worker or pool.
    #[serde(rename = "type")]
    pub topic: String,
    pub pool_id: String,
    pub id: String,
    pub state: String,
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub worker_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Event(EventView),
    /// The history did not reach back to where the reader asked to resume; it goes on
    /// after `resumed_from`.
    Lost {
        resumed_from: u64,
        message: String,
    },
}

impl Client {
    /// Events after `after` (all new ones when `None`) of `pool` and `types` (comma
    /// separated; all when `None`). The stream ends when the server closes it; resume
    /// with the last index seen.
    pub async fn events(
        &self,
        pool: Option<&str>,
        types: Option<&str>,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<StreamItem>> + Unpin + use<>> {
        let url = format!("{}/v1/events", self.endpoint);
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(p) = pool {
            q.push(("pool", p));
        }
        if let Some(t) = types {
            q.push(("types", t));
        }
        let mut req = self.http.request(Method::GET, &url).bearer_auth(&self.token).query(&q);
        if let Some(i) = after {
            req = req.header("Last-Event-ID", i.to_string());
        }
        let resp = req.send().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
            return Err(api_error(status, &bytes));
        }
        let stream = resp.bytes_stream().eventsource().map(move |item| {
            let ev = item.map_err(|e| ClientError::Decode { url: url.clone(), message: e.to_string() })?;
            let bad = |e: serde_json::Error| ClientError::Decode { url: url.clone(), message: e.to_string() };
            if ev.event == "lost" {
                let v: serde_json::Value = serde_json::from_str(&ev.data).map_err(bad)?;
                return Ok(StreamItem::Lost {
                    resumed_from: v["resumed_from"].as_u64().unwrap_or_default(),
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            Ok(StreamItem::Event(serde_json::from_str(&ev.data).map_err(bad)?))
        });
        Ok(Box::pin(stream))
    }
}

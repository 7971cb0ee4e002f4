//! A worker reading its own queue straight from SQS (`lineup worker run --sqs`), as the
//! Go original's client did: no gateway call per poll, no Lambda time.

use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use lineup_core::{Error, Result};

use crate::sdk_err;

pub struct DirectQueue {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl DirectQueue {
    /// `endpoint`: an emulator's URL; `None` for real AWS from the usual chain.
    pub async fn connect(queue_url: &str, endpoint: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(ep) = endpoint {
            loader = loader.endpoint_url(ep);
        }
        let conf = loader.load().await;
        DirectQueue { sqs: aws_sdk_sqs::Client::new(&conf), url: queue_url.to_owned() }
    }

    /// Long-polls for up to `max` messages and deletes what it got: if the worker dies
    /// before running one, its alloc's TTL runs out and the eval is retried.
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<String>> {
        let r = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().clamp(1, 20) as i32)
            .send()
            .await
            .map_err(|e| {
                if aws_sdk_sqs::error::ProvideErrorMetadata::code(&e)
                    .is_some_and(|c| c.contains("NonExistentQueue") || c == "QueueDoesNotExist")
                {
                    Error::QueueGone(self.url.clone())
                } else {
                    sdk_err("receive", e)
                }
            })?;
        let msgs = r.messages.unwrap_or_default();
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        let mut bodies = Vec::new();
        for (i, m) in msgs.into_iter().enumerate() {
            if let Some(h) = m.receipt_handle {
                entries.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .build()
                        .map_err(|e| sdk_err("build delete entry", e))?,
                );
            }
            bodies.extend(m.body);
        }
        self.sqs
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_err("delete", e))?;
        Ok(bodies)
    }
}

//! `Queues` over SQS. Sends, deletes and visibility changes go in batches of 10; a
//! queue's URL is derived from the prefix SQS showed us once, so no call resolves it.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use lineup_core::{Error, Queues, Received, Result};

use crate::{sdk_err, AwsBackend};

/// 14 days, SQS's longest: a blocked eval may wait that long in its queue.
const RETENTION_SECS: &str = "1209600";
/// Keep each batch under SQS's request size limit.
const MAX_BATCH_BYTES: usize = 200 * 1024;

fn gone<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(e.code(), Some(c) if c.contains("NonExistentQueue") || c == "QueueDoesNotExist")
}

fn map_err<E>(name: &str, context: &str, e: aws_sdk_sqs::error::SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if gone(&e) {
        Error::QueueGone(name.to_owned())
    } else {
        sdk_err(format!("{context} {name}"), e)
    }
}

/// Whole seconds, rounded up: SQS counts waits and timeouts in seconds, and rounding a
/// 300 ms long poll down to 0 would make it a short poll that spins.
fn secs_up(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(43_200) as i32
}

impl AwsBackend {
    /// One `ReceiveMessage` of at most 10.
    async fn receive_once(
        &self,
        name: &str,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>> {
        let r = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(secs_up(wait).min(20))
            .visibility_timeout(secs_up(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| map_err(name, "receive from", e))?;
        Ok(r.messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Some(Received { receipt: m.receipt_handle?, body: m.body.unwrap_or_default(), receive_count: count })
            })
            .collect())
    }

    fn learn_prefix(&self, name: &str, url: &str) {
        if let Some(prefix) = url.strip_suffix(name) {
            let mut p = self.queue_prefix.write().unwrap_or_else(|e| e.into_inner());
            if p.is_none() {
                *p = Some(prefix.to_owned());
            }
        }
    }

    async fn url(&self, name: &str) -> Result<String> {
        if let Some(prefix) = self.queue_prefix.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(format!("{prefix}{name}"));
        }
        let r =
            self.sqs.get_queue_url().queue_name(name).send().await.map_err(|e| map_err(name, "get queue url", e))?;
        let url = r.queue_url.ok_or_else(|| Error::Backend(format!("no url for queue {name}")))?;
        self.learn_prefix(name, &url);
        Ok(url)
    }
}

#[async_trait]
impl Queues for AwsBackend {
    async fn create_queue(&self, name: &str) -> Result<String> {
        let r = self
            .sqs
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS)
            .attributes(QueueAttributeName::VisibilityTimeout, "30")
            .send()
            .await
            .map_err(|e| sdk_err(format!("create queue {name}"), e))?;
        let url = r.queue_url.ok_or_else(|| Error::Backend(format!("no url for queue {name}")))?;
        self.learn_prefix(name, &url);
        Ok(url)
    }

    async fn depth(&self, name: &str) -> Result<Option<u64>> {
        let url = self.url(name).await?;
        let attrs = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        let r = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(attrs.to_vec()))
            .send()
            .await
            .map_err(|e| map_err(name, "queue depth", e))?;
        let total = attrs
            .iter()
            .filter_map(|a| r.attributes().and_then(|m| m.get(a)).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        Ok(Some(total))
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        let url = match self.url(name).await {
            Ok(u) => u,
            Err(Error::QueueGone(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.sqs.delete_queue().queue_url(url).send().await {
            Ok(_) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(sdk_err(format!("delete queue {name}"), e)),
        }
    }

    async fn send(&self, name: &str, bodies: &[String]) -> Result<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        let url = self.url(name).await?;
        let mut start = 0;
        while start < bodies.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < bodies.len()
                && end - start < 10
                && (end == start || bytes + bodies[end].len() <= MAX_BATCH_BYTES)
            {
                bytes += bodies[end].len();
                end += 1;
            }
            let mut pending: Vec<(String, &String)> = (start..end).map(|i| (i.to_string(), &bodies[i])).collect();
            for attempt in 0..5u32 {
                let entries = pending
                    .iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(body.as_str())
                            .build()
                            .map_err(|e| sdk_err("build send entry", e))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let r = self
                    .sqs
                    .send_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| map_err(name, "send to", e))?;
                let failed: Vec<String> = r.failed.iter().map(|f| f.id.clone()).collect();
                if failed.is_empty() {
                    break;
                }
                pending.retain(|(id, _)| failed.contains(id));
                if attempt == 4 {
                    return Err(Error::Backend(format!("send to {name}: {} messages failed", pending.len())));
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            start = end;
        }
        Ok(())
    }

    /// SQS hands out at most 10 messages a receive: a larger `max` takes several, the
    /// first waiting up to `wait`, each next one only after a full one (a deep queue),
    /// without waiting. So a scheduler pass over a deep queue plans, claims and
    /// delivers a hundred evals at a time, and an idle queue still costs one long poll.
    async fn receive(&self, name: &str, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Received>> {
        let url = self.url(name).await?;
        let mut out = self.receive_once(name, &url, max.min(10), wait, visibility).await?;
        while out.len() < max && out.len() % 10 == 0 && !out.is_empty() {
            let more = self.receive_once(name, &url, (max - out.len()).min(10), Duration::ZERO, visibility).await?;
            let full = more.len() == 10;
            out.extend(more);
            if !full {
                break;
            }
        }
        Ok(out)
    }

    async fn delete(&self, name: &str, receipts: &[String]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let url = self.url(name).await?;
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| sdk_err("build delete entry", e))
                })
                .collect::<Result<Vec<_>>>()?;
            // Failed entries are stale receipts: the message was received again elsewhere.
            self.sqs
                .delete_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| map_err(name, "delete from", e))?;
        }
        Ok(())
    }

    async fn change_visibility(&self, name: &str, changes: &[(String, Duration)], _parked: bool) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let url = self.url(name).await?;
        for chunk in changes.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (r, hide))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(secs_up(*hide))
                        .build()
                        .map_err(|e| sdk_err("build visibility entry", e))
                })
                .collect::<Result<Vec<_>>>()?;
            self.sqs
                .change_message_visibility_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| map_err(name, "change visibility in", e))?;
        }
        Ok(())
    }
}

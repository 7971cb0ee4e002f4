//! DynamoDB requests as the backend makes them: strongly consistent reads, queries that
//! paginate, batches whose unprocessed part is retried, and transactions retried while
//! DynamoDB cancels them for transient reasons alone (conflicts, throttling); a
//! cancellation is read item by item (`TxError`).

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{DeleteRequest, KeysAndAttributes, Select, TransactWriteItem, WriteRequest};
use lineup_core::*;

use crate::items::Item;
use crate::{sdk_err, AwsBackend};

/// What a cancelled transaction says, item by item: `Some("ConditionalCheckFailed")`, …
pub(crate) enum TxError {
    Cancelled(Vec<Option<String>>),
    Other(Error),
}

impl TxError {
    pub(crate) fn failed(reasons: &[Option<String>], i: usize) -> bool {
        reasons.get(i).and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed")
    }

    /// Cancelled for conflicts or throttling only: nothing was wrong with the request.
    pub(crate) fn transient(reasons: &[Option<String>]) -> bool {
        reasons.iter().any(|r| r.as_deref().is_some_and(crate::retry::transient_reason))
            && reasons.iter().all(|r| r.as_deref().is_none_or(|r| r == "None" || crate::retry::transient_reason(r)))
    }
}

pub(crate) fn names(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
}

pub(crate) fn build<T, E: std::error::Error>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| sdk_err("build request", e))
}

pub(crate) fn ccf<E, R: std::fmt::Debug>(e: &SdkError<E, R>) -> bool
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
{
    e.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException")
}

impl AwsBackend {
    pub(crate) async fn get(&self, table: &str, key: Item) -> Result<Option<Item>> {
        let r = self
            .ddb
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err(format!("get from {table}"), e))?;
        Ok(r.item)
    }

    /// Every page of a query.
    pub(crate) async fn query_all(&self, q: QueryFluentBuilder, context: &str) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let r = q.clone().set_exclusive_start_key(start).send().await.map_err(|e| sdk_err(context, e))?;
            out.extend(r.items.unwrap_or_default());
            match r.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// Pages until `limit` items.
    pub(crate) async fn query_limit(&self, q: QueryFluentBuilder, limit: usize, context: &str) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = (limit - out.len()).min(1000) as i32;
            let r =
                q.clone().limit(page).set_exclusive_start_key(start).send().await.map_err(|e| sdk_err(context, e))?;
            out.extend(r.items.unwrap_or_default());
            match r.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => {
                    out.truncate(limit);
                    return Ok(out);
                }
            }
        }
    }

    pub(crate) async fn count_all(&self, q: QueryFluentBuilder, context: &str) -> Result<u64> {
        let q = q.select(Select::Count);
        let mut total = 0u64;
        let mut start = None;
        loop {
            let r = q.clone().set_exclusive_start_key(start).send().await.map_err(|e| sdk_err(context, e))?;
            total += r.count.max(0) as u64;
            match r.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(total),
            }
        }
    }

    /// Strongly consistent reads of `keys` (distinct: a batch may not name one twice),
    /// 100 to a `BatchGetItem`, unprocessed keys retried with a backoff. Missing items
    /// are simply not in the answer.
    pub(crate) async fn batch_get(&self, table: &str, keys: Vec<Item>) -> Result<Vec<Item>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut req = HashMap::from([(
                table.to_owned(),
                build(KeysAndAttributes::builder().set_keys(Some(chunk.to_vec())).consistent_read(true).build())?,
            )]);
            for attempt in 0..8u32 {
                let r = self
                    .ddb
                    .batch_get_item()
                    .set_request_items(Some(req))
                    .send()
                    .await
                    .map_err(|e| sdk_err(format!("batch get from {table}"), e))?;
                out.extend(r.responses.unwrap_or_default().remove(table).unwrap_or_default());
                match r.unprocessed_keys {
                    Some(u) if !u.is_empty() => {
                        req = u;
                        tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
                    }
                    _ => {
                        req = HashMap::new();
                        break;
                    }
                }
            }
            if !req.is_empty() {
                return Err(Error::Backend(format!("batch get from {table}: keys still unprocessed after retries")));
            }
        }
        Ok(out)
    }

    /// Batch writes, 25 per request, retrying what comes back unprocessed.
    pub(crate) async fn batch_write(&self, table: &str, mut reqs: Vec<WriteRequest>) -> Result<()> {
        while !reqs.is_empty() {
            let rest = reqs.split_off(reqs.len().min(25));
            let mut batch = HashMap::from([(table.to_owned(), reqs)]);
            for attempt in 0..8u32 {
                let r = self
                    .ddb
                    .batch_write_item()
                    .set_request_items(Some(batch))
                    .send()
                    .await
                    .map_err(|e| sdk_err(format!("batch write {table}"), e))?;
                match r.unprocessed_items {
                    Some(u) if !u.is_empty() => {
                        batch = u;
                        tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
                    }
                    _ => {
                        batch = HashMap::new();
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                return Err(Error::Backend(format!("batch write {table}: items still unprocessed after retries")));
            }
            reqs = rest;
        }
        Ok(())
    }

    pub(crate) async fn batch_delete(&self, table: &str, keys: Vec<Item>) -> Result<()> {
        let reqs = keys
            .into_iter()
            .map(|k| {
                build(DeleteRequest::builder().set_key(Some(k)).build())
                    .map(|d| WriteRequest::builder().delete_request(d).build())
            })
            .collect::<Result<Vec<_>>>()?;
        self.batch_write(table, reqs).await
    }

    /// One `TransactWriteItems`, retried after a backoff while DynamoDB cancels it for
    /// transient reasons alone: a conflict or throttling (see `retry.rs`). Still
    /// cancelled so after every retry, it is `Other` (a backend error the caller may
    /// retry later), never `Cancelled`: a cancellation is always a condition's answer,
    /// so no caller reads throttling as "the item changed" (a registration answered
    /// "worker id exists", an alloc taken as counted already, did that).
    pub(crate) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        context: &str,
    ) -> std::result::Result<(), TxError> {
        let mut attempt = 0;
        loop {
            let r = self.ddb.transact_write_items().set_transact_items(Some(items.clone())).send().await;
            let reasons = match r {
                Ok(_) => return Ok(()),
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                        c.cancellation_reasons().iter().map(|r| r.code().map(str::to_owned)).collect::<Vec<_>>()
                    }
                    _ => return Err(TxError::Other(sdk_err(context, e))),
                },
            };
            if !TxError::transient(&reasons) {
                return Err(TxError::Cancelled(reasons));
            }
            if attempt + 1 >= crate::retry::CONFLICT_TRIES {
                return Err(TxError::Other(Error::backend(
                    context,
                    format!("throttled or contended past every retry, try again: {reasons:?}"),
                )));
            }
            tokio::time::sleep(crate::retry::backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// A transaction whose cancellation is an answer, not an error: `false`.
    pub(crate) async fn transact_ok(&self, items: Vec<TransactWriteItem>, context: &str) -> Result<bool> {
        match self.transact(items, context).await {
            Ok(()) => Ok(true),
            Err(TxError::Cancelled(_)) => Ok(false),
            Err(TxError::Other(e)) => Err(e),
        }
    }
}

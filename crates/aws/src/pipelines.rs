//! Pipelines in DynamoDB: one item each in the pipelines table (keyed by its own id,
//! `keys.rs`; listed newest first through the `by_created` index's shards), the record
//! as JSON text in `body` beside the attributes a listing filters on; an idempotency
//! key is an item `pipeline = "k#{key}"` naming its pipeline (not indexed), claimed in
//! the same transaction as the pipeline is written. Writes are conditioned on `version`.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use lineup_core::pipeline::{Pipeline, PipelineStatus};
use lineup_core::*;
use serde::{Deserialize, Serialize};

use crate::ddb::{build, names, TxError};
use crate::items::*;
use crate::tables::BY_CREATED;
use crate::{sdk_err, AwsBackend};

#[derive(Serialize, Deserialize)]
struct PipelineItem {
    id: String,
    /// Index partition (`by_created`), spread by pipeline id.
    ps: String,
    pool: PoolId,
    pipeline: PipelineId,
    status: PipelineStatus,
    version: u64,
    created: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ikey: Option<String>,
    body: String,
    /// Once it ended: epoch seconds, the table's TTL attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purge_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct PipelineKeyItem {
    id: String,
    pool: PoolId,
    /// `k#{key}`: never a valid pipeline id.
    pipeline: String,
    target: PipelineId,
    /// The key is remembered for the retention after the submit (as an eval's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purge_at: Option<i64>,
}

fn item_of(p: &Pipeline, shards: u32) -> Result<Item> {
    let body = serde_json::to_string(p).map_err(|e| Error::backend("encode pipeline", e))?;
    to_item(&PipelineItem {
        id: crate::keys::id(&p.pool_id, p.pipeline_id.as_str()),
        ps: crate::keys::ps(&p.pool_id, p.pipeline_id.as_str(), shards),
        pool: p.pool_id.clone(),
        pipeline: p.pipeline_id.clone(),
        status: p.status,
        version: p.version,
        created: p.created_at,
        ikey: p.idempotency_key.clone(),
        body,
        purge_at: p.purge_at.map(|ms| purge_at(ms, 0)),
    })
}

fn pipeline_of(i: Item) -> Result<Pipeline> {
    let item: PipelineItem = from_item(i)?;
    serde_json::from_str(&item.body).map_err(|e| Error::backend("decode pipeline", e))
}

impl AwsBackend {
    pub(crate) async fn insert_pipeline_item(&self, p: &Pipeline) -> Result<Option<Pipeline>> {
        let t = &self.tables.pipelines;
        let shards = self.shards(&p.pool_id).await?;
        let put = build(
            Put::builder()
                .table_name(t)
                .set_item(Some(item_of(p, shards)?))
                .condition_expression("attribute_not_exists(#k)")
                .set_expression_attribute_names(names(&[("#k", "pipeline")]))
                .build(),
        )?;
        let mut items = vec![self.pool_is_active(&p.pool_id)?, TransactWriteItem::builder().put(put).build()];
        if let Some(k) = &p.idempotency_key {
            let claim = PipelineKeyItem {
                id: crate::keys::id(&p.pool_id, &format!("k#{k}")),
                pool: p.pool_id.clone(),
                pipeline: format!("k#{k}"),
                target: p.pipeline_id.clone(),
                purge_at: Some(purge_at(p.created_at, self.retention_secs())),
            };
            let put = build(
                Put::builder()
                    .table_name(t)
                    .set_item(Some(to_item(&claim)?))
                    .condition_expression("attribute_not_exists(#k) OR #pa <= :now")
                    .set_expression_attribute_names(names(&[("#k", "pipeline"), ("#pa", "purge_at")]))
                    .expression_attribute_values(":now", n(p.created_at / 1000))
                    .build(),
            )?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        match self.transact(items, "insert pipeline").await {
            Ok(()) => Ok(None),
            Err(TxError::Cancelled(r)) if TxError::failed(&r, 0) => Err(self.pool_not_active(&p.pool_id).await),
            // Written before, its response lost (the SDK's retry carries the same token,
            // so this is a second client's insert of the same id: not ours to make).
            Err(TxError::Cancelled(r)) if TxError::failed(&r, 1) => {
                match self.get_pipeline_item(&p.pool_id, &p.pipeline_id).await? {
                    Some(existing) => Ok(Some(existing)),
                    None => Err(Error::Conflict("pipeline id taken; try again".into())),
                }
            }
            Err(TxError::Cancelled(r)) if TxError::failed(&r, 2) => {
                let key = p.idempotency_key.as_deref().unwrap_or_default();
                match self.pipeline_by_key(&p.pool_id, key).await? {
                    Some(existing) => Ok(Some(existing)),
                    None => Err(Error::Conflict("idempotency key being claimed; try again".into())),
                }
            }
            Err(TxError::Cancelled(r)) => Err(Error::Conflict(format!("insert pipeline cancelled: {r:?}"))),
            Err(TxError::Other(e)) => Err(e),
        }
    }

    async fn pipeline_by_key(&self, pool: &PoolId, k: &str) -> Result<Option<Pipeline>> {
        let sk = format!("k#{k}");
        let Some(i) = self.get(&self.tables.pipelines, rec_key(pool, &sk)).await? else {
            return Ok(None);
        };
        let claim: PipelineKeyItem = from_item(i)?;
        self.get_pipeline_item(pool, &claim.target).await
    }

    pub(crate) async fn get_pipeline_item(&self, pool: &PoolId, id: &PipelineId) -> Result<Option<Pipeline>> {
        match self.get(&self.tables.pipelines, rec_key(pool, id.as_str())).await? {
            Some(i) => Ok(Some(pipeline_of(i)?)),
            None => Ok(None),
        }
    }

    /// Newest first, each shard's newest merged (key claims are not indexed).
    pub(crate) async fn list_pipeline_items(
        &self,
        pool: &PoolId,
        status: Option<PipelineStatus>,
        limit: usize,
    ) -> Result<Vec<Pipeline>> {
        let st = status.map(|st| to_attr(&st)).transpose()?;
        let q = |k| {
            let q = self
                .index_query(&self.tables.pipelines, BY_CREATED, &crate::keys::shard_key(pool, k))
                .scan_index_forward(false);
            match &st {
                Some(st) => q
                    .filter_expression("#s = :s")
                    .expression_attribute_names("#s", "status")
                    .expression_attribute_values(":s", st.clone()),
                None => q,
            }
        };
        let items = self.query_shards_limit(pool, q, limit, "list pipelines").await?;
        let mut ps = items.into_iter().map(pipeline_of).collect::<Result<Vec<_>>>()?;
        ps.sort_by(|a, b| (b.created_at, &b.pipeline_id).cmp(&(a.created_at, &a.pipeline_id)));
        ps.truncate(limit);
        Ok(ps)
    }

    pub(crate) async fn update_pipeline_item(&self, p: &Pipeline, expected: u64) -> Result<()> {
        let shards = self.shards(&p.pool_id).await?;
        let r = self
            .ddb
            .put_item()
            .table_name(&self.tables.pipelines)
            .set_item(Some(item_of(p, shards)?))
            .condition_expression("#v = :v")
            .set_expression_attribute_names(names(&[("#v", "version")]))
            .expression_attribute_values(":v", n(expected))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if crate::ddb::ccf(&e) => {
                // A retried put whose first response was lost finds its own write.
                match self.get_pipeline_item(&p.pool_id, &p.pipeline_id).await? {
                    Some(now) if now == *p => Ok(()),
                    _ => Err(Error::Conflict("pipeline changed".into())),
                }
            }
            Err(e) => Err(sdk_err("update pipeline", e)),
        }
    }
}

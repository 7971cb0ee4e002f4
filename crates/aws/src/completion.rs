//! A worker's completion, in two plain writes instead of one transaction
//! (`Store::complete_first`): the eval is marked complete by one conditional
//! `UpdateItem` that returns it (so the completion does not read it first), then the
//! alloc is released (`release`, without the eval). A transaction bills each item
//! twice: the alloc, its worker and the eval in one cost 6 write units and a read of
//! the eval; this way 2 + 4, and no read.
//!
//! The order is what keeps it safe: the eval is finished before its capacity comes
//! back, never after. If the release never follows (a crash), the alloc holds its
//! capacity until its lease runs out, and the releaser, finding the eval finished,
//! releases it without touching the eval. Failures, continuations, expiries and
//! pipeline steps (whose retention their pipeline decides) keep the one transaction.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use lineup_core::*;

use crate::ddb::{ccf, names};
use crate::items::*;
use crate::{sdk_err, AwsBackend};

impl AwsBackend {
    pub(crate) async fn complete_eval_first(&self, a: &Alloc, done: &Completion) -> Result<Option<Eval>> {
        let shards = self.shards(&a.pool_id).await?;
        let k = lineup_core::id::bucket(a.eval_id.as_str(), shards);
        let mut set = "#st = :complete, #v = #v + :one, #upd = :at, #pa = :pa, #x = :x, #pst = :pst".to_owned();
        let mut remove = vec!["#r"];
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.tables.evals)
            .set_key(Some(rec_key(&a.pool_id, a.eval_id.as_str())))
            .condition_expression("#st = :placed AND #al = :alloc AND attribute_not_exists(#step)")
            .set_expression_attribute_names(names(&[
                ("#st", "status"),
                ("#v", "version"),
                ("#upd", "updated"),
                ("#pa", "purge_at"),
                ("#x", "exit_code"),
                ("#pst", "pst"),
                ("#r", "reason"),
                ("#out", "output"),
                ("#al", "alloc_id"),
                ("#step", "step"),
            ]))
            .expression_attribute_values(":complete", to_attr(&EvalStatus::Complete)?)
            .expression_attribute_values(":placed", to_attr(&EvalStatus::Placed)?)
            .expression_attribute_values(":alloc", s(a.alloc_id.as_str()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":at", n(done.at))
            .expression_attribute_values(":pa", n(purge_at(done.purge_at, 0)))
            .expression_attribute_values(":x", n(done.exit_code))
            .expression_attribute_values(":pst", s(pst(&a.pool_id, EvalStatus::Complete, k)))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match &done.output {
            Some(out) => {
                set.push_str(", #out = :out");
                req = req.expression_attribute_values(":out", AttributeValue::S(out.clone()));
            }
            None => remove.push("#out"),
        }
        let r = req.update_expression(format!("SET {set} REMOVE {}", remove.join(", "))).send().await;
        match r {
            Ok(out) => Ok(Some(eval_from_item(out.attributes.unwrap_or_default())?)),
            Err(e) if ccf(&e) => {
                let stored = match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item().cloned(),
                    _ => None,
                };
                match stored.map(eval_from_item).transpose()? {
                    // Completed on this alloc before: this completion retried (its first
                    // response lost, or its release not reached). It stands as written.
                    Some(e) if e.status == EvalStatus::Complete && e.alloc_id.as_ref() == Some(&a.alloc_id) => {
                        Ok(Some(e))
                    }
                    // Not placed on this alloc (moved on, cancelled, failed), or a step.
                    _ => Ok(None),
                }
            }
            Err(e) => Err(sdk_err("complete eval", e)),
        }
    }
}

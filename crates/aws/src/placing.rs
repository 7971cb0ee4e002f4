//! Placements as transactions: one placement alone (`place_alone`), and a scheduler's
//! batch in as few `TransactWriteItems` as DynamoDB allows (`place_batched`), so that a
//! pass of ten placements is one call, not ten.
//!
//! A batch transaction holds, per worker, one claim for the sum of its placements'
//! sizes (a transaction may touch an item once), and per placement its alloc put and
//! its eval put; a capped pool's count moves once, by the number of placements. The
//! store's contract is per placement (`Store::place_many`: each atomic alone, in
//! order), so a cancellation is read item by item: a placement whose eval or alloc
//! condition failed is a `Conflict` and leaves the batch, which is tried again without
//! it; a worker whose claim failed has its placements tried one by one, in order (the
//! first ones may fit where all of them did not); a failed pool count sends the whole
//! batch one by one. Throttled or contended past every retry (`transact`), every
//! placement of the batch fails with a backend error and the scheduler defers them.
//!
//! Each placement's alloc and eval cost what they would alone (2 write units per item
//! in a transaction); what falls is the number of calls, and the claims: a worker's
//! placements in one transaction share one (`chunks` keeps them together).

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use lineup_core::backend::Claim;
use lineup_core::*;

use crate::ddb::{build, names, TxError};
use crate::items::*;
use crate::AwsBackend;

/// Placements per transaction: 2 items each plus one claim per worker and a pool
/// count stay within DynamoDB's 100 items.
const PER_TX: usize = 32;
/// The items of one transaction may total 4 MB; a batch is cut well below it (an
/// eval item is about its payload plus 1 KB).
const TX_BYTES: usize = 3 << 20;

/// What the `i`th item of a batch transaction is, to read its cancellation reason.
#[derive(Clone, Copy)]
enum Part {
    /// The claim on a worker, for the placements on it.
    Worker(usize),
    /// Placement `i`'s alloc or eval put.
    Own(usize),
    /// The capped pool's count.
    Pool,
}

impl AwsBackend {
    /// The worker side of a claim of `size`: enough free, lease not run out, and the
    /// `lv` fence (a claim made against limits older than the worker has seen loses;
    /// see `set_max_running` in limits.rs).
    fn claim_worker(&self, a: &Alloc, size: u32, now: Millis, claim: Claim) -> Result<TransactWriteItem> {
        let u = build(
            Update::builder()
                .table_name(&self.tables.workers)
                .set_key(Some(rec_key(&a.pool_id, a.worker_id.as_str())))
                .update_expression("SET #c = #c - :size")
                .condition_expression("#c >= :size AND #t > :now AND (attribute_not_exists(#lv) OR #lv <= :lv)")
                .set_expression_attribute_names(names(&[("#c", "cap"), ("#t", "ttl"), ("#lv", "lv")]))
                .expression_attribute_values(":size", n(size))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":lv", n(claim.version))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().update(u).build())
    }

    fn put_alloc(&self, a: &Alloc, shards: u32) -> Result<TransactWriteItem> {
        let put = build(
            Put::builder()
                .table_name(&self.tables.allocs)
                .set_item(Some(to_item(&AllocItem::new(a, shards))?))
                .condition_expression("attribute_not_exists(#a)")
                .expression_attribute_names("#a", "alloc")
                .build(),
        )?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// One placement, one transaction: the claim, the alloc, the eval (and a capped
    /// pool's count).
    pub(crate) async fn place_alone(
        &self,
        a: &Alloc,
        e: &Eval,
        expected: u64,
        claim: Claim,
        now: Millis,
    ) -> Result<()> {
        let shards = self.shards(&a.pool_id).await?;
        let mut items = vec![
            self.claim_worker(a, a.size, now, claim)?,
            self.put_alloc(a, shards)?,
            self.put_eval(e, Some(expected), shards)?,
        ];
        // Only a capped pool's placements touch the pool item: an uncapped hot pool
        // does not pay for a counter it does not need.
        if let Some(limit) = claim.limit {
            items.push(self.count_in_pool(&a.pool_id, claim.version, limit, 1)?);
        }
        match self.transact(items, "place").await {
            Ok(()) => Ok(()),
            Err(TxError::Cancelled(r)) => Err(Error::Conflict(
                if TxError::failed(&r, 0) {
                    "worker has not enough free capacity, is not live, or has seen newer pool limits"
                } else if TxError::failed(&r, 1) {
                    "alloc id exists"
                } else if TxError::failed(&r, 2) {
                    "eval changed"
                } else if TxError::failed(&r, 3) {
                    "the pool's running limit is reached or its limits changed"
                } else {
                    "transaction cancelled"
                }
                .into(),
            )),
            Err(TxError::Other(e)) => Err(e),
        }
    }

    /// `Store::place_many` in batch transactions (see the module doc).
    pub(crate) async fn place_batched(
        &self,
        items: &[(Alloc, Eval, u64)],
        claim: Claim,
        now: Millis,
    ) -> Result<Vec<Result<()>>> {
        let mut out: Vec<Option<Result<()>>> = items.iter().map(|_| None).collect();
        let Some((first, _, _)) = items.first() else { return Ok(Vec::new()) };
        let shards = self.shards(&first.pool_id).await?;
        for chunk in chunks(items, claim) {
            let mut pending = chunk;
            let mut alone: Vec<usize> = Vec::new();
            while pending.len() > 1 {
                let (tx, parts) = self.batch_tx(items, &pending, claim, now, shards)?;
                let reasons = match self.transact(tx, "place batch").await {
                    Ok(()) => {
                        for i in pending.drain(..) {
                            out[i] = Some(Ok(()));
                        }
                        break;
                    }
                    Err(TxError::Cancelled(r)) => r,
                    Err(TxError::Other(e)) => {
                        // Throttled past every retry, or unknown whether it applied (a
                        // lost response past every retry): each reports the failure,
                        // and the scheduler defers them.
                        let why = e.to_string();
                        for i in pending.drain(..) {
                            out[i] = Some(Err(Error::backend("place batch", &why)));
                        }
                        break;
                    }
                };
                let mut lost_workers = HashSet::new();
                let mut whole = true;
                for (j, part) in parts.iter().enumerate() {
                    if !TxError::failed(&reasons, j) {
                        continue;
                    }
                    match *part {
                        Part::Own(i) => {
                            whole = false;
                            out[i] = Some(Err(Error::Conflict("alloc id exists or eval changed".into())));
                        }
                        Part::Worker(i) => {
                            whole = false;
                            lost_workers.insert(items[i].0.worker_id.clone());
                        }
                        Part::Pool => {}
                    }
                }
                if whole {
                    alone.append(&mut pending);
                    break;
                }
                pending.retain(|&i| out[i].is_none());
                let (lost, rest): (Vec<usize>, Vec<usize>) =
                    pending.iter().partition(|&&i| lost_workers.contains(&items[i].0.worker_id));
                alone.extend(lost);
                pending = rest;
            }
            alone.extend(pending);
            alone.sort_unstable();
            for i in alone {
                let (a, e, v) = &items[i];
                out[i] = Some(self.place_alone(a, e, *v, claim, now).await);
            }
        }
        Ok(out.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::Conflict("not placed".into())))).collect())
    }

    /// One transaction for the placements `which` (indices into `items`), and what
    /// each of its items is.
    fn batch_tx(
        &self,
        items: &[(Alloc, Eval, u64)],
        which: &[usize],
        claim: Claim,
        now: Millis,
        shards: u32,
    ) -> Result<(Vec<TransactWriteItem>, Vec<Part>)> {
        let mut by_worker: BTreeMap<&str, (usize, u32)> = BTreeMap::new();
        for &i in which {
            let a = &items[i].0;
            by_worker.entry(a.worker_id.as_str()).or_insert((i, 0)).1 += a.size;
        }
        let mut tx = Vec::with_capacity(by_worker.len() + 2 * which.len() + 1);
        let mut parts = Vec::with_capacity(tx.capacity());
        for (first, size) in by_worker.into_values() {
            tx.push(self.claim_worker(&items[first].0, size, now, claim)?);
            parts.push(Part::Worker(first));
        }
        for &i in which {
            let (a, e, expected) = &items[i];
            tx.push(self.put_alloc(a, shards)?);
            tx.push(self.put_eval(e, Some(*expected), shards)?);
            parts.extend([Part::Own(i), Part::Own(i)]);
        }
        if let Some(limit) = claim.limit {
            tx.push(self.count_in_pool(&items[which[0]].0.pool_id, claim.version, limit, which.len() as u32)?);
            parts.push(Part::Pool);
        }
        Ok((tx, parts))
    }
}

/// The batch cut into transactions: at most `PER_TX` placements and `TX_BYTES`, never
/// more than a capped pool's limit, and never one eval or alloc twice (a transaction
/// may touch an item once; a repeat starts the next chunk).
///
/// A worker's placements are kept together (workers in the order of their first
/// placement, each worker's in plan order): every transaction a worker appears in
/// pays 2 write units for its claim, so a pass of 100 placements on 10 workers claims
/// about 13 times instead of about 34. Results are per placement, so the commit order
/// across workers is not observable but for a crash between two transactions.
fn chunks(items: &[(Alloc, Eval, u64)], claim: Claim) -> Vec<Vec<usize>> {
    let most = claim.limit.map_or(PER_TX, |l| PER_TX.min(l.max(1) as usize));
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, (a, _, _)) in items.iter().enumerate() {
        first_seen.entry(a.worker_id.as_str()).or_insert(i);
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (first_seen[items[i].0.worker_id.as_str()], i));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut bytes = 0;
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for i in order {
        let (a, e, _) = &items[i];
        let size = 1024 + e.payload.as_ref().map_or(0, |p| p.to_string().len());
        let id = (e.eval_id.as_str(), a.alloc_id.as_str());
        let repeat = seen.iter().any(|(ev, al)| *ev == id.0 || *al == id.1);
        if !cur.is_empty() && (cur.len() >= most || bytes + size > TX_BYTES || repeat) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
            seen.clear();
        }
        cur.push(i);
        bytes += size;
        seen.insert(id);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(worker: &WorkerId) -> (Alloc, Eval, u64) {
        let pool = PoolId::generate();
        let e = Eval::queued(pool, 1, None, None, Priority::DEFAULT, None, 0);
        let a = Alloc {
            pool_id: e.pool_id.clone(),
            alloc_id: AllocId::generate(),
            worker_id: worker.clone(),
            eval_id: e.eval_id.clone(),
            size: 1,
            attempt: 0,
            ttl: 60_000,
            state: AllocState::Live,
            stop: false,
            created_at: 0,
            counted: false,
        };
        (a, e, 0)
    }

    #[test]
    fn a_workers_placements_stay_together_so_it_is_claimed_once_per_transaction() {
        // A plan spreads 100 placements round-robin over 10 workers.
        let workers: Vec<WorkerId> = (0..10).map(|_| WorkerId::generate()).collect();
        let items: Vec<_> = (0..100).map(|i| placement(&workers[i % 10])).collect();
        let cut = chunks(&items, Claim::default());
        assert_eq!(cut.iter().map(Vec::len).sum::<usize>(), 100);
        assert!(cut.iter().all(|c| c.len() <= PER_TX));
        let claims: usize =
            cut.iter().map(|c| c.iter().map(|&i| items[i].0.worker_id.as_str()).collect::<HashSet<_>>().len()).sum();
        // Each worker once, plus one split worker per cut between transactions.
        assert!(claims < 10 + cut.len(), "{claims} claims in {} transactions", cut.len());
        // Within a worker, plan order is kept.
        for c in &cut {
            for pair in c.windows(2) {
                if items[pair[0]].0.worker_id == items[pair[1]].0.worker_id {
                    assert!(pair[0] < pair[1]);
                }
            }
        }
    }
}

//! SQS semantics over the `messages` table. A receive hides messages until
//! `visible_at`; a receipt is `{id}.{receive_count}`, so a receipt from an earlier
//! receive no longer deletes the message once someone else received it again.

use std::time::Duration;

use async_trait::async_trait;
use lineup_core::clock::{Clock, SystemClock};
use lineup_core::{Error, Queues, Received, Result};
use rusqlite::{params, OptionalExtension};
use std::sync::atomic::Ordering;

use crate::{db, SqliteBackend};

pub(crate) fn now_ms() -> i64 {
    SystemClock.now()
}

fn parse_receipt(r: &str) -> Option<(i64, i64)> {
    let (id, count) = r.split_once('.')?;
    Some((id.parse().ok()?, count.parse().ok()?))
}

fn queue_exists(conn: &rusqlite::Connection, name: &str) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM queues WHERE name=?1")
        .and_then(|mut s| s.query_row([name], |_| Ok(())).optional())
        .map(|o| o.is_some())
        .map_err(db("read queue"))
}

/// One non-blocking receive, inside a write job. Returns the messages, or when none is
/// visible, the moment the next hidden one becomes visible.
fn receive_job(
    tx: &rusqlite::Connection,
    name: &str,
    max: usize,
    visibility: Duration,
) -> Result<(Vec<Received>, Option<i64>)> {
    let now = now_ms();
    if !queue_exists(tx, name)? {
        return Err(Error::QueueGone(name.to_owned()));
    }
    let rows: Vec<(i64, String, i64)> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT id, body, receive_count FROM messages WHERE queue=?1 AND visible_at<=?2
                 ORDER BY visible_at, id LIMIT ?3",
            )
            .map_err(db("prepare receive"))?;
        let it = stmt
            .query_map(params![name, now, max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db("receive"))?;
        it.collect::<rusqlite::Result<_>>().map_err(db("receive"))?
    };
    if rows.is_empty() {
        let next: Option<i64> = tx
            .prepare_cached("SELECT MIN(visible_at) FROM messages WHERE queue=?1 AND visible_at>?2")
            .and_then(|mut st| st.query_row(params![name, now], |r| r.get(0)))
            .map_err(db("next visible"))?;
        return Ok((Vec::new(), next));
    }
    let hide_until = now + visibility.as_millis() as i64;
    let mut out = Vec::with_capacity(rows.len());
    let mut upd = tx
        .prepare_cached("UPDATE messages SET visible_at=?2, receive_count=receive_count+1, parked=0 WHERE id=?1")
        .map_err(db("prepare hide"))?;
    for (id, body, count) in rows {
        upd.execute(params![id, hide_until]).map_err(db("hide message"))?;
        let count = count + 1;
        out.push(Received { receipt: format!("{id}.{count}"), body, receive_count: count as u32 });
    }
    Ok((out, None))
}

pub(crate) fn send_job(tx: &rusqlite::Connection, name: &str, bodies: &[String], now: i64) -> Result<()> {
    if !queue_exists(tx, name)? {
        return Err(Error::QueueGone(name.to_owned()));
    }
    let mut ins = tx
        .prepare_cached("INSERT INTO messages (queue, body, visible_at, sent_at) VALUES (?1, ?2, ?3, ?3)")
        .map_err(db("prepare send"))?;
    for b in bodies {
        ins.execute(params![name, b, now]).map_err(db("send"))?;
    }
    Ok(())
}

/// Deletes received messages, inside a write job; stale receipts are ignored.
pub(crate) fn delete_job(tx: &rusqlite::Connection, name: &str, receipts: &[String]) -> Result<()> {
    let mut del = tx
        .prepare_cached("DELETE FROM messages WHERE id=?1 AND receive_count=?2 AND queue=?3")
        .map_err(db("prepare delete"))?;
    for r in receipts {
        if let Some((id, count)) = parse_receipt(r) {
            del.execute(params![id, count, name]).map_err(db("delete message"))?;
        }
    }
    Ok(())
}

impl SqliteBackend {
    /// One statement taking the queue's name (`?1`) and the time now (`?2`), as a write job.
    async fn write_for_queue(&self, sql: &'static str, name: &str, context: &'static str) -> Result<usize> {
        let n = name.to_owned();
        self.writer
            .write(move |c| {
                c.prepare_cached(sql).and_then(|mut st| st.execute(params![n, now_ms()])).map_err(db(context))
            })
            .await
    }

    /// Makes every hidden message visible now. For a process that owns the file alone
    /// (`lineup dev`) at start: receipts held by a previous, dead process mean nothing,
    /// so their messages need not wait out a visibility timeout. Returns how many.
    pub async fn redeliver_in_flight(&self) -> Result<usize> {
        self.writer
            .write(|c| {
                c.execute("UPDATE messages SET visible_at=?1, parked=0 WHERE visible_at>?1", [now_ms()])
                    .map_err(db("redeliver in-flight messages"))
            })
            .await
    }
}

#[async_trait]
impl Queues for SqliteBackend {
    /// No: nothing on one machine reads a dead-letter queue, and these queues have no
    /// retention, so it would only grow. Dead evals are listed by `GET .../dead-letters`.
    fn announces_dead_letters(&self) -> bool {
        false
    }

    async fn create_queue(&self, name: &str) -> Result<String> {
        self.write_for_queue("INSERT OR IGNORE INTO queues (name, created_at) VALUES (?1, ?2)", name, "create queue")
            .await?;
        Ok(format!("sqlite://{}#{name}", self.path.display()))
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.writer
            .write(move |tx| {
                tx.execute("DELETE FROM messages WHERE queue=?1", [&n]).map_err(db("delete queue messages"))?;
                tx.execute("DELETE FROM queues WHERE name=?1", [&n]).map_err(db("delete queue"))?;
                Ok(())
            })
            .await?;
        // Long pollers wake up and find the queue gone.
        self.signal(name).notify.notify_waiters();
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }

    async fn send(&self, name: &str, bodies: &[String]) -> Result<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        let batch = [(name.to_owned(), bodies.to_vec())];
        self.send_many(&batch).await.pop().unwrap_or(Ok(()))
    }

    async fn send_many(&self, batches: &[(String, Vec<String>)]) -> Vec<Result<()>> {
        if batches.is_empty() {
            return Vec::new();
        }
        let owned = batches.to_vec();
        let res = self
            .writer
            .write(move |tx| {
                let now = now_ms();
                let mut out = Vec::with_capacity(owned.len());
                for (name, bodies) in &owned {
                    // A gone queue fails alone; its statements wrote nothing.
                    out.push(send_job(tx, name, bodies, now));
                }
                Ok(out)
            })
            .await;
        match res {
            Ok(out) => {
                for ((name, _), r) in batches.iter().zip(&out) {
                    if r.is_ok() {
                        self.signal(name).notify.notify_waiters();
                    }
                }
                out
            }
            Err(e) => {
                let msg = e.to_string();
                batches.iter().map(|_| Err(Error::Backend(msg.clone()))).collect()
            }
        }
    }

    async fn receive(&self, name: &str, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Received>> {
        // SQS hands out at most 10; a local queue may hand out more to a caller that asks.
        let max = max.clamp(1, 1000);
        let deadline = tokio::time::Instant::now() + wait;
        let signal = self.signal(name);
        let wakes = signal.wakes.load(Ordering::Acquire);
        loop {
            // Register for wakeups before looking, so a send in between is not missed.
            let notified = signal.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            // A caller that drops this future while the job runs (a client gone mid-poll)
            // leaves what it received hidden for `visibility`; then it comes back.
            let n = name.to_owned();
            let (msgs, next_visible) = self.writer.write(move |tx| receive_job(tx, &n, max, visibility)).await?;
            if !msgs.is_empty() {
                return Ok(msgs);
            }
            let now = tokio::time::Instant::now();
            // `wake` ends a long poll early even with nothing to hand out: the caller (a
            // scheduler holding blocked evals) wants to look again now that capacity came.
            if now >= deadline || signal.wakes.load(Ordering::Acquire) != wakes {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(next) = next_visible {
                let in_ms = (next - now_ms()).max(1) as u64;
                until = until.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn delete(&self, name: &str, receipts: &[String]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let (n, receipts) = (name.to_owned(), receipts.to_vec());
        self.writer.write(move |tx| delete_job(tx, &n, &receipts)).await
    }

    async fn change_visibility(&self, name: &str, changes: &[(String, Duration)], parked: bool) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let (n, owned) = (name.to_owned(), changes.to_vec());
        self.writer
            .write(move |tx| {
                let now = now_ms();
                let mut upd = tx
                    .prepare_cached(
                        "UPDATE messages SET visible_at=?3, parked=?4 WHERE id=?1 AND receive_count=?2 AND queue=?5",
                    )
                    .map_err(db("prepare change visibility"))?;
                for (receipt, hide) in &owned {
                    if let Some((id, count)) = parse_receipt(receipt) {
                        let visible_at = now + hide.as_millis() as i64;
                        upd.execute(params![id, count, visible_at, parked, n]).map_err(db("change visibility"))?;
                    }
                }
                Ok(())
            })
            .await?;
        if changes.iter().any(|(_, hide)| hide.is_zero()) {
            self.signal(name).notify.notify_waiters();
        }
        Ok(())
    }

    async fn depth(&self, name: &str) -> Result<Option<u64>> {
        let conn = self.conn();
        let n: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM messages WHERE queue=?1")
            .and_then(|mut st| st.query_row([name], |r| r.get(0)))
            .map_err(db("count messages"))?;
        Ok(Some(n as u64))
    }

    async fn wake(&self, name: &str) -> Result<()> {
        // Most wakes find nothing parked: look first on the read connection, so that
        // they cost no write.
        let any_parked = {
            let conn = self.conn();
            conn.prepare_cached("SELECT 1 FROM messages WHERE queue=?1 AND parked=1 LIMIT 1")
                .and_then(|mut st| st.query_row([name], |_| Ok(())).optional())
                .map_err(db("look for parked messages"))?
                .is_some()
        };
        if any_parked {
            self.write_for_queue(
                "UPDATE messages SET visible_at=?2, parked=0 WHERE queue=?1 AND parked=1",
                name,
                "wake queue",
            )
            .await?;
        }
        let signal = self.signal(name);
        signal.wakes.fetch_add(1, Ordering::AcqRel);
        signal.notify.notify_waiters();
        Ok(())
    }
}

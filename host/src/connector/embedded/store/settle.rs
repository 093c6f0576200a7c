//! The write path besides receiving: publishing, settling a leased
//! message (its outputs and its acknowledgement in one frame), releasing it
//! for a retry, extending its lease, and the clean close.

use std::time::{Duration, SystemTime};

use super::*;
use crate::message::{OutboundMessage, unix_ms};

impl Store {
    /// Appends messages to `topic`; returns their ids once they are durable.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<Vec<String>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let now = unix_ms(SystemTime::now());
        let mut rows = to_rows(messages, now);
        let ids = rows.iter().map(|r| r.id.clone()).collect();
        let done = self.with_topic(topic, |t| {
            for row in &mut rows {
                row.seq = t.next_seq;
                t.next_seq += 1;
            }
            self.enqueue(Change::Insert(topic.to_string(), rows))
        });
        done.await.map_err(|_| StoreError::Closed)??;
        Ok(ids)
    }
    /// Deletes a leased message for good.
    pub async fn ack(&self, lease: &Lease) -> Result<(), StoreError> {
        self.settle(lease, Vec::new()).await
    }

    /// Appends `outputs` (per topic address, in order) and deletes the leased
    /// message, in one frame: after a crash either all of it happened or
    /// none. On an error the message stays leased, so the caller may still
    /// release it.
    pub async fn settle(
        &self,
        lease: &Lease,
        outputs: Vec<(String, Vec<OutboundMessage>)>,
    ) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        let mut inserts = Vec::with_capacity(outputs.len());
        for (topic, messages) in outputs {
            if !messages.is_empty() {
                inserts.push((topic, to_rows(messages, now)));
            }
        }
        let (done, taken) = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let t = topics.entry(lease.topic.clone()).or_default();
            let meta = t.check(lease)?;
            t.queue.remove(&(meta.visible_ms, lease.seq));
            t.meta.remove(&lease.seq);
            let mut changes = Vec::with_capacity(inserts.len() + 1);
            for (topic, mut rows) in inserts {
                let t = topics.entry(topic.clone()).or_default();
                for row in &mut rows {
                    row.seq = t.next_seq;
                    t.next_seq += 1;
                }
                changes.push(Change::Insert(topic, rows));
            }
            changes.push(Change::Delete(
                lease.topic.clone(),
                vec![(lease.seq, meta.loc)],
            ));
            (self.enqueue_all(changes), meta)
        };
        let result = done.await.map_err(|_| StoreError::Closed).and_then(|r| r);
        if result.is_err() {
            // Nothing was written: the message is still ours.
            self.with_topic(&lease.topic, |t| {
                if !t.meta.contains_key(&lease.seq) {
                    t.reschedule(lease.seq, taken);
                }
            });
        }
        result
    }

    /// Gives a leased message back, visible again after `delay`; its receive
    /// count and delay are committed before this returns.
    pub async fn release(&self, lease: &Lease, delay: Duration) -> Result<(), StoreError> {
        let visible_ms = unix_ms(SystemTime::now()) + delay.as_millis() as u64;
        let done = self.with_topic(&lease.topic, |t| {
            let meta = t.check(lease)?;
            let meta = Meta {
                visible_ms,
                leased: false,
                ..meta
            };
            t.reschedule(lease.seq, meta);
            t.notify.notify_waiters();
            Ok::<_, StoreError>(
                self.enqueue(Change::State(lease.topic.clone(), vec![(lease.seq, meta)])),
            )
        })?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Keeps a leased message invisible for `duration` from now. In memory
    /// only: leases do not outlive the process.
    pub async fn extend(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
        let visible_ms = unix_ms(SystemTime::now()) + duration.as_millis() as u64;
        self.with_topic(&lease.topic, |t| {
            let meta = t.check(lease)?;
            t.reschedule(
                lease.seq,
                Meta {
                    visible_ms,
                    leased: true,
                    ..meta
                },
            );
            Ok(())
        })
    }

    /// Writes the exact receive counts of leased messages and resets the
    /// receive marks, so that the next open counts no receive too many, and
    /// starts a new segment that seals the last one written.
    /// Called once the flows have stopped, before the process exits; the
    /// store stays usable.
    pub async fn close(&self) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        let done = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let mut changes = Vec::new();
            for (name, t) in topics.iter_mut() {
                let rows: Vec<(u64, Meta)> = t
                    .meta
                    .iter()
                    .filter(|(_, m)| m.receives > m.durable)
                    .map(|(&seq, &m)| {
                        let visible_ms = if m.leased { now } else { m.visible_ms };
                        (seq, Meta { visible_ms, ..m })
                    })
                    .collect();
                if !rows.is_empty() {
                    changes.push(Change::State(name.clone(), rows));
                }
                if t.mark_durable > 0 || t.mark > 0 {
                    t.mark = 0;
                    t.mark_durable = 0;
                    changes.push(Change::Mark(name.clone(), 0));
                }
            }
            changes.push(Change::Roll);
            self.enqueue_all(changes)
        };
        done.await.map_err(|_| StoreError::Closed)?
    }
}

/// New rows for `messages`, each with a fresh id; sequence numbers are
/// assigned under the lock.
fn to_rows(messages: Vec<OutboundMessage>, now: u64) -> Vec<Row> {
    messages
        .into_iter()
        .map(|m| Row {
            seq: 0,
            id: uuid::Uuid::now_v7().to_string(),
            headers: m.headers,
            payload: m.payload,
            enqueued_ms: now,
        })
        .collect()
}

//! The receive path: leasing visible messages (moving the receive mark
//! when a receive passes it) and reading their records back from the log.

use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::super::log::{self, Loc, Record};
use super::*;
use crate::message::{InboundMessage, from_unix_ms, unix_ms};

/// The wait for a queued commit.
type Commit = oneshot::Receiver<Result<(), StoreError>>;

impl Store {
    /// Leases up to `max` visible messages of `topic` for `lease`, waiting up
    /// to `wait` for one to become visible. The lease is kept in memory; the
    /// receive is counted durably by the topic's receive mark (see the module
    /// documentation), moved first when a message is past it.
    pub async fn receive(
        &self,
        topic: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<(InboundMessage, Lease)>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let lease_ms = lease.as_millis() as u64;
        if !self.shared.is_available() {
            // Leasing needs a write; the outage is reported by `health`
            // (readiness), not once per poll.
            tokio::time::sleep_until(deadline).await;
            return Ok(Vec::new());
        }
        loop {
            let notify = self.with_topic(topic, |t| t.notify.clone());
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = unix_ms(SystemTime::now());
            let (picked, next_visible, done) =
                self.with_topic(topic, |t| self.lease_visible(t, topic, max, now, lease_ms));
            if let Some(done) = done {
                done.await.map_err(|_| StoreError::Closed)??;
            }
            if !picked.is_empty() {
                return Ok(self.read(topic, picked, lease));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let until_visible = next_visible
                .map(|v| Duration::from_millis(v.saturating_sub(now).max(1)))
                .unwrap_or(left);
            let _ = tokio::time::timeout(left.min(until_visible), notified).await;
        }
    }

    /// Leases up to `max` messages of topic `t` visible at `now` (unix ms)
    /// for `lease_ms`, under the topics' lock. Returns them, when the next
    /// message becomes visible, and the commit to wait for before handing
    /// them out: the earlier receives of messages whose lease ran out, and
    /// the receive mark when a message is past it.
    fn lease_visible(
        &self,
        t: &mut TopicState,
        topic: &str,
        max: usize,
        now: u64,
        lease_ms: u64,
    ) -> (Vec<(u64, Meta)>, Option<u64>, Option<Commit>) {
        let mut picked = Vec::new();
        // Receives of messages whose lease ran out without a
        // release: the earlier receive is written down first.
        let mut uncounted = Vec::new();
        while picked.len() < max {
            let Some(&(visible, seq)) = t.queue.first() else {
                break;
            };
            if visible > now {
                break;
            }
            let old = t.meta[&seq];
            if old.receives > old.durable {
                uncounted.push((
                    seq,
                    Meta {
                        visible_ms: now,
                        leased: false,
                        ..old
                    },
                ));
            }
            let meta = Meta {
                receives: old.receives + 1,
                visible_ms: now + lease_ms,
                leased: true,
                ..old
            };
            t.reschedule(seq, meta);
            picked.push((seq, meta));
        }
        let next_visible = t.queue.first().map(|&(v, _)| v);
        let mut changes = Vec::new();
        if !uncounted.is_empty() {
            changes.push(Change::State(topic.to_string(), uncounted));
        }
        if let Some(&highest) = picked.iter().map(|(seq, _)| seq).max()
            && highest >= t.mark_durable
        {
            if highest >= t.mark {
                t.mark = highest + 1 + MARK_BLOCK;
            }
            changes.push(Change::Mark(topic.to_string(), t.mark));
        }
        let done = (!changes.is_empty()).then(|| self.enqueue_all(changes));
        (picked, next_visible, done)
    }

    /// Reads the record of a message, following it if compaction moved it
    /// meanwhile.
    pub(super) fn read_record(&self, topic: &str, seq: u64, loc: Loc) -> Result<Vec<u8>, String> {
        let mut loc = loc;
        for _ in 0..3 {
            if let Some(file) = self.shared.file(loc.seg) {
                return log::read_at(&file, loc).map_err(|e| {
                    format!(
                        "cannot read {}: {e}",
                        self.shared.dir.join(log::segment_name(loc.seg)).display()
                    )
                });
            }
            let moved = self.with_topic(topic, |t| t.meta.get(&seq).map(|m| m.loc));
            match moved {
                Some(l) if l != loc => loc = l,
                _ => break,
            }
        }
        Err(format!(
            "message {seq} of topic {topic} is gone from the log"
        ))
    }

    /// The leased messages' records, read from their segments. A message
    /// that cannot be read stays leased (and comes back when the lease runs
    /// out); the error is logged.
    fn read(
        &self,
        topic: &str,
        picked: Vec<(u64, Meta)>,
        lease: Duration,
    ) -> Vec<(InboundMessage, Lease)> {
        let mut out = Vec::with_capacity(picked.len());
        for (seq, meta) in picked {
            let message = self
                .read_record(topic, seq, meta.loc)
                .and_then(|bytes| to_message(topic, &bytes, meta.receives));
            match message {
                Ok(message) => {
                    let lease = Lease {
                        topic: topic.to_string(),
                        seq,
                        receives: meta.receives,
                        id: message.id.clone(),
                        duration: lease,
                    };
                    out.push((message, lease));
                }
                Err(error) => {
                    tracing::error!(topic = %topic, seq, error = %error, "The embedded broker cannot read a message.");
                }
            }
        }
        out
    }
}

pub(super) fn to_message(
    topic: &str,
    record: &[u8],
    receives: u32,
) -> Result<InboundMessage, String> {
    match log::read_record(record) {
        Ok((Record::Insert(m), _)) => Ok(InboundMessage {
            id: m.id.to_string(),
            topic: topic.to_string(),
            payload: m.payload.to_vec(),
            headers: m.headers,
            attempt: receives,
            enqueued_at: Some(from_unix_ms(m.enqueued_ms)),
            undecodable: None,
        }),
        Ok(_) => Err("the log has no message where one should be".into()),
        Err(e) => Err(format!("a message record is unreadable: {e}")),
    }
}

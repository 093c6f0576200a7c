//! Reading a topic without leasing: peeks, dead-letter listings, removal by id, depth.

use std::collections::HashMap;

use super::super::log::{self, Loc, Record};
use super::receive::to_message;
use super::*;
use crate::message::InboundMessage;

impl Store {
    /// Up to `max` messages of `topic`, oldest first, without leasing them,
    /// and about [`MAX_PEEK_BYTES`] of payload at most: a peek (or a
    /// dead-letter listing) of a long topic never loads it whole. Blocking
    /// (reads the log).
    pub fn peek(&self, topic: &str, max: usize) -> Result<Vec<InboundMessage>, StoreError> {
        self.peek_bounded(topic, max, MAX_PEEK_BYTES)
    }

    /// (seq, where, receives) of the messages of `topic`, oldest first.
    fn listing(&self, topic: &str) -> Vec<(u64, Loc, u32)> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(u64, Loc, u32)> = topics
            .get(topic)
            .map(|t| {
                t.meta
                    .iter()
                    .map(|(&s, m)| (s, m.loc, m.receives))
                    .collect()
            })
            .unwrap_or_default();
        all.sort_unstable_by_key(|e| e.0);
        all
    }

    pub(super) fn peek_bounded(
        &self,
        topic: &str,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<InboundMessage>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (seq, loc, receives) in self.listing(topic).into_iter().take(max) {
            if bytes >= max_bytes {
                break;
            }
            let Ok(record) = self.read_record(topic, seq, loc) else {
                // Acknowledged meanwhile.
                continue;
            };
            let message = to_message(topic, &record, receives).map_err(StoreError::Storage)?;
            bytes += message.payload.len();
            out.push(message);
        }
        Ok(out)
    }

    /// Deletes the message `id` of `topic`, leased or not. Returns whether it
    /// was there.
    pub async fn remove_by_id(&self, topic: &str, id: &str) -> Result<bool, StoreError> {
        let mut found = None;
        for (seq, loc, _) in self.listing(topic) {
            let Ok(record) = self.read_record(topic, seq, loc) else {
                continue;
            };
            if let Ok((Record::Insert(m), _)) = log::read_record(&record)
                && m.id == id
            {
                found = Some(seq);
                break;
            }
        }
        let Some(seq) = found else { return Ok(false) };
        let done = self.with_topic(topic, |t| {
            let meta = t.meta.remove(&seq)?;
            t.queue.remove(&(meta.visible_ms, seq));
            Some(self.enqueue(Change::Delete(topic.to_string(), vec![(seq, meta.loc)])))
        });
        match done {
            Some(done) => done.await.map_err(|_| StoreError::Closed)?.map(|_| true),
            None => Ok(false),
        }
    }

    /// Messages not yet acknowledged, per topic: (total, leased).
    pub fn depth(&self) -> HashMap<String, (usize, usize)> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .iter()
            .map(|(name, t)| {
                let leased = t.meta.values().filter(|m| m.leased).count();
                (name.clone(), (t.meta.len(), leased))
            })
            .collect()
    }
}

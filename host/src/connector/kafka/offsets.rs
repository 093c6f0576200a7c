//! Per-partition tracking of a Kafka flow's messages: the buffers the
//! consumer fills, the messages in flight in offset order, whose turn it is
//! to publish, and the offsets stored once the messages before them are
//! settled (see the `source` module documentation).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers as _, Message, OwnedMessage};
use rdkafka::producer::FutureRecord;
use tokio::sync::Notify;

use super::consumer::FlowConsumer;
use super::{ATTEMPT_HEADER, MESSAGE_ID_HEADER, Producers};
use crate::connector::{Assignment, PartitionAssignment, Settle};

/// The longest a retry waits in the router before its copy is produced.
pub const MAX_IN_ROUTER_DELAY: Duration = Duration::from_secs(30);
/// Buffered messages at which the partitions are paused.
const HIGH_WATER_MESSAGES: usize = 10_000;
/// Buffered payload bytes at which the partitions are paused.
const HIGH_WATER_BYTES: usize = 64 << 20;
/// Without partition turns (`ordering = "key"` or `"none"`): the most
/// messages of a partition taken and not yet past the stored offset
/// (settled ones behind an unsettled one included), so a message that
/// holds its key for long (retried in place) lets the other keys of its
/// partition go on this far before the partition waits for it.
pub(super) const MAX_UNCOMMITTED: usize = 10_000;

pub(super) struct Pending {
    pub(super) message: OwnedMessage,
    /// Set when a retry could not be produced and is redelivered locally.
    pub(super) attempt: Option<u32>,
    /// The message already has its place in `in_flight` (a local redelivery).
    pub(super) placed: bool,
}

impl Pending {
    pub(super) fn bytes(&self) -> usize {
        self.message.payload().map_or(0, <[u8]>::len)
    }
}

/// A message of a partition taken by the flow and not yet past the stored
/// offset.
pub(super) struct InFlight {
    pub(super) offset: i64,
    /// Its effects are handed to the producer, or it has none.
    pub(super) passed: bool,
    /// Acknowledged, or its retry copy produced.
    pub(super) settled: bool,
}

pub(super) struct Partition {
    pub(super) buffer: VecDeque<Pending>,
    /// In offset order.
    pub(super) in_flight: VecDeque<InFlight>,
    /// Entries of `in_flight` not settled yet.
    pub(super) open: usize,
    pub(super) generation: u64,
}

impl Partition {
    pub(super) fn new(generation: u64) -> Self {
        Self {
            buffer: VecDeque::new(),
            in_flight: VecDeque::new(),
            open: 0,
            generation,
        }
    }

    pub(super) fn entry(&mut self, offset: i64) -> Option<&mut InFlight> {
        // In offset order: a search, not a scan (a keyed partition holds
        // up to `MAX_UNCOMMITTED`).
        let i = self
            .in_flight
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()?;
        self.in_flight.get_mut(i)
    }

    /// Whether the partition has as many messages taken as it may:
    /// `depth` in flight, or without `turns` `depth` not settled (and at
    /// most `MAX_UNCOMMITTED` not past the stored offset).
    fn full(&self, depth: usize, turns: bool) -> bool {
        if turns {
            self.in_flight.len() >= depth
        } else {
            self.open >= depth || self.in_flight.len() >= MAX_UNCOMMITTED
        }
    }

    /// Marks the message at `offset` settled; pops and returns the last
    /// offset of the settled run at the front, if any.
    fn settle(&mut self, offset: i64) -> Option<i64> {
        if let Some(e) = self.entry(offset) {
            e.passed = true;
            if !std::mem::replace(&mut e.settled, true) {
                self.open -= 1;
            }
        }
        let mut done = None;
        while self.in_flight.front().is_some_and(|e| e.settled) {
            done = self.in_flight.pop_front().map(|e| e.offset);
        }
        done
    }

    /// Whether every message before `offset` has passed its turn.
    fn turn_of(&self, offset: i64) -> bool {
        self.in_flight
            .iter()
            .take_while(|e| e.offset != offset)
            .all(|e| e.passed)
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) partitions: BTreeMap<i32, Partition>,
    /// Since when the consumer has had no assignment: from the start until
    /// the group's first one, and from a revoke of everything (a rebalance,
    /// or a session lost while the broker was away) until the next.
    pub(super) unassigned_since: Option<std::time::Instant>,
    pub(super) generation: u64,
    pub(super) buffered: usize,
    pub(super) buffered_bytes: usize,
    pub(super) paused: bool,
    pub(super) cursor: i32,
}

impl State {
    pub(super) fn over_high_water(&self) -> bool {
        self.buffered >= HIGH_WATER_MESSAGES || self.buffered_bytes >= HIGH_WATER_BYTES
    }

    pub(super) fn below_low_water(&self) -> bool {
        self.buffered <= HIGH_WATER_MESSAGES / 2 && self.buffered_bytes <= HIGH_WATER_BYTES / 2
    }

    pub(super) fn unbuffer(&mut self, pending: &Pending) {
        self.buffered -= 1;
        self.buffered_bytes -= pending.bytes();
    }

    /// Takes up to `max` buffered messages, round robin from the partition
    /// after the last one served, one per partition per pass, while a
    /// partition has fewer than `depth` in flight; places them in flight.
    pub(super) fn take(
        &mut self,
        max: usize,
        depth: usize,
        turns: bool,
    ) -> Vec<(i32, u64, Pending)> {
        let mut picked = Vec::new();
        let keys: Vec<i32> = self.partitions.keys().copied().collect();
        let start = keys.iter().position(|k| *k > self.cursor).unwrap_or(0);
        // Round robin, one message per partition per pass.
        let mut progress = true;
        while progress && picked.len() < max {
            progress = false;
            for i in 0..keys.len() {
                if picked.len() >= max {
                    break;
                }
                let key = keys[(start + i) % keys.len()];
                let p = self.partitions.get_mut(&key).expect("key from the map");
                let Some(front) = p.buffer.front() else {
                    continue;
                };
                // A local redelivery already has its place.
                if !front.placed && p.full(depth, turns) {
                    continue;
                }
                let pending = p.buffer.pop_front().expect("checked above");
                if pending.placed {
                    if let Some(e) = p.entry(pending.message.offset()) {
                        e.passed = false;
                    }
                } else {
                    p.in_flight.push_back(InFlight {
                        offset: pending.message.offset(),
                        passed: false,
                        settled: false,
                    });
                    p.open += 1;
                }
                picked.push((key, p.generation, pending));
                progress = true;
            }
        }
        for (_, _, pending) in &picked {
            self.unbuffer(pending);
        }
        if let Some((last, _, _)) = picked.last() {
            self.cursor = *last;
        }
        picked
    }

    /// The partition, if it is still the assignment of `generation`.
    pub(super) fn owned(&mut self, partition: i32, generation: u64) -> Option<&mut Partition> {
        self.partitions
            .get_mut(&partition)
            .filter(|p| p.generation == generation)
    }
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) notify: Notify,
    /// Messages of one partition in flight at once (without `turns`: not
    /// settled).
    pub(super) depth: usize,
    /// `ordering = "partition"`: a message publishes its outputs only once
    /// every message before it in its partition has passed its turn.
    /// Without (`key`, where the flow's key order holds a key's next
    /// message until this one is settled, or `none`) nothing waits.
    pub(super) turns: bool,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Assignment for Shared {
    fn partitions(&self) -> PartitionAssignment {
        let state = self.lock();
        PartitionAssignment {
            partitions: state.partitions.len(),
            unassigned_since: state.unassigned_since,
        }
    }
}

pub(super) struct KafkaSettle {
    pub(super) consumer: Arc<FlowConsumer>,
    pub(super) shared: Arc<Shared>,
    pub(super) producers: Arc<Producers>,
    pub(super) partition: i32,
    pub(super) generation: u64,
    pub(super) attempt: u32,
    pub(super) id: String,
    pub(super) offset: i64,
    pub(super) turn_passed: bool,
    /// Acknowledged, or handed to a retry.
    pub(super) settled: bool,
    pub(super) message: Option<OwnedMessage>,
}

impl KafkaSettle {
    fn pass(&mut self) {
        if std::mem::replace(&mut self.turn_passed, true) {
            return;
        }
        if let Some(e) = self
            .shared
            .lock()
            .owned(self.partition, self.generation)
            .and_then(|p| p.entry(self.offset))
        {
            e.passed = true;
        }
        self.shared.notify.notify_waiters();
    }
}

impl Drop for KafkaSettle {
    /// A message dropped unsettled (its task panicked, or was aborted at
    /// shutdown) must not hold up the others: it passes its turn and is
    /// delivered again here, keeping its place, so the offsets can move past
    /// it once it is settled.
    fn drop(&mut self) {
        self.pass();
        if self.settled {
            return;
        }
        let Some(message) = self.message.take() else {
            return;
        };
        redeliver(
            &self.shared,
            self.partition,
            self.generation,
            message,
            self.attempt + 1,
        );
    }
}

/// Puts a message back at the front of its partition's buffer, keeping its
/// place in the offset order, to be delivered again here with `attempt`.
pub(super) fn redeliver(
    shared: &Shared,
    partition: i32,
    generation: u64,
    message: OwnedMessage,
    attempt: u32,
) {
    let mut state = shared.lock();
    if let Some(p) = state.owned(partition, generation) {
        let pending = Pending {
            message,
            attempt: Some(attempt),
            placed: true,
        };
        let bytes = pending.bytes();
        p.buffer.push_front(pending);
        state.buffered += 1;
        state.buffered_bytes += bytes;
    }
    drop(state);
    shared.notify.notify_waiters();
}

/// Marks a partition's message settled and stores the offset of the settled
/// messages at the front of the partition, if it is still ours.
pub(super) fn settle_offset(
    consumer: &FlowConsumer,
    shared: &Shared,
    topic: &str,
    partition: i32,
    generation: u64,
    offset: i64,
) {
    {
        let mut state = shared.lock();
        match state.owned(partition, generation) {
            Some(p) => {
                let done = p.settle(offset);
                // librdkafka stores offset + 1: the next one to read.
                if let Some(done) = done
                    && let Err(e) = consumer.store_offset(topic, partition, done)
                {
                    tracing::warn!(topic = %topic, partition, offset = done, error = %e, "Could not store a Kafka offset.");
                }
            }
            None => {
                tracing::debug!(topic = %topic, partition, offset, "Settled a message of a partition no longer assigned; its new owner reads it again.")
            }
        }
    }
    shared.notify.notify_waiters();
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn wait_turn(&mut self) {
        if !self.shared.turns {
            return;
        }
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock();
                match state.owned(self.partition, self.generation) {
                    Some(p) if !p.turn_of(self.offset) => {}
                    // Its turn, or the partition is no longer ours (nothing
                    // of it is stored any more; the new owner redoes it).
                    _ => return,
                }
            }
            notified.await;
        }
    }

    fn pass_turn(&mut self) {
        self.pass();
    }

    async fn ack(&mut self) -> anyhow::Result<()> {
        self.turn_passed = true;
        self.settled = true;
        if let Some(m) = &self.message {
            settle_offset(
                &self.consumer,
                &self.shared,
                m.topic(),
                self.partition,
                self.generation,
                m.offset(),
            );
        }
        Ok(())
    }

    async fn retry(&mut self, delay: Duration) -> anyhow::Result<()> {
        // Its copy goes to the end of the partition: the messages after it
        // need not wait.
        self.pass();
        self.settled = true;
        let Some(message) = self.message.take() else {
            return Ok(());
        };
        let (consumer, shared, producers) = (
            self.consumer.clone(),
            self.shared.clone(),
            self.producers.clone(),
        );
        let (partition, generation, attempt, id) = (
            self.partition,
            self.generation,
            self.attempt,
            self.id.clone(),
        );
        // The delay runs here (the partition's offsets wait behind it), then
        // a copy with the next attempt number goes to its end.
        tokio::spawn(async move {
            tokio::time::sleep(delay.min(MAX_IN_ROUTER_DELAY)).await;
            let mut headers: Vec<(String, String)> = Vec::new();
            if let Some(h) = message.headers() {
                for header in h.iter() {
                    if header.key == ATTEMPT_HEADER || header.key == MESSAGE_ID_HEADER {
                        continue;
                    }
                    if let Some(Ok(v)) = header.value.map(std::str::from_utf8) {
                        headers.push((header.key.to_string(), v.to_string()));
                    }
                }
            }
            headers.push((ATTEMPT_HEADER.into(), (attempt + 1).to_string()));
            headers.push((MESSAGE_ID_HEADER.into(), id));
            let mut produced = false;
            for wait in [0u64, 1, 2, 4] {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let mut record = FutureRecord::<[u8], [u8]>::to(message.topic())
                    .partition(partition)
                    .payload(message.payload().unwrap_or_default())
                    .headers(super::sink::headers(&headers));
                if let Some(k) = message.key() {
                    record = record.key(k);
                }
                let (producer_generation, producer) = producers.get();
                match producer.send(record, Duration::from_secs(10)).await {
                    Ok(_) => {
                        produced = true;
                        break;
                    }
                    Err((e, _)) => {
                        producers.failed(producer_generation, &producer, &e);
                        tracing::warn!(topic = %message.topic(), partition, error = %e, "Could not produce a retry; trying again.");
                    }
                }
            }
            if produced {
                settle_offset(
                    &consumer,
                    &shared,
                    message.topic(),
                    partition,
                    generation,
                    message.offset(),
                );
            } else {
                // Redeliver it here instead; the attempt counts.
                redeliver(&shared, partition, generation, message, attempt + 1);
            }
        });
        Ok(())
    }
}

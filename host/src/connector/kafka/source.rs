//! Consuming a Kafka topic for one flow, in its own consumer group.
//!
//! A background task polls the consumer into per-partition buffers; the flow
//! takes up to `in_flight_per_partition` messages of a partition at a time
//! (8 by default). Their invocations may overlap, but each message waits
//! for its turn before it publishes anything: the messages before it in its
//! partition must have handed their effects to the producer, or failed. As
//! the producer is idempotent and keeps the order of what it is handed per
//! partition, a partition's successes reach their topics in order. Offsets
//! are stored in order too: a settled message's offset is stored only once
//! every message before it is settled. With `in_flight_per_partition = 1`
//! the invocations themselves run one after another.
//!
//! When the buffers hold more than a high-water mark (messages or bytes)
//! the assigned partitions are paused, and resumed once the flow has drained
//! half of it; the marks are high because librdkafka drops what it fetched
//! for a paused partition and fetches it again on resume. On revoke, stored
//! offsets are committed and the revoked partitions' buffers dropped;
//! settling a message of a partition the router no longer owns stores
//! nothing, so the new owner processes it again (at-least-once).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers as _, Message, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ATTEMPT_HEADER, MESSAGE_ID_HEADER, Producers, client_config};
use crate::connector::TopicSpec;
use crate::connector::{Assignment, Delivery, PartitionAssignment, Settle, Source, SourceOptions};
use crate::message::{InboundMessage, from_unix_ms};
use crate::metrics::PartitionLabels;

/// How long `receive` waits for a message before it returns empty.
const POLL: Duration = Duration::from_millis(500);
/// The longest a retry waits in the router before its copy is produced.
pub const MAX_IN_ROUTER_DELAY: Duration = Duration::from_secs(30);
/// Buffered messages at which the partitions are paused.
const HIGH_WATER_MESSAGES: usize = 10_000;
/// Buffered payload bytes at which the partitions are paused.
const HIGH_WATER_BYTES: usize = 64 << 20;

struct Pending {
    message: OwnedMessage,
    /// Set when a retry could not be produced and is redelivered locally.
    attempt: Option<u32>,
    /// The message already has its place in `in_flight` (a local redelivery).
    placed: bool,
}

impl Pending {
    fn bytes(&self) -> usize {
        self.message.payload().map_or(0, <[u8]>::len)
    }
}

/// A message of a partition taken by the flow and not yet past the stored
/// offset.
struct InFlight {
    offset: i64,
    /// Its effects are handed to the producer, or it has none.
    passed: bool,
    /// Acknowledged, or its retry copy produced.
    settled: bool,
}

struct Partition {
    buffer: VecDeque<Pending>,
    /// In offset order.
    in_flight: VecDeque<InFlight>,
    generation: u64,
}

impl Partition {
    fn entry(&mut self, offset: i64) -> Option<&mut InFlight> {
        self.in_flight.iter_mut().find(|e| e.offset == offset)
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
struct State {
    partitions: BTreeMap<i32, Partition>,
    /// Since when the consumer has had no assignment: from the start until
    /// the group's first one, and from a revoke of everything (a rebalance,
    /// or a session lost while the broker was away) until the next.
    unassigned_since: Option<std::time::Instant>,
    generation: u64,
    buffered: usize,
    buffered_bytes: usize,
    paused: bool,
    cursor: i32,
}

impl State {
    fn over_high_water(&self) -> bool {
        self.buffered >= HIGH_WATER_MESSAGES || self.buffered_bytes >= HIGH_WATER_BYTES
    }

    fn below_low_water(&self) -> bool {
        self.buffered <= HIGH_WATER_MESSAGES / 2 && self.buffered_bytes <= HIGH_WATER_BYTES / 2
    }

    fn unbuffer(&mut self, pending: &Pending) {
        self.buffered -= 1;
        self.buffered_bytes -= pending.bytes();
    }

    /// The partition, if it is still the assignment of `generation`.
    fn owned(&mut self, partition: i32, generation: u64) -> Option<&mut Partition> {
        self.partitions
            .get_mut(&partition)
            .filter(|p| p.generation == generation)
    }
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    /// Messages of one partition in flight at once.
    depth: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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

/// Tracks assignments for the flow's consumer.
struct FlowContext {
    shared: Arc<Shared>,
    flow: String,
}

impl ClientContext for FlowContext {}

impl ConsumerContext for FlowContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is settled before the partitions go.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(())
                | Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                )) => {}
                Err(e) => {
                    tracing::warn!(flow = %self.flow, error = %e, "Could not commit on revoke.")
                }
            }
            let mut state = self.shared.lock();
            for elem in tpl.elements() {
                if let Some(p) = state.partitions.remove(&elem.partition()) {
                    for pending in &p.buffer {
                        state.unbuffer(pending);
                    }
                }
            }
            if state.partitions.is_empty() {
                state.unassigned_since = Some(std::time::Instant::now());
            }
            let left = state.partitions.len();
            drop(state);
            tracing::info!(flow = %self.flow, partitions = tpl.count(), left, "Kafka partitions revoked.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut state = self.shared.lock();
            state.generation += 1;
            state.paused = false;
            state.unassigned_since = None;
            let generation = state.generation;
            for elem in tpl.elements() {
                state.partitions.insert(
                    elem.partition(),
                    Partition {
                        buffer: VecDeque::new(),
                        in_flight: VecDeque::new(),
                        generation,
                    },
                );
            }
            tracing::info!(flow = %self.flow, partitions = tpl.count(), "Kafka partitions assigned.");
        }
        self.shared.notify.notify_waiters();
    }
}

type FlowConsumer = StreamConsumer<FlowContext>;

/// A consumer of one topic for one flow.
pub struct KafkaSource {
    consumer: Arc<FlowConsumer>,
    shared: Arc<Shared>,
    producers: Arc<Producers>,
    topic: TopicSpec,
    stop: CancellationToken,
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl KafkaSource {
    /// Joins the flow's consumer group on the topic.
    pub fn open(
        connection: &str,
        properties: &[(String, String)],
        producers: Arc<Producers>,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                unassigned_since: Some(std::time::Instant::now()),
                ..State::default()
            }),
            notify: Notify::new(),
            depth: options.in_flight_per_partition.max(1),
        });
        let mut config = client_config(properties);
        config
            .set("group.id", &options.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        if !properties.iter().any(|(k, _)| k == "auto.offset.reset") {
            config.set("auto.offset.reset", "earliest");
        }
        let consumer: FlowConsumer = config
            .create_with_context(FlowContext {
                shared: shared.clone(),
                flow: options.flow.clone(),
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "broker connection {connection:?} (kafka): cannot create a consumer: {e}"
                )
            })?;
        consumer.subscribe(&[topic.address()]).map_err(|e| {
            anyhow::anyhow!(
                "broker connection {connection:?} (kafka): cannot subscribe to {}: {e}",
                topic.address()
            )
        })?;
        let consumer = Arc::new(consumer);
        let stop = CancellationToken::new();
        tokio::spawn(poll(
            consumer.clone(),
            shared.clone(),
            options.flow.clone(),
            topic.address().to_string(),
            options.metrics.clone(),
            stop.clone(),
        ));
        Ok(Self {
            consumer,
            shared,
            producers,
            topic: topic.clone(),
            stop,
        })
    }

    fn delivery(&self, partition: i32, generation: u64, pending: Pending) -> Delivery {
        let message = to_inbound(&self.topic, &pending.message, pending.attempt);
        Delivery {
            settle: Box::new(KafkaSettle {
                consumer: self.consumer.clone(),
                shared: self.shared.clone(),
                producers: self.producers.clone(),
                partition,
                generation,
                attempt: message.attempt,
                id: message.id.clone(),
                offset: pending.message.offset(),
                turn_passed: false,
                settled: false,
                message: Some(pending.message),
            }),
            message,
        }
    }
}

/// The router's view of a Kafka message.
fn to_inbound(topic: &TopicSpec, m: &OwnedMessage, attempt: Option<u32>) -> InboundMessage {
    let mut headers = Vec::new();
    let mut undecodable = None;
    if let Some(h) = m.headers() {
        for header in h.iter() {
            match header.value.map(std::str::from_utf8) {
                Some(Ok(v)) => headers.push((header.key.to_string(), v.to_string())),
                None => headers.push((header.key.to_string(), String::new())),
                Some(Err(_)) => {
                    undecodable = Some(format!("header {:?} is not UTF-8", header.key));
                }
            }
        }
    }
    let header = |k: &str| {
        headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| v.clone())
    };
    let attempt = attempt
        .or_else(|| header(ATTEMPT_HEADER).and_then(|a| a.parse().ok()))
        .unwrap_or(1);
    let id = header(MESSAGE_ID_HEADER)
        .unwrap_or_else(|| format!("{}/{}/{}", m.topic(), m.partition(), m.offset()));
    if let Some(key) = m.key() {
        match std::str::from_utf8(key) {
            Ok(k) => headers.push((super::KEY_HEADER.to_string(), k.to_string())),
            Err(_) => undecodable = Some("the record key is not UTF-8".into()),
        }
    }
    InboundMessage {
        id,
        topic: topic.name.clone(),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
        attempt,
        enqueued_at: m
            .timestamp()
            .to_millis()
            .filter(|ms| *ms > 0)
            .map(|ms| from_unix_ms(ms as u64)),
        undecodable,
    }
}

async fn poll(
    consumer: Arc<FlowConsumer>,
    shared: Arc<Shared>,
    flow: String,
    topic: String,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    stop: CancellationToken,
) {
    let mut lag = tokio::time::interval(Duration::from_secs(10));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lag.tick() => {
                if let Some(m) = &metrics {
                    report_lag(&consumer, &flow, &topic, m).await;
                }
            }
            received = consumer.recv() => match received {
                Ok(m) => {
                    failures = 0;
                    let owned = m.detach();
                    let pause = {
                        let mut state = shared.lock();
                        let partition = owned.partition();
                        let pending = Pending { message: owned, attempt: None, placed: false };
                        let bytes = pending.bytes();
                        match state.partitions.get_mut(&partition) {
                            Some(p) => {
                                p.buffer.push_back(pending);
                                state.buffered += 1;
                                state.buffered_bytes += bytes;
                            }
                            None => {
                                // Not (or no longer) ours: the owner reads it.
                            }
                        }
                        let pause = !state.paused && state.over_high_water();
                        if pause {
                            state.paused = true;
                        }
                        pause
                    };
                    shared.notify.notify_waiters();
                    if pause {
                        set_paused(&consumer, true, &flow);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(flow = %flow, topic = %topic, error = %e, "Kafka consumer error; it retries by itself.");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }
}

fn set_paused(consumer: &FlowConsumer, pause: bool, flow: &str) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => {
            tracing::debug!(flow = %flow, paused = pause, "Kafka partitions paused or resumed.")
        }
        Err(e) => {
            tracing::warn!(flow = %flow, error = %e, "Could not pause or resume Kafka partitions.")
        }
    }
}

/// Sets `eventflow_consumer_lag` for each assigned partition: the high
/// watermark minus the consumer's position.
async fn report_lag(
    consumer: &Arc<FlowConsumer>,
    flow: &str,
    topic: &str,
    metrics: &crate::metrics::Metrics,
) {
    let c = consumer.clone();
    let t = topic.to_string();
    let lags = tokio::task::spawn_blocking(move || {
        let Ok(position) = c.position() else {
            return Vec::new();
        };
        position
            .elements()
            .iter()
            .filter(|e| e.topic() == t)
            .filter_map(|e| {
                let (_, high) = c
                    .fetch_watermarks(&t, e.partition(), Duration::from_secs(2))
                    .ok()?;
                let lag = match e.offset() {
                    Offset::Offset(o) => (high - o).max(0),
                    _ => high,
                };
                Some((e.partition(), lag))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (partition, lag) in lags {
        metrics
            .consumer_lag
            .get_or_create(&PartitionLabels {
                flow: flow.to_string(),
                topic: topic.to_string(),
                partition: partition.to_string(),
            })
            .set(lag);
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn receive(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + POLL;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (picked, resume) = {
                let mut state = self.shared.lock();
                let mut picked = Vec::new();
                let keys: Vec<i32> = state.partitions.keys().copied().collect();
                let start = keys.iter().position(|k| *k > state.cursor).unwrap_or(0);
                // Round robin, one message per partition per pass.
                let mut progress = true;
                while progress && picked.len() < max {
                    progress = false;
                    for i in 0..keys.len() {
                        if picked.len() >= max {
                            break;
                        }
                        let key = keys[(start + i) % keys.len()];
                        let p = state.partitions.get_mut(&key).expect("key from the map");
                        let Some(front) = p.buffer.front() else {
                            continue;
                        };
                        // A local redelivery already has its place.
                        if !front.placed && p.in_flight.len() >= self.shared.depth {
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
                        }
                        picked.push((key, p.generation, pending));
                        progress = true;
                    }
                }
                for (_, _, pending) in &picked {
                    state.unbuffer(pending);
                }
                if let Some((last, _, _)) = picked.last() {
                    state.cursor = *last;
                }
                let resume = state.paused && state.below_low_water();
                if resume {
                    state.paused = false;
                }
                (picked, resume)
            };
            if resume {
                set_paused(&self.consumer, false, "");
            }
            if !picked.is_empty() {
                return Ok(picked
                    .into_iter()
                    .map(|(p, g, pending)| self.delivery(p, g, pending))
                    .collect());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    fn assignment(&self) -> Option<Arc<dyn Assignment>> {
        Some(self.shared.clone())
    }

    async fn close(&mut self) {
        self.stop.cancel();
        let consumer = self.consumer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync)
                && !matches!(
                    e,
                    rdkafka::error::KafkaError::ConsumerCommit(
                        rdkafka::types::RDKafkaErrorCode::NoOffset
                    )
                )
            {
                tracing::warn!(error = %e, "Could not commit Kafka offsets on close.");
            }
            consumer.unsubscribe();
        })
        .await;
    }
}

struct KafkaSettle {
    consumer: Arc<FlowConsumer>,
    shared: Arc<Shared>,
    producers: Arc<Producers>,
    partition: i32,
    generation: u64,
    attempt: u32,
    id: String,
    offset: i64,
    turn_passed: bool,
    /// Acknowledged, or handed to a retry.
    settled: bool,
    message: Option<OwnedMessage>,
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
fn redeliver(
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
fn settle_offset(
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
                if let Some(e) = p.entry(offset) {
                    e.passed = true;
                    e.settled = true;
                }
                let mut done = None;
                while p.in_flight.front().is_some_and(|e| e.settled) {
                    done = p.in_flight.pop_front().map(|e| e.offset);
                }
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

/// Reads up to `max` messages from the beginning of every partition of a
/// topic, without a consumer group or commits.
pub async fn peek(
    properties: &[(String, String)],
    topic: &TopicSpec,
    max: usize,
) -> anyhow::Result<Vec<InboundMessage>> {
    let mut config = client_config(properties);
    config
        .set(
            "group.id",
            format!("eventflow-peek-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let topic = topic.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(topic.address()), Duration::from_secs(5))?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let mut idle = 0;
        while out.len() < max && idle < 4 {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    idle = 0;
                    out.push(to_inbound(&topic, &m.detach(), None));
                }
                Some(Err(e)) => return Err(anyhow::anyhow!("{e}")),
                None => idle += 1,
            }
        }
        Ok(out)
    })
    .await?
}

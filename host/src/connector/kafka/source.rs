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
//! With `ordering = "key"` the partition keeps no turn: the flow orders by
//! the record key (its `kafka-key` header), so a key's next message starts
//! only once the one before it is settled, and different keys of one
//! partition run side by side up to `in_flight_per_partition` unsettled
//! messages (by default the flow's room for messages in flight). A slow
//! or retried key holds only its own messages: the others go on, up to
//! `MAX_UNCOMMITTED` messages past it, until the partition waits for it.
//! `ordering = "none"` is the same without the keys: nothing waits for a
//! turn. Offsets are still stored only below the partition's first
//! unsettled message, so after a crash the messages settled behind it come
//! again.
//!
//! When the buffers hold more than a high-water mark (messages or bytes)
//! the assigned partitions are paused, and resumed once the flow has drained
//! half of it; the marks are high because librdkafka drops what it fetched
//! for a paused partition and fetches it again on resume. On revoke, stored
//! offsets are committed and the revoked partitions' buffers dropped;
//! settling a message of a partition the router no longer owns stores
//! nothing, so the new owner processes it again (at-least-once).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers as _, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::consumer::{self, FlowConsumer, poll, set_paused};
use super::offsets::{KafkaSettle, Pending, Shared, State};
use super::{ATTEMPT_HEADER, MESSAGE_ID_HEADER, Producers, client_config};
use crate::connector::TopicSpec;
use crate::connector::{Assignment, Delivery, Source, SourceOptions};
use crate::message::{InboundMessage, from_unix_ms};

/// How long `receive` waits for a message before it returns empty.
const POLL: Duration = Duration::from_millis(500);

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
            turns: options.partition_turns,
        });
        let consumer = consumer::subscribe(connection, properties, &shared, topic, options)?;
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
                let picked = state.take(max, self.shared.depth, self.shared.turns);
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

    fn key_header(&self) -> &'static str {
        super::KEY_HEADER
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

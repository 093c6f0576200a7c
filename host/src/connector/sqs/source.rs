//! Consuming an SQS queue.
//!
//! `receivers` background tasks long-poll the queue and hand messages to the
//! flow through a channel as deep as the flow's batch (its concurrency, up
//! to 64) or one batch per receiver, whichever is more. A poller first
//! reserves room in that channel for a whole batch (up to ten), so it only
//! receives what the flow has room to hold and a backlog flows through
//! without anything being handed back; while the flow is saturated the
//! channel stays full and receiving pauses.
//!
//! A message that then waits in the channel for half its visibility timeout
//! (the flow is saturated: every slot has been busy that long) goes back to
//! the queue with the flow's saturation delay, 5 minutes by default (the
//! platform's documented behaviour; it counts as a receive), instead of
//! having its lease extended while nothing works on it. Give the queue a
//! visibility timeout of at least twice the algorithm's run time so that an
//! ordinary backlog never meets this. Deletes are batched
//! (`DeleteMessageBatch`), a retry is a visibility change, and a heartbeat
//! extends the visibility of a message while its invocation runs, every
//! third of the visibility timeout counted from the receive: a message that
//! waited in the channel is renewed sooner, not a full interval after its
//! invocation began.
//!
//! On a FIFO queue SQS hands out no message of a group while an earlier one
//! of it is received and not deleted, but one receive may return several
//! messages of a group, in order. A flow with `ordering = "key"` keys by the
//! group (the `GROUP_HEADER` header), so those run one after another, and
//! retries a keyed message in place: a group's messages never pass each
//! other. Messages of one receive share their receive time, so a give-back
//! of stale messages returns a group's messages together.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::SqsConfig;
use super::sink::decode;
use super::{ConsumedQueue, GROUP_HEADER, sdk_error};
use crate::connector::TopicSpec;
use crate::connector::{Delivery, MAX_RETRY_DELAY, Settle, Source, SourceOptions};
use crate::message::{InboundMessage, from_unix_ms};

/// How long `receive` waits for a message before it returns empty.
const POLL: Duration = Duration::from_millis(500);

/// A received message waiting for the flow.
struct Received {
    message: Message,
    at: Instant,
}

/// What the queue says about itself at open.
struct QueueFacts {
    visibility: Duration,
    max_receive_count: Option<u32>,
}

async fn queue_facts(client: &Client, connection: &str, queue: &str) -> anyhow::Result<QueueFacts> {
    let attrs = client
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(sdk_error(e)))
        .with_context(|| {
            format!("broker connection {connection:?} (sqs): cannot open queue {queue}")
        })?;
    let map = attrs.attributes().cloned().unwrap_or_default();
    let visibility = map
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    let max_receive_count = map
        .get(&QueueAttributeName::RedrivePolicy)
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|p| match &p["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .map(|n| n as u32);
    Ok(QueueFacts {
        visibility: Duration::from_secs(visibility.max(1)),
        max_receive_count,
    })
}

/// A consumer of one queue for one flow.
pub struct SqsSource {
    rx: mpsc::Receiver<Received>,
    client: Client,
    queue: String,
    topic: String,
    visibility: Duration,
    max_receive_count: Option<u32>,
    acks: mpsc::UnboundedSender<AckRequest>,
    stop: CancellationToken,
    saturation_delay: Duration,
    flow: String,
    /// Keeps the queue on the connection's readiness checks while this
    /// source lives.
    _consumed: ConsumedQueue,
}

impl Drop for SqsSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SqsSource {
    /// Checks the queue and starts the pollers.
    pub async fn open(
        client: Client,
        connection: &str,
        config: &SqsConfig,
        topic: &TopicSpec,
        options: &SourceOptions,
        consumed: ConsumedQueue,
    ) -> anyhow::Result<Self> {
        let queue = topic.address().to_string();
        let facts = queue_facts(&client, connection, &queue).await?;
        let batch = options.max_batch.clamp(1, 10);
        // Room for every receiver's batch, so the receives overlap; at
        // least the flow's own batch.
        let depth = options.max_batch.max(batch * config.receivers as usize);
        let (tx, rx) = mpsc::channel(depth);
        let stop = CancellationToken::new();
        let poller = Poller {
            client: client.clone(),
            queue: queue.clone(),
            batch: batch as i32,
            wait_secs: config.wait_time_secs,
            flow: options.flow.clone(),
        };
        for _ in 0..config.receivers {
            tokio::spawn(poller.clone().run(tx.clone(), stop.clone()));
        }
        let (acks, ack_rx) = mpsc::unbounded_channel();
        tokio::spawn(delete_batches(client.clone(), queue.clone(), ack_rx));
        Ok(Self {
            rx,
            client,
            queue,
            topic: topic.name.clone(),
            visibility: facts.visibility,
            max_receive_count: facts.max_receive_count,
            acks,
            stop,
            saturation_delay: options.saturation_delay,
            flow: options.flow.clone(),
            _consumed: consumed,
        })
    }

    fn delivery(&self, received: Received) -> Delivery {
        let m = received.message;
        let attribute =
            |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name));
        let attempt = attribute(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let enqueued_at = attribute(MessageSystemAttributeName::SentTimestamp)
            .and_then(|v| v.parse::<u64>().ok())
            .map(from_unix_ms);
        let (payload, mut headers, undecodable) =
            decode(m.body().unwrap_or_default(), m.message_attributes());
        if let Some(group) = attribute(MessageSystemAttributeName::MessageGroupId) {
            headers.push((GROUP_HEADER.to_string(), group.clone()));
        }
        Delivery {
            message: InboundMessage {
                id: m.message_id().unwrap_or_default().to_string(),
                topic: self.topic.clone(),
                payload,
                headers,
                attempt,
                enqueued_at,
                undecodable,
            },
            settle: Box::new(SqsSettle {
                client: self.client.clone(),
                queue: self.queue.clone(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                visibility: self.visibility,
                leased_at: received.at,
                acks: self.acks.clone(),
            }),
        }
    }

    /// Hands back, with the saturation delay, the messages that waited in
    /// the channel for half their visibility timeout: the flow has been
    /// saturated that long. Returns the others.
    async fn drop_stale(&self, batch: Vec<Received>) -> Vec<Received> {
        let (fresh, stale): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|r| r.at.elapsed() < self.visibility / 2);
        if !stale.is_empty() {
            tracing::info!(
                flow = %self.flow,
                queue = %self.queue,
                returned = stale.len(),
                delay = ?self.saturation_delay,
                "Flow is saturated: gave received messages back to the queue with a delay."
            );
            let stale: Vec<Message> = stale.into_iter().map(|r| r.message).collect();
            give_back(&self.client, &self.queue, &stale, self.saturation_delay).await;
        }
        fresh
    }
}

#[async_trait]
impl Source for SqsSource {
    async fn receive(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(POLL, self.rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => anyhow::bail!("the receivers of queue {} stopped", self.queue),
            Err(_) => return Ok(out),
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        for received in self.drop_stale(batch).await {
            out.push(self.delivery(received));
        }
        Ok(out)
    }

    fn native_max_receives(&self) -> Option<u32> {
        self.max_receive_count
    }

    fn key_header(&self) -> &'static str {
        GROUP_HEADER
    }

    async fn close(&mut self) {
        self.stop.cancel();
        // Messages still waiting for the flow go back at once.
        self.rx.close();
        let mut waiting = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            waiting.push(r.message);
        }
        give_back(&self.client, &self.queue, &waiting, Duration::ZERO).await;
    }
}

/// One long-polling receiver.
#[derive(Clone)]
struct Poller {
    client: Client,
    queue: String,
    /// Messages asked for per receive.
    batch: i32,
    wait_secs: u32,
    flow: String,
}

impl Poller {
    async fn run(self, tx: mpsc::Sender<Received>, stop: CancellationToken) {
        let Poller {
            client,
            queue,
            batch,
            wait_secs,
            flow,
        } = self;
        let mut failures = 0u32;
        loop {
            // Wait for room for a whole batch: receiving pauses while the
            // flow is saturated, and nothing received has to be handed back
            // for want of room.
            let mut permits = tokio::select! {
                _ = stop.cancelled() => return,
                p = tx.reserve_many(batch as usize) => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let call = client
                .receive_message()
                .queue_url(&queue)
                .max_number_of_messages(batch)
                .wait_time_seconds(wait_secs as i32)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send();
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = call => r,
            };
            let messages = match result {
                Ok(out) => {
                    failures = 0;
                    out.messages.unwrap_or_default()
                }
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_secs(1u64 << failures.min(5));
                    tracing::error!(
                        flow = %flow,
                        queue = %queue,
                        error = %sdk_error(e),
                        retry_in = ?delay,
                        "Receiving from SQS failed; retrying."
                    );
                    drop(permits);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let now = Instant::now();
            // SQS returns at most `batch`, one permit each; should a server
            // return more, the extra go straight back.
            let mut extra = Vec::new();
            for message in messages {
                match permits.next() {
                    Some(permit) => permit.send(Received { message, at: now }),
                    None => extra.push(message),
                }
            }
            give_back(&client, &queue, &extra, Duration::ZERO).await;
        }
    }
}

/// Makes messages visible again after `delay`.
async fn give_back(client: &Client, queue: &str, messages: &[Message], delay: Duration) {
    for chunk in messages.chunks(10) {
        let entries: Vec<_> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(format!("r{i}"))
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .visibility_timeout(delay.min(MAX_RETRY_DELAY).as_secs() as i32)
                    .build()
                    .ok()
            })
            .collect();
        if let Err(e) = client
            .change_message_visibility_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
        {
            tracing::warn!(queue = %queue, error = %sdk_error(e), "Could not give messages back; they return when their visibility runs out.");
        }
    }
}

struct AckRequest {
    receipt: String,
    done: oneshot::Sender<Result<(), String>>,
}

/// Deletes acknowledged messages ten at a time.
async fn delete_batches(
    client: Client,
    queue: String,
    mut rx: mpsc::UnboundedReceiver<AckRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 10 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let entries: Vec<_> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(format!("d{i}"))
                    .receipt_handle(&r.receipt)
                    .build()
                    .ok()
            })
            .collect();
        let result = client
            .delete_message_batch()
            .queue_url(&queue)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) => {
                let failed: HashMap<String, String> = out
                    .failed()
                    .iter()
                    .map(|f| {
                        (
                            f.id().to_string(),
                            format!("{}: {}", f.code(), f.message().unwrap_or_default()),
                        )
                    })
                    .collect();
                for (i, r) in batch.into_iter().enumerate() {
                    let outcome = match failed.get(&format!("d{i}")) {
                        Some(why) => Err(why.clone()),
                        None => Ok(()),
                    };
                    let _ = r.done.send(outcome);
                }
            }
            Err(e) => {
                let why = sdk_error(e);
                for r in batch {
                    let _ = r.done.send(Err(why.clone()));
                }
            }
        }
    }
}

struct SqsSettle {
    client: Client,
    queue: String,
    receipt: String,
    visibility: Duration,
    /// When the visibility timeout last started: at the receive, then at
    /// each extension.
    leased_at: Instant,
    acks: mpsc::UnboundedSender<AckRequest>,
}

impl SqsSettle {
    async fn set_visibility(&self, d: Duration) -> anyhow::Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue)
            .receipt_handle(&self.receipt)
            .visibility_timeout(d.min(MAX_RETRY_DELAY).as_secs() as i32)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("queue {}: {}", self.queue, sdk_error(e)))?;
        Ok(())
    }
}

#[async_trait]
impl Settle for SqsSettle {
    async fn ack(&mut self) -> anyhow::Result<()> {
        let (done, wait) = oneshot::channel();
        self.acks
            .send(AckRequest {
                receipt: self.receipt.clone(),
                done,
            })
            .map_err(|_| anyhow::anyhow!("the deleter of queue {} stopped", self.queue))?;
        wait.await
            .map_err(|_| anyhow::anyhow!("the deleter of queue {} stopped", self.queue))?
            .map_err(|why| anyhow::anyhow!("queue {}: cannot delete: {why}", self.queue))
    }

    async fn retry(&mut self, delay: Duration) -> anyhow::Result<()> {
        self.set_visibility(delay).await
    }

    async fn extend(&mut self, _lease: Duration) -> anyhow::Result<()> {
        let asked = Instant::now();
        self.set_visibility(self.visibility).await?;
        self.leased_at = asked;
        Ok(())
    }

    fn heartbeat(&self) -> Option<Duration> {
        Some((self.visibility / 3).max(Duration::from_millis(500)))
    }

    fn leased_since(&self) -> Option<Instant> {
        Some(self.leased_at)
    }
}

/// Reads messages without keeping them: received with a visibility timeout
/// of zero, so they stay available (each read counts as a receive).
pub async fn peek(
    client: &Client,
    topic: &TopicSpec,
    max: usize,
) -> anyhow::Result<Vec<InboundMessage>> {
    let mut seen: HashMap<String, InboundMessage> = HashMap::new();
    let mut empty_rounds = 0;
    while seen.len() < max && empty_rounds < 3 {
        let out = client
            .receive_message()
            .queue_url(topic.address())
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("queue {}: {}", topic.address(), sdk_error(e)))?;
        let before = seen.len();
        for m in out.messages.unwrap_or_default() {
            let (payload, headers, undecodable) =
                decode(m.body().unwrap_or_default(), m.message_attributes());
            let id = m.message_id().unwrap_or_default().to_string();
            let attempt = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            seen.entry(id.clone()).or_insert(InboundMessage {
                id,
                topic: topic.name.clone(),
                payload,
                headers,
                attempt,
                enqueued_at: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(from_unix_ms),
                undecodable,
            });
        }
        if seen.len() == before {
            empty_rounds += 1;
        }
    }
    let mut out: Vec<InboundMessage> = seen.into_values().collect();
    out.sort_by_key(|m| m.enqueued_at);
    out.truncate(max);
    Ok(out)
}

/// Deletes the message `id`: receives until it shows up.
pub async fn remove(client: &Client, topic: &TopicSpec, id: &str) -> anyhow::Result<bool> {
    for _ in 0..20 {
        let out = client
            .receive_message()
            .queue_url(topic.address())
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("queue {}: {}", topic.address(), sdk_error(e)))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(false);
        }
        if let Some(m) = messages.iter().find(|m| m.message_id() == Some(id)) {
            client
                .delete_message()
                .queue_url(topic.address())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("queue {}: {}", topic.address(), sdk_error(e)))?;
            return Ok(true);
        }
    }
    Ok(false)
}

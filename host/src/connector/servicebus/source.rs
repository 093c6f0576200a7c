//! Consuming a Service Bus queue with peek-lock.
//!
//! `receivers` background tasks peek-lock one message at a time into a
//! channel as deep as the flow's batch, waiting for room first so receiving
//! pauses while the flow is saturated (a peek-lock takes exactly one
//! message, so nothing is ever received that the flow has no room for).
//! Completing deletes the message; a retry abandons it (unlock): the REST
//! API has no delayed abandon, so for a delay the router keeps the lock,
//! renewing it, until the delay has passed, then unlocks. A router that dies
//! meanwhile loses the lock and the broker redelivers after the lock
//! duration.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::headers::Headers;
use azure_messaging_servicebus::service_bus::{PeekLockResponse, QueueClient};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::ServiceBusConfig;
use super::sink::decode;
use super::{describe, status_meaning};
use crate::connector::TopicSpec;
use crate::connector::{Delivery, Settle, Source, SourceOptions};
use crate::message::InboundMessage;

/// How long `receive` waits for a message before it returns empty.
const POLL: Duration = Duration::from_millis(500);

/// Response headers that are HTTP's or the broker's, not custom properties.
fn is_standard(name: &str) -> bool {
    matches!(
        name,
        "brokerproperties"
            | "location"
            | "content-type"
            | "content-length"
            | "date"
            | "server"
            | "transfer-encoding"
            | "strict-transport-security"
            | "connection"
            | "keep-alive"
    )
}

/// Every response header, for the custom properties.
struct AllHeaders(Vec<(String, String)>);

impl From<Headers> for AllHeaders {
    fn from(h: Headers) -> Self {
        Self(
            h.iter()
                .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.as_str().to_string()))
                .collect(),
        )
    }
}

/// One locked message.
struct Locked {
    response: Arc<PeekLockResponse>,
    lock: Duration,
    /// When the lock was taken.
    at: std::time::Instant,
}

/// Turns a peek-lock answer into a locked message, or `None` for "nothing".
fn locked(response: PeekLockResponse) -> Option<Locked> {
    let properties = response.broker_properties()?;
    let until: SystemTime = properties.locked_until_utc.into();
    let lock = until
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(Duration::from_secs(1));
    Some(Locked {
        response: Arc::new(response),
        lock,
        at: std::time::Instant::now(),
    })
}

fn to_message(topic: &TopicSpec, response: &PeekLockResponse) -> InboundMessage {
    let properties = response.broker_properties();
    let custom: Vec<(String, String)> = response
        .custom_properties::<AllHeaders>()
        .map(|h| h.0)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !is_standard(k))
        .collect();
    let body = response.body();
    let (payload, mut headers, undecodable) = decode(body.as_bytes(), &custom);
    let (id, attempt, enqueued_at) = match &properties {
        Some(p) => {
            headers.push(("sb-message-id".into(), p.message_id.clone()));
            headers.push(("sb-sequence-number".into(), p.sequence_number.to_string()));
            (
                p.message_id.clone(),
                p.delivery_count.max(1) as u32,
                p.enqueued_time_utc.map(SystemTime::from),
            )
        }
        None => (String::new(), 1, None),
    };
    InboundMessage {
        id,
        topic: topic.name.clone(),
        payload,
        headers,
        attempt,
        enqueued_at,
        undecodable,
    }
}

/// A consumer of one queue for one flow.
pub struct ServiceBusSource {
    rx: mpsc::Receiver<Locked>,
    topic: TopicSpec,
    stop: CancellationToken,
}

impl Drop for ServiceBusSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ServiceBusSource {
    /// Checks access to the queue (a peek-lock that does not wait) and
    /// starts the receivers.
    pub async fn open(
        client: QueueClient,
        connection: &str,
        config: &ServiceBusConfig,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Self> {
        let first = client
            .peek_lock_message2(Some(Duration::ZERO))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "broker connection {connection:?} (servicebus): cannot open queue {}: {}",
                    topic.address(),
                    describe(&e)
                )
            })?;
        let status = u16::from(*first.status());
        if !(200..300).contains(&status) {
            anyhow::bail!(
                "broker connection {connection:?} (servicebus): cannot open queue {}: {}",
                topic.address(),
                status_meaning(status)
            );
        }
        let (tx, rx) = mpsc::channel(options.max_batch.max(1));
        if let Some(m) = locked(first) {
            let _ = tx.try_send(m);
        }
        let stop = CancellationToken::new();
        for _ in 0..config.receivers {
            tokio::spawn(receive_loop(
                client.clone(),
                topic.address().to_string(),
                options.flow.clone(),
                Duration::from_secs(config.receive_wait_secs),
                tx.clone(),
                stop.clone(),
            ));
        }
        Ok(Self {
            rx,
            topic: topic.clone(),
            stop,
        })
    }
}

async fn receive_loop(
    client: QueueClient,
    queue: String,
    flow: String,
    wait: Duration,
    tx: mpsc::Sender<Locked>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = tx.reserve() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = client.peek_lock_message2(Some(wait)) => a,
        };
        match answer {
            Ok(response) if (200..300).contains(&u16::from(*response.status())) => {
                failures = 0;
                if let Some(m) = locked(response) {
                    permit.send(m);
                }
            }
            outcome => {
                failures += 1;
                let why = match outcome {
                    Ok(r) => status_meaning(u16::from(*r.status())),
                    Err(e) => describe(&e),
                };
                let delay = Duration::from_secs(1u64 << failures.min(5));
                tracing::error!(
                    flow = %flow,
                    queue = %queue,
                    error = %why,
                    retry_in = ?delay,
                    "Receiving from Service Bus failed; retrying."
                );
                drop(permit);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[async_trait]
impl Source for ServiceBusSource {
    async fn receive(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        let first = match tokio::time::timeout(POLL, self.rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => anyhow::bail!("the receivers of queue {} stopped", self.topic.address()),
            Err(_) => return Ok(Vec::new()),
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        Ok(batch
            .into_iter()
            .map(|m| Delivery {
                message: to_message(&self.topic, &m.response),
                settle: Box::new(ServiceBusSettle {
                    response: m.response,
                    lock: m.lock,
                    locked_at: m.at,
                }),
            })
            .collect())
    }

    async fn close(&mut self) {
        self.stop.cancel();
        self.rx.close();
        // Locked messages nobody will handle go back at once.
        while let Ok(m) = self.rx.try_recv() {
            let _ = m.response.unlock_message().await;
        }
    }
}

struct ServiceBusSettle {
    response: Arc<PeekLockResponse>,
    lock: Duration,
    /// When the lock was taken or last renewed.
    locked_at: std::time::Instant,
}

#[async_trait]
impl Settle for ServiceBusSettle {
    async fn ack(&mut self) -> anyhow::Result<()> {
        self.response
            .delete_message()
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("cannot complete: {}", describe(&e)))
    }

    async fn retry(&mut self, delay: Duration) -> anyhow::Result<()> {
        if delay < Duration::from_secs(1) {
            return self
                .response
                .unlock_message()
                .await
                .map_err(|e| anyhow::anyhow!("cannot abandon: {}", describe(&e)));
        }
        // Hold the lock for the delay, then abandon.
        let (response, every) = (self.response.clone(), self.lock / 3);
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + delay;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(every)).await;
                if tokio::time::Instant::now() < until
                    && response.renew_message_lock().await.is_err()
                {
                    // The lock is gone: the broker redelivers by itself.
                    return;
                }
            }
            if let Err(e) = response.unlock_message().await {
                tracing::warn!(error = %describe(&e), "Could not abandon a message after its retry delay; it returns when its lock expires.");
            }
        });
        Ok(())
    }

    async fn extend(&mut self, _lease: Duration) -> anyhow::Result<()> {
        let asked = std::time::Instant::now();
        self.response
            .renew_message_lock()
            .await
            .map_err(|e| anyhow::anyhow!("cannot renew the lock: {}", describe(&e)))?;
        self.locked_at = asked;
        Ok(())
    }

    fn heartbeat(&self) -> Option<Duration> {
        Some((self.lock / 3).max(Duration::from_millis(300)))
    }

    fn leased_since(&self) -> Option<std::time::Instant> {
        Some(self.locked_at)
    }
}

/// Reads up to `max` messages by locking and unlocking them (each read
/// counts as a delivery).
pub async fn peek(
    client: &QueueClient,
    topic: &TopicSpec,
    max: usize,
) -> anyhow::Result<Vec<InboundMessage>> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    while out.len() < max {
        let r = client
            .peek_lock_message2(Some(Duration::ZERO))
            .await
            .map_err(|e| anyhow::anyhow!("queue {}: {}", topic.address(), describe(&e)))?;
        let Some(m) = locked(r) else { break };
        out.push(to_message(topic, &m.response));
        held.push(m);
    }
    for m in held {
        let _ = m.response.unlock_message().await;
    }
    Ok(out)
}

/// Deletes the message `id`, locking messages until it shows up.
pub async fn remove(client: &QueueClient, id: &str) -> anyhow::Result<bool> {
    let mut held = Vec::new();
    let mut found = false;
    for _ in 0..10_000 {
        let r = client
            .peek_lock_message2(Some(Duration::ZERO))
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        let Some(m) = locked(r) else { break };
        if m.response
            .broker_properties()
            .is_some_and(|p| p.message_id == id)
        {
            m.response
                .delete_message()
                .await
                .map_err(|e| anyhow::anyhow!("cannot complete: {}", describe(&e)))?;
            found = true;
            break;
        }
        held.push(m);
    }
    for m in held {
        let _ = m.response.unlock_message().await;
    }
    Ok(found)
}

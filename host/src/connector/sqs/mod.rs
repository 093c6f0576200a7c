//! Amazon SQS: long-polled receives, deletes once effects are durable,
//! visibility changes for retries and heartbeats, batched sends.
//!
//! Semantics: the receive count is SQS's `ApproximateReceiveCount`. If the
//! queue has a redrive policy, its `maxReceiveCount` replaces the flow's
//! `max_receives` and SQS dead-letters by itself (the router still sends its
//! envelope first when the flow has a dead-letter topic).
//!
//! FIFO queues (names ending in `.fifo`): a received message carries its
//! `MessageGroupId` in the header [`GROUP_HEADER`], the key a flow with
//! `ordering = "key"` orders by; a published message takes its group from
//! that header (or [`DEFAULT_GROUP`]) and a fresh deduplication id, so two
//! equal outputs are two messages.
//!
//! Permissions: a consumed queue needs only `ReceiveMessage`,
//! `DeleteMessage`, `ChangeMessageVisibility` and `GetQueueAttributes` on
//! that queue (the queue-owner role of a cross-account setup), a published
//! one only `SendMessage`. Readiness asks `GetQueueAttributes` of the queues
//! that flows consume; only `topics list` calls `ListQueues`, and says so
//! when it is refused.

mod config;
mod sink;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;

pub use config::SqsConfig;

use super::{ConnectContext, Connection, PublishError, Source, SourceOptions};
use crate::connector::TopicSpec;
use crate::message::InboundMessage;

/// The largest body SQS takes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The header of a FIFO queue's `MessageGroupId`: set on every message
/// received from a FIFO queue (it is the key of `ordering = "key"`), and
/// read when publishing to one (the message's group; without it, the
/// group `eventflow`). It never becomes a message attribute.
pub const GROUP_HEADER: &str = "sqs-message-group-id";

/// The group of a message published to a FIFO queue without a
/// [`GROUP_HEADER`].
pub const DEFAULT_GROUP: &str = "eventflow";

/// Whether a queue is a FIFO queue: SQS requires their names to end in
/// `.fifo`.
pub fn is_fifo(queue: &str) -> bool {
    queue.ends_with(".fifo")
}

/// A connection to SQS.
pub struct SqsConnection {
    name: String,
    client: Client,
    config: SqsConfig,
    consumed: ConsumedQueues,
}

/// The queues that flows consume through a connection, with how many
/// sources hold each: readiness checks these (and nothing else).
#[derive(Clone, Default)]
pub(crate) struct ConsumedQueues(Arc<Mutex<HashMap<String, usize>>>);

impl ConsumedQueues {
    /// Counts one more source of `queue` until the returned guard drops.
    pub(crate) fn hold(&self, queue: &str) -> ConsumedQueue {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.to_string())
            .or_default() += 1;
        ConsumedQueue {
            queues: self.clone(),
            queue: queue.to_string(),
        }
    }

    fn list(&self) -> Vec<String> {
        let mut queues: Vec<String> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        queues.sort();
        queues
    }
}

/// One source's hold on a consumed queue; see [`ConsumedQueues::hold`].
pub(crate) struct ConsumedQueue {
    queues: ConsumedQueues,
    queue: String,
}

impl Drop for ConsumedQueue {
    fn drop(&mut self) {
        let mut map = self.queues.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.queue) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.queue);
            }
        }
    }
}

/// The longest error text an SQS call contributes to a log line or a flow's
/// last error.
const MAX_ERROR_CHARS: usize = 300;

/// One line saying why an SQS call failed: the service's error code and
/// message when SQS answered, else the chain of causes (`dispatch failure:
/// io error: ... Connection refused`). Never the SDK's debug output (raw
/// HTTP responses and headers), never more than one line.
pub(crate) fn sdk_error<E>(e: SdkError<E>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    let text = match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                // An answer the SDK could not parse (an XML error page from
                // an endpoint that speaks the query protocol, say): its
                // HTTP status and the `<Code>`/`<Message>` it carries.
                _ => {
                    let raw = service.raw();
                    let body = raw
                        .body()
                        .bytes()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    let tag = |t: &str| {
                        let open = format!("<{t}>");
                        let start = body.find(&open)? + open.len();
                        let end = body[start..].find(&format!("</{t}>"))?;
                        Some(body[start..start + end].to_string())
                    };
                    match (tag("Code"), tag("Message")) {
                        (Some(code), Some(message)) => {
                            format!("HTTP {}: {code}: {message}", raw.status().as_u16())
                        }
                        (Some(code), None) => format!("HTTP {}: {code}", raw.status().as_u16()),
                        _ => format!("HTTP {}: {}", raw.status().as_u16(), error_chain(&e)),
                    }
                }
            }
        }
        _ => error_chain(&e),
    };
    one_line(&text, MAX_ERROR_CHARS)
}

/// `error: cause: cause`, skipping causes whose text the previous one
/// already includes.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut last = text.clone();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !last.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        last = part;
        source = cause.source();
    }
    text
}

/// Collapses whitespace (newlines included) and cuts at `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max).collect();
    cut.push_str("...");
    cut
}

/// Whether SQS answered that the queue does not exist: the flow consuming
/// it reports that, not readiness (the broker itself answers).
fn is_missing_queue<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(
        e.code(),
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

impl SqsConnection {
    /// Builds the client. Nothing is sent until a flow opens a queue.
    pub async fn open(config: &SqsConfig, _ctx: &ConnectContext) -> anyhow::Result<Self> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(
                config.attempt_timeout_secs + u64::from(config.wait_time_secs),
            ))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .timeout_config(timeouts);
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let mut sdk = loader.load().await;
        if let Some(role) = &config.role_arn {
            let mut provider = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name(format!("eventflow-{}", config.name))
                .configure(&sdk);
            if let Some(id) = &config.external_id {
                provider = provider.external_id(id);
            }
            let provider = provider.build().await;
            sdk = sdk
                .into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build();
        }
        Ok(Self {
            name: config.name.clone(),
            client: Client::new(&sdk),
            config: config.clone(),
            consumed: ConsumedQueues::default(),
        })
    }

    /// Asks `GetQueueAttributes` of one consumed queue: the one action of
    /// the consumer's permissions that has no side effect.
    async fn check_queue(&self, queue: &str) -> Result<(), String> {
        let call = self
            .client
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send();
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_missing_queue(&e) => Ok(()),
            Ok(Err(e)) => Err(format!("queue {queue}: {}", sdk_error(e))),
            Err(_) => Err(format!("queue {queue}: SQS did not answer within 10 s")),
        }
    }

    /// With no queue consumed yet there is nothing SQS would let the
    /// consumer role ask; readiness is that the endpoint is reachable.
    async fn check_endpoint(&self) -> Result<(), String> {
        let (host, port) = match &self.config.endpoint_url {
            Some(url) => {
                let url =
                    reqwest::Url::parse(url).map_err(|e| format!("endpoint_url {url:?}: {e}"))?;
                (
                    url.host_str().unwrap_or_default().to_string(),
                    url.port_or_known_default().unwrap_or(443),
                )
            }
            None => (format!("sqs.{}.amazonaws.com", self.config.region), 443),
        };
        crate::connector::tcp_reachable(&host, port).await
    }
}

#[async_trait]
impl Connection for SqsConnection {
    async fn source(
        &self,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Box<dyn Source>> {
        let source = source::SqsSource::open(
            self.client.clone(),
            &self.name,
            &self.config,
            topic,
            options,
            self.consumed.hold(topic.address()),
        )
        .await?;
        Ok(Box::new(source))
    }

    async fn publish(
        &self,
        topic: &TopicSpec,
        messages: Vec<crate::message::OutboundMessage>,
    ) -> Result<(), PublishError> {
        sink::publish(&self.client, &self.name, topic, messages).await
    }

    fn max_payload_bytes(&self) -> usize {
        MAX_BODY_BYTES
    }

    async fn check(&self) -> Result<(), String> {
        // Never ListQueues: the queue-owner role does not grant it.
        let queues = self.consumed.list();
        if queues.is_empty() {
            return self.check_endpoint().await;
        }
        let checks = futures::future::join_all(queues.iter().map(|q| self.check_queue(q))).await;
        let errors: Vec<String> = checks.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn peek(&self, topic: &TopicSpec, max: usize) -> anyhow::Result<Vec<InboundMessage>> {
        source::peek(&self.client, topic, max).await
    }

    async fn remove(&self, topic: &TopicSpec, id: &str) -> anyhow::Result<bool> {
        source::remove(&self.client, topic, id).await
    }

    async fn list_topics(&self) -> anyhow::Result<Option<Vec<String>>> {
        let mut urls = Vec::new();
        let mut next = None;
        loop {
            let page = self
                .client
                .list_queues()
                .max_results(1000)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!(sdk_error(e)))
                .with_context(|| format!("cannot list the queues of {}", self.name))?;
            urls.extend(page.queue_urls().iter().cloned());
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        Ok(Some(urls))
    }
}

/// Opens a connection, for [`super::connect`].
pub async fn open(config: &SqsConfig, ctx: &ConnectContext) -> anyhow::Result<Arc<dyn Connection>> {
    Ok(Arc::new(SqsConnection::open(config, ctx).await?))
}

//! Broker connectors: one folder per broker, the same files in each
//! (`config.rs` for the inert configuration, `source.rs` for consuming,
//! `sink.rs` for publishing, `mod.rs` for the [`Connection`]).
//!
//! The flow worker only sees the traits below. A [`Source`] hands out
//! [`Delivery`]s, each with a [`Settle`] handle; the worker settles every
//! delivery exactly once (ack, or retry after a delay) after the message's
//! effects are durable. Dead-lettering is the worker's job: it publishes an
//! envelope through [`Connection::publish`] and then acks.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::message::{InboundMessage, OutboundMessage};

pub mod azure;
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "servicebus")]
pub mod servicebus;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod topic;

pub use topic::TopicSpec;

/// A broker connection as configured: `kind` picks the connector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BrokerSpec {
    /// The durable broker built into the router (the default).
    Embedded(embedded::EmbeddedConfig),
    /// An Apache Kafka cluster.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaConfig),
    /// Azure Event Hubs through its Kafka endpoint.
    #[cfg(feature = "kafka")]
    Eventhubs(kafka::EventHubsConfig),
    /// Amazon SQS queues.
    #[cfg(feature = "sqs")]
    Sqs(sqs::SqsConfig),
    /// Azure Service Bus queues.
    #[cfg(feature = "servicebus")]
    Servicebus(servicebus::ServiceBusConfig),
}

impl BrokerSpec {
    /// The connection's name.
    pub fn name(&self) -> &str {
        match self {
            BrokerSpec::Embedded(c) => &c.name,
            #[cfg(feature = "kafka")]
            BrokerSpec::Kafka(c) => &c.name,
            #[cfg(feature = "kafka")]
            BrokerSpec::Eventhubs(c) => &c.name,
            #[cfg(feature = "sqs")]
            BrokerSpec::Sqs(c) => &c.name,
            #[cfg(feature = "servicebus")]
            BrokerSpec::Servicebus(c) => &c.name,
        }
    }

    /// The connector kind, as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerSpec::Embedded(_) => "embedded",
            #[cfg(feature = "kafka")]
            BrokerSpec::Kafka(_) => "kafka",
            #[cfg(feature = "kafka")]
            BrokerSpec::Eventhubs(_) => "eventhubs",
            #[cfg(feature = "sqs")]
            BrokerSpec::Sqs(_) => "sqs",
            #[cfg(feature = "servicebus")]
            BrokerSpec::Servicebus(_) => "servicebus",
        }
    }

    /// Checks fields that serde cannot; errors name the field relative to
    /// the broker's table.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            BrokerSpec::Embedded(_) => Ok(()),
            #[cfg(feature = "kafka")]
            BrokerSpec::Kafka(c) => c.validate(),
            #[cfg(feature = "kafka")]
            BrokerSpec::Eventhubs(c) => c.validate(),
            #[cfg(feature = "sqs")]
            BrokerSpec::Sqs(c) => c.validate(),
            #[cfg(feature = "servicebus")]
            BrokerSpec::Servicebus(c) => c.validate(),
        }
    }

    /// The configuration as shown to users: credentials redacted.
    pub fn redacted(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// What a connector needs from the router to connect.
#[derive(Clone)]
pub struct ConnectContext {
    /// The router's state directory, for connectors that keep files there.
    pub state_dir: std::path::PathBuf,
    /// What to do with a damaged store file (embedded broker).
    pub damaged: crate::state::Damaged,
    /// The state store, to resolve `{ secret = "..." }` credentials.
    pub state: Option<crate::state::StateStore>,
}

/// Opens a live connection for `spec`.
///
/// Errors are setup errors (bad credentials, unreachable broker, a store that
/// another router holds); the router reports them naming the connection.
pub async fn connect(
    spec: &BrokerSpec,
    ctx: &ConnectContext,
) -> anyhow::Result<std::sync::Arc<dyn Connection>> {
    match spec {
        BrokerSpec::Embedded(c) => Ok(std::sync::Arc::new(
            embedded::EmbeddedConnection::open(c, ctx).await?,
        )),
        #[cfg(feature = "kafka")]
        BrokerSpec::Kafka(c) => kafka::open(c, ctx).await,
        #[cfg(feature = "kafka")]
        BrokerSpec::Eventhubs(c) => kafka::open_eventhubs(c, ctx).await,
        #[cfg(feature = "sqs")]
        BrokerSpec::Sqs(c) => sqs::open(c, ctx).await,
        #[cfg(feature = "servicebus")]
        BrokerSpec::Servicebus(c) => servicebus::open(c, ctx).await,
    }
}

/// How a flow consumes a topic.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The flow's name.
    pub flow: String,
    /// How long a received message stays invisible to other consumers before
    /// the broker redelivers it, unless it is settled or extended first.
    pub lease: Duration,
    /// The most messages the flow will ask for in one `receive`.
    pub max_batch: usize,
    /// Kafka consumer group.
    pub group_id: String,
    /// SQS: how long messages received while saturated wait before redelivery.
    pub saturation_delay: Duration,
    /// Kafka: messages of one partition in flight at once (without
    /// `partition_turns`, not settled yet).
    pub in_flight_per_partition: usize,
    /// Kafka: a partition's messages publish their outputs in offset order
    /// (`ordering = "partition"`, the default there); `false` with
    /// `ordering = "key"` (the flow keeps each key's order) or `"none"`.
    pub partition_turns: bool,
    /// Where connectors report what only they know (Kafka's consumer lag).
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The payload is over the broker's size limit.
    #[error("message of {size} bytes is larger than the broker's limit of {limit} bytes")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The broker's limit.
        limit: usize,
    },
    /// The broker itself refused the message as too large: its own limit
    /// (a Kafka topic's `max.message.bytes`, say) is below what the
    /// connection allows. Retrying cannot help, as with `TooLarge`.
    #[error("the broker refused a message of {size} bytes as too large: {reason}")]
    RefusedTooLarge {
        /// The message's size as the router counts it.
        size: usize,
        /// What the broker said.
        reason: String,
    },
    /// The broker did not take the message; it may be retried.
    #[error(transparent)]
    Broker(#[from] anyhow::Error),
}

/// Identifies a store that can write a delivery's outputs and its
/// acknowledgement in one transaction (the embedded broker's file): a
/// delivery whose [`Settle::local_store`] equals a connection's
/// [`Connection::local_store`] can settle with outputs to that connection's
/// topics through [`Settle::ack_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalStore(usize);

impl LocalStore {
    /// The identity of the store behind `store` (its address, which stays
    /// the same while any clone of the `Arc` lives).
    pub fn of<T>(store: &std::sync::Arc<T>) -> Self {
        Self(std::sync::Arc::as_ptr(store) as *const () as usize)
    }
}

impl PublishError {
    /// Whether the message is too large for the broker, by the router's
    /// limit or the broker's own: a permanent refusal, never retried as is.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. } | Self::RefusedTooLarge { .. })
    }
}

/// The wait for enqueued messages to be durable.
pub type Delivering =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PublishError>> + Send>>;

/// A live connection to one broker, shared by all flows that use it.
#[async_trait]
pub trait Connection: Send + Sync + 'static {
    /// Opens a consumer of `topic` for one flow. The flow calls
    /// [`Source::receive`] in a loop and drops the source when it stops.
    /// An error is a setup error: the flow reports it and tries again later.
    async fn source(
        &self,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Box<dyn Source>>;

    /// Publishes messages to `topic`, in order, and returns once the broker
    /// holds all of them durably. On error some may have been published: the
    /// caller retries the whole batch, so consumers must tolerate duplicates
    /// (at-least-once).
    async fn publish(
        &self,
        topic: &TopicSpec,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), PublishError>;

    /// Hands `messages` to the broker's producer, in order, and returns the
    /// wait for their delivery. A publish that starts after this returns is
    /// delivered after these messages (per partition, on Kafka). The default
    /// publishes completely before it returns, which keeps that order on any
    /// broker; Kafka returns as soon as librdkafka has them queued.
    async fn enqueue(
        &self,
        topic: &TopicSpec,
        messages: Vec<OutboundMessage>,
    ) -> Result<Delivering, PublishError> {
        self.publish(topic, messages).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// The largest payload the broker accepts, in bytes.
    fn max_payload_bytes(&self) -> usize;

    /// Checks that the broker answers; the error says why not.
    async fn check(&self) -> Result<(), String>;

    /// Reads up to `max` messages of `topic` without consuming them, for
    /// inspecting dead-letter topics. Brokers that cannot peek say so.
    async fn peek(&self, topic: &TopicSpec, max: usize) -> anyhow::Result<Vec<InboundMessage>>;

    /// Removes the message `id` from `topic` (dead-letter replay). Returns
    /// whether it was there.
    async fn remove(&self, topic: &TopicSpec, id: &str) -> anyhow::Result<bool>;

    /// The broker's own names of its topics, for brokers that can list them
    /// (`Ok(None)` for those that cannot; declared topics are listed anyway).
    async fn list_topics(&self) -> anyhow::Result<Option<Vec<String>>> {
        Ok(None)
    }

    /// The store this connection's topics live in, when deliveries from it
    /// can settle together with publishes to it (see [`LocalStore`]).
    fn local_store(&self) -> Option<LocalStore> {
        None
    }

    /// The router is stopping and its flows have stopped: write down what
    /// only memory holds. The connection stays usable.
    async fn close(&self) {}
}

/// A consumer of one topic for one flow.
#[async_trait]
pub trait Source: Send {
    /// Waits for up to `max` messages (`max` ≥ 1) and returns them leased:
    /// invisible to other consumers until settled or the lease runs out.
    ///
    /// Returns an empty batch when nothing arrived within a short poll
    /// interval, so the caller can check for shutdown between calls. An error
    /// means the broker is unreachable or refused the call: the caller logs
    /// it, waits with backoff and calls `receive` again; the source
    /// reconnects by itself.
    async fn receive(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>>;

    /// The broker's own maximum receive count when the broker dead-letters by
    /// itself (an SQS redrive policy), so the flow leaves that to it.
    fn native_max_receives(&self) -> Option<u32> {
        None
    }

    /// The header that carries a message's key, which `ordering = "key"`
    /// orders by ([`crate::message::KEY_HEADER`] on the embedded broker,
    /// the record key's header on Kafka, the message group's on SQS).
    fn key_header(&self) -> &'static str {
        crate::message::KEY_HEADER
    }

    /// Where the flow reads the consumer's partition assignment from, for
    /// sources that consume partitions (Kafka); `None` for the others.
    /// Called once, after the source is opened; the flow's status and
    /// readiness read it whenever they are asked.
    fn assignment(&self) -> Option<std::sync::Arc<dyn Assignment>> {
        None
    }

    /// Called once when the flow stops, after every delivery is settled:
    /// commit what needs committing and leave the consumer group.
    async fn close(&mut self) {}
}

/// A consumer's share of a partitioned topic, read by the flow's status.
pub trait Assignment: Send + Sync {
    /// The partitions held now.
    fn partitions(&self) -> PartitionAssignment;
}

/// A consumer's partition assignment at one moment.
#[derive(Debug, Clone, Copy)]
pub struct PartitionAssignment {
    /// Partitions held.
    pub partitions: usize,
    /// Since when the consumer has had no assignment at all (it is joining
    /// its group, or rebalancing); `None` once the group gave it one, even
    /// an empty one (more consumers in the group than partitions).
    pub unassigned_since: Option<std::time::Instant>,
}

/// One received message and the handle that settles it.
pub struct Delivery {
    /// The message.
    pub message: InboundMessage,
    /// Settles the message with the broker.
    pub settle: Box<dyn Settle>,
}

/// The longest delay [`Settle::retry`] is asked for: SQS's visibility limit,
/// 12 hours. Callers bound their delays by it, so every broker can honour it.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 3600);

/// Settles one delivery. The worker calls exactly one of `ack` or `retry`,
/// once, possibly after some `extend` calls; after an error it may call the
/// same method again later.
#[async_trait]
pub trait Settle: Send + Sync {
    /// The message is done with: delete it (commit past it on Kafka).
    async fn ack(&mut self) -> anyhow::Result<()>;

    /// Redeliver the message no sooner than `delay` from now, counting one
    /// more receive. `delay` is at most [`MAX_RETRY_DELAY`].
    async fn retry(&mut self, delay: Duration) -> anyhow::Result<()>;

    /// The invocation is still running: keep the message leased for `lease`
    /// from now. Only called when [`Settle::heartbeat`] returns an interval.
    async fn extend(&mut self, _lease: Duration) -> anyhow::Result<()> {
        Ok(())
    }

    /// How often the worker should call `extend` while it works on the
    /// message; `None` when leases need no renewal.
    fn heartbeat(&self) -> Option<Duration> {
        None
    }

    /// When the lease was taken or last renewed, if the broker knows: the
    /// first heartbeat then comes one interval after it, not one interval
    /// after the work started (a message that waited for the flow has less
    /// of its lease left). `None`: count from now.
    fn leased_since(&self) -> Option<std::time::Instant> {
        None
    }

    /// The store this delivery can settle in together with publishes to
    /// it; `None` when it cannot (then [`Settle::ack_with`] is not called).
    fn local_store(&self) -> Option<LocalStore> {
        None
    }

    /// Publishes `outputs` (per topic, in order) to the delivery's own
    /// store and acknowledges the message in one atomic step: after a crash
    /// either both happened or neither. Only called when
    /// [`Settle::local_store`] is the store of every topic in `outputs`. On
    /// an error nothing was published and the message is still held, so
    /// the caller may `retry` it.
    async fn ack_with(
        &mut self,
        _outputs: Vec<(TopicSpec, Vec<OutboundMessage>)>,
    ) -> Result<(), PublishError> {
        Err(PublishError::Broker(anyhow::anyhow!(
            "this broker cannot publish and acknowledge in one step"
        )))
    }

    /// Waits until this message may publish its effects. Sources that keep
    /// an order (a Kafka partition) let a message through once every earlier
    /// message of its partition has passed its turn; the others at once.
    async fn wait_turn(&mut self) {}

    /// This message's effects are handed to the producer (enqueued, in
    /// order), or it has none: the next message may take its turn. `ack`
    /// and `retry` pass the turn too, as does dropping the settle.
    fn pass_turn(&mut self) {}
}

/// Readiness of an endpoint that has nothing cheaper to ask: whether a TCP
/// connection to `host:port` opens within 5 s.
pub(crate) async fn tcp_reachable(host: &str, port: u16) -> Result<(), String> {
    match tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot reach {host}:{port}: {e}")),
        Err(_) => Err(format!("{host}:{port} did not answer within 5 s")),
    }
}

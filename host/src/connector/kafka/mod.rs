//! Apache Kafka, and Azure Event Hubs through its Kafka endpoint, on
//! rdkafka (with the librdkafka it builds).
//!
//! At-least-once: offsets are stored only once a message is settled, and
//! only contiguously per partition (a partition has one message in flight,
//! which also keeps successes in partition order); stored offsets are
//! committed every second, on revoke and on close. A retry is a copy of the
//! message produced back to its partition with the attempt count in a
//! header, after a delay spent in the router (bounded to 30 s) while the
//! consumer keeps polling. Produces are idempotent with `acks=all`, and
//! confirmed before the source message is settled.

mod config;
mod consumer;
mod offsets;
mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer as _};

pub use config::{EventHubsConfig, KafkaConfig, SecurityProtocol, check_properties};

use super::{ConnectContext, Connection, PublishError, Source, SourceOptions};
use crate::connector::TopicSpec;
use crate::message::InboundMessage;

/// Headers the router carries on Kafka messages.
pub const ATTEMPT_HEADER: &str = "eventflow-attempt";
/// The id a message keeps across retries.
pub const MESSAGE_ID_HEADER: &str = "eventflow-message-id";
/// The record key, as a header on outbound messages.
pub const KEY_HEADER: &str = "kafka-key";

/// The connection's idempotent producer, replaced when it fails: an
/// idempotent producer whose broker lost its state (a cluster rebuilt, a
/// broker without persistent storage) cannot deliver again, and a fresh one
/// (a new producer id) can.
pub struct Producers {
    config: ClientConfig,
    name: String,
    current: std::sync::RwLock<(u64, FutureProducer)>,
}

impl Producers {
    fn new(name: &str, config: ClientConfig) -> anyhow::Result<Self> {
        let producer = config
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create a Kafka producer for {name:?}: {e}"))?;
        Ok(Self {
            config,
            name: name.to_string(),
            current: std::sync::RwLock::new((0, producer)),
        })
    }

    /// The producer and its generation.
    pub fn get(&self) -> (u64, FutureProducer) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// After a failed delivery on `producer` (of generation `generation`):
    /// replaces it if it cannot deliver any more: a fatal error, lost
    /// idempotence state, or a delivery timeout (an idempotent producer
    /// whose broker lost its state times out forever). Other errors (a
    /// record too large, an unknown topic) leave it: replacing it while
    /// records of other messages are still queued on it could let later
    /// records overtake them.
    pub fn failed(
        &self,
        generation: u64,
        producer: &FutureProducer,
        error: &rdkafka::error::KafkaError,
    ) {
        use rdkafka::types::RDKafkaErrorCode as C;
        let broken = producer.client().fatal_error().is_some()
            || matches!(
                error.rdkafka_error_code(),
                Some(
                    C::Fatal
                        | C::MessageTimedOut
                        | C::OutOfOrderSequenceNumber
                        | C::UnknownProducerId
                        | C::InvalidProducerEpoch
                        | C::InvalidProducerIdMapping
                        | C::ProducerFenced
                )
            );
        if broken {
            self.replace(generation);
        }
    }

    /// Replaces the producer of generation `failed`, unless another caller
    /// already did.
    fn replace(&self, failed: u64) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if guard.0 != failed {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                *guard = (failed + 1, p);
                tracing::warn!(broker = %self.name, "Replaced the Kafka producer after a failed delivery.");
            }
            Err(e) => {
                tracing::error!(broker = %self.name, error = %e, "Cannot recreate the Kafka producer.")
            }
        }
    }
}

/// A connection to one Kafka cluster.
pub struct KafkaConnection {
    name: String,
    kind: &'static str,
    properties: Vec<(String, String)>,
    producers: Arc<Producers>,
    max_message_bytes: usize,
}

fn client_config(properties: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

impl KafkaConnection {
    fn open(
        name: &str,
        kind: &'static str,
        properties: Vec<(String, String)>,
        max_message_bytes: usize,
    ) -> anyhow::Result<Self> {
        let mut producer = client_config(&properties);
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set(
                "message.max.bytes",
                (max_message_bytes + 64 * 1024).to_string(),
            );
        let connection = Self {
            name: name.to_string(),
            kind,
            properties,
            producers: Arc::new(Producers::new(name, producer)?),
            max_message_bytes,
        };
        Ok(connection)
    }

    /// Fetches metadata: reachability, and the topics.
    async fn metadata(&self, topic: Option<&str>) -> anyhow::Result<rdkafka::metadata::Metadata> {
        let producer = self.producers.get().1;
        let topic = topic.map(str::to_string);
        let name = self.name.clone();
        let servers = self
            .properties
            .iter()
            .find(|(k, _)| k == "bootstrap.servers")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic.as_deref(), Duration::from_secs(5))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "broker connection {name:?}: cannot reach the Kafka bootstrap servers {servers}: {e}"
                    )
                })
        })
        .await?
    }
}

#[async_trait]
impl Connection for KafkaConnection {
    async fn source(
        &self,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Box<dyn Source>> {
        // Fail fast, with a clear error, when the cluster is unreachable: the
        // flow retries with backoff.
        self.metadata(Some(topic.address())).await?;
        Ok(Box::new(source::KafkaSource::open(
            &self.name,
            &self.properties,
            self.producers.clone(),
            topic,
            options,
        )?))
    }

    async fn publish(
        &self,
        topic: &TopicSpec,
        messages: Vec<crate::message::OutboundMessage>,
    ) -> Result<(), PublishError> {
        sink::publish(
            &self.producers,
            &self.name,
            topic.address(),
            messages,
            self.max_message_bytes,
        )
        .await
    }

    async fn enqueue(
        &self,
        topic: &TopicSpec,
        messages: Vec<crate::message::OutboundMessage>,
    ) -> Result<crate::connector::Delivering, PublishError> {
        sink::enqueue(
            &self.producers,
            &self.name,
            topic.address(),
            messages,
            self.max_message_bytes,
        )
        .await
    }

    fn max_payload_bytes(&self) -> usize {
        self.max_message_bytes
    }

    async fn check(&self) -> Result<(), String> {
        self.metadata(None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn peek(&self, topic: &TopicSpec, max: usize) -> anyhow::Result<Vec<InboundMessage>> {
        source::peek(&self.properties, topic, max).await
    }

    /// Kafka cannot delete one message: a replayed dead letter stays on its
    /// topic (consumers of it have committed past it).
    async fn remove(&self, _topic: &TopicSpec, _id: &str) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn list_topics(&self) -> anyhow::Result<Option<Vec<String>>> {
        let metadata = self.metadata(None).await?;
        let mut names: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| !n.starts_with("__"))
            .collect();
        names.sort();
        Ok(Some(names))
    }
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Opens a `kind = "kafka"` connection.
pub async fn open(
    config: &KafkaConfig,
    ctx: &ConnectContext,
) -> anyhow::Result<Arc<dyn Connection>> {
    let password = config
        .sasl_password
        .as_ref()
        .map(|p| p.resolve(ctx.state.as_ref()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("sasl_password: {e:#}"))?;
    let connection = KafkaConnection::open(
        &config.name,
        "kafka",
        config.client_properties(password.as_ref()),
        config.max_message_bytes,
    )?;
    warn_if_unreachable(&connection).await;
    Ok(Arc::new(connection))
}

/// Opens a `kind = "eventhubs"` connection.
pub async fn open_eventhubs(
    config: &EventHubsConfig,
    ctx: &ConnectContext,
) -> anyhow::Result<Arc<dyn Connection>> {
    let secret = config
        .connection_string
        .resolve(ctx.state.as_ref())
        .map_err(|e| anyhow::anyhow!("connection_string: {e:#}"))?;
    let properties = config
        .client_properties(&secret)
        .map_err(|why| anyhow::anyhow!("connection_string: {why}"))?;
    let connection = KafkaConnection::open(
        &config.name,
        "eventhubs",
        properties,
        config.max_message_bytes,
    )?;
    warn_if_unreachable(&connection).await;
    Ok(Arc::new(connection))
}

/// An unreachable cluster does not stop the router: flows retry with
/// backoff. It is said at start, though.
async fn warn_if_unreachable(connection: &KafkaConnection) {
    if let Err(e) = connection.metadata(None).await {
        tracing::error!(
            broker = %connection.name,
            error = %format!("{e:#}"),
            "Kafka is unreachable at start; its flows retry with backoff."
        );
    }
}

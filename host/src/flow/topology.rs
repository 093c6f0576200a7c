//! The live broker connections and topics a flow publishes through, and the
//! access checks on an algorithm's `publish` calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::Duration;

use crate::config::{AlgorithmLimits, AlgorithmRef, FlowSpec, Limits, TopicSpec, find_topic};
use crate::connector::{BrokerSpec, Connection, PublishError};
use crate::message::OutboundMessage;
use crate::sandbox::{Algorithm, AlgorithmId, PublishRefusal, TopicResolver};

/// A broker connection and its configuration.
#[derive(Clone)]
pub struct Broker {
    /// As configured.
    pub spec: BrokerSpec,
    /// Live.
    pub connection: Arc<dyn Connection>,
}

/// Connections, topics and limit overrides, as one immutable snapshot.
/// Configuration changes build a new one and restart the flows it affects.
#[derive(Clone, Default)]
pub struct Topology {
    /// Broker connections by name.
    pub brokers: HashMap<String, Broker>,
    /// Every declared topic.
    pub topics: Vec<TopicSpec>,
    /// Per-version limit overrides.
    pub algorithm_limits: Vec<AlgorithmLimits>,
    /// Keys of the topics that are some flow's dead-letter topic: algorithms
    /// publish there only with a `dead_letter_publishers` grant.
    pub dead_letter_topics: HashSet<String>,
}

impl Topology {
    /// The topic `reference` (`name` or `broker:name`) names from a flow on
    /// `broker`.
    pub fn topic(&self, broker: &str, reference: &str) -> Option<&TopicSpec> {
        find_topic(&self.topics, broker, reference)
    }

    /// The canonical key of a topic: `broker:name`.
    pub fn key(topic: &TopicSpec) -> String {
        topic.key()
    }

    /// The topic and connection behind a canonical key.
    pub fn by_key(&self, key: &str) -> Option<(&TopicSpec, &Broker)> {
        let (broker, name) = key.split_once(':')?;
        let topic = self
            .topics
            .iter()
            .find(|t| t.broker == broker && t.name == name)?;
        Some((topic, self.brokers.get(broker)?))
    }

    /// Publishes to the topic behind `key`.
    pub async fn publish(
        &self,
        key: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), PublishError> {
        let (topic, broker) = self
            .by_key(key)
            .ok_or_else(|| PublishError::Broker(anyhow::anyhow!("no topic {key}")))?;
        broker.connection.publish(topic, messages).await
    }

    /// Hands messages to the producer of the topic behind `key`; see
    /// [`crate::connector::Connection::enqueue`].
    pub async fn enqueue(
        &self,
        key: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<crate::connector::Delivering, PublishError> {
        let (topic, broker) = self
            .by_key(key)
            .ok_or_else(|| PublishError::Broker(anyhow::anyhow!("no topic {key}")))?;
        broker.connection.enqueue(topic, messages).await
    }

    /// The timeout and limits for `algorithm` in `flow`, with the version's
    /// overrides applied.
    pub fn limits_for(&self, flow: &FlowSpec, algorithm: &AlgorithmId) -> (Duration, Limits) {
        let found = self.algorithm_limits.iter().find(|o| {
            o.algorithm.owner == algorithm.owner
                && o.algorithm.name == algorithm.name
                && o.algorithm.version.as_ref() == Some(&algorithm.version)
        });
        match found {
            Some(o) => (
                Duration::from_secs_f64(o.timeout_secs.unwrap_or(flow.timeout_secs)),
                o.apply_to(&flow.limits),
            ),
            None => (
                Duration::from_secs_f64(flow.timeout_secs),
                flow.limits.clone(),
            ),
        }
    }
}

impl Topology {
    /// Why `flow` cannot run `algorithm`: its initial memory is larger than
    /// the flow's `max_memory_mib` (with the version's overrides), so every
    /// instance would fail before running. Such a flow does not invoke it:
    /// its messages wait in the broker until the limit or the version
    /// changes. `None` when it fits.
    pub fn memory_shortfall(&self, flow: &FlowSpec, algorithm: &Algorithm) -> Option<String> {
        let (_, limits) = self.limits_for(flow, &algorithm.id);
        let needs = algorithm.memory_shortfall(limits.max_memory_mib)?;
        Some(format!(
            "{needs}, flow {:?} allows {} MiB (raise max_memory_mib in its [flows.limits] or in [[algorithm_limits]])",
            flow.name, limits.max_memory_mib
        ))
    }
}

/// The current topology, swapped as a whole when the configuration changes;
/// every message reads the snapshot that is current when it starts, so grant
/// and topic changes apply without restarting flows.
#[derive(Clone, Default)]
pub struct TopologyHandle(Arc<std::sync::RwLock<Arc<Topology>>>);

impl TopologyHandle {
    /// The current snapshot.
    pub fn current(&self) -> Arc<Topology> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the snapshot.
    pub fn replace(&self, topology: Arc<Topology>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = topology;
    }
}

/// Checks one invocation's `publish` calls against the access lists.
pub struct FlowResolver {
    /// The snapshot to resolve in.
    pub topology: Arc<Topology>,
    /// The flow's broker, for plain topic names.
    pub broker: String,
    /// Whose grants apply.
    pub algorithm: AlgorithmRef,
    /// Publishes left in this invocation.
    pub remaining: AtomicU32,
}

impl TopicResolver for FlowResolver {
    fn resolve(&self, topic: &str, size: usize) -> Result<String, PublishRefusal> {
        let spec = self
            .topology
            .topic(&self.broker, topic)
            .ok_or(PublishRefusal::UnknownTopic)?;
        // Dead letters are the router's to write: a dead-letter topic takes
        // an algorithm's messages only when granted for that purpose.
        let allowed = if self.topology.dead_letter_topics.contains(&spec.key()) {
            spec.may_publish_dead_letters(&self.algorithm.owner, &self.algorithm.name)
        } else {
            spec.may_publish(&self.algorithm.owner, &self.algorithm.name)
        };
        if !allowed {
            return Err(PublishRefusal::AccessDenied);
        }
        let broker = self
            .topology
            .brokers
            .get(&spec.broker)
            .ok_or(PublishRefusal::UnknownTopic)?;
        if size > broker.connection.max_payload_bytes() {
            return Err(PublishRefusal::TooLarge);
        }
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| PublishRefusal::LimitExceeded)?;
        Ok(Topology::key(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(topic: TopicSpec, dead_letter_topics: &[&str]) -> FlowResolver {
        FlowResolver {
            topology: Arc::new(Topology {
                topics: vec![topic],
                dead_letter_topics: dead_letter_topics.iter().map(|s| s.to_string()).collect(),
                ..Topology::default()
            }),
            broker: "local".into(),
            algorithm: "mallory/forger/0.1.0".parse().unwrap(),
            remaining: AtomicU32::new(10),
        }
    }

    fn topic(publishers: &[&str], dead_letter_publishers: &[&str]) -> TopicSpec {
        TopicSpec {
            name: "dlq".into(),
            broker: "local".into(),
            address: None,
            consumers: Vec::new(),
            publishers: publishers.iter().map(|s| s.to_string()).collect(),
            dead_letter_publishers: dead_letter_publishers
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    #[test]
    fn a_publish_grant_does_not_open_a_dead_letter_topic() {
        let r = resolver(topic(&["mallory/*"], &[]), &["local:dlq"]);
        assert_eq!(r.resolve("dlq", 1), Err(PublishRefusal::AccessDenied));
        // The same grant on a topic that is no flow's dead-letter topic works
        // up to the (absent) broker lookup.
        let r = resolver(topic(&["mallory/*"], &[]), &[]);
        assert_eq!(r.resolve("dlq", 1), Err(PublishRefusal::UnknownTopic));
        // A dead-letter grant passes the access check.
        let r = resolver(topic(&[], &["mallory/forger"]), &["local:dlq"]);
        assert_eq!(r.resolve("dlq", 1), Err(PublishRefusal::UnknownTopic));
    }
}

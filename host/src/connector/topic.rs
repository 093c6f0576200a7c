//! Topics as configured: a topic (queue) on a broker connection and the
//! grants saying which algorithms may consume from and publish to it. Every
//! connector takes a [`TopicSpec`]; the configuration declares them.

use serde::{Deserialize, Serialize};

/// A topic (queue) on a broker connection, and who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The name flows and algorithms use for the topic.
    pub name: String,
    /// The broker connection the topic lives on. May be left out when there
    /// is only one broker connection.
    #[serde(default)]
    pub broker: String,
    /// The broker's own name for the topic when it differs from `name`: an
    /// SQS queue URL, a Service Bus queue name, a Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Algorithms (`owner/name`, or `owner/*`) that may consume from the topic.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Algorithms (`owner/name`, or `owner/*`) that may publish to the topic,
    /// including as a flow's output topic. A flow's dead-letter topic needs
    /// no grant: the router writes dead letters itself.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// Algorithms (`owner/name`, or `owner/*`) that may publish to the topic
    /// (or use it as output topic) while it is some flow's dead-letter topic.
    /// `publishers` does not cover that: dead letters are the router's to
    /// write, and what an algorithm publishes there lists as unverified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter_publishers: Vec<String>,
}

impl TopicSpec {
    /// The broker's name for the topic.
    pub fn address(&self) -> &str {
        self.address.as_deref().unwrap_or(&self.name)
    }

    /// Whether the algorithm `owner/name` may consume from the topic.
    pub fn may_consume(&self, owner: &str, name: &str) -> bool {
        grants(&self.consumers, owner, name)
    }

    /// Whether the algorithm `owner/name` may publish to the topic.
    pub fn may_publish(&self, owner: &str, name: &str) -> bool {
        grants(&self.publishers, owner, name)
    }

    /// Whether the algorithm `owner/name` may publish to the topic while it
    /// is a flow's dead-letter topic.
    pub fn may_publish_dead_letters(&self, owner: &str, name: &str) -> bool {
        grants(&self.dead_letter_publishers, owner, name)
    }

    /// The canonical key of the topic: `broker:name`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.broker, self.name)
    }
}

/// Finds a topic by the name a flow or algorithm uses: `name` on
/// `default_broker`, or `broker:name`.
pub fn find_topic<'a>(
    topics: &'a [TopicSpec],
    default_broker: &str,
    reference: &str,
) -> Option<&'a TopicSpec> {
    let (broker, name) = reference
        .split_once(':')
        .unwrap_or((default_broker, reference));
    topics.iter().find(|t| t.broker == broker && t.name == name)
}

/// Whether `list` (`owner/name` or `owner/*` entries) grants `owner/name`.
fn grants(list: &[String], owner: &str, name: &str) -> bool {
    list.iter().any(|g| match g.split_once('/') {
        Some((o, "*")) => o == owner,
        Some((o, n)) => o == owner && n == name,
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_owner_wildcards() {
        let t = TopicSpec {
            name: "t".into(),
            broker: "b".into(),
            address: None,
            consumers: vec!["ezra/*".into()],
            publishers: vec!["bob/x".into()],
            dead_letter_publishers: vec!["carol/*".into()],
        };
        assert!(t.may_consume("ezra", "anything"));
        assert!(!t.may_publish("ezra", "anything"));
        assert!(t.may_publish("bob", "x"));
        assert!(!t.may_publish_dead_letters("bob", "x"));
        assert!(t.may_publish_dead_letters("carol", "y"));
    }
}

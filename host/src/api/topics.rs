//! Topics and their access lists (grants): `/v1/brokers/{broker}/topics`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A declared topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Topic {
    /// The name flows and algorithms use.
    pub name: String,
    /// The broker connection it lives on.
    #[serde(default)]
    pub broker: String,
    /// The broker's own name for it, when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Algorithms (`owner/name` or `owner/*`) that may consume.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Algorithms that may publish.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// Algorithms that may publish while it is a flow's dead-letter topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter_publishers: Vec<String>,
}

/// A topic of a broker: declared, or only listed by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopicEntry {
    /// The topic.
    #[serde(flatten)]
    pub topic: Topic,
    /// Declared to the router (false: only the broker lists it).
    pub declared: bool,
}

/// `GET /v1/brokers/{broker}/topics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopicListing {
    /// Declared topics, then those only the broker lists.
    pub topics: Vec<TopicEntry>,
    /// Why the broker's own list is missing, when it refused to give it.
    pub listing_error: Option<String>,
}

/// A topic declaration (`PUT /v1/brokers/{broker}/topics/{topic}`). For a
/// topic that exists, omitted fields keep their values (so a `PUT` with
/// only `address` never wipes the access lists); `"address": null` removes
/// the address and `[]` empties a list. A new topic starts with omitted
/// fields empty.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareTopic {
    /// The broker's own name (queue URL, queue, Kafka topic), if it differs;
    /// `null` removes it.
    #[serde(
        default,
        with = "super::flows::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub address: Option<Option<String>>,
    /// Who may consume: replaces the list when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Vec<String>>,
    /// Who may publish: replaces the list when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishers: Option<Vec<String>>,
    /// Who may publish while it is a flow's dead-letter topic: replaces the
    /// list when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_publishers: Option<Vec<String>>,
}

/// A grant change on a topic (`.../grants` and `.../grants/revoke`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `owner/name` or `owner/*`.
    pub algorithm: String,
    /// May consume (be a flow's source).
    #[serde(default)]
    pub consume: bool,
    /// May publish (including as output topic).
    #[serde(default)]
    pub publish: bool,
    /// May publish while the topic is a flow's dead-letter topic
    /// (`dead_letter_publishers`).
    #[serde(default)]
    pub dead_letter_publish: bool,
}

//! Broker connections: `/v1/brokers`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The kinds of broker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The router's own broker, a log on local disk.
    Embedded,
    /// Apache Kafka.
    Kafka,
    /// Azure Event Hubs (over its Kafka endpoint).
    Eventhubs,
    /// Amazon SQS.
    Sqs,
    /// Azure Service Bus.
    Servicebus,
}

/// A new broker connection (`POST /v1/brokers`); the other fields depend on
/// `kind` (see the README's configuration reference). Credentials are
/// `{"env": VAR}`, `{"file": PATH}`, `{"secret": NAME}` or (API only)
/// `{"value": VALUE}`, which is stored as a secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewBroker {
    /// The connection's name.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub name: String,
    /// What it connects to.
    pub kind: BrokerKind,
    /// The kind's settings.
    #[serde(flatten)]
    #[schema(ignore)]
    pub settings: Map<String, Value>,
}

/// A broker connection as shown: credentials redacted (each says where it
/// comes from), with the flows that use it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Broker {
    /// The connection's name.
    pub name: String,
    /// What it connects to.
    pub kind: String,
    /// `connected` or `down`, from a check made for the listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Flows that use the connection.
    #[serde(default)]
    pub used_by_flows: Vec<String>,
    /// The kind's settings, credentials redacted.
    #[serde(flatten)]
    #[schema(ignore)]
    pub settings: Map<String, Value>,
}

/// `GET /v1/brokers`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrokerList {
    /// The connections.
    pub brokers: Vec<Broker>,
}

//! The whole desired state: `/v1/state` (`eventflow apply`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::brokers::{Broker, NewBroker};
use super::topics::Topic;

/// `GET /v1/state`: the desired state, brokers redacted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StateView {
    /// Broker connections, credentials redacted.
    pub brokers: Vec<Broker>,
    /// Declared topics.
    pub topics: Vec<Topic>,
    /// Flows as declared (`[[flows]]` of the configuration file).
    #[schema(value_type = Vec<FlowDeclaration>)]
    pub flows: Vec<Value>,
    /// Per-algorithm limits (`[[algorithm_limits]]`).
    #[schema(value_type = Vec<Object>)]
    pub algorithm_limits: Vec<Value>,
}

/// What `PUT /v1/state` converged to: how many of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Applied {
    /// Broker connections.
    pub brokers: usize,
    /// Topics.
    pub topics: usize,
    /// Flows.
    pub flows: usize,
    /// Per-algorithm limits.
    pub algorithm_limits: usize,
}

/// The schema of `PUT /v1/state`'s body, the declarations of a
/// configuration file; the router reads it as `crate::config::Declarations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Declarations {
    /// Broker connections.
    #[serde(default)]
    pub brokers: Vec<NewBroker>,
    /// Topics.
    #[serde(default)]
    pub topics: Vec<Topic>,
    /// Flows.
    #[serde(default)]
    pub flows: Vec<FlowDeclaration>,
    /// Per-algorithm limits.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub algorithm_limits: Vec<Value>,
}

/// A flow as in the configuration file (`[[flows]]`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlowDeclaration {
    /// Its name.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub name: String,
    /// The broker connection; optional when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// The topic it consumes.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub topic: String,
    /// `owner/name` or `owner/name/version`.
    pub algorithm: String,
    /// Enabled (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Invocations at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub concurrency: Option<u32>,
    /// Where outputs go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_topic: Option<String>,
    /// Where failed messages go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Deliveries before dead-lettering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_receives: Option<u32>,
    /// Wall-clock limit per message, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 43200)]
    pub timeout_secs: Option<f64>,
    /// Retry delays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub retry: Option<Value>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<Value>,
    /// Broker-specific consumer settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub consumer: Option<Value>,
}

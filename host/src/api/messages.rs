//! Messages: `POST /v1/messages` and peeking at a topic.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One message: exactly one of `payload` and `payload_base64`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Headers, `[name, value]`; `eventflow-*` ones are the router's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// The message's key (the `message-key` header): flows with
    /// `ordering = "key"` handle one key's messages in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A message, or a batch of them (`messages`), for one topic: at most 1000
/// per request, each within its broker's payload limit (413 above it); the
/// whole body at most 24 MiB (413 above it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessages {
    /// The topic.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub topic: String,
    /// Its broker connection, when the topic name is on several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub broker: Option<String>,
    /// One message's payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// One message's payload as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// One message's headers, `[name, value]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// One message's key (the `message-key` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Several messages instead of one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 1000)]
    pub messages: Vec<MessageBody>,
}

/// Messages were published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Published {
    /// How many.
    pub published: usize,
    /// `broker:topic`.
    pub topic: String,
}

/// A message peeked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeekedMessage {
    /// Its id.
    pub id: String,
    /// The payload: text, or base64 when it is not UTF-8.
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: String,
    /// Headers, `[name, value]`.
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// Deliveries so far.
    pub receive_count: u32,
    /// When the broker took it, RFC 3339, where it says.
    pub enqueued_at: Option<String>,
}

/// `GET /v1/brokers/{broker}/topics/{topic}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Peeked {
    /// Oldest first.
    pub messages: Vec<PeekedMessage>,
    /// The byte limit cut the answer short.
    pub truncated: bool,
}

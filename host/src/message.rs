//! Messages as the router sees them, independent of any broker.

use std::time::SystemTime;

/// A header: key and value.
pub type Header = (String, String);

/// The header that carries a message's key on brokers without keys of
/// their own (the embedded broker): `eventflow send --key`, the publish
/// API's `key`, or an algorithm's `publish::send` with this header set it.
/// A flow with `ordering = "key"` handles the messages of one key in order.
pub const KEY_HEADER: &str = "message-key";

/// A message received from a topic.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// The broker's id for the message, stable across redeliveries.
    pub id: String,
    /// The topic it came from, by its configured name.
    pub topic: String,
    /// The body.
    pub payload: Vec<u8>,
    /// Headers (Kafka headers, SQS attributes, Service Bus properties).
    pub headers: Vec<Header>,
    /// 1 on the first delivery; counted by the broker where it can, carried in
    /// a header otherwise, so it survives router restarts.
    pub attempt: u32,
    /// When the broker accepted the message, where it says.
    pub enqueued_at: Option<SystemTime>,
    /// Set by a source that could not decode the message (headers that are
    /// not UTF-8, say): the flow dead-letters it as `invalid_input` without
    /// invoking the algorithm.
    pub undecodable: Option<String>,
}

impl InboundMessage {
    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        header(&self.headers, key)
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The body.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<Header>,
}

/// The size a broker may count for `message`: the payload plus every header
/// with some framing (SQS counts message attributes toward its limit).
pub fn counted_size(message: &OutboundMessage) -> usize {
    message.payload.len()
        + message
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
}

/// The value of the first header named `key` (case-sensitive).
pub fn header<'a>(headers: &'a [Header], key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Sets `key` to `value`, replacing earlier values.
pub fn set_header(headers: &mut Vec<Header>, key: &str, value: impl Into<String>) {
    headers.retain(|(k, _)| k != key);
    headers.push((key.to_string(), value.into()));
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

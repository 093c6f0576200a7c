//! Publishing to the embedded broker.

use crate::config::TopicSpec;
use crate::connector::PublishError;
use crate::message::OutboundMessage;

use super::Store;

/// Appends `messages` to the topic; returns once they are on disk.
pub async fn publish(
    store: &Store,
    topic: &TopicSpec,
    messages: Vec<OutboundMessage>,
    max_payload_bytes: usize,
) -> Result<(), PublishError> {
    if let Some(m) = messages
        .iter()
        .find(|m| m.payload.len() > max_payload_bytes)
    {
        return Err(PublishError::TooLarge {
            size: m.payload.len(),
            limit: max_payload_bytes,
        });
    }
    store
        .publish(topic.address(), messages)
        .await
        .map(|_| ())
        .map_err(|e| PublishError::Broker(e.into()))
}

//! Publishing to the embedded broker.

use crate::connector::PublishError;
use crate::connector::TopicSpec;
use crate::message::OutboundMessage;

use super::Store;

/// Refuses a message over the broker's payload limit.
pub fn check_sizes<'a>(
    messages: impl IntoIterator<Item = &'a OutboundMessage>,
    max_payload_bytes: usize,
) -> Result<(), PublishError> {
    match messages
        .into_iter()
        .find(|m| m.payload.len() > max_payload_bytes)
    {
        Some(m) => Err(PublishError::TooLarge {
            size: m.payload.len(),
            limit: max_payload_bytes,
        }),
        None => Ok(()),
    }
}

/// Appends `messages` to the topic; returns once they are on disk.
pub async fn publish(
    store: &Store,
    topic: &TopicSpec,
    messages: Vec<OutboundMessage>,
    max_payload_bytes: usize,
) -> Result<(), PublishError> {
    check_sizes(&messages, max_payload_bytes)?;
    store
        .publish(topic.address(), messages)
        .await
        .map(|_| ())
        .map_err(|e| PublishError::Broker(e.into()))
}

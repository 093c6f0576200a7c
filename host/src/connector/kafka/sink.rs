//! Producing to Kafka: idempotent, `acks=all`, every delivery confirmed.

use std::time::Duration;

use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::{KEY_HEADER, Producers};
use crate::connector::PublishError;
use crate::message::OutboundMessage;

/// Kafka headers from ours, leaving out the record key.
pub fn headers(headers: &[(String, String)]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers.iter().filter(|(k, _)| k != KEY_HEADER) {
        out = out.insert(KafkaHeader {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    out
}

/// Produces `messages` to `topic` and waits for every delivery report.
pub async fn publish(
    producers: &Producers,
    connection: &str,
    topic: &str,
    messages: Vec<OutboundMessage>,
    max_bytes: usize,
) -> Result<(), PublishError> {
    if let Some(m) = messages.iter().find(|m| m.payload.len() > max_bytes) {
        return Err(PublishError::TooLarge {
            size: m.payload.len(),
            limit: max_bytes,
        });
    }
    let (generation, producer) = producers.get();
    let sends = messages.iter().map(|m| {
        let key = m
            .headers
            .iter()
            .find(|(k, _)| k == KEY_HEADER)
            .map(|(_, v)| v.as_str());
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .payload(&m.payload)
            .headers(headers(&m.headers));
        if let Some(k) = key {
            record = record.key(k);
        }
        producer.send(record, Duration::from_secs(10))
    });
    for result in futures::future::join_all(sends).await {
        if let Err((e, _)) = result {
            producers.replace(generation);
            return Err(PublishError::Broker(anyhow::anyhow!(
                "broker connection {connection:?}: cannot produce to topic {topic}: {e}"
            )));
        }
    }
    Ok(())
}

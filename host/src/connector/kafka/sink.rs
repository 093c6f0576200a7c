//! Producing to Kafka: idempotent, `acks=all`, every delivery confirmed.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

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
///
/// Every message is handed to librdkafka before the first `.await`, in the
/// order given: a caller that polls this future once has enqueued them all
/// (the worker relies on it to keep a partition's outputs in order). A full
/// producer queue is an error, not a wait, for the same reason.
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
    let failed = |e: &dyn std::fmt::Display| {
        PublishError::Broker(anyhow::anyhow!(
            "broker connection {connection:?}: cannot produce to topic {topic}: {e}"
        ))
    };
    let mut deliveries = Vec::with_capacity(messages.len());
    for m in &messages {
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
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((e, _)) => {
                if e != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                    producers.replace(generation);
                }
                return Err(failed(&e));
            }
        }
    }
    for delivery in futures::future::join_all(deliveries).await {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                producers.replace(generation);
                return Err(failed(&e));
            }
            Err(_) => return Err(failed(&"the producer was closed")),
        }
    }
    Ok(())
}

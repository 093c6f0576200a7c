//! Producing to Kafka: idempotent, `acks=all`, every delivery confirmed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

use super::{KEY_HEADER, Producers};
use crate::connector::{Delivering, PublishError};
use crate::message::OutboundMessage;

/// How long a full producer queue is waited out before a publish fails.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(10);

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
    producers: &Arc<Producers>,
    connection: &str,
    topic: &str,
    messages: Vec<OutboundMessage>,
    max_bytes: usize,
) -> Result<(), PublishError> {
    enqueue(producers, connection, topic, messages, max_bytes)
        .await?
        .await
}

/// Hands `messages` to librdkafka in the order given and returns the wait
/// for their delivery reports. A full producer queue is waited out (up to
/// `QUEUE_FULL_WAIT`) before this returns, so what is enqueued after it
/// returns comes after these messages.
pub async fn enqueue(
    producers: &Arc<Producers>,
    connection: &str,
    topic: &str,
    messages: Vec<OutboundMessage>,
    max_bytes: usize,
) -> Result<Delivering, PublishError> {
    if let Some(m) = messages.iter().find(|m| m.payload.len() > max_bytes) {
        return Err(PublishError::TooLarge {
            size: m.payload.len(),
            limit: max_bytes,
        });
    }
    let failed = {
        let (connection, topic) = (connection.to_string(), topic.to_string());
        move |e: &dyn std::fmt::Display| {
            PublishError::Broker(anyhow::anyhow!(
                "broker connection {connection:?}: cannot produce to topic {topic}: {e}"
            ))
        }
    };
    let refused = {
        let (connection, topic) = (connection.to_string(), topic.to_string());
        move |e: &KafkaError, size: usize| {
            refusal(e, size).unwrap_or_else(|| {
                PublishError::Broker(anyhow::anyhow!(
                    "broker connection {connection:?}: cannot produce to topic {topic}: {e}"
                ))
            })
        }
    };
    let sizes: Vec<usize> = messages.iter().map(record_size).collect();
    let (generation, producer) = producers.get();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(messages.len());
    for m in &messages {
        let mut record = to_record(topic, m);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if started.elapsed() < QUEUE_FULL_WAIT =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((e, _)) => {
                    producers.failed(generation, &producer, &e);
                    return Err(refused(&e, record_size(m)));
                }
            }
        }
    }
    let producers = producers.clone();
    Ok(Box::pin(async move {
        for (delivery, size) in futures::future::join_all(deliveries)
            .await
            .into_iter()
            .zip(sizes)
        {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    producers.failed(generation, &producer, &e);
                    return Err(refused(&e, size));
                }
                Err(_) => return Err(failed(&"the producer was closed")),
            }
        }
        Ok(())
    }))
}

/// The record for `m`: its payload and headers, and its key header as the
/// record key.
fn to_record<'a>(topic: &'a str, m: &'a OutboundMessage) -> FutureRecord<'a, str, [u8]> {
    let key = m
        .headers
        .iter()
        .find(|(k, _)| k == KEY_HEADER)
        .map(|(_, v)| v.as_str());
    let record = FutureRecord::<str, [u8]>::to(topic)
        .payload(&m.payload)
        .headers(headers(&m.headers));
    match key {
        Some(k) => record.key(k),
        None => record,
    }
}

/// The size of a record as the router counts it against its limits
/// (payload and headers; see [`crate::message::counted_size`]).
fn record_size(m: &OutboundMessage) -> usize {
    crate::message::counted_size(m)
}

/// A too-large refusal when `e` says the record is over a size limit:
/// librdkafka's own check against the producer's `message.max.bytes`, or
/// the broker's answer for a topic's `max.message.bytes` (both
/// `MSG_SIZE_TOO_LARGE`), or a record batch over the broker's limit
/// (`RECORD_LIST_TOO_LARGE`). Retrying the same record cannot succeed, so
/// it is reported as `RefusedTooLarge`, not as a transient broker error.
pub fn refusal(e: &KafkaError, size: usize) -> Option<PublishError> {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
    .then(|| PublishError::RefusedTooLarge {
        size,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_refusal_is_too_large_and_anything_else_is_not() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
        ] {
            let e = KafkaError::MessageProduction(code);
            let refused = refusal(&e, 2_000_000).expect("a size refusal");
            assert!(refused.is_too_large(), "{e}");
            assert!(refused.to_string().contains("2000000"), "{refused}");
        }
        for code in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::OffsetMetadataTooLarge,
        ] {
            assert!(
                refusal(&KafkaError::MessageProduction(code), 10).is_none(),
                "{code:?}"
            );
        }
    }
}

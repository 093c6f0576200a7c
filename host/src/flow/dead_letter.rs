//! A message that failed for good: written to the flow's dead-letter topic
//! (its payload truncated when the envelope is too large), left to the
//! broker's redrive policy, or dropped when the flow has nowhere to put it.

use std::time::Duration;

use crate::connector::Settle;
use crate::message::{InboundMessage, counted_size};
use crate::sandbox::Algorithm;
use crate::state::FailureRecord;

use super::envelope::{Envelope, SourceInfo};
use super::retry::backoff;
use super::topology::Topology;
use super::worker::Worker;

/// Why a dead letter could not be written.
enum DeadLetterFailure {
    /// Retrying cannot help (too large even with the payload truncated): the
    /// message is dropped with an error log.
    Permanent(String),
    /// The broker did not take it, the topic is not declared or does not
    /// exist (yet): the message stays on its topic and is retried with the
    /// flow's backoff, so nothing is lost while an operator fixes it.
    Transient(String),
}

impl Worker {
    /// Ends a message that failed for good: dead-letter it, leave it to the
    /// broker's redrive policy, or drop it when the flow has nowhere to put it.
    pub(super) async fn give_up(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Algorithm,
        message: &InboundMessage,
        first: Option<FailureRecord>,
        last: FailureRecord,
    ) {
        let events = self.events(algorithm, message);
        let Some(dlq) = &self.spec.dead_letter_topic else {
            if self.native_max_receives.is_some() {
                // One more receive makes the broker move it to its own
                // dead-letter queue.
                events.left_to_redrive(&last);
                self.retry(settle, message, Duration::ZERO).await;
                return;
            }
            events.dropped_without_dead_letter_topic(&last);
            if self.ack(settle, message).await {
                self.forget(&message.id).await;
            }
            return;
        };
        let source = SourceInfo {
            broker: self.spec.broker.clone(),
            kind: self.broker_kind.to_string(),
            topic: self.spec.topic.clone(),
            message_id: message.id.clone(),
        };
        let version = events.handles.labels.algorithm.clone();
        let producer = (version, algorithm.hash.clone());
        let envelope = Envelope::new(&self.flow, source, message, producer, first, last.clone());
        let topology = self.topology.current();
        match self
            .write_dead_letter(&topology, dlq, message, &envelope)
            .await
        {
            Ok(payload_truncated) => {
                events.dead_lettered(&last, dlq, payload_truncated);
                if self.ack(settle, message).await {
                    self.forget(&message.id).await;
                }
            }
            Err(DeadLetterFailure::Permanent(e)) => {
                // Retrying cannot make it fit: settle it rather than
                // redeliver it forever, and say so once.
                events.dropped_unwritable(&last, dlq, &e);
                if self.ack(settle, message).await {
                    self.forget(&message.id).await;
                }
            }
            Err(DeadLetterFailure::Transient(e)) => {
                // Not acknowledged: it comes back, and goes straight to the
                // dead-letter topic then.
                let delay = backoff(&self.spec.retry, message.attempt);
                events.dead_letter_deferred(dlq, &e, delay);
                self.retry(settle, message, delay).await;
            }
        }
    }

    /// Publishes `envelope`, signed, to the dead-letter topic `dlq`. When
    /// it is over the topic's message size limit (the connector's
    /// `max_payload_bytes`, or a too-large refusal), publishes it once more
    /// with the payload truncated to fit. Returns whether it was truncated.
    async fn write_dead_letter(
        &self,
        topology: &Topology,
        dlq: &str,
        message: &InboundMessage,
        envelope: &Envelope,
    ) -> Result<bool, DeadLetterFailure> {
        let Some(topic) = topology.topic(&self.spec.broker, dlq) else {
            return Err(DeadLetterFailure::Transient(format!(
                "dead-letter topic {dlq:?} is not declared"
            )));
        };
        let key = Topology::key(topic);
        let Some((_, broker)) = topology.by_key(&key) else {
            return Err(DeadLetterFailure::Transient(format!(
                "broker connection {:?} of the dead-letter topic is not connected",
                topic.broker
            )));
        };
        let limit = broker.connection.max_payload_bytes();
        let signer = &self.services.dead_letter_key;
        let whole = envelope.to_message(signer);
        let size = counted_size(&whole);
        // The envelope's own headers are the same once truncated.
        let overhead = size - whole.payload.len();
        let too_large = if size <= limit {
            match topology.publish(&key, vec![whole]).await {
                Ok(()) => return Ok(false),
                Err(e) if e.is_too_large() => e.to_string(),
                Err(e) => return Err(DeadLetterFailure::Transient(format!("{e:#}"))),
            }
        } else {
            format!("the envelope of {size} bytes is over the topic's limit of {limit} bytes")
        };
        // Cut to the connection's limit first. A broker whose own limit is
        // lower refuses that too (a Kafka topic's max.message.bytes, say):
        // cut to a quarter each time until it fits, or until not even the
        // envelope without its payload fits.
        let mut budget = limit.saturating_sub(overhead);
        let mut refused: Option<String> = None;
        loop {
            let Some(cut) = envelope.truncated(&message.payload, budget) else {
                return Err(DeadLetterFailure::Permanent(match refused {
                    None => format!(
                        "{too_large}, and it does not fit even without its payload and headers"
                    ),
                    Some(e) => format!("{too_large}; with the payload truncated: {e}"),
                }));
            };
            match topology.publish(&key, vec![cut.to_message(signer)]).await {
                Ok(()) => return Ok(true),
                Err(e) if e.is_too_large() => {
                    refused = Some(e.to_string());
                    budget /= 4;
                }
                Err(e) => return Err(DeadLetterFailure::Transient(format!("{e:#}"))),
            }
        }
    }
}

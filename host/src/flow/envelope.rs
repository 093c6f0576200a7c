//! The dead-letter envelope: the original message and why it failed.
//!
//! Documented in the README; its fields are a contract with whoever reads
//! dead-letter topics, so change them only by adding.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::message::{Header, InboundMessage, OutboundMessage};
use crate::state::FailureRecord;

/// The envelope's format version.
pub const VERSION: u32 = 1;
/// Header carrying the failure reason code on dead letters.
pub const REASON_HEADER: &str = "eventflow-dead-letter-reason";

/// Where the message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The broker connection.
    pub broker: String,
    /// Its kind (embedded, kafka, ...).
    pub kind: String,
    /// The topic, by its configured name.
    pub topic: String,
    /// The broker's message id.
    pub message_id: String,
}

/// A dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always [`VERSION`].
    pub eventflow_dead_letter: u32,
    /// The flow that gave up.
    pub flow: String,
    /// Where the message came from.
    pub source: SourceInfo,
    /// `owner/name@version` that handled the last attempt.
    pub algorithm: String,
    /// SHA-256 of that component.
    pub component_hash: String,
    /// Deliveries of the message, this last one included.
    pub attempts: u32,
    /// The first failure the router recorded (absent when earlier attempts
    /// were handled by another router, or their router died mid-attempt).
    pub first_failure: Option<FailureRecord>,
    /// The failure that ended it.
    pub last_failure: FailureRecord,
    /// The payload: UTF-8 text as is, anything else base64.
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: String,
    /// The original headers, in order.
    pub headers: Vec<Header>,
    /// When the broker accepted the message, RFC 3339, where it says.
    pub enqueued_at: Option<String>,
    /// When it was dead-lettered, RFC 3339.
    pub dead_lettered_at: String,
}

impl Envelope {
    /// Wraps a message that failed for good.
    pub fn new(
        flow: &str,
        source: SourceInfo,
        message: &InboundMessage,
        algorithm: (String, String),
        first_failure: Option<FailureRecord>,
        last_failure: FailureRecord,
    ) -> Self {
        let (payload, payload_encoding) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (text.to_string(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&message.payload),
                "base64",
            ),
        };
        Self {
            eventflow_dead_letter: VERSION,
            flow: flow.to_string(),
            source,
            algorithm: algorithm.0,
            component_hash: algorithm.1,
            attempts: message.attempt,
            first_failure,
            last_failure,
            payload,
            payload_encoding: payload_encoding.to_string(),
            headers: message.headers.clone(),
            enqueued_at: message.enqueued_at.map(crate::util::format_time),
            dead_lettered_at: crate::util::rfc3339_now(),
        }
    }

    /// The envelope as a message for the dead-letter topic.
    pub fn to_message(&self) -> OutboundMessage {
        OutboundMessage {
            payload: serde_json::to_vec(self).expect("an envelope always serializes"),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (REASON_HEADER.into(), self.last_failure.reason.clone()),
                ("eventflow-flow".into(), self.flow.clone()),
            ],
        }
    }

    /// The original payload.
    pub fn original_payload(&self) -> anyhow::Result<Vec<u8>> {
        match self.payload_encoding.as_str() {
            "utf8" => Ok(self.payload.clone().into_bytes()),
            "base64" => Ok(base64::engine::general_purpose::STANDARD.decode(&self.payload)?),
            other => anyhow::bail!("unknown payload_encoding {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FailureRecord {
        FailureRecord {
            reason: "trap".into(),
            detail: "boom".into(),
            attempt: 1,
            at: "2026-01-01T00:00:00.000Z".into(),
            algorithm: "a/b@1.0.0#0123".into(),
        }
    }

    #[test]
    fn binary_payloads_round_trip_as_base64() {
        let m = InboundMessage {
            id: "m1".into(),
            topic: "t".into(),
            payload: vec![0xff, 0x00, 0x80],
            headers: vec![("k".into(), "v".into())],
            attempt: 3,
            enqueued_at: None,
            undecodable: None,
        };
        let source = SourceInfo {
            broker: "b".into(),
            kind: "embedded".into(),
            topic: "t".into(),
            message_id: "m1".into(),
        };
        let e = Envelope::new(
            "f",
            source,
            &m,
            ("a/b@1.0.0".into(), "h".into()),
            None,
            record(),
        );
        assert_eq!(e.payload_encoding, "base64");
        let out = e.to_message();
        let back: Envelope = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(back.original_payload().unwrap(), m.payload);
        assert_eq!(back.attempts, 3);
        assert_eq!(
            crate::message::header(&out.headers, REASON_HEADER),
            Some("trap")
        );
    }
}

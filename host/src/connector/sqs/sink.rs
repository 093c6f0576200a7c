//! Publishing to SQS (`SendMessageBatch`), and the mapping between headers
//! and message attributes.
//!
//! Headers become String message attributes. SQS allows ten attributes with
//! names of letters, digits, `_`, `-` and `.`; messages with more headers, or
//! names SQS refuses, carry all their headers in one attribute,
//! `eventflow-headers` (a JSON list of pairs). Bodies are text: a payload
//! that is not UTF-8 is sent base64-encoded with the attribute
//! `eventflow-encoding: base64`, and decoded again on receipt.

use std::collections::HashMap;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use base64::Engine as _;

use super::{DEFAULT_GROUP, GROUP_HEADER, MAX_BODY_BYTES, is_fifo, sdk_error};
use crate::connector::PublishError;
use crate::connector::TopicSpec;
use crate::message::{Header, OutboundMessage};

/// Attribute carrying all headers when they do not fit as attributes.
pub const HEADERS_ATTRIBUTE: &str = "eventflow-headers";
/// Attribute marking a base64-encoded body.
pub const ENCODING_ATTRIBUTE: &str = "eventflow-encoding";
/// Most attributes SQS takes per message.
const MAX_ATTRIBUTES: usize = 10;

fn valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.to_ascii_lowercase().starts_with("aws.")
        && !name.to_ascii_lowercase().starts_with("amazon.")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data_type is set")
}

/// The body and attributes of an outbound message. Its group header (see
/// [`GROUP_HEADER`]) is not an attribute: `publish` makes it the group.
pub fn encode(message: &OutboundMessage) -> (String, HashMap<String, MessageAttributeValue>) {
    let headers: Vec<&Header> = message
        .headers
        .iter()
        .filter(|(k, _)| k != GROUP_HEADER)
        .collect();
    let mut attributes = HashMap::new();
    let body = match std::str::from_utf8(&message.payload) {
        Ok(text) if !text.is_empty() => text.to_string(),
        _ => {
            attributes.insert(ENCODING_ATTRIBUTE.to_string(), string_attribute("base64"));
            base64::engine::general_purpose::STANDARD.encode(&message.payload)
        }
    };
    let room = MAX_ATTRIBUTES - attributes.len();
    let fits = headers.len() <= room
        && headers
            .iter()
            .all(|(k, v)| valid_attribute_name(k) && !v.is_empty())
        && headers
            .iter()
            .map(|(k, _)| k)
            .collect::<std::collections::HashSet<_>>()
            .len()
            == headers.len();
    if fits {
        for (k, v) in headers {
            attributes.insert(k.clone(), string_attribute(v));
        }
    } else {
        let json = serde_json::to_string(&headers).unwrap_or_default();
        attributes.insert(HEADERS_ATTRIBUTE.to_string(), string_attribute(&json));
    }
    (body, attributes)
}

/// The payload and headers of a received message; `Err` when they cannot be
/// decoded.
pub fn decode(
    body: &str,
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
) -> (Vec<u8>, Vec<Header>, Option<String>) {
    let mut headers = Vec::new();
    let mut problem = None;
    let mut base64_body = false;
    if let Some(attributes) = attributes {
        let mut names: Vec<&String> = attributes.keys().collect();
        names.sort();
        for name in names {
            let value = &attributes[name];
            match name.as_str() {
                ENCODING_ATTRIBUTE => base64_body = value.string_value() == Some("base64"),
                HEADERS_ATTRIBUTE => match value
                    .string_value()
                    .and_then(|s| serde_json::from_str::<Vec<Header>>(s).ok())
                {
                    Some(h) => headers.extend(h),
                    None => {
                        problem = Some(format!(
                            "attribute {HEADERS_ATTRIBUTE} is not a list of pairs"
                        ))
                    }
                },
                _ => match (value.string_value(), value.binary_value()) {
                    (Some(s), _) => headers.push((name.clone(), s.to_string())),
                    (None, Some(b)) => headers.push((
                        name.clone(),
                        base64::engine::general_purpose::STANDARD.encode(b.as_ref()),
                    )),
                    (None, None) => headers.push((name.clone(), String::new())),
                },
            }
        }
    }
    let payload = if base64_body {
        match base64::engine::general_purpose::STANDARD.decode(body) {
            Ok(p) => p,
            Err(e) => {
                problem = Some(format!("the body is marked base64 but is not: {e}"));
                body.as_bytes().to_vec()
            }
        }
    } else {
        body.as_bytes().to_vec()
    };
    (payload, headers, problem)
}

/// Sends messages in batches of up to ten (and 256 KiB); returns once SQS
/// accepted all of them.
pub async fn publish(
    client: &Client,
    connection: &str,
    topic: &TopicSpec,
    messages: Vec<OutboundMessage>,
) -> Result<(), PublishError> {
    let mut batch: Vec<SendMessageBatchRequestEntry> = Vec::new();
    let mut batch_bytes = 0;
    for (i, message) in messages.iter().enumerate() {
        let (body, attributes) = encode(message);
        let size = body.len()
            + attributes
                .iter()
                .map(|(k, v)| k.len() + v.string_value().map_or(0, str::len) + 6)
                .sum::<usize>();
        if size > MAX_BODY_BYTES {
            return Err(PublishError::TooLarge {
                size,
                limit: MAX_BODY_BYTES,
            });
        }
        if batch.len() == 10 || batch_bytes + size > MAX_BODY_BYTES {
            send(client, connection, topic, std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
        }
        batch_bytes += size;
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(format!("m{i}"))
            .message_body(body)
            .set_message_attributes(Some(attributes));
        if is_fifo(topic.address()) {
            let group = crate::message::header(&message.headers, GROUP_HEADER)
                .filter(|g| !g.is_empty())
                .unwrap_or(DEFAULT_GROUP);
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(uuid::Uuid::new_v4().simple().to_string());
        }
        batch.push(
            entry
                .build()
                .map_err(|e| PublishError::Broker(anyhow::anyhow!(e)))?,
        );
    }
    if !batch.is_empty() {
        send(client, connection, topic, batch).await?;
    }
    Ok(())
}

async fn send(
    client: &Client,
    connection: &str,
    topic: &TopicSpec,
    entries: Vec<SendMessageBatchRequestEntry>,
) -> Result<(), PublishError> {
    let out = client
        .send_message_batch()
        .queue_url(topic.address())
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| {
            PublishError::Broker(anyhow::anyhow!(
                "cannot send to queue {} of {connection}: {}",
                topic.address(),
                sdk_error(e)
            ))
        })?;
    if let Some(failed) = out.failed().first() {
        return Err(PublishError::Broker(anyhow::anyhow!(
            "queue {} of {connection} refused {} of the messages: {} {}",
            topic.address(),
            out.failed().len(),
            failed.code(),
            failed.message().unwrap_or_default()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_as_attributes_or_in_one() {
        let few = OutboundMessage {
            payload: b"hi".to_vec(),
            headers: vec![("a".into(), "1".into()), ("traceparent".into(), "x".into())],
        };
        let (body, attrs) = encode(&few);
        assert_eq!(body, "hi");
        assert_eq!(attrs.len(), 2);
        let (payload, mut headers, problem) = decode(&body, Some(&attrs));
        headers.sort();
        assert_eq!((payload, problem), (b"hi".to_vec(), None));
        assert_eq!(
            headers,
            vec![("a".into(), "1".into()), ("traceparent".into(), "x".into())]
        );

        let many = OutboundMessage {
            payload: vec![0xff, 0],
            headers: (0..12)
                .map(|i| (format!("h{i}"), "v".to_string()))
                .collect(),
        };
        let (body, attrs) = encode(&many);
        assert_eq!(attrs.len(), 2, "one for the headers, one for the encoding");
        let (payload, headers, problem) = decode(&body, Some(&attrs));
        assert_eq!(problem, None);
        assert_eq!(payload, vec![0xff, 0]);
        assert_eq!(headers, many.headers);
    }
}

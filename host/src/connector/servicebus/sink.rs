//! Sending to Service Bus, and the mapping between headers and properties.
//!
//! Headers become custom properties (HTTP headers whose values are JSON, as
//! the REST API has them), except three that set broker properties:
//! `sb-message-id`, `sb-correlation-id` and `sb-label`. Headers whose names
//! or values HTTP cannot carry travel together in one property,
//! `eventflow-headers` (base64 of a JSON list of pairs). Bodies are text: a
//! payload that is not UTF-8 is sent base64 with `eventflow-encoding: base64`
//! and decoded again on receipt.

use std::collections::HashMap;

use azure_messaging_servicebus::service_bus::{
    QueueClient, SendMessageOptions, SettableBrokerProperties,
};
use base64::Engine as _;

use super::{MAX_BODY_BYTES, describe};
use crate::connector::PublishError;
use crate::connector::TopicSpec;
use crate::message::{Header, OutboundMessage};

/// Property carrying all headers when they cannot travel one by one.
pub const HEADERS_PROPERTY: &str = "eventflow-headers";
/// Property marking a base64 body.
pub const ENCODING_PROPERTY: &str = "eventflow-encoding";
/// Headers that set broker properties instead of custom ones.
const MESSAGE_ID: &str = "sb-message-id";
const CORRELATION_ID: &str = "sb-correlation-id";
const LABEL: &str = "sb-label";

fn http_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !matches!(
            name.to_ascii_lowercase().as_str(),
            "authorization"
                | "content-type"
                | "content-length"
                | "host"
                | "brokerproperties"
                | "location"
        )
}

/// The body and send options of a message.
pub fn encode(message: &OutboundMessage) -> (String, SendMessageOptions) {
    let mut custom = HashMap::new();
    let mut broker = SettableBrokerProperties::default();
    let mut content_type = None;
    let body = match std::str::from_utf8(&message.payload) {
        Ok(text) => text.to_string(),
        Err(_) => {
            custom.insert(ENCODING_PROPERTY.to_string(), json_string("base64"));
            base64::engine::general_purpose::STANDARD.encode(&message.payload)
        }
    };
    let mut rest: Vec<&Header> = Vec::new();
    for h in &message.headers {
        match h.0.as_str() {
            MESSAGE_ID => broker.message_id = Some(h.1.clone()),
            CORRELATION_ID => broker.correlation_id = Some(h.1.clone()),
            LABEL => broker.label = Some(h.1.clone()),
            "content-type" => content_type = Some(h.1.clone()),
            _ => rest.push(h),
        }
    }
    let one_by_one = rest
        .iter()
        .all(|(k, v)| http_name(k) && json_string(v).bytes().all(|b| (0x20..0x7f).contains(&b)))
        && {
            let mut names: Vec<String> = rest.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
            names.sort();
            names.dedup();
            names.len() == rest.len()
        };
    if one_by_one {
        for (k, v) in rest {
            custom.insert(k.to_ascii_lowercase(), json_string(v));
        }
    } else {
        let json = serde_json::to_string(&rest).unwrap_or_default();
        custom.insert(
            HEADERS_PROPERTY.to_string(),
            json_string(&base64::engine::general_purpose::STANDARD.encode(json)),
        );
    }
    let options = SendMessageOptions {
        content_type,
        broker_properties: Some(broker),
        custom_properties: Some(custom),
    };
    (body, options)
}

/// A property value as the REST API carries it: a JSON string.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Decodes a property value: JSON strings are unquoted, other values (JSON
/// numbers, booleans) kept as written.
fn property_value(v: &str) -> String {
    serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_string())
}

/// Payload and headers of a received message, and why it cannot be decoded.
pub fn decode(
    body: &[u8],
    properties: &[(String, String)],
) -> (Vec<u8>, Vec<Header>, Option<String>) {
    let mut headers = Vec::new();
    let mut problem = None;
    let mut base64_body = false;
    for (k, v) in properties {
        let value = property_value(v);
        match k.as_str() {
            ENCODING_PROPERTY => base64_body = value == "base64",
            HEADERS_PROPERTY => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(&value)
                    .ok()
                    .and_then(|j| serde_json::from_slice::<Vec<Header>>(&j).ok());
                match decoded {
                    Some(h) => headers.extend(h),
                    None => {
                        problem = Some(format!("property {HEADERS_PROPERTY} cannot be decoded"))
                    }
                }
            }
            _ => headers.push((k.clone(), value)),
        }
    }
    let payload = if base64_body {
        match base64::engine::general_purpose::STANDARD.decode(body) {
            Ok(p) => p,
            Err(e) => {
                problem = Some(format!("the body is marked base64 but is not: {e}"));
                body.to_vec()
            }
        }
    } else {
        body.to_vec()
    };
    (payload, headers, problem)
}

/// Sends messages one by one, in order; returns once all were accepted.
pub async fn publish(
    client: &QueueClient,
    connection: &str,
    topic: &TopicSpec,
    messages: Vec<OutboundMessage>,
) -> Result<(), PublishError> {
    for message in &messages {
        let (body, options) = encode(message);
        if body.len() > MAX_BODY_BYTES {
            return Err(PublishError::TooLarge {
                size: body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        client
            .send_message(&body, Some(options))
            .await
            .map_err(|e| {
                PublishError::Broker(anyhow::anyhow!(
                    "broker connection {connection:?} (servicebus): cannot send to queue {}: {}",
                    topic.address(),
                    describe(&e)
                ))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_trip_through_properties() {
        let m = OutboundMessage {
            payload: vec![0xff, 0x01],
            headers: vec![
                ("traceparent".into(), "00-ab-cd-01".into()),
                ("sb-message-id".into(), "m-1".into()),
                ("tenant".into(), "acme".into()),
            ],
        };
        let (body, options) = encode(&m);
        let broker = options.broker_properties.unwrap();
        assert_eq!(broker.message_id.as_deref(), Some("m-1"));
        let props: Vec<(String, String)> = options.custom_properties.unwrap().into_iter().collect();
        let (payload, mut headers, problem) = decode(body.as_bytes(), &props);
        headers.sort();
        assert_eq!(problem, None);
        assert_eq!(payload, vec![0xff, 0x01]);
        assert_eq!(
            headers,
            vec![
                ("tenant".into(), "acme".into()),
                ("traceparent".into(), "00-ab-cd-01".into())
            ]
        );
    }

    #[test]
    fn headers_http_cannot_carry_travel_together() {
        let m = OutboundMessage {
            payload: b"x".to_vec(),
            headers: vec![("Wéird name".into(), "naïve\nvalue".into())],
        };
        let (_, options) = encode(&m);
        let props: Vec<(String, String)> = options.custom_properties.unwrap().into_iter().collect();
        assert_eq!(props.len(), 1);
        assert_eq!(props[0].0, HEADERS_PROPERTY);
        let (_, headers, problem) = decode(b"x", &props);
        assert_eq!(problem, None);
        assert_eq!(headers, m.headers);
    }
}

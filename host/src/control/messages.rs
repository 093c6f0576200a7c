//! Messages on a topic: send (an owner-scoped token to a topic one of its
//! algorithms consumes, to test a queue) and peek (the admin only).

use base64::Engine as _;

use super::{Action, ControlError, ControlPlane, Role};
use crate::api::params::PeekQuery;
use crate::api::{self, MessageBody, SendMessages};
use crate::config::{self, TopicSpec};
use crate::connector::PublishError;
use crate::flow::Topology;
use crate::message::{InboundMessage, OutboundMessage};

/// The most messages one `POST /v1/messages` may carry.
pub const MAX_SEND_MESSAGES: usize = 1_000;

/// The most messages one peek returns, and how many without `limit`.
pub const MAX_PEEK_MESSAGES: usize = 1_000;
/// How far into a topic a peek may page (`offset`); the broker's own peek
/// is bounded in bytes too.
pub const MAX_PEEK_OFFSET: usize = 100_000;
const DEFAULT_PEEK_MESSAGES: usize = 10;

/// The payload bytes one peek returns at most: it stops before the message
/// that would go over (but always returns the first message).
pub const MAX_PEEK_BYTES: usize = 16 << 20;

impl ControlPlane {
    /// Publishes the messages of `req` to its topic, for a caller who may
    /// send to it: 400 for a malformed request, 404 for no such topic, 403
    /// for a topic none of an owner's algorithms may consume, 413 for a
    /// message over its broker's limit.
    pub async fn send(
        &self,
        role: &Role,
        req: SendMessages,
    ) -> Result<api::Published, ControlError> {
        let (topic, broker) = (req.topic.clone(), req.broker.clone());
        let messages = messages_of(req)?;
        let topology = self.router.topology();
        let topic = declared_topic(&topology, &topic, broker.as_deref())?;
        role.authorize(Action::Send(topic))?;
        let key = Topology::key(topic);
        let limit = topology
            .brokers
            .get(&topic.broker)
            .map(|b| b.connection.max_payload_bytes());
        if let Some(limit) = limit
            && let Some((i, m)) = messages
                .iter()
                .enumerate()
                .find(|(_, m)| m.payload.len() > limit)
        {
            return Err(too_large(&topic.broker, i, m.payload.len(), limit));
        }
        let count = messages.len();
        topology
            .publish(&key, messages)
            .await
            .map_err(|e| match e {
                PublishError::TooLarge { size, limit } => too_large(&topic.broker, 0, size, limit),
                e @ PublishError::RefusedTooLarge { .. } => {
                    ControlError::TooLarge(format!("{key}: {e}"))
                }
                e => ControlError::Unavailable(format!("cannot publish to {key}: {e:#}")),
            })?;
        Ok(api::Published {
            published: count,
            topic: key,
        })
    }

    /// Messages of a topic, oldest first, without consuming them (where the
    /// broker can peek): at most `limit` (default 10, at most
    /// [`MAX_PEEK_MESSAGES`]) from `offset`, and about [`MAX_PEEK_BYTES`] of
    /// payload; `truncated` says the byte limit cut the answer short.
    pub async fn peek(
        &self,
        role: &Role,
        broker: &str,
        topic: &str,
        q: PeekQuery,
    ) -> Result<api::Peeked, ControlError> {
        role.authorize(Action::PeekTopic)?;
        let limit = q.limit.unwrap_or(DEFAULT_PEEK_MESSAGES);
        if limit > MAX_PEEK_MESSAGES {
            return Err(ControlError::BadRequest(format!(
                "limit: {limit} is above the maximum of {MAX_PEEK_MESSAGES} messages per peek"
            )));
        }
        let topology = self.router.topology();
        let spec = topology
            .topics
            .iter()
            .find(|t| t.broker == broker && t.name == topic)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("no topic {topic:?} on broker {broker:?}"))
            })?;
        let offset = q.offset.unwrap_or(0);
        if offset > MAX_PEEK_OFFSET {
            return Err(ControlError::BadRequest(format!(
                "offset: {offset} is above the maximum of {MAX_PEEK_OFFSET}"
            )));
        }
        let mut messages = peek_messages(&topology, &spec, offset + limit).await?;
        messages.drain(..offset.min(messages.len()));
        let mut bytes = 0usize;
        let shown = messages
            .iter()
            .take_while(|m| {
                bytes = bytes.saturating_add(m.payload.len());
                bytes <= MAX_PEEK_BYTES || bytes == m.payload.len()
            })
            .count();
        Ok(api::Peeked {
            truncated: shown < messages.len(),
            messages: messages[..shown].iter().map(peeked).collect(),
        })
    }
}

/// The messages a send request carries, checked: valid names, at most
/// [`MAX_SEND_MESSAGES`], one payload or `messages` but not both, and no
/// `eventflow-*` header (those are the router's: provenance, dead-letter
/// signatures).
fn messages_of(req: SendMessages) -> Result<Vec<OutboundMessage>, ControlError> {
    let bad = |m: String| ControlError::BadRequest(m);
    config::check_name(&req.topic).map_err(|m| bad(format!("topic: {m}")))?;
    if let Some(b) = &req.broker {
        config::check_name(b).map_err(|m| bad(format!("broker: {m}")))?;
    }
    if req.messages.len() > MAX_SEND_MESSAGES {
        return Err(bad(format!(
            "messages: {} messages in one request; at most {MAX_SEND_MESSAGES} are allowed (send them in several requests)",
            req.messages.len()
        )));
    }
    let single = MessageBody {
        payload: req.payload,
        payload_base64: req.payload_base64,
        headers: req.headers,
        key: req.key,
    };
    let has_single = single.payload.is_some() || single.payload_base64.is_some();
    if !has_single && single.key.is_some() && !req.messages.is_empty() {
        return Err(bad("key: give each message its own key in messages".into()));
    }
    let messages: Vec<OutboundMessage> = if req.messages.is_empty() {
        vec![into_message(single)?]
    } else if has_single {
        return Err(bad("give either one payload or messages, not both".into()));
    } else {
        req.messages
            .into_iter()
            .map(into_message)
            .collect::<Result<_, _>>()?
    };
    if let Some((key, _)) = messages
        .iter()
        .flat_map(|m| &m.headers)
        .find(|(k, _)| k.to_ascii_lowercase().starts_with("eventflow-"))
    {
        return Err(bad(format!(
            "header {key:?}: eventflow-* headers are set by the router only"
        )));
    }
    Ok(messages)
}

/// The message a [`MessageBody`] describes.
fn into_message(body: MessageBody) -> Result<OutboundMessage, ControlError> {
    let payload = match (body.payload, body.payload_base64) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| ControlError::BadRequest(format!("payload_base64: {e}")))?,
        _ => {
            return Err(ControlError::BadRequest(
                "give exactly one of payload and payload_base64".into(),
            ));
        }
    };
    let mut headers = body.headers;
    if let Some(key) = body.key {
        crate::message::set_header(&mut headers, crate::message::KEY_HEADER, key);
    }
    Ok(OutboundMessage { payload, headers })
}

/// The one declared topic `name` (on `broker`, if given): 404 for none, 400
/// for a name on several brokers.
fn declared_topic<'a>(
    topology: &'a Topology,
    name: &str,
    broker: Option<&str>,
) -> Result<&'a TopicSpec, ControlError> {
    let candidates: Vec<&TopicSpec> = topology
        .topics
        .iter()
        .filter(|t| t.name == name && broker.is_none_or(|b| b == t.broker))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(ControlError::NotFound(format!(
            "no topic {name:?}{} is declared",
            broker
                .map(|b| format!(" on broker {b:?}"))
                .unwrap_or_default()
        ))),
        _ => Err(ControlError::BadRequest(format!(
            "topic {name:?} exists on several brokers: choose one with broker"
        ))),
    }
}

/// 413 for a message over its broker's size limit, naming the limit.
fn too_large(broker: &str, index: usize, size: usize, limit: usize) -> ControlError {
    ControlError::TooLarge(format!(
        "message {index}: its payload of {size} bytes is larger than broker {broker:?}'s limit of {limit} bytes"
    ))
}

/// Up to `limit` messages of `topic`, without consuming them.
async fn peek_messages(
    topology: &Topology,
    topic: &TopicSpec,
    limit: usize,
) -> Result<Vec<InboundMessage>, ControlError> {
    let broker = topology.brokers.get(&topic.broker).ok_or_else(|| {
        ControlError::Unavailable(format!("broker {:?} is not connected", topic.broker))
    })?;
    broker
        .connection
        .peek(topic, limit)
        .await
        .map_err(|e| ControlError::Unavailable(format!("cannot read {}: {e:#}", topic.name)))
}

/// A peeked message as the API shows it: the payload as text when it is
/// UTF-8, base64 otherwise.
fn peeked(m: &InboundMessage) -> api::PeekedMessage {
    let (payload, encoding) = match std::str::from_utf8(&m.payload) {
        Ok(t) => (t.to_string(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&m.payload),
            "base64",
        ),
    };
    api::PeekedMessage {
        id: m.id.clone(),
        payload,
        payload_encoding: encoding.into(),
        headers: m.headers.clone(),
        receive_count: m.attempt,
        enqueued_at: m.enqueued_at.map(crate::util::format_time),
    }
}

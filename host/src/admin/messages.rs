//! Messages: publish, peek, dead letters and their replay.

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;

use super::{ApiError, ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{DeadLetterQuery, FlowPath, PeekQuery, TopicPath};
use crate::api::{self, ErrorBody, MessageBody, SendMessages};
use crate::control::Action;
use crate::message::OutboundMessage;
use crate::router::Router;

/// The message a [`MessageBody`] describes.
fn into_message(body: MessageBody) -> Result<OutboundMessage, ApiError> {
    let payload = match (body.payload, body.payload_base64) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| ApiError::bad_request(format!("payload_base64: {e}")))?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of payload and payload_base64",
            ));
        }
    };
    Ok(OutboundMessage {
        payload,
        headers: body.headers,
    })
}

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

#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    summary = "Publish messages to a topic: at most 1000 per request, each within its broker's payload limit (413 above it); the whole body at most 24 MiB (413 above it)",
    request_body = SendMessages,
    responses((status = 200, body = api::Published), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SendMessages>,
) -> ApiResult<api::Published> {
    crate::config::check_name(&req.topic)
        .map_err(|m| ApiError::bad_request(format!("topic: {m}")))?;
    if let Some(b) = &req.broker {
        crate::config::check_name(b).map_err(|m| ApiError::bad_request(format!("broker: {m}")))?;
    }
    if req.messages.len() > MAX_SEND_MESSAGES {
        return Err(ApiError::bad_request(format!(
            "messages: {} messages in one request; at most {MAX_SEND_MESSAGES} are allowed (send them in several requests)",
            req.messages.len()
        )));
    }
    let single = MessageBody {
        payload: req.payload,
        payload_base64: req.payload_base64,
        headers: req.headers,
    };
    let has_single = single.payload.is_some() || single.payload_base64.is_some();
    let messages: Vec<OutboundMessage> = if req.messages.is_empty() {
        vec![into_message(single)?]
    } else if has_single {
        return Err(ApiError::bad_request(
            "give either one payload or messages, not both",
        ));
    } else {
        req.messages
            .into_iter()
            .map(into_message)
            .collect::<Result<_, _>>()?
    };
    // The router's own headers (provenance, dead-letter signatures) are
    // written by the router only.
    if let Some((key, _)) = messages
        .iter()
        .flat_map(|m| &m.headers)
        .find(|(k, _)| k.to_ascii_lowercase().starts_with("eventflow-"))
    {
        return Err(ApiError::bad_request(format!(
            "header {key:?}: eventflow-* headers are set by the router only"
        )));
    }
    let topology = state.router.topology();
    let candidates: Vec<_> = topology
        .topics
        .iter()
        .filter(|t| t.name == req.topic && req.broker.as_ref().is_none_or(|b| *b == t.broker))
        .collect();
    let topic = match candidates.as_slice() {
        [one] => *one,
        [] => {
            return Err(ApiError::not_found(format!(
                "no topic {:?}{} is declared",
                req.topic,
                req.broker
                    .as_ref()
                    .map(|b| format!(" on broker {b:?}"))
                    .unwrap_or_default()
            )));
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "topic {:?} exists on several brokers: choose one with broker",
                req.topic
            )));
        }
    };
    caller.0.authorize(Action::Send(topic))?;
    let key = crate::flow::Topology::key(topic);
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
            crate::connector::PublishError::TooLarge { size, limit } => {
                too_large(&topic.broker, 0, size, limit)
            }
            e @ crate::connector::PublishError::RefusedTooLarge { .. } => {
                ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("{key}: {e}"))
            }
            e => ApiError::unavailable(format!("cannot publish to {key}: {e:#}")),
        })?;
    Ok(Json(api::Published {
        published: count,
        topic: key,
    }))
}

/// 413 for a message over its broker's size limit, naming the limit.
fn too_large(broker: &str, index: usize, size: usize, limit: usize) -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "message {index}: its payload of {size} bytes is larger than broker {broker:?}'s limit of {limit} bytes"
        ),
    )
}

/// Messages of a topic, oldest first, without consuming them (where the
/// broker can peek): at most `limit` (default 10, at most
/// [`MAX_PEEK_MESSAGES`]) and about [`MAX_PEEK_BYTES`] of payload;
/// `truncated` says the byte limit cut the answer short.
#[utoipa::path(get, path = "/v1/brokers/{broker}/topics/{topic}/messages", tag = "messages",
    summary = "Peek at a topic's messages without consuming them: at most `limit` (default 10, at most 1000) from `offset` (default 0, at most 100000) and 16 MiB of payload; `truncated` says the byte limit cut the answer short",
    params(TopicPath, PeekQuery),
    responses((status = 200, body = api::Peeked), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn peek_topic(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    Query(q): Query<PeekQuery>,
) -> ApiResult<api::Peeked> {
    caller.0.authorize(Action::PeekTopic)?;
    let limit = q.limit.unwrap_or(DEFAULT_PEEK_MESSAGES);
    if limit > MAX_PEEK_MESSAGES {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is above the maximum of {MAX_PEEK_MESSAGES} messages per peek"
        )));
    }
    let topology = state.router.topology();
    let spec = topology
        .topics
        .iter()
        .find(|t| t.broker == broker && t.name == topic)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no topic {topic:?} on broker {broker:?}")))?;
    let offset = q.offset.unwrap_or(0);
    if offset > MAX_PEEK_OFFSET {
        return Err(ApiError::bad_request(format!(
            "offset: {offset} is above the maximum of {MAX_PEEK_OFFSET}"
        )));
    }
    let mut messages = peek_messages(&state.router, &spec, offset + limit).await?;
    messages.drain(..offset.min(messages.len()));
    let mut bytes = 0usize;
    let shown = messages
        .iter()
        .take_while(|m| {
            bytes = bytes.saturating_add(m.payload.len());
            bytes <= MAX_PEEK_BYTES || bytes == m.payload.len()
        })
        .count();
    let truncated = shown < messages.len();
    let out: Vec<api::PeekedMessage> = messages[..shown]
        .iter()
        .map(|m| {
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
        })
        .collect();
    Ok(Json(api::Peeked {
        messages: out,
        truncated,
    }))
}

async fn peek_messages(
    router: &Router,
    topic: &crate::config::TopicSpec,
    limit: usize,
) -> Result<Vec<crate::message::InboundMessage>, ApiError> {
    let topology = router.topology();
    let broker = topology.brokers.get(&topic.broker).ok_or_else(|| {
        ApiError::unavailable(format!("broker {:?} is not connected", topic.broker))
    })?;
    broker
        .connection
        .peek(topic, limit)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read {}: {e:#}", topic.name)))
}

/// The flow's dead letters among the first `limit` messages of its
/// dead-letter topic, each marked `verified` (written by this router) or
/// `unverified` (anything else on the topic that claims to be one).
#[utoipa::path(get, path = "/v1/flows/{flow}/dead-letters", tag = "dead letters",
    summary = "A flow's dead letters (only this flow's; each verified or unverified)",
    params(FlowPath, DeadLetterQuery),
    responses((status = 200, body = api::DeadLetterList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn list_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    Query(q): Query<DeadLetterQuery>,
) -> ApiResult<api::DeadLetterList> {
    let (_, _, letters) = state
        .control
        .dead_letters(&caller.0, &flow, q.limit.unwrap_or(1000))
        .await?;
    let verified = letters.iter().filter(|d| d.verified).count();
    let out: Vec<api::DeadLetter> = letters
        .into_iter()
        .map(|d| api::DeadLetter {
            dead_letter_id: d.id,
            verified: d.verified,
            status: if d.verified { "verified" } else { "unverified" }.into(),
            envelope: d.raw,
        })
        .collect();
    Ok(Json(api::DeadLetterList {
        verified,
        unverified: out.len() - verified,
        dead_letters: out,
    }))
}

#[utoipa::path(post, path = "/v1/flows/{flow}/dead-letters/replay", tag = "dead letters",
    summary = "Publish dead letters back to the flow's topic and remove them",
    params(FlowPath),
    request_body = Option<api::ReplayDeadLetters>,
    responses((status = 200, body = api::ReplayReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn replay_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    body: Option<ApiJson<api::ReplayDeadLetters>>,
) -> ApiResult<api::ReplayReport> {
    let req = body.map(|ApiJson(r)| r).unwrap_or_default();
    let report = state
        .control
        .replay_dead_letters(&caller.0, &flow, req)
        .await?;
    Ok(Json(report))
}

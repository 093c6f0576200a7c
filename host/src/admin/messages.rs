//! Messages: publish, peek, dead letters and their replay.

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiResult, AppState, Caller};
use crate::control::ReplayDeadLetters;
use crate::message::OutboundMessage;
use crate::router::Router;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageBody {
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

impl MessageBody {
    fn into_message(self) -> Result<OutboundMessage, ApiError> {
        let payload = match (self.payload, self.payload_base64) {
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
            headers: self.headers,
        })
    }
}

/// A message, or a batch of them (`messages`), for one topic.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendRequest {
    topic: String,
    #[serde(default)]
    broker: Option<String>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    messages: Vec<MessageBody>,
}

pub(super) async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SendRequest>,
) -> ApiResult {
    caller.require_admin()?;
    let single = MessageBody {
        payload: req.payload,
        payload_base64: req.payload_base64,
        headers: req.headers,
    };
    let has_single = single.payload.is_some() || single.payload_base64.is_some();
    let messages: Vec<OutboundMessage> = if req.messages.is_empty() {
        vec![single.into_message()?]
    } else if has_single {
        return Err(ApiError::bad_request(
            "give either one payload or messages, not both",
        ));
    } else {
        req.messages
            .into_iter()
            .map(MessageBody::into_message)
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
    let key = crate::flow::Topology::key(topic);
    let count = messages.len();
    topology
        .publish(&key, messages)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot publish to {key}: {e:#}")))?;
    Ok(Json(json!({ "published": count, "topic": key })))
}

/// Messages of a topic, oldest first, without consuming them (where the
/// broker can peek).
pub(super) async fn peek_topic(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    caller.require_admin()?;
    let topology = state.router.topology();
    let spec = topology
        .topics
        .iter()
        .find(|t| t.broker == broker && t.name == topic)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no topic {topic:?} on broker {broker:?}")))?;
    let messages = peek_messages(&state.router, &spec, q.limit.unwrap_or(100)).await?;
    let out: Vec<Value> = messages
        .iter()
        .map(|m| {
            let (payload, encoding) = match std::str::from_utf8(&m.payload) {
                Ok(t) => (t.to_string(), "utf8"),
                Err(_) => (
                    base64::engine::general_purpose::STANDARD.encode(&m.payload),
                    "base64",
                ),
            };
            json!({
                "id": m.id,
                "payload": payload,
                "payload_encoding": encoding,
                "headers": m.headers,
                "receive_count": m.attempt,
                "enqueued_at": m.enqueued_at.map(crate::util::format_time),
            })
        })
        .collect();
    Ok(Json(json!({ "messages": out })))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    pub(super) limit: Option<usize>,
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
pub(super) async fn list_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let (_, _, letters) = state
        .control
        .dead_letters(&caller.0, &flow, q.limit.unwrap_or(1000))
        .await?;
    let verified = letters.iter().filter(|d| d.verified).count();
    let out: Vec<Value> = letters
        .into_iter()
        .map(|d| {
            json!({
                "dead_letter_id": d.id,
                "verified": d.verified,
                "status": if d.verified { "verified" } else { "unverified" },
                "envelope": d.raw,
            })
        })
        .collect();
    Ok(Json(json!({
        "verified": verified,
        "unverified": out.len() - verified,
        "dead_letters": out,
    })))
}

pub(super) async fn replay_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    body: Option<ApiJson<ReplayDeadLetters>>,
) -> ApiResult {
    let req = body.map(|ApiJson(r)| r).unwrap_or_default();
    let report = state
        .control
        .replay_dead_letters(&caller.0, &flow, req)
        .await?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

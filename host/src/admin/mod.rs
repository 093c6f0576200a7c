//! The admin HTTP API (axum), bound to loopback by default. JSON under
//! `/v1`, bearer-token authenticated; `/metrics`, `/healthz` and `/readyz`
//! are open for scrapers and probes.

pub mod auth;
pub mod client;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as Http};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::flow::envelope::Envelope;
use crate::message::OutboundMessage;
use crate::router::Router;

/// An API error: a status and a message that says what to change.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn bad_request(m: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, m.into())
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, m.into())
    }
    fn unavailable(m: impl Into<String>) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, m.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

#[derive(Clone)]
struct AppState {
    router: Arc<Router>,
    token: Arc<str>,
}

/// Binds the admin listener, writes its address to the state directory and
/// serves until `shutdown`. Returns the bound address.
pub async fn serve(
    router: Arc<Router>,
    listen: &str,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let token = auth::ensure_token(state_dir)?;
    let addr_file = state_dir.join(auth::ADDR_FILE);
    let _ = std::fs::remove_file(&addr_file);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (admin.listen)"))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        router,
        token: token.into(),
    };
    let api = Http::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/flows", get(list_flows))
        .route(
            "/v1/brokers/{broker}/topics/{topic}/messages",
            get(peek_topic),
        )
        .route("/v1/flows/{flow}/dead-letters", get(list_dead_letters))
        .route(
            "/v1/flows/{flow}/dead-letters/replay",
            post(replay_dead_letters),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    let app = Http::new()
        .merge(api)
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let tmp = addr_file.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())
        .and_then(|_| std::fs::rename(&tmp, &addr_file))
        .with_context(|| format!("cannot write {}", addr_file.display()))?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "The admin API stopped.");
        }
    });
    Ok(addr)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if auth::same_token(t, &state.token) => next.run(request).await,
        Some(_) => ApiError(StatusCode::UNAUTHORIZED, "invalid token".into()).into_response(),
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token from the state directory>)".into(),
        )
        .into_response(),
    }
}

/// One message of a send request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
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
struct SendRequest {
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

async fn send_message(
    State(state): State<AppState>,
    body: Result<Json<SendRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
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
async fn peek_topic(
    State(state): State<AppState>,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
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

async fn list_plugins(State(state): State<AppState>) -> ApiResult {
    let flows: Vec<_> = state
        .router
        .config()
        .flows
        .iter()
        .filter(|f| f.enabled)
        .map(|f| (f.name.clone(), f.algorithm.clone()))
        .collect();
    let list = state.router.services().registry.list(&flows);
    Ok(Json(json!({ "plugins": list })))
}

async fn list_flows(State(state): State<AppState>) -> ApiResult {
    Ok(Json(json!({ "flows": state.router.flow_reports() })))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// The dead-letter topic of `flow`, or an error that says what is missing.
fn dead_letter_topic(
    router: &Router,
    flow: &str,
) -> Result<(crate::config::FlowSpec, crate::config::TopicSpec), ApiError> {
    let config = router.config();
    let spec = config
        .flows
        .iter()
        .find(|f| f.name == flow)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no flow named {flow:?}")))?;
    let dlq = spec
        .dead_letter_topic
        .clone()
        .ok_or_else(|| ApiError::bad_request(format!("flow {flow:?} has no dead_letter_topic")))?;
    let topic = router
        .topology()
        .topic(&spec.broker, &dlq)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("dead-letter topic {dlq:?} is not declared")))?;
    Ok((spec, topic))
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

async fn list_dead_letters(
    State(state): State<AppState>,
    UrlPath(flow): UrlPath<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let (_, topic) = dead_letter_topic(&state.router, &flow)?;
    let messages = peek_messages(&state.router, &topic, q.limit.unwrap_or(1000)).await?;
    let letters: Vec<Value> = messages
        .iter()
        .map(|m| {
            let envelope = serde_json::from_slice::<Value>(&m.payload).unwrap_or_else(
                |_| json!({ "unparsed_payload": String::from_utf8_lossy(&m.payload) }),
            );
            json!({ "dead_letter_id": m.id, "envelope": envelope })
        })
        .collect();
    Ok(Json(json!({ "dead_letters": letters })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// The original message id, or the dead letter's own id.
    #[serde(default)]
    id: Option<String>,
}

async fn replay_dead_letters(
    State(state): State<AppState>,
    UrlPath(flow): UrlPath<String>,
    body: Option<Json<ReplayRequest>>,
) -> ApiResult {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let (spec, dlq) = dead_letter_topic(&state.router, &flow)?;
    let topology = state.router.topology();
    let source = topology
        .topic(&spec.broker, &spec.topic)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("topic {:?} is not declared", spec.topic)))?;
    let letters = peek_messages(&state.router, &dlq, 100_000).await?;
    let mut replayed = Vec::new();
    for letter in letters {
        let Ok(envelope) = serde_json::from_slice::<Envelope>(&letter.payload) else {
            continue;
        };
        if envelope.flow != flow {
            continue;
        }
        if let Some(id) = &req.id
            && *id != envelope.source.message_id
            && *id != letter.id
        {
            continue;
        }
        let payload = envelope
            .original_payload()
            .map_err(|e| ApiError::bad_request(format!("dead letter {}: {e}", letter.id)))?;
        let mut headers = envelope.headers.clone();
        crate::message::set_header(
            &mut headers,
            "eventflow-replayed-from",
            envelope.source.message_id.clone(),
        );
        topology
            .publish(
                &crate::flow::Topology::key(&source),
                vec![OutboundMessage { payload, headers }],
            )
            .await
            .map_err(|e| {
                ApiError::unavailable(format!("cannot publish to {}: {e:#}", source.name))
            })?;
        let broker = &topology.brokers[&dlq.broker];
        broker
            .connection
            .remove(&dlq, &letter.id)
            .await
            .map_err(|e| {
                ApiError::unavailable(format!(
                    "replayed but cannot remove the dead letter {}: {e:#}",
                    letter.id
                ))
            })?;
        tracing::info!(flow = %flow, message_id = %envelope.source.message_id, "Dead letter replayed.");
        replayed.push(envelope.source.message_id);
    }
    if let Some(id) = &req.id
        && replayed.is_empty()
    {
        return Err(ApiError::not_found(format!(
            "no dead letter of flow {flow:?} has id {id:?}"
        )));
    }
    Ok(Json(json!({ "replayed": replayed })))
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.router.check_brokers().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.router.services().metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let brokers = state.router.check_brokers().await;
    let plugins = state.router.services().registry.list(&[]);
    let loaded = plugins.iter().filter(|p| p.hash.is_some()).count();
    let ready = brokers.iter().all(|(_, _, r)| r.is_ok());
    let body = json!({
        "ready": ready,
        "brokers": brokers.iter().map(|(name, kind, r)| json!({
            "name": name,
            "kind": kind,
            "state": if r.is_ok() { "connected" } else { "down" },
            "error": r.as_ref().err(),
        })).collect::<Vec<_>>(),
        "plugins_loaded": loaded,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

//! Messages: publish to a topic, peek at one.

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{PeekQuery, TopicPath};
use crate::api::{self, ErrorBody, SendMessages};

#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    summary = "Publish messages to a topic: at most 1000 per request, each within its broker's payload limit (413 above it); the whole body at most 24 MiB (413 above it)",
    request_body = SendMessages,
    responses((status = 200, body = api::Published), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SendMessages>,
) -> ApiResult<api::Published> {
    Ok(Json(state.control.send(&caller.0, req).await?))
}

/// Messages of a topic, oldest first, without consuming them (where the
/// broker can peek): see [`crate::control::ControlPlane::peek`].
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
    Ok(Json(
        state.control.peek(&caller.0, &broker, &topic, q).await?,
    ))
}

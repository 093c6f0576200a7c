//! Dead letters of a flow: list and replay.

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{DeadLetterQuery, FlowPath};
use crate::api::{self, ErrorBody};

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
    let list = state
        .control
        .dead_letter_list(&caller.0, &flow, q.limit)
        .await?;
    Ok(Json(list))
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

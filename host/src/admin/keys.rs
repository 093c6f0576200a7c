//! A flow's parked keys: list, release, drop.

use axum::Json;
use axum::extract::{Path as UrlPath, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::FlowPath;
use crate::api::{self, ErrorBody};

#[utoipa::path(get, path = "/v1/flows/{flow}/keys", tag = "flows",
    summary = "A flow's parked keys (on_key_failure = \"park\"), with the messages each holds",
    params(FlowPath),
    responses((status = 200, body = api::ParkedKeyList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
) -> ApiResult<api::ParkedKeyList> {
    Ok(Json(state.control.parked_keys(&caller.0, &flow).await?))
}

#[utoipa::path(post, path = "/v1/flows/{flow}/keys/release", tag = "flows",
    summary = "Release parked keys: the flow handles their held messages in order, then unparks them",
    params(FlowPath),
    request_body = Option<api::KeySelection>,
    responses((status = 200, body = api::KeysChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn release_keys(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    body: Option<ApiJson<api::KeySelection>>,
) -> ApiResult<api::KeysChanged> {
    let which = selection(body);
    Ok(Json(
        state.control.release_keys(&caller.0, &flow, which).await?,
    ))
}

#[utoipa::path(post, path = "/v1/flows/{flow}/keys/drop", tag = "flows",
    summary = "Drop parked keys: unpark them and delete their held messages (acknowledged on the broker when held)",
    params(FlowPath),
    request_body = Option<api::KeySelection>,
    responses((status = 200, body = api::KeysChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn drop_keys(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    body: Option<ApiJson<api::KeySelection>>,
) -> ApiResult<api::KeysChanged> {
    let which = selection(body);
    Ok(Json(
        state.control.drop_keys(&caller.0, &flow, which).await?,
    ))
}

/// The keys a release or drop request selects: every parked key when the
/// body is left out.
fn selection(body: Option<ApiJson<api::KeySelection>>) -> api::KeySelection {
    body.map(|ApiJson(r)| r).unwrap_or_default()
}

//! Where algorithms may send HTTP requests, over HTTP: `/v1/outbound` and
//! `/v1/algorithms/{owner}/{name}/outbound`.

use axum::Json;
use axum::extract::{Path as UrlPath, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::AlgorithmPath;
use crate::api::{self, ErrorBody};

#[utoipa::path(get, path = "/v1/outbound", tag = "outbound",
    summary = "Every algorithm's allowed HTTP origins",
    responses((status = 200, body = api::OutboundList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_outbound(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<api::OutboundList> {
    let grants = state.control.list_outbound(&caller.0)?;
    Ok(Json(api::OutboundList { grants }))
}

#[utoipa::path(post, path = "/v1/algorithms/{owner}/{name}/outbound", tag = "outbound",
    summary = "Allow an algorithm to send HTTP requests to an origin",
    params(AlgorithmPath),
    request_body = api::OutboundOrigin,
    responses((status = 200, body = api::OutboundGrant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn allow_outbound(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    ApiJson(body): ApiJson<api::OutboundOrigin>,
) -> ApiResult<api::OutboundGrant> {
    let algorithm = format!("{owner}/{name}");
    let grant = state
        .control
        .change_outbound(&caller.0, &algorithm, &body.origin, true)
        .await?;
    Ok(Json(grant))
}

#[utoipa::path(post, path = "/v1/algorithms/{owner}/{name}/outbound/revoke", tag = "outbound",
    summary = "Deny an origin an algorithm was allowed",
    params(AlgorithmPath),
    request_body = api::OutboundOrigin,
    responses((status = 200, body = api::OutboundGrant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn deny_outbound(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    ApiJson(body): ApiJson<api::OutboundOrigin>,
) -> ApiResult<api::OutboundGrant> {
    let algorithm = format!("{owner}/{name}");
    let grant = state
        .control
        .change_outbound(&caller.0, &algorithm, &body.origin, false)
        .await?;
    Ok(Json(grant))
}

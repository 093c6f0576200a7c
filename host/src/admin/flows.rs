//! Flows, an algorithm's topics and the loaded plugins over HTTP:
//! `/v1/flows`, `/v1/algorithms/{owner}/{name}/topics`, `/v1/plugins`.
//!
//! Thin, like every handler here: each checks its input's shape and calls
//! [`crate::control::ControlPlane`], which decides who may. The
//! `#[utoipa::path]` of each handler is its entry in the OpenAPI document
//! and, through `utoipa_axum::routes!`, its route.

use axum::Json;
use axum::extract::{Path as UrlPath, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{AlgorithmPath, FlowPath};
use crate::api::{self, Deleted, ErrorBody};

#[utoipa::path(get, path = "/v1/algorithms/{owner}/{name}/topics", tag = "flows",
    summary = "The topics an algorithm may use, each enabled or disabled (its queues tab)",
    params(AlgorithmPath),
    responses((status = 200, body = api::AlgorithmTopics), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn algorithm_topics(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name)): UrlPath<(String, String)>,
) -> ApiResult<api::AlgorithmTopics> {
    let topics = state.control.algorithm_topics(&caller.0, &owner, &name)?;
    let may_publish = state
        .control
        .algorithm_publishes(&caller.0, &owner, &name)?;
    Ok(Json(api::AlgorithmTopics {
        algorithm: format!("{owner}/{name}"),
        topics,
        may_publish,
    }))
}

#[utoipa::path(get, path = "/v1/flows", tag = "flows",
    summary = "Flows with their status",
    responses((status = 200, body = api::FlowList), (status = 401, body = ErrorBody)))]
pub(super) async fn list_flows(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<api::FlowList> {
    Ok(Json(api::FlowList {
        flows: state.control.flow_statuses(&caller.0),
    }))
}

#[utoipa::path(get, path = "/v1/flows/{flow}", tag = "flows",
    summary = "A flow, with its status",
    params(FlowPath),
    responses((status = 200, body = api::FlowDetail), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
) -> ApiResult<api::FlowDetail> {
    Ok(Json(state.control.flow_status(&caller.0, &flow)?))
}

#[utoipa::path(post, path = "/v1/flows", tag = "flows",
    summary = "Enable a topic for an algorithm version (creates or re-enables a flow)",
    request_body = api::EnableFlow,
    responses((status = 200, body = api::FlowChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn enable_flow(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<api::EnableFlow>,
) -> ApiResult<api::FlowChanged> {
    let change = state.control.enable_flow(&caller.0, req).await?;
    Ok(Json(change.to_api()))
}

#[utoipa::path(patch, path = "/v1/flows/{flow}", tag = "flows",
    summary = "Edit a flow's version, dead-letter topic, limits or state",
    params(FlowPath),
    request_body = api::EditFlow,
    responses((status = 200, body = api::FlowChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn edit_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    ApiJson(edit): ApiJson<api::EditFlow>,
) -> ApiResult<api::FlowChanged> {
    let change = state.control.edit_flow(&caller.0, &flow, edit).await?;
    Ok(Json(change.to_api()))
}

#[utoipa::path(delete, path = "/v1/flows/{flow}", tag = "flows",
    summary = "Delete a flow (its messages stay in the broker)",
    params(FlowPath),
    responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
) -> ApiResult<Deleted> {
    state.control.delete_flow(&caller.0, &flow).await?;
    Ok(Json(Deleted { deleted: flow }))
}

#[utoipa::path(post, path = "/v1/flows/{flow}/promote", tag = "flows",
    summary = "Promote a flow's canary: the flow runs the canary version (a declared canary's is pinned)",
    params(FlowPath),
    responses((status = 200, body = api::RolloutChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn promote_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
) -> ApiResult<api::RolloutChanged> {
    Ok(Json(state.control.promote_flow(&caller.0, &flow).await?))
}

#[utoipa::path(post, path = "/v1/flows/{flow}/rollback", tag = "flows",
    summary = "Roll a flow's canary back: it gets no more messages and leaves the flow",
    params(FlowPath),
    responses((status = 200, body = api::RolloutChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn rollback_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
) -> ApiResult<api::RolloutChanged> {
    Ok(Json(state.control.rollback_flow(&caller.0, &flow).await?))
}

#[utoipa::path(get, path = "/v1/plugins", tag = "plugins",
    summary = "Loaded algorithm versions (an owner-scoped token sees its owner's)",
    responses((status = 200, body = api::PluginList), (status = 401, body = ErrorBody)))]
pub(super) async fn list_plugins(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<api::PluginList> {
    let plugins = state.control.plugins(&caller.0);
    Ok(Json(api::PluginList { plugins }))
}

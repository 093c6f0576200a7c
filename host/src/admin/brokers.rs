//! Broker connections over HTTP: `/v1/brokers`.
//!
//! Thin, like every handler here: each checks its input's shape and calls
//! [`crate::control::ControlPlane`], which decides who may. The
//! `#[utoipa::path]` of each handler is its entry in the OpenAPI document
//! and, through `utoipa_axum::routes!`, its route.

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use serde_json::Value;

use super::{ApiError, ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{BrokerPath, ForceQuery};
use crate::api::{self, DeletedWithFlows, ErrorBody};

#[utoipa::path(get, path = "/v1/brokers", tag = "brokers",
    summary = "List broker connections (credentials redacted)",
    responses((status = 200, body = api::BrokerList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_brokers(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<api::BrokerList> {
    let brokers = state.control.brokers(&caller.0).await?;
    Ok(Json(api::BrokerList { brokers }))
}

#[utoipa::path(post, path = "/v1/brokers", tag = "brokers",
    summary = "Create a broker connection; inline credentials {\"value\": ...} are stored as secrets",
    request_body = api::NewBroker,
    responses((status = 200, body = api::Broker), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn create_broker(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<Value>,
) -> ApiResult<api::Broker> {
    if !spec.is_object() {
        return Err(ApiError::bad_request(
            "a broker connection is a JSON object",
        ));
    }
    let created = state.control.create_broker(&caller.0, spec).await?;
    Ok(Json(created))
}

#[utoipa::path(get, path = "/v1/brokers/{broker}", tag = "brokers",
    summary = "A broker connection (credentials redacted)",
    params(BrokerPath),
    responses((status = 200, body = api::Broker), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show_broker(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(broker): UrlPath<String>,
) -> ApiResult<api::Broker> {
    Ok(Json(state.control.broker(&caller.0, &broker)?))
}

#[utoipa::path(delete, path = "/v1/brokers/{broker}", tag = "brokers",
    summary = "Delete a broker connection (refused while flows use it, unless force)",
    params(BrokerPath, ForceQuery),
    responses((status = 200, body = DeletedWithFlows), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_broker(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(broker): UrlPath<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<DeletedWithFlows> {
    let disabled_flows = state
        .control
        .delete_broker(&caller.0, &broker, q.force.unwrap_or(false))
        .await?;
    Ok(Json(DeletedWithFlows {
        deleted: broker,
        disabled_flows,
    }))
}

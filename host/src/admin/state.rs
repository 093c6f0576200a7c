//! The whole desired state over HTTP: `/v1/state`.
//!
//! Thin, like every handler here: each checks its input's shape and calls
//! [`crate::control::ControlPlane`], which decides who may. The
//! `#[utoipa::path]` of each handler is its entry in the OpenAPI document
//! and, through `utoipa_axum::routes!`, its route.

use axum::Json;
use axum::extract::State;

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::{self, ErrorBody};
use crate::config::Declarations;

#[utoipa::path(get, path = "/v1/state", tag = "state",
    summary = "The desired state (brokers redacted)",
    responses((status = 200, body = api::StateView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn get_state(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<api::StateView> {
    Ok(Json(state.control.state(&caller.0)?))
}

#[utoipa::path(put, path = "/v1/state", tag = "state",
    summary = "Converge the desired state to these declarations (eventflow apply)",
    request_body = api::state::Declarations,
    responses((status = 200, body = api::Applied), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn put_state(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(d): ApiJson<Declarations>,
) -> ApiResult<api::Applied> {
    let applied = state.control.apply(&caller.0, d).await?;
    Ok(Json(api::Applied {
        brokers: applied.brokers.len(),
        topics: applied.topics.len(),
        flows: applied.flows.len(),
        algorithm_limits: applied.algorithm_limits.len(),
    }))
}

//! An algorithm's secrets over HTTP: `/v1/algorithms/{owner}/{name}/secrets`.
//!
//! Thin, like every handler here: each checks its input's shape and calls
//! [`crate::control::ControlPlane`], which decides who may. The
//! `#[utoipa::path]` of each handler is its entry in the OpenAPI document
//! and, through `utoipa_axum::routes!`, its route.

use axum::Json;
use axum::extract::{Path as UrlPath, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{AlgorithmPath, SecretPath};
use crate::api::{self, Deleted, ErrorBody};

#[utoipa::path(get, path = "/v1/algorithms/{owner}/{name}/secrets", tag = "secrets",
    summary = "Names of an algorithm's secrets (never values)",
    params(AlgorithmPath),
    responses((status = 200, body = api::SecretNames), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name)): UrlPath<(String, String)>,
) -> ApiResult<api::SecretNames> {
    let secrets = state.control.secret_names(&caller.0, &owner, &name).await?;
    Ok(Json(api::SecretNames {
        algorithm: format!("{owner}/{name}"),
        secrets,
    }))
}

#[utoipa::path(put, path = "/v1/algorithms/{owner}/{name}/secrets/{key}", tag = "secrets",
    summary = "Set a secret; the algorithm sees it as an environment variable",
    params(SecretPath),
    request_body = api::SecretValue,
    responses((status = 200, body = api::SecretSet), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn set_secret(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name, key)): UrlPath<(String, String, String)>,
    ApiJson(body): ApiJson<api::SecretValue>,
) -> ApiResult<api::SecretSet> {
    state
        .control
        .set_secret(&caller.0, &owner, &name, &key, body.value)
        .await?;
    Ok(Json(api::SecretSet {
        algorithm: format!("{owner}/{name}"),
        secret: key,
    }))
}

#[utoipa::path(delete, path = "/v1/algorithms/{owner}/{name}/secrets/{key}", tag = "secrets",
    summary = "Delete a secret",
    params(SecretPath),
    responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name, key)): UrlPath<(String, String, String)>,
) -> ApiResult<Deleted> {
    state
        .control
        .delete_secret(&caller.0, &owner, &name, &key)
        .await?;
    Ok(Json(Deleted { deleted: key }))
}

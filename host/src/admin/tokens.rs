//! Owner-scoped API tokens over HTTP: `/v1/tokens`.
//!
//! Thin, like every handler here: each checks its input's shape and calls
//! [`crate::control::ControlPlane`], which decides who may. The
//! `#[utoipa::path]` of each handler is its entry in the OpenAPI document
//! and, through `utoipa_axum::routes!`, its route.

use axum::Json;
use axum::extract::{Path as UrlPath, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::TokenPath;
use crate::api::{self, Deleted, ErrorBody};

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    summary = "Create an owner-scoped token (shown once)",
    request_body = api::NewToken,
    responses((status = 200, body = api::TokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<api::NewToken>,
) -> ApiResult<api::TokenCreated> {
    let (info, token) = state.control.create_token(&caller.0, &req.owner).await?;
    Ok(Json(api::TokenCreated {
        id: info.id,
        owner: info.owner,
        created_at: info.created_at,
        token,
    }))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    summary = "Owner-scoped tokens (without the tokens)",
    responses((status = 200, body = api::TokenList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<api::TokenList> {
    let tokens = state
        .control
        .tokens(&caller.0)
        .await?
        .into_iter()
        .map(|t| api::Token {
            id: t.id,
            owner: t.owner,
            created_at: t.created_at,
        })
        .collect();
    Ok(Json(api::TokenList { tokens }))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    summary = "Revoke a token",
    params(TokenPath),
    responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_token(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Deleted> {
    state.control.delete_token(&caller.0, &id).await?;
    Ok(Json(Deleted { deleted: id }))
}

#[utoipa::path(get, path = "/v1/whoami", tag = "tokens",
    summary = "Who the token belongs to and what it may manage",
    responses((status = 200, body = api::Identity), (status = 401, body = ErrorBody)))]
pub(super) async fn whoami(State(state): State<AppState>, caller: Caller) -> Json<api::Identity> {
    Json(state.control.whoami(&caller.0))
}

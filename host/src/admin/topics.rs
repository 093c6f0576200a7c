//! Topics and their grants over HTTP: `/v1/brokers/{broker}/topics`.
//!
//! Thin, like every handler here: each checks its input's shape and calls
//! [`crate::control::ControlPlane`], which decides who may. The
//! `#[utoipa::path]` of each handler is its entry in the OpenAPI document
//! and, through `utoipa_axum::routes!`, its route.

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};

use super::{ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{BrokerPath, ForceQuery, TopicPath};
use crate::api::{self, DeletedWithFlows, ErrorBody};

#[utoipa::path(get, path = "/v1/brokers/{broker}/topics", tag = "topics",
    summary = "Topics of a broker: declared ones and those the broker lists; listing_error says why the broker's own list is missing when it refused",
    params(BrokerPath),
    responses((status = 200, body = api::TopicListing), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_topics(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(broker): UrlPath<String>,
) -> ApiResult<api::TopicListing> {
    let (topics, listing_error) = state.control.list_topics(&caller.0, &broker).await?;
    Ok(Json(api::TopicListing {
        topics,
        listing_error,
    }))
}

#[utoipa::path(put, path = "/v1/brokers/{broker}/topics/{topic}", tag = "topics",
    summary = "Declare a topic, or change the given fields of a declared one (omitted fields keep their values)",
    params(TopicPath),
    request_body = Option<api::DeclareTopic>,
    responses((status = 200, body = api::Topic), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn declare_topic(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    body: Option<ApiJson<api::DeclareTopic>>,
) -> ApiResult<api::Topic> {
    let spec = body.map(|ApiJson(s)| s).unwrap_or_default();
    let declared = state
        .control
        .declare_topic(&caller.0, &broker, &topic, spec)
        .await?;
    Ok(Json(declared.into()))
}

#[utoipa::path(delete, path = "/v1/brokers/{broker}/topics/{topic}", tag = "topics",
    summary = "Delete a topic declaration (refused while flows use it, unless force)",
    params(TopicPath, ForceQuery),
    responses((status = 200, body = DeletedWithFlows), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_topic(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<DeletedWithFlows> {
    let disabled_flows = state
        .control
        .delete_topic(&caller.0, &broker, &topic, q.force.unwrap_or(false))
        .await?;
    Ok(Json(DeletedWithFlows {
        deleted: topic,
        disabled_flows,
    }))
}

#[utoipa::path(post, path = "/v1/brokers/{broker}/topics/{topic}/grants", tag = "topics",
    summary = "Grant an algorithm consume and/or publish access",
    params(TopicPath),
    request_body = api::Grant,
    responses((status = 200, body = api::Topic), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn add_grant(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    ApiJson(grant): ApiJson<api::Grant>,
) -> ApiResult<api::Topic> {
    let t = state
        .control
        .grant(&caller.0, &broker, &topic, grant, true)
        .await?;
    Ok(Json(t.into()))
}

#[utoipa::path(post, path = "/v1/brokers/{broker}/topics/{topic}/grants/revoke", tag = "topics",
    summary = "Revoke an algorithm's access",
    params(TopicPath),
    request_body = api::Grant,
    responses((status = 200, body = api::Topic), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn revoke_grant(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    ApiJson(grant): ApiJson<api::Grant>,
) -> ApiResult<api::Topic> {
    let t = state
        .control
        .grant(&caller.0, &broker, &topic, grant, false)
        .await?;
    Ok(Json(t.into()))
}

//! The control plane over HTTP: brokers, topics and grants, flows, secrets,
//! tokens and the whole desired state. Thin: each handler checks its input's
//! shape and calls [`crate::control::ControlPlane`]. The `#[utoipa::path]`
//! of each handler is its entry in the OpenAPI document and, through
//! `utoipa_axum::routes!`, its route.

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use serde_json::Value;

use super::{ApiError, ApiJson, ApiResult, AppState, Caller};
use crate::api::params::{
    AlgorithmPath, BrokerPath, FlowPath, ForceQuery, SecretPath, TokenPath, TopicPath,
};
use crate::api::{self, Deleted, DeletedWithFlows, ErrorBody};
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
    Ok(Json(api::AlgorithmTopics {
        algorithm: format!("{owner}/{name}"),
        topics,
    }))
}

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

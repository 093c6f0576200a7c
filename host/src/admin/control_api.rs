//! The control plane over HTTP: brokers, topics and grants, flows, secrets,
//! tokens and the whole desired state. Thin: each handler checks its input's
//! shape and calls [`crate::control::ControlPlane`].

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiResult, AppState, Caller};
use crate::config::Declarations;
use crate::control::{Action, DeclareTopic, EditFlow, EnableFlow, Grant};

#[derive(Deserialize, Default)]
pub(super) struct ForceQuery {
    #[serde(default)]
    force: Option<bool>,
}

pub(super) async fn get_state(State(state): State<AppState>, caller: Caller) -> ApiResult {
    Ok(Json(state.control.state(&caller.0)?))
}

pub(super) async fn put_state(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(d): ApiJson<Declarations>,
) -> ApiResult {
    let applied = state.control.apply(&caller.0, d).await?;
    Ok(Json(json!({
        "brokers": applied.brokers.len(),
        "topics": applied.topics.len(),
        "flows": applied.flows.len(),
        "algorithm_limits": applied.algorithm_limits.len(),
    })))
}

pub(super) async fn list_brokers(State(state): State<AppState>, caller: Caller) -> ApiResult {
    let mut brokers = state.control.brokers(&caller.0)?;
    let health = state.router.check_brokers().await;
    for b in &mut brokers {
        let name = b["name"].as_str().unwrap_or_default().to_string();
        if let Some((_, _, r)) = health.iter().find(|(n, _, _)| *n == name) {
            b["state"] = json!(if r.is_ok() { "connected" } else { "down" });
        }
    }
    Ok(Json(json!({ "brokers": brokers })))
}

pub(super) async fn create_broker(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<Value>,
) -> ApiResult {
    if !spec.is_object() {
        return Err(ApiError::bad_request(
            "a broker connection is a JSON object",
        ));
    }
    let created = state.control.create_broker(&caller.0, spec).await?;
    Ok(Json(created))
}

pub(super) async fn show_broker(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(broker): UrlPath<String>,
) -> ApiResult {
    Ok(Json(state.control.broker(&caller.0, &broker)?))
}

pub(super) async fn delete_broker(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(broker): UrlPath<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult {
    let disabled = state
        .control
        .delete_broker(&caller.0, &broker, q.force.unwrap_or(false))
        .await?;
    Ok(Json(
        json!({ "deleted": broker, "disabled_flows": disabled }),
    ))
}

pub(super) async fn list_topics(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(broker): UrlPath<String>,
) -> ApiResult {
    let (topics, listing_error) = state.control.list_topics(&caller.0, &broker).await?;
    Ok(Json(
        json!({ "topics": topics, "listing_error": listing_error }),
    ))
}

pub(super) async fn declare_topic(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    body: Option<ApiJson<DeclareTopic>>,
) -> ApiResult {
    let spec = body.map(|ApiJson(s)| s).unwrap_or_default();
    let declared = state
        .control
        .declare_topic(&caller.0, &broker, &topic, spec)
        .await?;
    Ok(Json(serde_json::to_value(declared).unwrap_or_default()))
}

pub(super) async fn delete_topic(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    Query(q): Query<ForceQuery>,
) -> ApiResult {
    let disabled = state
        .control
        .delete_topic(&caller.0, &broker, &topic, q.force.unwrap_or(false))
        .await?;
    Ok(Json(
        json!({ "deleted": topic, "disabled_flows": disabled }),
    ))
}

pub(super) async fn add_grant(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    ApiJson(grant): ApiJson<Grant>,
) -> ApiResult {
    let t = state
        .control
        .grant(&caller.0, &broker, &topic, grant, true)
        .await?;
    Ok(Json(serde_json::to_value(t).unwrap_or_default()))
}

pub(super) async fn revoke_grant(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((broker, topic)): UrlPath<(String, String)>,
    ApiJson(grant): ApiJson<Grant>,
) -> ApiResult {
    let t = state
        .control
        .grant(&caller.0, &broker, &topic, grant, false)
        .await?;
    Ok(Json(serde_json::to_value(t).unwrap_or_default()))
}

pub(super) async fn algorithm_topics(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name)): UrlPath<(String, String)>,
) -> ApiResult {
    let topics = state.control.algorithm_topics(&caller.0, &owner, &name)?;
    Ok(Json(
        json!({ "algorithm": format!("{owner}/{name}"), "topics": topics }),
    ))
}

pub(super) async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name)): UrlPath<(String, String)>,
) -> ApiResult {
    let names = state.control.secret_names(&caller.0, &owner, &name).await?;
    Ok(Json(
        json!({ "algorithm": format!("{owner}/{name}"), "secrets": names }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretValue {
    value: String,
}

pub(super) async fn set_secret(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name, key)): UrlPath<(String, String, String)>,
    ApiJson(body): ApiJson<SecretValue>,
) -> ApiResult {
    state
        .control
        .set_secret(&caller.0, &owner, &name, &key, body.value)
        .await?;
    Ok(Json(
        json!({ "algorithm": format!("{owner}/{name}"), "secret": key }),
    ))
}

pub(super) async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath((owner, name, key)): UrlPath<(String, String, String)>,
) -> ApiResult {
    state
        .control
        .delete_secret(&caller.0, &owner, &name, &key)
        .await?;
    Ok(Json(json!({ "deleted": key })))
}

pub(super) async fn list_flows(State(state): State<AppState>, caller: Caller) -> ApiResult {
    Ok(Json(
        json!({ "flows": state.control.flow_statuses(&caller.0) }),
    ))
}

pub(super) async fn show_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
) -> ApiResult {
    Ok(Json(state.control.flow_status(&caller.0, &flow)?))
}

pub(super) async fn enable_flow(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<EnableFlow>,
) -> ApiResult {
    let change = state.control.enable_flow(&caller.0, req).await?;
    Ok(Json(change.to_json()))
}

pub(super) async fn edit_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
    ApiJson(edit): ApiJson<EditFlow>,
) -> ApiResult {
    let change = state.control.edit_flow(&caller.0, &flow, edit).await?;
    Ok(Json(change.to_json()))
}

pub(super) async fn delete_flow(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(flow): UrlPath<String>,
) -> ApiResult {
    state.control.delete_flow(&caller.0, &flow).await?;
    Ok(Json(json!({ "deleted": flow })))
}

pub(super) async fn list_plugins(State(state): State<AppState>, caller: Caller) -> ApiResult {
    let flows: Vec<_> = state
        .control
        .flows(&caller.0)
        .into_iter()
        .filter(|f| f.enabled)
        .map(|f| (f.name, f.algorithm))
        .collect();
    let mut list = state.router.services().registry.list(&flows);
    list.retain(|p| {
        let owner = p.algorithm.split_once('/').map_or("", |(o, _)| o);
        caller.0.may(Action::SeePlugins(owner))
    });
    Ok(Json(json!({ "plugins": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    owner: String,
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<NewToken>,
) -> ApiResult {
    let (info, token) = state.control.create_token(&caller.0, &req.owner).await?;
    Ok(Json(
        json!({ "id": info.id, "owner": info.owner, "created_at": info.created_at, "token": token }),
    ))
}

pub(super) async fn list_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult {
    Ok(Json(
        json!({ "tokens": state.control.tokens(&caller.0).await? }),
    ))
}

pub(super) async fn delete_token(
    State(state): State<AppState>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> ApiResult {
    state.control.delete_token(&caller.0, &id).await?;
    Ok(Json(json!({ "deleted": id })))
}

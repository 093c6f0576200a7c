//! Open endpoints: metrics, liveness and readiness.

use super::AppState;
use crate::api::status::{BrokerHealth, FlowNotReady, Health, Readiness};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    state.router.check_brokers().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.router.services().metrics.encode(),
    )
        .into_response()
}

pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let brokers = state.router.check_brokers().await;
    let plugins = state.router.services().registry.list(&[]);
    let loaded = plugins.iter().filter(|p| p.hash.is_some()).count();
    let unready_flows = state.router.unready_flows();
    let ready = brokers.iter().all(|(_, _, r)| r.is_ok()) && unready_flows.is_empty();
    let body = Readiness {
        ready,
        brokers: brokers
            .iter()
            .map(|(name, kind, r)| BrokerHealth {
                name: name.to_string(),
                kind: kind.to_string(),
                state: if r.is_ok() { "connected" } else { "down" }.into(),
                error: r.as_ref().err().map(|e| e.to_string()),
            })
            .collect(),
        plugins_loaded: loaded,
        flows_not_ready: unready_flows
            .iter()
            .map(|(name, reason)| FlowNotReady {
                name: name.to_string(),
                reason: reason.to_string(),
            })
            .collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

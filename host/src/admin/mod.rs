//! The admin HTTP API (axum), bound to loopback by default.
//!
//! JSON under versioned paths (`/v1/...`), bearer-token authenticated: the
//! admin token (generated at first start, `<state_dir>/admin.token`, mode
//! 0600) can do everything; owner-scoped tokens (created with
//! `POST /v1/tokens`) only manage their owner's algorithms' flows, dead
//! letters and secrets and send to topics those algorithms consume
//! ([`crate::control::Role::authorize`] decides every call). `/metrics`,
//! `/healthz`, `/readyz` and `/v1/openapi.json` are open. Errors are JSON
//! `{"error": "..."}`: 400 for bad input (a name in the path or body that is
//! not a valid name included), 401 without a valid token, 403 for a token
//! that may not, 404, 409 for conflicts, 413 for a body over
//! [`MAX_BODY_BYTES`] or a message over its broker's limit.

pub mod auth;
mod brokers;
pub mod console;
mod dead_letters;
mod flows;
mod health;
mod keys;
mod messages;
mod openapi;
mod outbound;
mod runtime;
mod secrets;
mod state;
mod tokens;
mod topics;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, RawPathParams, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router as Http};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::control::{ControlError, ControlPlane, Role};
use crate::router::Router;
use crate::state::token::{same_token, token_hash};

/// An API error: a status and a message that says what to change.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn bad_request(m: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, m.into())
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, m.into())
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(crate::api::ErrorBody { error: self.1 })).into_response()
    }
}

/// A handler's answer: a body of the API's contract ([`crate::api`]), or
/// an error.
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The largest request body: one message of the largest payload any broker
/// takes (16 MiB, the embedded broker's default), grown by a third as
/// `payload_base64`, plus room for its envelope and headers.
pub const MAX_BODY_BYTES: usize = 24 << 20;

/// A JSON body whose rejection is a 400 with the parser's message.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the admin API's limit of {} MiB ({MAX_BODY_BYTES} bytes)",
                    MAX_BODY_BYTES >> 20
                ),
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let has_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0")
            || req.headers().contains_key(header::TRANSFER_ENCODING);
        if !has_body {
            return Ok(None);
        }
        <ApiJson<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// The caller's role, put in the request by the authentication layer.
#[derive(Clone, Debug)]
pub struct Caller(pub Role);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "not authenticated".into()))
    }
}

#[derive(Clone)]
struct AppState {
    router: Arc<Router>,
    control: Arc<ControlPlane>,
    token: Arc<str>,
}

/// Binds the admin listener, writes its address to the state directory and
/// serves until `shutdown`. Returns the bound address.
pub async fn serve(
    router: Arc<Router>,
    listen: &str,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let token = auth::ensure_token(state_dir)?;
    let addr_file = state_dir.join(auth::ADDR_FILE);
    let _ = std::fs::remove_file(&addr_file);
    // Bound here, served on the admin runtime (see `runtime`).
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .with_context(|| format!("cannot listen on {listen} (admin.listen)"))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        control: Arc::new(ControlPlane::new(router.clone())),
        router,
        token: token.into(),
    };
    if let Some(decisions) = state.router.services().rollouts.take_decisions() {
        tokio::spawn(
            state
                .control
                .clone()
                .save_rollout_decisions(decisions, shutdown.clone()),
        );
    }
    let (api, document) = openapi::routes().split_for_parts();
    let document = serde_json::to_value(&document).context("cannot write the OpenAPI document")?;
    let api = api
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(check_path_names))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            tokio::runtime::Handle::current(),
            runtime::on_main_runtime,
        ));
    let app = Http::new()
        .merge(api)
        .route(
            openapi::PATH,
            get(move || std::future::ready(Json(document.clone()))),
        )
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(console::routes())
        .fallback(not_found)
        .with_state(state);
    let tmp = addr_file.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())
        .and_then(|_| std::fs::rename(&tmp, &addr_file))
        .with_context(|| format!("cannot write {}", addr_file.display()))?;
    runtime::spawn(async move {
        let served = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "The admin API stopped.");
        }
    })?;
    Ok(addr)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /v1/openapi.json)")
}

/// Refuses (400) a request whose path parameters are not valid names, before
/// any handler sees them: every `{broker}`, `{topic}`, `{flow}`, `{owner}`,
/// `{name}` and `{id}` must pass [`crate::config::check_name`] (so `..`,
/// `a/b` sent as `a%2Fb`, `%2e%2e`, NUL and overlong names are refused) and
/// `{key}` must be an environment variable name. The error names the
/// parameter.
async fn check_path_names(
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    use axum::extract::rejection::RawPathParamsRejection;
    let params = match params {
        Ok(p) => p,
        Err(RawPathParamsRejection::MissingPathParams(_)) => return next.run(request).await,
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    for (param, value) in &params {
        let checked = if param == "key" {
            if crate::config::is_valid_variable(value) {
                Ok(())
            } else {
                Err(format!(
                    "{} is not a valid secret name: use 1 to {} letters, digits and '_', not starting with a digit (it becomes an environment variable)",
                    crate::config::quote_name(value),
                    crate::config::MAX_NAME_BYTES
                ))
            }
        } else {
            crate::config::check_name(value)
        };
        if let Err(m) = checked {
            return ApiError::bad_request(format!("{param}: {m}")).into_response();
        }
    }
    next.run(request).await
}

/// Resolves the bearer token to a role, or answers 401.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = presented else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>; the admin token is in the state directory)".into(),
        )
        .into_response();
    };
    let role = if same_token(&token, &state.token) {
        Some(Role::Admin)
    } else {
        let store = state.router.services().state.clone();
        let hash = token_hash(&token);
        tokio::task::spawn_blocking(move || store.token(&hash))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .map(|info| Role::Owner(info.owner))
    };
    match role {
        Some(role) => {
            request.extensions_mut().insert(Caller(role));
            next.run(request).await
        }
        None => ApiError(StatusCode::UNAUTHORIZED, "invalid token".into()).into_response(),
    }
}

//! The admin listener's own runtime: one OS thread that no algorithm and no
//! blocking host call ever runs on, so `/healthz`, `/readyz` and `/metrics`
//! answer while every worker of the main runtime is busy.
//!
//! The authenticated API is served from here too, but each of its requests
//! is handed to the main runtime ([`on_main_runtime`]): what a request starts
//! (a flow, a broker connection and their tasks) must live with the router,
//! not on this thread.

use std::future::Future;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::runtime::Handle;

use super::ApiError;

/// The name of the admin listener's thread.
const THREAD_NAME: &str = "eventflow-admin";

/// Runs `server` on a new single-threaded runtime on a thread of its own.
///
/// The runtime outlives `server`: connections opened from it (a broker
/// readiness check's, say) may be reused by the router's tasks until the
/// process exits.
pub(super) fn spawn(server: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(THREAD_NAME)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the admin API's runtime: {e}"))?;
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            runtime.block_on(async move {
                server.await;
                std::future::pending::<()>().await
            })
        })
        .map_err(|e| anyhow::anyhow!("cannot start the admin API's thread: {e}"))?;
    Ok(())
}

/// Middleware: runs the rest of the request on the main runtime.
pub(super) async fn on_main_runtime(
    State(main): State<Handle>,
    request: Request,
    next: Next,
) -> Response {
    match main.spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's handler failed: {e}"),
        )
        .into_response(),
    }
}

//! `eventflow run`: the router process from start to a clean exit.

use std::path::Path;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::router::Router;

/// Runs the router until SIGINT or SIGTERM, then stops gracefully: no new
/// messages are received, in-flight ones finish and are settled.
pub async fn run(mut config: Config, config_path: &Path) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    config.mirror_plugins();
    // Plugins from a bucket: mirrored once before the router scans its
    // plugin directory, then every `plugins_poll_secs`.
    let mirror = match crate::mirror::Mirror::of(&config)? {
        Some(mut mirror) => {
            let failing = match mirror.sync().await {
                Ok(synced) => {
                    tracing::info!(
                        bucket = %config.plugins.backend,
                        downloaded = synced.downloaded.len(),
                        removed = synced.removed.len(),
                        "Plugin bucket mirrored."
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(
                        bucket = %config.plugins.backend,
                        error = %format!("{e:#}"),
                        "Cannot list the plugin bucket; starting with the plugins mirrored last."
                    );
                    true
                }
            };
            Some((mirror, failing))
        }
        None => None,
    };
    let listen = config.admin.listen.clone();
    let router_poll_secs = config.router.plugins_poll_secs;
    let state_dir = config.router.state_dir.clone();
    tracing::info!(
        config = %config_path.display(),
        plugins = %config.router.plugins_dir.display(),
        data = %config.router.data_dir.display(),
        state = %state_dir.display(),
        "Eventflow starting."
    );
    let router = Router::start(config).await?;
    let addr =
        crate::admin::serve(router.clone(), &listen, &state_dir, router.shutdown_token()).await?;
    // An algorithm's HTTP requests never reach the admin API.
    router.protect_admin(addr);
    // Every file of the state directory is private, the address file too.
    crate::state::secure_dir(&state_dir)?;
    let watcher = crate::watcher::spawn(router.clone());
    let mirror = mirror.map(|(m, failing)| {
        m.spawn(
            std::time::Duration::from_secs_f64(router_poll_secs),
            failing,
        )
    });
    let flows = router.flow_reports().len();
    tracing::info!(
        admin = %format!("http://{addr}"),
        console = %format!("http://{addr}{}/", crate::admin::console::PATH),
        flows,
        "Eventflow is running."
    );
    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(
        signal = signal_name,
        "Stopping: finishing in-flight messages."
    );
    watcher.abort();
    if let Some(mirror) = mirror {
        mirror.abort();
    }
    router.shutdown().await;
    let _ = std::fs::remove_file(state_dir.join(crate::admin::auth::ADDR_FILE));
    tracing::info!("Eventflow stopped.");
    crate::telemetry::shutdown();
    Ok(())
}

//! `run`, `check` and `apply`: the router and its configuration file.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{Failure, Global, LogFormat, output};

/// `eventflow run`.
#[derive(Args, Debug)]
pub(super) struct RunArgs {
    /// Overrides router.plugins_dir.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Overrides router.data_dir.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Overrides router.state_dir.
    #[arg(long)]
    state: Option<PathBuf>,
    /// When a store file (state.redb, an embedded broker's file) is
    /// damaged, rename it to `<file>.damaged-<timestamp>` and start with
    /// an empty one instead of refusing to start.
    #[arg(long)]
    move_damaged_aside: bool,
}

pub(super) async fn run(g: &Global, args: RunArgs, log: LogFormat) -> Result<(), Failure> {
    let mut cfg = g.load()?;
    cfg.router.move_damaged_aside = args.move_damaged_aside;
    if let Some(p) = args.plugins {
        if !cfg.plugins.is_local() {
            return Err(anyhow::anyhow!(
                "--plugins {} names a plugin directory, but [plugins] backend is {}: plugins come from the bucket",
                p.display(),
                cfg.plugins.backend
            )
            .into());
        }
        cfg.router.plugins_dir = p;
    }
    if let Some(d) = args.data {
        cfg.router.data_dir = d;
    }
    if let Some(s) = args.state {
        cfg.router.state_dir = s;
    }
    crate::telemetry::init(log);
    crate::run::run(cfg, &g.config).await?;
    Ok(())
}

pub(super) fn check(g: &Global) -> Result<(), Failure> {
    let cfg = g.load()?;
    let warning = crate::router::pool_oversubscription(&cfg);
    if g.json {
        output::json(&serde_json::json!({
            "config": g.config,
            "declarations": cfg.declarations(),
            "warning": warning,
        }));
        return Ok(());
    }
    println!(
        "{}: ok ({} broker connections, {} topics, {} flows)",
        g.config.display(),
        cfg.brokers.len(),
        cfg.topics.len(),
        cfg.flows.len()
    );
    for f in &cfg.flows {
        let dlq = f
            .dead_letter_topic
            .as_deref()
            .unwrap_or("none: failures are dropped");
        println!(
            "  flow {}: {}:{} -> {} (dead letters: {dlq})",
            f.name, f.broker, f.topic, f.algorithm
        );
    }
    if let Some(warning) = warning {
        println!("warning: {warning}");
    }
    Ok(())
}

pub(super) async fn apply(g: &Global, file: &Path) -> Result<(), Failure> {
    let declarations = crate::config::load(file)?.declarations();
    let applied = g.client()?.apply(&declarations).await?;
    if g.json {
        output::json(&applied);
    } else {
        println!(
            "applied {}: {} broker connections, {} topics, {} flows",
            file.display(),
            applied.brokers,
            applied.topics,
            applied.flows
        );
    }
    Ok(())
}

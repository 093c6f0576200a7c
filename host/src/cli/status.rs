//! `status` and `plugins`: what the running router is doing.

use clap::Subcommand;

use super::output;
use super::{Failure, Global};
use crate::api;

#[derive(Subcommand, Debug)]
pub(super) enum PluginsCommand {
    /// Lists owner/name/version, status, hash, load time, initial memory and the flows using each.
    List,
}

pub(super) async fn plugins(g: &Global, command: PluginsCommand) -> Result<(), Failure> {
    let PluginsCommand::List = command;
    let plugins = g.client()?.plugins().await?;
    if g.json {
        output::json(&plugins);
    } else {
        print_plugins(&plugins);
    }
    Ok(())
}

pub(super) async fn status(g: &Global, only: Option<&str>) -> Result<(), Failure> {
    let c = g.client()?;
    let mut flows = c.flows().await?;
    if let Some(name) = only {
        flows.retain(|f| f.report.name == name);
        if flows.is_empty() {
            return Err(anyhow::anyhow!("no flow named {name:?}").into());
        }
    }
    let ready = c.readiness().await.ok();
    if g.json {
        output::json(&serde_json::json!({ "flows": flows, "readiness": ready }));
    } else {
        print_status(&flows, ready.as_ref());
    }
    Ok(())
}

fn print_plugins(plugins: &[api::Plugin]) {
    if plugins.is_empty() {
        println!("no algorithms loaded");
        return;
    }
    println!(
        "{:<40} {:<9} {:<14} {:<25} {:<8} FLOWS",
        "ALGORITHM", "STATUS", "HASH", "LOADED", "MEMORY"
    );
    for p in plugins {
        let hash = p
            .hash
            .as_deref()
            .map(|h| &h[..12.min(h.len())])
            .unwrap_or("-");
        let memory = p
            .initial_memory_mib
            .map_or("-".to_string(), |m| format!("{m} MiB"));
        println!(
            "{:<40} {:<9} {:<14} {:<25} {:<8} {}",
            p.algorithm,
            p.status,
            hash,
            p.loaded_at.as_deref().unwrap_or("-"),
            memory,
            output::list(&p.flows)
        );
        if let Some(rejected) = &p.rejected {
            println!("    rejected: {}", rejected.reason);
        }
        for shortfall in &p.memory_shortfalls {
            println!("    not run: {shortfall}");
        }
    }
}

fn print_status(flows: &[api::FlowEntry], ready: Option<&api::status::Readiness>) {
    if let Some(ready) = ready {
        for b in &ready.brokers {
            println!(
                "broker {} ({}): {}{}",
                b.name,
                b.kind,
                b.state,
                b.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        for f in &ready.flows_not_ready {
            println!("flow {} not ready: {}", f.name, f.reason);
        }
    }
    println!(
        "{:<24} {:<22} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>9}  LAST ERROR",
        "FLOW", "STATE", "IN/s", "OK/s", "FAIL/s", "IN-FLIGHT", "DEAD", "DROP", "FILTERED"
    );
    for f in flows {
        let r = &f.report;
        let last = r
            .last_error
            .as_ref()
            .map(|(at, what)| format!("{at} {what}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<22} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>9} {:>6} {:>9}  {}",
            r.name,
            r.state,
            r.received_per_sec,
            r.succeeded_per_sec,
            r.failed_per_sec,
            r.in_flight,
            r.dead_lettered,
            r.dropped,
            r.filtered,
            last
        );
        if let Some(waiting) = &f.waiting_for {
            println!("    waiting: {waiting}");
        }
        if r.batches > 0 {
            println!(
                "    batches: {} calls of apply-batch, {} messages, {:.1} per call",
                r.batches,
                r.batched_messages,
                r.batched_messages as f64 / r.batches as f64
            );
        }
        if r.parked_keys > 0 {
            println!(
                "    parked: {} keys, {} messages held (eventflow keys list {})",
                r.parked_keys, r.parked_messages, r.name
            );
            for k in &r.parked {
                println!("      {}: {} messages", k.key, k.messages);
            }
        }
        if let Some(rollout) = &r.rollout {
            print_rollout(rollout);
        }
        if let Some(shadow) = &r.shadow {
            print_shadow(shadow);
        }
    }
}

/// A flow's canary under its status line: its share, each version's numbers
/// and the decision, if any.
fn print_rollout(r: &api::RolloutReport) {
    let side = |s: &api::RolloutSide| {
        format!(
            "{} messages, {} failed, window {:.1}% failed, p99 {:.1} ms",
            s.messages,
            s.failures,
            s.window_failure_rate * 100.0,
            s.window_p99_secs * 1e3
        )
    };
    let state = serde_json::to_value(r.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "    canary {} {state} at {:.1}%: {}; serving: {}",
        r.canary_version,
        r.percent,
        side(&r.canary),
        side(&r.serving)
    );
    if let Some((at, why)) = &r.decided {
        println!("    {state} {at}: {why}");
    }
}

/// A flow's shadow under its status line: its runs, failures, agreement
/// with the serving outputs, cost, and why it stopped, if it did.
fn print_shadow(s: &api::ShadowReport) {
    let state = match s.state {
        api::ShadowState::Running => "running",
        api::ShadowState::Stopped => "stopped",
    };
    let agreement = s
        .agreement
        .map_or("-".to_string(), |a| format!("{:.1}%", a * 100.0));
    let reasons = s
        .failure_reasons
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "    shadow {} {state}: {} runs, {} failed{}, {} skipped; agreement {agreement} ({} of {} outputs equal); mean {:.1} ms, peak memory {} KiB",
        s.version,
        s.runs,
        s.failures,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({reasons})")
        },
        s.skipped,
        s.agreed,
        s.compared,
        s.mean_secs * 1e3,
        s.max_peak_memory_bytes / 1024
    );
    if let Some((at, why)) = &s.stopped {
        println!("    shadow stopped {at}: {why}");
    }
}

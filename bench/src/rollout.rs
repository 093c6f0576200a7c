//! B9: what a shadow costs the flow it watches (issue 23). B2's pipeline
//! (embedded → identity → embedded, durable, 1 KiB) with and without a
//! shadow, in the same run: the shadow is another version of the same
//! identity (the component with a different hash), so it agrees on every
//! output. A shadow runs after the serving attempt, off the message's path,
//! and only when its queue and the instance pool have room (else the
//! message is skipped): the rate is the serving path's, and the runs and
//! skips say how much of the traffic was shadowed at that rate.

use anyhow::Context;
use serde::Serialize;

use crate::pipeline::{Drained, bed, deploy, messages, pipeline_config, variant};

/// One concurrency, with and without the shadow.
#[derive(Debug, Serialize)]
pub struct ShadowRow {
    /// Flow concurrency.
    pub concurrency: u32,
    /// Messages per second without a shadow.
    pub without: f64,
    /// With the shadow.
    pub with: f64,
    /// Process CPU time per message without the shadow, in microseconds.
    pub cpu_us_without: f64,
    /// With it (the shadow's runs until the last message settled included).
    pub cpu_us_with: f64,
    /// Messages the shadow ran by the time the last one settled.
    pub shadow_runs: u64,
    /// Messages it skipped for want of room.
    pub shadow_skipped: u64,
    /// Outputs it reproduced, of those compared.
    pub agreement: Option<f64>,
}

/// B9's results.
#[derive(Debug, Serialize)]
pub struct ShadowCost {
    /// Messages per run.
    pub messages: usize,
    /// The shadow's `concurrency` (its queue depth and runs at once).
    pub shadow_concurrency: u32,
    /// One row per flow concurrency.
    pub rows: Vec<ShadowRow>,
}

/// The shadow's `concurrency`: the default. Its declaration has no gate,
/// so nothing stops an identity.
const SHADOW_CONCURRENCY: u32 = 2;

/// Drains `n` messages through `examples/echo` 0.1.0 at `concurrency`, with
/// 0.2.0 (a copy) as its shadow when `shadow`.
async fn run(echo: &[u8], concurrency: u32, n: usize, shadow: bool) -> anyhow::Result<Drained> {
    let plugins = tempfile::tempdir()?;
    let dir = plugins.path().join("examples/echo");
    deploy(&dir, "0.1.0", echo)?;
    deploy(&dir, "0.2.0", &variant(echo, "shadow"))?;
    let extra = if shadow {
        format!("shadow = {{ version = \"0.2.0\", concurrency = {SHADOW_CONCURRENCY} }}")
    } else {
        String::new()
    };
    let config = pipeline_config("examples/echo/0.1.0", concurrency, &extra);
    bed(Some(plugins.path()), &config)
        .await?
        .drain(messages(n))
        .await
}

/// B9: B2 at concurrency 8 and 64, without and with a shadow.
pub async fn b9(o: &crate::Options) -> anyhow::Result<ShadowCost> {
    let n = o.pick(2_000usize, 20_000);
    let echo = std::fs::read(o.plugins.join("examples/echo/0.1.0.wasm"))?;
    let mut rows = Vec::new();
    for concurrency in [8u32, 64] {
        let without = run(&echo, concurrency, n, false).await?;
        let with = run(&echo, concurrency, n, true).await?;
        let report = with
            .shadow
            .as_ref()
            .context("the flow reported no shadow")?;
        let (runs, skipped, agreement) = (report.runs, report.skipped, report.agreement);
        eprintln!(
            "  concurrency {concurrency}: {:.0}/s without a shadow, {:.0}/s with (CPU per message {:.1} / {:.1} µs; shadow ran {runs}, skipped {skipped})",
            without.rate, with.rate, without.cpu_us, with.cpu_us
        );
        rows.push(ShadowRow {
            concurrency,
            without: without.rate,
            with: with.rate,
            cpu_us_without: without.cpu_us,
            cpu_us_with: with.cpu_us,
            shadow_runs: runs,
            shadow_skipped: skipped,
            agreement,
        });
    }
    Ok(ShadowCost {
        messages: n,
        shadow_concurrency: SHADOW_CONCURRENCY,
        rows,
    })
}

/// B9's section of the report.
pub fn markdown(b9: &ShadowCost) -> String {
    let mut s = format!(
        "\n## B9 the cost of a shadow (B2's pipeline, {} × 1 KiB, shadow concurrency {})\n\nThe shadow is a copy of the identity as another version. Rates are the serving path's, up to the last message settled; the shadow's runs and skips are counted at that moment. CPU per message: the process's, every thread.\n\n| concurrency | without a shadow | with | with / without | CPU per message (without / with) | shadowed | skipped | agreement |\n|---|---|---|---|---|---|---|---|\n",
        b9.messages, b9.shadow_concurrency
    );
    for r in &b9.rows {
        s.push_str(&format!(
            "| {} | {:.0}/s | {:.0}/s | {:.0} % | {:.1} / {:.1} µs | {} | {} | {} |\n",
            r.concurrency,
            r.without,
            r.with,
            r.with / r.without * 100.0,
            r.cpu_us_without,
            r.cpu_us_with,
            r.shadow_runs,
            r.shadow_skipped,
            r.agreement
                .map_or("-".to_string(), |a| format!("{:.1} %", a * 100.0))
        ));
    }
    s
}

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

use std::time::{Duration, Instant};

use crate::pipeline::{Drained, bed, deploy, messages, open_loop, pipeline_config, variant};

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

/// B9's second part: a canary that fails every message, rolled back by
/// its gate under open-loop load.
#[derive(Debug, Serialize)]
pub struct Rollback {
    /// Offered messages per second.
    pub rate: f64,
    /// The flow's concurrency.
    pub concurrency: u32,
    /// The canary's share, in percent.
    pub percent: f64,
    /// Its gate's window, in messages.
    pub window: u64,
    /// Canary attempts ended when the decision was seen (the gate is
    /// judged at every canary attempt from `window` on).
    pub canary_at_decision: u64,
    /// Canary attempts that ended after it: those in flight when it was
    /// taken (the share is 0 from the decision on, so no new one starts).
    pub canary_after: u64,
    /// From the decision to the last canary attempt ending, in ms: when the
    /// canary's traffic reached 0. 0 when none was in flight.
    pub to_zero_ms: f64,
    /// How often the flow's status was read: the precision of both times.
    pub poll_ms: f64,
}

/// The canary's share and window in [`b9_rollback`].
const ROLLBACK_PERCENT: f64 = 10.0;
const ROLLBACK_WINDOW: u64 = 100;
const POLL: Duration = Duration::from_millis(1);

/// Serving `examples/echo` 0.1.0 and, as its 10 % canary 0.2.0, `test/chaos`,
/// which rejects every message of this load (`REJECT-<i>`) that echo
/// passes: its gate (`max_failure_rate` 0.2 over 100 messages) fails at
/// its 100th message. The flow's status is read every millisecond: when the
/// decision shows, and when the canary's count of attempts stops growing.
pub async fn b9_rollback(o: &crate::Options, best: f64) -> anyhow::Result<Rollback> {
    let concurrency = 8;
    // Half of B2's best; the canary needs 100 messages, at a 10 % share
    // 1,000 of the load.
    let rate = (best * 0.5).max(2_000.0);
    let seconds = o.pick(3u64, 6);
    let echo = std::fs::read(o.plugins.join("examples/echo/0.1.0.wasm"))?;
    let chaos = std::fs::read(o.plugins.join("test/chaos/0.1.0.wasm"))?;
    let plugins = tempfile::tempdir()?;
    let dir = plugins.path().join("examples/echo");
    deploy(&dir, "0.1.0", &echo)?;
    deploy(&dir, "0.2.0", &chaos)?;
    let extra = format!(
        "canary = {{ version = \"0.2.0\", percent = {ROLLBACK_PERCENT}, max_failure_rate = 0.2, window_messages = {ROLLBACK_WINDOW} }}"
    );
    let bed = bed(
        Some(plugins.path()),
        &pipeline_config("examples/echo/0.1.0", concurrency, &extra),
    )
    .await?;
    bed.enable().await?;
    let load = {
        let router = bed.router.clone();
        tokio::spawn(async move {
            open_loop(&router, rate, Duration::from_secs(seconds), |i| {
                format!("REJECT-{i}").into_bytes()
            })
            .await
        })
    };
    let canary = |router: &eventflow::router::Router| {
        router
            .flow_reports()
            .into_iter()
            .find(|r| r.name == "p")
            .and_then(|r| r.rollout)
    };
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    let (decided_at, at_decision) = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the canary was never rolled back"
        );
        if let Some(r) = canary(&bed.router)
            && r.state != eventflow::api::RolloutState::Canary
        {
            anyhow::ensure!(
                r.state == eventflow::api::RolloutState::RolledBack,
                "the failing canary was {:?}",
                r.state
            );
            break (Instant::now(), r.canary.messages);
        }
        tokio::time::sleep(POLL).await;
    };
    // Attempts in flight end within their time out; watch for 2 s.
    let (mut last, mut last_at) = (at_decision, decided_at);
    while decided_at.elapsed() < Duration::from_secs(2) {
        if let Some(r) = canary(&bed.router)
            && r.canary.messages != last
        {
            (last, last_at) = (r.canary.messages, Instant::now());
        }
        tokio::time::sleep(POLL).await;
    }
    load.await??;
    bed.router.shutdown().await;
    let result = Rollback {
        rate,
        concurrency,
        percent: ROLLBACK_PERCENT,
        window: ROLLBACK_WINDOW,
        canary_at_decision: at_decision,
        canary_after: last - at_decision,
        to_zero_ms: (last_at - decided_at).as_secs_f64() * 1e3,
        poll_ms: POLL.as_secs_f64() * 1e3,
    };
    eprintln!("  {result:?}");
    Ok(result)
}

/// B9's rollback paragraph.
pub fn rollback_markdown(r: &Rollback) -> String {
    format!(
        "\nA canary that fails every message (`test/chaos` as a {:.0} % canary of the identity, gate `max_failure_rate` 0.2 over {} messages), at {:.0} msgs/s, concurrency {}: rolled back after {} canary attempts; {} more that were in flight ended after the decision, the last {:.1} ms after it (the canary's traffic at 0; the status read every {:.0} ms).\n",
        r.percent,
        r.window,
        r.rate,
        r.concurrency,
        r.canary_at_decision,
        r.canary_after,
        r.to_zero_ms,
        r.poll_ms
    )
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

//! B11 batches: the per-message cost as batches grow, for the identity of
//! the 0.2.0 world (`examples/batch_echo`) and B3's redact (a 0.2.0
//! component too), 1 KiB.
//!
//! - The sandbox alone (B1's measure): a fresh instance per message
//!   (`apply`) against one `apply-batch` call of 1, 16 and 64 messages on a
//!   fresh instance, in nanoseconds per message.
//! - The pipeline (B2's): embedded → algorithm → embedded, durable, at
//!   concurrency 8, without `batch` and with batches of 1, 16 and 64.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::config::Limits;
use eventflow::message::{InboundMessage, OutboundMessage};
use eventflow::sandbox::{Algorithm, Invocation, NoTopics, Sandbox};
use serde::Serialize;

use crate::pipeline::{Drained, bed, kib, pipeline_config};
use crate::sandbox::{load, message, redact_payload, sandbox};

/// The pipeline's concurrency.
const CONCURRENCY: u32 = 8;
/// The batch sizes measured; `None`: no `batch` (one message per call).
const SIZES: [Option<u32>; 4] = [None, Some(1), Some(16), Some(64)];

/// One algorithm at one batch size.
#[derive(Debug, Serialize)]
pub struct BatchRow {
    /// `examples/batch_echo` or `examples/redact`.
    pub algorithm: String,
    /// Messages per call; `None`: `apply`, one per fresh instance.
    pub batch: Option<u32>,
    /// The sandbox alone: nanoseconds per message.
    pub sandbox_ns: f64,
    /// The pipeline: messages per second.
    pub rate: f64,
    /// The pipeline: process CPU time per message, in microseconds.
    pub cpu_us: f64,
}

/// B11's result.
#[derive(Debug, Serialize)]
pub struct Batches {
    /// Messages per pipeline run.
    pub messages: usize,
    /// The pipeline's concurrency.
    pub concurrency: u32,
    pub rows: Vec<BatchRow>,
}

/// B11.
pub async fn b11(o: &crate::Options) -> anyhow::Result<Batches> {
    let n = o.messages.unwrap_or(o.pick(2_000usize, 20_000));
    let calls = o.pick(200usize, 2_000);
    let (sb, _dir) = sandbox(Default::default())?;
    let mut rows = Vec::new();
    for (name, payload) in [("batch_echo", kib(0)), ("redact", redact_payload())] {
        let algorithm = load(&sb, &o.plugins, "examples", name)?;
        for batch in SIZES {
            let sandbox_ns = per_message_ns(&sb, &algorithm, &payload, batch, calls).await?;
            let extra = batch.map_or(String::new(), |b| {
                format!("batch = {{ max_messages = {b}, max_wait_ms = 5 }}")
            });
            let bed = bed(
                Some(&o.plugins),
                &pipeline_config(&format!("examples/{name}/0.1.0"), CONCURRENCY, &extra),
            )
            .await?;
            let messages = (0..n)
                .map(|_| OutboundMessage {
                    payload: payload.clone(),
                    headers: Vec::new(),
                })
                .collect();
            let Drained { rate, cpu_us, .. } = bed.drain(messages).await?;
            eprintln!(
                "  {name}, batch {batch:?}: sandbox {sandbox_ns:.0} ns/msg; pipeline {rate:.0} msgs/s, {cpu_us:.1} µs CPU/msg"
            );
            rows.push(BatchRow {
                algorithm: format!("examples/{name}"),
                batch,
                sandbox_ns,
                rate,
                cpu_us,
            });
        }
    }
    Ok(Batches {
        messages: n,
        concurrency: CONCURRENCY,
        rows,
    })
}

/// Nanoseconds per message over `calls` fresh instances: `apply` on one
/// message each, or `apply-batch` on `batch` messages each.
async fn per_message_ns(
    sb: &Sandbox,
    algorithm: &Algorithm,
    payload: &[u8],
    batch: Option<u32>,
    calls: usize,
) -> anyhow::Result<f64> {
    let limits = Limits::default();
    let size = batch.unwrap_or(1) as usize;
    let mut messages: Vec<InboundMessage> = (0..size).map(|_| message(payload.to_vec())).collect();
    let mut elapsed = Duration::ZERO;
    for _ in 0..calls {
        let started = Instant::now();
        let mut all = messages.iter_mut();
        let first = all.next().expect("at least one message");
        let invocation = Invocation {
            flow: "bench".into(),
            message: first,
            timeout: Duration::from_secs(10),
            limits: &limits,
            env: &[],
            resolver: Arc::new(NoTopics),
        };
        let ok = match batch {
            None => sb.invoke(algorithm, invocation).await.result.is_ok(),
            Some(_) => sb
                .invoke_batch(algorithm, invocation, all.collect())
                .await
                .results
                .iter()
                .all(Result::is_ok),
        };
        elapsed += started.elapsed();
        anyhow::ensure!(ok, "{} failed in B11", algorithm.id);
    }
    Ok(elapsed.as_nanos() as f64 / (calls * size) as f64)
}

/// The report's section.
pub fn markdown(b: &Batches) -> String {
    let mut s = format!(
        "\n## B11 batches (1 KiB; the sandbox alone, fresh instance per call; the pipeline embedded → algorithm → embedded, durable, {} messages, concurrency {})\n\n| algorithm | messages per call | sandbox ns/msg | pipeline msgs/s | CPU/msg | of one per call |\n|---|---|---|---|---|---|\n",
        b.messages, b.concurrency
    );
    for r in &b.rows {
        let single = b
            .rows
            .iter()
            .find(|x| x.algorithm == r.algorithm && x.batch.is_none())
            .map_or(0.0, |x| x.rate);
        let share = if single > 0.0 {
            format!("{:.2}×", r.rate / single)
        } else {
            "-".into()
        };
        let batch = r.batch.map_or("1 (`apply`, no `batch`)".to_string(), |b| {
            format!("{b} (`apply-batch`)")
        });
        s.push_str(&format!(
            "| {} | {batch} | {:.0} | {:.0} | {:.1} µs | {share} |\n",
            r.algorithm, r.sandbox_ns, r.rate, r.cpu_us
        ));
    }
    s
}

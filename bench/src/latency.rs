//! B4: open-loop latency on the embedded broker, with where the time went.
//!
//! Each message's latency runs from the moment it was meant to be sent to
//! the moment the consumer of the output topic received it (corrected for
//! coordinated omission). It is split in three stages, so a tail says where
//! it comes from:
//! - **publish**: intended send → the input's publish returned (durable);
//!   the sender's own lag is in it;
//! - **flow**: publish returned → the flow handed the output to the broker
//!   (the output's enqueue time, in milliseconds);
//! - **deliver**: that → the output's consumer received it (the output's
//!   commit and the consumer's lease).
//!
//! With `EVENTFLOW_BENCH_TRACE=<dir>`, each load level also writes every
//! message's times to `<dir>/b4-<load>.csv`, for plotting a stall.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::pipeline::{bed, kib, open_loop, pipeline_config, unix_ns};

/// The 50th and 99th percentiles of one stage, in microseconds.
#[derive(Debug, Default, Serialize)]
pub struct Stage {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
}

/// B4's numbers for one load level.
#[derive(Debug, Serialize)]
pub struct LatencyRow {
    /// Fraction of B2's best rate.
    pub load: f64,
    /// Messages per second offered.
    pub rate: f64,
    /// Messages measured.
    pub messages: u64,
    /// Percentiles of intended-send-to-output latency, in microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// The worst.
    pub max_us: u64,
    /// Intended send → publish returned.
    pub publish: Stage,
    /// Publish returned → output enqueued by the flow.
    pub flow: Stage,
    /// Output enqueued → received by its consumer.
    pub deliver: Stage,
}

/// One message's times, in nanoseconds since the Unix epoch.
struct Times {
    intended: u128,
    published: u128,
    enqueued: u128,
    arrived: u128,
}

/// Microseconds from `a` to `b`, at least 1.
fn us(a: u128, b: u128) -> u64 {
    (b.saturating_sub(a) / 1000).clamp(1, 60_000_000) as u64
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?)
}

fn stage(h: &Histogram<u64>) -> Stage {
    Stage {
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
    }
}

/// The row of one load level from its messages' times.
fn row(load: f64, rate: f64, times: &[Times]) -> anyhow::Result<LatencyRow> {
    let (mut total, mut publish, mut flow, mut deliver) =
        (histogram()?, histogram()?, histogram()?, histogram()?);
    for t in times {
        total.record(us(t.intended, t.arrived))?;
        publish.record(us(t.intended, t.published))?;
        flow.record(us(t.published, t.enqueued))?;
        deliver.record(us(t.enqueued, t.arrived))?;
    }
    Ok(LatencyRow {
        load,
        rate,
        messages: total.len(),
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
        p999_us: total.value_at_quantile(0.999),
        max_us: total.max(),
        publish: stage(&publish),
        flow: stage(&flow),
        deliver: stage(&deliver),
    })
}

/// Writes every message's times, relative to the run's start, in
/// microseconds, when `EVENTFLOW_BENCH_TRACE` names a directory.
fn write_trace(load: f64, start_ns: u128, times: &[Times]) -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os("EVENTFLOW_BENCH_TRACE").map(PathBuf::from) else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    let mut csv = String::from("intended_us,published_us,enqueued_us,arrived_us\n");
    let rel = |t: u128| t.saturating_sub(start_ns) / 1000;
    for t in times {
        csv.push_str(&format!(
            "{},{},{},{}\n",
            rel(t.intended),
            rel(t.published),
            rel(t.enqueued),
            rel(t.arrived)
        ));
    }
    let path = dir.join(format!("b4-{:.0}.csv", load * 100.0));
    std::fs::write(&path, csv)?;
    eprintln!("  trace: {}", path.display());
    Ok(())
}

/// Receives the outputs of a B4 run: for each, its message number, its
/// enqueue time and its arrival, until `expected` came or a minute passed.
/// As a production consumer would, it receives in large batches and
/// acknowledges in the background, so the measuring consumer is not the
/// pipeline's bottleneck.
async fn measure(
    mut consumer: Box<dyn eventflow::connector::Source>,
    expected: u64,
) -> anyhow::Result<Vec<(usize, u128, u128)>> {
    let mut arrivals = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (arrivals.len() as u64) < expected && Instant::now() < deadline {
        let batch = consumer.receive(256).await?;
        let now = unix_ns();
        for d in &batch {
            let m = &d.message;
            let number = std::str::from_utf8(&m.payload[..8.min(m.payload.len())])
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
            let enqueued = m
                .enqueued_at
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos());
            if let (Some(i), Some(enqueued)) = (number, enqueued) {
                arrivals.push((i, enqueued, now));
            }
        }
        acks.spawn(futures::future::join_all(
            batch
                .into_iter()
                .map(|mut d| async move { d.settle.ack().await }),
        ));
        while let Some(done) = acks.try_join_next() {
            done?.into_iter().collect::<anyhow::Result<()>>()?;
        }
    }
    while let Some(done) = acks.join_next().await {
        done?.into_iter().collect::<anyhow::Result<()>>()?;
    }
    Ok(arrivals)
}

/// B4: open-loop latency at 10, 50 and 80 % of B2's best, with the flow at
/// `concurrency`, the setting of that best. Also returns the disk's `fdatasync` latency measured just before the
/// loads (one 1 KiB message per sync), which B4's target is relative to.
pub async fn b4(
    o: &crate::Options,
    best: f64,
    concurrency: u32,
) -> anyhow::Result<(Vec<LatencyRow>, crate::disk::DiskProbe)> {
    let duration = Duration::from_secs(o.pick(3, 10));
    let disk = crate::disk::probe_async(1, 1024, Duration::from_secs(o.pick(2, 5))).await?;
    eprintln!(
        "  disk: fdatasync of 1 KiB p50 {} µs, p99 {} µs",
        disk.sync_p50_us, disk.sync_p99_us
    );
    let mut rows = Vec::new();
    for load in [0.1, 0.5, 0.8] {
        let rate = (best * load).max(10.0);
        let bed = bed(
            Some(&o.plugins),
            &pipeline_config("examples/echo/0.1.0", concurrency, ""),
        )
        .await?;
        bed.enable().await?;
        let consumer = bed.consumer("out").await?;
        let duration = duration + Duration::from_secs(1);
        let expected = (rate * duration.as_secs_f64()) as u64;
        let measured = tokio::spawn(measure(consumer, expected));
        let (_, start_ns, published) = open_loop(&bed.router, rate, duration, kib).await?;
        // The first second warms the pipeline up and is not counted.
        let warm_up = rate as usize;
        let mut times: Vec<Times> = measured
            .await??
            .into_iter()
            .filter(|&(i, _, _)| i >= warm_up && i < published.len())
            .map(|(i, enqueued, arrived)| Times {
                intended: start_ns + (i as f64 / rate * 1e9) as u128,
                published: published[i],
                enqueued,
                arrived,
            })
            .collect();
        times.sort_by_key(|t| t.intended);
        write_trace(load, start_ns, &times)?;
        let row = row(load, rate, &times)?;
        eprintln!(
            "  {:.0}% ({rate:.0}/s): p50 {} µs, p99 {} µs, p99.9 {} µs; p99 by stage: publish {} µs, flow {} µs, deliver {} µs",
            load * 100.0,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.publish.p99_us,
            row.flow.p99_us,
            row.deliver.p99_us,
        );
        rows.push(row);
        bed.router.shutdown().await;
    }
    Ok((rows, disk))
}

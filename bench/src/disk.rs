//! What the disk allows, measured in the same run as the broker: sequential
//! appends of batches of 1 KiB messages, each batch made durable with one
//! `fdatasync`, to a file in the directory the benchmark routers keep their
//! state in (`bed` puts them in a fresh temporary directory, as here).

use std::io::Write;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// One batch size's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct DiskProbe {
    /// Messages per `fdatasync`.
    pub batch: usize,
    /// Bytes per message.
    pub message_bytes: usize,
    /// `fdatasync` calls made.
    pub syncs: u64,
    /// Messages per second the disk allowed: `batch` × syncs per second.
    pub msgs_per_sec: f64,
    /// Median time of one write plus `fdatasync`, in microseconds.
    pub sync_p50_us: u64,
    /// 99th percentile.
    pub sync_p99_us: u64,
}

/// Appends `batch` × `message_bytes` and `fdatasync`s, again and again for
/// `duration`, to a new file in a fresh temporary directory (where the
/// benchmark routers' state directories are). Blocking: run it on a blocking
/// thread.
pub fn probe(batch: usize, message_bytes: usize, duration: Duration) -> anyhow::Result<DiskProbe> {
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.path().join("disk-probe"))?;
    let chunk = vec![0x5au8; batch * message_bytes];
    let mut latency = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < duration {
        let t = Instant::now();
        file.write_all(&chunk)?;
        file.sync_data()?;
        latency.record(t.elapsed().as_micros() as u64)?;
        syncs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(DiskProbe {
        batch,
        message_bytes,
        syncs,
        msgs_per_sec: (syncs as usize * batch) as f64 / elapsed,
        sync_p50_us: latency.value_at_quantile(0.5),
        sync_p99_us: latency.value_at_quantile(0.99),
    })
}

/// [`probe`] on a blocking thread.
pub async fn probe_async(
    batch: usize,
    message_bytes: usize,
    duration: Duration,
) -> anyhow::Result<DiskProbe> {
    tokio::task::spawn_blocking(move || probe(batch, message_bytes, duration)).await?
}

/// CPU time (user + system) of the whole process so far: every thread,
/// librdkafka's and the runtime's included.
pub fn process_cpu() -> Duration {
    // SAFETY: `getrusage` only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

//! What the disk allows, measured in the same run as the broker: sequential
//! appends of batches of 1 KiB messages, each batch made durable with one
//! `fdatasync`, to a file in the directory the benchmark routers keep their
//! state in (`bed` puts them in a fresh temporary directory, as here).
//!
//! The batch the embedded broker really makes durable at once is counted
//! here too: this binary defines `fdatasync` and `fsync` itself (the
//! definitions in the executable take the place of the C library's for
//! every caller in it, Rust's `File::sync_data` included) and counts the
//! calls made by the broker's writer thread (named `embedded-store-writer`)
//! before passing them to the kernel. redb makes each commit durable with
//! one `fdatasync` (without two-phase commit, its default), so messages
//! settled per counted sync is the broker's group-commit batch. The router
//! keeps its store behind `Arc<dyn Connection>`, out of the bench's reach,
//! so `Store::commits` cannot be read instead.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Syncs (`fdatasync` and `fsync`) made by the embedded broker's writer
/// thread since the process started.
static STORE_SYNCS: AtomicU64 = AtomicU64::new(0);

/// The name the embedded store's writer thread is given, as the kernel keeps
/// it (15 bytes at most).
const WRITER_THREAD: &[u8] = b"embedded-store-";

/// Counts a sync if the calling thread is the store's writer. Only a
/// `prctl` on a stack buffer: no allocation, no thread-local state, so it is
/// safe on any thread, C library threads (librdkafka's) included.
fn count_sync() {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer it is given.
    let ok = unsafe {
        libc::prctl(
            libc::PR_GET_NAME,
            name.as_mut_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    } == 0;
    if ok && name.starts_with(WRITER_THREAD) {
        STORE_SYNCS.fetch_add(1, Ordering::Relaxed);
    }
}

/// `fdatasync(2)`, counted (see the module documentation).
///
/// # Safety
///
/// As the C library's: `fd` is any integer, the kernel checks it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: libc::c_int) -> libc::c_int {
    count_sync();
    // SAFETY: the system call takes any integer and reports a bad one.
    unsafe { libc::syscall(libc::SYS_fdatasync, fd) as libc::c_int }
}

/// `fsync(2)`, counted (see the module documentation).
///
/// # Safety
///
/// As the C library's: `fd` is any integer, the kernel checks it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: libc::c_int) -> libc::c_int {
    count_sync();
    // SAFETY: the system call takes any integer and reports a bad one.
    unsafe { libc::syscall(libc::SYS_fsync, fd) as libc::c_int }
}

/// Syncs made by the embedded broker's writer thread so far; the difference
/// over a run is the number of its commits in that run.
pub fn store_syncs() -> u64 {
    STORE_SYNCS.load(Ordering::Relaxed)
}

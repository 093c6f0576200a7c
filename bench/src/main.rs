//! Eventflow's benchmark suite: the router measured against native code and
//! raw broker clients, side by side in the same run, because this machine is
//! shared and noisy and ratios are what count.
//!
//! `cargo xtask bench [--quick]` builds the algorithms and runs everything;
//! each run writes `bench-results/<time>-<rev>.json`, `.md` and `.png`.
//! Benchmarks never fail a test run: they measure and report, including the
//! targets they miss.
//!
//! - B1 per-message overhead: native fn, reused instance, fresh instance;
//!   and with B3, by language: native, Rust, Python and JavaScript, with
//!   component sizes and resident memory per in-flight instance.
//! - B2 throughput: embedded → identity → embedded, durable, 1 KiB, against
//!   a native identity in the same pipeline, the broker alone and the disk's
//!   limit (sequential fdatasync'd appends, in batches of as many messages
//!   as the broker committed together in the same run).
//! - B3 sandbox cost: a CPU-bound algorithm without interruption, with epoch
//!   interruption, with fuel; pooling against on-demand allocation.
//! - B4 latency: open-loop load at 10/50/80 % of B2's best, HDR histograms
//!   measured from the intended send time (corrected for coordinated
//!   omission), against the disk's fdatasync p99 in the same run.
//! - B5 hot swap under load: swap latency, throughput dip, lost messages.
//! - B6 failure path: 1 % traps and 0.1 % timeouts; trap-to-dead-letter p99;
//!   pool slots in use after many traps.
//! - B7 brokers: the router against a plain rdkafka consume-and-produce loop
//!   (tansu) and a plain SDK receive-and-delete loop (moto); over Kafka,
//!   the process's and tansu's CPU time per message of each, at a setting
//!   where tansu does not limit them and at librdkafka's defaults.
//! - B8 data collections: a durable `data::put` of 1 KiB on S3 (moto)
//!   against the local backend.
//! - B9 the cost of a shadow: B2's pipeline at concurrency 8 and 64 with
//!   and without a shadow version of the identity, and how many messages
//!   the shadow ran and skipped; and a canary failing every message under
//!   load: how long from its gate's rollback to its traffic reaching 0.
//! - B10 order by key: B2's native pipeline at concurrency 8 with
//!   `ordering = "none"` and with `ordering = "key"` over 1, 10 and 1,000
//!   distinct keys.
//! - B11 batches: the per-message cost of the identity and redact
//!   algorithms (0.2.0 components) without `batch` and with batches of 1,
//!   16 and 64, in the sandbox alone and in B2's pipeline.

/// The allocator the `eventflow` binary uses (host/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod batches;
mod brokers;
mod data;
mod disk;
mod instantiation;
mod languages;
mod latency;
mod ordering;
mod pipeline;
mod report;
mod rollout;
mod sandbox;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Short runs, for a smoke test of the suite.
    pub quick: bool,
    /// The installed algorithms (`<owner>/<name>/<version>.wasm`).
    pub plugins: PathBuf,
    /// The installed Python and JavaScript algorithms, same layout.
    pub guest_plugins: Option<PathBuf>,
    /// Where reports go.
    pub out: PathBuf,
    /// Only these stages (`B1`, `B2`, ...).
    pub only: Option<Vec<String>>,
    /// B2's messages per run, instead of 20,000 (2,000 with `--quick`).
    pub messages: Option<usize>,
    /// B2's concurrencies, instead of 1, 2, 8 and 64.
    pub concurrency: Option<Vec<u32>>,
}

impl Options {
    fn wants(&self, stage: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s.eq_ignore_ascii_case(stage)))
    }

    /// `quick` or `full`, whichever applies.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

fn parse_args() -> anyhow::Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        quick: false,
        plugins: PathBuf::new(),
        guest_plugins: None,
        out: PathBuf::from("bench-results"),
        only: None,
        messages: None,
        concurrency: None,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => options.quick = true,
            "--plugins" => options.plugins = args.next().context("--plugins DIR")?.into(),
            "--guest-plugins" => {
                options.guest_plugins = Some(args.next().context("--guest-plugins DIR")?.into())
            }
            "--out" => options.out = args.next().context("--out DIR")?.into(),
            "--only" => {
                options.only = Some(
                    args.next()
                        .context("--only B1,B2,...")?
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            "--messages" => options.messages = Some(args.next().context("--messages N")?.parse()?),
            "--concurrency" => {
                options.concurrency = Some(
                    args.next()
                        .context("--concurrency 1,2,...")?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?,
                )
            }
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: eventflow-bench --plugins DIR [--guest-plugins DIR] [--out DIR] [--quick] [--only B1,B2,...] [--messages N] [--concurrency 1,2,...]"
            ),
        }
    }
    if options.plugins.as_os_str().is_empty() {
        anyhow::bail!("--plugins DIR is required (`cargo xtask bench` passes it)");
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    // As the `eventflow` binary does (host/src/main.rs): `RUST_BACKTRACE`
    // asks for backtraces of panics, not of every error value, which would
    // otherwise cost every fresh instance a backtrace when its store is
    // dropped and make the router measured here slower than the one shipped.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet (the runtime starts below).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let options = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut report = report::Report::new(&options);
    eprintln!("bench: {}", report.machine.summary());
    if options.wants("B1") {
        eprintln!("bench: B1 per-message overhead");
        report.b1 = Some(sandbox::b1(&options).await?);
        eprintln!("bench: B1 engine settings");
        report.b1_settings = Some(instantiation::settings(&options).await?);
    }
    if options.wants("B3") {
        eprintln!("bench: B3 sandbox cost");
        report.b3 = Some(sandbox::b3(&options).await?);
    }
    if options.wants("B1") || options.wants("B3") {
        eprintln!("bench: B1 and B3 by language");
        report.languages = Some(languages::run(&options, options.guest_plugins.as_deref()).await?);
    }
    if options.wants("B6") {
        eprintln!("bench: B6 failure path (pool)");
        report.b6_pool = Some(sandbox::b6_pool(&options).await?);
    }
    if options.wants("B2") || options.wants("B4") || options.wants("B5") || options.wants("B6") {
        eprintln!("bench: B2 throughput");
        report.b2 = Some(pipeline::b2(&options).await?);
    }
    let best = report
        .b2
        .as_ref()
        .map(|b| b.best_row().map_or(0.0, |r| r.wasm))
        .unwrap_or(1000.0);
    if options.wants("B4") {
        let concurrency = report
            .b2
            .as_ref()
            .and_then(|b| b.best_row())
            .map_or(8, |r| r.concurrency);
        eprintln!("bench: B4 latency (B2's best: {best:.0} msgs/s at concurrency {concurrency})");
        let (rows, disk) = latency::b4(&options, best, concurrency).await?;
        report.b4_concurrency = Some(concurrency);
        report.b4 = Some(rows);
        report.b4_disk = Some(disk);
    }
    if options.wants("B5") {
        eprintln!("bench: B5 hot swap under load");
        report.b5 = Some(pipeline::b5(&options, best).await?);
    }
    if options.wants("B6") {
        eprintln!("bench: B6 failure path (pipeline)");
        report.b6 = Some(pipeline::b6(&options).await?);
    }
    if options.wants("B7") {
        eprintln!("bench: B7 brokers");
        report.b7 = Some(brokers::b7(&options).await);
    }
    if options.wants("B9") {
        eprintln!("bench: B9 the cost of a shadow");
        report.b9 = Some(rollout::b9(&options).await?);
        eprintln!("bench: B9 a failing canary rolled back");
        report.b9_rollback = Some(rollout::b9_rollback(&options, best).await?);
    }
    if options.wants("B10") {
        eprintln!("bench: B10 order by key");
        report.b10 = Some(ordering::b10(&options).await?);
    }
    if options.wants("B11") {
        eprintln!("bench: B11 batches");
        report.b11 = Some(batches::b11(&options).await?);
    }
    if options.wants("B8") {
        eprintln!("bench: B8 data collections");
        report.b8 = Some(data::b8(&options).await);
    }
    report.seconds = started.elapsed().as_secs_f64();
    let written = report.write(&options.out)?;
    for path in written {
        eprintln!("bench: wrote {}", path.display());
    }
    println!("{}", report.markdown());
    Ok(())
}

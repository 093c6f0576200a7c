//! Stages that run the router in-process on the embedded broker: B2, B5
//! and B6's pipeline part, and the test bed B4 shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use eventflow::config::{self, Config, TopicSpec};
use eventflow::connector::{Source, SourceOptions};
use eventflow::flow::envelope::Envelope;
use eventflow::message::{OutboundMessage, header};
use eventflow::router::Router;
use eventflow::sandbox::{Algorithm, AlgorithmId, NativeFn};
use serde::Serialize;

/// An in-process router in a temporary directory.
pub struct Bed {
    /// The router.
    pub router: Arc<Router>,
    /// Its configuration.
    pub config: Config,
    _dir: tempfile::TempDir,
}

/// Starts a router with `body` after router sections pointing at `plugins`
/// (or a fresh directory when `None`).
pub async fn bed(plugins: Option<&Path>, body: &str) -> anyhow::Result<Bed> {
    let dir = tempfile::tempdir()?;
    let plugins = plugins
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("plugins"));
    std::fs::create_dir_all(&plugins)?;
    let text = format!(
        "[router]\nplugins_dir = {:?}\ndata_dir = {:?}\nstate_dir = {:?}\nshutdown_grace_secs = 5\n\n[sandbox]\nmax_instances = 64\n\n{body}",
        plugins.display().to_string(),
        dir.path().join("data").display().to_string(),
        dir.path().join("state").display().to_string(),
    );
    let config = config::parse("bench.toml", &text)?;
    let router = Router::start(config.clone()).await?;
    // The router compiles the plugin directory in the background (each bed
    // has a fresh compiled-code cache): measuring while it does would count
    // the start-up, not the pipeline.
    let started = Instant::now();
    while router.services().registry.any_compiling() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the plugin directory did not load within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Bed {
        router,
        config,
        _dir: dir,
    })
}

/// Messages `flow` has finished with: processed, dead-lettered or dropped.
fn settled(router: &Router, flow: &str) -> u64 {
    router
        .flow_reports()
        .iter()
        .find(|r| r.name == flow)
        .map(|r| r.succeeded + r.dead_lettered + r.dropped)
        .unwrap_or(0)
}

impl Bed {
    /// Publishes messages to `broker:topic` in batches.
    pub async fn publish(&self, key: &str, messages: Vec<OutboundMessage>) -> anyhow::Result<()> {
        let topology = self.router.topology();
        for chunk in messages.chunks(500) {
            topology.publish(key, chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Publishes `messages` to `local:in`, enables the flow `p`, waits until
    /// it has settled them all and shuts the router down; messages per
    /// second from enabling to the last one settled.
    pub async fn drain_rate(self, messages: Vec<OutboundMessage>) -> anyhow::Result<f64> {
        Ok(self.drain(messages).await?.rate)
    }

    /// [`Bed::drain_rate`], also counting the embedded store's commits.
    pub async fn drain(self, messages: Vec<OutboundMessage>) -> anyhow::Result<Drained> {
        let n = messages.len();
        self.publish("local:in", messages).await?;
        self.drain_waiting(n).await
    }

    /// Enables the flow `p`, waits until it has settled `n` messages already
    /// waiting in its source and shuts the router down; messages per second
    /// from enabling to the last one settled.
    pub async fn enable_and_drain(self, n: usize) -> anyhow::Result<f64> {
        Ok(self.drain_waiting(n).await?.rate)
    }

    async fn drain_waiting(self, n: usize) -> anyhow::Result<Drained> {
        let syncs = crate::disk::store_syncs();
        let cpu = crate::disk::process_cpu();
        let started = Instant::now();
        self.enable().await?;
        self.wait_settled("p", n as u64, Duration::from_secs(600))
            .await?;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let cpu_us = cpu_per_message(cpu, n);
        let store_syncs = crate::disk::store_syncs() - syncs;
        let shadow = self
            .router
            .flow_reports()
            .into_iter()
            .find(|r| r.name == "p")
            .and_then(|r| r.shadow);
        self.router.shutdown().await;
        Ok(Drained {
            rate,
            cpu_us,
            batch: StoreBatch::of(n, store_syncs),
            shadow,
        })
    }

    /// Enables every flow.
    pub async fn enable(&self) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        for f in &mut config.flows {
            f.enabled = true;
        }
        self.router.apply(config).await
    }

    /// Messages `flow` has finished with.
    pub fn settled(&self, flow: &str) -> u64 {
        settled(&self.router, flow)
    }

    /// Waits until `flow` has settled `n` messages.
    pub async fn wait_settled(&self, flow: &str, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.settled(flow) < n {
            anyhow::ensure!(
                started.elapsed() < timeout,
                "flow {flow} settled {} of {n} messages within {timeout:?}",
                self.settled(flow)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// The declaration of `topic` on the embedded broker `local`.
    fn topic(&self, topic: &str) -> anyhow::Result<TopicSpec> {
        self.router
            .topology()
            .topic("local", topic)
            .cloned()
            .with_context(|| format!("no topic {topic}"))
    }

    /// A consumer of `topic` on the embedded broker `local`.
    pub async fn consumer(&self, topic: &str) -> anyhow::Result<Box<dyn Source>> {
        let spec = self.topic(topic)?;
        self.router.topology().brokers["local"]
            .connection
            .source(
                &spec,
                &SourceOptions {
                    flow: "bench".into(),
                    lease: Duration::from_secs(60),
                    max_batch: 64,
                    group_id: "bench".into(),
                    saturation_delay: Duration::from_secs(1),
                    in_flight_per_partition: 1,
                    partition_turns: true,
                    metrics: None,
                },
            )
            .await
    }
}

/// A drained backlog.
pub struct Drained {
    /// Messages per second.
    pub rate: f64,
    /// The process's CPU time (user + system, every thread) per message
    /// while it drained, in microseconds. Other processes on the machine
    /// slow the rate but barely change this, so it is the number to compare
    /// between runs on a shared machine.
    pub cpu_us: f64,
    /// The embedded store's commits while it drained.
    pub batch: StoreBatch,
    /// The shadow of flow `p` when the last message settled, if it has one.
    pub shadow: Option<eventflow::api::ShadowReport>,
}

/// The process's CPU time since `since` (a [`crate::disk::process_cpu`]
/// reading) over `n` messages, in microseconds.
fn cpu_per_message(since: Duration, n: usize) -> f64 {
    (crate::disk::process_cpu().saturating_sub(since)).as_secs_f64() * 1e6 / n.max(1) as f64
}

/// How many messages the embedded broker made durable per commit in one
/// run: messages settled over the `fdatasync`s of its writer thread (one per
/// redb commit; see [`crate::disk`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StoreBatch {
    /// Messages settled in the run.
    pub messages: u64,
    /// The store writer's `fdatasync`s in the run (0 when they could not
    /// be counted).
    pub syncs: u64,
}

impl StoreBatch {
    fn of(messages: usize, syncs: u64) -> Self {
        Self {
            messages: messages as u64,
            syncs,
        }
    }

    /// Messages per commit, if any commit was counted.
    pub fn per_commit(&self) -> Option<f64> {
        (self.syncs > 0).then(|| self.messages as f64 / self.syncs as f64)
    }
}

/// A 1 KiB payload numbered `i`: its first eight bytes are `i`.
pub fn kib(i: usize) -> Vec<u8> {
    let mut payload = format!("{i:08}").into_bytes();
    payload.resize(1024, b'x');
    payload
}

/// `n` numbered 1 KiB messages.
pub fn messages(n: usize) -> Vec<OutboundMessage> {
    (0..n)
        .map(|i| OutboundMessage {
            payload: kib(i),
            headers: Vec::new(),
        })
        .collect()
}

pub fn pipeline_config(algorithm: &str, concurrency: u32, extra: &str) -> String {
    format!(
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["examples/echo", "examples/batch_echo", "examples/redact", "bench/native", "bench/swap", "test/chaos"]

[[topics]]
name = "out"
publishers = ["examples/echo", "examples/batch_echo", "examples/redact", "bench/native", "bench/swap", "test/chaos"]

[[topics]]
name = "dlq"
publishers = ["examples/echo", "examples/batch_echo", "examples/redact", "bench/native", "bench/swap", "test/chaos"]

[[flows]]
name = "p"
topic = "in"
algorithm = "{algorithm}"
output_topic = "out"
dead_letter_topic = "dlq"
concurrency = {concurrency}
enabled = false
{extra}
"#
    )
}

/// B2's numbers for one concurrency.
#[derive(Debug, Serialize)]
pub struct ThroughputRow {
    /// Flow concurrency.
    pub concurrency: u32,
    /// Messages per second through the identity component.
    pub wasm: f64,
    /// The same pipeline with a native identity function.
    pub native: f64,
    /// The embedded broker alone: receive, publish the output, ack.
    pub broker_alone: f64,
    /// Process CPU time per message in the wasm run, in microseconds (see
    /// [`Drained::cpu_us`]).
    pub wasm_cpu_us: f64,
    /// In the native run.
    pub native_cpu_us: f64,
    /// In the broker-alone run.
    pub broker_alone_cpu_us: f64,
    /// The embedded store's commits in the wasm run.
    pub wasm_batch: StoreBatch,
    /// In the native run.
    pub native_batch: StoreBatch,
    /// In the broker-alone run.
    pub broker_alone_batch: StoreBatch,
    /// What the disk allows in the same run: sequential appends of
    /// [`disk_limit.batch`](crate::disk::DiskProbe::batch) 1 KiB messages
    /// per `fdatasync`, that batch being the wasm run's messages per commit
    /// rounded (or `concurrency`, when no commit was counted: see
    /// `disk_batch_measured`).
    pub disk_limit: crate::disk::DiskProbe,
    /// Whether the disk limit's batch is the wasm run's measured batch
    /// (`false`: no commit was counted, and it is `concurrency`).
    pub disk_batch_measured: bool,
}

/// B2's results.
#[derive(Debug, Serialize)]
pub struct Throughput {
    /// Messages per run.
    pub messages: usize,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// One row per concurrency.
    pub rows: Vec<ThroughputRow>,
}

impl Throughput {
    /// The row of the best wasm rate: its rate is the basis of B4 and B5's
    /// loads, and B4 offers them at its concurrency.
    pub fn best_row(&self) -> Option<&ThroughputRow> {
        self.rows.iter().max_by(|a, b| a.wasm.total_cmp(&b.wasm))
    }
}

async fn pipeline_rate(
    o: &crate::Options,
    concurrency: u32,
    n: usize,
    native: bool,
) -> anyhow::Result<Drained> {
    let algorithm = if native {
        "bench/native/1.0.0"
    } else {
        "examples/echo/0.1.0"
    };
    let bed = bed(
        Some(&o.plugins),
        &pipeline_config(algorithm, concurrency, ""),
    )
    .await?;
    if native {
        install_native_identity(&bed);
    }
    bed.drain(messages(n)).await
}

/// Installs `bench/native/1.0.0`, a native identity function, in the bed's
/// registry.
pub fn install_native_identity(bed: &Bed) {
    let identity: NativeFn = Arc::new(|m| Ok(Some(m.payload.clone())));
    let id = AlgorithmId {
        owner: "bench".into(),
        name: "native".into(),
        version: semver::Version::new(1, 0, 0),
    };
    bed.router
        .services()
        .registry
        .insert(PathBuf::new(), Algorithm::native(id, identity));
}

async fn broker_alone_rate(n: usize) -> anyhow::Result<Drained> {
    let bed = bed(None, &pipeline_config("examples/echo", 1, "")).await?;
    bed.publish("local:in", messages(n)).await?;
    let mut source = bed.consumer("in").await?;
    let topology = bed.router.topology();
    let syncs = crate::disk::store_syncs();
    let cpu = crate::disk::process_cpu();
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let batch = source.receive(64).await?;
        done += batch.len();
        let outputs: Vec<OutboundMessage> = batch
            .iter()
            .map(|d| OutboundMessage {
                payload: d.message.payload.clone(),
                headers: Vec::new(),
            })
            .collect();
        topology.publish("local:out", outputs).await?;
        let acks = batch
            .into_iter()
            .map(|mut d| async move { d.settle.ack().await });
        for r in futures::future::join_all(acks).await {
            r?;
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu_us = cpu_per_message(cpu, n);
    let store_syncs = crate::disk::store_syncs() - syncs;
    bed.router.shutdown().await;
    Ok(Drained {
        rate,
        cpu_us,
        batch: StoreBatch::of(n, store_syncs),
        shadow: None,
    })
}

/// B2: throughput at concurrency 1, 2, 8 and 64 (a flow on the embedded
/// broker keeps 4 × concurrency messages in flight, at least 64: the last
/// row shows the broker with 256 in flight).
pub async fn b2(o: &crate::Options) -> anyhow::Result<Throughput> {
    let n = o.messages.unwrap_or(o.pick(2_000usize, 20_000));
    let concurrencies = o.concurrency.clone().unwrap_or_else(|| vec![1, 2, 8, 64]);
    let mut rows = Vec::new();
    for concurrency in concurrencies {
        let wasm = pipeline_rate(o, concurrency, n, false).await?;
        let native = pipeline_rate(o, concurrency, n, true).await?;
        let broker_alone = broker_alone_rate(n).await?;
        // The disk at the batch the broker really committed in the wasm run.
        let measured = wasm.batch.per_commit();
        let batch = measured.map_or(concurrency as usize, |b| (b.round() as usize).max(1));
        let disk_limit =
            crate::disk::probe_async(batch, 1024, Duration::from_secs(o.pick(1, 3))).await?;
        let per_commit = |b: StoreBatch| b.per_commit().map_or("?".into(), |v| format!("{v:.1}"));
        eprintln!(
            "  concurrency {concurrency}: wasm {:.0}/s, native {:.0}/s, broker alone {:.0}/s (CPU per message {:.1} / {:.1} / {:.1} µs; messages per store commit {} / {} / {}), disk limit {:.0}/s at {batch} per fdatasync",
            wasm.rate,
            native.rate,
            broker_alone.rate,
            wasm.cpu_us,
            native.cpu_us,
            broker_alone.cpu_us,
            per_commit(wasm.batch),
            per_commit(native.batch),
            per_commit(broker_alone.batch),
            disk_limit.msgs_per_sec
        );
        rows.push(ThroughputRow {
            concurrency,
            wasm: wasm.rate,
            native: native.rate,
            broker_alone: broker_alone.rate,
            wasm_cpu_us: wasm.cpu_us,
            native_cpu_us: native.cpu_us,
            broker_alone_cpu_us: broker_alone.cpu_us,
            wasm_batch: wasm.batch,
            native_batch: native.batch,
            broker_alone_batch: broker_alone.batch,
            disk_limit,
            disk_batch_measured: measured.is_some(),
        });
    }
    Ok(Throughput {
        messages: n,
        payload_bytes: 1024,
        rows,
    })
}

pub const INTENDED: &str = "bench-intended-ns";

pub fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Publishes `rate` messages a second for `duration`, each stamped with the
/// time it was meant to be sent, without waiting for earlier publishes (open
/// loop). `body(i)` is the payload of message `i`, which is meant to be
/// sent `i / rate` seconds after the start. Returns how many were sent, the
/// start in nanoseconds since the Unix epoch, and when each message's
/// publish returned (durable), by message number.
pub async fn open_loop(
    router: &Router,
    rate: f64,
    duration: Duration,
    body: fn(usize) -> Vec<u8>,
) -> anyhow::Result<(usize, u128, Vec<u128>)> {
    let total = (rate * duration.as_secs_f64()) as usize;
    let topology = router.topology();
    let start = tokio::time::Instant::now();
    let start_ns = unix_ns();
    let mut published = vec![0u128; total];
    let mut tasks = tokio::task::JoinSet::new();
    let mut done = |r: Result<anyhow::Result<(usize, u128)>, tokio::task::JoinError>| {
        let (i, at) = r??;
        published[i] = at;
        anyhow::Ok(())
    };
    for i in 0..total {
        let offset = Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(start + offset).await;
        let intended = start_ns + offset.as_nanos();
        let topology = topology.clone();
        tasks.spawn(async move {
            let payload = body(i);
            topology
                .publish(
                    "local:in",
                    vec![OutboundMessage {
                        payload,
                        headers: vec![(INTENDED.into(), intended.to_string())],
                    }],
                )
                .await?;
            anyhow::Ok((i, unix_ns()))
        });
        while let Some(r) = tasks.try_join_next() {
            done(r)?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        done(r)?;
    }
    Ok((total, start_ns, published))
}

/// A component with a custom section `tag` appended: the same code,
/// another hash.
pub fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    use wasm_encoder::Section;
    let mut out = bytes.to_vec();
    wasm_encoder::CustomSection {
        name: "eventflow-bench-variant".into(),
        data: tag.as_bytes().into(),
    }
    .append_to(&mut out);
    out
}

/// `component` with an extra core module of about `code_bytes` of function
/// bodies appended: a big component whose code wasmtime compiles in full
/// (every core module of a component is compiled, used or not), and a
/// custom section `tag` for a distinct hash.
pub fn big_component(component: &[u8], tag: &str, code_bytes: usize) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ComponentSection, ExportKind, ExportSection, Function, FunctionSection,
        Instruction, Module, ModuleSection, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut functions = FunctionSection::new();
    let mut exports = ExportSection::new();
    let mut code = CodeSection::new();
    let mut written = 0;
    let mut index = 0u32;
    while written < code_bytes {
        let mut f = Function::new([]);
        for j in 0..500i32 {
            f.instruction(&Instruction::LocalGet(0));
            f.instruction(&Instruction::I32Const(j.wrapping_mul(index as i32 + 7)));
            f.instruction(&Instruction::I32Add);
            f.instruction(&Instruction::I32Const(j | 1));
            f.instruction(&Instruction::I32Mul);
            f.instruction(&Instruction::LocalSet(0));
        }
        f.instruction(&Instruction::LocalGet(0));
        f.instruction(&Instruction::End);
        written += f.byte_len();
        functions.function(0);
        exports.export(&format!("f{index}"), ExportKind::Func, index);
        code.function(&f);
        index += 1;
    }
    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&exports)
        .section(&code);
    let mut out = variant(component, tag);
    ModuleSection(&module).append_to_component(&mut out);
    out
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes `bytes` to `<dir>/<version>.wasm` through a temporary name.
pub(crate) fn deploy(dir: &Path, version: &str, bytes: &[u8]) -> anyhow::Result<Instant> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{version}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(format!("{version}.wasm")))?;
    Ok(Instant::now())
}

/// Deploys `bytes` as `<dir>/0.1.0.wasm` and waits until the registry
/// serves them for `reference`; milliseconds from the rename to serving.
async fn swap_ms(
    bed: &Bed,
    reference: &config::AlgorithmRef,
    dir: &Path,
    bytes: &[u8],
) -> anyhow::Result<f64> {
    let hash = sha256(bytes);
    let deployed = deploy(dir, "0.1.0", bytes)?;
    loop {
        if bed
            .router
            .services()
            .registry
            .resolve(reference)
            .is_some_and(|a| a.hash == hash)
        {
            return Ok(deployed.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(
            deployed.elapsed() < Duration::from_secs(60),
            "the new version never served"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// B5's results.
#[derive(Debug, Serialize)]
pub struct HotSwap {
    /// Offered messages per second.
    pub rate: f64,
    /// Seconds of load.
    pub seconds: f64,
    /// Swaps under load.
    pub swaps: usize,
    /// Swap latency (rename to serving) of new content, compiled, in ms.
    pub compile_p50_ms: f64,
    /// Its worst (the p99 of so few samples).
    pub compile_p99_ms: f64,
    /// Size of the swapped component.
    pub component_bytes: usize,
    /// Swap latency of content already in the compiled-code cache, in ms.
    pub cached_p99_ms: f64,
    /// Size of the big component: echo with about 2 MiB of extra code.
    pub big_component_bytes: usize,
    /// Swap latency of the big component (hashing, validation and the
    /// compilation of all its code), in ms.
    pub big_p99_ms: f64,
    /// The worst drop of throughput in the second after a swap, against the
    /// median second.
    pub max_dip: f64,
    /// Each swap's drop, in the order of the swaps.
    pub dips: Vec<f64>,
    /// The same measure over the seconds away from any swap (more than a
    /// second before one and two after): the noise the dips stand out from.
    pub max_dip_without_swap: f64,
    /// Messages published and not processed (must be 0).
    pub lost: i64,
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// B5: swap the version every 5 s under load at half of B2's best.
pub async fn b5(o: &crate::Options, best: f64) -> anyhow::Result<HotSwap> {
    let seconds = o.pick(12u64, 30);
    let rate = (best * 0.5).max(10.0);
    let echo = std::fs::read(o.plugins.join("examples/echo/0.1.0.wasm"))?;
    let plugins = tempfile::tempdir()?;
    let dir = plugins.path().join("bench/swap");
    deploy(&dir, "0.1.0", &variant(&echo, "v0"))?;
    let bed = bed(
        Some(plugins.path()),
        &pipeline_config("bench/swap/0.1.0", 8, ""),
    )
    .await?;
    let watcher = eventflow::watcher::spawn(bed.router.clone());
    bed.enable().await?;
    let reference: config::AlgorithmRef = "bench/swap/0.1.0".parse().map_err(anyhow::Error::msg)?;

    // Throughput, sampled every 250 ms while the load runs.
    let sampler = {
        let router = bed.router.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(seconds + 2) {
                samples.push((started.elapsed().as_secs_f64(), settled(&router, "p")));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            samples
        })
    };
    let load_started = Instant::now();
    let load = {
        let router = bed.router.clone();
        tokio::spawn(async move {
            open_loop(&router, rate, Duration::from_secs(seconds), kib)
                .await
                .map(|(n, _, _)| n)
        })
    };
    let mut compile_ms = Vec::new();
    let mut swap_times = Vec::new();
    let mut k = 1;
    while load_started.elapsed() < Duration::from_secs(seconds.saturating_sub(1)) {
        tokio::time::sleep(
            Duration::from_secs(5)
                .min(Duration::from_secs(seconds).saturating_sub(load_started.elapsed())),
        )
        .await;
        if load_started.elapsed() >= Duration::from_secs(seconds.saturating_sub(1)) {
            break;
        }
        let next = variant(&echo, &format!("v{k}"));
        swap_times.push(load_started.elapsed().as_secs_f64());
        compile_ms.push(swap_ms(&bed, &reference, &dir, &next).await?);
        k += 1;
    }
    let sent = load.await??;
    bed.wait_settled("p", sent as u64, Duration::from_secs(120))
        .await
        .ok();
    let samples = sampler.await?;
    let settled = bed.settled("p") as i64;

    // Swaps outside the load: from the cache, and a 2 MiB component.
    let mut cached_ms = Vec::new();
    let mut big_ms = Vec::new();
    let mut big_component_bytes = 0;
    for i in 0..3 {
        let old = variant(&echo, &format!("v{}", i % k.max(1)));
        cached_ms.push(swap_ms(&bed, &reference, &dir, &old).await?);
        let big = big_component(&echo, &format!("big{i}"), 2 << 20);
        big_component_bytes = big.len();
        big_ms.push(swap_ms(&bed, &reference, &dir, &big).await?);
    }
    watcher.abort();
    bed.router.shutdown().await;

    // Throughput per second, and the worst second after a swap.
    let per_second: Vec<(f64, f64)> = samples
        .windows(5)
        .map(|w| (w[0].0, (w[4].1 - w[0].1) as f64 / (w[4].0 - w[0].0)))
        .filter(|(t, _)| *t > 1.0 && *t < seconds as f64 - 1.0)
        .collect();
    let median = percentile(per_second.iter().map(|(_, r)| *r).collect(), 0.5);
    let dip = |r: f64| {
        if median > 0.0 {
            (1.0 - r / median).max(0.0)
        } else {
            0.0
        }
    };
    let dips: Vec<f64> = swap_times
        .iter()
        .filter_map(|ts| {
            per_second
                .iter()
                .filter(|(t, _)| *t >= *ts && *t < ts + 1.0)
                .map(|(_, r)| *r)
                .reduce(f64::min)
        })
        .map(dip)
        .collect();
    let max_dip = dips.iter().copied().fold(0.0, f64::max);
    let max_dip_without_swap = per_second
        .iter()
        .filter(|(t, _)| swap_times.iter().all(|ts| *t < ts - 1.0 || *t >= ts + 2.0))
        .map(|(_, r)| dip(*r))
        .fold(0.0, f64::max);
    let result = HotSwap {
        rate,
        seconds: seconds as f64,
        swaps: compile_ms.len(),
        compile_p50_ms: percentile(compile_ms.clone(), 0.5),
        compile_p99_ms: percentile(compile_ms, 0.99),
        component_bytes: echo.len(),
        cached_p99_ms: percentile(cached_ms, 0.99),
        big_component_bytes,
        big_p99_ms: percentile(big_ms, 0.99),
        max_dip,
        dips,
        max_dip_without_swap,
        lost: sent as i64 - settled,
    };
    eprintln!("  {result:?}");
    Ok(result)
}

/// B6's pipeline numbers.
#[derive(Debug, Serialize)]
pub struct FailurePath {
    /// Messages per run.
    pub messages: usize,
    /// Settled per second with no failures (a backlog drained).
    pub clean_rate: f64,
    /// Settled per second with 1 % traps and 0.1 % timeouts.
    pub failing_rate: f64,
    /// Trapping messages measured for latency.
    pub traps_measured: usize,
    /// Under open-loop load at half the clean rate, the 99th percentile of
    /// a trapping message's time from its intended send to its dead letter
    /// (envelope timestamps have millisecond precision), in ms.
    pub trap_to_dead_letter_p99_ms: f64,
}

/// 1 % `TRAP`, 0.1 % `LOOP` (a timeout), the rest echoed.
fn chaos_body(i: usize) -> Vec<u8> {
    if i % 1000 == 500 {
        format!("LOOP {i}").into_bytes()
    } else if i % 100 == 7 {
        format!("TRAP {i}").into_bytes()
    } else {
        format!("ok {i}").into_bytes()
    }
}

const CHAOS_LIMITS: &str = "max_receives = 1\ntimeout_secs = 0.2";

/// Drains a backlog of `n` messages through test/chaos; messages per second.
async fn chaos_rate(o: &crate::Options, n: usize, failing: bool) -> anyhow::Result<f64> {
    let bed = bed(
        Some(&o.plugins),
        &pipeline_config("test/chaos/0.1.0", 8, CHAOS_LIMITS),
    )
    .await?;
    let msgs = (0..n)
        .map(|i| OutboundMessage {
            payload: if failing {
                chaos_body(i)
            } else {
                format!("ok {i}").into_bytes()
            },
            headers: Vec::new(),
        })
        .collect();
    bed.drain_rate(msgs).await
}

/// B6: the failure path's cost in the pipeline.
pub async fn b6(o: &crate::Options) -> anyhow::Result<FailurePath> {
    let n = o.pick(2_000usize, 20_000);
    let clean_rate = chaos_rate(o, n, false).await?;
    let failing_rate = chaos_rate(o, n, true).await?;

    // Trap-to-dead-letter latency under open-loop load.
    let bed = bed(
        Some(&o.plugins),
        &pipeline_config("test/chaos/0.1.0", 8, CHAOS_LIMITS),
    )
    .await?;
    bed.enable().await?;
    let rate = (clean_rate * 0.5).max(10.0);
    let (sent, _, _) = open_loop(
        &bed.router,
        rate,
        Duration::from_secs(o.pick(3, 10)),
        chaos_body,
    )
    .await?;
    bed.wait_settled("p", sent as u64, Duration::from_secs(120))
        .await?;
    let dlq = bed.topic("dlq")?;
    let letters = bed.router.topology().brokers["local"]
        .connection
        .peek(&dlq, 1_000_000)
        .await?;
    let mut ms = Vec::new();
    for l in letters {
        let e: Envelope = serde_json::from_slice(&l.payload)?;
        if !e.original_payload()?.starts_with(b"TRAP") {
            continue;
        }
        let intended = header(&e.headers, INTENDED)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|ns| ns / 1e6);
        if let (Some(a), Some(b)) = (intended, unix_ms(&e.dead_lettered_at)) {
            ms.push((b - a).max(0.0));
        }
    }
    bed.router.shutdown().await;
    let result = FailurePath {
        messages: n,
        clean_rate,
        failing_rate,
        traps_measured: ms.len(),
        trap_to_dead_letter_p99_ms: percentile(ms, 0.99),
    };
    eprintln!("  {result:?}");
    Ok(result)
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn unix_ms(s: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64() * 1000.0)
}

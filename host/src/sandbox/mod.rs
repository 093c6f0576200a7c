//! The WebAssembly sandbox: one wasmtime engine, algorithms compiled once
//! (and cached on disk), a fresh instance per message.
//!
//! An [`Algorithm`] holds a pre-linked `InstancePre`; [`Sandbox::invoke`]
//! instantiates it into a new store (a pooling-allocator slot) for every
//! message, so no state leaks between messages. An invocation first waits
//! for one of the pool's `max_instances` slots (never failing for want of
//! one), and holds it until its store is dropped. Limits: wall-clock timeout by
//! epoch interruption (plus an outer timeout covering host calls), memory by a
//! store limiter, stack by the engine, optional fuel, output size, host calls
//! and data bytes. Breaking one is a [`Failure`] with a [`Reason`], never a
//! crash of the router.

mod bindings;
mod failure;
mod host;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use sha2::Digest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{ResourceTable, WasiCtx};

pub use failure::{Failure, MAX_DETAIL_BYTES, Reason, cap_detail};
pub use host::LimitTrap;

use crate::config::{Limits, SandboxConfig};
use crate::data::Collections;
use crate::message::{InboundMessage, OutboundMessage};
use bindings::{AlgorithmPre, WitFailure, WitMessage};
use host::{HostState, Limiter};

/// How often the epoch advances; the resolution of timeouts and of yielding
/// to other tasks while an algorithm computes.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How long after the timeout an invocation stuck in a host call is cut off.
const HOST_GRACE: Duration = Duration::from_millis(100);
/// How much of an algorithm's stderr (a panic message, say) is kept for the
/// failure detail.
const STDERR_CAPTURE_BYTES: usize = 4096;
/// Core module instances, linear memories and tables of the pool per
/// instance slot, which are also the most one component may use.
const CORE_INSTANCES_PER_SLOT: u32 = 8;
const MEMORIES_PER_SLOT: u32 = 2;
const TABLES_PER_SLOT: u32 = 8;
/// Bytes of each linear memory the pool keeps resident and resets with
/// `memset` (only the pages the instance touched, found with the
/// `PAGEMAP_SCAN` ioctl where the kernel has it) when an instance is freed,
/// instead of an `madvise` that drops them (a TLB shootdown, then page
/// faults on the next instance). A small algorithm dirties a few dozen pages
/// per message (stack top, data, the start of the heap); beyond 256 KiB the
/// `madvise` is as cheap as the `memset`. At most this much stays resident
/// per memory of a slot that has run (`max_instances` × 2 × 256 KiB with
/// every slot used).
const MEMORY_KEEP_RESIDENT: usize = 256 << 10;
/// The same for tables: a component's tables are a few hundred entries of
/// 8 bytes, so two pages cover them.
const TABLE_KEEP_RESIDENT: usize = 8 << 10;

/// `owner/name/version` of a loaded algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlgorithmId {
    /// The owner.
    pub owner: String,
    /// The name.
    pub name: String,
    /// The version.
    pub version: semver::Version,
}

impl std::fmt::Display for AlgorithmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.owner, self.name, self.version)
    }
}

/// A compiled, validated algorithm version, ready to instantiate.
pub struct Algorithm {
    /// Who and which version.
    pub id: AlgorithmId,
    /// SHA-256 of the component file, hex.
    pub hash: String,
    /// Size of the component file.
    pub size: u64,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    code: Code,
}

/// A native stand-in for an algorithm: what the benchmarks compare the
/// sandbox against, in the same pipeline.
pub type NativeFn = Arc<dyn Fn(&InboundMessage) -> Result<Option<Vec<u8>>, Failure> + Send + Sync>;

enum Code {
    Wasm(AlgorithmPre<HostState>),
    Native(NativeFn),
}

impl Algorithm {
    /// An algorithm implemented by a Rust function instead of a component.
    /// It runs without a sandbox: only benchmarks use it, to measure what
    /// the sandbox costs in the same pipeline.
    pub fn native(id: AlgorithmId, f: NativeFn) -> Self {
        Self {
            id,
            hash: "0".repeat(64),
            size: 0,
            loaded_at: SystemTime::now(),
            from_cache: false,
            code: Code::Native(f),
        }
    }

    /// `owner/name@version#hash12`, the label used in logs and envelopes.
    pub fn label(&self) -> String {
        format!(
            "{}/{}@{}#{}",
            self.id.owner,
            self.id.name,
            self.id.version,
            &self.hash[..12]
        )
    }
}

/// Why a publish from an algorithm was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    /// No grant for the topic.
    AccessDenied,
    /// No such topic.
    UnknownTopic,
    /// Over the broker's size limit.
    TooLarge,
    /// Too many publishes in one invocation.
    LimitExceeded,
}

/// Decides where an algorithm's `publish::send` goes. Implemented by the flow,
/// which knows the topics and their access lists.
pub trait TopicResolver: Send + Sync {
    /// Checks that the algorithm may publish `size` bytes to `topic`, and
    /// returns the key the flow will publish it under.
    fn resolve(&self, topic: &str, size: usize) -> Result<String, PublishRefusal>;
}

/// One invocation's inputs besides the message.
pub struct Invocation<'a> {
    /// The flow, for log lines.
    pub flow: Arc<str>,
    /// The message: lent to the guest during the call (moved, not copied)
    /// and whole again when [`Sandbox::invoke`] returns.
    pub message: &'a mut InboundMessage,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// The effective limits.
    pub limits: &'a Limits,
    /// Environment variables (the algorithm's secrets).
    pub env: &'a [(String, String)],
    /// Where published messages may go.
    pub resolver: Arc<dyn TopicResolver>,
}

/// What one invocation produced.
pub struct Outcome {
    /// The output, or why there is none.
    pub result: Result<Option<Vec<u8>>, Failure>,
    /// Messages the algorithm published, by resolver key, to be sent only if
    /// `result` is `Ok`.
    pub published: Vec<(String, OutboundMessage)>,
    /// Wall-clock time of instantiation and call (not counting the wait for
    /// an instance slot).
    pub duration: Duration,
    /// Time spent waiting for a free instance slot of the pool.
    pub slot_wait: Duration,
    /// Peak linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// Fuel used, when fuel is counted.
    pub fuel_used: Option<u64>,
}

/// The engine, its linker and compiled-code cache.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// Hashes being compiled now: their cache entries are not evicted
    /// before the registry knows them.
    compiling: std::sync::Mutex<HashSet<String>>,
    engine_hash: String,
    data: Arc<Collections>,
    settings: SandboxConfig,
    ticker_stop: Arc<AtomicBool>,
    /// One permit per instance slot of the pooling allocator; `None` without
    /// the pool (instances are then allocated on demand).
    slots: Option<Arc<Semaphore>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// Creates the engine. `cache_dir` keeps compiled code across restarts.
    pub fn new(
        settings: &SandboxConfig,
        cache_dir: Option<PathBuf>,
        data: Arc<Collections>,
    ) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        // Algorithms are called one message at a time: the component-model
        // async machinery (per-store concurrent state, a worker fiber torn
        // down with every store) only costs instantiation time. Components
        // that use its features are refused when they load.
        config.concurrency_support(false);
        config.epoch_interruption(settings.epoch_interruption);
        config.consume_fuel(settings.fuel);
        let stack = (settings.max_wasm_stack_kib as usize) << 10;
        config.max_wasm_stack(stack);
        // The async fiber stack has to hold the wasm stack plus host frames.
        config.async_stack_size(stack + (1 << 20));
        if settings.pooling {
            let slots = settings.max_instances;
            let mut pool = PoolingAllocationConfig::new();
            // The per-component caps are each slot's share of the totals, so
            // a store holding one slot permit (see `Sandbox::invoke`) always
            // finds room in every pool; a component that needs more is
            // rejected when it loads, not when the pool runs out under load.
            pool.total_component_instances(slots)
                .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
                .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
                .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
                .max_memories_per_component(MEMORIES_PER_SLOT)
                .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
                .max_tables_per_component(TABLES_PER_SLOT)
                .total_stacks(slots)
                .max_memory_size((settings.max_memory_mib as usize) << 20)
                .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
                .table_keep_resident(TABLE_KEEP_RESIDENT)
                // Used where the kernel has it (Linux 6.7 and later).
                .pagemap_scan(Enabled::Auto);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the WebAssembly engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Algorithm::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());

        let ticker_stop = Arc::new(AtomicBool::new(false));
        if settings.epoch_interruption {
            let (engine, stop) = (engine.weak(), ticker_stop.clone());
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })?;
        }
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
            crate::state::tighten(dir, 0o700)?;
        }
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.filter(|_| settings.cache_compiled),
            compiling: std::sync::Mutex::default(),
            engine_hash,
            data,
            settings: settings.clone(),
            ticker_stop,
            slots: settings
                .pooling
                .then(|| Arc::new(Semaphore::new(settings.max_instances as usize))),
        })
    }

    /// The engine settings.
    pub fn settings(&self) -> &SandboxConfig {
        &self.settings
    }

    /// Compiles (or loads from the cache) and validates a component: it must
    /// be a component, export the algorithm world, and import nothing the
    /// host cannot give. Blocking and CPU-heavy: run it off the hot path.
    pub fn load(&self, id: AlgorithmId, bytes: &[u8]) -> anyhow::Result<Algorithm> {
        let hash = hex::encode(sha2::Sha256::digest(bytes));
        let _compiling = Compiling::start(&self.compiling, &hash);
        let (component, from_cache) = self.compile(&hash, bytes)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("its imports cannot be satisfied (it may import interfaces Eventflow does not grant)")?;
        let pre = AlgorithmPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("it does not export the eventflow:algorithm world (`apply`)")?;
        Ok(Algorithm {
            id,
            hash,
            size: bytes.len() as u64,
            loaded_at: SystemTime::now(),
            from_cache,
            code: Code::Wasm(pre),
        })
    }

    fn cache_path(&self, hash: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hash}-{}.cwasm", self.engine_hash)))
    }

    fn compile(&self, hash: &str, bytes: &[u8]) -> anyhow::Result<(Component, bool)> {
        if !looks_like_component(bytes) {
            anyhow::bail!("not a WebAssembly component (a core module or another file?)");
        }
        let cached = self.cache_path(hash);
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash (it is in the name) into
            // the router's own state directory, which only the router writes.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => {
                    // The modification time orders eviction: least recently
                    // used first.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                    return Ok((c, true));
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "Ignoring an unreadable compiled-code cache entry."
                ),
            }
        }
        let Some(path) = cached else {
            return Ok((Component::new(&self.engine, bytes)?, false));
        };
        let compiled = self.engine.precompile_component(bytes)?;
        if let Err(e) = write_atomically(&path, &compiled) {
            // Only restarts are slower without the entry (a full disk, say).
            tracing::warn!(
                path = %path.display(),
                error = %format!("{e:#}"),
                "Could not keep compiled code in the cache."
            );
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled)? };
        Ok((component, false))
    }

    /// Trims the compiled-code cache: deletes the entries of components no
    /// loaded version uses (`in_use` holds their SHA-256s) or compiled by
    /// another engine, leftovers of interrupted writes, then the least
    /// recently used entries until the cache fits `compiled_cache_max_mib`.
    /// Blocking.
    pub fn evict_compiled(&self, in_use: &HashSet<String>) -> anyhow::Result<CacheEviction> {
        let mut outcome = CacheEviction::default();
        let Some(dir) = &self.cache_dir else {
            return Ok(outcome);
        };
        let cap = self.settings.compiled_cache_max_mib.saturating_mul(1 << 20);
        let suffix = format!("-{}.cwasm", self.engine_hash);
        let mut kept = Vec::new();
        let compiling = self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list the cache directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let used = name
                .strip_suffix(&suffix)
                .is_some_and(|hash| in_use.contains(hash) || compiling.contains(hash));
            // A write in progress is a temporary file for a few seconds.
            let fresh_tmp = name.contains(".tmp-")
                && modified.elapsed().unwrap_or_default() < Duration::from_secs(600);
            if used {
                kept.push((modified, meta.len(), path));
            } else if !fresh_tmp {
                remove_cache_entry(&path, meta.len(), &mut outcome);
            }
        }
        let mut total: u64 = kept.iter().map(|(_, len, _)| len).sum();
        kept.sort();
        for (_, len, path) in kept {
            if total <= cap {
                break;
            }
            total -= len;
            remove_cache_entry(&path, len, &mut outcome);
        }
        outcome.kept_bytes = total;
        Ok(outcome)
    }

    /// Waits for a free instance slot of the pool. The permit must outlive
    /// the store it is taken for: dropping the store frees the slot.
    async fn instance_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slots = self.slots.as_ref()?;
        // Never closed: the sandbox owns the semaphore.
        slots.clone().acquire_owned().await.ok()
    }

    /// Runs `algorithm` on one message in a fresh instance.
    ///
    /// When all of the pool's `max_instances` slots are taken, the call
    /// first waits (in FIFO order across flows) for one to be freed. The
    /// wait is not the algorithm's doing, so it is neither a failure nor
    /// part of `timeout`: the timeout starts once the slot is held. (The
    /// caller keeps the message leased meanwhile.)
    pub async fn invoke(&self, algorithm: &Algorithm, inv: Invocation<'_>) -> Outcome {
        let waiting = Instant::now();
        let slot = match &algorithm.code {
            Code::Wasm(_) => self.instance_slot().await,
            Code::Native(_) => None,
        };
        let slot_wait = waiting.elapsed();
        let started = Instant::now();
        let pre = match &algorithm.code {
            Code::Wasm(pre) => pre,
            Code::Native(f) => {
                let result = match check_input(inv.message, inv.limits) {
                    Some(failure) => Err(failure),
                    None => f(inv.message).and_then(|o| check_output(o, inv.limits)),
                };
                return Outcome {
                    result,
                    published: Vec::new(),
                    duration: started.elapsed(),
                    slot_wait,
                    peak_memory_bytes: 0,
                    fuel_used: None,
                };
            }
        };
        let limits = inv.limits;
        let timeout = inv.timeout;
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let mut wasi = WasiCtx::builder();
        // Nothing is inherited: no environment but the secrets, no
        // preopened directories, no network (sockets are denied by default,
        // and these make it explicit).
        wasi.envs(inv.env)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(host::MAX_RANDOM_BYTES);
        let state = self.host_state(
            algorithm,
            wasi.build(),
            inv.flow.clone(),
            &inv.message.id,
            inv.resolver.clone(),
            limits,
            Duration::from_secs_f64(limits.host_call_timeout_secs).min(timeout),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel = self
            .settings
            .fuel
            .then(|| limits.max_fuel.unwrap_or(u64::MAX));
        if let Some(fuel) = fuel {
            // Cannot fail: fuel is enabled on the engine.
            let _ = store.set_fuel(fuel);
        }
        if self.settings.epoch_interruption {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(move |_| {
                if started.elapsed() >= timeout {
                    Ok(UpdateDeadline::Interrupt)
                } else {
                    // Let other tasks run between ticks of a long computation.
                    Ok(UpdateDeadline::Yield(1))
                }
            });
        }

        let input_error = check_input(inv.message, limits);
        let result = match input_error {
            Some(f) => Err(f),
            None => {
                let message = bindings::lend(inv.message);
                let call = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance.call_apply(&mut store, &message).await
                };
                // The epoch deadline stops computation; this outer deadline,
                // a little later so the epoch wins for computation, stops a
                // host call that hangs. (Its timer is armed only if the call
                // does not finish on its first poll.)
                let called = tokio::time::timeout(timeout + HOST_GRACE, call).await;
                bindings::give_back(message, inv.message);
                match called {
                    Err(_) => Err(Failure::new(
                        Reason::Timeout,
                        format!("did not finish within {timeout:?} (stuck in a host call)"),
                    )),
                    Ok(Err(error)) => Err(classify(error, timeout, &stderr)),
                    Ok(Ok(Err(failure))) => Err(guest_failure(failure)),
                    Ok(Ok(Ok(output))) => check_output(output, limits),
                }
            }
        };
        let fuel_used = fuel.and_then(|f| store.get_fuel().ok().map(|left| f - left));
        // Dropping the store gives its instances back to the pool; only then
        // may the next invocation have the slot.
        let state = store.into_data();
        drop(slot);
        Outcome {
            published: if result.is_ok() {
                state.published
            } else {
                Vec::new()
            },
            result,
            duration: started.elapsed(),
            slot_wait,
            peak_memory_bytes: state.limiter.peak_memory as u64,
            fuel_used,
        }
    }
}

impl Sandbox {
    /// The host side of one instance of `algorithm`.
    #[allow(clippy::too_many_arguments)]
    fn host_state(
        &self,
        algorithm: &Algorithm,
        wasi: WasiCtx,
        flow: Arc<str>,
        message_id: &str,
        resolver: Arc<dyn TopicResolver>,
        limits: &Limits,
        host_call_timeout: Duration,
    ) -> HostState {
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_limit: (limits.max_memory_mib as usize) << 20,
                peak_memory: 0,
            },
            owner: algorithm.id.owner.clone(),
            label: algorithm.label().into(),
            flow,
            message_id: message_id.to_string(),
            data: self.data.clone(),
            resolver,
            published: Vec::new(),
            published_bytes: 0,
            max_publish_bytes: limits.publish_budget(),
            publish_refusals_logged: 0,
            host_calls: 0,
            max_host_calls: limits.max_host_calls,
            data_written: 0,
            max_data_write_bytes: limits.max_data_write_bytes,
            host_call_timeout,
        }
    }

    /// Instances of the pooling allocator in use now (component instances,
    /// core instances, memories); all zero when nothing runs. `None` without
    /// the pooling allocator. For leak checks.
    pub fn pool_in_use(&self) -> Option<(u64, u64, usize)> {
        self.engine
            .pooling_allocator_metrics()
            .map(|m| (m.component_instances(), m.core_instances(), m.memories()))
    }

    /// Calls `apply` `n` times on ONE instance, under the default limits
    /// (counted across the calls) and an unreachable epoch deadline, and returns
    /// the time taken. A measurement aid: the router never reuses instances.
    pub async fn time_reused_instance(
        &self,
        algorithm: &Algorithm,
        message: &InboundMessage,
        n: u32,
    ) -> anyhow::Result<Duration> {
        let Code::Wasm(pre) = &algorithm.code else {
            anyhow::bail!("a native algorithm has no instance");
        };
        let limits = Limits::default();
        let _slot = self.instance_slot().await;
        let state = self.host_state(
            algorithm,
            WasiCtx::builder().build(),
            "benchmark".into(),
            &message.id,
            Arc::new(NoTopics),
            &limits,
            Duration::from_secs_f64(limits.host_call_timeout_secs),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if self.settings.fuel {
            let _ = store.set_fuel(u64::MAX);
        }
        if self.settings.epoch_interruption {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)?;
        let wit = WitMessage::from(message);
        let started = Instant::now();
        for _ in 0..n {
            let out = instance
                .call_apply(&mut store, &wit)
                .await
                .map_err(anyhow::Error::from)?;
            std::hint::black_box(out.ok());
        }
        Ok(started.elapsed())
    }
}

/// Refuses every publish: for invocations outside a flow, which have no
/// topics (the benchmarks').
pub struct NoTopics;

impl TopicResolver for NoTopics {
    fn resolve(&self, _topic: &str, _size: usize) -> Result<String, PublishRefusal> {
        Err(PublishRefusal::UnknownTopic)
    }
}

fn check_input(message: &InboundMessage, limits: &Limits) -> Option<Failure> {
    if let Some(why) = &message.undecodable {
        return Some(Failure::new(Reason::InvalidInput, why.clone()));
    }
    if message.payload.len() as u64 > limits.max_input_bytes {
        return Some(Failure::new(
            Reason::InvalidInput,
            format!(
                "payload of {} bytes is over max_input_bytes ({})",
                message.payload.len(),
                limits.max_input_bytes
            ),
        ));
    }
    None
}

fn check_output(output: Option<Vec<u8>>, limits: &Limits) -> Result<Option<Vec<u8>>, Failure> {
    match output {
        Some(o) if o.len() as u64 > limits.max_output_bytes => Err(Failure::new(
            Reason::OutputTooLarge,
            format!(
                "returned {} bytes; max_output_bytes is {}",
                o.len(),
                limits.max_output_bytes
            ),
        )),
        other => Ok(other),
    }
}

fn guest_failure(failure: WitFailure) -> Failure {
    match failure {
        WitFailure::Retry(r) => Failure {
            retry_after: Some(Duration::from_millis(r.delay_ms)),
            ..Failure::new(Reason::GuestRetry, r.reason)
        },
        WitFailure::Reject(why) => Failure::new(Reason::GuestReject, why),
    }
}

/// Turns a trap or host error into a failure with a reason.
fn classify(error: wasmtime::Error, timeout: Duration, stderr: &MemoryOutputPipe) -> Failure {
    if let Some(limit) = error.downcast_ref::<LimitTrap>() {
        let reason = match limit {
            LimitTrap::Memory { .. } => Reason::MemoryLimit,
            LimitTrap::HostCalls(_) => Reason::HostCallLimit,
        };
        return Failure::new(reason, limit.to_string());
    }
    let stderr = String::from_utf8_lossy(&stderr.contents())
        .trim()
        .to_string();
    let with_stderr = |detail: String| {
        if stderr.is_empty() {
            detail
        } else {
            format!("{detail}; stderr: {stderr}")
        }
    };
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::new(
            Reason::Timeout,
            format!("did not finish within {timeout:?}"),
        ),
        Some(Trap::StackOverflow) => Failure::new(
            Reason::StackOverflow,
            "exhausted the WebAssembly stack (unbounded recursion?)",
        ),
        Some(Trap::OutOfFuel) => Failure::new(Reason::FuelExhausted, "used up max_fuel"),
        Some(trap) => Failure::new(Reason::Trap, with_stderr(format!("wasm trap: {trap}"))),
        None => Failure::new(Reason::Trap, with_stderr(format!("{error:#}"))),
    }
}

/// A component's preamble: magic, then version 0x0d and layer 1.
fn looks_like_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Marks a hash as being compiled for as long as it lives.
struct Compiling<'a> {
    set: &'a std::sync::Mutex<HashSet<String>>,
    hash: String,
}

impl<'a> Compiling<'a> {
    fn start(set: &'a std::sync::Mutex<HashSet<String>>, hash: &str) -> Self {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_string());
        Self {
            set,
            hash: hash.to_string(),
        }
    }
}

impl Drop for Compiling<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.hash);
    }
}

/// What [`Sandbox::evict_compiled`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheEviction {
    /// Entries deleted.
    pub removed: usize,
    /// Bytes they held.
    pub removed_bytes: u64,
    /// Bytes the cache holds now.
    pub kept_bytes: u64,
}

fn remove_cache_entry(path: &Path, len: u64, outcome: &mut CacheEviction) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            outcome.removed += 1;
            outcome.removed_bytes += len;
        }
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = %e,
            "Could not delete a compiled-code cache entry."
        ),
    }
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file, so a
/// reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn sandbox(dir: &Path, max_mib: u64) -> Sandbox {
        let settings = SandboxConfig {
            pooling: false,
            epoch_interruption: false,
            compiled_cache_max_mib: max_mib,
            ..SandboxConfig::default()
        };
        let data = Arc::new(Collections::open(&dir.join("data")).unwrap());
        Sandbox::new(&settings, Some(dir.join("compiled")), data).unwrap()
    }

    fn entry(sb: &Sandbox, hash: &str, bytes: usize, age_secs: u64) -> PathBuf {
        let path = sb.cache_path(hash).unwrap();
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn entries_no_loaded_version_uses_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let sb = sandbox(dir.path(), 1024);
        let cache = dir.path().join("compiled");
        let used = entry(&sb, "aaaa", 10, 0);
        entry(&sb, "bbbb", 10, 0);
        // Compiled by another engine (an upgrade), and a write cut short long ago.
        std::fs::write(cache.join("aaaa-0123456789abcdef.cwasm"), b"x").unwrap();
        let stale_tmp = cache.join("cccc.tmp-1");
        std::fs::write(&stale_tmp, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale_tmp)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        // A write in progress stays.
        std::fs::write(cache.join("dddd.tmp-2"), b"x").unwrap();
        let in_use = HashSet::from(["aaaa".to_string()]);
        let outcome = sb.evict_compiled(&in_use).unwrap();
        assert_eq!(outcome.removed, 3);
        assert_eq!(
            names(&cache),
            vec![
                used.file_name().unwrap().to_string_lossy().into_owned(),
                "dddd.tmp-2".to_string()
            ]
        );
    }

    #[test]
    fn the_cache_stays_under_its_cap_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let sb = sandbox(dir.path(), 1);
        let cache = dir.path().join("compiled");
        let old = entry(&sb, "old", 400 << 10, 300);
        let mid = entry(&sb, "mid", 400 << 10, 200);
        let new = entry(&sb, "new", 400 << 10, 100);
        let in_use: HashSet<String> = ["old", "mid", "new"].map(String::from).into();
        let outcome = sb.evict_compiled(&in_use).unwrap();
        assert_eq!(outcome.removed, 1);
        assert!(!old.exists() && mid.exists() && new.exists());
        assert!(outcome.kept_bytes <= 1 << 20);
        // Using an entry makes it recent: `mid` was loaded, so `new` goes.
        std::fs::File::options()
            .write(true)
            .open(&mid)
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        entry(&sb, "newest", 400 << 10, 0);
        let in_use: HashSet<String> = ["mid", "new", "newest"].map(String::from).into();
        sb.evict_compiled(&in_use).unwrap();
        assert!(mid.exists() && !new.exists());
        assert_eq!(names(&cache).len(), 2);
    }
}

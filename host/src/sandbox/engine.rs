//! The wasmtime engine: its configuration (stack, fuel, epochs, the pooling
//! allocator and its per-slot shares), the epoch ticker, and the instance
//! slots an invocation waits for.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{Sandbox, bindings};
use crate::config::SandboxConfig;
use crate::data::Collections;

/// How often the epoch advances; the resolution of timeouts and of yielding
/// to other tasks while an algorithm computes.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Core module instances, linear memories and tables of the pool per
/// instance slot, which are also the most one component may use. A
/// componentize-py (CPython) component has 14 core instances.
const CORE_INSTANCES_PER_SLOT: u32 = 24;
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

/// The engine settings that decide the cost of a fresh instance. The
/// router always uses [`EngineTuning::default`]; the benchmarks switch each
/// one back to wasmtime's default to report what it buys.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineTuning {
    /// wasmtime's component-model async machinery (off in the router).
    pub concurrency_support: bool,
    /// Keep [`MEMORY_KEEP_RESIDENT`] and [`TABLE_KEEP_RESIDENT`] of each
    /// slot resident between instances (on in the router; wasmtime's
    /// default is 0: `madvise` on every free).
    pub keep_resident: bool,
    /// Find the pages an instance dirtied with `PAGEMAP_SCAN` (on where
    /// the kernel has it).
    pub pagemap_scan: bool,
}

impl Default for EngineTuning {
    fn default() -> Self {
        Self {
            concurrency_support: false,
            keep_resident: true,
            pagemap_scan: true,
        }
    }
}

impl Sandbox {
    /// Creates the engine. `cache_dir` keeps compiled code across restarts.
    pub fn new(
        settings: &SandboxConfig,
        cache_dir: Option<PathBuf>,
        data: Arc<Collections>,
    ) -> anyhow::Result<Self> {
        Self::with_tuning(settings, cache_dir, data, EngineTuning::default())
    }

    /// [`Sandbox::new`] with other engine settings, for benchmarks.
    #[doc(hidden)]
    pub fn with_tuning(
        settings: &SandboxConfig,
        cache_dir: Option<PathBuf>,
        data: Arc<Collections>,
        tuning: EngineTuning,
    ) -> anyhow::Result<Self> {
        super::background::init_compile_pool();
        let config = engine_config(settings, tuning);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the WebAssembly engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        // The 0.2.0 world's imports are all of 0.1.0's: this links both.
        bindings::batch::BatchAlgorithm::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());

        let ticker_stop = Arc::new(AtomicBool::new(false));
        if settings.epoch_interruption {
            spawn_epoch_ticker(&engine, ticker_stop.clone())?;
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
            outbound: Arc::default(),
            settings: settings.clone(),
            ticker_stop,
            slots: settings
                .pooling
                .then(|| Arc::new(Semaphore::new(settings.max_instances as usize))),
        })
    }

    /// Waits for a free instance slot of the pool. The permit must outlive
    /// the store it is taken for: dropping the store frees the slot.
    pub(super) async fn instance_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slots = self.slots.as_ref()?;
        // Never closed: the sandbox owns the semaphore.
        slots.clone().acquire_owned().await.ok()
    }

    /// An instance slot if one is free now: `Err(())` when the pool is
    /// full, `Ok(None)` without the pool. For shadow invocations, which
    /// never wait for a slot a serving one could take.
    pub(super) fn free_instance_slot(&self) -> Result<Option<OwnedSemaphorePermit>, ()> {
        let Some(slots) = self.slots.as_ref() else {
            return Ok(None);
        };
        slots.clone().try_acquire_owned().map(Some).map_err(|_| ())
    }

    /// Instances of the pooling allocator in use now (component instances,
    /// core instances, memories); all zero when nothing runs. `None` without
    /// the pooling allocator. For leak checks.
    pub fn pool_in_use(&self) -> Option<(u64, u64, usize)> {
        self.engine
            .pooling_allocator_metrics()
            .map(|m| (m.component_instances(), m.core_instances(), m.memories()))
    }
}

/// The engine's configuration: the component model without its async
/// machinery, the stack, fuel and epoch settings and, when pooling, the
/// pooling allocator.
fn engine_config(settings: &SandboxConfig, tuning: EngineTuning) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    // Algorithms are called one message at a time: the component-model
    // async machinery (per-store concurrent state, a worker fiber torn
    // down with every store) only costs instantiation time. Components
    // that use its features are refused when they load.
    config.concurrency_support(tuning.concurrency_support);
    config.epoch_interruption(settings.epoch_interruption);
    config.consume_fuel(settings.fuel);
    let stack = (settings.max_wasm_stack_kib as usize) << 10;
    config.max_wasm_stack(stack);
    // The async fiber stack has to hold the wasm stack plus host frames.
    config.async_stack_size(stack + (1 << 20));
    if settings.pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(
            settings, tuning,
        )));
    }
    config
}

/// The pooling allocator sized for `max_instances` slots.
fn pooling(settings: &SandboxConfig, tuning: EngineTuning) -> PoolingAllocationConfig {
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
        .max_memory_size((settings.max_memory_mib as usize) << 20);
    if tuning.keep_resident {
        pool.linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT);
    }
    // Used where the kernel has it (Linux 6.7 and later).
    pool.pagemap_scan(if tuning.pagemap_scan {
        Enabled::Auto
    } else {
        Enabled::No
    });
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until `stop` is set or
/// the engine is gone.
fn spawn_epoch_ticker(engine: &Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let engine = engine.weak();
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
    Ok(())
}

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
//! and data bytes; outgoing HTTP only to granted origins ([`outbound`]). Breaking one is a [`Failure`] with a [`Reason`], never a
//! crash of the router.

pub(crate) mod background;
mod bindings;
mod engine;
mod failure;
mod host;
mod invoke;
mod load;
pub mod outbound;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Linker;

#[doc(hidden)]
pub use engine::EngineTuning;
pub use failure::{Failure, MAX_DETAIL_BYTES, Reason, cap_detail};
pub use host::LimitTrap;
pub use load::CacheEviction;

use crate::config::{Limits, SandboxConfig};
use crate::data::Collections;
use crate::message::{InboundMessage, OutboundMessage};
use bindings::AlgorithmPre;
use host::HostState;

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
    /// The largest linear memory's initial size, in bytes: an invocation
    /// whose `max_memory_mib` is below it could never start (see
    /// [`Algorithm::memory_shortfall`]). `None` if it cannot be known.
    pub initial_memory_bytes: Option<u64>,
    /// `owner/name@version#hash12`, made once.
    label: Arc<str>,
    /// `owner/name`, made once.
    qualified: Arc<str>,
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
        Self::new(id, "0".repeat(64), 0, false, None, Code::Native(f))
    }

    fn new(
        id: AlgorithmId,
        hash: String,
        size: u64,
        from_cache: bool,
        initial_memory_bytes: Option<u64>,
        code: Code,
    ) -> Self {
        let qualified = format!("{}/{}", id.owner, id.name);
        let label = format!("{qualified}@{}#{}", id.version, &hash[..12.min(hash.len())]);
        Self {
            id,
            hash,
            size,
            loaded_at: SystemTime::now(),
            from_cache,
            initial_memory_bytes,
            label: label.into(),
            qualified: qualified.into(),
            code,
        }
    }

    /// Why this version cannot run under a memory limit of `max_memory_mib`:
    /// its initial memory alone is larger (`needs 13 MiB initial memory`),
    /// so every instance would fail before running. `None` when it fits.
    pub fn memory_shortfall(&self, max_memory_mib: u64) -> Option<String> {
        let needs = self.initial_memory_bytes?;
        (needs > max_memory_mib.saturating_mul(1 << 20)).then(|| {
            format!(
                "{} needs {} MiB initial memory",
                self.id,
                needs.div_ceil(1 << 20)
            )
        })
    }

    /// Whether the algorithm takes batches: a 0.2.0 component, which
    /// exports `apply-batch`, or a native stand-in. A 0.1.0 component runs
    /// one message per instance even in a flow with `batch`.
    pub fn batches(&self) -> bool {
        match &self.code {
            Code::Wasm(pre) => pre.batches(),
            Code::Native(_) => true,
        }
    }

    /// The world the component implements, `eventflow:algorithm@0.1.0` or
    /// `eventflow:algorithm@0.2.0` (`native` for a native stand-in).
    pub fn world(&self) -> &'static str {
        match &self.code {
            Code::Wasm(pre) if pre.batches() => "eventflow:algorithm@0.2.0",
            Code::Wasm(_) => "eventflow:algorithm@0.1.0",
            Code::Native(_) => "native",
        }
    }

    /// `owner/name@version#hash12`, the label used in logs and envelopes.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// `owner/name`, the algorithm without its version.
    pub fn qualified(&self) -> &Arc<str> {
        &self.qualified
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

/// What one call of `apply-batch` produced (see [`Sandbox::invoke_batch`]).
pub struct BatchOutcome {
    /// Each message's output, or why there is none, in the batch's order.
    pub results: Vec<Result<Option<Vec<u8>>, Failure>>,
    /// Messages the algorithm published during the call, by resolver key:
    /// empty unless at least one result is `Ok`.
    pub published: Vec<(String, OutboundMessage)>,
    /// Wall-clock time of instantiation and call.
    pub duration: Duration,
    /// Time spent waiting for a free instance slot of the pool.
    pub slot_wait: Duration,
    /// Peak linear memory of the call, in bytes.
    pub peak_memory_bytes: u64,
    /// Fuel used by the call, when fuel is counted.
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
    outbound: Arc<outbound::OutboundGrants>,
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
    /// The engine settings.
    pub fn settings(&self) -> &SandboxConfig {
        &self.settings
    }

    /// The algorithms' HTTP grants, which the router keeps up to date.
    pub fn outbound(&self) -> &Arc<outbound::OutboundGrants> {
        &self.outbound
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

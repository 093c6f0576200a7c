//! Process-wide settings: the router's directories, the admin endpoint and
//! the WebAssembly engine.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Directories of the router. Relative paths are taken from the directory of
/// the configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The plugin directory, laid out `<owner>/<name>/<version>.wasm`.
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    /// Where data collections are stored: `data://owner/collection/path` is
    /// the file `<data_dir>/owner/collection/path`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The router's own durable state: the embedded broker's store, the
    /// compiled-code cache, the admin token and address.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often a plugin bucket (`[plugins] backend = "s3://..."`) is
    /// listed for new, changed and deleted plugins, in seconds.
    #[serde(default = "default_plugins_poll_secs")]
    pub plugins_poll_secs: f64,
    /// How long a graceful stop waits for in-flight invocations before it
    /// releases them back to their brokers.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: f64,
    /// The key that encrypts secrets at rest (32 bytes, or 64 hex digits).
    /// By default `EVENTFLOW_SECRET_KEY_FILE`, else `<state_dir>/secret.key`,
    /// created on first start. Keep it away from the state directory so a
    /// copy of the state alone does not reveal the secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_file: Option<PathBuf>,
    /// Move damaged store files aside (`<file>.damaged-<timestamp>`) and
    /// start with empty ones instead of refusing to start. Not read from the
    /// file: set by `eventflow run --move-damaged-aside`.
    #[serde(skip)]
    pub move_damaged_aside: bool,
}

fn default_plugins_dir() -> PathBuf {
    "plugins".into()
}
fn default_data_dir() -> PathBuf {
    "data".into()
}
fn default_state_dir() -> PathBuf {
    "state".into()
}
const fn default_shutdown_grace_secs() -> f64 {
    30.0
}
const fn default_plugins_poll_secs() -> f64 {
    5.0
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            plugins_dir: default_plugins_dir(),
            data_dir: default_data_dir(),
            state_dir: default_state_dir(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            plugins_poll_secs: default_plugins_poll_secs(),
            secret_key_file: None,
            move_damaged_aside: false,
        }
    }
}

/// The admin HTTP endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. Port 0 picks a free port; the bound address is
    /// written to `<state_dir>/admin.addr` for the CLI.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

fn default_admin_listen() -> String {
    "127.0.0.1:7171".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// Settings that apply to the WebAssembly engine as a whole: wasmtime fixes
/// them when the engine is created, so they cannot vary per flow.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Instance slots in the pooling allocator: the most invocations that can
    /// run at once across all flows.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// The largest linear memory any algorithm may have, in MiB; flows'
    /// `max_memory_mib` may not exceed it.
    #[serde(default = "default_pool_memory_mib")]
    pub max_memory_mib: u64,
    /// Maximum WebAssembly stack, in KiB. Deeper recursion is a
    /// `stack_overflow` failure.
    #[serde(default = "default_max_wasm_stack_kib")]
    pub max_wasm_stack_kib: u64,
    /// Count fuel (executed instructions) so flows can set `max_fuel`.
    /// Costs some speed on every invocation, so it is off unless a flow asks.
    #[serde(default)]
    pub fuel: bool,
    /// Keep compiled code in `<state_dir>/compiled` so restarts skip
    /// compilation.
    #[serde(default = "yes")]
    pub cache_compiled: bool,
    /// The most disk the compiled-code cache may use, in MiB. Entries of
    /// versions no longer loaded are deleted anyway; beyond this, the least
    /// recently used ones go too (they are recompiled when next loaded).
    #[serde(default = "default_compiled_cache_max_mib")]
    pub compiled_cache_max_mib: u64,
    /// Use the pooling allocator (pre-reserved instance slots). Turning it
    /// off allocates each instance on demand; only benchmarks should.
    #[serde(default = "yes")]
    pub pooling: bool,
    /// Enable epoch interruption, which enforces `timeout_secs`. Turning it
    /// off leaves runaway algorithms unstoppable; only benchmarks should.
    #[serde(default = "yes")]
    pub epoch_interruption: bool,
}

const fn default_max_instances() -> u32 {
    256
}
const fn default_pool_memory_mib() -> u64 {
    4096
}
const fn default_max_wasm_stack_kib() -> u64 {
    512
}
const fn default_compiled_cache_max_mib() -> u64 {
    1024
}
pub(super) const fn yes() -> bool {
    true
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_instances: default_max_instances(),
            max_memory_mib: default_pool_memory_mib(),
            max_wasm_stack_kib: default_max_wasm_stack_kib(),
            fuel: false,
            cache_compiled: true,
            compiled_cache_max_mib: default_compiled_cache_max_mib(),
            pooling: true,
            epoch_interruption: true,
        }
    }
}

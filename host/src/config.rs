//! The router's configuration file: inert, strict types, and their validation.
//!
//! Parsing does no I/O beyond reading the file; [`load`] returns a
//! [`Config`] whose every cross-reference (flow → broker, topic, algorithm)
//! has been checked, or a [`ConfigError`] that names the file and the field.
//! Every field's doc comment is its user documentation.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::connector::BrokerSpec;
pub use crate::connector::topic::{TopicSpec, find_topic};

/// A configuration mistake, naming the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// The dotted path of the offending field, e.g. `flows[0].timeout_secs`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the router keeps its files.
    #[serde(default)]
    pub router: RouterConfig,
    /// The local admin endpoint the CLI talks to.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Engine-wide settings of the WebAssembly sandbox.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Broker connections, by name.
    #[serde(default)]
    pub brokers: Vec<BrokerSpec>,
    /// Topics (queues) on the broker connections, with their access lists.
    #[serde(default)]
    pub topics: Vec<TopicSpec>,
    /// Event flows: a topic enabled for an algorithm.
    #[serde(default)]
    pub flows: Vec<FlowSpec>,
    /// Limits for one algorithm version, overriding those of every flow
    /// that runs it.
    #[serde(default)]
    pub algorithm_limits: Vec<AlgorithmLimits>,
}

/// The declarative part of a configuration: what `eventflow apply -f`
/// converges the router's state store to, and what the admin API edits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Declarations {
    /// Broker connections.
    #[serde(default)]
    pub brokers: Vec<BrokerSpec>,
    /// Topics and their access lists.
    #[serde(default)]
    pub topics: Vec<TopicSpec>,
    /// Event flows.
    #[serde(default)]
    pub flows: Vec<FlowSpec>,
    /// Per-version limit overrides.
    #[serde(default)]
    pub algorithm_limits: Vec<AlgorithmLimits>,
}

impl Config {
    /// The declarative part.
    pub fn declarations(&self) -> Declarations {
        Declarations {
            brokers: self.brokers.clone(),
            topics: self.topics.clone(),
            flows: self.flows.clone(),
            algorithm_limits: self.algorithm_limits.clone(),
        }
    }

    /// This configuration's process settings with other declarations.
    pub fn with_declarations(&self, d: Declarations) -> Config {
        Config {
            router: self.router.clone(),
            admin: self.admin.clone(),
            sandbox: self.sandbox.clone(),
            brokers: d.brokers,
            topics: d.topics,
            flows: d.flows,
            algorithm_limits: d.algorithm_limits,
        }
    }
}

impl Declarations {
    /// A stable digest, to tell whether a file changed since it was applied.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(json))
    }
}

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

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            plugins_dir: default_plugins_dir(),
            data_dir: default_data_dir(),
            state_dir: default_state_dir(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
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
const fn yes() -> bool {
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

/// The keys (`broker:name`) of every topic that is some flow's dead-letter
/// topic, enabled or not (its dead letters stay on the topic either way).
pub fn dead_letter_topic_keys(flows: &[FlowSpec], topics: &[TopicSpec]) -> HashSet<String> {
    flows
        .iter()
        .filter_map(|f| find_topic(topics, &f.broker, f.dead_letter_topic.as_deref()?))
        .map(TopicSpec::key)
        .collect()
}

/// An event flow: every message on `topic` invokes `algorithm`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// A unique name, used in logs, metrics and the CLI.
    pub name: String,
    /// The broker connection of the topic. May be left out when there is only
    /// one broker connection.
    #[serde(default)]
    pub broker: String,
    /// The topic to consume.
    pub topic: String,
    /// The algorithm, `owner/name` to follow the latest version or
    /// `owner/name/version` to pin one.
    pub algorithm: AlgorithmRef,
    /// Set to false to keep the flow configured but stopped.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Invocations of this flow that may run at once. When they all run, the
    /// flow stops receiving until one finishes.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Where the algorithm's output (`ok(some(bytes))`) is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_topic: Option<String>,
    /// Where messages go, in an envelope saying why, once they fail for good.
    /// Without one, such messages are dropped with an error log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Deliveries of a message before it is dead-lettered.
    #[serde(default = "default_max_receives")]
    pub max_receives: u32,
    /// Wall-clock time one invocation may take, in seconds (fractions
    /// allowed). A longer run fails with `timeout`.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// The delay between attempts.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Resource limits of each invocation.
    #[serde(default)]
    pub limits: Limits,
    /// Options of the flow's consumer that only some brokers use.
    #[serde(default)]
    pub consumer: ConsumerOptions,
}

const fn default_concurrency() -> u32 {
    8
}
const fn default_max_receives() -> u32 {
    10
}

impl FlowSpec {
    /// A flow of `algorithm` on `topic` of `broker` whose other fields have
    /// the defaults a configuration file gives them (the control plane's
    /// new flows).
    pub fn new(name: &str, broker: &str, topic: &str, algorithm: AlgorithmRef) -> Self {
        Self {
            name: name.to_string(),
            broker: broker.to_string(),
            topic: topic.to_string(),
            algorithm,
            enabled: yes(),
            concurrency: default_concurrency(),
            output_topic: None,
            dead_letter_topic: None,
            max_receives: default_max_receives(),
            timeout_secs: default_timeout_secs(),
            retry: RetryPolicy::default(),
            limits: Limits::default(),
            consumer: ConsumerOptions::default(),
        }
    }
}

/// Consumer options that only some brokers use.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerOptions {
    /// Kafka consumer group; `eventflow-<flow name>` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// SQS: how long messages received while the flow is saturated wait
    /// before they become visible again, in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation_delay_secs: Option<u64>,
    /// Kafka: how many messages of one partition may be in flight at once
    /// (default 8, at most 64). Their outputs and publishes are produced,
    /// and their offsets stored, in partition order either way; 1 also runs
    /// the invocations themselves one after another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_per_partition: Option<u32>,
    /// Kafka: how long the flow's consumer may hold no partition assignment
    /// (joining its group, or rebalancing after a broker outage) before
    /// `/readyz` reports the router not ready, in seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_grace_secs: Option<u64>,
}

/// How long to wait before the next attempt of a failed message.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// `exponential` (doubling from `base_ms` up to `cap_ms`) or `fixed`
    /// (always `base_ms`).
    #[serde(default)]
    pub backoff: Backoff,
    /// The first delay, in milliseconds.
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    /// The longest delay, in milliseconds.
    #[serde(default = "default_cap_ms")]
    pub cap_ms: u64,
    /// Spread delays randomly over their upper half, so that messages that
    /// failed together do not retry together.
    #[serde(default = "yes")]
    pub jitter: bool,
}

const fn default_base_ms() -> u64 {
    1_000
}
const fn default_cap_ms() -> u64 {
    300_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            base_ms: default_base_ms(),
            cap_ms: default_cap_ms(),
            jitter: true,
        }
    }
}

/// The shape of the retry delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// `base_ms`, then twice that, and so on up to `cap_ms`.
    #[default]
    Exponential,
    /// Always `base_ms`.
    Fixed,
}

/// Resource limits of one invocation. In `[[algorithm_limits]]` every field is
/// optional and overrides the flow's value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory one invocation may grow to, in MiB.
    #[serde(default = "default_max_memory_mib")]
    pub max_memory_mib: u64,
    /// Instructions one invocation may execute, counted as wasmtime fuel.
    /// Needs `[sandbox] fuel = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fuel: Option<u64>,
    /// Largest output `apply` may return, in bytes.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Host calls (data, publish, log) one invocation may make.
    #[serde(default = "default_max_host_calls")]
    pub max_host_calls: u32,
    /// Bytes one invocation may write to data collections.
    #[serde(default = "default_max_data_write_bytes")]
    pub max_data_write_bytes: u64,
    /// Largest message the flow hands to the algorithm, in bytes; larger ones
    /// fail with `invalid_input`.
    #[serde(default = "default_max_input_bytes")]
    pub max_input_bytes: u64,
    /// How long one host call (a data write, say) may take, in seconds. An
    /// epoch cannot interrupt the host, so host calls carry their own timeout.
    #[serde(default = "default_host_call_timeout_secs")]
    pub host_call_timeout_secs: f64,
    /// Bytes one invocation may queue with `publish`: payloads, header names
    /// and header values, summed over all its calls. A publish past it is
    /// refused with `limit-exceeded`. Default: 4 x `max_output_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_publish_bytes: Option<u64>,
}

impl Limits {
    /// The effective `max_publish_bytes`.
    pub fn publish_budget(&self) -> u64 {
        self.max_publish_bytes
            .unwrap_or(self.max_output_bytes.saturating_mul(4))
    }
}

const fn default_timeout_secs() -> f64 {
    30.0
}
const fn default_max_memory_mib() -> u64 {
    64
}
const fn default_max_output_bytes() -> u64 {
    4 << 20
}
const fn default_max_host_calls() -> u32 {
    10_000
}
const fn default_max_data_write_bytes() -> u64 {
    64 << 20
}
const fn default_max_input_bytes() -> u64 {
    16 << 20
}
const fn default_host_call_timeout_secs() -> f64 {
    10.0
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_mib: default_max_memory_mib(),
            max_fuel: None,
            max_output_bytes: default_max_output_bytes(),
            max_host_calls: default_max_host_calls(),
            max_data_write_bytes: default_max_data_write_bytes(),
            max_input_bytes: default_max_input_bytes(),
            host_call_timeout_secs: default_host_call_timeout_secs(),
            max_publish_bytes: None,
        }
    }
}

/// Limits for one algorithm version, overriding the flows' own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmLimits {
    /// The algorithm version, `owner/name/version`.
    pub algorithm: AlgorithmRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Overrides `timeout_secs`.
    pub timeout_secs: Option<f64>,
    /// Overrides `max_memory_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Overrides `max_fuel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fuel: Option<u64>,
    /// Overrides `max_output_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Overrides `max_host_calls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_host_calls: Option<u32>,
    /// Overrides `max_data_write_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_write_bytes: Option<u64>,
    /// Overrides `max_input_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<u64>,
    /// Overrides `host_call_timeout_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_call_timeout_secs: Option<f64>,
    /// Overrides `max_publish_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_publish_bytes: Option<u64>,
}

impl AlgorithmLimits {
    /// `base` with this override's fields applied.
    pub fn apply_to(&self, base: &Limits) -> Limits {
        Limits {
            max_memory_mib: self.max_memory_mib.unwrap_or(base.max_memory_mib),
            max_fuel: self.max_fuel.or(base.max_fuel),
            max_output_bytes: self.max_output_bytes.unwrap_or(base.max_output_bytes),
            max_host_calls: self.max_host_calls.unwrap_or(base.max_host_calls),
            max_data_write_bytes: self
                .max_data_write_bytes
                .unwrap_or(base.max_data_write_bytes),
            max_input_bytes: self.max_input_bytes.unwrap_or(base.max_input_bytes),
            host_call_timeout_secs: self
                .host_call_timeout_secs
                .unwrap_or(base.host_call_timeout_secs),
            max_publish_bytes: self.max_publish_bytes.or(base.max_publish_bytes),
        }
    }
}

/// `owner/name` or `owner/name/version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlgorithmRef {
    /// The owner (user or organization).
    pub owner: String,
    /// The algorithm's name.
    pub name: String,
    /// A pinned version; `None` follows the highest version loaded.
    pub version: Option<semver::Version>,
}

impl AlgorithmRef {
    /// `owner/name`, without the version.
    pub fn unversioned(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

impl fmt::Display for AlgorithmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}/{}/{}", self.owner, self.name, v),
            None => write!(f, "{}/{}", self.owner, self.name),
        }
    }
}

/// The longest name of anything (owner, algorithm, topic, broker connection,
/// flow, token id), in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Whether `s` can be the name of an owner, algorithm, collection, topic,
/// broker connection, flow, router secret or token: 1 to 128 of ASCII letters,
/// digits, `_`, `-` and `.`, and neither `.` nor `..`. Names become path
/// segments, file names and URL segments, so nothing else is allowed.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks a name with [`is_valid_name`]; the error says what a name may be
/// and shows the name escaped and shortened (it may hold control characters
/// or be very long).
pub fn check_name(s: &str) -> Result<(), String> {
    if is_valid_name(s) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid name: use 1 to {MAX_NAME_BYTES} letters, digits, '_', '-' and '.' (not \".\" or \"..\")",
            quote_name(s)
        ))
    }
}

/// Whether `s` can be the name of an algorithm's secret, which the algorithm
/// sees as an environment variable: letters, digits and `_`, not starting
/// with a digit, at most 128 bytes.
pub fn is_valid_variable(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `s` quoted with control characters escaped, cut to 64 characters: for
/// showing a refused name in an error.
pub fn quote_name(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.chars().count() > SHOWN {
        let head: String = s.chars().take(SHOWN).collect();
        format!("{head:?}... ({} bytes)", s.len())
    } else {
        format!("{s:?}")
    }
}

/// Checks a reference to a topic: `name`, or `broker:name` for a topic of
/// another broker connection.
pub fn check_topic_reference(s: &str) -> Result<(), String> {
    match s.split_once(':') {
        Some((broker, name)) => check_name(broker).and_then(|()| check_name(name)),
        None => check_name(s),
    }
}

impl FromStr for AlgorithmRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (owner, name, version) = match parts.as_slice() {
            [owner, name] => (*owner, *name, None),
            [owner, name, version] => (*owner, *name, Some(*version)),
            _ => {
                return Err(format!(
                    "\"{s}\" is not an algorithm reference: expected owner/name or owner/name/version"
                ));
            }
        };
        for (what, value) in [("owner", owner), ("name", name)] {
            if !is_valid_name(value) {
                return Err(format!(
                    "{}: the {what} {} may only use letters, digits, '_', '-' and '.' (1 to {MAX_NAME_BYTES}, not \".\" or \"..\")",
                    quote_name(s),
                    quote_name(value)
                ));
            }
        }
        let version = version
            .map(|v| {
                semver::Version::parse(v)
                    .map_err(|e| format!("\"{s}\": \"{v}\" is not a semver version: {e}"))
            })
            .transpose()?;
        Ok(Self {
            owner: owner.into(),
            name: name.into(),
            version,
        })
    }
}

impl<'de> Deserialize<'de> for AlgorithmRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for AlgorithmRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads, parses and validates a configuration file. Relative directories are
/// resolved against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        field: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    let mut config = parse(&file, &text)?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    config.router.plugins_dir = base.join(&config.router.plugins_dir);
    config.router.data_dir = base.join(&config.router.data_dir);
    config.router.state_dir = base.join(&config.router.state_dir);
    if let Some(key) = &mut config.router.secret_key_file {
        *key = base.join(&*key);
    }
    Ok(config)
}

/// Parses and validates configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let err = |field: String, message: String| ConfigError {
        file: file.to_string(),
        field,
        message,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        err(
            position(text, e.span()),
            e.message().trim_end().replace('\n', " "),
        )
    })?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut field = if path == "." { String::new() } else { path };
        let pos = position(text, inner.span());
        if field.is_empty() {
            field = pos;
        } else if !pos.is_empty() {
            field = format!("{field} ({pos})");
        }
        err(field, inner.message().trim_end().replace('\n', " "))
    })?;
    validate(&mut config).map_err(|(field, message)| err(field, message))?;
    Ok(config)
}

fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            format!("line {line}")
        }
        None => "(document)".into(),
    }
}

type FieldError = (String, String);

/// Checks cross-references and fills in defaults that depend on other fields
/// (a flow's or topic's broker when there is only one).
pub fn validate(config: &mut Config) -> Result<(), FieldError> {
    if config.sandbox.max_instances == 0 {
        return Err(("sandbox.max_instances".into(), "must be at least 1".into()));
    }
    let mut broker_names = HashSet::new();
    for (i, b) in config.brokers.iter().enumerate() {
        check_name(b.name()).map_err(|m| (format!("brokers[{i}].name"), m))?;
        if !broker_names.insert(b.name().to_string()) {
            return Err((
                format!("brokers[{i}].name"),
                format!(
                    "a broker connection named \"{}\" is already defined",
                    b.name()
                ),
            ));
        }
        b.validate()
            .map_err(|(f, m)| (format!("brokers[{i}].{f}"), m))?;
        let spec = serde_json::to_value(b).unwrap_or_default();
        if let Some(path) = inline_secret(&spec, "") {
            return Err((
                format!("brokers[{i}]{path}"),
                "credentials may not be written inline: use { env = \"VAR\" }, { file = \"PATH\" } or { secret = \"NAME\" } (the admin API stores inline values as secrets)".into(),
            ));
        }
        if let Some((path, m)) = bad_secret_name(&spec, "") {
            return Err((format!("brokers[{i}]{path}.secret"), m));
        }
    }
    let only_broker = (config.brokers.len() == 1).then(|| config.brokers[0].name().to_string());
    let resolve_broker = |field: String, broker: &mut String| -> Result<(), FieldError> {
        if broker.is_empty() {
            match &only_broker {
                Some(name) => *broker = name.clone(),
                None => {
                    return Err((
                        field,
                        "is required when there is not exactly one broker connection".into(),
                    ));
                }
            }
        } else if !broker_names.contains(broker.as_str()) {
            return Err((field, format!("no broker connection named \"{broker}\"")));
        }
        Ok(())
    };
    let mut topic_keys: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, t) in config.topics.iter_mut().enumerate() {
        check_name(&t.name).map_err(|m| (format!("topics[{i}].name"), m))?;
        if !t.broker.is_empty() {
            check_name(&t.broker).map_err(|m| (format!("topics[{i}].broker"), m))?;
        }
        resolve_broker(format!("topics[{i}].broker"), &mut t.broker)?;
        if let Some(address) = &t.address {
            check_address(address).map_err(|m| (format!("topics[{i}].address"), m))?;
        }
        for (list, grants) in [
            ("consumers", &t.consumers),
            ("publishers", &t.publishers),
            ("dead_letter_publishers", &t.dead_letter_publishers),
        ] {
            for (j, g) in grants.iter().enumerate() {
                let ok = match g.split_once('/') {
                    Some((owner, name)) => {
                        is_valid_name(owner) && (name == "*" || is_valid_name(name))
                    }
                    None => false,
                };
                if !ok {
                    return Err((
                        format!("topics[{i}].{list}[{j}]"),
                        format!("\"{g}\" is not a grant: expected owner/name or owner/*"),
                    ));
                }
            }
        }
        if topic_keys
            .insert((t.broker.clone(), t.name.clone()), i)
            .is_some()
        {
            return Err((
                format!("topics[{i}].name"),
                format!(
                    "topic \"{}\" is already defined on broker \"{}\"",
                    t.name, t.broker
                ),
            ));
        }
    }
    let topics = config.topics.clone();
    let mut flow_names = HashSet::new();
    for (i, f) in config.flows.iter_mut().enumerate() {
        let at = |field: &str| format!("flows[{i}].{field}");
        check_name(&f.name).map_err(|m| (at("name"), m))?;
        if !f.broker.is_empty() {
            check_name(&f.broker).map_err(|m| (at("broker"), m))?;
        }
        check_name(&f.topic).map_err(|m| {
            let hint = if f.topic.contains(':') {
                " (a flow consumes from its own broker connection: use the plain topic name)"
            } else {
                ""
            };
            (at("topic"), format!("{m}{hint}"))
        })?;
        for (field, target) in [
            ("output_topic", &f.output_topic),
            ("dead_letter_topic", &f.dead_letter_topic),
        ] {
            if let Some(target) = target {
                check_topic_reference(target).map_err(|m| (at(field), m))?;
            }
        }
        if !flow_names.insert(f.name.clone()) {
            return Err((
                at("name"),
                format!("a flow named \"{}\" is already defined", f.name),
            ));
        }
        if f.enabled {
            resolve_broker(at("broker"), &mut f.broker)?;
        } else if f.broker.is_empty() {
            // A disabled flow may point at a connection that is gone; it is
            // checked again when it is enabled.
            if let Some(name) = &only_broker {
                f.broker = name.clone();
            }
        }
    }
    // With every flow's broker known: which topics are dead-letter topics.
    let dead_letter_topics = dead_letter_topic_keys(&config.flows, &topics);
    for (i, f) in config.flows.iter().enumerate() {
        let at = |field: &str| format!("flows[{i}].{field}");
        if f.enabled {
            check_flow(f, &topics, &dead_letter_topics).map_err(|(field, m)| (at(&field), m))?;
        }
        check_timeout(f.timeout_secs).map_err(|m| (at("timeout_secs"), m))?;
        check_limits(&f.limits, &config.sandbox)
            .map_err(|(field, m)| (at(&format!("limits.{field}")), m))?;
    }
    for (i, o) in config.algorithm_limits.iter().enumerate() {
        if o.algorithm.version.is_none() {
            return Err((
                format!("algorithm_limits[{i}].algorithm"),
                format!(
                    "\"{}\" must name a version: owner/name/version",
                    o.algorithm
                ),
            ));
        }
        if let Some(t) = o.timeout_secs {
            check_timeout(t).map_err(|m| (format!("algorithm_limits[{i}].timeout_secs"), m))?;
        }
        check_limits(&o.apply_to(&Limits::default()), &config.sandbox)
            .map_err(|(field, m)| (format!("algorithm_limits[{i}].{field}"), m))?;
    }
    Ok(())
}

/// The broker's own name for a topic (a queue URL, a queue, a Kafka topic)
/// is the broker's to judge; only what no broker takes is refused here.
fn check_address(address: &str) -> Result<(), String> {
    const MAX_ADDRESS_BYTES: usize = 1024;
    if address.is_empty() {
        Err("may not be empty (leave it out to use the topic's name)".into())
    } else if address.len() > MAX_ADDRESS_BYTES {
        Err(format!(
            "{} is longer than {MAX_ADDRESS_BYTES} bytes",
            quote_name(address)
        ))
    } else if address.chars().any(char::is_control) {
        Err(format!(
            "{} contains control characters",
            quote_name(address)
        ))
    } else {
        Ok(())
    }
}

/// The path and error of the first router-secret reference
/// (`{ secret = NAME }`) in `v` whose name is not a valid name.
fn bad_secret_name(v: &serde_json::Value, path: &str) -> Option<(String, String)> {
    match v {
        serde_json::Value::Object(map) => {
            if map.len() == 1
                && let Some(serde_json::Value::String(name)) = map.get("secret")
            {
                return check_name(name).err().map(|m| (path.to_string(), m));
            }
            map.iter()
                .find_map(|(k, v)| bad_secret_name(v, &format!("{path}.{k}")))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| bad_secret_name(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The path of the first inline credential (`{ value = ... }`) in `v`.
pub fn inline_secret(v: &serde_json::Value, path: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(map) => {
            if map.len() == 1 && map.contains_key("value") {
                return Some(path.to_string());
            }
            map.iter()
                .find_map(|(k, v)| inline_secret(v, &format!("{path}.{k}")))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| inline_secret(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Checks one flow against the topics and their access lists;
/// `dead_letter_topics` holds the keys of every flow's dead-letter topic.
pub fn check_flow(
    f: &FlowSpec,
    topics: &[TopicSpec],
    dead_letter_topics: &HashSet<String>,
) -> Result<(), FieldError> {
    let topic = find_topic(topics, &f.broker, &f.topic).ok_or_else(|| {
        (
            "topic".to_string(),
            format!(
                "no topic \"{}\" is declared on broker \"{}\" (add it to [[topics]])",
                f.topic, f.broker
            ),
        )
    })?;
    if f.topic.contains(':') {
        return Err((
            "topic".into(),
            "a flow consumes from its own broker connection: use the plain topic name".into(),
        ));
    }
    let alg = f.algorithm.unversioned();
    if !topic.may_consume(&f.algorithm.owner, &f.algorithm.name) {
        return Err((
            "algorithm".into(),
            format!(
                "{alg} has no grant to consume from topic \"{}\" on broker \"{}\": add \"{alg}\" to that topic's consumers",
                topic.name, topic.broker
            ),
        ));
    }
    for (field, target) in [
        ("output_topic", &f.output_topic),
        ("dead_letter_topic", &f.dead_letter_topic),
    ] {
        let Some(target) = target else { continue };
        let t = find_topic(topics, &f.broker, target).ok_or_else(|| {
            (
                field.to_string(),
                format!("no topic \"{target}\" is declared (add it to [[topics]])"),
            )
        })?;
        if field == "dead_letter_topic" {
            // The router writes dead letters itself: no grant needed.
            continue;
        }
        if dead_letter_topics.contains(&t.key()) {
            if !t.may_publish_dead_letters(&f.algorithm.owner, &f.algorithm.name) {
                return Err((
                    field.to_string(),
                    format!(
                        "topic \"{}\" on broker \"{}\" is a flow's dead-letter topic, which only the router writes: add \"{alg}\" to that topic's dead_letter_publishers to let the algorithm's outputs go there",
                        t.name, t.broker
                    ),
                ));
            }
            continue;
        }
        if !t.may_publish(&f.algorithm.owner, &f.algorithm.name) {
            return Err((
                field.to_string(),
                format!(
                    "{alg} has no grant to publish to topic \"{}\" on broker \"{}\": add \"{alg}\" to that topic's publishers",
                    t.name, t.broker
                ),
            ));
        }
    }
    if f.concurrency == 0 {
        return Err(("concurrency".into(), "must be at least 1".into()));
    }
    if f.max_receives == 0 {
        return Err(("max_receives".into(), "must be at least 1".into()));
    }
    if let Some(n) = f.consumer.in_flight_per_partition
        && !(1..=64).contains(&n)
    {
        return Err((
            "consumer.in_flight_per_partition".into(),
            format!("{n} must be between 1 and 64"),
        ));
    }
    if f.retry.base_ms > f.retry.cap_ms {
        return Err((
            "retry.base_ms".into(),
            format!(
                "{} is larger than retry.cap_ms ({})",
                f.retry.base_ms, f.retry.cap_ms
            ),
        ));
    }
    Ok(())
}

fn check_timeout(t: f64) -> Result<(), String> {
    if t > 0.0 && t <= 12.0 * 3600.0 {
        Ok(())
    } else {
        Err(format!("{t} must be above 0 and at most 43200 (12 h)"))
    }
}

fn check_limits(l: &Limits, sandbox: &SandboxConfig) -> Result<(), FieldError> {
    if !(l.host_call_timeout_secs > 0.0 && l.host_call_timeout_secs <= 3600.0) {
        return Err((
            "host_call_timeout_secs".into(),
            "must be above 0 and at most 3600".into(),
        ));
    }
    if l.max_memory_mib == 0 || l.max_memory_mib > sandbox.max_memory_mib {
        return Err((
            "max_memory_mib".into(),
            format!(
                "{} must be between 1 and sandbox.max_memory_mib ({})",
                l.max_memory_mib, sandbox.max_memory_mib
            ),
        ));
    }
    if l.max_fuel.is_some() && !sandbox.fuel {
        return Err((
            "max_fuel".into(),
            "needs fuel counting: set `fuel = true` under [sandbox]".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "incoming"
consumers = ["ezra/store_file"]

[[topics]]
name = "dlq"
publishers = ["ezra/*"]

[[flows]]
name = "store"
topic = "incoming"
algorithm = "ezra/store_file/0.1.0"
dead_letter_topic = "dlq"
"#;

    #[test]
    fn a_good_file_fills_in_the_only_broker() {
        let c = parse("good.toml", GOOD).unwrap();
        assert_eq!(c.flows[0].broker, "local");
        assert_eq!(c.topics[1].broker, "local");
        assert_eq!(
            c.flows[0].algorithm.version,
            Some(semver::Version::new(0, 1, 0))
        );
    }

    #[test]
    fn an_unknown_field_names_the_file_and_field() {
        let text = GOOD.replace("dead_letter_topic", "dead_leter_topic");
        let e = parse("bad.toml", &text).unwrap_err().to_string();
        assert!(e.starts_with("bad.toml: flows[0]"), "{e}");
        assert!(e.contains("dead_leter_topic"), "{e}");
    }

    #[test]
    fn a_bad_algorithm_reference_is_refused() {
        let text = GOOD.replace("ezra/store_file/0.1.0", "ezra/store_file/one");
        let e = parse("bad.toml", &text).unwrap_err().to_string();
        assert!(e.contains("flows[0].algorithm"), "{e}");
        assert!(e.contains("semver"), "{e}");
    }

    #[test]
    fn an_unknown_broker_is_refused() {
        let text = GOOD.replace(
            "topic = \"incoming\"",
            "topic = \"incoming\"\nbroker = \"nope\"",
        );
        let e = parse("bad.toml", &text).unwrap_err().to_string();
        assert_eq!(
            e,
            "bad.toml: flows[0].broker: no broker connection named \"nope\""
        );
    }

    #[test]
    fn partition_depth_out_of_range_is_named() {
        let text = format!("{GOOD}[flows.consumer]\nin_flight_per_partition = 0\n");
        let e = parse("bad.toml", &text).unwrap_err().to_string();
        assert_eq!(
            e,
            "bad.toml: flows[0].consumer.in_flight_per_partition: 0 must be between 1 and 64"
        );
    }

    #[test]
    fn a_missing_grant_is_named() {
        let text = GOOD.replace("consumers = [\"ezra/store_file\"]", "consumers = []");
        let e = parse("bad.toml", &text).unwrap_err().to_string();
        assert!(e.contains("no grant to consume"), "{e}");
    }

    /// Names that would be a path, a dot segment, a control character or a
    /// very long string, wherever a name goes in a file.
    #[test]
    fn names_are_validated_everywhere_a_file_gives_one() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            "..",
            ".",
            "a/b",
            "",
            "a\\u0000b",
            "a\\nb",
            "%2e%2e",
            "a b",
            &long,
        ] {
            for (from, to, field) in [
                ("name = \"incoming\"", "name = \"BAD\"", "topics[0].name"),
                ("name = \"local\"", "name = \"BAD\"", "brokers[0].name"),
                ("name = \"store\"", "name = \"BAD\"", "flows[0].name"),
                (
                    "dead_letter_topic = \"dlq\"",
                    "dead_letter_topic = \"BAD\"",
                    "flows[0].dead_letter_topic",
                ),
                ("topic = \"incoming\"", "topic = \"BAD\"", "flows[0].topic"),
            ] {
                let text = GOOD.replacen(from, &to.replace("BAD", bad), 1);
                let e = parse("bad.toml", &text).unwrap_err().to_string();
                assert!(
                    e.starts_with(&format!("bad.toml: {field}: "))
                        && e.contains("not a valid name"),
                    "{bad:?} as {field}: {e}"
                );
            }
        }
        // A disabled flow is checked too, and so is another broker's topic.
        let text = GOOD.replace(
            "dead_letter_topic = \"dlq\"",
            "dead_letter_topic = \"local:..\"\nenabled = false",
        );
        let e = parse("bad.toml", &text).unwrap_err().to_string();
        assert!(e.contains("flows[0].dead_letter_topic"), "{e}");
        let text = GOOD.replace(
            "kind = \"embedded\"",
            "kind = \"embedded\"\npath = \"x.redb\"",
        );
        assert!(parse("good.toml", &text).is_ok());
    }

    #[test]
    fn a_router_secret_reference_must_be_a_name() {
        let mut c = parse("good.toml", GOOD).unwrap();
        c.brokers.push(
            serde_json::from_value(serde_json::json!({
                "name": "sb", "kind": "servicebus",
                "connection_string": {"secret": "../other"},
            }))
            .unwrap(),
        );
        let (field, m) = validate(&mut c).unwrap_err();
        assert_eq!(field, "brokers[1].connection_string.secret");
        assert!(m.contains("not a valid name"), "{m}");
    }

    #[test]
    fn refused_names_are_shown_escaped_and_short() {
        let e = check_name(&format!("a\0{}", "y".repeat(500))).unwrap_err();
        assert!(e.starts_with("\"a\\0yyy"), "{e}");
        assert!(e.contains("(502 bytes)") && e.len() < 300, "{e}");
    }

    #[test]
    fn a_dead_letter_topic_needs_no_publish_grant() {
        let text = GOOD.replace("publishers = [\"ezra/*\"]", "publishers = []");
        parse("good.toml", &text).unwrap();
    }

    #[test]
    fn outputs_to_a_dead_letter_topic_need_a_dead_letter_grant() {
        let text = format!(
            "{GOOD}\n[[flows]]\nname = \"out\"\ntopic = \"incoming\"\nalgorithm = \"ezra/store_file\"\noutput_topic = \"dlq\"\n"
        );
        let e = parse("bad.toml", &text).unwrap_err().to_string();
        assert!(
            e.contains("flows[1].output_topic") && e.contains("dead_letter_publishers"),
            "{e}"
        );
        let granted = text.replace(
            "publishers = [\"ezra/*\"]",
            "publishers = []\ndead_letter_publishers = [\"ezra/store_file\"]",
        );
        parse("good.toml", &granted).unwrap();
    }
}

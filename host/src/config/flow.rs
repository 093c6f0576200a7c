//! An event flow's declaration: its topic, algorithm, retries and consumer
//! options.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::limits::default_timeout_secs;
use super::rollout::{CanarySpec, RolloutPolicy, ShadowSpec};
use super::settings::yes;
use super::{AlgorithmRef, Limits, TopicSpec, find_topic};

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
    /// `key`: messages with the same key (the embedded broker's
    /// `message-key` header, a Kafka record's key, an SQS FIFO message
    /// group) are handled one at a time in the order received, different
    /// keys in parallel up to `concurrency`. `partition` (Kafka and Event
    /// Hubs): a partition's outputs are published in offset order. `none`:
    /// no order. Absent: `partition` on Kafka and Event Hubs, `none`
    /// elsewhere (see [`FlowSpec::ordering_on`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<FlowOrdering>,
    /// With `ordering = "key"`, what a message that fails for good (after
    /// its retries, which keep its key's order) does to the later messages
    /// of its key. `continue`: it goes to the dead-letter topic and the
    /// next message of the key proceeds. `park`: it goes to the
    /// dead-letter topic and the key's later messages are held in the
    /// router's state until an operator releases or drops them
    /// (`eventflow keys`).
    #[serde(default, skip_serializing_if = "KeyFailure::is_continue")]
    pub on_key_failure: KeyFailure,
    /// Which messages invoke the algorithm; the others are acknowledged
    /// and counted as `filtered`. Absent: every message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// Batches: messages grouped for one `apply-batch` call of a 0.2.0
    /// component on one fresh instance, e.g.
    /// `batch = { max_messages = 64, max_wait_ms = 20 }`. The invocation
    /// limits and the timeout hold per batch. Absent: one message per call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// A canary: a share of the messages goes to another version of the
    /// algorithm, rolled back when its gate fails and promoted after
    /// `promote_after` messages, e.g.
    /// `canary = { version = "0.3.0", percent = 10, max_failure_rate = 0.05 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// A shadow: every message is also run by another version whose
    /// effects are discarded, to compare it with the serving one, e.g.
    /// `shadow = { version = "0.3.0", min_output_agreement = 0.9 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// For a flow that follows the latest version: how a newly loaded
    /// version takes over, `"canary N% then promote after M"`. It gets N %
    /// of the messages as a canary and is promoted after M of them with
    /// its gate passing, or rolled back (the previous version keeps
    /// serving). Absent: a new version takes every message at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
    /// For a flow with a `rollout`: versions it never runs, e.g.
    /// `skip_versions = ["0.2.0"]`. The flow follows the newest loaded
    /// version not listed. The router adds a version its rollout rolls
    /// back, so the rollback survives restarts and holds for every router
    /// sharing the state; remove it to roll that version out again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_versions: Vec<semver::Version>,
}

const fn default_concurrency() -> u32 {
    8
}
const fn default_max_receives() -> u32 {
    10
}

impl FlowSpec {
    /// Whether the flow orders by key (`ordering = "key"`).
    pub fn by_key(&self) -> bool {
        self.ordering == Some(FlowOrdering::Key)
    }

    /// The flow's ordering on a broker of `kind`: the declared one, or
    /// `partition` on Kafka and Event Hubs and `none` elsewhere.
    pub fn ordering_on(&self, kind: &str) -> FlowOrdering {
        self.ordering
            .unwrap_or(if PARTITIONED_BROKERS.contains(&kind) {
                FlowOrdering::Partition
            } else {
                FlowOrdering::None
            })
    }

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
            ordering: None,
            on_key_failure: KeyFailure::default(),
            filter: None,
            batch: None,
            canary: None,
            shadow: None,
            rollout: None,
            skip_versions: Vec::new(),
        }
    }
}

/// The order in which a flow handles the messages it holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FlowOrdering {
    /// Up to `concurrency` messages at once, whatever their keys.
    #[default]
    None,
    /// Kafka and Event Hubs: up to `in_flight_per_partition` messages of a
    /// partition at once, their outputs published in offset order.
    Partition,
    /// One message of a key at a time, in the order received; keys in
    /// parallel.
    Key,
}

/// The broker kinds whose topics have partitions: `ordering = "partition"`
/// is their default and accepted on them only.
pub const PARTITIONED_BROKERS: [&str; 2] = ["kafka", "eventhubs"];

/// What a key's failed message does to the key's later messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyFailure {
    /// The later messages proceed.
    #[default]
    Continue,
    /// The later messages are held until an operator releases or drops them.
    Park,
}

impl KeyFailure {
    fn is_continue(&self) -> bool {
        *self == Self::Continue
    }
}

/// A flow's filter, in the shape of AWS EventBridge and Lambda filter
/// patterns: every named field must match, and a field matches when any
/// condition of its list does. A condition is a value (equality), or one of
/// `{ prefix = "s" }`, `{ exists = true | false }`,
/// `{ numeric = [">", 100, "<=", 200] }` and
/// `{ anything-but = [values] | value | { prefix = "s" } }`. Checked and
/// compiled by [`crate::flow::filter::Filter::compile`].
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Patterns on the fields of the JSON payload: a field name maps to a
    /// list of conditions, or to a table of patterns on the fields of an
    /// object inside it. A payload that is not JSON matches no payload
    /// pattern.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub payload: BTreeMap<String, serde_json::Value>,
    /// Patterns on the message's headers: a header name maps to a list of
    /// conditions on its value (a string; `numeric` reads it as a number).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub headers: BTreeMap<String, serde_json::Value>,
}

/// How a flow groups messages into batches (`batch = { ... }`). A batch
/// is called when it holds `max_messages` messages, when the next message
/// would take its payload past `max_bytes`, or `max_wait_ms` after its
/// first message, whichever comes first; each message is still
/// acknowledged, retried or dead-lettered on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Most messages in one batch (1 to 1,024; default 64).
    #[serde(default = "default_batch_messages")]
    pub max_messages: u32,
    /// Longest a batch waits for more messages after its first, in
    /// milliseconds (at most 60,000; default 20).
    #[serde(default = "default_batch_wait_ms")]
    pub max_wait_ms: u64,
    /// Most payload bytes in one batch (default 4 MiB); a message larger
    /// than this alone is a batch of its own.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: u64,
}

/// Most messages a batch may hold.
pub const MAX_BATCH_MESSAGES: u32 = 1024;
/// Longest a batch may wait for more messages, in milliseconds.
pub const MAX_BATCH_WAIT_MS: u64 = 60_000;

const fn default_batch_messages() -> u32 {
    64
}
const fn default_batch_wait_ms() -> u64 {
    20
}
const fn default_batch_bytes() -> u64 {
    4 << 20
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max_messages: default_batch_messages(),
            max_wait_ms: default_batch_wait_ms(),
            max_bytes: default_batch_bytes(),
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

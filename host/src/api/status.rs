//! A flow's status: what `eventflow status` shows.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a flow is doing. Serialized as the snake_case word the API and
/// `eventflow status` show (`running`, `waiting_for_plugin`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Opening its consumer; also a configured flow not started yet.
    #[default]
    Starting,
    /// Receiving and processing messages.
    Running,
    /// Running, but its consumer holds no partitions (a Kafka consumer
    /// joining its group or rebalancing). Derived when reporting.
    WaitingForPartitions,
    /// Running, but a broker connection it reads from or writes to cannot be
    /// used (an embedded store that cannot write, a broker that does not
    /// answer); its last error says which and why. Derived when reporting.
    Degraded,
    /// No loaded version of its algorithm matches; its messages stay in the
    /// broker.
    WaitingForPlugin,
    /// Its consumer cannot be opened or receiving failed; retrying.
    Disconnected,
    /// Stopped receiving; finishing the messages in flight.
    Stopping,
    /// Not running (shut down, or its broker or topic is missing).
    Stopped,
    /// Disabled in the configuration.
    Disabled,
}

impl FlowState {
    /// The word the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Starting => "starting",
            FlowState::Running => "running",
            FlowState::WaitingForPartitions => "waiting_for_partitions",
            FlowState::Degraded => "degraded",
            FlowState::WaitingForPlugin => "waiting_for_plugin",
            FlowState::Disconnected => "disconnected",
            FlowState::Stopping => "stopping",
            FlowState::Stopped => "stopped",
            FlowState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for FlowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A snapshot of a flow's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlowReport {
    /// The flow.
    pub name: String,
    /// starting, running, waiting_for_partitions (a Kafka consumer that
    /// holds no partitions: joining its group or rebalancing), degraded (a
    /// broker connection the flow uses is down; `last_error` says which and
    /// why), waiting_for_plugin, disconnected, stopping, stopped, disabled.
    pub state: FlowState,
    /// `owner/name` or `owner/name/version`.
    pub algorithm: String,
    /// `broker:topic`.
    pub topic: String,
    /// Messages received since start.
    pub received: u64,
    /// Messages processed.
    pub succeeded: u64,
    /// Retries.
    pub retried: u64,
    /// Dead letters.
    pub dead_lettered: u64,
    /// Messages dropped for lack of a dead-letter topic.
    pub dropped: u64,
    /// Messages acknowledged without invoking the algorithm: the flow's
    /// filter left them out.
    #[serde(default)]
    pub filtered: u64,
    /// Calls of `apply-batch` (a flow with `batch` and a 0.2.0 algorithm).
    #[serde(default)]
    pub batches: u64,
    /// Messages in those calls.
    #[serde(default)]
    pub batched_messages: u64,
    /// Messages being handled now: running, waiting for an invocation slot,
    /// or waiting for their effects and acknowledgement to be committed.
    pub in_flight: i64,
    /// Received per second over the last minute.
    pub received_per_sec: f64,
    /// Processed per second over the last minute.
    pub succeeded_per_sec: f64,
    /// Failures (retried or dead-lettered) per second over the last minute.
    pub failed_per_sec: f64,
    /// The latest error and when (`[when, what]`): one line of at most 300
    /// characters.
    #[schema(value_type = Option<Vec<String>>)]
    pub last_error: Option<(String, String)>,
    /// Partitions the flow's consumer holds (Kafka); absent for brokers
    /// without partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions_assigned: Option<usize>,
    /// How long the consumer has held no partition assignment, in seconds
    /// (Kafka, while it waits for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unassigned_secs: Option<f64>,
    /// The flow's canary, when it has one (or had one: a rolled-back or
    /// promoted canary stays shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::RolloutReport>,
    /// The flow's shadow version, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::ShadowReport>,
    /// Parked keys (`on_key_failure = "park"`), the first
    /// [`MAX_PARKED_SHOWN`] by key with the messages each holds;
    /// `eventflow keys list` shows them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parked: Vec<crate::api::ParkedKey>,
    /// How many keys are parked.
    #[serde(default)]
    pub parked_keys: u64,
    /// How many messages parked keys hold.
    #[serde(default)]
    pub parked_messages: u64,
}

/// The most parked keys a flow's status lists.
pub const MAX_PARKED_SHOWN: usize = 20;

/// A broker connection's health, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BrokerHealth {
    /// The connection.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// `connected` or `down`.
    pub state: String,
    /// Why it is down.
    pub error: Option<String>,
}

/// A flow that is not ready, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FlowNotReady {
    /// The flow.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// `GET /readyz` (open): 200 when ready, 503 otherwise, with this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// Every broker connection answers and every enabled flow runs.
    pub ready: bool,
    /// The broker connections.
    pub brokers: Vec<BrokerHealth>,
    /// How many algorithm versions are loaded.
    pub plugins_loaded: usize,
    /// Enabled flows that do not run, and why.
    pub flows_not_ready: Vec<FlowNotReady>,
}

/// `GET /healthz` (open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

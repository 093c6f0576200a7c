//! Flows: `/v1/flows` and an algorithm's topics.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::status::FlowReport;
pub use crate::config::{
    BatchSpec, CanarySpec, FilterSpec, FlowOrdering, KeyFailure, RolloutPolicy, ShadowSpec,
};

/// A request to enable a topic for an algorithm version (`POST /v1/flows`):
/// creates the flow, or updates and enables the existing one of that name.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableFlow {
    /// The flow's name; `<owner>-<name>-<topic>` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub name: Option<String>,
    /// The broker connection; optional when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub broker: Option<String>,
    /// The topic to consume.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub topic: String,
    /// `owner/name`.
    pub algorithm: String,
    /// A semver version, or `latest` to follow the highest loaded one.
    /// Absent: an existing flow keeps its version; a new one follows the
    /// highest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where failed messages go; the router writes them, so the algorithm
    /// needs no grant on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Where outputs go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_topic: Option<String>,
    /// Wall-clock limit per message, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 43200)]
    pub timeout_secs: Option<f64>,
    /// Deliveries before dead-lettering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_receives: Option<u32>,
    /// Invocations at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub concurrency: Option<u32>,
    /// `key`, `partition` (Kafka and Event Hubs) or `none`; absent: an
    /// existing flow keeps its ordering (a new one: `partition` on Kafka
    /// and Event Hubs, `none` elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<FlowOrdering>,
    /// With `ordering = "key"`: what a key's failed message does to the
    /// key's later messages, `continue` or `park`; absent: an existing flow
    /// keeps its choice (a new one: `continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_key_failure: Option<KeyFailure>,
    /// Which messages invoke the algorithm (see the README's Filters);
    /// absent: an existing flow keeps its filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// Batches for a 0.2.0 algorithm's `apply-batch` (see the README's
    /// Batches); absent: an existing flow keeps its batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

/// An edit of a flow (`PATCH /v1/flows/{flow}`): absent fields stay; `null`
/// clears the optional topics.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFlow {
    /// A semver version, or `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A topic, or null to remove the dead-letter topic.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub dead_letter_topic: Option<Option<String>>,
    /// A topic, or null to remove the output topic.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub output_topic: Option<Option<String>>,
    /// Enable or disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Wall-clock limit per message, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 43200)]
    pub timeout_secs: Option<f64>,
    /// Deliveries before dead-lettering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_receives: Option<u32>,
    /// Invocations at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub concurrency: Option<u32>,
    /// `key`, `partition` (Kafka and Event Hubs) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<FlowOrdering>,
    /// `continue` or `park` (needs `ordering = "key"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_key_failure: Option<KeyFailure>,
    /// A new filter, or null to remove it (every message invokes the
    /// algorithm).
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<FilterSpec>)]
    pub filter: Option<Option<FilterSpec>>,
    /// New batches, or null to remove them (one message per call).
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<BatchSpec>)]
    pub batch: Option<Option<BatchSpec>>,
    /// A canary (a share of the messages to another version, with its
    /// gate), or null to remove it (its messages go back to the flow's
    /// version).
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<CanarySpec>)]
    pub canary: Option<Option<CanarySpec>>,
    /// A shadow (another version run on every message with its effects
    /// discarded, to compare), or null to remove it.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<ShadowSpec>)]
    pub shadow: Option<Option<ShadowSpec>>,
    /// For a flow that follows the latest version: how a newly loaded
    /// version takes over (`"canary 10% then promote after 1000"`), or null
    /// to remove it (a new version then takes every message at once).
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "canary 10% then promote after 1000")]
    pub rollout: Option<Option<RolloutPolicy>>,
    /// For a flow with a `rollout`: the versions it never runs, replacing
    /// the list (`[]` empties it; a version taken off is rolled out again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub skip_versions: Option<Vec<semver::Version>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }
}

/// A flow as shown in listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Flow {
    /// Its name.
    pub name: String,
    /// The broker connection of its topic.
    pub broker: String,
    /// The topic it consumes.
    pub topic: String,
    /// `owner/name`.
    pub algorithm: String,
    /// The version it runs, or `latest`.
    pub version: String,
    /// Enabled.
    pub enabled: bool,
    /// Where failed messages go.
    pub dead_letter_topic: Option<String>,
    /// Where outputs go.
    pub output_topic: Option<String>,
    /// Wall-clock limit per message, in seconds.
    pub timeout_secs: f64,
    /// Deliveries before dead-lettering.
    pub max_receives: u32,
    /// Invocations at once.
    pub concurrency: u32,
    /// `key`: one message of a key at a time, in order; `partition`: a
    /// partition's outputs in offset order; `none`. The flow's own, or its
    /// broker's default when it sets none (`partition` on Kafka and Event
    /// Hubs).
    #[serde(default)]
    pub ordering: FlowOrdering,
    /// With `ordering = "key"`: `continue` (a key's failed message is
    /// dead-lettered and the key's next one proceeds) or `park` (the key's
    /// later messages are held until an operator releases or drops them).
    #[serde(default)]
    pub on_key_failure: KeyFailure,
    /// Which messages invoke the algorithm; absent: every message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// Its batches; absent: one message per call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// Its canary: a share of the messages to another version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// Its shadow: another version run on every message, effects discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// How a newly loaded version takes over a latest-following flow
    /// (`canary N% then promote after M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "canary 10% then promote after 1000")]
    pub rollout: Option<RolloutPolicy>,
    /// The versions a flow with a `rollout` never runs (the ones its
    /// rollout rolled back, or an operator listed); it follows the newest
    /// loaded version not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub skip_versions: Vec<semver::Version>,
    /// What an enabled flow waits for: the version it names is not loaded
    /// (or still compiling), or needs more initial memory than the flow's
    /// `max_memory_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// A flow after `POST /v1/flows` or `PATCH /v1/flows/{flow}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlowChanged {
    /// The flow as declared now.
    #[serde(flatten)]
    pub flow: Flow,
    /// The flow kept the version it had (no version was given).
    pub version_kept: bool,
    /// What will not work yet, e.g. a version that is not loaded.
    pub warnings: Vec<String>,
}

/// One flow of `GET /v1/flows`: its status, and the flow as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlowEntry {
    /// The router's report.
    #[serde(flatten)]
    pub report: FlowReport,
    /// The flow as declared.
    pub spec: Flow,
    /// What an enabled flow waits for: the version it names is not loaded
    /// (or still compiling), or needs more initial memory than the flow's
    /// `max_memory_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// `GET /v1/flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlowList {
    /// The flows the caller may see.
    pub flows: Vec<FlowEntry>,
}

/// `GET /v1/flows/{flow}`: the flow as declared, with its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlowDetail {
    /// The flow.
    #[serde(flatten)]
    pub flow: Flow,
    /// Its status; null while the router has not started it.
    pub status: Option<FlowReport>,
}

/// A topic an algorithm may consume, with its flows on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlgorithmTopic {
    /// The broker connection.
    pub broker: String,
    /// The topic.
    pub topic: String,
    /// Some flow of the algorithm on it is enabled.
    pub enabled: bool,
    /// The algorithm's flows on it, enabled or not.
    pub flows: Vec<Flow>,
}

/// `GET /v1/algorithms/{owner}/{name}/topics`: an algorithm's queues tab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlgorithmTopics {
    /// `owner/name`.
    pub algorithm: String,
    /// The topics it may consume.
    pub topics: Vec<AlgorithmTopic>,
    /// The topics it may publish to: the choices for a flow's output or
    /// dead-letter topic.
    #[serde(default)]
    pub may_publish: Vec<TopicRef>,
}

/// A topic, by broker connection and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopicRef {
    /// The broker connection.
    pub broker: String,
    /// The topic.
    pub topic: String,
}

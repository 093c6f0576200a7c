//! A flow's rollout of a canary version and its shadow version: what
//! `eventflow status` and `/v1/flows` show of them, and what `promote` and
//! `rollback` answer.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// The canary gets its share of the messages; its gate is watched.
    Canary,
    /// Its gate failed (or an operator rolled it back): it gets no
    /// messages; the flow stays on its own version.
    RolledBack,
    /// It was promoted: the flow runs the canary version for every message.
    Promoted,
}

/// One version's numbers over its window (the last `window_messages`
/// messages it handled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutSide {
    /// Messages it handled since the canary started.
    pub messages: u64,
    /// Of those, how many failed (an attempt that did not succeed).
    pub failures: u64,
    /// The failure rate over the window (0 to 1).
    pub window_failure_rate: f64,
    /// The 99th-percentile invocation time over the window, in seconds.
    pub window_p99_secs: f64,
}

/// A flow's canary, as `eventflow status FLOW` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutReport {
    /// The canary version.
    pub canary_version: String,
    /// canary, rolled_back or promoted.
    pub state: RolloutState,
    /// The share of the messages the canary gets now, in percent: its
    /// configured share, 0 once rolled back, 100 once promoted.
    pub percent: f64,
    /// The canary's numbers.
    pub canary: RolloutSide,
    /// The flow's own version's numbers.
    pub serving: RolloutSide,
    /// Why it was rolled back or promoted, and when (`[when, why]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub decided: Option<(String, String)>,
}

/// `POST /v1/flows/{flow}/promote` and `/rollback`: the flow after the
/// change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutChanged {
    /// The flow.
    pub flow: String,
    /// `owner/name/version`: the version the flow runs now.
    pub algorithm: String,
    /// What was done: `promoted` or `rolled_back`.
    pub state: RolloutState,
}

/// Where a shadow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShadowState {
    /// Every message the flow handles is run again by the shadow (while its
    /// budget allows).
    Running,
    /// Its gate failed: it runs no more messages, and it left the flow's
    /// declaration (a restarted router does not run it again).
    Stopped,
}

/// A flow's shadow version, as `eventflow status FLOW` shows it. Counted
/// since the flow (re)started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowReport {
    /// The shadow version.
    pub version: String,
    /// running or stopped.
    pub state: ShadowState,
    /// Messages the shadow ran.
    pub runs: u64,
    /// Of those, how many failed, and by reason (`trap`, `timeout`, ...).
    pub failures: u64,
    /// Failures by reason.
    pub failure_reasons: std::collections::BTreeMap<String, u64>,
    /// Messages not shadowed: its budget or the instance pool was full, or
    /// its version was not loaded.
    pub skipped: u64,
    /// Runs whose message the serving version handled successfully: those
    /// whose outputs are compared.
    pub compared: u64,
    /// Of those, how many produced the same output as the serving version.
    pub agreed: u64,
    /// `agreed / compared` (0 to 1); absent before the first comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// The agreement over the window (the last `window_messages`
    /// comparisons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_agreement: Option<f64>,
    /// The shadow's failure rate over the window.
    pub window_failure_rate: f64,
    /// The serving version's failure rate on the same messages, over the
    /// window.
    pub serving_window_failure_rate: f64,
    /// Mean time of a shadow run, in seconds.
    pub mean_secs: f64,
    /// The largest peak linear memory of a shadow run, in bytes.
    pub max_peak_memory_bytes: u64,
    /// Why it was stopped, and when (`[when, why]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub stopped: Option<(String, String)>,
}

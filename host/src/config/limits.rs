//! Resource limits of one invocation, and their per-version overrides.

use serde::{Deserialize, Serialize};

use super::AlgorithmRef;

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
    /// Outgoing HTTP requests one invocation may send (to origins granted
    /// with `[[outbound]]`). Default: 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_requests: Option<u32>,
    /// Request body bytes one invocation may send over HTTP, summed over its
    /// requests. Default: 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_request_bytes: Option<u64>,
    /// Response body bytes one invocation may receive over HTTP, summed over
    /// its requests. Default: 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_response_bytes: Option<u64>,
    /// How long one outgoing HTTP request may take, from connecting to the
    /// last byte of the response, in seconds; never past the invocation's
    /// `timeout_secs`. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_timeout_secs: Option<f64>,
}

/// Default of `max_http_requests`.
pub const DEFAULT_MAX_HTTP_REQUESTS: u32 = 16;
/// Default of `max_http_request_bytes`.
pub const DEFAULT_MAX_HTTP_REQUEST_BYTES: u64 = 1 << 20;
/// Default of `max_http_response_bytes`.
pub const DEFAULT_MAX_HTTP_RESPONSE_BYTES: u64 = 4 << 20;
/// Default of `http_timeout_secs`.
pub const DEFAULT_HTTP_TIMEOUT_SECS: f64 = 10.0;

impl Limits {
    /// The effective `max_http_requests`, `max_http_request_bytes`,
    /// `max_http_response_bytes` and `http_timeout_secs` (a timeout that is
    /// not a positive number of seconds counts as the default).
    pub fn http(&self) -> (u32, u64, u64, std::time::Duration) {
        let timeout = self
            .http_timeout_secs
            .filter(|t| *t > 0.0)
            .and_then(|t| std::time::Duration::try_from_secs_f64(t).ok())
            .unwrap_or(std::time::Duration::from_secs_f64(
                DEFAULT_HTTP_TIMEOUT_SECS,
            ));
        (
            self.max_http_requests.unwrap_or(DEFAULT_MAX_HTTP_REQUESTS),
            self.max_http_request_bytes
                .unwrap_or(DEFAULT_MAX_HTTP_REQUEST_BYTES),
            self.max_http_response_bytes
                .unwrap_or(DEFAULT_MAX_HTTP_RESPONSE_BYTES),
            timeout,
        )
    }

    /// The effective `max_publish_bytes`.
    pub fn publish_budget(&self) -> u64 {
        self.max_publish_bytes
            .unwrap_or(self.max_output_bytes.saturating_mul(4))
    }
}

pub(super) const fn default_timeout_secs() -> f64 {
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
            max_http_requests: None,
            max_http_request_bytes: None,
            max_http_response_bytes: None,
            http_timeout_secs: None,
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
    /// Overrides `max_http_requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_requests: Option<u32>,
    /// Overrides `max_http_request_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_request_bytes: Option<u64>,
    /// Overrides `max_http_response_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_response_bytes: Option<u64>,
    /// Overrides `http_timeout_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_timeout_secs: Option<f64>,
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
            max_http_requests: self.max_http_requests.or(base.max_http_requests),
            max_http_request_bytes: self.max_http_request_bytes.or(base.max_http_request_bytes),
            max_http_response_bytes: self
                .max_http_response_bytes
                .or(base.max_http_response_bytes),
            http_timeout_secs: self.http_timeout_secs.or(base.http_timeout_secs),
        }
    }
}

//! Configuration of an Amazon SQS connection.

use serde::{Deserialize, Serialize};

/// `kind = "sqs"`: queues of one AWS account and region. A topic's
/// `address` is its queue URL. Credentials come from the default AWS chain
/// (environment, profile, instance role), optionally exchanged for
/// `role_arn` through STS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// The connection's name.
    pub name: String,
    /// The AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Another endpoint than AWS's: a local server or a VPC endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// A role to assume (the platform's READ_SQS role of a cross-account
    /// setup), with the default credential chain as the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy asks for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Long-poll wait of each receive, in seconds (1 to 20).
    #[serde(default = "default_wait_time_secs")]
    pub wait_time_secs: u32,
    /// Receives in flight per flow, so throughput is not one round trip at
    /// a time.
    #[serde(default = "default_receivers")]
    pub receivers: u32,
    /// How long one attempt of any SQS call may take, in seconds, beyond
    /// the long-poll wait; a call that hangs is cut off and retried.
    #[serde(default = "default_attempt_timeout_secs")]
    pub attempt_timeout_secs: u64,
}

const fn default_wait_time_secs() -> u32 {
    20
}
const fn default_receivers() -> u32 {
    2
}
const fn default_attempt_timeout_secs() -> u64 {
    10
}

impl SqsConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=20).contains(&self.wait_time_secs) {
            return Err(("wait_time_secs".into(), "must be between 1 and 20".into()));
        }
        if self.receivers == 0 || self.receivers > 16 {
            return Err(("receivers".into(), "must be between 1 and 16".into()));
        }
        if self.attempt_timeout_secs == 0 {
            return Err(("attempt_timeout_secs".into(), "must be at least 1".into()));
        }
        if self.region.is_empty() {
            return Err(("region".into(), "must not be empty".into()));
        }
        Ok(())
    }
}

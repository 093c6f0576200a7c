//! The router's configuration file: inert, strict types, and their validation.
//!
//! Parsing does no I/O beyond reading the file; [`load`] returns a
//! [`Config`] whose every cross-reference (flow → broker, topic, algorithm)
//! has been checked, or a [`ConfigError`] that names the file and the field.
//! Every field's doc comment is its user documentation.
//!
//! One file a part: `settings` (router, admin endpoint, sandbox), `flow`
//! (flows, retries, consumer options), `limits` (per-invocation limits and
//! per-version overrides), `names` (what a name may be, algorithm
//! references), `outbound` (HTTP grants), `rollout` (a flow's canary and shadow) and
//! `validate` (the cross-reference checks); every public
//! item is re-exported here.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::connector::BrokerSpec;
pub use crate::connector::topic::{TopicSpec, find_topic};
use crate::data::DataConfig;

mod flow;
mod limits;
mod names;
mod outbound;
mod rollout;
mod settings;
#[cfg(test)]
mod tests;
mod validate;

pub use flow::{
    Backoff, BatchSpec, ConsumerOptions, FilterSpec, FlowOrdering, FlowSpec, KeyFailure,
    PARTITIONED_BROKERS, RetryPolicy, dead_letter_topic_keys,
};
pub use limits::{AlgorithmLimits, Limits};
pub use names::{
    AlgorithmRef, MAX_NAME_BYTES, check_name, check_topic_reference, is_valid_name,
    is_valid_variable, quote_name,
};
pub use outbound::{OutboundGrant, is_grantee};
pub use rollout::{CanarySpec, RolloutPolicy, ShadowSpec, check_canary, check_shadow};
pub use settings::{AdminConfig, RouterConfig, SandboxConfig};
pub use validate::{check_flow, inline_secret, validate};

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
    /// Where data collections are kept: the data directory or a bucket.
    #[serde(default)]
    pub data: DataConfig,
    /// Where plugins come from: `backend = "local"` (the default, `[router]
    /// plugins_dir`) or a bucket (`s3://bucket/prefix`, ...), with the same
    /// fields as `[data]`. A bucket is mirrored into
    /// `<state_dir>/plugins-mirror`, which then is the plugin directory.
    #[serde(default)]
    pub plugins: DataConfig,
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
    /// Origins algorithms may send HTTP requests to.
    #[serde(default)]
    pub outbound: Vec<OutboundGrant>,
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
    /// Origins algorithms may send HTTP requests to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<OutboundGrant>,
}

impl Config {
    /// The declarative part.
    pub fn declarations(&self) -> Declarations {
        Declarations {
            brokers: self.brokers.clone(),
            topics: self.topics.clone(),
            flows: self.flows.clone(),
            algorithm_limits: self.algorithm_limits.clone(),
            outbound: self.outbound.clone(),
        }
    }

    /// This configuration's process settings with other declarations.
    pub fn with_declarations(&self, d: Declarations) -> Config {
        Config {
            router: self.router.clone(),
            admin: self.admin.clone(),
            sandbox: self.sandbox.clone(),
            data: self.data.clone(),
            plugins: self.plugins.clone(),
            brokers: d.brokers,
            topics: d.topics,
            flows: d.flows,
            algorithm_limits: d.algorithm_limits,
            outbound: d.outbound,
        }
    }
}

impl Declarations {
    /// The flows with a latest-following `rollout`, each with its
    /// algorithm (`owner/name`): those whose serving version the state
    /// store keeps.
    pub fn rollouts(&self) -> Vec<(String, String)> {
        self.flows
            .iter()
            .filter(|f| f.rollout.is_some() && f.algorithm.version.is_none())
            .map(|f| (f.name.clone(), f.algorithm.unversioned()))
            .collect()
    }

    /// A stable digest, to tell whether a file changed since it was applied.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(json))
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
    config.mirror_plugins();
    Ok(config)
}

/// The directory, under the state directory, a plugin bucket is mirrored to.
pub const PLUGIN_MIRROR_DIR: &str = "plugins-mirror";

impl Config {
    /// When plugins come from a bucket, makes its local mirror the plugin
    /// directory (call again after changing `state_dir`).
    pub fn mirror_plugins(&mut self) {
        if !self.plugins.is_local() {
            self.router.plugins_dir = self.router.state_dir.join(PLUGIN_MIRROR_DIR);
        }
    }
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

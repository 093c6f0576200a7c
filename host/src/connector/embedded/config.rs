//! Configuration of the embedded broker.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `kind = "embedded"`: the durable broker inside the router process.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The connection's name.
    pub name: String,
    /// The store's directory (a log of segment files);
    /// `<state_dir>/broker-<name>` by default. One router process owns it: a
    /// second one fails to start. A file here (or at
    /// `<state_dir>/broker-<name>.redb` for the default) is a store of the
    /// previous version, migrated at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Largest payload accepted, in bytes.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
}

const fn default_max_payload_bytes() -> usize {
    16 << 20
}

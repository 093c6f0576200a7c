//! Loaded algorithm versions: `/v1/plugins`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why the latest content of an algorithm version was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PluginRejection {
    /// Why.
    pub reason: String,
    /// SHA-256 of the rejected content.
    pub hash: String,
    /// When, RFC 3339.
    pub at: String,
}

/// One algorithm version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plugin {
    /// `owner/name/version`.
    pub algorithm: String,
    /// `compiling` while new content loads (flows that need it wait), else
    /// `rejected` if the latest content was, else `ok`.
    pub status: String,
    /// SHA-256 of the serving component.
    pub hash: Option<String>,
    /// Size of the serving component, in bytes.
    pub size: Option<u64>,
    /// When the serving component was loaded, RFC 3339.
    pub loaded_at: Option<String>,
    /// The latest rejection, if the latest file content was rejected.
    pub rejected: Option<PluginRejection>,
    /// Flows that currently resolve to this version.
    pub flows: Vec<String>,
    /// The serving component's largest initial linear memory, in MiB
    /// (rounded up): the least `max_memory_mib` that lets it start.
    pub initial_memory_mib: Option<u64>,
    /// The serving component's world: `eventflow:algorithm@0.1.0`
    /// (`apply`) or `eventflow:algorithm@0.2.0` (`apply` and `apply-batch`:
    /// it takes a flow's batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<String>,
    /// Flows among `flows` whose memory limit is below that, one sentence
    /// each (`... needs 13 MiB initial memory, flow "x" allows 8 MiB ...`):
    /// they do not invoke this version and their messages wait.
    pub memory_shortfalls: Vec<String>,
}

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    /// The versions the caller may see.
    pub plugins: Vec<Plugin>,
}

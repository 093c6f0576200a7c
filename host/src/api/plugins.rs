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
    /// `ok` or `rejected`.
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
}

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    /// The versions the caller may see.
    pub plugins: Vec<Plugin>,
}

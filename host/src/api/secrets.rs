//! An algorithm's secrets: `/v1/algorithms/{owner}/{name}/secrets`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A secret's value (`PUT .../secrets/{key}`); the algorithm sees it as an
/// environment variable.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// The value.
    pub value: String,
}

/// `GET .../secrets`: names only, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretNames {
    /// `owner/name`.
    pub algorithm: String,
    /// The secrets' names.
    pub secrets: Vec<String>,
}

/// A secret was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretSet {
    /// `owner/name`.
    pub algorithm: String,
    /// The secret's name.
    pub secret: String,
}

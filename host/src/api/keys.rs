//! A flow's parked keys (`on_key_failure = "park"`):
//! `/v1/flows/{flow}/keys`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A parked key: a message of it failed for good, and its later messages
/// are held until an operator releases or drops them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParkedKey {
    /// The key.
    pub key: String,
    /// When it was parked, RFC 3339.
    pub since: String,
    /// Released by an operator: the flow is handling its held messages.
    pub released: bool,
    /// Messages held.
    pub messages: u64,
}

/// `GET /v1/flows/{flow}/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParkedKeyList {
    /// The flow.
    pub flow: String,
    /// Its parked keys, by key.
    pub keys: Vec<ParkedKey>,
}

/// Which parked keys to release or drop.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySelection {
    /// Only this key; absent: every parked key of the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a release or a drop did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeysChanged {
    /// The flow.
    pub flow: String,
    /// The keys released (the flow handles their held messages, in order,
    /// then unparks them) or dropped (unparked, their held messages
    /// deleted), with the messages they held.
    pub keys: Vec<ParkedKey>,
}

//! A flow's dead letters: `/v1/flows/{flow}/dead-letters`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// Its id on the dead-letter topic.
    pub dead_letter_id: String,
    /// Written (signed) by this router.
    pub verified: bool,
    /// `verified` or `unverified`.
    pub status: String,
    /// The envelope: the original message, where it came from and why it
    /// failed.
    #[schema(value_type = Object)]
    pub envelope: Value,
}

/// `GET /v1/flows/{flow}/dead-letters`: only this flow's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    /// How many are verified.
    pub verified: usize,
    /// How many are not.
    pub unverified: usize,
    /// The dead letters.
    pub dead_letters: Vec<DeadLetter>,
}

/// A replay of dead letters (`POST .../dead-letters/replay`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayDeadLetters {
    /// Only this one: the original message id, or the dead letter's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Replay unverified envelopes too (admin token only): messages on the
    /// dead-letter topic that this router's key did not sign.
    #[serde(default)]
    pub include_unverified: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayReport {
    /// Original message ids, published back to the flow's topic.
    pub replayed: Vec<String>,
    /// Dead letters left where they are, and why.
    pub skipped: Vec<SkippedDeadLetter>,
}

/// A dead letter a replay left on its topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SkippedDeadLetter {
    /// Its id on the dead-letter topic.
    pub dead_letter_id: String,
    /// The original message id it claims.
    pub message_id: String,
    /// Why it was not replayed.
    pub why: String,
}

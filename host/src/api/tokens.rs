//! Owner-scoped API tokens: `/v1/tokens`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A request for an owner-scoped token (`POST /v1/tokens`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// The owner whose algorithms it may manage.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub owner: String,
}

/// A token as listed (without the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// A short id to list and revoke it by.
    pub id: String,
    /// The owner whose algorithms it may manage.
    pub owner: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
}

/// A token just created: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// A short id to list and revoke it by.
    pub id: String,
    /// The owner whose algorithms it may manage.
    pub owner: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// The bearer token.
    pub token: String,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// The tokens.
    pub tokens: Vec<Token>,
}

/// What kind of token the caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// The admin token.
    Admin,
    /// An owner-scoped token.
    Owner,
}

/// `GET /v1/whoami`: who the token belongs to and which parts of the API it
/// may use, as decided by the control plane's one authorization point. The
/// console shows only what this allows; the API refuses the rest anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Identity {
    /// Admin or owner-scoped.
    pub kind: TokenKind,
    /// The owner an owner-scoped token manages; absent for the admin token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// May see, create and delete broker connections.
    pub manage_brokers: bool,
    /// May declare and delete topics and change their access lists.
    pub manage_topics: bool,
    /// May create, list and revoke owner-scoped tokens.
    pub manage_tokens: bool,
}

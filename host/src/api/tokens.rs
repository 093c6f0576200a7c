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

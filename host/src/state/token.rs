//! API tokens as the state store keeps them: minted here, stored by their
//! SHA-256 (see [`super::StateStore::add_token`]), compared in constant time.
//! The control plane mints owner-scoped tokens and the admin API checks
//! presented ones, both through this module.

use rand::Rng;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{StateStore, TOKENS};

/// A new random token: 32 bytes, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// The SHA-256 of a token, hex: how owner-scoped tokens are stored.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Compares tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// An owner-scoped API token, as stored (without the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// A short id to list and revoke it by.
    pub id: String,
    /// The owner whose algorithms it may manage.
    pub owner: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
}

impl StateStore {
    /// Stores a new owner-scoped token (by its hash).
    pub fn add_token(&self, token_hash: &str, info: &TokenInfo) -> anyhow::Result<()> {
        let json = serde_json::to_string(info)?;
        let tx = self.db.begin_write()?;
        tx.open_table(TOKENS)?.insert(token_hash, json.as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// The token with this hash.
    pub fn token(&self, token_hash: &str) -> anyhow::Result<Option<TokenInfo>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOKENS)?;
        Ok(table
            .get(token_hash)?
            .and_then(|v| serde_json::from_str(v.value()).ok()))
    }

    /// Every token.
    pub fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOKENS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            if let Ok(info) = serde_json::from_str(v.value()) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Revokes the token with this id. Returns whether it existed.
    pub fn delete_token(&self, id: &str) -> anyhow::Result<bool> {
        let tx = self.db.begin_write()?;
        let found = {
            let mut table = tx.open_table(TOKENS)?;
            let mut hit = None;
            for entry in table.iter()? {
                let (k, v) = entry?;
                if serde_json::from_str::<TokenInfo>(v.value()).is_ok_and(|t| t.id == id) {
                    hit = Some(k.value().to_string());
                }
            }
            if let Some(k) = &hit {
                table.remove(k.as_str())?;
            }
            hit.is_some()
        };
        tx.commit()?;
        Ok(found)
    }
}

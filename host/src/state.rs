//! The router's own durable state, in `<state_dir>/state.redb`:
//!
//! - the desired state (broker connections, topics and grants, flows, limit
//!   overrides) that the admin API edits and `eventflow apply` converges;
//! - secrets: the algorithms' (their environment) and the router's own
//!   (broker credentials created through the API);
//! - owner-scoped API tokens (their SHA-256, never the token);
//! - the failure journal: the first and last failure of every message that
//!   has failed and is not yet settled for good, so the dead-letter envelope
//!   can report both even when attempts span restarts. Journal writes are
//!   not fsynced one by one (they are diagnostics, not delivery state); a
//!   clean shutdown flushes them.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// (flow, message id) → JSON of [`FailureHistory`].
const FAILURES: TableDefinition<(&str, &str), &str> = TableDefinition::new("failures");
/// (`owner/name`, variable) → value: the algorithms' secrets.
const SECRETS: TableDefinition<(&str, &str), &str> = TableDefinition::new("secrets");
/// Single values: `desired` (JSON declarations), `seed` (digest of the
/// configuration file they were last seeded from).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// SHA-256 of a token → JSON of [`TokenInfo`].
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");

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

/// One recorded failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The reason code.
    pub reason: String,
    /// What happened.
    pub detail: String,
    /// The attempt that failed.
    pub attempt: u32,
    /// When, RFC 3339.
    pub at: String,
    /// `owner/name@version#hash` that failed.
    pub algorithm: String,
}

/// The first and the last failure of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureHistory {
    /// The first failure recorded.
    pub first: FailureRecord,
    /// The most recent one.
    pub last: FailureRecord,
}

/// The state store. Blocking; call from blocking threads.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
}

impl StateStore {
    /// Opens or creates the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "{} is in use by another eventflow process: is a router already running with this state directory?",
                path.display()
            ),
            e => anyhow::anyhow!("cannot open {}: {e}", path.display()),
        })?;
        let tx = db.begin_write()?;
        tx.open_table(FAILURES)?;
        tx.open_table(SECRETS)?;
        tx.open_table(META)?;
        tx.open_table(TOKENS)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Records a failure and returns the history including it.
    pub fn record_failure(
        &self,
        flow: &str,
        message_id: &str,
        failure: FailureRecord,
    ) -> anyhow::Result<FailureHistory> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        let history = {
            let mut table = tx.open_table(FAILURES)?;
            let previous = table
                .get((flow, message_id))?
                .and_then(|v| serde_json::from_str::<FailureHistory>(v.value()).ok());
            let history = match previous {
                Some(h) => FailureHistory {
                    first: h.first,
                    last: failure,
                },
                None => FailureHistory {
                    first: failure.clone(),
                    last: failure,
                },
            };
            table.insert(
                (flow, message_id),
                serde_json::to_string(&history)?.as_str(),
            )?;
            history
        };
        tx.commit()?;
        Ok(history)
    }

    /// The failures recorded for a message.
    pub fn failures(&self, flow: &str, message_id: &str) -> anyhow::Result<Option<FailureHistory>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(FAILURES)?;
        Ok(table
            .get((flow, message_id))?
            .and_then(|v| serde_json::from_str(v.value()).ok()))
    }

    /// Forgets a message's failures once it is settled for good.
    pub fn forget(&self, flow: &str, message_id: &str) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        tx.open_table(FAILURES)?.remove((flow, message_id))?;
        tx.commit()?;
        Ok(())
    }

    /// Sets an algorithm's secret (`algorithm` is `owner/name`).
    pub fn set_secret(&self, algorithm: &str, name: &str, value: &str) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(SECRETS)?.insert((algorithm, name), value)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes an algorithm's secret. Returns whether it existed.
    pub fn delete_secret(&self, algorithm: &str, name: &str) -> anyhow::Result<bool> {
        let tx = self.db.begin_write()?;
        let existed = tx.open_table(SECRETS)?.remove((algorithm, name))?.is_some();
        tx.commit()?;
        Ok(existed)
    }

    /// Every secret, by algorithm: the values stay inside the router.
    pub fn all_secrets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SECRETS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (alg, name) = k.value();
            out.push((alg.to_string(), name.to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// The stored declarations and the digest of the file they were seeded
    /// from.
    pub fn desired(&self) -> anyhow::Result<Option<(crate::config::Declarations, String)>> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let Some(desired) = meta.get("desired")? else {
            return Ok(None);
        };
        let declarations = serde_json::from_str(desired.value())
            .context("the stored desired state is unreadable")?;
        let seed = meta
            .get("seed")?
            .map(|v| v.value().to_string())
            .unwrap_or_default();
        Ok(Some((declarations, seed)))
    }

    /// Stores the declarations; `seed` records the digest of the file they
    /// came from (`None` keeps the recorded one).
    pub fn set_desired(
        &self,
        declarations: &crate::config::Declarations,
        seed: Option<&str>,
    ) -> anyhow::Result<()> {
        let json = serde_json::to_string(declarations)?;
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("desired", json.as_str())?;
            if let Some(seed) = seed {
                meta.insert("seed", seed)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

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

    /// Makes every earlier write durable.
    pub fn flush(&self) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(reason: &str, attempt: u32) -> FailureRecord {
        FailureRecord {
            reason: reason.into(),
            detail: "d".into(),
            attempt,
            at: "t".into(),
            algorithm: "a".into(),
        }
    }

    #[test]
    fn keeps_first_and_last_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path()).unwrap();
            s.record_failure("f", "m", rec("trap", 1)).unwrap();
            let h = s.record_failure("f", "m", rec("timeout", 2)).unwrap();
            assert_eq!(h.first.reason, "trap");
            assert_eq!(h.last.reason, "timeout");
            s.flush().unwrap();
        }
        let s = StateStore::open(dir.path()).unwrap();
        let h = s.failures("f", "m").unwrap().unwrap();
        assert_eq!((h.first.attempt, h.last.attempt), (1, 2));
        s.forget("f", "m").unwrap();
        assert!(s.failures("f", "m").unwrap().is_none());
    }
}

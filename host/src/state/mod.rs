//! The router's own durable state, in `<state_dir>/state.redb`:
//!
//! - the desired state (broker connections, topics and grants, flows, limit
//!   overrides) that the admin API edits and `eventflow apply` converges;
//! - secrets: the algorithms' (their environment) and the router's own
//!   (broker credentials created through the API);
//! - owner-scoped API tokens (their SHA-256, never the token);
//! - parked keys and the messages held for them (`on_key_failure =
//!   "park"`), durably: those messages were acknowledged on their broker;
//! - the version each latest-following flow's `rollout` serves (the one a
//!   new version is a canary beside), so a restart does not hand every
//!   message to an undecided canary;
//! - the failure journal: the first and last failure of every message that
//!   has failed and is not yet settled for good, so the dead-letter envelope
//!   can report both even when attempts span restarts. Journal writes are
//!   not fsynced one by one (they are diagnostics, not delivery state); a
//!   clean shutdown flushes them.
//!
//! Secret values are sealed with the key of [`key::SecretKey`]
//! before they reach the file; stores written by earlier versions, which
//! kept them in plaintext, are converted (and the file rewritten, so no
//! plaintext stays behind in freed pages) when they are opened.
//!
//! This module also owns how the router's redb files are opened
//! ([`open_redb`]): a damaged file is a one-line error naming it, never a
//! panic nor an empty start, and the state directory is kept private
//! ([`secure_dir`]).
//!
//! One file a concern: `journal` (failures), `parked` (parked keys),
//! `rollout` (the versions rollouts serve),
//! `secrets` (sealing, conversion, key rotation), `desired` (declarations),
//! [`token`] (API tokens), `file` (opening, rewriting and securing redb
//! files).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use redb::{Database, TableDefinition};

mod desired;
mod file;
mod journal;
pub mod key;
mod parked;
mod rollout;
mod secrets;
pub mod token;

pub(crate) use file::aside_name;
pub use file::{StoreFileError, open_redb, secure_dir, tighten};
pub use journal::{FailureHistory, FailureRecord};
pub use parked::{HeldMessage, ParkedKey};
pub use rollout::RolloutServing;
pub use secrets::{Rotation, rotate_key};
pub use token::TokenInfo;

use key::SecretKey;

/// (flow, message id) → JSON of [`FailureHistory`].
const FAILURES: TableDefinition<(&str, &str), &str> = TableDefinition::new("failures");
/// Where earlier versions kept the algorithms' secrets in plaintext: only
/// read, to convert them, then deleted.
const PLAINTEXT_SECRETS: TableDefinition<(&str, &str), &str> = TableDefinition::new("secrets");
/// (`owner/name`, variable) → sealed value: the algorithms' secrets (and the
/// router's, under [`crate::secret::ROUTER_SECRETS`]).
const SECRETS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("secrets_sealed");
/// Single values: `desired` (JSON declarations), `seed` (digest of the
/// configuration file they were last seeded from).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// (flow, key) → JSON: the parked keys (see [`parked`]).
const PARKED_KEYS: TableDefinition<(&str, &str), &str> = TableDefinition::new("parked_keys");
/// (flow, key, place) → (JSON of the headers and id, payload): the
/// messages held for parked keys.
const PARKED: TableDefinition<(&str, &str, u64), (&str, &[u8])> =
    TableDefinition::new("parked_messages");
/// flow → JSON of the version its `rollout` serves (see [`rollout`]).
const ROLLOUT_SERVING: TableDefinition<&str, &str> = TableDefinition::new("rollout_serving");
/// SHA-256 of a token → JSON of [`TokenInfo`].
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");

/// What to do when a store file is damaged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Damaged {
    /// Refuse to start, naming the file (the default).
    #[default]
    Refuse,
    /// Rename it to `<file>.damaged-<timestamp>` and start with an empty one
    /// (`eventflow run --move-damaged-aside`).
    MoveAside,
}

/// How to open the state store.
#[derive(Debug, Clone, Default)]
pub struct StateOptions {
    /// What to do with a damaged `state.redb`.
    pub damaged: Damaged,
    /// The secret key file, when configured (`router.secret_key_file`);
    /// otherwise `EVENTFLOW_SECRET_KEY_FILE` or `<state_dir>/secret.key`.
    pub key_file: Option<PathBuf>,
}

/// The state store. Blocking; call from blocking threads.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
    key: Arc<SecretKey>,
}

/// The state file in the state directory.
pub const STATE_FILE: &str = "state.redb";

impl StateStore {
    /// Opens or creates the store in `dir`, making the directory private and
    /// loading (or, by default, creating) the secret key. Plaintext secrets
    /// of earlier versions are sealed on the way.
    pub fn open(dir: &Path, options: &StateOptions) -> anyhow::Result<Self> {
        secure_dir(dir)?;
        let (key_path, default_key) = SecretKey::location(dir, options.key_file.as_deref());
        let key = Arc::new(SecretKey::load(&key_path, default_key)?);
        let path = dir.join(STATE_FILE);
        let db = open_redb(&path, options.damaged)?;
        let tx = db.begin_write()?;
        tx.open_table(FAILURES)?;
        tx.open_table(SECRETS)?;
        tx.open_table(META)?;
        tx.open_table(TOKENS)?;
        tx.open_table(PARKED_KEYS)?;
        tx.open_table(PARKED)?;
        tx.open_table(ROLLOUT_SERVING)?;
        tx.commit()?;
        let store = Self {
            db: Arc::new(db),
            key,
        };
        store.check_secrets()?;
        if store.has_plaintext_secrets()? {
            return store.seal_plaintext_secrets(&path, options.damaged);
        }
        Ok(store)
    }

    /// Fails, naming the secret and the key file, when a stored secret does
    /// not open with this key: better at start than at the first message.
    fn check_secrets(&self) -> anyhow::Result<()> {
        self.all_secrets().with_context(|| {
            format!(
                "the secrets in the state store do not match the key {}",
                self.key.path().display()
            )
        })?;
        Ok(())
    }

    /// Makes every earlier write durable.
    pub fn flush(&self) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.commit()?;
        Ok(())
    }
}

/// How the tests damage store files: one copy, shared with the end-to-end
/// tests.
#[cfg(test)]
#[path = "../../../tests/support/damage.rs"]
mod damage;

#[cfg(test)]
mod tests;

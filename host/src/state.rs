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

use std::cell::Cell;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use anyhow::Context;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

pub mod key;
pub mod token;

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

    fn has_plaintext_secrets(&self) -> anyhow::Result<bool> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .list_tables()?
            .any(|t| t.name() == PLAINTEXT_SECRETS.name()))
    }

    /// Seals the plaintext secrets of an earlier version, then rewrites the
    /// file so their plaintext does not linger in freed pages.
    fn seal_plaintext_secrets(self, path: &Path, damaged: Damaged) -> anyhow::Result<Self> {
        let tx = self.db.begin_write()?;
        let mut count = 0usize;
        {
            let plain = tx.open_table(PLAINTEXT_SECRETS)?;
            let mut sealed = tx.open_table(SECRETS)?;
            for entry in plain.iter()? {
                let (k, v) = entry?;
                let (scope, name) = k.value();
                let value = self.key.seal(scope, name, v.value());
                sealed.insert((scope, name), value.as_slice())?;
                count += 1;
            }
        }
        tx.delete_table(PLAINTEXT_SECRETS)?;
        tx.commit()?;
        let key = self.key.clone();
        let db = Arc::into_inner(self.db)
            .context("the state store is in use while its secrets are converted")?;
        rewrite(db, path)?;
        let db = open_redb(path, damaged)?;
        tracing::info!(
            path = %path.display(),
            secrets = count,
            key = %key.path().display(),
            "Encrypted the secrets an earlier version stored in plaintext."
        );
        Ok(Self {
            db: Arc::new(db),
            key,
        })
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
        let sealed = self.key.seal(algorithm, name, value);
        let tx = self.db.begin_write()?;
        tx.open_table(SECRETS)?
            .insert((algorithm, name), sealed.as_slice())?;
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
            let value = self.key.unseal(alg, name, v.value())?;
            out.push((alg.to_string(), name.to_string(), value));
        }
        Ok(out)
    }

    /// The stored declarations ([`crate::config::Declarations`]) and the
    /// digest of the file they were seeded from. The store keeps them as
    /// JSON; their schema is the configuration's.
    pub fn desired<D: serde::de::DeserializeOwned>(&self) -> anyhow::Result<Option<(D, String)>> {
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
    pub fn set_desired<D: Serialize>(
        &self,
        declarations: &D,
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

/// What [`rotate_key`] did.
#[derive(Debug)]
pub struct Rotation {
    /// Secrets re-encrypted.
    pub secrets: usize,
    /// The key file that opens them now.
    pub key_file: PathBuf,
}

/// Re-encrypts every secret of the state store in `dir` (the router
/// stopped) with a new key: the one at `new_key_file` (created if missing),
/// or a new random key that replaces the current key file. The file is
/// rewritten so nothing sealed with the old key stays in it. In place, the
/// new key is written to `<key>.new` first and renamed over the key last.
pub fn rotate_key(
    dir: &Path,
    options: &StateOptions,
    new_key_file: Option<&Path>,
) -> anyhow::Result<Rotation> {
    let store = StateStore::open(dir, options)?;
    let (current, _) = SecretKey::location(dir, options.key_file.as_deref());
    let staged = match new_key_file {
        Some(p) => p.to_path_buf(),
        None => {
            let mut name = current.as_os_str().to_owned();
            name.push(".new");
            let staged = PathBuf::from(name);
            anyhow::ensure!(
                !staged.exists(),
                "{} exists: an earlier rotation was interrupted. If the router does not start with {}, use {} as the key; otherwise delete it and rotate again",
                staged.display(),
                current.display(),
                staged.display()
            );
            staged
        }
    };
    let new = SecretKey::load(&staged, true)?;
    let tx = store.db.begin_write()?;
    let mut count = 0usize;
    {
        let mut table = tx.open_table(SECRETS)?;
        let mut resealed = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (scope, name) = k.value();
            let value = store.key.unseal(scope, name, v.value())?;
            resealed.push((
                scope.to_string(),
                name.to_string(),
                new.seal(scope, name, &value),
            ));
        }
        for (scope, name, sealed) in &resealed {
            table.insert((scope.as_str(), name.as_str()), sealed.as_slice())?;
            count += 1;
        }
    }
    tx.commit()?;
    let path = dir.join(STATE_FILE);
    let db = Arc::into_inner(store.db).context("the state store is in use")?;
    rewrite(db, &path)?;
    let key_file = if new_key_file.is_some() {
        staged
    } else {
        std::fs::rename(&staged, &current).with_context(|| {
            format!(
                "the secrets are re-encrypted with {}, but it could not replace {}: move it there by hand",
                staged.display(),
                current.display()
            )
        })?;
        if let Some(parent) = current.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        current
    };
    Ok(Rotation {
        secrets: count,
        key_file,
    })
}

/// Copies every table of `db` into a new file and puts it in place of
/// `path`: nothing the old file freed survives.
fn rewrite(db: Database, path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension("redb.rewrite");
    let _ = std::fs::remove_file(&tmp);
    {
        let new =
            Database::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        let from = db.begin_read()?;
        let to = new.begin_write()?;
        copy_table(&from, &to, FAILURES)?;
        copy_table(&from, &to, META)?;
        copy_table(&from, &to, TOKENS)?;
        {
            let src = from.open_table(SECRETS)?;
            let mut dst = to.open_table(SECRETS)?;
            for entry in src.iter()? {
                let (k, v) = entry?;
                dst.insert(k.value(), v.value())?;
            }
        }
        to.commit()?;
    }
    drop(db);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot replace {} by its rewritten copy", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> anyhow::Result<()>
where
    for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
    for<'a> V::SelfType<'a>: std::borrow::Borrow<V::SelfType<'a>>,
{
    let src = match from.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut dst = to.open_table(table)?;
    for entry in src.iter()? {
        let (k, v) = entry?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Why a store file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreFileError {
    /// Another process holds the file.
    #[error(
        "{path} is in use by another eventflow process: is a router already running with this state directory?"
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a usable redb database.
    #[error(
        "{path} is damaged ({reason}): restore it from a backup, or start with `eventflow run --move-damaged-aside` to move it aside and start with an empty one"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The disk or the file system failed.
    #[error("cannot open {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: String,
    },
}

/// Opens (or creates, mode 0600) the redb file at `path`. A damaged file —
/// empty, truncated, garbled, failing its checksums, or one redb panics on —
/// is [`StoreFileError::Damaged`], or with [`Damaged::MoveAside`] is renamed
/// to `<file>.damaged-<timestamp>` and replaced by an empty store. Blocking,
/// and reads the whole file (to verify its checksums).
pub fn open_redb(path: &Path, damaged: Damaged) -> Result<Database, StoreFileError> {
    match open_checked(path) {
        Err(StoreFileError::Damaged { reason, .. }) if damaged == Damaged::MoveAside => {
            let aside = aside_name(path);
            std::fs::rename(path, &aside).map_err(|e| StoreFileError::Io {
                path: path.to_path_buf(),
                error: format!("cannot move the damaged file to {}: {e}", aside.display()),
            })?;
            tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                reason = %reason,
                "Moved a damaged store file aside; starting with an empty one."
            );
            open_checked(path)
        }
        other => other,
    }
}

pub(crate) fn aside_name(path: &Path) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{stamp}"));
    PathBuf::from(name)
}

fn open_checked(path: &Path) -> Result<Database, StoreFileError> {
    let damaged = |reason: String| StoreFileError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let io = |error: String| StoreFileError::Io {
        path: path.to_path_buf(),
        error,
    };
    match std::fs::metadata(path) {
        // An empty file is not a new store: redb would start it empty and
        // everything it held would be gone without a word.
        Ok(m) if m.len() == 0 => return Err(damaged("it is empty (0 bytes)".into())),
        Ok(m) if !m.is_file() => return Err(io("it is not a regular file".into())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io(format!("cannot create it: {e}")))?;
        }
        Err(e) => return Err(io(e.to_string())),
    }
    let opened = quietly(|| {
        let mut db = Database::create(path)?;
        db.check_integrity()?;
        Ok::<_, redb::DatabaseError>(db)
    });
    let db = match opened {
        Err(panic) => {
            return Err(damaged(format!(
                "the database library failed on it: {panic}"
            )));
        }
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(StoreFileError::Locked {
                path: path.to_path_buf(),
            });
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            return Err(io(e.to_string()));
        }
        Ok(Err(e)) => return Err(damaged(one_line(&e.to_string()))),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io(format!("cannot make it private (mode 0600): {e}")))?;
    Ok(db)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into an error without printing it: redb panics
/// on some damaged files, which is the file's fault, not a bug to report.
fn quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        one_line(&text)
    })
}

/// Creates `dir` if needed and makes it private to the router's user: the
/// directory and every directory under it 0700, every file 0600 (tightening
/// what earlier versions created world-readable). Symbolic links are left
/// alone. Blocking.
pub fn secure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    tighten(dir, 0o700)?;
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the state directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            secure_dir(&path)?;
        } else if kind.is_file() {
            tighten(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Removes every permission beyond `mode`.
pub fn tighten(path: &Path, mode: u32) -> anyhow::Result<()> {
    let current = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    Ok(())
}

/// How the tests damage store files: one copy, shared with the end-to-end
/// tests.
#[cfg(test)]
#[path = "../../tests/support/damage.rs"]
mod damage;

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
            let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
            s.record_failure("f", "m", rec("trap", 1)).unwrap();
            let h = s.record_failure("f", "m", rec("timeout", 2)).unwrap();
            assert_eq!(h.first.reason, "trap");
            assert_eq!(h.last.reason, "timeout");
            s.flush().unwrap();
        }
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        let h = s.failures("f", "m").unwrap().unwrap();
        assert_eq!((h.first.attempt, h.last.attempt), (1, 2));
        s.forget("f", "m").unwrap();
        assert!(s.failures("f", "m").unwrap().is_none());
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    const VALUE: &str = "s3cr3t-value-that-must-not-leak";

    #[test]
    fn secret_values_are_encrypted_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
            s.set_secret("ezra/a", "TOKEN", VALUE).unwrap();
            s.set_secret("_router", "sqs-key", "router-credential-xyz")
                .unwrap();
            s.flush().unwrap();
        }
        let bytes = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
        assert!(!contains(&bytes, VALUE.as_bytes()));
        assert!(!contains(&bytes, b"router-credential-xyz"));
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        let mut all = s.all_secrets().unwrap();
        all.sort();
        assert_eq!(
            all,
            vec![
                (
                    "_router".into(),
                    "sqs-key".into(),
                    "router-credential-xyz".into()
                ),
                ("ezra/a".into(), "TOKEN".into(), VALUE.into()),
            ]
        );
    }

    #[test]
    fn the_state_directory_and_its_files_are_private_even_on_old_installs() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // What an earlier version left: world-readable everything.
        std::fs::create_dir_all(state.join("compiled")).unwrap();
        std::fs::write(state.join("broker-local.redb"), b"x").unwrap();
        std::fs::write(state.join("compiled/abc.cwasm"), b"x").unwrap();
        for p in [&state, &state.join("compiled")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for f in ["broker-local.redb", "compiled/abc.cwasm"] {
            std::fs::set_permissions(state.join(f), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        let _s = StateStore::open(&state, &StateOptions::default()).unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("compiled")), 0o700);
        for f in [
            STATE_FILE,
            "secret.key",
            "broker-local.redb",
            "compiled/abc.cwasm",
        ] {
            assert_eq!(mode(&state.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn plaintext_secrets_of_an_earlier_version_are_encrypted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        {
            // The earlier layout: values in plaintext in `secrets`.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(PLAINTEXT_SECRETS)
                .unwrap()
                .insert(("ezra/a", "TOKEN"), VALUE)
                .unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("seed", "digest")
                .unwrap();
            tx.commit().unwrap();
        }
        assert!(contains(&std::fs::read(&path).unwrap(), VALUE.as_bytes()));
        {
            let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
            assert_eq!(
                s.all_secrets().unwrap(),
                vec![("ezra/a".into(), "TOKEN".into(), VALUE.into())]
            );
            assert!(!s.has_plaintext_secrets().unwrap());
            // Everything else survives the rewrite.
            let tx = s.db.begin_read().unwrap();
            let meta = tx.open_table(META).unwrap();
            assert_eq!(meta.get("seed").unwrap().unwrap().value(), "digest");
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains(&bytes, VALUE.as_bytes()),
            "plaintext left in the file"
        );
        assert_eq!(mode(&path), 0o600);
        // And again: nothing to convert, same values.
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        assert_eq!(s.all_secrets().unwrap()[0].2, VALUE);
    }

    #[test]
    fn rotating_the_key_reencrypts_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        let options = StateOptions::default();
        {
            let s = StateStore::open(dir.path(), &options).unwrap();
            s.set_secret("ezra/a", "TOKEN", VALUE).unwrap();
        }
        let old_key = std::fs::read(dir.path().join("secret.key")).unwrap();
        // In place.
        let r = rotate_key(dir.path(), &options, None).unwrap();
        assert_eq!(r.secrets, 1);
        assert_eq!(r.key_file, dir.path().join("secret.key"));
        assert_ne!(
            std::fs::read(dir.path().join("secret.key")).unwrap(),
            old_key
        );
        assert!(!dir.path().join("secret.key.new").exists());
        let s = StateStore::open(dir.path(), &options).unwrap();
        assert_eq!(s.all_secrets().unwrap()[0].2, VALUE);
        drop(s);
        // To a key file elsewhere: the old key no longer opens the secrets.
        let elsewhere = dir.path().join("elsewhere.key");
        rotate_key(dir.path(), &options, Some(&elsewhere)).unwrap();
        assert!(StateStore::open(dir.path(), &options).is_err());
        let moved = StateOptions {
            key_file: Some(elsewhere),
            ..StateOptions::default()
        };
        let s = StateStore::open(dir.path(), &moved).unwrap();
        assert_eq!(s.all_secrets().unwrap()[0].2, VALUE);
    }

    #[test]
    fn another_key_is_refused_naming_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
            s.set_secret("ezra/a", "TOKEN", VALUE).unwrap();
        }
        let other = dir.path().join("other.key");
        std::fs::write(&other, [7u8; 32]).unwrap();
        let options = StateOptions {
            key_file: Some(other.clone()),
            ..StateOptions::default()
        };
        let Err(e) = StateStore::open(dir.path(), &options) else {
            panic!("opened with the wrong key");
        };
        let e = format!("{e:#}");
        assert!(e.contains(&other.display().to_string()), "{e}");
        assert!(e.contains("ezra/a/TOKEN"), "{e}");
        // A configured key file that does not exist is not created.
        let options = StateOptions {
            key_file: Some(dir.path().join("missing.key")),
            ..StateOptions::default()
        };
        assert!(StateStore::open(dir.path(), &options).is_err());
        assert!(!dir.path().join("missing.key").exists());
    }

    /// A store with some content, then damaged by `damage`.
    fn damaged_store(how: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
            for i in 0..200 {
                s.add_token(
                    &format!("hash{i}"),
                    &TokenInfo {
                        id: format!("t{i}"),
                        owner: "ezra".into(),
                        created_at: "now".into(),
                    },
                )
                .unwrap();
            }
        }
        let path = dir.path().join(STATE_FILE);
        damage::damage(&path, how);
        (dir, path)
    }

    #[test]
    fn damaged_state_files_are_errors_naming_the_file_never_panics_nor_empty_starts() {
        for how in damage::DAMAGES {
            let (dir, path) = damaged_store(how);
            let result =
                std::panic::catch_unwind(|| StateStore::open(dir.path(), &StateOptions::default()));
            let Ok(result) = result else {
                panic!("{how}: panicked");
            };
            match result {
                // Garbage only in free pages is no damage: then everything
                // the store held is still there.
                Ok(s) => {
                    assert!(
                        matches!(how, "middle" | "tail"),
                        "{how}: opened a damaged file"
                    );
                    assert_eq!(
                        s.tokens().unwrap().len(),
                        200,
                        "{how}: opened with tokens lost"
                    );
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.contains(&path.display().to_string()), "{how}: {e}");
                    assert!(e.contains("--move-damaged-aside"), "{how}: {e}");
                    assert!(!e.contains('\n'), "{how}: {e}");
                }
            }
        }
    }

    #[test]
    fn a_damaged_file_moves_aside_only_when_asked() {
        let (dir, path) = damaged_store("zero");
        let options = StateOptions {
            damaged: Damaged::MoveAside,
            ..StateOptions::default()
        };
        let s = StateStore::open(dir.path(), &options).unwrap();
        assert!(s.tokens().unwrap().is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.redb.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::metadata(dir.path().join(&aside[0])).unwrap().len(),
            0
        );
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
    }
}

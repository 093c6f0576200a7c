//! The algorithms' and the router's secrets, sealed with the store's key:
//! reading and writing them, converting the plaintext of earlier versions,
//! and rotating the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use redb::{ReadableDatabase, ReadableTable, TableHandle};

use super::file::{open_redb, rewrite};
use super::key::SecretKey;
use super::{Damaged, PLAINTEXT_SECRETS, SECRETS, STATE_FILE, StateOptions, StateStore};

impl StateStore {
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

    /// Whether the store still has the plaintext secrets table of an
    /// earlier version.
    pub(super) fn has_plaintext_secrets(&self) -> anyhow::Result<bool> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .list_tables()?
            .any(|t| t.name() == PLAINTEXT_SECRETS.name()))
    }

    /// Seals the plaintext secrets of an earlier version, then rewrites the
    /// file so their plaintext does not linger in freed pages.
    pub(super) fn seal_plaintext_secrets(
        self,
        path: &Path,
        damaged: Damaged,
    ) -> anyhow::Result<Self> {
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

//! The key that seals secrets at rest in the state store: ChaCha20-Poly1305,
//! a random nonce per value, the secret's scope and name as associated data
//! so a value cannot be moved to another entry.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::Rng;

/// The environment variable naming the secret key file, for operators who
/// keep the key away from the state directory.
pub const KEY_FILE_ENV: &str = "EVENTFLOW_SECRET_KEY_FILE";
/// The default key file in the state directory.
pub const DEFAULT_KEY_FILE: &str = "secret.key";
/// Bytes of a key.
const KEY_LEN: usize = 32;
/// Bytes of a nonce, stored in front of each sealed value.
const NONCE_LEN: usize = 12;
/// The format byte in front of each sealed value.
const SEALED_V1: u8 = 1;

/// Why a sealed secret could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    /// The value is too short or of an unknown format.
    #[error("secret {scope}/{name}: the stored value is malformed")]
    Malformed {
        /// `owner/name` or `_router`.
        scope: String,
        /// The secret's name.
        name: String,
    },
    /// Authentication failed: another key, or a tampered value.
    #[error(
        "secret {scope}/{name} cannot be decrypted: it was sealed with another key (is {KEY_FILE_ENV} pointing at the right key file?) or the stored value was altered"
    )]
    WrongKey {
        /// `owner/name` or `_router`.
        scope: String,
        /// The secret's name.
        name: String,
    },
}

/// The key that seals secrets at rest.
#[derive(Clone)]
pub struct SecretKey {
    cipher: ChaCha20Poly1305,
    /// Where it was read from, for error messages.
    path: PathBuf,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.path.display())
    }
}

impl SecretKey {
    /// The key file to use for the state directory `state_dir`: `configured`
    /// (the configuration's `router.secret_key_file`), else the path in
    /// `EVENTFLOW_SECRET_KEY_FILE`, else `<state_dir>/secret.key`. The bool
    /// says whether it is the default one (which is created when missing).
    pub fn location(state_dir: &Path, configured: Option<&Path>) -> (PathBuf, bool) {
        if let Some(p) = configured {
            return (p.to_path_buf(), false);
        }
        match std::env::var_os(KEY_FILE_ENV) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), false),
            _ => (state_dir.join(DEFAULT_KEY_FILE), true),
        }
    }

    /// Reads the key at `path`: 32 raw bytes, or 64 hex digits (trailing
    /// whitespace ignored). With `create`, a missing file is created with 32
    /// random bytes and mode 0600.
    pub fn load(path: &Path, create: bool) -> anyhow::Result<Self> {
        if create && !path.exists() {
            let key: [u8; KEY_LEN] = rand::rng().random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create the secret key file {}", path.display()))?;
            file.write_all(&key)?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "Created the key that encrypts secrets at rest.");
        }
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the secret key file {} (set {KEY_FILE_ENV} or router.secret_key_file to where the key is)",
                path.display()
            )
        })?;
        Self::from_bytes(&bytes, path)
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> anyhow::Result<Self> {
        let key: Vec<u8> = if bytes.len() == KEY_LEN {
            bytes.to_vec()
        } else {
            let text = std::str::from_utf8(bytes).unwrap_or_default().trim();
            match hex::decode(text) {
                Ok(k) if k.len() == KEY_LEN => k,
                _ => anyhow::bail!(
                    "the secret key file {} must hold 32 bytes or 64 hex digits ({} bytes found)",
                    path.display(),
                    bytes.len()
                ),
            }
        };
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            path: path.to_path_buf(),
        })
    }

    /// Where the key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encrypts `value` of the secret `scope`/`name`: format byte, nonce,
    /// ciphertext with tag.
    pub fn seal(&self, scope: &str, name: &str, value: &str) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::rng().random();
        let aad = associated_data(scope, name);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of an in-memory value cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`SecretKey::seal`] produced for the same entry.
    pub fn unseal(&self, scope: &str, name: &str, sealed: &[u8]) -> Result<String, UnsealError> {
        let malformed = || UnsealError::Malformed {
            scope: scope.to_string(),
            name: name.to_string(),
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_V1 {
            return Err(malformed());
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let aad = associated_data(scope, name);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| UnsealError::WrongKey {
                scope: scope.to_string(),
                name: name.to_string(),
            })?;
        String::from_utf8(plain).map_err(|_| malformed())
    }
}

/// Binds a sealed value to its entry: scope and name, length-prefixed so no
/// two entries share it.
fn associated_data(scope: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + scope.len() + name.len());
    aad.extend_from_slice(b"eventflow-secret-v1");
    aad.extend_from_slice(&(scope.len() as u64).to_be_bytes());
    aad.extend_from_slice(scope.as_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_entry_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = SecretKey::load(&path, true).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal("ezra/a", "TOKEN", "hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.unseal("ezra/a", "TOKEN", &sealed).unwrap(), "hunter2");
        // Two seals of one value differ (random nonce).
        assert_ne!(sealed, key.seal("ezra/a", "TOKEN", "hunter2"));
        // Swapped between entries: refused.
        assert!(key.unseal("mallory/a", "TOKEN", &sealed).is_err());
        assert!(key.unseal("ezra/a", "OTHER", &sealed).is_err());
        // Another key: refused.
        let other = SecretKey::load(&dir.path().join("k2"), true).unwrap();
        assert!(matches!(
            other.unseal("ezra/a", "TOKEN", &sealed),
            Err(UnsealError::WrongKey { .. })
        ));
        // Reloading the same file gives the same key; hex form too.
        let again = SecretKey::load(&path, false).unwrap();
        assert_eq!(again.unseal("ezra/a", "TOKEN", &sealed).unwrap(), "hunter2");
        let hex_path = dir.path().join("hex");
        std::fs::write(
            &hex_path,
            format!("{}\n", hex::encode(std::fs::read(&path).unwrap())),
        )
        .unwrap();
        let hexed = SecretKey::load(&hex_path, false).unwrap();
        assert_eq!(hexed.unseal("ezra/a", "TOKEN", &sealed).unwrap(), "hunter2");
        // A missing non-default key file is an error, not a new key.
        assert!(SecretKey::load(&dir.path().join("missing"), false).is_err());
    }
}

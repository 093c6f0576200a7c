//! The admin token: generated at first start, stored with mode 0600 in the
//! state directory, where the CLI reads it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use rand::Rng;

/// The token file in the state directory.
pub const TOKEN_FILE: &str = "admin.token";
/// The file with the admin listener's bound address.
pub const ADDR_FILE: &str = "admin.addr";

/// A new random token: 32 bytes, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// Reads the admin token, creating it (mode 0600) on first start.
pub fn ensure_token(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(TOKEN_FILE);
    if path.exists() {
        return read_token(state_dir);
    }
    let token = new_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(token)
}

/// Reads the admin token.
pub fn read_token(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(TOKEN_FILE);
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the admin token {} (has the router run with this state directory?)",
            path.display()
        )
    })?;
    Ok(token.trim().to_string())
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

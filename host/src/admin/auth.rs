//! The admin token: generated at first start, stored with mode 0600 in the
//! state directory, where the CLI reads it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

use crate::state::token::new_token;

/// The token file in the state directory.
pub const TOKEN_FILE: &str = "admin.token";
/// The file with the admin listener's bound address.
pub const ADDR_FILE: &str = "admin.addr";

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

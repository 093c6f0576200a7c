//! `eventflow deploy`: installs a component in a plugin directory the safe
//! way (a temporary name in the same directory, fsync, rename, fsync of the
//! directory), then waits for the running router to load or reject exactly
//! that content, as its plugin listing reports.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::Digest;

use crate::cli::client::Client;
use crate::sandbox::AlgorithmId;

/// Copies `component` to `<plugins>/<owner>/<name>/<version>.wasm`; returns
/// the file and the content's SHA-256.
pub fn install(
    component: &Path,
    id: &AlgorithmId,
    plugins: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    use std::io::Write;
    let (bytes, hash) = read(component)?;
    let dir = plugins.join(&id.owner).join(&id.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(format!("{}.wasm", id.version));
    // Not `<version>.wasm`, so the router ignores it until the rename.
    let tmp = dir.join(format!(
        ".{}.wasm.deploy-{}",
        id.version,
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &dest))
        .and_then(|()| std::fs::File::open(&dir)?.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", dest.display()));
    }
    Ok((dest, hash))
}

/// Uploads `component` as `<owner>/<name>/<version>.wasm` to the plugin
/// bucket; returns the object's URL and the content's SHA-256.
pub async fn upload(
    component: &Path,
    id: &AlgorithmId,
    bucket: &crate::mirror::Mirror,
) -> anyhow::Result<(PathBuf, String)> {
    let (bytes, hash) = read(component)?;
    let relative = format!("{}/{}/{}.wasm", id.owner, id.name, id.version);
    let url = bucket.upload(&relative, bytes).await?;
    Ok((PathBuf::from(url), hash))
}

/// The component's bytes and their SHA-256, which the router's listing
/// reports once it has the content.
fn read(component: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    Ok((bytes, hash))
}

/// What the router made of a deployed component.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// It serves this content.
    Loaded,
    /// It refused this content, and why.
    Rejected {
        /// The router's reason.
        reason: String,
    },
}

/// Polls the router's plugin listing until it reports the content with
/// `hash` of `id` loaded or rejected, for at most `timeout`.
pub async fn wait(
    client: &Client,
    id: &AlgorithmId,
    hash: &str,
    timeout: Duration,
) -> anyhow::Result<Verdict> {
    let deadline = Instant::now() + timeout;
    let name = id.to_string();
    loop {
        let plugins = client
            .plugins()
            .await
            .context("cannot ask the router which algorithms it loaded")?;
        if let Some(p) = plugins.iter().find(|p| p.algorithm == name) {
            if let Some(r) = p.rejected.as_ref().filter(|r| r.hash == hash) {
                return Ok(Verdict::Rejected {
                    reason: r.reason.clone(),
                });
            }
            if p.status == "ok" && p.hash.as_deref() == Some(hash) {
                return Ok(Verdict::Loaded);
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the router reported {name} neither loaded nor rejected within {timeout:?} \
                 (a large component compiles for a while; see `eventflow plugins list`)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! Plugins from object storage: `[plugins] backend = "s3://bucket/prefix"`.
//!
//! Every router of a fleet lists the bucket every `[router]
//! plugins_poll_secs` and mirrors `<prefix>/<owner>/<name>/<version>.wasm`
//! into `<state_dir>/plugins-mirror`, which is its plugin directory: a new or
//! changed object is downloaded and renamed into place, a deleted one is
//! deleted. From there the plugin directory's own machinery takes over
//! unchanged (the watcher, validation, the atomic swap, the compiled-code
//! cache), so a truncated or invalid upload is rejected while the content
//! loaded before keeps serving. What was downloaded is remembered by ETag
//! (else size and modification time) in `.bucket-manifest.json` beside the
//! mirror, so a restart downloads only what changed meanwhile; when the
//! bucket cannot be listed, the router runs with the plugins it mirrored
//! last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::registry::{id_from_path, scan};

/// The record of what was downloaded, in the mirror directory (not a
/// plugin path, so the watcher ignores it).
const MANIFEST: &str = ".bucket-manifest.json";
/// The largest plugin downloaded; a larger object is skipped with a
/// warning (the biggest interpreter components are about 20 MB).
const MAX_PLUGIN_BYTES: u64 = 256 << 20;

/// What identifies an object's content without downloading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    e_tag: Option<String>,
    size: u64,
    modified_ms: i64,
}

impl Version {
    fn of(meta: &ObjectMeta) -> Self {
        Self {
            e_tag: meta.e_tag.clone(),
            size: meta.size,
            modified_ms: meta.last_modified.timestamp_millis(),
        }
    }
}

/// What one pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Plugins downloaded (new or changed), as `owner/name/version.wasm`.
    pub downloaded: Vec<String>,
    /// Plugins removed from the mirror because their object is gone.
    pub removed: Vec<String>,
}

/// A bucket prefix mirrored into a directory.
pub struct Mirror {
    store: Box<dyn ObjectStore>,
    /// The prefix, without leading or trailing `/` (may be empty).
    prefix: String,
    /// The same, as the listing takes it: parsed, not encoded, so the keys
    /// listed come back as they are.
    list_prefix: Option<object_store::path::Path>,
    /// The backend URL, for messages.
    url: String,
    dir: PathBuf,
    /// What the mirror holds, by path relative to `dir`.
    seen: BTreeMap<String, Version>,
}

impl Mirror {
    /// The mirror of `config`'s plugin bucket, or `None` when plugins come
    /// from a directory.
    pub fn of(config: &crate::config::Config) -> anyhow::Result<Option<Self>> {
        let Some((store, prefix)) = config.plugins.bucket("plugins", None)? else {
            return Ok(None);
        };
        // Always the state directory's mirror, whatever `plugins_dir` says:
        // the mirror deletes what the bucket does not have.
        let dir = config
            .router
            .state_dir
            .join(crate::config::PLUGIN_MIRROR_DIR);
        Ok(Some(Self::new(
            store,
            &prefix,
            &config.plugins.backend,
            dir,
        )?))
    }

    /// Mirrors `prefix` of `store` (named `url` in messages) into `dir`.
    pub fn new(
        store: Box<dyn ObjectStore>,
        prefix: &str,
        url: &str,
        dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let seen = std::fs::read(dir.join(MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let prefix = prefix.trim_matches('/').to_string();
        let list_prefix = match prefix.as_str() {
            "" => None,
            p => Some(
                object_store::path::Path::parse(p)
                    .with_context(|| format!("{url}: the prefix {p:?}"))?,
            ),
        };
        Ok(Self {
            store,
            prefix,
            list_prefix,
            url: url.to_string(),
            dir,
            seen,
        })
    }

    /// One pass: lists the bucket, downloads what is new or changed, and
    /// deletes from the mirror what the bucket no longer has. An error to
    /// list leaves the mirror as it is; an object that cannot be downloaded
    /// is skipped (and tried again next pass).
    pub async fn sync(&mut self) -> anyhow::Result<Synced> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create the plugin mirror {}", self.dir.display()))?;
        let listed: Vec<ObjectMeta> = self
            .store
            .list(self.list_prefix.as_ref())
            .try_collect()
            .await
            // One key object_store cannot take (`//`, a `.` or `..`
            // segment) fails the whole listing: say so.
            .with_context(|| {
                format!(
                    "cannot list {} (an object key with an empty, `.` or `..` segment under the prefix stops the listing)",
                    self.url
                )
            })?;
        let mut wanted = BTreeMap::new();
        for meta in listed {
            let key = meta.location.as_ref();
            let relative = if self.prefix.is_empty() {
                key
            } else {
                match key
                    .strip_prefix(self.prefix.as_str())
                    .and_then(|k| k.strip_prefix('/'))
                {
                    Some(r) => r,
                    None => continue,
                }
            };
            // Only `<owner>/<name>/<version>.wasm`, with the plugin
            // directory's own rules for each part.
            if id_from_path(&self.dir, &self.dir.join(relative)).is_none()
                || relative.split('/').count() != 3
            {
                continue;
            }
            wanted.insert(relative.to_string(), meta);
        }

        let mut synced = Synced::default();
        for (relative, meta) in &wanted {
            let version = Version::of(meta);
            let path = self.dir.join(relative);
            if self.seen.get(relative) == Some(&version) && path.is_file() {
                continue;
            }
            if meta.size > MAX_PLUGIN_BYTES {
                tracing::warn!(
                    object = %meta.location,
                    bytes = meta.size,
                    limit = MAX_PLUGIN_BYTES,
                    "Plugin object too large; not downloaded."
                );
                continue;
            }
            match self.download(meta, &path).await {
                Ok(()) => {
                    self.seen.insert(relative.clone(), version);
                    synced.downloaded.push(relative.clone());
                }
                Err(e) => tracing::warn!(
                    object = %meta.location,
                    error = %format!("{e:#}"),
                    "Cannot download a plugin; trying again at the next listing."
                ),
            }
        }
        // Whatever the mirror holds that the bucket does not, manifest or no.
        for (_, path) in scan(&self.dir) {
            let Ok(relative) = path.strip_prefix(&self.dir) else {
                continue;
            };
            let relative = relative.to_string_lossy().replace('\\', "/");
            if !wanted.contains_key(&relative) {
                match std::fs::remove_file(&path) {
                    Ok(()) => synced.removed.push(relative.clone()),
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "Cannot remove a plugin deleted from the bucket."
                    ),
                }
            }
        }
        self.seen.retain(|k, _| wanted.contains_key(k));
        if !synced.downloaded.is_empty() || !synced.removed.is_empty() {
            self.save_manifest();
        }
        Ok(synced)
    }

    /// Downloads one object to a temporary name beside `path`, then renames
    /// it into place (so the watcher sees it whole at once).
    async fn download(&self, meta: &ObjectMeta, path: &Path) -> anyhow::Result<()> {
        let got = self.store.get(&meta.location).await?;
        // The object may have been replaced since it was listed.
        if got.meta.size > MAX_PLUGIN_BYTES {
            anyhow::bail!(
                "it is {} bytes, over the {MAX_PLUGIN_BYTES} a plugin may have",
                got.meta.size
            );
        }
        let bytes = got.bytes().await.context("cannot read the object")?;
        let dir = path.parent().context("a plugin path has a directory")?;
        let name = path
            .file_name()
            .context("a plugin path has a file name")?
            .to_string_lossy();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!(".{name}.download"));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {}", path.display()))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
        tracing::info!(
            object = %meta.location,
            bytes = bytes.len(),
            path = %path.display(),
            "Plugin downloaded from the bucket."
        );
        Ok(())
    }

    fn save_manifest(&self) {
        let tmp = self.dir.join(format!("{MANIFEST}.tmp"));
        let written = serde_json::to_vec(&self.seen)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(MANIFEST)));
        if let Err(e) = written {
            // Only costs downloads after a restart.
            tracing::warn!(error = %e, "Cannot save the plugin mirror's manifest.");
        }
    }

    /// Syncs every `every` until the task is aborted. A listing that fails
    /// is logged once, and its recovery once; `failing`: the last listing
    /// failed (and was logged).
    pub fn spawn(mut self, every: Duration, failing: bool) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.reset();
            let mut failing = failing;
            loop {
                ticks.tick().await;
                match self.sync().await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!(bucket = %self.url, "The plugin bucket can be listed again.");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(
                            bucket = %self.url,
                            error = %format!("{e:#}"),
                            "Cannot list the plugin bucket; the plugins mirrored last keep serving."
                        );
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// Uploads `bytes` as `owner/name/version.wasm` under the prefix: one
    /// PUT, so routers never see a partial object.
    pub async fn upload(&self, relative: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        let key = if self.prefix.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.prefix)
        };
        let path = object_store::path::Path::parse(&key)
            .with_context(|| format!("{key:?} is not an object key"))?;
        self.store
            .put(&path, bytes.into())
            .await
            .with_context(|| format!("cannot upload to {}", self.url))?;
        Ok(format!("{}/{relative}", self.url.trim_end_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn mirror(dir: &Path, store: &std::sync::Arc<InMemory>) -> Mirror {
        Mirror::new(
            Box::new(store.clone()),
            "fleet/plugins",
            "mem://b/fleet/plugins",
            dir.to_path_buf(),
        )
        .unwrap()
    }

    async fn put(store: &InMemory, key: &str, bytes: &[u8]) {
        store
            .put(&object_store::path::Path::from(key), bytes.to_vec().into())
            .await
            .unwrap();
    }

    /// New and changed objects are downloaded, unchanged ones are not,
    /// deleted ones leave the mirror, and keys that are not plugins (other
    /// prefixes, wrong depth, `..`-like or hidden names) are never written.
    #[tokio::test]
    async fn the_mirror_follows_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = InMemory::new();
        put(&store, "fleet/plugins/ezra/echo/0.1.0.wasm", b"one").await;
        put(&store, "fleet/plugins/ezra/echo/0.2.0.wasm", b"two").await;
        put(&store, "fleet/plugins/ezra/echo/notes.txt", b"x").await;
        put(&store, "fleet/plugins/ezra/0.1.0.wasm", b"x").await;
        put(&store, "fleet/plugins/ezra/echo/.0.3.0.wasm", b"x").await;
        put(&store, "elsewhere/ezra/echo/0.1.0.wasm", b"x").await;
        let shared = std::sync::Arc::new(store);
        let mut m = mirror(dir.path(), &shared);
        let first = m.sync().await.unwrap();
        assert_eq!(
            first.downloaded,
            ["ezra/echo/0.1.0.wasm", "ezra/echo/0.2.0.wasm"]
        );
        let files: Vec<String> = scan(dir.path())
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect();
        assert_eq!(files, ["ezra/echo/0.1.0", "ezra/echo/0.2.0"]);
        assert_eq!(
            std::fs::read(dir.path().join("ezra/echo/0.1.0.wasm")).unwrap(),
            b"one"
        );

        // Nothing changed: nothing downloaded.
        assert_eq!(m.sync().await.unwrap(), Synced::default());

        // One changed, one deleted.
        put(&shared, "fleet/plugins/ezra/echo/0.1.0.wasm", b"one, again").await;
        shared
            .delete(&object_store::path::Path::from(
                "fleet/plugins/ezra/echo/0.2.0.wasm",
            ))
            .await
            .unwrap();
        let second = m.sync().await.unwrap();
        assert_eq!(second.downloaded, ["ezra/echo/0.1.0.wasm"]);
        assert_eq!(second.removed, ["ezra/echo/0.2.0.wasm"]);
        assert_eq!(
            std::fs::read(dir.path().join("ezra/echo/0.1.0.wasm")).unwrap(),
            b"one, again"
        );
        assert!(!dir.path().join("ezra/echo/0.2.0.wasm").exists());

        // A new mirror over the same directory (a restart) downloads
        // nothing: the manifest says what it holds.
        let mut again = mirror(dir.path(), &shared);
        assert_eq!(again.sync().await.unwrap(), Synced::default());
    }

    /// Regression: a prefix with a character object_store encodes (`~`)
    /// was encoded for the listing, matched none of the bucket's keys (which
    /// come back as they are) and would have emptied the mirror.
    #[tokio::test]
    async fn a_prefix_is_listed_as_written_not_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(InMemory::new());
        let key = object_store::path::Path::parse("team~a/plugins/ezra/echo/0.1.0.wasm").unwrap();
        store.put(&key, b"one".to_vec().into()).await.unwrap();
        let mut m = Mirror::new(
            Box::new(store.clone()),
            "team~a/plugins",
            "mem://b/team~a/plugins",
            dir.path().to_path_buf(),
        )
        .unwrap();
        assert_eq!(m.sync().await.unwrap().downloaded, ["ezra/echo/0.1.0.wasm"]);
    }
}

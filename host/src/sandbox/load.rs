//! Loading a component: compiling it (or reading the compiled code from the
//! on-disk cache), validating what it imports and exports, and keeping the
//! cache within its cap.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sha2::Digest;
use wasmtime::component::Component;

use super::bindings::AlgorithmPre;
use super::{Algorithm, AlgorithmId, Code, Sandbox};

impl Sandbox {
    /// Compiles (or loads from the cache) and validates a component: it must
    /// be a component, export the algorithm world, and import nothing the
    /// host cannot give. Blocking and CPU-heavy: run it off the hot path.
    pub fn load(&self, id: AlgorithmId, bytes: &[u8]) -> anyhow::Result<Algorithm> {
        let hash = hex::encode(sha2::Sha256::digest(bytes));
        let _compiling = Compiling::start(&self.compiling, &hash);
        let (component, from_cache) = self.compile(&hash, bytes)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("its imports cannot be satisfied (it may import interfaces Eventflow does not grant)")?;
        let pre = AlgorithmPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context(
                "it does not export the eventflow:algorithm world (`apply` of 0.1.0, or `apply` and `apply-batch` of 0.2.0)",
            )?;
        let initial = initial_memory_bytes(&component);
        Ok(Algorithm::new(
            id,
            hash,
            bytes.len() as u64,
            from_cache,
            initial,
            Code::Wasm(pre),
        ))
    }

    fn cache_path(&self, hash: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hash}-{}.cwasm", self.engine_hash)))
    }

    fn compile(&self, hash: &str, bytes: &[u8]) -> anyhow::Result<(Component, bool)> {
        if !looks_like_component(bytes) {
            anyhow::bail!("not a WebAssembly component (a core module or another file?)");
        }
        let cached = self.cache_path(hash);
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash (it is in the name) into
            // the router's own state directory, which only the router writes.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => {
                    // The modification time orders eviction: least recently
                    // used first.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                    return Ok((c, true));
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "Ignoring an unreadable compiled-code cache entry."
                ),
            }
        }
        let Some(path) = cached else {
            return Ok((Component::new(&self.engine, bytes)?, false));
        };
        let compiled = self.engine.precompile_component(bytes)?;
        if let Err(e) = write_atomically(&path, &compiled) {
            // Only restarts are slower without the entry (a full disk, say).
            tracing::warn!(
                path = %path.display(),
                error = %format!("{e:#}"),
                "Could not keep compiled code in the cache."
            );
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled)? };
        Ok((component, false))
    }

    /// Trims the compiled-code cache: deletes the entries of components no
    /// loaded version uses (`in_use` holds their SHA-256s) or compiled by
    /// another engine, leftovers of interrupted writes, then the least
    /// recently used entries until the cache fits `compiled_cache_max_mib`.
    /// Blocking.
    pub fn evict_compiled(&self, in_use: &HashSet<String>) -> anyhow::Result<CacheEviction> {
        let mut outcome = CacheEviction::default();
        let Some(dir) = &self.cache_dir else {
            return Ok(outcome);
        };
        let cap = self.settings.compiled_cache_max_mib.saturating_mul(1 << 20);
        let suffix = format!("-{}.cwasm", self.engine_hash);
        let mut kept = Vec::new();
        let compiling = self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list the cache directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let used = name
                .strip_suffix(&suffix)
                .is_some_and(|hash| in_use.contains(hash) || compiling.contains(hash));
            // A write in progress is a temporary file for a few seconds.
            let fresh_tmp = name.contains(".tmp-")
                && modified.elapsed().unwrap_or_default() < Duration::from_secs(600);
            if used {
                kept.push((modified, meta.len(), path));
            } else if !fresh_tmp {
                remove_cache_entry(&path, meta.len(), &mut outcome);
            }
        }
        let mut total: u64 = kept.iter().map(|(_, len, _)| len).sum();
        kept.sort();
        for (_, len, path) in kept {
            if total <= cap {
                break;
            }
            total -= len;
            remove_cache_entry(&path, len, &mut outcome);
        }
        outcome.kept_bytes = total;
        Ok(outcome)
    }
}

/// The initial size of the largest linear memory the component's core
/// modules define, in bytes: what an instance needs before it runs a line
/// (tens of MiB for an interpreter with its heap snapshot). The memory limit
/// applies to each memory, so the largest one is what must fit. `None` when
/// the component instantiates modules it imports (then it cannot be known
/// without instantiating it).
fn initial_memory_bytes(component: &Component) -> Option<u64> {
    const WASM_PAGE: u64 = 64 << 10;
    let resources = component.resources_required()?;
    Some(resources.max_initial_memory_size.unwrap_or(0) * WASM_PAGE)
}

/// A component's preamble: magic, then version 0x0d and layer 1.
fn looks_like_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Marks a hash as being compiled for as long as it lives.
struct Compiling<'a> {
    set: &'a std::sync::Mutex<HashSet<String>>,
    hash: String,
}

impl<'a> Compiling<'a> {
    fn start(set: &'a std::sync::Mutex<HashSet<String>>, hash: &str) -> Self {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_string());
        Self {
            set,
            hash: hash.to_string(),
        }
    }
}

impl Drop for Compiling<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.hash);
    }
}

/// What [`Sandbox::evict_compiled`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheEviction {
    /// Entries deleted.
    pub removed: usize,
    /// Bytes they held.
    pub removed_bytes: u64,
    /// Bytes the cache holds now.
    pub kept_bytes: u64,
}

fn remove_cache_entry(path: &Path, len: u64, outcome: &mut CacheEviction) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            outcome.removed += 1;
            outcome.removed_bytes += len;
        }
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = %e,
            "Could not delete a compiled-code cache entry."
        ),
    }
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file, so a
/// reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod cache_tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::SandboxConfig;
    use crate::data::Collections;

    fn sandbox(dir: &Path, max_mib: u64) -> Sandbox {
        let settings = SandboxConfig {
            pooling: false,
            epoch_interruption: false,
            compiled_cache_max_mib: max_mib,
            ..SandboxConfig::default()
        };
        let data = Arc::new(Collections::open(&dir.join("data")).unwrap());
        Sandbox::new(&settings, Some(dir.join("compiled")), data).unwrap()
    }

    fn entry(sb: &Sandbox, hash: &str, bytes: usize, age_secs: u64) -> PathBuf {
        let path = sb.cache_path(hash).unwrap();
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn entries_no_loaded_version_uses_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let sb = sandbox(dir.path(), 1024);
        let cache = dir.path().join("compiled");
        let used = entry(&sb, "aaaa", 10, 0);
        entry(&sb, "bbbb", 10, 0);
        // Compiled by another engine (an upgrade), and a write cut short long ago.
        std::fs::write(cache.join("aaaa-0123456789abcdef.cwasm"), b"x").unwrap();
        let stale_tmp = cache.join("cccc.tmp-1");
        std::fs::write(&stale_tmp, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&stale_tmp)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        // A write in progress stays.
        std::fs::write(cache.join("dddd.tmp-2"), b"x").unwrap();
        let in_use = HashSet::from(["aaaa".to_string()]);
        let outcome = sb.evict_compiled(&in_use).unwrap();
        assert_eq!(outcome.removed, 3);
        assert_eq!(
            names(&cache),
            vec![
                used.file_name().unwrap().to_string_lossy().into_owned(),
                "dddd.tmp-2".to_string()
            ]
        );
    }

    #[test]
    fn the_cache_stays_under_its_cap_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let sb = sandbox(dir.path(), 1);
        let cache = dir.path().join("compiled");
        let old = entry(&sb, "old", 400 << 10, 300);
        let mid = entry(&sb, "mid", 400 << 10, 200);
        let new = entry(&sb, "new", 400 << 10, 100);
        let in_use: HashSet<String> = ["old", "mid", "new"].map(String::from).into();
        let outcome = sb.evict_compiled(&in_use).unwrap();
        assert_eq!(outcome.removed, 1);
        assert!(!old.exists() && mid.exists() && new.exists());
        assert!(outcome.kept_bytes <= 1 << 20);
        // Using an entry makes it recent: `mid` was loaded, so `new` goes.
        std::fs::File::options()
            .write(true)
            .open(&mid)
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        entry(&sb, "newest", 400 << 10, 0);
        let in_use: HashSet<String> = ["mid", "new", "newest"].map(String::from).into();
        sb.evict_compiled(&in_use).unwrap();
        assert!(mid.exists() && !new.exists());
        assert_eq!(names(&cache).len(), 2);
    }
}

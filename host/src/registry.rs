//! The plugin registry: every algorithm version found in the plugin
//! directory, compiled and validated, and which one each flow should run.
//!
//! Versions are published atomically: a flow resolves its algorithm once per
//! message and holds an `Arc` to it, so an in-flight invocation finishes on
//! the version it started with while new messages pick up the new one. A file
//! that fails to load is recorded as rejected; if that version had loaded
//! before, the last good content keeps serving.
//!
//! Loading does not hold anything up: a version is marked compiling (shown
//! by `plugins list`) from when its load is asked for until it serves or is
//! rejected, flows wait meanwhile, and at most one compile per core runs at
//! once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::config::AlgorithmRef;
use crate::sandbox::{Algorithm, AlgorithmId, Sandbox};

/// One version's slot in the registry.
#[derive(Clone)]
pub struct Slot {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The code that serves this version, if any loaded.
    pub serving: Option<Arc<Algorithm>>,
    /// Why the most recent file content was rejected, with its hash and when.
    pub rejected: Option<Rejection>,
}

/// A file that failed to load.
#[derive(Clone, Debug, Serialize)]
pub struct Rejection {
    /// Why.
    pub reason: String,
    /// SHA-256 of the rejected content.
    pub hash: String,
    /// When.
    #[serde(with = "crate::util::rfc3339")]
    pub at: SystemTime,
}

/// One line of `eventflow plugins list`.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    /// `owner/name/version`.
    pub algorithm: String,
    /// `compiling` while new content is being loaded (or waits for a
    /// compile slot), else `rejected` if the latest content was, else `ok`.
    pub status: &'static str,
    /// SHA-256 of the serving component.
    pub hash: Option<String>,
    /// Size of the serving component.
    pub size: Option<u64>,
    /// When the serving component was loaded.
    #[serde(with = "crate::util::rfc3339_opt")]
    pub loaded_at: Option<SystemTime>,
    /// The serving component's largest initial linear memory, in bytes.
    pub initial_memory_bytes: Option<u64>,
    /// The serving component's world (see [`Algorithm::world`]).
    pub world: Option<&'static str>,
    /// The latest rejection, if the latest file content was rejected.
    pub rejected: Option<Rejection>,
    /// Flows that currently resolve to this version.
    pub flows: Vec<String>,
}

type Versions = BTreeMap<semver::Version, Slot>;

/// All algorithm versions, by `owner/name`.
pub struct Registry {
    algorithms: RwLock<HashMap<(String, String), Versions>>,
    changes: watch::Sender<u64>,
    /// Versions with loads pending (compiling or waiting for a compile
    /// slot), and how many.
    compiling: std::sync::Mutex<HashMap<AlgorithmId, usize>>,
    /// One permit per core: compiles at once.
    compile_slots: Semaphore,
    /// One lock per version, held from reading its file to publishing the
    /// result, so that loads of one version end in the order they read it
    /// and the latest content wins.
    load_locks: std::sync::Mutex<HashMap<AlgorithmId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Marks a version as compiling while it lives (see
/// [`Registry::compiling`]).
pub struct CompilingGuard {
    registry: Arc<Registry>,
    id: AlgorithmId,
}

impl Drop for CompilingGuard {
    fn drop(&mut self) {
        let mut compiling = self
            .registry
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = compiling.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                compiling.remove(&self.id);
            }
        }
        drop(compiling);
        self.registry.changed();
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            algorithms: RwLock::new(HashMap::new()),
            changes: watch::channel(0).0,
            compiling: Default::default(),
            compile_slots: Semaphore::new(cores),
            load_locks: Default::default(),
        }
    }

    /// Marks `id` as compiling until the guard is dropped: `plugins list`
    /// shows it so, and the compiled-code cache is not trimmed meanwhile
    /// (the entry it is about to read must stay).
    pub fn compiling(self: &Arc<Self>, id: &AlgorithmId) -> CompilingGuard {
        *self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default() += 1;
        self.changed();
        CompilingGuard {
            registry: self.clone(),
            id: id.clone(),
        }
    }

    /// Whether any version is compiling or waiting to.
    pub fn any_compiling(&self) -> bool {
        !self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Whether a version `reference` could resolve to is compiling.
    pub fn compiling_matches(&self, reference: &AlgorithmRef) -> bool {
        self.compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .any(|id| {
                id.owner == reference.owner
                    && id.name == reference.name
                    && reference.version.as_ref().is_none_or(|v| *v == id.version)
            })
    }

    fn is_compiling(&self, id: &AlgorithmId) -> bool {
        self.compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    fn load_lock(&self, id: &AlgorithmId) -> Arc<tokio::sync::Mutex<()>> {
        self.load_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// Subscribes to changes: the value increases whenever a version is
    /// added, replaced or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// The version a flow's reference resolves to: the pinned version, or the
    /// highest version that serves.
    pub fn resolve(&self, reference: &AlgorithmRef) -> Option<Arc<Algorithm>> {
        match &reference.version {
            Some(v) => {
                let algorithms = self.algorithms.read().unwrap_or_else(|p| p.into_inner());
                let versions =
                    algorithms.get(&(reference.owner.clone(), reference.name.clone()))?;
                versions.get(v).and_then(|s| s.serving.clone())
            }
            None => self.resolve_latest_where(reference, |_| true),
        }
    }

    /// The highest version of `reference`'s algorithm that serves and that
    /// `keep` accepts (a rollout's versions that are not skipped).
    pub fn resolve_latest_where(
        &self,
        reference: &AlgorithmRef,
        keep: impl Fn(&semver::Version) -> bool,
    ) -> Option<Arc<Algorithm>> {
        let algorithms = self.algorithms.read().unwrap_or_else(|p| p.into_inner());
        let versions = algorithms.get(&(reference.owner.clone(), reference.name.clone()))?;
        versions
            .iter()
            .rev()
            .filter(|(v, _)| keep(v))
            .find_map(|(_, s)| s.serving.clone())
    }

    /// Publishes a freshly loaded version, replacing older content.
    pub fn insert(&self, path: PathBuf, algorithm: Algorithm) {
        let id = algorithm.id.clone();
        let mut algorithms = self.algorithms.write().unwrap_or_else(|p| p.into_inner());
        algorithms.entry((id.owner, id.name)).or_default().insert(
            id.version,
            Slot {
                path,
                serving: Some(Arc::new(algorithm)),
                rejected: None,
            },
        );
        drop(algorithms);
        self.changed();
    }

    /// Records that the file for `id` was rejected; earlier good content of
    /// that version keeps serving.
    pub fn reject(&self, path: PathBuf, id: &AlgorithmId, rejection: Rejection) {
        let mut algorithms = self.algorithms.write().unwrap_or_else(|p| p.into_inner());
        let slot = algorithms
            .entry((id.owner.clone(), id.name.clone()))
            .or_default()
            .entry(id.version.clone())
            .or_insert_with(|| Slot {
                path,
                serving: None,
                rejected: None,
            });
        slot.rejected = Some(rejection);
        drop(algorithms);
        self.changed();
    }

    /// Forgets a version whose file was deleted. Returns whether it was known.
    pub fn remove(&self, id: &AlgorithmId) -> bool {
        let mut algorithms = self.algorithms.write().unwrap_or_else(|p| p.into_inner());
        let key = (id.owner.clone(), id.name.clone());
        let removed = algorithms
            .get_mut(&key)
            .map(|versions| versions.remove(&id.version).is_some())
            .unwrap_or(false);
        if algorithms.get(&key).is_some_and(|v| v.is_empty()) {
            algorithms.remove(&key);
        }
        drop(algorithms);
        if removed {
            self.changed();
        }
        removed
    }

    /// The SHA-256 of every component that serves a version: what the
    /// compiled-code cache must keep.
    pub fn hashes_in_use(&self) -> HashSet<String> {
        let algorithms = self.algorithms.read().unwrap_or_else(|p| p.into_inner());
        algorithms
            .values()
            .flat_map(|versions| versions.values())
            .filter_map(|slot| slot.serving.as_ref().map(|a| a.hash.clone()))
            .collect()
    }

    /// The slot of one version.
    pub fn slot(&self, id: &AlgorithmId) -> Option<Slot> {
        let algorithms = self.algorithms.read().unwrap_or_else(|p| p.into_inner());
        algorithms
            .get(&(id.owner.clone(), id.name.clone()))?
            .get(&id.version)
            .cloned()
    }

    /// Every known version, for listings, compiling ones included. `flows`
    /// maps flow names to their references, to show which flow runs which
    /// version.
    pub fn list(&self, flows: &[(String, AlgorithmRef)]) -> Vec<PluginInfo> {
        let resolved: Vec<(String, Option<String>)> = flows
            .iter()
            .map(|(name, r)| (name.clone(), self.resolve(r).map(|a| a.id.to_string())))
            .collect();
        let mut slots: BTreeMap<AlgorithmId, Option<Slot>> = self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|id| (id.clone(), None))
            .collect();
        let algorithms = self.algorithms.read().unwrap_or_else(|p| p.into_inner());
        for ((owner, name), versions) in algorithms.iter() {
            for (version, slot) in versions {
                let id = AlgorithmId {
                    owner: owner.clone(),
                    name: name.clone(),
                    version: version.clone(),
                };
                slots.insert(id, Some(slot.clone()));
            }
        }
        drop(algorithms);
        // Sorted by owner, name and then version as semver (0.1.2 before
        // 0.1.10), not by the text of `owner/name/version`.
        slots
            .into_iter()
            .map(|(id, slot)| {
                let algorithm = id.to_string();
                let serving = slot.as_ref().and_then(|s| s.serving.as_ref());
                let rejected = slot.as_ref().and_then(|s| s.rejected.clone());
                PluginInfo {
                    status: if self.is_compiling(&id) {
                        "compiling"
                    } else if rejected.is_some() {
                        "rejected"
                    } else {
                        "ok"
                    },
                    hash: serving.map(|a| a.hash.clone()),
                    size: serving.map(|a| a.size),
                    loaded_at: serving.map(|a| a.loaded_at),
                    initial_memory_bytes: serving.and_then(|a| a.initial_memory_bytes),
                    world: serving.map(|a| a.world()),
                    rejected,
                    flows: resolved
                        .iter()
                        .filter(|(_, r)| r.as_deref() == Some(algorithm.as_str()))
                        .map(|(f, _)| f.clone())
                        .collect(),
                    algorithm,
                }
            })
            .collect()
    }
}

/// The algorithm a plugin-directory path holds: `<dir>/<owner>/<name>/<version>.wasm`.
/// Anything else (temporary files of a copy in progress, say) is `None`.
pub fn id_from_path(dir: &Path, path: &Path) -> Option<AlgorithmId> {
    let rel = path.strip_prefix(dir).ok()?;
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
    let [owner, name, file] = parts.as_slice() else {
        return None;
    };
    let version = file.strip_suffix(".wasm")?;
    if !crate::config::is_valid_name(owner) || !crate::config::is_valid_name(name) {
        return None;
    }
    Some(AlgorithmId {
        owner: owner.to_string(),
        name: name.to_string(),
        version: semver::Version::parse(version).ok()?,
    })
}

/// Reads and loads one plugin file into the registry, off the async
/// threads, once a compile slot is free. Returns the outcome for logging by
/// the caller, which marks the version [`Registry::compiling`] meanwhile.
pub async fn load_file(
    sandbox: &Arc<Sandbox>,
    registry: &Registry,
    id: AlgorithmId,
    path: PathBuf,
) -> Result<Arc<Algorithm>, Rejection> {
    let lock = registry.load_lock(&id);
    let _in_order = lock.lock().await;
    // Never closed: the registry owns the semaphore.
    let _slot = registry.compile_slots.acquire().await.ok();
    let sb = sandbox.clone();
    let (p, i) = (path.clone(), id.clone());
    // Below the router's priority: a compile never takes the CPU from
    // the messages being served.
    let loaded = crate::sandbox::background::run(move || {
        let bytes = std::fs::read(&p).map_err(|e| {
            (
                String::new(),
                anyhow::anyhow!("cannot read {}: {e}", p.display()),
            )
        })?;
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        sb.load(i, &bytes).map_err(|e| (hash, e))
    })
    .await;
    match loaded {
        Some(Ok(algorithm)) => {
            registry.insert(path, algorithm);
            Ok(registry
                .slot(&id)
                .and_then(|s| s.serving)
                .expect("just inserted"))
        }
        Some(Err((hash, error))) => {
            let rejection = Rejection {
                reason: format!("{error:#}"),
                hash,
                at: SystemTime::now(),
            };
            registry.reject(path, &id, rejection.clone());
            Err(rejection)
        }
        None => {
            let rejection = Rejection {
                reason: "loader failed: its thread could not start or panicked".into(),
                hash: String::new(),
                at: SystemTime::now(),
            };
            registry.reject(path, &id, rejection.clone());
            Err(rejection)
        }
    }
}

/// Every `<owner>/<name>/<version>.wasm` under `dir`.
pub fn scan(dir: &Path) -> Vec<(AlgorithmId, PathBuf)> {
    let mut found = Vec::new();
    let Ok(owners) = std::fs::read_dir(dir) else {
        return found;
    };
    for owner in owners.flatten() {
        let Ok(names) = std::fs::read_dir(owner.path()) else {
            continue;
        };
        for name in names.flatten() {
            let Ok(files) = std::fs::read_dir(name.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if let Some(id) = id_from_path(dir, &path)
                    && path.is_file()
                {
                    found.push((id, path));
                }
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_ids() {
        let dir = Path::new("/p");
        let id = id_from_path(dir, Path::new("/p/ezra/store_file/0.1.0.wasm")).unwrap();
        assert_eq!(id.to_string(), "ezra/store_file/0.1.0");
        for other in [
            "/p/ezra/store_file/0.1.0.wasm.tmp",
            "/p/ezra/store_file/.0.1.0.wasm",
            "/p/ezra/store_file/latest.wasm",
            "/p/ezra/0.1.0.wasm",
            "/p/ezra/a/b/0.1.0.wasm",
        ] {
            assert!(id_from_path(dir, Path::new(other)).is_none(), "{other}");
        }
    }

    #[test]
    fn versions_are_listed_in_semver_order() {
        let registry = Registry::new();
        for (owner, name, version) in [
            ("ezra", "store_file", "0.1.10"),
            ("ezra", "store_file", "0.1.2"),
            ("ezra", "store_file", "0.2.0"),
            ("ezra", "store_file", "0.2.0-rc.1"),
            ("ezra", "store_file", "10.0.0"),
            ("ezra", "store_file", "9.0.0"),
            ("ezra", "echo", "1.0.0"),
            ("bob", "store_file", "0.0.1"),
        ] {
            let id = AlgorithmId {
                owner: owner.into(),
                name: name.into(),
                version: semver::Version::parse(version).unwrap(),
            };
            let path = PathBuf::from(format!("/p/{id}.wasm"));
            registry.reject(
                path,
                &id,
                Rejection {
                    reason: "test".into(),
                    hash: String::new(),
                    at: SystemTime::now(),
                },
            );
        }
        let listed: Vec<String> = registry
            .list(&[])
            .into_iter()
            .map(|p| p.algorithm)
            .collect();
        assert_eq!(
            listed,
            [
                "bob/store_file/0.0.1",
                "ezra/echo/1.0.0",
                "ezra/store_file/0.1.2",
                "ezra/store_file/0.1.10",
                "ezra/store_file/0.2.0-rc.1",
                "ezra/store_file/0.2.0",
                "ezra/store_file/9.0.0",
                "ezra/store_file/10.0.0",
            ]
        );
    }

    #[test]
    fn a_version_is_listed_as_compiling_until_its_last_load_ends() {
        let registry = Arc::new(Registry::new());
        let id = AlgorithmId {
            owner: "ezra".into(),
            name: "big".into(),
            version: semver::Version::new(0, 1, 0),
        };
        let reference: AlgorithmRef = "ezra/big".parse().unwrap();
        let status = |r: &Registry| {
            r.list(&[])
                .into_iter()
                .map(|p| p.status)
                .collect::<Vec<_>>()
        };
        let (first, second) = (registry.compiling(&id), registry.compiling(&id));
        assert_eq!(status(&registry), ["compiling"]);
        assert!(registry.any_compiling() && registry.compiling_matches(&reference));
        drop(first);
        registry.reject(
            PathBuf::from("/p/ezra/big/0.1.0.wasm"),
            &id,
            Rejection {
                reason: "test".into(),
                hash: String::new(),
                at: SystemTime::now(),
            },
        );
        assert_eq!(status(&registry), ["compiling"]);
        drop(second);
        assert_eq!(status(&registry), ["rejected"]);
        assert!(!registry.any_compiling() && !registry.compiling_matches(&reference));
    }
}

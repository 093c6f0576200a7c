//! Hot reload: watches the plugin directory and keeps the registry in step
//! with it, without a restart.
//!
//! Events from `notify` are debounced per file: a file is looked at once no
//! event has touched it for [`QUIET`], so a copy arriving in several writes
//! is read once it is whole (and if it was read too early, it fails to
//! validate, is rejected, and the next write's event loads it again). A file
//! renamed into place is whole at once and is loaded without waiting. Files
//! are compiled on the blocking pool, off the flows' path. A periodic rescan
//! catches anything the watcher missed, and the watcher is re-created if it
//! fails. The safe way to deploy is still to write a temporary name and
//! rename it into place.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::registry::{id_from_path, scan};
use crate::router::Router;

/// How long a file must be left alone before it is loaded.
const QUIET: Duration = Duration::from_millis(300);
/// How often the whole directory is rescanned, as a safety net.
const RESCAN: Duration = Duration::from_secs(10);

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    size: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| Stamp {
        size: meta.len(),
        modified: meta.modified().ok(),
    })
}

enum Event {
    /// Paths touched; `renamed` when a rename put them in place.
    Paths {
        paths: Vec<PathBuf>,
        renamed: bool,
    },
    Error(String),
}

fn watch(
    dir: &Path,
    tx: mpsc::UnboundedSender<Event>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let _ = tx.send(match res {
            // Reads (our own scans among them) change nothing; reacting to
            // them would make every scan trigger another.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => return,
            Ok(event) => Event::Paths {
                renamed: matches!(
                    event.kind,
                    notify::EventKind::Modify(notify::event::ModifyKind::Name(
                        notify::event::RenameMode::To | notify::event::RenameMode::Both
                    ))
                ),
                paths: event.paths,
            },
            Err(e) => Event::Error(e.to_string()),
        });
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Starts watching the router's plugin directory.
pub fn spawn(router: Arc<Router>) -> JoinHandle<()> {
    tokio::spawn(async move { run(router).await })
}

async fn run(router: Arc<Router>) {
    let dir = router.plugins_dir().to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = match watch(&dir, tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "Cannot watch the plugin directory; relying on rescans every 10 s.");
            None
        }
    };
    let mut files = Files::new(dir);
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.reset();
    let mut rearm_at: Option<Instant> = None;
    loop {
        let sleep_until = files
            .next_due()
            .into_iter()
            .chain(rearm_at)
            .min()
            .unwrap_or_else(|| Instant::now() + RESCAN);
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Paths { paths, renamed }) => files.touched(paths, renamed),
                Some(Event::Error(e)) => {
                    tracing::warn!(error = %e, "The plugin directory watcher failed; re-creating it.");
                    watcher = None;
                    rearm_at = Some(Instant::now() + Duration::from_secs(1));
                }
                None => return,
            },
            _ = tokio::time::sleep_until(sleep_until.into()) => {}
            _ = rescan.tick() => files.rescan(),
        }
        if rearm_at.is_some_and(|t| t <= Instant::now()) {
            rearm_at = None;
            match watch(&files.dir, tx.clone()) {
                Ok(w) => {
                    watcher = Some(w);
                    files.rescan();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot re-create the plugin directory watcher; trying again.");
                    rearm_at = Some(Instant::now() + Duration::from_secs(5));
                }
            }
        }
        for path in files.take_due() {
            settle_file(&router, &files.dir, &path, &mut files.known).await;
        }
        let _ = &watcher;
    }
}

/// The debouncing state of the plugin directory: what the registry holds
/// and which files wait to be looked at.
struct Files {
    /// The plugin directory.
    dir: PathBuf,
    /// What the registry holds, by file.
    known: HashMap<PathBuf, Stamp>,
    /// Files touched, with when they were last touched.
    pending: HashMap<PathBuf, Instant>,
    /// Files renamed into place: whole, so due without the quiet period.
    renamed_in: HashSet<PathBuf>,
}

impl Files {
    /// What the plugin directory holds now, with nothing pending.
    fn new(dir: PathBuf) -> Self {
        let known = scan(&dir)
            .into_iter()
            .filter_map(|(_, p)| stamp(&p).map(|s| (p, s)))
            .collect();
        Self {
            dir,
            known,
            pending: HashMap::new(),
            renamed_in: HashSet::new(),
        }
    }

    /// When the next pending file is due: now if one was renamed in.
    fn next_due(&self) -> Option<Instant> {
        if self.renamed_in.is_empty() {
            self.pending.values().min().map(|t| *t + QUIET)
        } else {
            Some(Instant::now())
        }
    }

    /// Notes the paths of a watcher event.
    fn touched(&mut self, paths: Vec<PathBuf>, renamed: bool) {
        tracing::trace!(?paths, renamed, "Plugin directory event.");
        let now = Instant::now();
        // A rename's destination is the last path.
        let destination = paths.last().cloned();
        for p in paths {
            if renamed && Some(&p) == destination.as_ref() && id_from_path(&self.dir, &p).is_some()
            {
                self.renamed_in.insert(p.clone());
                self.pending.insert(p, now);
            } else if p.is_dir() || id_from_path(&self.dir, &p).is_none() {
                // A directory appeared or vanished, or a temporary
                // file was renamed: compare the whole tree.
                for path in diff(&self.dir, &self.known) {
                    self.pending.insert(path, now);
                }
            } else {
                // Written in place: wait for the writes to stop.
                self.renamed_in.remove(&p);
                self.pending.insert(p, now);
            }
        }
    }

    /// Compares the whole tree with what the registry holds; files that
    /// differ become pending (keeping when they were last touched).
    fn rescan(&mut self) {
        let now = Instant::now();
        for path in diff(&self.dir, &self.known) {
            self.pending.entry(path).or_insert(now);
        }
    }

    /// Takes the files whose quiet period is over, or that were renamed in.
    fn take_due(&mut self) -> Vec<PathBuf> {
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(p, t)| t.elapsed() >= QUIET || self.renamed_in.contains(*p))
            .map(|(p, _)| p.clone())
            .collect();
        for path in &due {
            self.pending.remove(path);
            self.renamed_in.remove(path);
        }
        due
    }
}

/// Files whose stamp differs from what the registry holds, and files that
/// disappeared.
fn diff(dir: &Path, known: &HashMap<PathBuf, Stamp>) -> Vec<PathBuf> {
    let found: HashMap<PathBuf, Option<Stamp>> = scan(dir)
        .into_iter()
        .map(|(_, p)| {
            let s = stamp(&p);
            (p, s)
        })
        .collect();
    let mut out: Vec<PathBuf> = found
        .iter()
        .filter(|(p, s)| known.get(*p).copied() != **s)
        .map(|(p, _)| p.clone())
        .collect();
    out.extend(known.keys().filter(|p| !found.contains_key(*p)).cloned());
    out
}

/// Brings the registry in line with one file.
async fn settle_file(
    router: &Router,
    dir: &Path,
    path: &Path,
    known: &mut HashMap<PathBuf, Stamp>,
) {
    let Some(id) = id_from_path(dir, path) else {
        return;
    };
    match stamp(path) {
        Some(s) => {
            if known.get(path) == Some(&s) && router.services().registry.slot(&id).is_some() {
                return;
            }
            let started = Instant::now();
            router.load_plugin(id.clone(), path.to_path_buf()).await;
            tracing::debug!(algorithm = %id, took = ?started.elapsed(), "Plugin file handled.");
            // Content that changed while it was being loaded gets another look.
            if stamp(path) == Some(s) {
                known.insert(path.to_path_buf(), s);
            } else {
                known.remove(path);
            }
        }
        None => {
            known.remove(path);
            if router.services().registry.remove(&id) {
                tracing::warn!(
                    algorithm = %id,
                    "Algorithm version removed: flows pinned to it pause (their messages stay in the broker); flows following the latest fall back."
                );
            }
        }
    }
}

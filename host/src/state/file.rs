//! How the router's redb files are opened, rewritten and kept private: a
//! damaged file is a one-line error naming it, never a panic nor an empty
//! start, and the state directory is private to the router's user.

use std::cell::Cell;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Damaged, FAILURES, META, PARKED, PARKED_KEYS, ROLLOUT_SERVING, SECRETS, TOKENS};

/// Copies every table of `db` into a new file and puts it in place of
/// `path`: nothing the old file freed survives.
pub(super) fn rewrite(db: Database, path: &Path) -> anyhow::Result<()> {
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
        copy_table(&from, &to, PARKED_KEYS)?;
        copy_table(&from, &to, PARKED)?;
        copy_table(&from, &to, ROLLOUT_SERVING)?;
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

/// The name a damaged file is moved to: `<file>.damaged-<timestamp>`.
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

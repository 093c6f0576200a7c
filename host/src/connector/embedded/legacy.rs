//! Migration of a store written by the previous version: one redb file
//! (`<state>/broker-<name>.redb` by default, or the configured `path`) with
//! the tables `messages`, `state` and `marks`.
//!
//! At open, if that file exists, its messages are copied into a new log in
//! `<dir>.migrating`, which is made durable and marked complete; then the
//! old file is renamed to `<file>.migrated-<time>` (kept: delete it once the
//! router runs well) and the new log renamed into place. A crash at any
//! point leaves either the old file (the migration runs again) or a
//! complete new log (its rename is finished). The old version's crash
//! semantics are applied on the way: a lease is freed, and a message below
//! its topic's receive mark counts one more receive.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::log;
use super::store::StoreError;
use crate::message::unix_ms;
use crate::state::{Damaged, open_redb};

/// (id, headers as JSON, payload, enqueued at ms).
type StoredMessage<'a> = (&'a str, &'a str, &'a [u8], u64);
const MESSAGES: TableDefinition<(&str, u64), StoredMessage> = TableDefinition::new("messages");
/// (receive count, visible at ms, leased).
const STATE: TableDefinition<(&str, u64), (u32, u64, bool)> = TableDefinition::new("state");
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("marks");

/// The marker of a complete migration, inside the new log's directory
/// until it is renamed into place.
const COMPLETE: &str = "MIGRATED";

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn err(what: String) -> StoreError {
    StoreError::Storage(what)
}

/// Makes `dir` the store's directory: finishes an interrupted migration,
/// or migrates the previous version's file (`legacy`, or `dir` itself when
/// it is a file). Blocking.
pub fn prepare(dir: &Path, legacy: Option<&Path>, damaged: Damaged) -> Result<(), StoreError> {
    let staging = with_suffix(dir, ".migrating");
    if staging.exists() {
        if staging.join(COMPLETE).exists() && !dir.exists() {
            return finish(&staging, dir);
        }
        std::fs::remove_dir_all(&staging).map_err(|e| {
            err(format!(
                "cannot remove the unfinished migration {}: {e}",
                staging.display()
            ))
        })?;
    }
    let old = if dir.is_file() {
        Some(dir.to_path_buf())
    } else {
        legacy.filter(|l| l.is_file()).map(Path::to_path_buf)
    };
    let Some(old) = old else { return Ok(()) };
    if old != dir && dir.exists() {
        return Err(err(format!(
            "both {} (an embedded broker store of the previous version) and {} (this version's) exist: move the old file away if its messages were migrated before, or the new directory if the old file is the one to keep",
            old.display(),
            dir.display()
        )));
    }
    let count = migrate(&old, &staging, damaged)?;
    let kept = with_suffix(&old, &format!(".migrated-{}", stamp()));
    std::fs::rename(&old, &kept).map_err(|e| {
        err(format!(
            "cannot rename {} to {}: {e}",
            old.display(),
            kept.display()
        ))
    })?;
    finish(&staging, dir)?;
    tracing::info!(
        from = %old.display(),
        to = %dir.display(),
        kept = %kept.display(),
        messages = count,
        "Migrated the embedded broker's store of the previous version to its new log; the old file is kept (delete it once the router runs well)."
    );
    Ok(())
}

fn stamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "")
}

fn finish(staging: &Path, dir: &Path) -> Result<(), StoreError> {
    std::fs::rename(staging, dir).map_err(|e| {
        err(format!(
            "cannot rename {} to {}: {e}",
            staging.display(),
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(dir.join(COMPLETE));
    if let Some(parent) = dir.parent() {
        log::sync_dir(parent).map_err(|e| err(format!("cannot sync {}: {e}", parent.display())))?;
    }
    Ok(())
}

/// Copies the messages of the redb file `old` into a new log in `staging`;
/// returns how many.
fn migrate(old: &Path, staging: &Path, damaged: Damaged) -> Result<usize, StoreError> {
    let db = open_redb(old, damaged)?;
    let read = |e: &dyn std::fmt::Display| err(format!("cannot read {}: {e}", old.display()));
    let tx = db.begin_read().map_err(|e| read(&e))?;
    let now = unix_ms(SystemTime::now());
    let marks = read_marks(&tx, old)?;
    let state = match tx.open_table(STATE) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(read(&e)),
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(|e| err(format!("cannot create {}: {e}", staging.display())))?;
    let write = |e: std::io::Error| err(format!("cannot write {}: {e}", staging.display()));
    let (file, mut len) = log::create_segment(staging, 1, &[]).map_err(write)?;
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut count = 0usize;
    let mut body = Vec::new();
    let mut flush = |body: &mut Vec<u8>| -> Result<(), StoreError> {
        if body.is_empty() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(body.len() + 8);
        log::frame(&mut frame, body);
        std::os::unix::fs::FileExt::write_all_at(&file, &frame, len).map_err(write)?;
        len += frame.len() as u64;
        body.clear();
        Ok(())
    };
    match tx.open_table(MESSAGES) {
        Ok(messages) => {
            for entry in messages.iter().map_err(|e| read(&e))? {
                let (key, row) = entry.map_err(|e| read(&e))?;
                let (topic, seq) = key.value();
                let (id, headers, payload, enqueued_ms) = row.value();
                let headers: Vec<(String, String)> = serde_json::from_str(headers)
                    .map_err(|e| read(&format!("the headers of message {id}: {e}")))?;
                let stored = match &state {
                    Some(s) => s
                        .get((topic, seq))
                        .map_err(|e| read(&e))?
                        .map(|v| v.value()),
                    None => None,
                };
                let below_mark = seq < marks.get(topic).copied().unwrap_or(0);
                let (receives, visible_ms) = carried_over(stored, enqueued_ms, now, below_mark);
                log::put_message(
                    &mut body,
                    topic,
                    seq,
                    receives,
                    visible_ms,
                    enqueued_ms,
                    id,
                    &headers,
                    payload,
                );
                let n = next.entry(topic.to_string()).or_default();
                *n = (*n).max(seq + 1);
                count += 1;
                if body.len() >= 16 << 20 {
                    flush(&mut body)?;
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(read(&e)),
    }
    for (topic, n) in &next {
        log::put_next(&mut body, topic, *n);
    }
    flush(&mut body)?;
    file.sync_all().map_err(write)?;
    std::fs::write(staging.join(COMPLETE), b"").map_err(write)?;
    log::sync_dir(staging).map_err(write)?;
    Ok(count)
}

/// The receive marks of the old file, by topic.
fn read_marks(tx: &redb::ReadTransaction, old: &Path) -> Result<HashMap<String, u64>, StoreError> {
    let read = |e: &dyn std::fmt::Display| err(format!("cannot read {}: {e}", old.display()));
    let mut marks = HashMap::new();
    match tx.open_table(MARKS) {
        Ok(table) => {
            for entry in table.iter().map_err(|e| read(&e))? {
                let (k, v) = entry.map_err(|e| read(&e))?;
                marks.insert(k.value().to_string(), v.value());
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(read(&e)),
    }
    Ok(marks)
}

/// The receive count and visibility (unix ms) a message takes into the new
/// log, from its row of the `state` table if it has one: the old version's
/// crash semantics applied, a lease freed and a message below its topic's
/// receive mark counted one more receive.
fn carried_over(
    stored: Option<(u32, u64, bool)>,
    enqueued_ms: u64,
    now: u64,
    below_mark: bool,
) -> (u32, u64) {
    let (mut receives, mut visible_ms, leased) = stored.unwrap_or((0, enqueued_ms, false));
    if leased {
        visible_ms = now;
    }
    if below_mark {
        receives = receives.saturating_add(1);
    }
    (receives, visible_ms)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::store::{Store, StoreOptions};
    use super::*;

    /// A store file as the previous version wrote it: `t` has three
    /// messages (one retried twice, one leased at the crash), its receive
    /// mark above the first two; `u` has one.
    fn write_previous_version(path: &Path) {
        let db = redb::Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut messages = tx.open_table(MESSAGES).unwrap();
            let mut state = tx.open_table(STATE).unwrap();
            let mut marks = tx.open_table(MARKS).unwrap();
            let headers = r#"[["k","v"],["n","1"]]"#;
            for (seq, id, body, st) in [
                (0u64, "id-0", "retried", (2u32, 0u64, false)),
                (1, "id-1", "leased", (1, u64::MAX, true)),
                (5, "id-5", "fresh", (0, 0, false)),
            ] {
                messages
                    .insert(("t", seq), (id, headers, body.as_bytes(), 1_000))
                    .unwrap();
                state.insert(("t", seq), st).unwrap();
            }
            messages
                .insert(("u", 7), ("id-7", "[]", b"other".as_slice(), 2_000))
                .unwrap();
            state.insert(("u", 7), (0, 0, false)).unwrap();
            marks.insert("t", 2).unwrap();
        }
        tx.commit().unwrap();
    }

    async fn drain(
        store: &Store,
        topic: &str,
    ) -> Vec<(String, String, u32, Vec<(String, String)>)> {
        store
            .receive(
                topic,
                10,
                Duration::from_secs(30),
                Duration::from_millis(50),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|(m, _)| {
                (
                    m.id,
                    String::from_utf8(m.payload).unwrap(),
                    m.attempt,
                    m.headers,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_store_file_of_the_previous_version_is_migrated_with_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("broker-local.redb");
        let new = dir.path().join("broker-local");
        write_previous_version(&old);
        // An earlier migration that a crash cut short is started over.
        let staging = with_suffix(&new, ".migrating");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join(log::segment_name(1)), b"half").unwrap();
        let options = StoreOptions {
            legacy: Some(old.clone()),
            ..StoreOptions::default()
        };
        {
            let store = Store::open_with(&new, &options).unwrap();
            let mut got = drain(&store, "t").await;
            got.sort();
            let h = vec![("k".to_string(), "v".to_string()), ("n".into(), "1".into())];
            assert_eq!(
                got,
                vec![
                    // Two receives, one more below the mark, this one.
                    ("id-0".into(), "retried".into(), 4, h.clone()),
                    // The lease is freed; counted as below the mark.
                    ("id-1".into(), "leased".into(), 3, h.clone()),
                    ("id-5".into(), "fresh".into(), 1, h.clone()),
                ]
            );
            assert_eq!(drain(&store, "u").await.len(), 1);
            store.close().await.unwrap();
        }
        assert!(!old.exists());
        assert!(!staging.exists());
        let kept: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("broker-local.redb.migrated-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        // Opened again, nothing is migrated twice; the counts stay.
        let store = Store::open_with(&new, &options).unwrap();
        assert_eq!(store.peek("t", 10).unwrap().len(), 3);
        assert_eq!(store.peek("u", 10).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_configured_path_that_is_a_previous_version_file_becomes_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custom.redb");
        write_previous_version(&path);
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.peek("t", 10).unwrap().len(), 3);
        }
        assert!(path.is_dir());
        // A migration cut short between its two renames is finished.
        let staging = with_suffix(&path, ".migrating");
        std::fs::rename(&path, &staging).unwrap();
        std::fs::write(staging.join(COMPLETE), b"").unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.peek("u", 10).unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_previous_version_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("broker-local.redb");
        std::fs::write(&old, vec![7u8; 5000]).unwrap();
        let options = StoreOptions {
            legacy: Some(old.clone()),
            ..StoreOptions::default()
        };
        let Err(e) = Store::open_with(&dir.path().join("broker-local"), &options) else {
            panic!("migrated a damaged file");
        };
        let e = e.to_string();
        assert!(e.contains(&old.display().to_string()), "{e}");
        assert!(e.contains("--move-damaged-aside"), "{e}");
        // The old file is left as it was.
        assert_eq!(std::fs::read(&old).unwrap(), vec![7u8; 5000]);
    }
}

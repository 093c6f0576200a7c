//! Opening the store: migrating, locking, reading every segment back.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Instant;

use super::cleaner::Cleaner;
use super::writer::Writer;

use super::super::legacy;
use super::super::log::{self, Live, Record, ReplayError};
use super::*;
use crate::state::{Damaged, StoreFileError, aside_name};

impl Store {
    /// Opens or creates the store in the directory `path`, refusing a
    /// damaged one. Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// Opens or creates the store in the directory `path` (migrating a
    /// previous version's file first, see `legacy`). Blocking.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        legacy::prepare(path, options.legacy.as_deref(), options.damaged)?;
        let (lock, opened) = open_or_move_aside(path, options.damaged)?;
        let Loaded {
            mut topics,
            live,
            files,
            last,
            seg_len,
        } = opened;
        // A new segment at every open: it never follows a torn frame, and it
        // seals the one before. Crash counting (see the module
        // documentation) goes into its first frame.
        let first = first_frame(&mut topics, last);
        let id = last.map_or(1, |(id, _)| id + 1);
        let (file, len) = log::create_segment(path, id, &first).map_err(|e| {
            storage(format!(
                "cannot write {}: {e}",
                path.join(log::segment_name(id)).display()
            ))
        })?;
        let file = Arc::new(file);
        let mut files = files;
        files.insert(id, file.clone());
        let mut seg_len = seg_len;
        seg_len.insert(id, len);
        let shared = Arc::new(Shared {
            dir: path.to_path_buf(),
            files: RwLock::new(files),
            outage: Mutex::new(None),
            commits: Default::default(),
            _lock: lock,
        });
        let topics = Arc::new(Mutex::new(topics));
        let mut writer = Writer {
            shared: shared.clone(),
            topics: topics.clone(),
            active: file,
            active_id: id,
            active_len: len,
            seg_len,
            live,
            segment_bytes: options.segment_bytes.max(4096),
            next_attempt: Instant::now(),
            backoff: REOPEN_BACKOFF.0,
            last_logged: None,
            cleaner: Cleaner::start(path.to_path_buf()).map_err(storage)?,
            asked_to_prepare: id,
        };
        writer.delete_dead_segments();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(storage)?;
        Ok(Self {
            shared,
            topics,
            writer: Some(tx),
            thread: Some(thread),
        })
    }
}

/// What reading the log at open found.
struct Loaded {
    topics: HashMap<String, TopicState>,
    live: Live,
    files: HashMap<u64, Arc<File>>,
    /// The newest segment and where its last whole frame ends.
    last: Option<(u64, u64)>,
    seg_len: BTreeMap<u64, u64>,
}

enum Opened {
    Damaged(PathBuf, String),
    Other(StoreError),
}

impl Opened {
    fn into_error(self) -> StoreError {
        match self {
            Opened::Damaged(path, reason) => StoreFileError::Damaged { path, reason }.into(),
            Opened::Other(e) => e,
        }
    }
}

/// Creates the directory if new, takes its lock, and reads every segment
/// (see the module documentation).
fn open_dir(dir: &Path) -> Result<(File, Loaded), Opened> {
    let io = |what: String| Opened::Other(StoreError::Storage(what));
    let lock = lock_dir(dir)?;
    let ids =
        log::segment_ids(dir).map_err(|e| io(format!("cannot list {}: {e}", dir.display())))?;
    for pair in ids.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(Opened::Damaged(
                dir.join(log::segment_name(pair[0] + 1)),
                "this segment is missing (later ones are there)".into(),
            ));
        }
    }
    let mut replay = Replay::default();
    let mut files = HashMap::new();
    let mut seg_len = BTreeMap::new();
    let mut last = None;
    let mut unused = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let newest = i + 1 == ids.len();
        let replayed = log::replay(dir, id, newest, |record, loc| replay.apply(record, loc));
        let replayed = match replayed {
            Ok(r) => r,
            Err(ReplayError::Damaged(path, why)) => return Err(Opened::Damaged(path, why)),
            Err(ReplayError::Io(path, e)) => {
                return Err(io(format!("cannot read {}: {e}", path.display())));
            }
        };
        let path = dir.join(log::segment_name(id));
        let file = log::open_segment(dir, id)
            .map_err(|e| io(format!("cannot open {}: {e}", path.display())))?;
        if replayed.torn > 0 {
            tracing::warn!(
                file = %path.display(),
                bytes = replayed.torn,
                "The embedded broker's log ends in a write a crash cut short (never acknowledged); cutting it off."
            );
            file.set_len(replayed.good_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| io(format!("cannot cut {}: {e}", path.display())))?;
        }
        if replayed.zeros > 0 && replayed.torn == 0 {
            unused.push((id, replayed.good_len));
        }
        seg_len.insert(id, replayed.good_len);
        files.insert(id, Arc::new(file));
        last = Some((id, replayed.good_len));
    }
    check_seals(dir, &replay.seals, &seg_len)?;
    // The space segments were prepared with and never used: no longer
    // needed, as every open starts a new segment. Only once the log is
    // known whole, so a store refused as damaged is left as it was.
    for (id, len) in unused {
        let path = dir.join(log::segment_name(id));
        files[&id]
            .set_len(len)
            .and_then(|()| files[&id].sync_all())
            .map_err(|e| io(format!("cannot cut {}: {e}", path.display())))?;
    }
    let Replay {
        mut topics, marks, ..
    } = replay;
    let mut live = Live::default();
    for (name, t) in topics.iter_mut() {
        t.mark = marks.get(name).copied().unwrap_or(0);
        let metas: Vec<(u64, Meta)> = t.meta.iter().map(|(&s, &m)| (s, m)).collect();
        for (seq, m) in metas {
            live.add(m.loc);
            t.queue.insert((m.visible_ms, seq));
        }
    }
    Ok((
        lock,
        Loaded {
            topics,
            live,
            files,
            last,
            seg_len,
        },
    ))
}

/// Opens the directory; a damaged store is moved aside and an empty one
/// opened in its place when `damaged` says so.
fn open_or_move_aside(path: &Path, damaged: Damaged) -> Result<(File, Loaded), StoreError> {
    match open_dir(path) {
        Err(Opened::Damaged(file, reason)) if damaged == Damaged::MoveAside => {
            let aside = aside_name(path);
            std::fs::rename(path, &aside).map_err(|e| {
                storage(format!(
                    "cannot move the damaged store {} to {}: {e}",
                    path.display(),
                    aside.display()
                ))
            })?;
            tracing::warn!(
                path = %path.display(),
                file = %file.display(),
                moved_to = %aside.display(),
                reason = %reason,
                "Moved a damaged store file aside; starting with an empty one."
            );
            open_dir(path).map_err(Opened::into_error)
        }
        other => other.map_err(Opened::into_error),
    }
}

/// The first frame of the segment started at open: the seal of the `last`
/// segment, every topic's next sequence number and the crash counting (see
/// the module documentation), which resets the receive marks in `topics`.
fn first_frame(topics: &mut HashMap<String, TopicState>, last: Option<(u64, u64)>) -> Vec<u8> {
    let mut first = Vec::new();
    if let Some((id, len)) = last {
        log::put_seal(&mut first, id, len);
    }
    for (name, t) in topics.iter_mut() {
        log::put_next(&mut first, name, t.next_seq);
        let mark = std::mem::take(&mut t.mark);
        t.mark_durable = 0;
        let mut bumped = Vec::new();
        for (&seq, m) in t.meta.iter_mut() {
            if seq < mark {
                m.receives = m.receives.saturating_add(1);
                m.durable = m.receives;
                bumped.push((seq, m.receives, m.visible_ms));
            }
        }
        if !bumped.is_empty() {
            log::put_state(&mut first, name, bumped.into_iter());
        }
    }
    first
}

/// Creates the directory if new and takes its lock.
fn lock_dir(dir: &Path) -> Result<File, Opened> {
    let io = |what: String| Opened::Other(StoreError::Storage(what));
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(io(format!("{} is not a directory", dir.display())));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io(format!("cannot create {}: {e}", dir.display())))?;
        }
        Err(e) => return Err(io(format!("cannot open {}: {e}", dir.display()))),
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| io(format!("cannot open {}: {e}", lock_path.display())))?;
    // SAFETY: `flock` on a descriptor this function owns.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } == 0;
    if !locked {
        return Err(Opened::Other(StoreError::Locked {
            path: dir.to_path_buf(),
        }));
    }
    Ok(lock)
}

/// What replaying the segments gathers besides the open files.
#[derive(Default)]
struct Replay {
    topics: HashMap<String, TopicState>,
    /// Receive marks, by topic.
    marks: HashMap<String, u64>,
    /// Segment lengths when the next segment began, by segment.
    seals: HashMap<u64, u64>,
}

impl Replay {
    /// Applies one record of the log, oldest first.
    fn apply(&mut self, record: Record<'_>, loc: Loc) {
        match record {
            Record::Insert(m) => {
                let t = self.topics.entry(m.topic.to_string()).or_default();
                t.next_seq = t.next_seq.max(m.seq + 1);
                t.meta.insert(
                    m.seq,
                    Meta {
                        receives: m.receives,
                        durable: m.receives,
                        visible_ms: m.visible_ms,
                        leased: false,
                        loc,
                    },
                );
            }
            Record::State(topic, rows) => {
                if let Some(t) = self.topics.get_mut(topic) {
                    for (seq, receives, visible_ms) in rows {
                        if let Some(m) = t.meta.get_mut(&seq) {
                            (m.receives, m.durable, m.visible_ms) =
                                (receives, receives, visible_ms);
                        }
                    }
                }
            }
            Record::Delete(topic, seqs) => {
                if let Some(t) = self.topics.get_mut(topic) {
                    for seq in seqs {
                        t.meta.remove(&seq);
                    }
                }
            }
            Record::Mark(topic, 0) => {
                self.marks.remove(topic);
            }
            Record::Mark(topic, mark) => {
                self.marks.insert(topic.to_string(), mark);
            }
            Record::Next(topic, next) => {
                let t = self.topics.entry(topic.to_string()).or_default();
                t.next_seq = t.next_seq.max(next);
            }
            Record::Seal(id, len) => {
                self.seals.insert(id, len);
            }
        }
    }
}

/// Each seal must match its segment's length: a shorter segment lost a
/// frame that was durable.
fn check_seals(
    dir: &Path,
    seals: &HashMap<u64, u64>,
    seg_len: &BTreeMap<u64, u64>,
) -> Result<(), Opened> {
    for (&id, &len) in seals {
        if let Some(&actual) = seg_len.get(&id)
            && actual != len
        {
            return Err(Opened::Damaged(
                dir.join(log::segment_name(id)),
                format!("it is {actual} bytes long but was {len} when the next segment began"),
            ));
        }
    }
    Ok(())
}

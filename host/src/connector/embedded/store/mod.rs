//! The embedded broker's durable store: a log of segment files (see `log`).
//!
//! Every change (a publish, a retry's receive count, an acknowledgement, a
//! receive mark) is a record appended to the newest segment. One writer
//! thread takes every change that is ready, up to [`MAX_BATCH`] jobs and
//! [`MAX_BATCH_BYTES`] of payload, writes them as one frame with one
//! `write` and makes it durable with one `fdatasync` (group commit); a
//! change is acknowledged to its caller only then. A job may hold several
//! changes, committed together: [`Store::settle`] writes a message's outputs
//! and its acknowledgement in one frame, so after a crash either both
//! happened or neither.
//!
//! Memory holds, per topic, every message not yet acknowledged: its receive
//! count, when it is next visible, and where its record is in the log. A
//! receive reads the record back from its segment (the page cache, usually)
//! on the calling thread; nothing on the receive path goes through the
//! blocking pool.
//!
//! Segments are rolled at [`SEGMENT_BYTES`]: the new segment starts with
//! the next sequence number and receive mark of every topic, and the size
//! of the segment it follows (a seal: a non-newest segment shorter than its
//! seal is damaged). Whole segments are deleted, oldest first, once every
//! message written to them is acknowledged. A message that stays (a topic
//! nobody consumes, a long delay) would keep its segment and all later ones;
//! so when the segments hold more than twice the live messages plus two
//! segments, the oldest segment's live messages are copied forward (with
//! their current receive count) and the segment is deleted: the log stays
//! within about twice what it holds. The unlinking, and the creation of the
//! next segment's file ahead of its roll, happen on a cleaner thread, so a
//! roll holds up the next frame for one sync and one rename only.
//!
//! Leases live in memory only: receiving a message commits nothing, except
//! that the topic's receive mark is moved [`MARK_BLOCK`] sequence numbers
//! past the highest one received whenever a receive would pass it (once per
//! block of messages; the receive waits for that commit). At open after a
//! crash, every message left at or below the mark counts one more receive
//! (written at once), and the marks start over: so a receive cut short by
//! `kill -9` is counted, and `max_receives` holds across crashes, at the cost
//! of one receive counted too many for messages below the mark that were not
//! being handled at the crash. A release (retry) writes the message's count
//! and delay durably; so does a receive of a message whose lease expired
//! without a release. A clean close ([`Store::close`]) writes the exact
//! counts of leased messages and resets the marks, so a graceful restart
//! counts nothing extra.
//!
//! Memory changes and the queueing of their disk changes happen under one
//! lock, so the disk sees them in the same order. The router process owns
//! the directory (a lock file, `flock`).
//!
//! At open, every segment is read and checked (a CRC-32 per frame). A frame
//! cut short at the end of the newest segment, with no whole frame after
//! it, is the one batch a crash interrupted (never acknowledged): it is cut
//! off, with a warning. Anything else that fails a check is damage: the
//! start stops with an error naming the segment file and
//! `--move-damaged-aside`, which moves the whole directory aside.
//!
//! When a write or `fdatasync` fails (a full disk, say), the store marks
//! itself unavailable ([`Store::health`] says why, logged once), answers
//! writes with [`StoreError::Unavailable`] and receives nothing. Every
//! [`REOPEN_BACKOFF`] it tries a test write; once that succeeds it cuts the
//! newest segment back to the end of its last durable frame, starts a new
//! segment and is available again. Memory only ever reflects committed
//! frames, so nothing is reloaded.
//!
//! A store file written by the previous version (one redb file) is migrated
//! at open, see `legacy`.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::log::Loc;
use crate::message::Header;
use crate::state::{Damaged, StoreFileError};

/// The most payload one peek reads (see [`Store::peek`]).
pub const MAX_PEEK_BYTES: usize = 64 << 20;
/// The most jobs one commit takes.
const MAX_BATCH: usize = 4096;
/// About the most payload bytes one commit takes (a job is never split).
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How far past the highest sequence number received the receive mark is
/// moved when a receive passes it.
pub const MARK_BLOCK: u64 = 4096;
/// A segment is rolled once it is this large.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes of the test write before the store is used again after an outage.
const PROBE_BYTES: usize = 256 << 10;
/// The first and the longest wait between attempts to recover.
const REOPEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// An outage that starts this soon after the last one logged is logged at
/// debug level only, so a disk hovering at full does not flood the log.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(300);
/// The lock file in the store's directory.
const LOCK_FILE: &str = "LOCK";

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store.
    #[error("{path} is in use by another eventflow process (one router owns an embedded store)")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The disk failed, or a file is not what it should be.
    #[error("embedded store: {0}")]
    Storage(String),
    /// The lease ran out and the message was leased again, or settled.
    #[error(
        "the lease on message {id} of topic {topic} was lost (it expired and the message was redelivered)"
    )]
    LeaseLost {
        /// The topic.
        topic: String,
        /// The message id.
        id: String,
    },
    /// The writer thread is gone.
    #[error("embedded store is closed")]
    Closed,
    /// A write failed with an I/O error; the store recovers by itself once
    /// writes succeed again.
    #[error("embedded store {path} is unavailable until writes succeed again: {reason}")]
    Unavailable {
        /// The store directory.
        path: PathBuf,
        /// The I/O error that made it unavailable.
        reason: String,
    },
}

impl From<StoreFileError> for StoreError {
    fn from(e: StoreFileError) -> Self {
        match e {
            StoreFileError::Locked { path } => StoreError::Locked { path },
            other => StoreError::Storage(other.to_string()),
        }
    }
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// What to do with a damaged store.
    pub damaged: Damaged,
    /// A store file of the previous version to migrate, if it exists.
    pub legacy: Option<PathBuf>,
    /// Segment size (tests use small ones).
    pub segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            damaged: Damaged::Refuse,
            legacy: None,
            segment_bytes: SEGMENT_BYTES,
        }
    }
}

/// What the writer and the readers share.
struct Shared {
    dir: PathBuf,
    /// Open segments, by id, for reading.
    files: RwLock<HashMap<u64, Arc<File>>>,
    /// Why the store is unavailable.
    outage: Mutex<Option<String>>,
    /// Frames committed by the writer.
    commits: std::sync::atomic::AtomicU64,
    /// Held (`flock`) while the store is open.
    _lock: File,
}

impl Shared {
    fn file(&self, seg: u64) -> Option<Arc<File>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&seg)
            .cloned()
    }

    fn unavailable(&self) -> StoreError {
        let reason = self
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "it is recovering".into());
        StoreError::Unavailable {
            path: self.dir.clone(),
            reason,
        }
    }

    fn is_available(&self) -> bool {
        self.outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

/// A claim on one received message; settles it.
#[derive(Debug, Clone)]
pub struct Lease {
    topic: String,
    seq: u64,
    receives: u32,
    id: String,
    /// How long the lease lasts unless extended.
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    /// Receives so far, counted in memory.
    receives: u32,
    /// The receive count in the log.
    durable: u32,
    visible_ms: u64,
    leased: bool,
    /// Where the message's record is.
    loc: Loc,
}

#[derive(Default)]
struct TopicState {
    /// (visible at, seq) of every message not yet acknowledged.
    queue: BTreeSet<(u64, u64)>,
    meta: HashMap<u64, Meta>,
    next_seq: u64,
    notify: Arc<Notify>,
    /// The receive mark last handed to the writer.
    mark: u64,
    /// The receive mark in the log: messages below it may be handed out.
    mark_durable: u64,
}

impl TopicState {
    fn check(&self, lease: &Lease) -> Result<Meta, StoreError> {
        match self.meta.get(&lease.seq) {
            Some(m) if m.receives == lease.receives && m.leased => Ok(*m),
            _ => Err(StoreError::LeaseLost {
                topic: lease.topic.clone(),
                id: lease.id.clone(),
            }),
        }
    }

    fn reschedule(&mut self, seq: u64, meta: Meta) {
        if let Some(old) = self.meta.insert(seq, meta) {
            self.queue.remove(&(old.visible_ms, seq));
        }
        self.queue.insert((meta.visible_ms, seq));
    }
}

struct Row {
    seq: u64,
    id: String,
    headers: Vec<Header>,
    payload: Vec<u8>,
    enqueued_ms: u64,
}

enum Change {
    Insert(String, Vec<Row>),
    /// Writes (receives, visible at) per message.
    State(String, Vec<(u64, Meta)>),
    /// Acknowledged messages, with where their records are.
    Delete(String, Vec<(u64, Loc)>),
    /// Sets the topic's receive mark (0 removes it).
    Mark(String, u64),
    /// Starts a new segment once this frame is written (a clean close: the
    /// new segment seals the last one written, so a cut in it is damage,
    /// not a crash's torn write).
    Roll,
}

impl Change {
    fn bytes(&self) -> usize {
        match self {
            Change::Insert(_, rows) => rows.iter().map(|r| r.payload.len() + 64).sum(),
            Change::State(_, rows) => rows.len() * 32,
            Change::Delete(_, seqs) => seqs.len() * 16,
            Change::Mark(..) | Change::Roll => 16,
        }
    }
}

/// Changes committed in one frame, all or none.
struct Job {
    changes: Vec<Change>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl Job {
    fn bytes(&self) -> usize {
        self.changes.iter().map(Change::bytes).sum()
    }
}

type Topics = Mutex<HashMap<String, TopicState>>;

/// The embedded broker's store. Cheap to share behind an `Arc`.
pub struct Store {
    shared: Arc<Shared>,
    topics: Arc<Topics>,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Store {
    /// Closes the writer's channel, waits for it to finish its last frame,
    /// then releases the directory's lock, so it is free once the store is
    /// gone. The unlock is explicit: a copy of the descriptor (a child
    /// process forked meanwhile, before its exec closes it) or a reader still
    /// holding the shared state would otherwise keep the lock.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // SAFETY: `flock` on a descriptor the shared state owns.
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&self.shared._lock),
                libc::LOCK_UN,
            );
        }
    }
}

impl Store {
    /// Frames the writer committed since open (for tests and benchmarks).
    pub fn commits(&self) -> u64 {
        self.shared
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Segment files in the store's directory (for tests).
    pub fn segments(&self) -> usize {
        self.shared
            .files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// `Err` with the reason while the store cannot write (see the module
    /// documentation).
    pub fn health(&self) -> Result<(), String> {
        if self.shared.is_available() {
            Ok(())
        } else {
            Err(self.shared.unavailable().to_string())
        }
    }

    /// Runs `f` on the state of `topic` under the lock, creating it if new.
    fn with_topic<R>(&self, topic: &str, f: impl FnOnce(&mut TopicState) -> R) -> R {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let state = topics.entry(topic.to_string()).or_default();
        f(state)
    }

    fn enqueue(&self, change: Change) -> oneshot::Receiver<Result<(), StoreError>> {
        self.enqueue_all(vec![change])
    }

    /// Queues changes to be committed in one frame.
    fn enqueue_all(&self, changes: Vec<Change>) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        // A send error drops `reply`, which the awaiting caller sees as Closed.
        if let Some(writer) = &self.writer {
            let _ = writer.send(Job { changes, reply });
        }
        rx
    }
}

mod cleaner;
mod inspect;
mod open;
mod receive;
mod settle;
#[cfg(test)]
mod tests;
mod writer;

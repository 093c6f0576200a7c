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
//! within about twice what it holds.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot};

use super::legacy;
use super::log::{self, Live, Loc, Record, ReplayError};
use crate::message::{Header, InboundMessage, OutboundMessage, from_unix_ms, unix_ms};
use crate::state::{Damaged, StoreFileError, aside_name};

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
    /// Closes the writer's channel and waits for it to finish its last
    /// frame, so the directory's lock is free once the store is gone.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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
        let (lock, opened) = match open_dir(path) {
            Err(Opened::Damaged(file, reason)) if options.damaged == Damaged::MoveAside => {
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
                open_dir(path).map_err(Opened::into_error)?
            }
            other => other.map_err(Opened::into_error)?,
        };
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

    /// Appends messages to `topic`; returns their ids once they are durable.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutboundMessage>,
    ) -> Result<Vec<String>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let now = unix_ms(SystemTime::now());
        let mut rows = to_rows(messages, now);
        let ids = rows.iter().map(|r| r.id.clone()).collect();
        let done = self.with_topic(topic, |t| {
            for row in &mut rows {
                row.seq = t.next_seq;
                t.next_seq += 1;
            }
            self.enqueue(Change::Insert(topic.to_string(), rows))
        });
        done.await.map_err(|_| StoreError::Closed)??;
        Ok(ids)
    }

    /// Leases up to `max` visible messages of `topic` for `lease`, waiting up
    /// to `wait` for one to become visible. The lease is kept in memory; the
    /// receive is counted durably by the topic's receive mark (see the module
    /// documentation), moved first when a message is past it.
    pub async fn receive(
        &self,
        topic: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<(InboundMessage, Lease)>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let lease_ms = lease.as_millis() as u64;
        if !self.shared.is_available() {
            // Leasing needs a write; the outage is reported by `health`
            // (readiness), not once per poll.
            tokio::time::sleep_until(deadline).await;
            return Ok(Vec::new());
        }
        loop {
            let notify = self.with_topic(topic, |t| t.notify.clone());
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = unix_ms(SystemTime::now());
            let (picked, next_visible, done) = self.with_topic(topic, |t| {
                let mut picked = Vec::new();
                // Receives of messages whose lease ran out without a
                // release: the earlier receive is written down first.
                let mut uncounted = Vec::new();
                while picked.len() < max {
                    let Some(&(visible, seq)) = t.queue.first() else {
                        break;
                    };
                    if visible > now {
                        break;
                    }
                    let old = t.meta[&seq];
                    if old.receives > old.durable {
                        uncounted.push((
                            seq,
                            Meta {
                                visible_ms: now,
                                leased: false,
                                ..old
                            },
                        ));
                    }
                    let meta = Meta {
                        receives: old.receives + 1,
                        visible_ms: now + lease_ms,
                        leased: true,
                        ..old
                    };
                    t.reschedule(seq, meta);
                    picked.push((seq, meta));
                }
                let next_visible = t.queue.first().map(|&(v, _)| v);
                let mut changes = Vec::new();
                if !uncounted.is_empty() {
                    changes.push(Change::State(topic.to_string(), uncounted));
                }
                if let Some(&highest) = picked.iter().map(|(seq, _)| seq).max()
                    && highest >= t.mark_durable
                {
                    if highest >= t.mark {
                        t.mark = highest + 1 + MARK_BLOCK;
                    }
                    changes.push(Change::Mark(topic.to_string(), t.mark));
                }
                let done = (!changes.is_empty()).then(|| self.enqueue_all(changes));
                (picked, next_visible, done)
            });
            if let Some(done) = done {
                done.await.map_err(|_| StoreError::Closed)??;
            }
            if !picked.is_empty() {
                return Ok(self.read(topic, picked, lease));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let until_visible = next_visible
                .map(|v| Duration::from_millis(v.saturating_sub(now).max(1)))
                .unwrap_or(left);
            let _ = tokio::time::timeout(left.min(until_visible), notified).await;
        }
    }

    /// Reads the record of a message, following it if compaction moved it
    /// meanwhile.
    fn read_record(&self, topic: &str, seq: u64, loc: Loc) -> Result<Vec<u8>, String> {
        let mut loc = loc;
        for _ in 0..3 {
            if let Some(file) = self.shared.file(loc.seg) {
                return log::read_at(&file, loc).map_err(|e| {
                    format!(
                        "cannot read {}: {e}",
                        self.shared.dir.join(log::segment_name(loc.seg)).display()
                    )
                });
            }
            let moved = self.with_topic(topic, |t| t.meta.get(&seq).map(|m| m.loc));
            match moved {
                Some(l) if l != loc => loc = l,
                _ => break,
            }
        }
        Err(format!(
            "message {seq} of topic {topic} is gone from the log"
        ))
    }

    /// The leased messages' records, read from their segments. A message
    /// that cannot be read stays leased (and comes back when the lease runs
    /// out); the error is logged.
    fn read(
        &self,
        topic: &str,
        picked: Vec<(u64, Meta)>,
        lease: Duration,
    ) -> Vec<(InboundMessage, Lease)> {
        let mut out = Vec::with_capacity(picked.len());
        for (seq, meta) in picked {
            let message = self
                .read_record(topic, seq, meta.loc)
                .and_then(|bytes| to_message(topic, &bytes, meta.receives));
            match message {
                Ok(message) => {
                    let lease = Lease {
                        topic: topic.to_string(),
                        seq,
                        receives: meta.receives,
                        id: message.id.clone(),
                        duration: lease,
                    };
                    out.push((message, lease));
                }
                Err(error) => {
                    tracing::error!(topic = %topic, seq, error = %error, "The embedded broker cannot read a message.");
                }
            }
        }
        out
    }

    /// Deletes a leased message for good.
    pub async fn ack(&self, lease: &Lease) -> Result<(), StoreError> {
        self.settle(lease, Vec::new()).await
    }

    /// Appends `outputs` (per topic address, in order) and deletes the leased
    /// message, in one frame: after a crash either all of it happened or
    /// none. On an error the message stays leased, so the caller may still
    /// release it.
    pub async fn settle(
        &self,
        lease: &Lease,
        outputs: Vec<(String, Vec<OutboundMessage>)>,
    ) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        let mut inserts = Vec::with_capacity(outputs.len());
        for (topic, messages) in outputs {
            if !messages.is_empty() {
                inserts.push((topic, to_rows(messages, now)));
            }
        }
        let (done, taken) = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let t = topics.entry(lease.topic.clone()).or_default();
            let meta = t.check(lease)?;
            t.queue.remove(&(meta.visible_ms, lease.seq));
            t.meta.remove(&lease.seq);
            let mut changes = Vec::with_capacity(inserts.len() + 1);
            for (topic, mut rows) in inserts {
                let t = topics.entry(topic.clone()).or_default();
                for row in &mut rows {
                    row.seq = t.next_seq;
                    t.next_seq += 1;
                }
                changes.push(Change::Insert(topic, rows));
            }
            changes.push(Change::Delete(
                lease.topic.clone(),
                vec![(lease.seq, meta.loc)],
            ));
            (self.enqueue_all(changes), meta)
        };
        let result = done.await.map_err(|_| StoreError::Closed).and_then(|r| r);
        if result.is_err() {
            // Nothing was written: the message is still ours.
            self.with_topic(&lease.topic, |t| {
                if !t.meta.contains_key(&lease.seq) {
                    t.reschedule(lease.seq, taken);
                }
            });
        }
        result
    }

    /// Gives a leased message back, visible again after `delay`; its receive
    /// count and delay are committed before this returns.
    pub async fn release(&self, lease: &Lease, delay: Duration) -> Result<(), StoreError> {
        let visible_ms = unix_ms(SystemTime::now()) + delay.as_millis() as u64;
        let done = self.with_topic(&lease.topic, |t| {
            let meta = t.check(lease)?;
            let meta = Meta {
                visible_ms,
                leased: false,
                ..meta
            };
            t.reschedule(lease.seq, meta);
            t.notify.notify_waiters();
            Ok::<_, StoreError>(
                self.enqueue(Change::State(lease.topic.clone(), vec![(lease.seq, meta)])),
            )
        })?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Keeps a leased message invisible for `duration` from now. In memory
    /// only: leases do not outlive the process.
    pub async fn extend(&self, lease: &Lease, duration: Duration) -> Result<(), StoreError> {
        let visible_ms = unix_ms(SystemTime::now()) + duration.as_millis() as u64;
        self.with_topic(&lease.topic, |t| {
            let meta = t.check(lease)?;
            t.reschedule(
                lease.seq,
                Meta {
                    visible_ms,
                    leased: true,
                    ..meta
                },
            );
            Ok(())
        })
    }

    /// Writes the exact receive counts of leased messages and resets the
    /// receive marks, so that the next open counts no receive too many, and
    /// starts a new segment that seals the last one written.
    /// Called once the flows have stopped, before the process exits; the
    /// store stays usable.
    pub async fn close(&self) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        let done = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let mut changes = Vec::new();
            for (name, t) in topics.iter_mut() {
                let rows: Vec<(u64, Meta)> = t
                    .meta
                    .iter()
                    .filter(|(_, m)| m.receives > m.durable)
                    .map(|(&seq, &m)| {
                        let visible_ms = if m.leased { now } else { m.visible_ms };
                        (seq, Meta { visible_ms, ..m })
                    })
                    .collect();
                if !rows.is_empty() {
                    changes.push(Change::State(name.clone(), rows));
                }
                if t.mark_durable > 0 || t.mark > 0 {
                    t.mark = 0;
                    t.mark_durable = 0;
                    changes.push(Change::Mark(name.clone(), 0));
                }
            }
            changes.push(Change::Roll);
            self.enqueue_all(changes)
        };
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Up to `max` messages of `topic`, oldest first, without leasing them,
    /// and about [`MAX_PEEK_BYTES`] of payload at most: a peek (or a
    /// dead-letter listing) of a long topic never loads it whole. Blocking
    /// (reads the log).
    pub fn peek(&self, topic: &str, max: usize) -> Result<Vec<InboundMessage>, StoreError> {
        self.peek_bounded(topic, max, MAX_PEEK_BYTES)
    }

    /// (seq, where, receives) of the messages of `topic`, oldest first.
    fn listing(&self, topic: &str) -> Vec<(u64, Loc, u32)> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(u64, Loc, u32)> = topics
            .get(topic)
            .map(|t| {
                t.meta
                    .iter()
                    .map(|(&s, m)| (s, m.loc, m.receives))
                    .collect()
            })
            .unwrap_or_default();
        all.sort_unstable_by_key(|e| e.0);
        all
    }

    fn peek_bounded(
        &self,
        topic: &str,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<InboundMessage>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (seq, loc, receives) in self.listing(topic).into_iter().take(max) {
            if bytes >= max_bytes {
                break;
            }
            let Ok(record) = self.read_record(topic, seq, loc) else {
                // Acknowledged meanwhile.
                continue;
            };
            let message = to_message(topic, &record, receives).map_err(StoreError::Storage)?;
            bytes += message.payload.len();
            out.push(message);
        }
        Ok(out)
    }

    /// Deletes the message `id` of `topic`, leased or not. Returns whether it
    /// was there.
    pub async fn remove_by_id(&self, topic: &str, id: &str) -> Result<bool, StoreError> {
        let mut found = None;
        for (seq, loc, _) in self.listing(topic) {
            let Ok(record) = self.read_record(topic, seq, loc) else {
                continue;
            };
            if let Ok((Record::Insert(m), _)) = log::read_record(&record)
                && m.id == id
            {
                found = Some(seq);
                break;
            }
        }
        let Some(seq) = found else { return Ok(false) };
        let done = self.with_topic(topic, |t| {
            let meta = t.meta.remove(&seq)?;
            t.queue.remove(&(meta.visible_ms, seq));
            Some(self.enqueue(Change::Delete(topic.to_string(), vec![(seq, meta.loc)])))
        });
        match done {
            Some(done) => done.await.map_err(|_| StoreError::Closed)?.map(|_| true),
            None => Ok(false),
        }
    }

    /// Messages not yet acknowledged, per topic: (total, leased).
    pub fn depth(&self) -> HashMap<String, (usize, usize)> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .iter()
            .map(|(name, t)| {
                let leased = t.meta.values().filter(|m| m.leased).count();
                (name.clone(), (t.meta.len(), leased))
            })
            .collect()
    }
}

/// New rows for `messages`, each with a fresh id; sequence numbers are
/// assigned under the lock.
fn to_rows(messages: Vec<OutboundMessage>, now: u64) -> Vec<Row> {
    messages
        .into_iter()
        .map(|m| Row {
            seq: 0,
            id: uuid::Uuid::now_v7().to_string(),
            headers: m.headers,
            payload: m.payload,
            enqueued_ms: now,
        })
        .collect()
}

fn to_message(topic: &str, record: &[u8], receives: u32) -> Result<InboundMessage, String> {
    match log::read_record(record) {
        Ok((Record::Insert(m), _)) => Ok(InboundMessage {
            id: m.id.to_string(),
            topic: topic.to_string(),
            payload: m.payload.to_vec(),
            headers: m.headers,
            attempt: receives,
            enqueued_at: Some(from_unix_ms(m.enqueued_ms)),
            undecodable: None,
        }),
        Ok(_) => Err("the log has no message where one should be".into()),
        Err(e) => Err(format!("a message record is unreadable: {e}")),
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
    let mut topics: HashMap<String, TopicState> = HashMap::new();
    let mut marks: HashMap<String, u64> = HashMap::new();
    let mut seals: HashMap<u64, u64> = HashMap::new();
    let mut files = HashMap::new();
    let mut seg_len = BTreeMap::new();
    let mut last = None;
    for (i, &id) in ids.iter().enumerate() {
        let newest = i + 1 == ids.len();
        let replayed = log::replay(dir, id, newest, |record, loc| match record {
            Record::Insert(m) => {
                let t = topics.entry(m.topic.to_string()).or_default();
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
                if let Some(t) = topics.get_mut(topic) {
                    for (seq, receives, visible_ms) in rows {
                        if let Some(m) = t.meta.get_mut(&seq) {
                            (m.receives, m.durable, m.visible_ms) =
                                (receives, receives, visible_ms);
                        }
                    }
                }
            }
            Record::Delete(topic, seqs) => {
                if let Some(t) = topics.get_mut(topic) {
                    for seq in seqs {
                        t.meta.remove(&seq);
                    }
                }
            }
            Record::Mark(topic, 0) => {
                marks.remove(topic);
            }
            Record::Mark(topic, mark) => {
                marks.insert(topic.to_string(), mark);
            }
            Record::Next(topic, next) => {
                let t = topics.entry(topic.to_string()).or_default();
                t.next_seq = t.next_seq.max(next);
            }
            Record::Seal(id, len) => {
                seals.insert(id, len);
            }
        });
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
        seg_len.insert(id, replayed.good_len);
        files.insert(id, Arc::new(file));
        last = Some((id, replayed.good_len));
    }
    for (&id, &len) in &seals {
        if let Some(&actual) = seg_len.get(&id)
            && actual != len
        {
            return Err(Opened::Damaged(
                dir.join(log::segment_name(id)),
                format!("it is {actual} bytes long but was {len} when the next segment began"),
            ));
        }
    }
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

/// The writer thread: appends frames, rolls, deletes and compacts segments,
/// and owns recovery from outages.
struct Writer {
    shared: Arc<Shared>,
    topics: Arc<Topics>,
    active: Arc<File>,
    active_id: u64,
    /// Where the last durable frame of the active segment ends.
    active_len: u64,
    /// Bytes of every segment.
    seg_len: BTreeMap<u64, u64>,
    live: Live,
    segment_bytes: u64,
    next_attempt: Instant,
    backoff: Duration,
    last_logged: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let first = if self.shared.is_available() {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                let wait = self.next_attempt.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.try_recover();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut bytes = first.bytes();
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(job) => {
                        bytes += job.bytes();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            if !self.shared.is_available() && Instant::now() >= self.next_attempt {
                self.try_recover();
            }
            let result = if self.shared.is_available() {
                self.commit(&jobs)
            } else {
                Err(self.shared.unavailable())
            };
            let asked = || {
                jobs.iter()
                    .flat_map(|j| &j.changes)
                    .any(|c| matches!(c, Change::Roll))
            };
            if result.is_ok() && (self.active_len >= self.segment_bytes || asked()) {
                self.roll_and_clean();
            }
            for job in jobs {
                let _ = job.reply.send(result.clone());
            }
        }
    }

    /// Writes `jobs` as one frame and makes it durable; then memory follows.
    fn commit(&mut self, jobs: &[Job]) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(jobs.iter().map(Job::bytes).sum::<usize>() + 64);
        buf.extend_from_slice(&[0u8; log::FRAME_HEADER as usize]);
        let base = self.active_len;
        let mut locs = Vec::new();
        for change in jobs.iter().flat_map(|j| &j.changes) {
            match change {
                Change::Insert(topic, rows) => {
                    for r in rows {
                        let start = buf.len();
                        log::put_message(
                            &mut buf,
                            topic,
                            r.seq,
                            0,
                            r.enqueued_ms,
                            r.enqueued_ms,
                            &r.id,
                            &r.headers,
                            &r.payload,
                        );
                        locs.push(Loc {
                            seg: self.active_id,
                            off: base + start as u64,
                            len: (buf.len() - start) as u32,
                        });
                    }
                }
                Change::State(topic, rows) => log::put_state(
                    &mut buf,
                    topic,
                    rows.iter().map(|(seq, m)| (*seq, m.receives, m.visible_ms)),
                ),
                Change::Delete(topic, seqs) => {
                    log::put_delete(&mut buf, topic, seqs.iter().map(|(seq, _)| *seq))
                }
                Change::Mark(topic, mark) => log::put_mark(&mut buf, topic, *mark),
                Change::Roll => {}
            }
        }
        if buf.len() == log::FRAME_HEADER as usize {
            // Nothing to write (a roll alone).
            return Ok(());
        }
        self.append(buf)?;
        self.shared
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.applied(jobs, locs);
        Ok(())
    }

    /// Appends a frame whose body follows [`log::FRAME_HEADER`] zero bytes
    /// at the start of `buf`, and `fdatasync`s.
    fn append(&mut self, mut buf: Vec<u8>) -> Result<(), StoreError> {
        let body_len = buf.len() - log::FRAME_HEADER as usize;
        let crc = crc32fast::hash(&buf[log::FRAME_HEADER as usize..]);
        buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self
            .active
            .write_all_at(&buf, self.active_len)
            .and_then(|()| self.active.sync_data());
        match written {
            Ok(()) => {
                self.active_len += buf.len() as u64;
                self.seg_len.insert(self.active_id, self.active_len);
                Ok(())
            }
            Err(e) => {
                self.start_outage(&e);
                Err(self.shared.unavailable())
            }
        }
    }

    /// What a commit changes in memory: new messages join their queues only
    /// once they are on disk, and written counts and marks become the
    /// durable ones.
    fn applied(&mut self, jobs: &[Job], locs: Vec<Loc>) {
        let mut locs = locs.into_iter();
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        for change in jobs.iter().flat_map(|j| &j.changes) {
            match change {
                Change::Insert(topic, rows) => {
                    let t = topics.entry(topic.clone()).or_default();
                    for r in rows {
                        let Some(loc) = locs.next() else { break };
                        self.live.add(loc);
                        t.reschedule(
                            r.seq,
                            Meta {
                                receives: 0,
                                durable: 0,
                                visible_ms: r.enqueued_ms,
                                leased: false,
                                loc,
                            },
                        );
                    }
                    t.notify.notify_waiters();
                }
                Change::State(topic, rows) => {
                    if let Some(t) = topics.get_mut(topic) {
                        for (seq, written) in rows {
                            if let Some(m) = t.meta.get_mut(seq) {
                                m.durable = m.durable.max(written.receives);
                            }
                        }
                    }
                }
                Change::Mark(topic, mark) => {
                    // Only the latest mark asked for counts: an older one
                    // committed in the same batch as a reset does not.
                    if let Some(t) = topics.get_mut(topic)
                        && t.mark == *mark
                    {
                        t.mark_durable = *mark;
                    }
                }
                Change::Delete(_, seqs) => {
                    for (_, loc) in seqs {
                        self.live.remove(*loc);
                    }
                }
                Change::Roll => {}
            }
        }
    }

    /// Starts a new segment, then deletes the segments nothing needs and, if
    /// the log holds much more than its live messages, compacts the oldest.
    fn roll_and_clean(&mut self) {
        if self.roll().is_err() {
            return;
        }
        self.delete_dead_segments();
        let total: u64 = self
            .seg_len
            .iter()
            .filter(|(id, _)| **id != self.active_id)
            .map(|(_, len)| len)
            .sum();
        if total > 2 * self.live.bytes() + 2 * self.segment_bytes
            && let Some(&oldest) = self.seg_len.keys().next()
            && oldest != self.active_id
        {
            self.compact(oldest);
            self.delete_dead_segments();
        }
    }

    /// Starts segment `active + 1`: its first frame seals the one before and
    /// holds every topic's next sequence number and receive mark.
    fn roll(&mut self) -> Result<(), StoreError> {
        let mut first = Vec::new();
        log::put_seal(&mut first, self.active_id, self.active_len);
        {
            let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            for (name, t) in topics.iter() {
                log::put_next(&mut first, name, t.next_seq);
                if t.mark > 0 {
                    log::put_mark(&mut first, name, t.mark);
                }
            }
        }
        let id = self.active_id + 1;
        match log::create_segment(&self.shared.dir, id, &first) {
            Ok((file, len)) => {
                let file = Arc::new(file);
                self.shared
                    .files
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, file.clone());
                (self.active, self.active_id, self.active_len) = (file, id, len);
                self.seg_len.insert(id, len);
                Ok(())
            }
            Err(e) => {
                self.start_outage(&e);
                Err(self.shared.unavailable())
            }
        }
    }

    /// Deletes segments, oldest first, while every message written to them
    /// is acknowledged (never the active one, never one after a live one:
    /// a retry's count written there may be the last word on an older
    /// message).
    fn delete_dead_segments(&mut self) {
        let mut removed = false;
        while let Some(&oldest) = self.seg_len.keys().next() {
            if oldest == self.active_id || self.live.count(oldest) > 0 {
                break;
            }
            let path = self.shared.dir.join(log::segment_name(oldest));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "Cannot delete a segment of the embedded broker's log; it is tried again at the next roll.");
                break;
            }
            self.shared
                .files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&oldest);
            self.seg_len.remove(&oldest);
            self.live.forget(oldest);
            removed = true;
        }
        if removed && let Err(e) = log::sync_dir(&self.shared.dir) {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "Cannot sync the embedded broker's log directory.");
        }
    }

    /// Copies the messages still live in segment `seg` to the active one,
    /// with their receive counts as written, so `seg` can go.
    fn compact(&mut self, seg: u64) {
        let now = unix_ms(SystemTime::now());
        let picked: Vec<(String, u64, Meta)> = {
            let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            topics
                .iter()
                .flat_map(|(name, t)| {
                    t.meta
                        .iter()
                        .filter(|(_, m)| m.loc.seg == seg)
                        .map(|(&s, &m)| (name.clone(), s, m))
                })
                .collect()
        };
        let Some(file) = self.shared.file(seg) else {
            return;
        };
        let mut moved = Vec::with_capacity(picked.len());
        let mut buf = Vec::new();
        let flush = |w: &mut Self, buf: &mut Vec<u8>| -> bool {
            if buf.len() <= log::FRAME_HEADER as usize {
                return true;
            }
            w.append(std::mem::take(buf)).is_ok()
        };
        for (topic, seq, meta) in picked {
            if buf.is_empty() {
                buf.extend_from_slice(&[0u8; log::FRAME_HEADER as usize]);
            }
            let Ok(record) = log::read_at(&file, meta.loc) else {
                continue;
            };
            let Ok((Record::Insert(m), _)) = log::read_record(&record) else {
                continue;
            };
            let visible_ms = if meta.leased { now } else { meta.visible_ms };
            let start = buf.len();
            log::put_message(
                &mut buf,
                &topic,
                seq,
                meta.durable,
                visible_ms,
                m.enqueued_ms,
                m.id,
                &m.headers,
                m.payload,
            );
            let loc = Loc {
                seg: self.active_id,
                off: self.active_len + start as u64,
                len: (buf.len() - start) as u32,
            };
            moved.push((topic, seq, meta.loc, loc));
            if buf.len() >= MAX_BATCH_BYTES && !flush(self, &mut buf) {
                return;
            }
        }
        if !flush(self, &mut buf) {
            return;
        }
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, seq, old, new) in moved {
            // A message acknowledged meanwhile keeps its old place: the
            // acknowledgement names it.
            if let Some(m) = topics.get_mut(&topic).and_then(|t| t.meta.get_mut(&seq))
                && m.loc == old
            {
                m.loc = new;
                self.live.remove(old);
                self.live.add(new);
            }
        }
    }

    fn start_outage(&mut self, error: &std::io::Error) {
        let reason = error.to_string();
        let path = self.shared.dir.display().to_string();
        let recent = self
            .last_logged
            .is_some_and(|t| t.elapsed() < OUTAGE_LOG_INTERVAL);
        if recent {
            tracing::debug!(path = %path, error = %reason, "The embedded broker's store failed to write again.");
        } else {
            tracing::error!(
                path = %path,
                error = %reason,
                "The embedded broker's store cannot write (is the disk full?): the broker is not ready; it recovers by itself once writes succeed again."
            );
            self.last_logged = Some(Instant::now());
        }
        *self.shared.outage.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.backoff = REOPEN_BACKOFF.0;
        self.next_attempt = Instant::now() + self.backoff;
    }

    /// A test write; on success, cuts the active segment back to its last
    /// durable frame, starts a new segment and ends the outage.
    fn try_recover(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(REOPEN_BACKOFF.1);
        let dir = self.shared.dir.clone();
        let recovered = probe(&dir)
            .and_then(|()| self.active.set_len(self.active_len))
            .and_then(|()| self.active.sync_all());
        if let Err(e) = recovered {
            tracing::debug!(path = %dir.display(), error = %e, "The embedded broker's store cannot write yet.");
            return;
        }
        *self.shared.outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if self.roll().is_err() {
            return;
        }
        self.backoff = REOPEN_BACKOFF.0;
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        for t in topics.values() {
            t.notify.notify_waiters();
        }
        tracing::info!(
            path = %dir.display(),
            "The embedded broker's store writes again: the broker is ready."
        );
    }
}

/// A write that needs fresh blocks, removed at once: whether the store can
/// take writes again.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join("probe.tmp");
    let result = (|| {
        let mut f = File::create(&path)?;
        std::io::Write::write_all(&mut f, &vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> OutboundMessage {
        OutboundMessage {
            payload: body.as_bytes().to_vec(),
            headers: vec![("k".into(), "v".into())],
        }
    }

    const LEASE: Duration = Duration::from_secs(30);
    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_peek_stops_at_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let big = "x".repeat(1000);
        store
            .publish("t", (0..10).map(|_| msg(&big)).collect())
            .await
            .unwrap();
        assert_eq!(store.peek("t", 100).unwrap().len(), 10);
        // The first message always comes back; the budget stops the rest.
        assert_eq!(store.peek_bounded("t", 100, 2500).unwrap().len(), 3);
        assert_eq!(store.peek_bounded("t", 100, 1).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn publish_receive_ack_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
        let got = store.receive("t", 10, LEASE, WAIT).await.unwrap();
        let bodies: Vec<_> = got.iter().map(|(m, _)| m.payload.clone()).collect();
        assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(got[0].0.attempt, 1);
        assert_eq!(got[0].0.headers, vec![("k".to_string(), "v".to_string())]);
        // Leased messages are not handed out twice.
        assert!(
            store
                .receive("t", 10, LEASE, WAIT)
                .await
                .unwrap()
                .is_empty()
        );
        for (_, lease) in &got {
            store.ack(lease).await.unwrap();
        }
        assert!(store.peek("t", 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn release_redelivers_after_the_delay_with_a_higher_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.publish("t", vec![msg("a")]).await.unwrap();
        let (_, lease) = store.receive("t", 1, LEASE, WAIT).await.unwrap().remove(0);
        store
            .release(&lease, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(store.receive("t", 1, LEASE, WAIT).await.unwrap().is_empty());
        let again = store
            .receive("t", 1, LEASE, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(again[0].0.attempt, 2);
        // The first lease is stale now.
        assert!(matches!(
            store.ack(&lease).await,
            Err(StoreError::LeaseLost { .. })
        ));
    }

    #[tokio::test]
    async fn an_expired_lease_redelivers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.publish("t", vec![msg("a")]).await.unwrap();
        store
            .receive("t", 1, Duration::from_millis(100), WAIT)
            .await
            .unwrap();
        let again = store
            .receive("t", 1, LEASE, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.attempt, 2);
    }

    #[tokio::test]
    async fn reopening_keeps_counts_and_frees_leases_but_not_delays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .publish("t", vec![msg("leased"), msg("delayed")])
                .await
                .unwrap();
            let got = store.receive("t", 2, LEASE, WAIT).await.unwrap();
            store
                .release(&got[1].1, Duration::from_secs(3600))
                .await
                .unwrap();
        }
        // The writer thread holds the database until its channel closes.
        let store = reopen(&path);
        let got = store.receive("t", 2, LEASE, WAIT).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.payload, b"leased");
        assert_eq!(got[0].0.attempt, 2);
        assert_eq!(store.peek("t", 10).unwrap().len(), 2);
    }

    /// Reopens `path` once the previous store's writer has let go of it.
    fn reopen(path: &Path) -> Store {
        loop {
            match Store::open(path) {
                Ok(s) => break s,
                Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The receive counts, sorted.
    fn attempts(got: &[(InboundMessage, Lease)]) -> Vec<u32> {
        let mut a: Vec<u32> = got.iter().map(|(m, _)| m.attempt).collect();
        a.sort();
        a
    }

    fn payloads(got: &[(InboundMessage, Lease)]) -> Vec<Vec<u8>> {
        got.iter().map(|(m, _)| m.payload.clone()).collect()
    }

    #[tokio::test]
    async fn receiving_commits_once_per_block_not_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let n = 1000;
        store
            .publish("t", (0..n).map(|i| msg(&i.to_string())).collect())
            .await
            .unwrap();
        let before = store.commits();
        let mut leases = Vec::new();
        while leases.len() < n {
            let got = store.receive("t", 100, LEASE, WAIT).await.unwrap();
            assert!(!got.is_empty());
            leases.extend(got.into_iter().map(|(_, l)| l));
        }
        // One commit moved the receive mark past all of them.
        assert_eq!(store.commits() - before, 1);
        // Extending a lease commits nothing either.
        store.extend(&leases[0], LEASE).await.unwrap();
        assert_eq!(store.commits() - before, 1);
        store.ack(&leases[0]).await.unwrap();
        assert_eq!(store.commits() - before, 2);
    }

    #[tokio::test]
    async fn settle_writes_the_outputs_and_deletes_the_input_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store.publish("in", vec![msg("a"), msg("b")]).await.unwrap();
            let got = store.receive("in", 2, LEASE, WAIT).await.unwrap();
            let before = store.commits();
            store
                .settle(
                    &got[0].1,
                    vec![
                        ("out".into(), vec![msg("a1"), msg("a2")]),
                        ("other".into(), vec![msg("a3")]),
                    ],
                )
                .await
                .unwrap();
            assert_eq!(store.commits() - before, 1);
            // Settled once: a second settle of the same lease writes nothing.
            assert!(matches!(
                store
                    .settle(&got[0].1, vec![("out".into(), vec![msg("again")])])
                    .await,
                Err(StoreError::LeaseLost { .. })
            ));
            let out = store.receive("out", 10, LEASE, WAIT).await.unwrap();
            assert_eq!(payloads(&out), vec![b"a1".to_vec(), b"a2".to_vec()]);
            assert_eq!(store.peek("other", 10).unwrap().len(), 1);
        }
        // After a crash: the input is gone for good, the outputs are there.
        let store = reopen(&path);
        let left = store.peek("in", 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].payload, b"b");
        assert_eq!(store.peek("out", 10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_crash_counts_one_more_receive_below_the_mark_and_a_close_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            store
                .publish("t", vec![msg("a"), msg("b"), msg("c")])
                .await
                .unwrap();
            let got = store.receive("t", 1, LEASE, WAIT).await.unwrap();
            assert_eq!(got[0].0.attempt, 1);
            // Dropped without a close: a crash.
        }
        let store = reopen(&path);
        // "a" was being handled: its receive counts. "b" and "c" were below
        // the mark too (it is moved a block at a time): one receive more.
        let got = store.receive("t", 3, LEASE, WAIT).await.unwrap();
        assert_eq!(attempts(&got), vec![2, 2, 2]);
        // A receive after a crash is counted again at the next crash.
        drop(store);
        let store = reopen(&path);
        let got = store.receive("t", 3, LEASE, WAIT).await.unwrap();
        assert_eq!(attempts(&got), vec![3, 3, 3]);
        // A clean close writes the exact counts: nothing extra next time.
        store.release(&got[2].1, Duration::ZERO).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = reopen(&path);
        let got = store.receive("t", 3, LEASE, WAIT).await.unwrap();
        assert_eq!(attempts(&got), vec![4, 4, 4]);
        // Messages published after the mark was last moved count nothing.
        store.publish("t", vec![msg("d")]).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = reopen(&path);
        store.publish("t", vec![msg("e")]).await.unwrap();
        let got = store.receive("t", 10, LEASE, WAIT).await.unwrap();
        assert_eq!(attempts(&got), vec![1, 1, 5, 5, 5]);
    }

    #[tokio::test]
    async fn remove_by_id_deletes_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let ids = store.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
        assert!(store.remove_by_id("t", &ids[0]).await.unwrap());
        assert!(!store.remove_by_id("t", &ids[0]).await.unwrap());
        let left = store.peek("t", 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, ids[1]);
    }

    /// A small tmpfs, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        /// `None` where mounting is not permitted (not root).
        fn mount(size: &str) -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(Self(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// Fills the file system of `dir` with `dir/filler` until it is full.
    fn fill(dir: &Path) {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("filler")).unwrap();
        let block = vec![1u8; 64 << 10];
        while f.write_all(&block).and_then(|_| f.sync_all()).is_ok() {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_makes_the_store_unavailable_then_it_recovers_by_itself() {
        let Some(fs) = Tmpfs::mount("6m") else {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        };
        let path = fs.0.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let mut published = store.publish("t", vec![msg("before")]).await.unwrap();
        fill(fs.0.path());
        // Writes fail once redb runs out of space in its file.
        let big = OutboundMessage {
            payload: vec![7u8; 64 << 10],
            headers: Vec::new(),
        };
        let mut failed = None;
        for _ in 0..200 {
            match store.publish("t", vec![big.clone()]).await {
                Ok(ids) => published.extend(ids),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let failed = failed.expect("writes never failed on a full disk");
        assert!(matches!(failed, StoreError::Unavailable { .. }), "{failed}");
        let health = store.health().unwrap_err();
        assert!(health.contains(&path.display().to_string()), "{health}");
        // While unavailable: writes fail at once, receives wait and get nothing.
        assert!(matches!(
            store.publish("t", vec![msg("during")]).await,
            Err(StoreError::Unavailable { .. })
        ));
        assert!(
            store
                .receive("t", 10, LEASE, WAIT)
                .await
                .unwrap()
                .is_empty()
        );
        // Still unavailable after a few reopen attempts while the disk is full.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(store.health().is_err());

        std::fs::remove_file(fs.0.path().join("filler")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.health().is_err() {
            assert!(Instant::now() < deadline, "did not recover within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        published.extend(store.publish("t", vec![msg("after")]).await.unwrap());
        // Nothing acknowledged was lost; everything is received.
        let got = store
            .receive("t", 1000, LEASE, WAIT)
            .await
            .unwrap()
            .into_iter()
            .map(|(m, _)| m.id)
            .collect::<Vec<_>>();
        assert_eq!(got, published);
    }

    fn small(dir: &Path) -> Store {
        let options = StoreOptions {
            segment_bytes: 4096,
            ..StoreOptions::default()
        };
        loop {
            match Store::open_with(dir, &options) {
                Ok(s) => break s,
                Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn segments_roll_and_go_once_their_messages_are_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let store = small(&path);
        let body = "x".repeat(300);
        for _ in 0..100 {
            store.publish("t", vec![msg(&body)]).await.unwrap();
        }
        // 100 × ~330 bytes in segments of 4 KiB.
        assert!(store.segments() >= 8, "{}", store.segments());
        for (_, lease) in store.receive("t", 1000, LEASE, WAIT).await.unwrap() {
            store.ack(&lease).await.unwrap();
        }
        // The next roll deletes every segment whose messages are all gone.
        for _ in 0..20 {
            let (_, lease) = {
                store.publish("t", vec![msg(&body)]).await.unwrap();
                store.receive("t", 1, LEASE, WAIT).await.unwrap().remove(0)
            };
            store.ack(&lease).await.unwrap();
        }
        assert!(store.segments() <= 2, "{}", store.segments());
        assert_eq!(segment_files(&path).len(), store.segments());
    }

    #[tokio::test]
    async fn a_message_left_alone_is_copied_forward_and_the_log_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        {
            let store = small(&path);
            store
                .publish("parked", vec![msg("stays"), msg("stays too")])
                .await
                .unwrap();
            let (_, lease) = store
                .receive("parked", 1, LEASE, WAIT)
                .await
                .unwrap()
                .remove(0);
            store.release(&lease, Duration::ZERO).await.unwrap();
            let body = "y".repeat(500);
            for _ in 0..1000 {
                store.publish("t", vec![msg(&body)]).await.unwrap();
                let (_, lease) = store.receive("t", 1, LEASE, WAIT).await.unwrap().remove(0);
                store.ack(&lease).await.unwrap();
                assert!(store.segments() <= 8, "{} segments", store.segments());
            }
            // The parked messages were moved: the first segment is gone.
            assert!(!path.join(log::segment_name(1)).exists());
            store.close().await.unwrap();
        }
        let store = small(&path);
        let got = store.peek("parked", 10).unwrap();
        let bodies: Vec<_> = got.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(bodies, vec![b"stays".to_vec(), b"stays too".to_vec()]);
        // The count written by the release moved with the message.
        assert_eq!(got[0].attempt, 1);
        assert_eq!(got[0].headers, vec![("k".to_string(), "v".to_string())]);
        assert!(store.peek("t", 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_torn_last_frame_is_cut_off_but_damage_elsewhere_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        {
            let store = small(&path);
            for i in 0..3 {
                store
                    .publish("t", vec![msg(&format!("m{i}"))])
                    .await
                    .unwrap();
            }
        }
        // A frame a crash cut short at the end of the newest segment.
        let newest = segment_files(&path).pop().unwrap();
        let good = std::fs::metadata(&newest).unwrap().len();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&newest)
                .unwrap();
            f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
        }
        {
            let store = small(&path);
            assert_eq!(store.peek("t", 10).unwrap().len(), 3);
            assert_eq!(std::fs::metadata(&newest).unwrap().len(), good);
        }
        // The same segment, no longer the newest, cut short: damage.
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&newest, &bytes).unwrap();
        let refused = |path: &Path, file: &Path| {
            let Err(e) = Store::open(path) else {
                panic!("opened a damaged log");
            };
            let e = e.to_string();
            assert!(e.contains(&file.display().to_string()), "{e}");
            assert!(e.contains("--move-damaged-aside"), "{e}");
        };
        refused(&path, &newest);
        // A garbled byte in the middle of a frame: damage.
        bytes.push(0);
        let at = bytes.len() - 8;
        bytes[at] ^= 0xff;
        std::fs::write(&newest, &bytes).unwrap();
        refused(&path, &newest);
        // Moving it aside starts empty and keeps the damaged directory.
        let options = StoreOptions {
            damaged: Damaged::MoveAside,
            ..StoreOptions::default()
        };
        let store = Store::open_with(&path, &options).unwrap();
        assert!(store.peek("t", 10).unwrap().is_empty());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("log.damaged-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
    }
}

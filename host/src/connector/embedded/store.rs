//! The embedded broker's durable store, on redb.
//!
//! Three tables: `messages` holds each message as published (id, headers,
//! payload, enqueue time) and never changes; `state` holds what does (the
//! durable receive count, when the message is next visible); both are keyed
//! by (topic, sequence number). `marks` holds, per topic, the receive mark:
//! every message received since the mark was written has a lower sequence
//! number.
//!
//! One writer thread applies changes in batches: every change that arrives
//! while a commit is running goes into the next transaction (up to
//! [`MAX_BATCH`] jobs and [`MAX_BATCH_BYTES`] of payload), so many publishers
//! and consumers share one fsync (group commit). A change is acknowledged to
//! its caller only after its transaction committed. A job may hold several
//! changes, committed together: [`Store::settle`] writes a message's outputs
//! and deletes the message in one transaction.
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
//! Which messages are ready is kept in memory per topic, rebuilt from `state`
//! at open. Memory changes and the queueing of their disk changes happen
//! under one lock, so the disk sees them in the same order. The router
//! process owns the file (redb locks it); a lease found at open (written by a
//! version that kept leases on disk) belonged to a process that is gone, so
//! that message is visible again at once.
//!
//! When a commit fails with an I/O error (a full disk, say), redb refuses
//! every later call until the database is reopened. The writer then marks
//! the store unavailable ([`Store::health`] says why, logged once), answers
//! writes with [`StoreError::Unavailable`], receives nothing, and reopens the
//! file with backoff until a test write succeeds; the in-memory queues are
//! then rebuilt from the file, and the store is available again.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant, SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::state::{Damaged, StoreFileError, open_redb};
use tokio::sync::{Notify, oneshot};

use crate::message::{InboundMessage, OutboundMessage, from_unix_ms, unix_ms};

/// A stored message: (id, headers as JSON, payload, enqueued at in ms since
/// the epoch).
type StoredMessage<'a> = (&'a str, &'a str, &'a [u8], u64);
/// (topic, seq) → the message as published.
/// The most payload one peek reads (see [`Store::peek`]).
pub const MAX_PEEK_BYTES: usize = 64 << 20;
const MESSAGES: TableDefinition<(&str, u64), StoredMessage> = TableDefinition::new("messages");
/// (topic, seq) → (receive count, visible at ms, leased). This version
/// writes `leased` false: leases are kept in memory.
const STATE: TableDefinition<(&str, u64), (u32, u64, bool)> = TableDefinition::new("state");
/// topic → the receive mark: every message received since it was written
/// has a lower sequence number.
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("marks");

/// The most jobs one transaction takes.
const MAX_BATCH: usize = 4096;
/// About the most payload bytes one transaction takes (a job is never split).
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How far past the highest sequence number received the receive mark is
/// moved when a receive passes it.
pub const MARK_BLOCK: u64 = 4096;
/// A scratch table for the test write before the store is used again.
const PROBE: TableDefinition<u8, &[u8]> = TableDefinition::new("probe");
/// Bytes of the test write: enough to need fresh pages.
const PROBE_BYTES: usize = 256 << 10;
/// The first and the longest wait between attempts to reopen.
const REOPEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// An outage that starts this soon after the last one logged is logged at
/// debug level only, so a disk hovering at full does not flood the log.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(300);

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the file.
    #[error("{path} is in use by another eventflow process (one router owns an embedded store)")]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// redb or the disk failed.
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
    /// A write failed with an I/O error; the store reopens itself once
    /// writes succeed again.
    #[error("embedded store {path} is unavailable until writes succeed again: {reason}")]
    Unavailable {
        /// The store file.
        path: PathBuf,
        /// The I/O error that made it unavailable.
        reason: String,
    },
    /// The file is damaged.
    #[error("{0}")]
    Damaged(String),
}

impl From<StoreFileError> for StoreError {
    fn from(e: StoreFileError) -> Self {
        match e {
            StoreFileError::Locked { path } => StoreError::Locked { path },
            e @ StoreFileError::Damaged { .. } => StoreError::Damaged(e.to_string()),
            e @ StoreFileError::Io { .. } => StoreError::Storage(e.to_string()),
        }
    }
}

/// Whether a redb error leaves the database refusing every later call
/// ("Previous I/O error occurred"), so that only a reopen helps.
fn poisons(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// The open database, or why there is none, shared by the writer and the
/// readers.
struct Shared {
    path: PathBuf,
    /// `None` while the store is unavailable.
    db: RwLock<Option<Arc<Database>>>,
    /// Why the store is unavailable.
    outage: Mutex<Option<String>>,
    /// Transactions committed by the writer.
    commits: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        Err(self.unavailable())
    }

    fn unavailable(&self) -> StoreError {
        let reason = self
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "it is being reopened".into());
        StoreError::Unavailable {
            path: self.path.clone(),
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
    /// The receive count committed to `state`.
    durable: u32,
    visible_ms: u64,
    leased: bool,
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
    /// The receive mark on disk: messages below it may be handed out.
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
    headers: String,
    payload: Vec<u8>,
    enqueued_ms: u64,
}

enum Change {
    Insert(String, Vec<Row>),
    /// Writes (receives, visible at, not leased) per message.
    State(String, Vec<(u64, Meta)>),
    Delete(String, Vec<u64>),
    /// Sets the topic's receive mark (0 removes it).
    Mark(String, u64),
}

impl Change {
    fn bytes(&self) -> usize {
        match self {
            Change::Insert(_, rows) => rows.iter().map(|r| r.payload.len() + 64).sum(),
            Change::State(_, rows) => rows.len() * 32,
            Change::Delete(_, seqs) => seqs.len() * 16,
            Change::Mark(..) => 16,
        }
    }
}

/// Changes committed in one transaction, all or none.
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
    writer: mpsc::Sender<Job>,
}

impl Store {
    /// Opens or creates the store at `path`, refusing a damaged file.
    /// Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Damaged::Refuse)
    }

    /// Opens or creates the store at `path`; `damaged` says what to do with
    /// a damaged file. Blocking.
    pub fn open_with(path: &Path, damaged: Damaged) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = open_redb(path, damaged)?;
        let topics = Arc::new(Mutex::new(load(&db, true).map_err(|e| {
            StoreError::Storage(format!("cannot read {}: {e}", path.display()))
        })?));
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            outage: Mutex::new(None),
            commits: Default::default(),
        });
        let (tx, rx) = mpsc::channel();
        let (wshared, wtopics) = (shared.clone(), topics.clone());
        std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || Writer::new(wshared, wtopics).run(rx))
            .map_err(storage)?;
        Ok(Self {
            shared,
            topics,
            writer: tx,
        })
    }

    /// Transactions the writer committed since open (for tests and
    /// benchmarks).
    pub fn commits(&self) -> u64 {
        self.shared
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// Queues changes to be committed in one transaction.
    fn enqueue_all(&self, changes: Vec<Change>) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        // A send error drops `reply`, which the awaiting caller sees as Closed.
        let _ = self.writer.send(Job { changes, reply });
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
        let mut rows = to_rows(messages, now)?;
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
                return self.read(topic, picked, lease).await;
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

    async fn read(
        &self,
        topic: &str,
        picked: Vec<(u64, Meta)>,
        lease: Duration,
    ) -> Result<Vec<(InboundMessage, Lease)>, StoreError> {
        let db = self.shared.db()?;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(storage)?;
            let table = tx.open_table(MESSAGES).map_err(storage)?;
            let mut out = Vec::with_capacity(picked.len());
            for (seq, meta) in picked {
                let Some(row) = table.get((topic.as_str(), seq)).map_err(storage)? else {
                    continue;
                };
                let message = to_message(&topic, row.value(), meta.receives)?;
                let lease = Lease {
                    topic: topic.clone(),
                    seq,
                    receives: meta.receives,
                    id: message.id.clone(),
                    duration: lease,
                };
                out.push((message, lease));
            }
            Ok(out)
        })
        .await
        .map_err(storage)?
    }

    /// Deletes a leased message for good.
    pub async fn ack(&self, lease: &Lease) -> Result<(), StoreError> {
        self.settle(lease, Vec::new()).await
    }

    /// Appends `outputs` (per topic address, in order) and deletes the leased
    /// message, in one transaction: after a crash either all of it happened
    /// or none. On an error the message stays leased, so the caller may
    /// still release it.
    pub async fn settle(
        &self,
        lease: &Lease,
        outputs: Vec<(String, Vec<OutboundMessage>)>,
    ) -> Result<(), StoreError> {
        let now = unix_ms(SystemTime::now());
        let mut inserts = Vec::with_capacity(outputs.len());
        for (topic, messages) in outputs {
            if !messages.is_empty() {
                inserts.push((topic, to_rows(messages, now)?));
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
            changes.push(Change::Delete(lease.topic.clone(), vec![lease.seq]));
            (self.enqueue_all(changes), meta)
        };
        let result = done.await.map_err(|_| StoreError::Closed).and_then(|r| r);
        if result.is_err() {
            // Nothing was written: the message is still ours (unless a
            // reopen put it back from the file meanwhile).
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
    /// receive marks, so that the next open counts no receive too many.
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
            if changes.is_empty() {
                return Ok(());
            }
            self.enqueue_all(changes)
        };
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Up to `max` messages of `topic`, oldest first, without leasing them,
    /// and about [`MAX_PEEK_BYTES`] of payload at most: a peek (or a
    /// dead-letter listing) of a long topic never loads it whole. Blocking.
    pub fn peek(&self, topic: &str, max: usize) -> Result<Vec<InboundMessage>, StoreError> {
        self.peek_bounded(topic, max, MAX_PEEK_BYTES)
    }

    fn peek_bounded(
        &self,
        topic: &str,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<InboundMessage>, StoreError> {
        let tx = self.shared.db()?.begin_read().map_err(storage)?;
        let messages = match tx.open_table(MESSAGES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let state = tx.open_table(STATE).map_err(storage)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in messages
            .range((topic, 0u64)..=(topic, u64::MAX))
            .map_err(storage)?
            .take(max)
        {
            if bytes >= max_bytes {
                break;
            }
            let (key, row) = entry.map_err(storage)?;
            let receives = state
                .get(key.value())
                .map_err(storage)?
                .map(|s| s.value().0)
                .unwrap_or(0);
            let message = to_message(topic, row.value(), receives)?;
            bytes += message.payload.len();
            out.push(message);
        }
        Ok(out)
    }

    /// Deletes the message `id` of `topic`, leased or not. Returns whether it
    /// was there.
    pub async fn remove_by_id(&self, topic: &str, id: &str) -> Result<bool, StoreError> {
        let db = self.shared.db()?;
        let (t, i) = (topic.to_string(), id.to_string());
        let seq = tokio::task::spawn_blocking(move || -> Result<Option<u64>, StoreError> {
            let tx = db.begin_read().map_err(storage)?;
            let table = match tx.open_table(MESSAGES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(storage(e)),
            };
            for entry in table
                .range((t.as_str(), 0u64)..=(t.as_str(), u64::MAX))
                .map_err(storage)?
            {
                let (key, row) = entry.map_err(storage)?;
                if row.value().0 == i {
                    return Ok(Some(key.value().1));
                }
            }
            Ok(None)
        })
        .await
        .map_err(storage)??;
        let Some(seq) = seq else { return Ok(false) };
        let done = self.with_topic(topic, |t| {
            let meta = t.meta.remove(&seq)?;
            t.queue.remove(&(meta.visible_ms, seq));
            Some(self.enqueue(Change::Delete(topic.to_string(), vec![seq])))
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
fn to_rows(messages: Vec<OutboundMessage>, now: u64) -> Result<Vec<Row>, StoreError> {
    messages
        .into_iter()
        .map(|m| {
            Ok(Row {
                seq: 0,
                id: uuid::Uuid::now_v7().to_string(),
                headers: serde_json::to_string(&m.headers).map_err(storage)?,
                payload: m.payload,
                enqueued_ms: now,
            })
        })
        .collect()
}

fn to_message(
    topic: &str,
    (id, headers, payload, enqueued_ms): StoredMessage,
    receives: u32,
) -> Result<InboundMessage, StoreError> {
    Ok(InboundMessage {
        id: id.to_string(),
        topic: topic.to_string(),
        payload: payload.to_vec(),
        headers: serde_json::from_str(headers).map_err(storage)?,
        attempt: receives,
        enqueued_at: Some(from_unix_ms(enqueued_ms)),
        undecodable: None,
    })
}

/// Rebuilds the in-memory queues from the `state` table.
///
/// At start (`after_crash`), the file was last written by a router that is
/// gone: a lease found in it (written by a version that kept leases on disk)
/// is freed with its receive already counted, every message below its
/// topic's receive mark counts one more receive, and the marks are reset,
/// all in one transaction before anything is handed out. After a reopen
/// (not `after_crash`), the file is read as it is, marks included.
fn load(db: &Database, after_crash: bool) -> Result<HashMap<String, TopicState>, redb::Error> {
    let now = unix_ms(SystemTime::now());
    let tx = db.begin_write()?;
    let mut topics: HashMap<String, TopicState> = HashMap::new();
    {
        // Creating the tables here lets readers assume they exist.
        tx.open_table(MESSAGES)?;
        let mut state = tx.open_table(STATE)?;
        let mut marks = tx.open_table(MARKS)?;
        let mut mark_of = HashMap::new();
        for entry in marks.iter()? {
            let (topic, mark) = entry?;
            mark_of.insert(topic.value().to_string(), mark.value());
        }
        let mut bumped = Vec::new();
        for entry in state.iter()? {
            let (key, value) = entry?;
            let (topic, seq) = key.value();
            let (mut receives, mut visible_ms, mut leased) = value.value();
            let mark = mark_of.get(topic).copied().unwrap_or(0);
            let t = topics.entry(topic.to_string()).or_default();
            if after_crash {
                if leased {
                    (visible_ms, leased) = (now, false);
                }
                if seq < mark {
                    receives = receives.saturating_add(1);
                    bumped.push((topic.to_string(), seq, (receives, visible_ms)));
                }
            } else {
                t.mark = mark;
                t.mark_durable = mark;
            }
            t.reschedule(
                seq,
                Meta {
                    receives,
                    durable: receives,
                    visible_ms,
                    leased,
                },
            );
            t.next_seq = t.next_seq.max(seq + 1);
        }
        if after_crash {
            for (topic, seq, (receives, visible_ms)) in bumped {
                state.insert((topic.as_str(), seq), (receives, visible_ms, false))?;
            }
            for topic in mark_of.keys() {
                marks.remove(topic.as_str())?;
            }
        }
    }
    tx.commit()?;
    Ok(topics)
}

/// The writer thread: commits batches, and owns recovery from outages.
struct Writer {
    shared: Arc<Shared>,
    topics: Arc<Topics>,
    /// The database being reopened: dropped once no reader holds it.
    retired: Option<Arc<Database>>,
    next_attempt: Instant,
    backoff: Duration,
    last_logged: Option<Instant>,
}

impl Writer {
    fn new(shared: Arc<Shared>, topics: Arc<Topics>) -> Self {
        Self {
            shared,
            topics,
            retired: None,
            next_attempt: Instant::now(),
            backoff: REOPEN_BACKOFF.0,
            last_logged: None,
        }
    }

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
            let result = match self.shared.db() {
                Ok(db) => match commit(&db, &jobs) {
                    Ok(()) => {
                        self.shared
                            .commits
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        applied(&self.topics, &jobs);
                        Ok(())
                    }
                    Err(e) if poisons(&e) => {
                        drop(db);
                        self.start_outage(&e);
                        Err(self.shared.unavailable())
                    }
                    Err(e) => Err(storage(e)),
                },
                Err(e) => Err(e),
            };
            for job in jobs {
                let _ = job.reply.send(result.clone());
            }
        }
    }

    fn start_outage(&mut self, error: &redb::Error) {
        let reason = error.to_string();
        let path = self.shared.path.display().to_string();
        let recent = self
            .last_logged
            .is_some_and(|t| t.elapsed() < OUTAGE_LOG_INTERVAL);
        if recent {
            tracing::debug!(path = %path, error = %reason, "The embedded broker's store failed to write again.");
        } else {
            tracing::error!(
                path = %path,
                error = %reason,
                "The embedded broker's store cannot write (is the disk full?): the broker is not ready; it reopens the store by itself once writes succeed again."
            );
            self.last_logged = Some(Instant::now());
        }
        *self.shared.outage.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.retired = self
            .shared
            .db
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.backoff = REOPEN_BACKOFF.0;
        self.next_attempt = Instant::now() + self.backoff;
    }

    /// Reopens the file and makes a test write; on success, rebuilds the
    /// queues from the file and ends the outage.
    fn try_recover(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(REOPEN_BACKOFF.1);
        if let Some(old) = self.retired.take() {
            // redb locks the file per open; a reader still holding the old
            // handle finishes within moments.
            match Arc::try_unwrap(old) {
                Ok(db) => drop(db),
                Err(old) => {
                    self.retired = Some(old);
                    return;
                }
            }
        }
        let path = self.shared.path.clone();
        let recovered = open_redb(&path, Damaged::Refuse)
            .map_err(|e| e.to_string())
            .and_then(|db| probe(&db).map(|()| db).map_err(|e| e.to_string()))
            .and_then(|db| load(&db, false).map(|t| (db, t)).map_err(|e| e.to_string()));
        match recovered {
            Ok((db, fresh)) => {
                {
                    // The file says which messages are left (an ack may not
                    // have reached it); memory says which are leased and
                    // how often received (leases are not on disk).
                    let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
                    let mut old_topics = std::mem::take(&mut *topics);
                    for (name, new) in fresh {
                        let old = old_topics.remove(&name).unwrap_or_default();
                        let mut t = TopicState {
                            next_seq: old.next_seq.max(new.next_seq),
                            notify: old.notify.clone(),
                            mark: new.mark,
                            mark_durable: new.mark_durable,
                            ..TopicState::default()
                        };
                        for (seq, disk) in new.meta {
                            let meta = match old.meta.get(&seq) {
                                Some(m) => Meta {
                                    receives: m.receives.max(disk.durable),
                                    durable: disk.durable,
                                    ..*m
                                },
                                None => disk,
                            };
                            t.reschedule(seq, meta);
                        }
                        topics.insert(name, t);
                    }
                    for (name, old) in old_topics {
                        topics.insert(
                            name,
                            TopicState {
                                next_seq: old.next_seq,
                                notify: old.notify,
                                ..TopicState::default()
                            },
                        );
                    }
                    for t in topics.values() {
                        t.notify.notify_waiters();
                    }
                }
                *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
                *self.shared.outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.backoff = REOPEN_BACKOFF.0;
                tracing::info!(
                    path = %path.display(),
                    "The embedded broker's store writes again: the broker is ready."
                );
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "The embedded broker's store cannot be reopened yet.");
            }
        }
    }
}

/// A write that needs fresh pages, undone at once: whether the store can
/// take writes again.
fn probe(db: &Database) -> Result<(), redb::Error> {
    let filler = vec![0u8; PROBE_BYTES];
    let tx = db.begin_write()?;
    tx.open_table(PROBE)?.insert(0, filler.as_slice())?;
    tx.commit()?;
    let tx = db.begin_write()?;
    tx.delete_table(PROBE)?;
    tx.commit()?;
    Ok(())
}

fn commit(db: &Database, jobs: &[Job]) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut messages = tx.open_table(MESSAGES)?;
        let mut state = tx.open_table(STATE)?;
        let mut marks = tx.open_table(MARKS)?;
        for change in jobs.iter().flat_map(|j| &j.changes) {
            match change {
                Change::Insert(topic, rows) => {
                    for r in rows {
                        messages.insert(
                            (topic.as_str(), r.seq),
                            (
                                r.id.as_str(),
                                r.headers.as_str(),
                                r.payload.as_slice(),
                                r.enqueued_ms,
                            ),
                        )?;
                        state.insert((topic.as_str(), r.seq), (0, r.enqueued_ms, false))?;
                    }
                }
                Change::State(topic, rows) => {
                    for (seq, m) in rows {
                        state.insert((topic.as_str(), *seq), (m.receives, m.visible_ms, false))?;
                    }
                }
                Change::Mark(topic, 0) => {
                    marks.remove(topic.as_str())?;
                }
                Change::Mark(topic, mark) => {
                    marks.insert(topic.as_str(), *mark)?;
                }
                Change::Delete(topic, seqs) => {
                    for seq in seqs {
                        messages.remove((topic.as_str(), *seq))?;
                        state.remove((topic.as_str(), *seq))?;
                    }
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// What a commit changes in memory: new messages join their queues only
/// once they are on disk, and written counts and marks become the durable
/// ones.
fn applied(topics: &Topics, jobs: &[Job]) {
    let mut topics = topics.lock().unwrap_or_else(|p| p.into_inner());
    for change in jobs.iter().flat_map(|j| &j.changes) {
        match change {
            Change::Insert(topic, rows) => {
                let t = topics.entry(topic.clone()).or_default();
                for r in rows {
                    t.reschedule(
                        r.seq,
                        Meta {
                            receives: 0,
                            durable: 0,
                            visible_ms: r.enqueued_ms,
                            leased: false,
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
            Change::Delete(..) => {}
        }
    }
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
}

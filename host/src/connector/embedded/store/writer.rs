//! The writer thread: frames, rolls, deletion and compaction of segments, outages.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::super::log::{self, Live, Loc, Record};
use super::cleaner::Cleaner;
use super::*;
use crate::message::unix_ms;

/// The writer thread: appends frames, rolls, deletes and compacts segments,
/// and owns recovery from outages.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) topics: Arc<Topics>,
    pub(super) active: Arc<File>,
    pub(super) active_id: u64,
    /// Where the last durable frame of the active segment ends.
    pub(super) active_len: u64,
    /// Bytes of every segment.
    pub(super) seg_len: BTreeMap<u64, u64>,
    pub(super) live: Live,
    pub(super) segment_bytes: u64,
    pub(super) next_attempt: Instant,
    pub(super) backoff: Duration,
    pub(super) last_logged: Option<Instant>,
    /// Deletes segments and prepares the next one off the writer's path.
    pub(super) cleaner: Cleaner,
    /// The newest segment the cleaner was asked to prepare.
    pub(super) asked_to_prepare: u64,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>) {
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
            // A close asks for a roll and returns once it is done; a full
            // segment rolls after the frame's callers are answered (the
            // frame is durable), so they do not wait for the new file,
            // the deletions or a compaction.
            if result.is_ok() && asked() {
                self.roll_and_clean();
                self.cleaner.flush();
            }
            let full = result.is_ok() && self.active_len >= self.segment_bytes;
            for job in jobs {
                let _ = job.reply.send(result.clone());
            }
            self.prepare_next();
            if full {
                let started = Instant::now();
                self.roll_and_clean();
                // The next frame waited for this: the cause of latency tails.
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Rolled a segment of the embedded broker's log."
                );
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

    /// Once the active segment is a quarter full, asks the cleaner for the
    /// next one, its space written (see [`log::prepare_segment`]). Not
    /// sooner: a store that never fills a segment (most, in tests) never
    /// writes 64 MiB of zeros.
    fn prepare_next(&mut self) {
        let next = self.active_id + 1;
        if self.asked_to_prepare < next && self.active_len >= self.segment_bytes / 4 {
            self.cleaner.prepare(next, self.segment_bytes);
            self.asked_to_prepare = next;
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
        let dir = &self.shared.dir;
        let made = match self.cleaner.take_prepared(id) {
            Some((file, tmp)) => {
                log::finish_segment(dir, id, &file, &tmp, &first).map(|len| (file, len))
            }
            None => log::create_segment(dir, id, &first),
        };
        match made {
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

    /// Gives up segments, oldest first, while every message written to them
    /// is acknowledged (never the active one, never one after a live one:
    /// a retry's count written there may be the last word on an older
    /// message); the cleaner deletes their files.
    pub(super) fn delete_dead_segments(&mut self) {
        let mut dead = Vec::new();
        while let Some(&oldest) = self.seg_len.keys().next() {
            if oldest == self.active_id || self.live.count(oldest) > 0 {
                break;
            }
            self.shared
                .files
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&oldest);
            self.seg_len.remove(&oldest);
            self.live.forget(oldest);
            dead.push(oldest);
        }
        self.cleaner.delete(dead);
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

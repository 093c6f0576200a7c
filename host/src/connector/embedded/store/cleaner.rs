//! The cleaner thread: the file-system work of a roll that the next frame
//! need not wait for. It deletes the segments the writer has given up
//! (unlinks, then one directory sync) and prepares the next segment (its
//! file, header and space written with zeros, synced) once the current one
//! is a quarter full, so a roll costs
//! the writer one `fdatasync`, one rename and one directory sync. Under
//! disk load a roll with every step on the writer took 70–95 ms, a stall
//! of every publisher (B4's latency tail).

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::super::log;

enum Task {
    /// Delete these segments, oldest first, after any still pending.
    Delete(Vec<u64>),
    /// Prepare segment `id`, filled with zeros to this many bytes (see
    /// [`log::prepare_segment`]).
    Prepare(u64, u64),
    /// Answer once every task before this one is done.
    Flush(mpsc::Sender<()>),
}

/// The writer's handle on the cleaner thread; dropping it lets the thread
/// finish its queue and waits for it.
pub(super) struct Cleaner {
    tasks: Option<mpsc::Sender<Task>>,
    prepared: mpsc::Receiver<(u64, File, PathBuf)>,
    thread: Option<JoinHandle<()>>,
}

impl Cleaner {
    pub(super) fn start(dir: PathBuf) -> std::io::Result<Self> {
        let (tasks, rx) = mpsc::channel();
        let (done, prepared) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-store-cleaner".into())
            .spawn(move || work(&dir, &rx, &done))?;
        Ok(Self {
            tasks: Some(tasks),
            prepared,
            thread: Some(thread),
        })
    }

    /// Deletes `ids` in the background. The writer has already forgotten
    /// them; a deletion that fails is tried again before the next one, and
    /// a later segment is never deleted before an earlier one (a gap in the
    /// ids is damage at the next open).
    pub(super) fn delete(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.send(Task::Delete(ids));
        }
    }

    pub(super) fn prepare(&self, id: u64, fill: u64) {
        self.send(Task::Prepare(id, fill));
    }

    /// Segment `id`'s prepared file and its temporary name, if the cleaner
    /// has it ready. An older one (the roll could not wait for it, or it is
    /// from before an outage) is deleted.
    pub(super) fn take_prepared(&self, id: u64) -> Option<(File, PathBuf)> {
        while let Ok((ready, file, path)) = self.prepared.try_recv() {
            if ready == id {
                return Some((file, path));
            }
            drop(file);
            let _ = std::fs::remove_file(&path);
        }
        None
    }

    /// Waits until every task sent so far is done.
    pub(super) fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Task::Flush(tx));
        let _ = rx.recv();
    }

    fn send(&self, task: Task) {
        if let Some(tasks) = &self.tasks {
            let _ = tasks.send(task);
        }
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        self.tasks.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn work(
    dir: &std::path::Path,
    tasks: &mpsc::Receiver<Task>,
    prepared: &mpsc::Sender<(u64, File, PathBuf)>,
) {
    let mut pending = VecDeque::new();
    for task in tasks {
        match task {
            Task::Delete(ids) => {
                pending.extend(ids);
                delete(dir, &mut pending);
            }
            Task::Prepare(id, fill) => {
                let path = log::ahead_path(dir, id);
                match log::prepare_segment(&path, id, fill) {
                    Ok(file) => {
                        let _ = prepared.send((id, file, path));
                    }
                    Err(e) => {
                        // The roll creates the segment itself, as it would
                        // without a cleaner, and reports what fails there.
                        tracing::debug!(dir = %dir.display(), error = %e, "Cannot prepare the embedded broker's next segment.");
                    }
                }
            }
            Task::Flush(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

/// Deletes `pending` oldest first, stopping at the first that fails (kept
/// for the next time), then syncs the directory once.
fn delete(dir: &std::path::Path, pending: &mut VecDeque<u64>) {
    let mut removed = false;
    while let Some(&id) = pending.front() {
        let path = dir.join(log::segment_name(id));
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "Cannot delete a segment of the embedded broker's log; it is tried again at the next roll.");
                break;
            }
        }
        pending.pop_front();
    }
    if removed && let Err(e) = log::sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "Cannot sync the embedded broker's log directory.");
    }
}

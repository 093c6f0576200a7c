//! Batches (`batch = { ... }`): the messages of a flow whose algorithm
//! takes batches are grouped and run by one `apply-batch` call on one fresh
//! instance.
//!
//! Each message keeps its own worker task, lease and settlement: the task
//! hands its message to the flow's [`Batcher`] where it would have invoked
//! the algorithm, and gets it back with its own [`Outcome`]. So a batch's
//! messages are acknowledged, retried and dead-lettered one by one, by the
//! same code as unbatched ones, and key order holds as without batches (a
//! key's next message is not handed over before the previous one settled,
//! so a batch holds at most one message of a key).
//!
//! A batch is called when it is full (`max_messages`, or `max_bytes`, which
//! the next message would pass), when `max_wait_ms` passed since its first
//! message, when a message for another version of the algorithm arrives (a
//! batch runs one version), or when the flow stops. A retried message runs
//! alone (see [`Batcher::add`]). The call holds one of the flow's
//! `concurrency` slots; messages waiting for their batch hold none. What
//! the algorithm published during the call is sent, durably, before any
//! message of the batch is settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::BatchSpec;
use crate::message::InboundMessage;
use crate::sandbox::{Algorithm, Failure, Outcome};
use crate::telemetry::trace::TraceContext;

use super::effects::Provenance;
use super::events::batch_invoked;
use super::worker::{TRACEPARENT_HEADER, Worker};

/// A flow's open batch, and how batches are cut.
pub(super) struct Batcher {
    spec: BatchSpec,
    open: std::sync::Mutex<Open>,
    /// Set when the flow stops.
    stopping: AtomicBool,
}

#[derive(Default)]
struct Open {
    batch: Option<Pending>,
    /// The number of the next batch, so that a batch's timer flushes only
    /// its own batch.
    next: u64,
}

/// A batch being filled.
struct Pending {
    number: u64,
    algorithm: Arc<Algorithm>,
    items: Vec<Item>,
    bytes: u64,
}

/// A message waiting in a batch, and where its outcome goes.
struct Item {
    message: InboundMessage,
    reply: oneshot::Sender<(InboundMessage, Outcome)>,
}

impl Batcher {
    pub(super) fn new(spec: BatchSpec) -> Self {
        Self {
            spec,
            open: Default::default(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Runs `message` in a batch of `algorithm` and returns its outcome,
    /// with `message` whole again. `None` when the batch was lost before it
    /// answered (its task panicked): `message` is then only its id and
    /// attempt, and must be given back to the broker, not settled.
    pub(super) async fn run(
        &self,
        worker: &Worker,
        algorithm: &Arc<Algorithm>,
        message: &mut InboundMessage,
    ) -> Option<Outcome> {
        let (reply, answer) = oneshot::channel();
        let stub = InboundMessage {
            id: message.id.clone(),
            topic: String::new(),
            payload: Vec::new(),
            headers: Vec::new(),
            attempt: message.attempt,
            enqueued_at: None,
            undecodable: None,
        };
        let item = Item {
            message: std::mem::replace(message, stub),
            reply,
        };
        let (full, timer) = self.add(algorithm, item);
        for batch in full {
            tokio::spawn(run_batch(worker.clone(), batch));
        }
        if let Some(number) = timer {
            let worker = worker.clone();
            let wait = Duration::from_millis(self.spec.max_wait_ms);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let Some(batcher) = worker.batcher.clone() else {
                    return;
                };
                if let Some(batch) = batcher.take(number) {
                    run_batch(worker, batch).await;
                }
            });
        }
        let (back, outcome) = answer.await.ok()?;
        *message = back;
        Some(outcome)
    }

    /// Adds `item` to the open batch. Returns the batches to run now and
    /// the number of a batch `item` opened, whose timer is to be armed. A
    /// batch runs now when `item` is for another version (the open one),
    /// would take it past `max_bytes` (the open one, before `item` joins),
    /// fills it, or arrives while the flow stops. A retried message runs
    /// in a batch of its own, at once: after a trap or a timeout failed a
    /// whole batch, each of its messages is tried alone, so one poisoned
    /// message cannot take the others with it to their last attempt.
    fn add(&self, algorithm: &Arc<Algorithm>, item: Item) -> (Vec<Pending>, Option<u64>) {
        let size = item.message.payload.len() as u64;
        if item.message.attempt > 1 {
            let alone = Pending {
                number: u64::MAX,
                algorithm: algorithm.clone(),
                items: vec![item],
                bytes: size,
            };
            return (vec![alone], None);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut ready = Vec::new();
        if let Some(b) = &open.batch
            && (!Arc::ptr_eq(&b.algorithm, algorithm) || b.bytes + size > self.spec.max_bytes)
        {
            ready.extend(open.batch.take());
        }
        let mut opened = None;
        if open.batch.is_none() {
            let number = open.next;
            open.next += 1;
            opened = Some(number);
            open.batch = Some(Pending {
                number,
                algorithm: algorithm.clone(),
                items: Vec::with_capacity(self.spec.max_messages as usize),
                bytes: 0,
            });
        }
        let batch = open.batch.as_mut().expect("a batch is open");
        batch.bytes += size;
        batch.items.push(item);
        if batch.items.len() >= self.spec.max_messages as usize
            || batch.bytes >= self.spec.max_bytes
            || self.stopping.load(Ordering::Relaxed)
        {
            ready.extend(open.batch.take());
            // Its timer finds another batch, or none, and leaves it.
            opened = None;
        }
        (ready, opened)
    }

    /// The flow stops: the open batch runs now, and so does every message
    /// handed over from here on, without waiting for more.
    pub(super) fn stop(&self, worker: &Worker) {
        self.stopping.store(true, Ordering::Relaxed);
        let open = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .batch
            .take();
        if let Some(batch) = open {
            tokio::spawn(run_batch(worker.clone(), batch));
        }
    }

    /// The open batch if it is batch `number`.
    fn take(&self, number: u64) -> Option<Pending> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.batch.as_ref().is_some_and(|b| b.number == number) {
            open.batch.take()
        } else {
            None
        }
    }
}

/// Calls `apply-batch` on `batch` under one of the flow's invocation
/// slots, sends what the call published, and answers each message.
async fn run_batch(worker: Worker, batch: Pending) {
    let Pending {
        algorithm, items, ..
    } = batch;
    let (mut messages, replies): (Vec<_>, Vec<_>) =
        items.into_iter().map(|i| (i.message, i.reply)).unzip();
    let (prepared, resolver) = worker.prepare(&algorithm).await;
    let outcome = {
        let mut all = messages.iter_mut();
        let first = all.next().expect("a batch holds a message");
        let rest = all.collect();
        let invocation = prepared.invocation(worker.flow.clone(), first, resolver);
        let _slot = worker.slots.clone().acquire_owned().await;
        worker
            .services
            .sandbox
            .invoke_batch(&algorithm, invocation, rest)
            .await
    };
    batch_invoked(
        &worker.flow,
        &worker.status,
        &worker.services.metrics,
        messages.len(),
    );
    let mut results = outcome.results;
    if !outcome.published.is_empty()
        && let Some(first) = results.iter().position(Result::is_ok)
        && let Err(failure) =
            send_published(&worker, &algorithm, &messages[first], outcome.published).await
    {
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(failure.clone());
        }
    }
    for ((message, result), reply) in messages.into_iter().zip(results).zip(replies) {
        let outcome = Outcome {
            result,
            published: Vec::new(),
            duration: outcome.duration,
            slot_wait: outcome.slot_wait,
            peak_memory_bytes: outcome.peak_memory_bytes,
            fuel_used: outcome.fuel_used,
        };
        // A task that is gone (the flow stopped) leaves its message leased:
        // the broker delivers it again.
        let _ = reply.send((message, outcome));
    }
}

/// Sends what a batch published, stamped as caused by `message` (its first
/// successful message), and waits until it is durable.
async fn send_published(
    worker: &Worker,
    algorithm: &Algorithm,
    message: &InboundMessage,
    published: Vec<(String, crate::message::OutboundMessage)>,
) -> Result<(), Failure> {
    let trace = TraceContext::for_message(message.header(TRACEPARENT_HEADER));
    let handles = worker.handles(algorithm);
    let from = Provenance {
        algorithm,
        version: &handles.labels.algorithm,
        message,
        trace: &trace,
    };
    let enqueued = worker.enqueue_effects(from, None, published, None).await?;
    futures::future::try_join_all(enqueued.delivering)
        .await
        .map(|_| ())
}

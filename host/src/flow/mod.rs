//! Event flows: a loop per flow that receives from its topic while it has
//! room, hands each message to a [`worker::Worker`] task, and on shutdown
//! stops receiving and lets in-flight work finish.
//!
//! Backpressure is pull-based: the loop asks the source for at most as many
//! messages as the flow has room for in flight, and waits for room when
//! there is none, so nothing is buffered without bound. `concurrency` bounds
//! the invocations that run; a message holds its invocation slot only while
//! its invocation runs, not while its effects and acknowledgement are
//! committed. On the embedded broker (whose commits are grouped) up to
//! [`IN_FLIGHT_PER_SLOT`] × `concurrency` messages (at least
//! [`MIN_IN_FLIGHT`]) are in flight, so invocations keep running while
//! earlier messages wait for their commit; on other brokers, `concurrency`.

mod batcher;
mod dead_letter;
mod effects;
pub mod envelope;
mod events;
pub mod filter;
mod journal;
mod keys;
mod parked;
pub mod retry;
pub mod rollout;
mod status;
pub mod throttle;
pub mod topology;
mod waiting;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::TopicSpec;
use crate::config::{FlowOrdering, FlowSpec, KeyFailure};
use crate::connector::{Delivery, Source, SourceOptions};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sandbox::Sandbox;
use crate::state::StateStore;

pub use status::{FlowReport, FlowState, FlowStatus};
pub use topology::{Broker, Topology, TopologyHandle};
use worker::Worker;

/// Services shared by every flow.
pub struct Services {
    /// The WebAssembly sandbox.
    pub sandbox: Arc<Sandbox>,
    /// Loaded algorithms.
    pub registry: Arc<Registry>,
    /// The router's durable state (failure journal, secrets).
    pub state: StateStore,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The algorithms' secrets, by `owner/name`, mirrored from `state`.
    pub secrets: RwLock<HashMap<String, Vec<(String, String)>>>,
    /// Signs the dead letters this router writes, and verifies them on read.
    pub dead_letter_key: envelope::DeadLetterKey,
    /// The flows' canaries.
    pub rollouts: rollout::Rollouts,
}

impl Services {
    /// The environment an algorithm sees: its secrets.
    pub async fn secret_env(&self, owner: &str, name: &str) -> Vec<(String, String)> {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        secrets
            .get(&format!("{owner}/{name}"))
            .cloned()
            .unwrap_or_default()
    }

    /// Reloads the secret mirror from the state store.
    pub fn reload_secrets(&self) -> anyhow::Result<()> {
        let mut by_algorithm: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (alg, name, value) in self.state.all_secrets()? {
            by_algorithm.entry(alg).or_default().push((name, value));
        }
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = by_algorithm;
        Ok(())
    }
}

/// The most characters of a flow's last error kept for its status.
pub const LAST_ERROR_CHARS: usize = 300;
/// How long a Kafka flow may go without a partition assignment before
/// `/readyz` reports it, unless `consumer.assignment_grace_secs` says.
pub const DEFAULT_ASSIGNMENT_GRACE: Duration = Duration::from_secs(30);

/// `text` on one line of at most `max` characters: control characters
/// (newlines of a multi-line error, say) become spaces, runs of whitespace
/// one space, and a cut is marked with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let (mut count, mut space) = (0, false);
    for c in text.trim().chars() {
        if c.is_whitespace() || c.is_control() {
            space = true;
            continue;
        }
        if std::mem::take(&mut space) {
            out.push(' ');
            count += 1;
        }
        out.push(c);
        count += 1;
        if count > max {
            let cut = out
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(out.len(), |(i, _)| i);
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

/// Extra time a lease lasts beyond the invocation timeout, for publishing
/// effects and settling.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Most messages asked for in one receive.
const MAX_BATCH: usize = 256;
/// Messages in flight per invocation slot on a broker that settles in its
/// own store (the embedded broker).
pub const IN_FLIGHT_PER_SLOT: usize = 4;
/// The fewest messages in flight on such a broker.
pub const MIN_IN_FLIGHT: usize = 64;
/// The most messages in flight on such a broker (a bound on memory).
pub const MAX_IN_FLIGHT: usize = 1024;
/// The most messages in flight of a flow with batches (at least two full
/// batches on a broker that settles in groups, one on others).
pub const MAX_BATCHED_IN_FLIGHT: usize = 4096;

/// Runs one flow until `shutdown` fires; then stops receiving and waits up to
/// `grace` for in-flight messages, releasing what is left to the broker.
pub async fn run(
    spec: Arc<FlowSpec>,
    topologies: TopologyHandle,
    services: Arc<Services>,
    status: Arc<FlowStatus>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let flow: Arc<str> = spec.name.as_str().into();
    status.set_state(FlowState::Starting);
    let Some(setup) = Setup::new(&spec, &topologies.current(), &services, &status) else {
        return;
    };
    let Ok(filter) = filter::for_flow(&spec, &status) else {
        return;
    };
    let mut backoff = Backoff::new();
    let Some(mut source) = connect(&spec, &setup, &status, &shutdown, &mut backoff).await else {
        status.set_state(FlowState::Stopped);
        return;
    };
    backoff.reset();
    status.set_assignment(source.assignment());
    let throttle = log_throttle(&services, &spec.name);
    let flusher = spawn_flusher(throttle.clone(), flow.clone(), shutdown.clone());
    let mut worker = Worker {
        spec: spec.clone(),
        topology: topologies.clone(),
        services: services.clone(),
        status: status.clone(),
        flow: flow.clone(),
        metric_handles: Default::default(),
        broker_kind: setup.broker.spec.kind(),
        native_max_receives: source.native_max_receives(),
        lease: setup.lease,
        throttle: throttle.clone(),
        slots: Arc::new(Semaphore::new(spec.concurrency as usize)),
        filter,
        rollout: services.rollouts.start(&spec, &services.metrics, &status),
        parking: (spec.on_key_failure == KeyFailure::Park).then(Default::default),
        key_header: source.key_header(),
        auto_rollout: services.rollouts.start_auto(
            &spec,
            &services.metrics,
            &status,
            &services.state,
        ),
        shadow: None,
        batcher: spec.batch.map(|b| Arc::new(batcher::Batcher::new(b))),
    };
    worker.shadow = rollout::start_shadow(&worker);
    if let Some(n) = worker.native_max_receives {
        tracing::info!(
            flow = %flow,
            max_receive_count = n,
            "The queue has a redrive policy: its maxReceiveCount applies instead of max_receives."
        );
    }
    let chain = Arc::new(std::sync::Mutex::new(keys::KeyChain::default()));
    let releaser = parked::start_releaser(worker.clone(), chain.clone(), shutdown.clone()).await;
    let tasks = ReceiveLoop {
        source: &mut source,
        worker: &worker,
        // Room for messages in flight; invocation slots are the worker's.
        slots: Arc::new(Semaphore::new(setup.window)),
        max_batch: setup.options.max_batch,
        tasks: JoinSet::new(),
        keys: spec.by_key().then_some(chain),
        backoff,
        shutdown: &shutdown,
    }
    .run()
    .await;
    if let Some(batcher) = &worker.batcher {
        // The open batch must not wait out `max_wait_ms` (up to a minute)
        // while the flow drains.
        batcher.stop(&worker);
    }
    drain(tasks, grace, &flow, &status).await;
    if let Some(releaser) = releaser {
        let _ = releaser.await;
    }
    source.close().await;
    flusher.abort();
    throttle.flush(&flow);
    status.set_assignment(None);
    status.set_state(FlowState::Stopped);
    tracing::info!(flow = %flow, "Flow stopped.");
}

/// What a flow needs from the topology to open its consumer, and how much
/// it may have in flight.
struct Setup {
    /// The broker connection it consumes from.
    broker: Broker,
    /// The topic it consumes.
    topic: TopicSpec,
    /// How long a received message stays leased.
    lease: Duration,
    /// Messages in flight at most.
    window: usize,
    /// The consumer's options.
    options: SourceOptions,
}

impl Setup {
    /// Looks up the flow's broker connection and topic; when either is
    /// missing, the flow's status says so and there is nothing to run.
    fn new(
        spec: &FlowSpec,
        topology: &Topology,
        services: &Services,
        status: &FlowStatus,
    ) -> Option<Self> {
        let Some(broker) = topology.brokers.get(&spec.broker).cloned() else {
            status.set_state(FlowState::Stopped);
            status.failed(&format!(
                "broker connection {:?} is not connected",
                spec.broker
            ));
            return None;
        };
        let Some(topic) = topology.topic(&spec.broker, &spec.topic).cloned() else {
            status.set_state(FlowState::Stopped);
            status.failed(&format!("topic {:?} is not declared", spec.topic));
            return None;
        };
        // A message in a batch may wait `max_wait_ms` for it before the
        // call starts.
        let batch_wait = spec
            .batch
            .map_or(Duration::ZERO, |b| Duration::from_millis(b.max_wait_ms));
        let lease = Duration::from_secs_f64(spec.timeout_secs) + batch_wait + LEASE_MARGIN;
        let concurrency = spec.concurrency as usize;
        let local = broker.connection.local_store().is_some();
        let mut window = if local {
            (concurrency * IN_FLIGHT_PER_SLOT).clamp(MIN_IN_FLIGHT, MAX_IN_FLIGHT.max(concurrency))
        } else {
            concurrency
        };
        if let Some(b) = spec.batch {
            // Room for a full batch per slot; on a broker that settles in
            // groups, for the next ones to fill while batches commit.
            let per_slot = b.max_messages as usize * if local { 2 } else { 1 };
            window = window.max((concurrency * per_slot).min(MAX_BATCHED_IN_FLIGHT.max(per_slot)));
        }
        let partition_turns = spec.ordering_on(broker.spec.kind()) == FlowOrdering::Partition;
        let options = SourceOptions {
            flow: spec.name.clone(),
            lease,
            max_batch: window.min(MAX_BATCH),
            group_id: spec
                .consumer
                .group_id
                .clone()
                .unwrap_or_else(|| format!("eventflow-{}", spec.name)),
            saturation_delay: Duration::from_secs(
                spec.consumer.saturation_delay_secs.unwrap_or(300),
            ),
            // In key order, or none, a partition's messages run as far as
            // the flow has room: the keys, or nothing, hold them back.
            in_flight_per_partition: spec.consumer.in_flight_per_partition.map_or(
                if partition_turns {
                    spec.batch
                        .map_or(8, |b| b.max_messages.clamp(8, 64) as usize)
                } else {
                    window
                },
                |n| n as usize,
            ),
            partition_turns,
            metrics: Some(services.metrics.clone()),
        };
        Some(Self {
            broker,
            topic,
            lease,
            window,
            options,
        })
    }
}

/// Opens the flow's consumer, retrying with `backoff` while the broker
/// refuses; `None` if `shutdown` fired first.
async fn connect(
    spec: &FlowSpec,
    setup: &Setup,
    status: &FlowStatus,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Option<Box<dyn Source>> {
    loop {
        match setup
            .broker
            .connection
            .source(&setup.topic, &setup.options)
            .await
        {
            Ok(s) => return Some(s),
            Err(e) => {
                let delay = backoff.next();
                tracing::error!(
                    flow = %spec.name,
                    broker = %spec.broker,
                    topic = %spec.topic,
                    error = %format!("{e:#}"),
                    retry_in = ?delay,
                    "Cannot open the flow's consumer; retrying."
                );
                status.set_state(FlowState::Disconnected);
                status.failed(&format!("cannot open the consumer: {e:#}"));
                if sleep_or_stop(delay, shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Keeps the errors of flow `name` that repeat for every message to a few
/// lines, counting the rest.
fn log_throttle(services: &Services, name: &str) -> Arc<throttle::LogThrottle> {
    let suppressed = services
        .metrics
        .log_lines_suppressed
        .get_or_create(&crate::metrics::FlowOnly {
            flow: name.to_string(),
        })
        .clone();
    Arc::new(throttle::LogThrottle::new(
        throttle::LOG_INTERVAL,
        suppressed,
    ))
}

/// Flushes the throttled log lines of `flow` every second until `stop`.
fn spawn_flusher(
    throttle: Arc<throttle::LogThrottle>,
    flow: Arc<str>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => throttle.flush(&flow),
            }
        }
    })
}

/// The receive loop of one flow: while there is room in flight and a loaded
/// version of the algorithm, receive and hand each message to a worker
/// task. Per-message work never ends the loop; only `shutdown` does.
struct ReceiveLoop<'a> {
    source: &'a mut Box<dyn Source>,
    worker: &'a Worker,
    /// Room for messages in flight.
    slots: Arc<Semaphore>,
    /// Most messages asked for in one receive.
    max_batch: usize,
    /// The messages being handled.
    tasks: JoinSet<()>,
    /// Each key's turns, with `ordering = "key"` (shared with the releases
    /// of parked keys).
    keys: Option<Arc<std::sync::Mutex<keys::KeyChain>>>,
    /// Delays between failed receives.
    backoff: Backoff,
    shutdown: &'a CancellationToken,
}

/// Whether the receive loop goes on.
enum Next {
    /// Go on with this iteration.
    Proceed,
    /// Start the next iteration.
    Again,
    /// Stop: `shutdown` fired.
    Stop,
}

impl ReceiveLoop<'_> {
    /// Runs until `shutdown` fires and returns the messages still in flight.
    async fn run(mut self) -> JoinSet<()> {
        let mut plugin_changes = self.worker.services.registry.subscribe();
        let mut waiting = None;
        let (spec, flow) = (&self.worker.spec, &self.worker.flow);
        tracing::info!(flow = %flow, topic = %spec.topic, algorithm = %spec.algorithm, "Flow started.");
        self.worker.status.set_state(FlowState::Running);
        while !self.shutdown.is_cancelled() {
            while self.tasks.try_join_next().is_some() {}
            match self
                .wait_for_algorithm(&mut plugin_changes, &mut waiting)
                .await
            {
                Next::Proceed => {}
                Next::Again => continue,
                Next::Stop => break,
            }
            let first_slot = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                slot = self.slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let free = 1 + self.slots.available_permits();
            let batch = match self.source.receive(free.min(self.max_batch)).await {
                Ok(batch) => batch,
                Err(e) => {
                    drop(first_slot);
                    match self.receive_failed(e).await {
                        Next::Stop => break,
                        _ => continue,
                    }
                }
            };
            self.received_again();
            self.dispatch(batch, first_slot).await;
        }
        self.tasks
    }

    /// A receive succeeded: after failures, the flow runs again.
    fn received_again(&mut self) {
        if self.backoff.failures > 0 {
            tracing::info!(flow = %self.worker.flow, "Receiving again.");
            self.worker.status.set_state(FlowState::Running);
        }
        self.backoff.reset();
    }

    /// A receive failed: logs it and waits out the backoff.
    async fn receive_failed(&mut self, e: anyhow::Error) -> Next {
        let delay = self.backoff.next();
        tracing::error!(
            flow = %self.worker.flow,
            error = %format!("{e:#}"),
            retry_in = ?delay,
            "Receiving failed; retrying."
        );
        let status = &self.worker.status;
        status.set_state(FlowState::Disconnected);
        status.failed(&format!("receive failed: {e:#}"));
        if sleep_or_stop(delay, self.shutdown).await {
            Next::Stop
        } else {
            Next::Again
        }
    }

    /// Hands each message of `batch` to a worker task holding a slot, or
    /// releases them all when the algorithm went away (or stopped fitting
    /// the flow's limits) during `receive`.
    async fn dispatch(&mut self, batch: Vec<Delivery>, first_slot: OwnedSemaphorePermit) {
        let flow = &self.worker.flow;
        // Resolve again: a version published while `receive` waited must
        // handle what it returned.
        let Ok(algorithm) = self.usable_algorithm() else {
            for mut delivery in batch {
                if let Err(e) = delivery.settle.retry(Duration::ZERO).await {
                    tracing::warn!(flow = %flow, error = %format!("{e:#}"), "Could not release a message.");
                }
            }
            return;
        };
        let mut first_slot = Some(first_slot);
        for delivery in batch {
            // Only this loop takes slots, and it asked for no more messages
            // than were free, so a slot is always there.
            let slot = match first_slot.take() {
                Some(s) => s,
                None => self
                    .slots
                    .clone()
                    .try_acquire_owned()
                    .expect("received more messages than free slots"),
            };
            let (worker, algorithm) = (self.worker.clone(), algorithm.clone());
            let turn = self.keys.as_ref().and_then(|keys| {
                let key = delivery.message.header(self.worker.key_header)?;
                Some(keys.lock().unwrap_or_else(|p| p.into_inner()).turn(key))
            });
            // Boxed: the state machine of one message is several KiB, and
            // a task holds its future inline, so unboxed it would be copied
            // on spawn, on every stage change and when its output is taken.
            self.tasks.spawn(Box::pin(async move {
                worker.process_in_turn(delivery, algorithm, turn).await;
                drop(slot);
            }));
        }
    }
}

/// Waits up to `grace` for the messages in flight; what is left stays leased
/// and the broker redelivers it.
async fn drain(mut tasks: JoinSet<()>, grace: Duration, flow: &str, status: &FlowStatus) {
    status.set_state(FlowState::Stopping);
    let in_flight = status.in_flight();
    if in_flight > 0 {
        tracing::info!(flow = %flow, in_flight, "Flow stopping; finishing in-flight messages.");
    }
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            flow = %flow,
            left = tasks.len(),
            "In-flight messages did not finish within the grace period; they stay leased and the broker redelivers them."
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Sleeps for `d`; returns true if `shutdown` fired first.
pub async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Reconnect delays: 1 s doubling to 60 s.
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn new() -> Self {
        Self { failures: 0 }
    }
    fn next(&mut self) -> Duration {
        self.failures += 1;
        Duration::from_secs(1u64 << self.failures.saturating_sub(1).min(6))
            .min(Duration::from_secs(60))
    }
    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_errors_are_one_capped_line() {
        let dump = "service error: Unhandled(\n    Unhandled {\n\tsource: ErrorMetadata { code: Some(\"QueueDoesNotExist\") },\r\n    raw: SdkBody { inner: Once(Some(b\"...\")) },\n})";
        let line = one_line(dump, LAST_ERROR_CHARS);
        assert!(!line.contains(['\n', '\r', '\t']), "{line:?}");
        assert!(line.starts_with("service error: Unhandled( Unhandled { source:"));
        assert_eq!(one_line("  short  ", 300), "short");
        let long = "x".repeat(10 << 20);
        let cut = one_line(&long, LAST_ERROR_CHARS);
        assert_eq!(cut.chars().count(), LAST_ERROR_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(one_line(&"é".repeat(300), 300), "é".repeat(300));
    }
}

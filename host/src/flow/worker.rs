//! What happens to one delivered message: invoke, publish the effects,
//! settle. Nothing here returns an error to the flow loop: every outcome ends
//! in an ack, a retry or a dead letter, logged and counted.
//!
//! The effects are in [`super::effects`], a failure's way to a retry or a
//! dead letter in [`super::dead_letter`], the failure journal in
//! [`super::journal`].
//!
//! Per message, the payload is moved, never copied, from the delivery to
//! the sandbox, which copies it once, into the guest's memory; the metric
//! handles and the version label are made once per algorithm version; the
//! failure journal is touched (on the blocking pool) only for failures and
//! redeliveries; and no timer is armed for work that finishes without
//! waiting (see [`with_heartbeat`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tracing::Level;

use crate::config::{FlowSpec, Limits};
use crate::connector::{Delivery, MAX_RETRY_DELAY, Settle};
use crate::message::InboundMessage;
use crate::metrics::FlowMetrics;
use crate::sandbox::{Algorithm, AlgorithmId, Failure, Invocation, Outcome, Reason};
use crate::telemetry::trace::TraceContext;

use super::batcher::Batcher;
use super::effects::{Enqueued, Provenance, publish_failure};
use super::events::{MessageEvents, settle_failed};
use super::filter::Filter;
use super::keys::Turn;
use super::parked::Parking;
use super::retry::backoff;
use super::rollout::{AutoRollout, Rollout, Shadow};
use super::throttle::LogThrottle;
use super::topology::{FlowResolver, Topology, TopologyHandle};
use super::{FlowStatus, Services};

pub use super::effects::{
    ALGORITHM_HEADER, FLOW_HEADER, HASH_HEADER, SOURCE_ID_HEADER, TRACEPARENT_HEADER,
};

/// The per-message metrics of a flow for the algorithm version that ran
/// last, shared by a worker's clones: made again only when the version
/// changes.
pub(super) type MetricHandles = Arc<std::sync::Mutex<Option<(AlgorithmId, Arc<FlowMetrics>)>>>;

/// Handles deliveries for one flow. Cheap to clone into tasks.
#[derive(Clone)]
pub struct Worker {
    pub(super) spec: Arc<FlowSpec>,
    pub(super) topology: TopologyHandle,
    pub(super) services: Arc<Services>,
    pub(super) status: Arc<FlowStatus>,
    pub(super) flow: Arc<str>,
    /// The per-message metric handles of the algorithm version last run.
    pub(super) metric_handles: MetricHandles,
    pub(super) broker_kind: &'static str,
    /// The broker's own max receive count, when it dead-letters by itself.
    pub(super) native_max_receives: Option<u32>,
    /// How long a lease extension lasts.
    pub(super) lease: Duration,
    /// Keeps errors that repeat for every message to a few lines.
    pub(super) throttle: Arc<LogThrottle>,
    /// The flow's invocation slots (`concurrency`): held while an
    /// invocation runs, not while its effects are committed.
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    /// The flow's filter, compiled when the flow started; `None` passes
    /// every message.
    pub(super) filter: Option<Arc<Filter>>,
    /// The flow's canary, if it has one: it chooses each message's version.
    pub(super) rollout: Option<Arc<Rollout>>,
    /// The flow's `rollout`, if it has one: new versions become canaries.
    pub(super) auto_rollout: Option<Arc<AutoRollout>>,
    /// The flow's shadow, if it has one: offered every invoked message.
    pub(super) shadow: Option<Arc<Shadow>>,
    /// The flow's parked keys, with `on_key_failure = "park"`.
    pub(super) parking: Option<Arc<Parking>>,
    /// The header of a message's key (see `Source::key_header`).
    pub(super) key_header: &'static str,
    /// The flow's batches, with `batch`: where a message of an algorithm
    /// that takes batches goes to be invoked.
    pub(super) batcher: Option<Arc<Batcher>>,
}

impl Worker {
    /// The per-message metric handles for `algorithm`; their labels carry
    /// its `owner/name@version`.
    pub(super) fn handles(&self, algorithm: &Algorithm) -> Arc<FlowMetrics> {
        let mut cached = self
            .metric_handles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((id, handles)) = cached.as_ref()
            && *id == algorithm.id
        {
            return handles.clone();
        }
        let version = format!(
            "{}/{}@{}",
            algorithm.id.owner, algorithm.id.name, algorithm.id.version
        );
        let handles = Arc::new(self.services.metrics.flow_handles(&self.flow, &version));
        *cached = Some((algorithm.id.clone(), handles.clone()));
        handles
    }

    /// Reports what happens to `message`, handled by `algorithm`.
    pub(super) fn events<'a>(
        &'a self,
        algorithm: &'a Algorithm,
        message: &'a InboundMessage,
    ) -> MessageEvents<'a> {
        MessageEvents {
            flow: &self.flow,
            status: &self.status,
            metrics: &self.services.metrics,
            handles: self.handles(algorithm),
            throttle: &self.throttle,
            rollout: self.rollout.as_deref(),
            auto_rollout: self.auto_rollout.as_deref(),
            algorithm,
            message,
        }
    }

    /// Whether `message` passes the flow's filter (a payload that is not
    /// JSON passes no payload pattern).
    fn selects(&self, message: &InboundMessage) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| f.matches(&message.payload, &message.headers))
    }

    pub(super) fn max_receives(&self) -> u32 {
        self.native_max_receives.unwrap_or(self.spec.max_receives)
    }

    /// Whether to log this occurrence of an error that may repeat for every
    /// message: `Some(n)` with the repeats left out since the last line of
    /// its kind, or `None` to leave it out.
    pub(super) fn admit(&self, level: Level, what: &'static str, error: &str) -> Option<u64> {
        self.throttle.admit(level, what, error)
    }

    /// Processes one delivery once the previous message of its key is done
    /// (with `ordering = "key"`), keeping it leased meanwhile, or holds it
    /// if its key is parked; the next message of the key goes once this one
    /// is settled (its retries, in place, included).
    pub(super) async fn process_in_turn(
        &self,
        mut delivery: Delivery,
        algorithm: Arc<Algorithm>,
        turn: Option<Turn>,
    ) {
        let Some(mut turn) = turn else {
            return self.process(delivery, algorithm).await;
        };
        with_heartbeat(
            &mut delivery.settle,
            self.lease,
            &self.throttle,
            turn.wait(),
        )
        .await;
        if let Some(delivery) = self.hold_if_parked(delivery).await {
            self.process(delivery, algorithm).await;
        }
        drop(turn);
    }

    /// Processes one delivery to the end, in a span that continues the
    /// message's trace.
    pub async fn process(&self, delivery: Delivery, algorithm: Arc<Algorithm>) {
        use tracing::Instrument;
        let algorithm = match &self.rollout {
            Some(r) => r.choose(&delivery.message, algorithm, &self.services.registry),
            None => algorithm,
        };
        let algorithm = match &self.auto_rollout {
            Some(r) => r.choose(&delivery.message, algorithm, &self.services.registry),
            None => algorithm,
        };
        #[allow(unused_mut)]
        let mut trace = TraceContext::for_message(delivery.message.header(TRACEPARENT_HEADER));
        let span = tracing::info_span!(
            "message",
            flow = %self.flow,
            message_id = %delivery.message.id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = trace.parent_id.as_deref().unwrap_or(""),
        );
        #[cfg(feature = "otlp")]
        crate::telemetry::otlp::link(&span, &mut trace);
        span.record("trace_id", trace.trace_id.as_str());
        span.record("span_id", trace.span_id.as_str());
        self.process_in_trace(delivery, algorithm, trace)
            .instrument(span)
            .await
    }

    async fn process_in_trace(
        &self,
        delivery: Delivery,
        algorithm: Arc<Algorithm>,
        trace: TraceContext,
    ) {
        // The message is the worker's from here on: lent to the sandbox for
        // the invocation, never copied.
        let Delivery {
            mut message,
            mut settle,
        } = delivery;
        self.events(&algorithm, &message).received();

        if !self.selects(&message) {
            // Never invoked: nothing to retry or dead-letter.
            if self.ack(&mut settle, &message).await {
                self.events(&algorithm, &message).filtered();
            }
        } else if message.attempt > self.max_receives() {
            self.give_up_unrecorded(&mut settle, &algorithm, &message)
                .await;
        } else {
            loop {
                let Some(outcome) = self.invoke(&mut settle, &algorithm, &mut message).await else {
                    // Its batch was lost (see `Batcher::run`): the broker
                    // delivers the message again.
                    self.retry(&mut settle, &message, Duration::ZERO).await;
                    break;
                };
                let Some(delay) = self
                    .settle_outcome(&mut settle, &algorithm, &message, outcome, &trace)
                    .await
                else {
                    break;
                };
                // Retried in place, still leased: see `retry_in_place`.
                let wait = tokio::time::sleep(delay);
                with_heartbeat(&mut settle, self.lease, &self.throttle, wait).await;
                message.attempt += 1;
            }
        }

        self.events(&algorithm, &message).finished();
    }

    /// Runs the algorithm on `message`, in a batch when the flow has
    /// batches and the algorithm takes them, keeping the delivery leased
    /// meanwhile. `None`: the batch was lost (see [`Batcher::run`]).
    async fn invoke(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Arc<Algorithm>,
        message: &mut InboundMessage,
    ) -> Option<Outcome> {
        if let Some(batcher) = self.batcher.as_ref().filter(|_| algorithm.batches()) {
            let run = batcher.run(self, algorithm, message);
            return with_heartbeat(settle, self.lease, &self.throttle, run).await;
        }
        let (prepared, resolver) = self.prepare(algorithm).await;
        let invocation = prepared.invocation(self.flow.clone(), message, resolver);
        let slots = self.slots.clone();
        with_heartbeat(settle, self.lease, &self.throttle, async move {
            // The slot is released as soon as the invocation ends, before
            // its effects are published and the message settled.
            let _slot = slots.acquire_owned().await;
            Some(self.services.sandbox.invoke(algorithm, invocation).await)
        })
        .await
    }

    /// Prepares an attempt of `algorithm` with the limits and secrets in
    /// force now, and the resolver that checks its publishes against the
    /// flow's grants and counts its host calls; the resolver is handed to
    /// the invocation, the rest lent to it.
    pub(super) async fn prepare(&self, algorithm: &Algorithm) -> (Prepared, Arc<FlowResolver>) {
        let topology = self.topology.current();
        let (timeout, limits) = topology.limits_for(&self.spec, &algorithm.id);
        let env = self
            .services
            .secret_env(&algorithm.id.owner, &algorithm.id.name)
            .await;
        let resolver = Arc::new(FlowResolver {
            topology: topology.clone(),
            broker: self.spec.broker.clone(),
            algorithm: self.spec.algorithm.clone(),
            remaining: AtomicU32::new(limits.max_host_calls),
        });
        let prepared = Prepared {
            timeout,
            limits,
            env,
        };
        (prepared, resolver)
    }

    /// Publishes the effects of a successful invocation and acknowledges
    /// the message, or fails it; `Some(delay)` when it is to be retried in
    /// place after `delay`.
    async fn settle_outcome(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Arc<Algorithm>,
        message: &InboundMessage,
        outcome: Outcome,
        trace: &TraceContext,
    ) -> Option<Duration> {
        let events = self.events(algorithm, message);
        events.invoked(&outcome);
        if let Some(shadow) = &self.shadow {
            shadow.offer(message, &outcome);
        }
        let output = match outcome.result {
            Ok(output) => output,
            Err(failure) => {
                settle.pass_turn();
                return self.fail(settle, algorithm, message, failure).await;
            }
        };
        // In order: wait until the messages before this one (in its Kafka
        // partition) have handed their effects to the producer, hand ours
        // over, let the next message take its turn, and only then wait for
        // delivery.
        settle.wait_turn().await;
        let from = Provenance {
            algorithm,
            version: &events.handles.labels.algorithm,
            message,
            trace,
        };
        let local = settle.local_store();
        let enqueued = self
            .enqueue_effects(from, output, outcome.published, local)
            .await;
        settle.pass_turn();
        match self.commit(settle, message, enqueued).await {
            Ok(true) => self.succeeded(algorithm, message).await,
            Ok(false) => {}
            Err(failure) => return self.fail(settle, algorithm, message, failure).await,
        }
        None
    }

    /// Waits for the effects handed to other producers, then acknowledges
    /// the message together with the effects for its own store, in one
    /// transaction. `Ok(false)`: the acknowledgement failed (logged; the
    /// broker redelivers the message).
    async fn commit(
        &self,
        settle: &mut Box<dyn Settle>,
        message: &InboundMessage,
        enqueued: Result<Enqueued, Failure>,
    ) -> Result<bool, Failure> {
        let Enqueued { atomic, delivering } = enqueued?;
        futures::future::try_join_all(delivering).await?;
        if atomic.is_empty() {
            return Ok(self.ack(settle, message).await);
        }
        let keys = atomic
            .iter()
            .map(|(t, _)| Topology::key(t))
            .collect::<Vec<_>>()
            .join(", ");
        settle
            .ack_with(atomic)
            .await
            .map(|()| true)
            .map_err(|e| publish_failure(&keys, e))
    }

    /// The message was acknowledged after its effects were durable.
    async fn succeeded(&self, algorithm: &Algorithm, message: &InboundMessage) {
        self.events(algorithm, message).succeeded();
        if message.attempt > 1 {
            self.forget(&message.id).await;
        }
    }

    /// An attempt failed: retry the message with the flow's backoff, or
    /// give up on it. `Some(delay)`: retry it in place after `delay`.
    async fn fail(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Arc<Algorithm>,
        message: &InboundMessage,
        failure: Failure,
    ) -> Option<Duration> {
        let record = self.record(algorithm, message, &failure);
        let history = self.journal(&message.id, record.clone()).await;
        let last_attempt = message.attempt >= self.max_receives();
        let final_failure = !failure.reason.retryable() || last_attempt;
        self.events(algorithm, message).attempt_failed(
            &failure,
            self.max_receives(),
            final_failure,
        );
        if final_failure {
            let (first, last) = match history {
                Some(h) => (Some(h.first), h.last),
                None => (None, record),
            };
            self.park_key_of(message).await;
            self.give_up(settle, algorithm, message, first, last).await;
            return None;
        }
        // The algorithm's delay is a floor: it never makes the router retry
        // sooner than the flow's backoff allows.
        let delay = backoff(&self.spec.retry, message.attempt)
            .max(failure.retry_after.unwrap_or_default())
            .min(MAX_RETRY_DELAY);
        self.events(algorithm, message).retried(&failure.reason);
        if self.retry_in_place(message) {
            return Some(delay);
        }
        self.retry(settle, message, delay).await;
        None
    }

    /// Whether a failed attempt of `message` is retried in place, the
    /// message kept leased and its key's turn held: with `ordering =
    /// "key"`, a retry given back to the broker would come back behind the
    /// key's later messages.
    fn retry_in_place(&self, message: &InboundMessage) -> bool {
        self.spec.by_key() && message.header(self.key_header).is_some()
    }

    /// Gives up on a message delivered more often than allowed without a
    /// final verdict: the router died while handling it, or could not
    /// dead-letter it.
    async fn give_up_unrecorded(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Algorithm,
        message: &InboundMessage,
    ) {
        let history = self.history(&message.id).await;
        let last = history.as_ref().map(|h| h.last.clone()).unwrap_or_else(|| {
            self.record(
                algorithm,
                message,
                &Failure::new(
                    Reason::MaxReceivesExceeded,
                    format!(
                        "delivered {} times (max_receives is {}) without a recorded outcome; the router may have died while handling it",
                        message.attempt,
                        self.max_receives()
                    ),
                ),
            )
        });
        let first = history.map(|h| h.first);
        self.park_key_of(message).await;
        self.give_up(settle, algorithm, message, first, last).await;
    }

    pub(super) async fn ack(&self, settle: &mut Box<dyn Settle>, message: &InboundMessage) -> bool {
        match settle.ack().await {
            Ok(()) => true,
            Err(e) => {
                self.settle_error("Could not acknowledge a message", message, &e);
                false
            }
        }
    }

    pub(super) async fn retry(
        &self,
        settle: &mut Box<dyn Settle>,
        message: &InboundMessage,
        delay: Duration,
    ) {
        if let Err(e) = settle.retry(delay).await {
            self.settle_error("Could not release a message", message, &e);
        }
    }

    fn settle_error(&self, what: &'static str, message: &InboundMessage, error: &anyhow::Error) {
        settle_failed(
            &self.flow,
            &self.services.metrics,
            &self.throttle,
            what,
            message,
            error,
        );
    }
}

/// What an attempt of an algorithm version is lent besides the message (see
/// [`Worker::prepare`]).
pub(super) struct Prepared {
    timeout: Duration,
    limits: Limits,
    env: Vec<(String, String)>,
}

impl Prepared {
    /// The invocation of `message` in `flow`, borrowing the limits and the
    /// secrets, owning `resolver`.
    pub(super) fn invocation<'a>(
        &'a self,
        flow: Arc<str>,
        message: &'a mut InboundMessage,
        resolver: Arc<FlowResolver>,
    ) -> Invocation<'a> {
        Invocation {
            flow,
            message,
            timeout: self.timeout,
            limits: &self.limits,
            env: &self.env,
            resolver,
        }
    }
}

/// Runs `work`, extending the delivery's lease on the broker's heartbeat
/// interval until it finishes. The heartbeat's timer is armed only if
/// `work` does not finish on its first poll: an invocation that finds a
/// free slot usually runs to the end in one, and then costs no timer.
async fn with_heartbeat<F: std::future::Future>(
    settle: &mut Box<dyn Settle>,
    lease: Duration,
    throttle: &LogThrottle,
    work: F,
) -> F::Output {
    let Some(every) = settle.heartbeat() else {
        return work.await;
    };
    // One interval after the lease began, which may be before the work did
    // (the message waited for the flow): then the first tick is due at once.
    let first_tick = settle
        .leased_since()
        .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)
        + every;
    tokio::pin!(work);
    if let std::task::Poll::Ready(out) = futures::poll!(work.as_mut()) {
        return out;
    }
    let mut ticks = tokio::time::interval_at(first_tick, every);
    // A late renewal (an overdue first one, a busy machine) is followed by
    // the next one interval later, not by a burst of the missed ones.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = ticks.tick() => {
                if let Err(e) = settle.extend(lease).await {
                    const WHAT: &str = "Could not extend a message's lease";
                    let error = format!("{e:#}");
                    if let Some(suppressed) = throttle.admit(Level::WARN, WHAT, &error) {
                        tracing::warn!(error = %error, suppressed, "{WHAT}.");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts lease extensions, renewed every `every`; `since`: when the
    /// lease began, if the broker says.
    struct Leased {
        extends: Arc<AtomicUsize>,
        every: Duration,
        since: Option<std::time::Instant>,
    }

    impl Leased {
        fn boxed(
            extends: &Arc<AtomicUsize>,
            every: Duration,
            since: Option<std::time::Instant>,
        ) -> Box<dyn Settle> {
            Box::new(Leased {
                extends: extends.clone(),
                every,
                since,
            })
        }
    }

    #[async_trait::async_trait]
    impl Settle for Leased {
        async fn ack(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
        async fn retry(&mut self, _delay: Duration) -> anyhow::Result<()> {
            Ok(())
        }
        async fn extend(&mut self, _lease: Duration) -> anyhow::Result<()> {
            self.extends.fetch_add(1, Ordering::Relaxed);
            self.since = self.since.map(|_| std::time::Instant::now());
            Ok(())
        }
        fn heartbeat(&self) -> Option<Duration> {
            Some(self.every)
        }
        fn leased_since(&self) -> Option<std::time::Instant> {
            self.since
        }
    }

    fn throttle() -> LogThrottle {
        LogThrottle::new(Duration::from_secs(1), Default::default())
    }

    #[tokio::test]
    async fn work_that_waits_keeps_its_lease_and_work_that_does_not_never_extends() {
        let extends = Arc::new(AtomicUsize::new(0));
        let mut settle = Leased::boxed(&extends, Duration::from_millis(10), None);
        let lease = Duration::from_secs(1);
        // Armed only once the work is found waiting, the heartbeat still
        // ticks every 10 ms of a 100 ms wait (a loaded machine may merge a
        // few ticks).
        let waited = with_heartbeat(&mut settle, lease, &throttle(), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            7
        })
        .await;
        assert_eq!(waited, 7);
        assert!(extends.load(Ordering::Relaxed) >= 3, "{extends:?}");

        extends.store(0, Ordering::Relaxed);
        let ready = with_heartbeat(&mut settle, lease, &throttle(), async { 8 }).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((ready, extends.load(Ordering::Relaxed)), (8, 0));
    }

    #[tokio::test]
    async fn the_first_heartbeat_counts_from_when_the_lease_began_not_from_the_work() {
        let extends = Arc::new(AtomicUsize::new(0));
        let Some(leased) = std::time::Instant::now().checked_sub(Duration::from_secs(20)) else {
            return; // a machine up for less than 20 s cannot say
        };
        let mut settle = Leased::boxed(&extends, Duration::from_secs(10), Some(leased));
        // The message waited 20 s for the flow and its lease is renewed
        // every 10 s: the renewal is overdue, so it comes as soon as the
        // work is found waiting, once (the next is 10 s after it). Counted
        // from the start of the work, none would come in this 50 ms wait.
        with_heartbeat(&mut settle, Duration::from_secs(30), &throttle(), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
        })
        .await;
        assert_eq!(extends.load(Ordering::Relaxed), 1);
    }
}

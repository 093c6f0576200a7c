//! What happens to one delivered message: invoke, publish the effects,
//! settle. Nothing here returns an error to the flow loop: every outcome ends
//! in an ack, a retry or a dead letter, logged and counted.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tracing::Level;

use crate::config::FlowSpec;
use crate::config::TopicSpec;
use crate::connector::{Delivery, LocalStore, MAX_RETRY_DELAY, PublishError, Settle};
use crate::message::{InboundMessage, OutboundMessage, counted_size, set_header};
use crate::metrics::FlowMetrics;
use crate::sandbox::{Algorithm, AlgorithmId, Failure, Invocation, Reason};
use crate::state::{FailureHistory, FailureRecord};
use crate::telemetry::trace::TraceContext;

use super::envelope::{Envelope, SourceInfo};
use super::events::{MessageEvents, settle_failed};
use super::retry::backoff;
use super::throttle::LogThrottle;
use super::topology::{FlowResolver, Topology, TopologyHandle};
use super::{FlowStatus, Services};

/// Header naming the algorithm version that produced a message.
pub const ALGORITHM_HEADER: &str = "eventflow-algorithm";
/// Header with the SHA-256 of the component that produced a message.
pub const HASH_HEADER: &str = "eventflow-component-hash";
/// Header with the id of the message that caused a message.
pub const SOURCE_ID_HEADER: &str = "eventflow-source-message-id";
/// Header naming the flow that produced a message.
pub const FLOW_HEADER: &str = "eventflow-flow";
/// The W3C trace-context header, carried from input to outputs.
pub const TRACEPARENT_HEADER: &str = "traceparent";

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
}

impl Worker {
    /// The per-message metric handles for `algorithm`.
    fn handles(&self, algorithm: &Algorithm) -> Arc<FlowMetrics> {
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
    fn events<'a>(
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
            algorithm,
            message,
        }
    }

    fn max_receives(&self) -> u32 {
        self.native_max_receives.unwrap_or(self.spec.max_receives)
    }

    /// Whether to log this occurrence of an error that may repeat for every
    /// message: `Some(n)` with the repeats left out since the last line of
    /// its kind, or `None` to leave it out.
    fn admit(&self, level: Level, what: &'static str, error: &str) -> Option<u64> {
        self.throttle.admit(level, what, error)
    }

    /// Processes one delivery to the end, in a span that continues the
    /// message's trace.
    pub async fn process(&self, delivery: Delivery, algorithm: Arc<Algorithm>) {
        use tracing::Instrument;
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
        mut delivery: Delivery,
        algorithm: Arc<Algorithm>,
        trace: TraceContext,
    ) {
        let message = delivery.message.clone();
        let events = self.events(&algorithm, &message);
        events.received();

        if message.attempt > self.max_receives() {
            // Delivered more often than allowed without a final verdict: the
            // router died while handling it, or could not dead-letter it.
            let history = self.history(&message.id).await;
            let last = history.as_ref().map(|h| h.last.clone()).unwrap_or_else(|| {
                self.record(
                    &algorithm,
                    &message,
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
            self.give_up(&mut delivery.settle, &algorithm, &message, first, last)
                .await;
        } else {
            self.invoke_and_settle(&mut delivery.settle, &algorithm, &message, &trace)
                .await;
        }

        events.finished();
    }

    async fn invoke_and_settle(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Arc<Algorithm>,
        message: &InboundMessage,
        trace: &TraceContext,
    ) {
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
        let invocation = Invocation {
            flow: self.flow.clone(),
            message,
            timeout,
            limits: &limits,
            env: &env,
            resolver,
        };
        let slots = self.slots.clone();
        let outcome = with_heartbeat(settle, self.lease, &self.throttle, async move {
            // The slot is released as soon as the invocation ends, before
            // its effects are published and the message settled.
            let _slot = slots.acquire_owned().await;
            self.services.sandbox.invoke(algorithm, invocation).await
        })
        .await;
        self.events(algorithm, message).invoked(&outcome);

        let failure = match outcome.result {
            Ok(output) => {
                // In order: wait until the messages before this one (in its
                // Kafka partition) have handed their effects to the producer,
                // hand ours over, let the next message take its turn, and
                // only then wait for delivery.
                settle.wait_turn().await;
                let local = settle.local_store();
                let enqueued = self
                    .enqueue_effects(algorithm, message, output, outcome.published, trace, local)
                    .await;
                settle.pass_turn();
                let published = match enqueued {
                    Ok((atomic, delivering)) => futures::future::try_join_all(delivering)
                        .await
                        .map(|_| atomic),
                    Err(e) => Err(e),
                };
                match published {
                    Ok(atomic) if atomic.is_empty() => {
                        if self.ack(settle, message).await {
                            self.succeeded(algorithm, message).await;
                        }
                        return;
                    }
                    Ok(atomic) => {
                        // Outputs to the source's own store: written with
                        // the acknowledgement, in one transaction.
                        let keys = atomic
                            .iter()
                            .map(|(t, _)| Topology::key(t))
                            .collect::<Vec<_>>()
                            .join(", ");
                        match settle.ack_with(atomic).await {
                            Ok(()) => {
                                self.succeeded(algorithm, message).await;
                                return;
                            }
                            Err(e) => publish_failure(&keys, e),
                        }
                    }
                    Err(failure) => failure,
                }
            }
            Err(failure) => {
                settle.pass_turn();
                failure
            }
        };
        self.fail(settle, algorithm, message, failure).await;
    }

    /// The message was acknowledged after its effects were durable.
    async fn succeeded(&self, algorithm: &Algorithm, message: &InboundMessage) {
        self.events(algorithm, message).succeeded();
        if message.attempt > 1 {
            self.forget(&message.id).await;
        }
    }

    /// Hands what the algorithm published, then its output, to the
    /// producers, topic by topic; returns the waits for their delivery, all
    /// of which must succeed before the input is acknowledged. Messages for
    /// topics in `local` (the delivery's own store) are not handed over but
    /// returned, to be written with the acknowledgement.
    #[allow(clippy::type_complexity)]
    async fn enqueue_effects(
        &self,
        algorithm: &Algorithm,
        message: &InboundMessage,
        output: Option<Vec<u8>>,
        published: Vec<(String, OutboundMessage)>,
        trace: &TraceContext,
        local: Option<LocalStore>,
    ) -> Result<
        (
            Vec<(TopicSpec, Vec<OutboundMessage>)>,
            Vec<futures::future::BoxFuture<'static, Result<(), Failure>>>,
        ),
        Failure,
    > {
        let provenance = |mut m: OutboundMessage| {
            set_header(
                &mut m.headers,
                ALGORITHM_HEADER,
                format!(
                    "{}/{}@{}",
                    algorithm.id.owner, algorithm.id.name, algorithm.id.version
                ),
            );
            set_header(&mut m.headers, HASH_HEADER, algorithm.hash.clone());
            set_header(&mut m.headers, SOURCE_ID_HEADER, message.id.clone());
            set_header(&mut m.headers, FLOW_HEADER, self.flow.to_string());
            set_header(&mut m.headers, TRACEPARENT_HEADER, trace.traceparent());
            m
        };
        let mut groups: Vec<(String, Vec<OutboundMessage>)> = Vec::new();
        let mut add =
            |key: String, m: OutboundMessage| match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ms)) => ms.push(m),
                None => groups.push((key, vec![m])),
            };
        let topology = self.topology.current();
        for (key, m) in published {
            add(key, provenance(m));
        }
        if let Some(payload) = output {
            match &self.spec.output_topic {
                Some(name) => {
                    let topic = topology.topic(&self.spec.broker, name).ok_or_else(|| {
                        Failure::new(
                            Reason::PublishFailed,
                            format!("output topic {name:?} is not declared"),
                        )
                    })?;
                    add(
                        Topology::key(topic),
                        provenance(OutboundMessage {
                            payload,
                            headers: Vec::new(),
                        }),
                    );
                }
                None => tracing::trace!(
                    flow = %self.flow,
                    message_id = %message.id,
                    "Output discarded: the flow has no output topic."
                ),
            }
        }
        let mut delivering = Vec::with_capacity(groups.len());
        let mut atomic = Vec::new();
        for (key, messages) in groups {
            if let Some(local) = local
                && let Some((topic, broker)) = topology.by_key(&key)
                && broker.connection.local_store() == Some(local)
            {
                atomic.push((topic.clone(), messages));
                continue;
            }
            let wait = topology
                .enqueue(&key, messages)
                .await
                .map_err(|e| publish_failure(&key, e))?;
            delivering.push(Box::pin(
                async move { wait.await.map_err(|e| publish_failure(&key, e)) },
            ) as futures::future::BoxFuture<'static, _>);
        }
        Ok((atomic, delivering))
    }

    async fn fail(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Arc<Algorithm>,
        message: &InboundMessage,
        failure: Failure,
    ) {
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
            self.give_up(settle, algorithm, message, first, last).await;
            return;
        }
        // The algorithm's delay is a floor: it never makes the router retry
        // sooner than the flow's backoff allows.
        let delay = backoff(&self.spec.retry, message.attempt)
            .max(failure.retry_after.unwrap_or_default())
            .min(MAX_RETRY_DELAY);
        self.events(algorithm, message).retried(&failure.reason);
        self.retry(settle, message, delay).await;
    }

    /// Ends a message that failed for good: dead-letter it, leave it to the
    /// broker's redrive policy, or drop it when the flow has nowhere to put it.
    async fn give_up(
        &self,
        settle: &mut Box<dyn Settle>,
        algorithm: &Algorithm,
        message: &InboundMessage,
        first: Option<FailureRecord>,
        last: FailureRecord,
    ) {
        let events = self.events(algorithm, message);
        let Some(dlq) = &self.spec.dead_letter_topic else {
            if self.native_max_receives.is_some() {
                // One more receive makes the broker move it to its own
                // dead-letter queue.
                events.left_to_redrive(&last);
                self.retry(settle, message, Duration::ZERO).await;
                return;
            }
            events.dropped_without_dead_letter_topic(&last);
            if self.ack(settle, message).await {
                self.forget(&message.id).await;
            }
            return;
        };
        let source = SourceInfo {
            broker: self.spec.broker.clone(),
            kind: self.broker_kind.to_string(),
            topic: self.spec.topic.clone(),
            message_id: message.id.clone(),
        };
        let envelope = Envelope::new(
            &self.flow,
            source,
            message,
            (
                format!(
                    "{}/{}@{}",
                    algorithm.id.owner, algorithm.id.name, algorithm.id.version
                ),
                algorithm.hash.clone(),
            ),
            first,
            last.clone(),
        );
        let topology = self.topology.current();
        match self
            .write_dead_letter(&topology, dlq, message, &envelope)
            .await
        {
            Ok(payload_truncated) => {
                events.dead_lettered(&last, dlq, payload_truncated);
                if self.ack(settle, message).await {
                    self.forget(&message.id).await;
                }
            }
            Err(DeadLetterFailure::Permanent(e)) => {
                // Retrying cannot make it fit: settle it rather than
                // redeliver it forever, and say so once.
                events.dropped_unwritable(&last, dlq, &e);
                if self.ack(settle, message).await {
                    self.forget(&message.id).await;
                }
            }
            Err(DeadLetterFailure::Transient(e)) => {
                // Not acknowledged: it comes back, and goes straight to the
                // dead-letter topic then.
                let delay = backoff(&self.spec.retry, message.attempt);
                events.dead_letter_deferred(dlq, &e, delay);
                self.retry(settle, message, delay).await;
            }
        }
    }

    /// Publishes `envelope`, signed, to the dead-letter topic `dlq`. When
    /// it is over the topic's message size limit (the connector's
    /// `max_payload_bytes`, or a too-large refusal), publishes it once more
    /// with the payload truncated to fit. Returns whether it was truncated.
    async fn write_dead_letter(
        &self,
        topology: &Topology,
        dlq: &str,
        message: &InboundMessage,
        envelope: &Envelope,
    ) -> Result<bool, DeadLetterFailure> {
        let Some(topic) = topology.topic(&self.spec.broker, dlq) else {
            return Err(DeadLetterFailure::Transient(format!(
                "dead-letter topic {dlq:?} is not declared"
            )));
        };
        let key = Topology::key(topic);
        let Some((_, broker)) = topology.by_key(&key) else {
            return Err(DeadLetterFailure::Transient(format!(
                "broker connection {:?} of the dead-letter topic is not connected",
                topic.broker
            )));
        };
        let limit = broker.connection.max_payload_bytes();
        let signer = &self.services.dead_letter_key;
        let whole = envelope.to_message(signer);
        let size = counted_size(&whole);
        // The envelope's own headers are the same once truncated.
        let overhead = size - whole.payload.len();
        let too_large = if size <= limit {
            match topology.publish(&key, vec![whole]).await {
                Ok(()) => return Ok(false),
                Err(e) if e.is_too_large() => e.to_string(),
                Err(e) => return Err(DeadLetterFailure::Transient(format!("{e:#}"))),
            }
        } else {
            format!("the envelope of {size} bytes is over the topic's limit of {limit} bytes")
        };
        // Cut to the connection's limit first. A broker whose own limit is
        // lower refuses that too (a Kafka topic's max.message.bytes, say):
        // cut to a quarter each time until it fits, or until not even the
        // envelope without its payload fits.
        let mut budget = limit.saturating_sub(overhead);
        let mut refused: Option<String> = None;
        loop {
            let Some(cut) = envelope.truncated(&message.payload, budget) else {
                return Err(DeadLetterFailure::Permanent(match refused {
                    None => format!(
                        "{too_large}, and it does not fit even without its payload and headers"
                    ),
                    Some(e) => format!("{too_large}; with the payload truncated: {e}"),
                }));
            };
            match topology.publish(&key, vec![cut.to_message(signer)]).await {
                Ok(()) => return Ok(true),
                Err(e) if e.is_too_large() => {
                    refused = Some(e.to_string());
                    budget /= 4;
                }
                Err(e) => return Err(DeadLetterFailure::Transient(format!("{e:#}"))),
            }
        }
    }

    fn record(
        &self,
        algorithm: &Algorithm,
        message: &InboundMessage,
        f: &Failure,
    ) -> FailureRecord {
        FailureRecord {
            reason: f.reason.code().to_string(),
            detail: f.detail.clone(),
            attempt: message.attempt,
            at: crate::util::rfc3339_now(),
            algorithm: algorithm.label(),
        }
    }

    async fn journal(&self, id: &str, record: FailureRecord) -> Option<FailureHistory> {
        let (state, flow, id) = (
            self.services.state.clone(),
            self.flow.clone(),
            id.to_string(),
        );
        match tokio::task::spawn_blocking(move || state.record_failure(&flow, &id, record)).await {
            Ok(Ok(h)) => Some(h),
            Ok(Err(e)) => {
                const WHAT: &str = "Could not record a failure in the journal";
                let error = format!("{e:#}");
                if let Some(suppressed) = self.admit(Level::WARN, WHAT, &error) {
                    tracing::warn!(flow = %self.flow, error = %error, suppressed, "{WHAT}.");
                }
                None
            }
            Err(_) => None,
        }
    }

    async fn history(&self, id: &str) -> Option<FailureHistory> {
        let (state, flow, id) = (
            self.services.state.clone(),
            self.flow.clone(),
            id.to_string(),
        );
        tokio::task::spawn_blocking(move || state.failures(&flow, &id))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
    }

    async fn forget(&self, id: &str) {
        let (state, flow, id) = (
            self.services.state.clone(),
            self.flow.clone(),
            id.to_string(),
        );
        let _ = tokio::task::spawn_blocking(move || state.forget(&flow, &id)).await;
    }

    async fn ack(&self, settle: &mut Box<dyn Settle>, message: &InboundMessage) -> bool {
        match settle.ack().await {
            Ok(()) => true,
            Err(e) => {
                self.settle_error("Could not acknowledge a message", message, &e);
                false
            }
        }
    }

    async fn retry(&self, settle: &mut Box<dyn Settle>, message: &InboundMessage, delay: Duration) {
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

/// Why publishing an invocation's effects to `key` failed: a message the
/// broker refuses as too large is `output_too_large`, anything else
/// `publish_failed`.
fn publish_failure(key: &str, e: PublishError) -> Failure {
    let reason = if e.is_too_large() {
        Reason::OutputTooLarge
    } else {
        Reason::PublishFailed
    };
    Failure::new(reason, format!("cannot publish to {key}: {e:#}"))
}

/// Why a dead letter could not be written.
enum DeadLetterFailure {
    /// Retrying cannot help (too large even with the payload truncated): the
    /// message is dropped with an error log.
    Permanent(String),
    /// The broker did not take it, the topic is not declared or does not
    /// exist (yet): the message stays on its topic and is retried with the
    /// flow's backoff, so nothing is lost while an operator fixes it.
    Transient(String),
}

/// Runs `work`, extending the delivery's lease on the broker's heartbeat
/// interval until it finishes.
async fn with_heartbeat<F: std::future::Future>(
    settle: &mut Box<dyn Settle>,
    lease: Duration,
    throttle: &LogThrottle,
    work: F,
) -> F::Output {
    let Some(every) = settle.heartbeat() else {
        return work.await;
    };
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
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

//! What happens to a message in a flow, one call per event: each call writes
//! the log line, bumps the metrics and updates the flow's status together,
//! so `eventflow status`, `/metrics` and the logs cannot disagree. The
//! worker decides what happens; this module only reports it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::Level;

use crate::message::InboundMessage;
use crate::metrics::{FlowMetrics, FlowOnly, Metrics, ReasonLabels};
use crate::sandbox::{Algorithm, Failure, Outcome, Reason};
use crate::state::FailureRecord;

use super::FlowStatus;
use super::rollout::{AutoRollout, Rollout};
use super::throttle::LogThrottle;

/// The events of one message handled by one algorithm version.
pub(super) struct MessageEvents<'a> {
    pub(super) flow: &'a str,
    pub(super) status: &'a FlowStatus,
    pub(super) metrics: &'a Metrics,
    /// The flow's metric handles for `algorithm`.
    pub(super) handles: Arc<FlowMetrics>,
    /// Keeps errors that repeat for every message to a few lines.
    pub(super) throttle: &'a LogThrottle,
    /// The flow's canary, which counts each version's attempts.
    pub(super) rollout: Option<&'a Rollout>,
    pub(super) auto_rollout: Option<&'a AutoRollout>,
    pub(super) algorithm: &'a Algorithm,
    pub(super) message: &'a InboundMessage,
}

impl MessageEvents<'_> {
    fn reason_labels(&self, reason: &str) -> ReasonLabels {
        ReasonLabels {
            flow: self.handles.labels.flow.clone(),
            algorithm: self.handles.labels.algorithm.clone(),
            reason: reason.to_string(),
        }
    }

    /// The flow took the message on.
    pub(super) fn received(&self) {
        self.handles.received.inc();
        self.handles.in_flight.inc();
        self.status.started();
    }

    /// The flow is done with the message, whatever the outcome.
    pub(super) fn finished(&self) {
        if let Some(enqueued) = self.message.enqueued_at
            && let Ok(age) = SystemTime::now().duration_since(enqueued)
        {
            self.handles.end_to_end_seconds.observe(age.as_secs_f64());
        }
        // The status first: whoever sees the gauge at zero sees the status
        // there too.
        self.status.finished();
        self.handles.in_flight.dec();
    }

    /// The algorithm ran (successfully or not): what it cost.
    pub(super) fn invoked(&self, outcome: &Outcome) {
        let handles = &self.handles;
        handles
            .instance_wait_seconds
            .observe(outcome.slot_wait.as_secs_f64());
        handles
            .invocation_seconds
            .observe(outcome.duration.as_secs_f64());
        handles
            .peak_memory_bytes
            .observe(outcome.peak_memory_bytes as f64);
        if let Some(fuel) = outcome.fuel_used {
            handles.fuel_used.observe(fuel as f64);
        }
        let (failed, secs) = (outcome.result.is_err(), outcome.duration.as_secs_f64());
        if let Some(rollout) = self.rollout {
            rollout.observe(&self.algorithm.id, failed, secs);
        }
        if let Some(rollout) = self.auto_rollout {
            rollout.observe(&self.algorithm.id, failed, secs);
        }
    }

    /// The message was acknowledged after its effects were durable.
    pub(super) fn succeeded(&self) {
        self.handles.succeeded.inc();
        self.status.succeeded();
        tracing::debug!(
            flow = %self.flow,
            message_id = %self.message.id,
            algorithm = %self.algorithm.label(),
            attempt = self.message.attempt,
            "Message processed."
        );
    }

    /// The message did not pass the flow's filter and was acknowledged
    /// without invoking the algorithm.
    pub(super) fn filtered(&self) {
        self.metrics
            .filtered
            .get_or_create(&FlowOnly {
                flow: self.flow.to_string(),
            })
            .inc();
        self.status.filtered();
        tracing::debug!(
            flow = %self.flow,
            message_id = %self.message.id,
            "Message filtered out; acknowledged without invoking the algorithm."
        );
    }

    /// An attempt failed; `final_failure` when it is not retried. The
    /// failure becomes the flow's last error.
    pub(super) fn attempt_failed(&self, failure: &Failure, max_receives: u32, final_failure: bool) {
        // A verdict on one message is logged for each message; a publish
        // failure usually repeats for every message (a missing output topic,
        // a broker away), so it is throttled.
        let admitted = match failure.reason {
            Reason::PublishFailed => self
                .throttle
                .admit(
                    Level::WARN,
                    "Publishing a message's effects failed",
                    &failure.detail,
                )
                .map(Some),
            _ => Some(None),
        };
        if let Some(suppressed) = admitted {
            tracing::warn!(
                flow = %self.flow,
                message_id = %self.message.id,
                algorithm = %self.algorithm.label(),
                attempt = self.message.attempt,
                max_receives,
                reason = failure.reason.code(),
                error = %failure.detail,
                suppressed,
                "Algorithm failed on a message{}.",
                if final_failure { "" } else { "; it will be retried" }
            );
        }
        self.status.failed(&format!(
            "{}: message {} attempt {}: {}",
            self.algorithm.label(),
            self.message.id,
            self.message.attempt,
            failure
        ));
    }

    /// The message goes back to its topic for another attempt (logged by
    /// [`MessageEvents::attempt_failed`]).
    pub(super) fn retried(&self, reason: &Reason) {
        self.metrics
            .retried
            .get_or_create(&self.reason_labels(reason.code()))
            .inc();
        self.status.retried();
    }

    /// Failed for good on a queue with a redrive policy: one more receive
    /// makes the broker move it to its own dead-letter queue.
    pub(super) fn left_to_redrive(&self, last: &FailureRecord) {
        tracing::warn!(
            flow = %self.flow,
            message_id = %self.message.id,
            algorithm = %self.algorithm.label(),
            reason = %last.reason,
            "Message failed for good; leaving it to the queue's redrive policy."
        );
        self.count_dead_lettered(last);
    }

    /// Failed for good and written to the dead-letter topic `dlq`.
    pub(super) fn dead_lettered(&self, last: &FailureRecord, dlq: &str, payload_truncated: bool) {
        tracing::warn!(
            flow = %self.flow,
            message_id = %self.message.id,
            algorithm = %self.algorithm.label(),
            attempt = self.message.attempt,
            reason = %last.reason,
            dead_letter_topic = %dlq,
            payload_truncated,
            "Message dead-lettered{}.",
            if payload_truncated {
                " with its payload truncated to fit the dead-letter topic"
            } else {
                ""
            }
        );
        self.count_dead_lettered(last);
    }

    fn count_dead_lettered(&self, last: &FailureRecord) {
        self.metrics
            .dead_lettered
            .get_or_create(&self.reason_labels(&last.reason))
            .inc();
        self.status.dead_lettered();
    }

    /// Failed for good, and the flow has no dead-letter topic: dropped.
    pub(super) fn dropped_without_dead_letter_topic(&self, last: &FailureRecord) {
        const WHAT: &str =
            "Dropping a message that failed for good: the flow has no dead-letter topic";
        if let Some(suppressed) = self.throttle.admit(Level::ERROR, WHAT, &last.reason) {
            tracing::error!(
                flow = %self.flow,
                message_id = %self.message.id,
                algorithm = %self.algorithm.label(),
                attempt = self.message.attempt,
                reason = %last.reason,
                error = %last.detail,
                suppressed,
                "{WHAT}."
            );
        }
        self.count_dropped(last);
    }

    /// Failed for good, and its dead letter can never be written to `dlq`
    /// (too large even truncated): dropped.
    pub(super) fn dropped_unwritable(&self, last: &FailureRecord, dlq: &str, error: &str) {
        tracing::error!(
            flow = %self.flow,
            message_id = %self.message.id,
            algorithm = %self.algorithm.label(),
            attempt = self.message.attempt,
            reason = %last.reason,
            dead_letter_topic = %dlq,
            error = %error,
            "Dropping a message that failed for good: its dead letter cannot be written."
        );
        self.count_dropped(last);
        self.status.failed(&format!(
            "message {} dropped: dead letter cannot be written: {error}",
            self.message.id
        ));
    }

    fn count_dropped(&self, last: &FailureRecord) {
        self.metrics
            .dropped
            .get_or_create(&self.reason_labels(&last.reason))
            .inc();
        self.status.dropped();
    }

    /// Failed for good, but the dead-letter topic `dlq` did not take it this
    /// time: it stays on its topic and comes back after `delay`.
    pub(super) fn dead_letter_deferred(&self, dlq: &str, error: &str, delay: Duration) {
        const WHAT: &str =
            "Could not publish to the dead-letter topic; the message stays on its topic";
        if let Some(suppressed) = self.throttle.admit(Level::ERROR, WHAT, error) {
            tracing::error!(
                flow = %self.flow,
                message_id = %self.message.id,
                dead_letter_topic = %dlq,
                error = %error,
                retry_in = ?delay,
                suppressed,
                "{WHAT}."
            );
        }
        self.status
            .failed(&format!("dead-letter publish failed: {error}"));
    }
}

/// Settling a message with the broker failed (`what`: acknowledging or
/// releasing it); the broker redelivers it.
pub(super) fn settle_failed(
    flow: &str,
    metrics: &Metrics,
    throttle: &LogThrottle,
    what: &'static str,
    message: &InboundMessage,
    error: &anyhow::Error,
) {
    let error = format!("{error:#}");
    if let Some(suppressed) = throttle.admit(Level::WARN, what, &error) {
        tracing::warn!(
            flow = %flow,
            message_id = %message.id,
            error = %error,
            suppressed,
            "{what}; the broker will redeliver it."
        );
    }
    metrics
        .settle_errors
        .get_or_create(&FlowOnly {
            flow: flow.to_string(),
        })
        .inc();
}

/// Counts a call of `apply-batch` on `messages`
/// messages of `flow`.
pub(super) fn batch_invoked(flow: &str, status: &FlowStatus, metrics: &Metrics, messages: usize) {
    let labels = FlowOnly {
        flow: flow.to_string(),
    };
    metrics.batches.get_or_create(&labels).inc();
    metrics
        .batched_messages
        .get_or_create(&labels)
        .inc_by(messages as u64);
    status.batch_invoked(messages);
}

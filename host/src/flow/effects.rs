//! What a successful invocation leaves to publish: the messages the algorithm
//! published and its output, stamped with their provenance and handed to
//! the producers (or kept to be written with the acknowledgement, when they
//! go to the delivery's own store).

use crate::config::TopicSpec;
use crate::connector::{LocalStore, PublishError};
use crate::message::{InboundMessage, OutboundMessage, set_header};
use crate::sandbox::{Algorithm, Failure, Reason};
use crate::telemetry::trace::TraceContext;

use super::topology::Topology;
use super::worker::Worker;

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

/// An invocation's effects once handed over: the messages for the
/// delivery's own store, by topic, to be written with the acknowledgement,
/// and the waits for the delivery of the others.
pub(super) struct Enqueued {
    pub(super) atomic: Vec<(TopicSpec, Vec<OutboundMessage>)>,
    pub(super) delivering: Vec<futures::future::BoxFuture<'static, Result<(), Failure>>>,
}

/// Where a message's effects come from, stamped on each as headers.
pub(super) struct Provenance<'a> {
    pub(super) algorithm: &'a Algorithm,
    /// `owner/name@version` of `algorithm`.
    pub(super) version: &'a str,
    pub(super) message: &'a InboundMessage,
    pub(super) trace: &'a TraceContext,
}

impl Worker {
    /// Hands what the algorithm published, then its output, to the
    /// producers, topic by topic; returns the waits for their delivery, all
    /// of which must succeed before the input is acknowledged. Messages for
    /// topics in `local` (the delivery's own store) are not handed over but
    /// returned, to be written with the acknowledgement.
    pub(super) async fn enqueue_effects(
        &self,
        from: Provenance<'_>,
        output: Option<Vec<u8>>,
        published: Vec<(String, OutboundMessage)>,
        local: Option<LocalStore>,
    ) -> Result<Enqueued, Failure> {
        let topology = self.topology.current();
        let mut groups: Vec<(String, Vec<OutboundMessage>)> = Vec::new();
        let mut add = |key: String, m: OutboundMessage| {
            let m = self.stamp(&from, m);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ms)) => ms.push(m),
                None => groups.push((key, vec![m])),
            }
        };
        for (key, m) in published {
            add(key, m);
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
                    let headers = Vec::with_capacity(5);
                    add(Topology::key(topic), OutboundMessage { payload, headers });
                }
                None => tracing::trace!(
                    flow = %self.flow,
                    message_id = %from.message.id,
                    "Output discarded: the flow has no output topic."
                ),
            }
        }
        let mut enqueued = Enqueued {
            atomic: Vec::new(),
            delivering: Vec::with_capacity(groups.len()),
        };
        for (key, messages) in groups {
            if let Some(local) = local
                && let Some((topic, broker)) = topology.by_key(&key)
                && broker.connection.local_store() == Some(local)
            {
                enqueued.atomic.push((topic.clone(), messages));
                continue;
            }
            let wait = topology
                .enqueue(&key, messages)
                .await
                .map_err(|e| publish_failure(&key, e))?;
            enqueued.delivering.push(Box::pin(async move {
                wait.await.map_err(|e| publish_failure(&key, e))
            }));
        }
        Ok(enqueued)
    }

    /// `m` with the provenance headers, replacing any the algorithm set.
    fn stamp(&self, from: &Provenance<'_>, mut m: OutboundMessage) -> OutboundMessage {
        set_header(&mut m.headers, ALGORITHM_HEADER, from.version);
        set_header(&mut m.headers, HASH_HEADER, from.algorithm.hash.as_str());
        set_header(&mut m.headers, SOURCE_ID_HEADER, from.message.id.as_str());
        set_header(&mut m.headers, FLOW_HEADER, &*self.flow);
        set_header(&mut m.headers, TRACEPARENT_HEADER, from.trace.traceparent());
        m
    }
}

/// Why publishing an invocation's effects to `key` failed: a message the
/// broker refuses as too large is `output_too_large`, anything else
/// `publish_failed`.
pub(super) fn publish_failure(key: &str, e: PublishError) -> Failure {
    let reason = if e.is_too_large() {
        Reason::OutputTooLarge
    } else {
        Reason::PublishFailed
    };
    Failure::new(reason, format!("cannot publish to {key}: {e:#}"))
}

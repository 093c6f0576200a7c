//! Dead letters of a flow: list and replay, each only the flow's own.
//!
//! Who may is decided once, by the flow's owner ([`Action::DeadLetters`]);
//! a dead-letter topic may be shared by flows and owners, so every read
//! then keeps only the envelopes of that flow ([`belongs_to`]), whose
//! algorithm is the flow's and so the same owner's.

use super::{Action, ControlError, ControlPlane, Role};
use crate::api::{self, ReplayDeadLetters, ReplayReport, SkippedDeadLetter};
use crate::config::{FlowSpec, TopicSpec};
use crate::flow::Topology;
use crate::flow::envelope::{DeadLetter, Envelope};

/// The most messages of a dead-letter topic one list or replay reads.
pub const MAX_DEAD_LETTER_SCAN: usize = 100_000;

/// How many messages of the dead-letter topic a list reads without `limit`.
const DEFAULT_DEAD_LETTER_SCAN: usize = 1000;

/// Whether `envelope` is a dead letter of `flow`: the flow's name, source
/// broker and topic, and algorithm (`owner/name`) all match, so a caller
/// who may manage the flow may see it, and nothing of another owner's. A
/// flow deleted and re-created under the same name for another algorithm
/// does not inherit the old one's dead letters.
pub fn belongs_to(envelope: &Envelope, flow: &FlowSpec) -> bool {
    let Some((owner, name)) = envelope.algorithm_owner_name() else {
        return false;
    };
    envelope.flow == flow.name
        && envelope.source.broker == flow.broker
        && envelope.source.topic == flow.topic
        && owner == flow.algorithm.owner
        && name == flow.algorithm.name
}

impl ControlPlane {
    /// The flow `name`, for a caller who may read its dead letters (404 for
    /// no such flow, 403 for another owner's).
    fn flow_for(&self, role: &Role, name: &str) -> Result<FlowSpec, ControlError> {
        let flow = self
            .declarations()
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no flow named {name:?}")))?;
        role.authorize(Action::DeadLetters(&flow.algorithm.owner))?;
        Ok(flow)
    }

    /// The flow `name` and its dead-letter topic, for a caller who may
    /// manage the flow (404 for no such flow, 403 for another owner's).
    fn dead_letter_topic(
        &self,
        role: &Role,
        name: &str,
    ) -> Result<(FlowSpec, TopicSpec), ControlError> {
        let flow = self.flow_for(role, name)?;
        let dlq = flow.dead_letter_topic.clone().ok_or_else(|| {
            ControlError::BadRequest(format!("flow {name:?} has no dead_letter_topic"))
        })?;
        let topic = self
            .router
            .topology()
            .topic(&flow.broker, &dlq)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("dead-letter topic {dlq:?} is not declared"))
            })?;
        Ok((flow, topic))
    }

    /// The dead letters of flow `name`, oldest first, among the first `scan`
    /// messages of its dead-letter topic (at most [`MAX_DEAD_LETTER_SCAN`]),
    /// for a caller who may manage the flow. Every read of dead letters
    /// (list, replay) goes through here: a dead-letter topic may hold
    /// messages of other flows and owners, and messages the router did not
    /// write, so only envelopes of this flow are kept (see [`belongs_to`]),
    /// each marked verified or not.
    pub async fn dead_letters(
        &self,
        role: &Role,
        name: &str,
        scan: usize,
    ) -> Result<(FlowSpec, TopicSpec, Vec<DeadLetter>), ControlError> {
        let (flow, topic) = self.dead_letter_topic(role, name)?;
        let connection = self
            .router
            .topology()
            .brokers
            .get(&topic.broker)
            .ok_or_else(|| {
                ControlError::Unavailable(format!(
                    "broker connection {:?} is not connected",
                    topic.broker
                ))
            })?
            .connection
            .clone();
        let messages = connection
            .peek(&topic, scan.min(MAX_DEAD_LETTER_SCAN))
            .await
            .map_err(|e| {
                ControlError::Unavailable(format!(
                    "cannot read dead-letter topic {:?} on broker {:?}: {e:#}",
                    topic.name, topic.broker
                ))
            })?;
        let key = &self.router.services().dead_letter_key;
        let letters = messages
            .iter()
            .filter_map(|m| DeadLetter::read(m, key))
            .filter(|d| belongs_to(&d.envelope, &flow))
            .collect();
        Ok((flow, topic, letters))
    }

    /// The dead letters of flow `name` as `GET /v1/flows/{flow}/dead-letters`
    /// shows them: among the first `limit` messages (default 1000) of its
    /// dead-letter topic, each marked verified or unverified.
    pub async fn dead_letter_list(
        &self,
        role: &Role,
        name: &str,
        limit: Option<usize>,
    ) -> Result<api::DeadLetterList, ControlError> {
        let scan = limit.unwrap_or(DEFAULT_DEAD_LETTER_SCAN);
        let (_, _, letters) = self.dead_letters(role, name, scan).await?;
        let verified = letters.iter().filter(|d| d.verified).count();
        let dead_letters: Vec<api::DeadLetter> = letters
            .into_iter()
            .map(|d| api::DeadLetter {
                dead_letter_id: d.id,
                verified: d.verified,
                status: if d.verified { "verified" } else { "unverified" }.into(),
                envelope: d.raw,
            })
            .collect();
        Ok(api::DeadLetterList {
            verified,
            unverified: dead_letters.len() - verified,
            dead_letters,
        })
    }

    /// Publishes dead letters of flow `name` back to its topic and removes
    /// them from the dead-letter topic. Unverified envelopes (not written by
    /// this router's key) are skipped unless `include_unverified`, which
    /// only the admin token may ask for; envelopes whose payload was
    /// truncated are always skipped.
    pub async fn replay_dead_letters(
        &self,
        role: &Role,
        name: &str,
        req: ReplayDeadLetters,
    ) -> Result<ReplayReport, ControlError> {
        if req.include_unverified {
            role.authorize(Action::ReplayUnverified)?;
        }
        let (flow, dlq, letters) = self.dead_letters(role, name, MAX_DEAD_LETTER_SCAN).await?;
        let topology = self.router.topology();
        let source = topology
            .topic(&flow.broker, &flow.topic)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("topic {:?} is not declared", flow.topic))
            })?;
        let mut report = ReplayReport::default();
        for letter in letters {
            let message_id = &letter.envelope.source.message_id;
            if let Some(id) = &req.id
                && id != message_id
                && *id != letter.id
            {
                continue;
            }
            match skip_reason(&letter, req.include_unverified) {
                Some(why) => report.skipped.push(SkippedDeadLetter {
                    dead_letter_id: letter.id.clone(),
                    message_id: message_id.clone(),
                    why: why.to_string(),
                }),
                None => {
                    replay_one(&topology, name, &source, &dlq, &letter).await?;
                    report.replayed.push(message_id.clone());
                }
            }
        }
        match &req.id {
            Some(id) if report.replayed.is_empty() => Err(not_replayed(name, id, &report)),
            _ => Ok(report),
        }
    }
}

/// Why `letter` is not replayed, if it is not.
fn skip_reason(letter: &DeadLetter, include_unverified: bool) -> Option<&'static str> {
    if !letter.verified && !include_unverified {
        Some(
            "unverified: not signed with this router's dead-letter key (forged, or written by a router with another key); the admin token can replay it with include_unverified",
        )
    } else if letter.envelope.payload_truncated {
        Some(
            "its payload was truncated to fit the dead-letter topic: the original cannot be replayed",
        )
    } else {
        None
    }
}

/// Publishes one dead letter's original message to `source` (marked
/// `eventflow-replayed-from`), then removes the dead letter from `dlq`.
async fn replay_one(
    topology: &Topology,
    flow: &str,
    source: &TopicSpec,
    dlq: &TopicSpec,
    letter: &DeadLetter,
) -> Result<(), ControlError> {
    let envelope = &letter.envelope;
    let payload = envelope
        .original_payload()
        .map_err(|e| ControlError::BadRequest(format!("dead letter {}: {e}", letter.id)))?;
    let mut headers = envelope.headers.clone();
    crate::message::set_header(
        &mut headers,
        "eventflow-replayed-from",
        envelope.source.message_id.clone(),
    );
    topology
        .publish(
            &source.key(),
            vec![crate::message::OutboundMessage { payload, headers }],
        )
        .await
        .map_err(|e| {
            ControlError::Unavailable(format!("cannot publish to {}: {e:#}", source.name))
        })?;
    let broker = topology.brokers.get(&dlq.broker).ok_or_else(|| {
        ControlError::Unavailable(format!(
            "broker connection {:?} is not connected",
            dlq.broker
        ))
    })?;
    broker
        .connection
        .remove(dlq, &letter.id)
        .await
        .map_err(|e| {
            ControlError::Unavailable(format!(
                "replayed but cannot remove the dead letter {}: {e:#}",
                letter.id
            ))
        })?;
    tracing::info!(
        flow = %flow,
        message_id = %envelope.source.message_id,
        verified = letter.verified,
        "Dead letter replayed."
    );
    Ok(())
}

/// The error of a replay of one dead letter (`id`) that replayed nothing:
/// 409 when it was skipped (saying why), 404 when the flow has no such one.
fn not_replayed(flow: &str, id: &str, report: &ReplayReport) -> ControlError {
    match report.skipped.first() {
        Some(s) => ControlError::Conflict(format!(
            "dead letter {id:?} of flow {flow:?} was not replayed: {}",
            s.why
        )),
        None => ControlError::NotFound(format!("no dead letter of flow {flow:?} has id {id:?}")),
    }
}

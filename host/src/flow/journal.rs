//! The failure journal's part in a message's life: each failed attempt is
//! recorded (so the dead letter can say what happened first and last, even
//! across router restarts) and forgotten once the message is settled. Only
//! failures and redeliveries touch it: a message that succeeds on its first
//! attempt costs the journal nothing.

use tracing::Level;

use crate::message::InboundMessage;
use crate::sandbox::{Algorithm, Failure};
use crate::state::{FailureHistory, FailureRecord};

use super::worker::Worker;

impl Worker {
    /// The journal's record of failure `f` of `message`.
    pub(super) fn record(
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
            algorithm: algorithm.label().to_string(),
        }
    }

    /// Records a failure of message `id`; its history so far, or `None` if
    /// the journal could not be written (logged).
    pub(super) async fn journal(&self, id: &str, record: FailureRecord) -> Option<FailureHistory> {
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

    /// The recorded failures of message `id`, if any.
    pub(super) async fn history(&self, id: &str) -> Option<FailureHistory> {
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

    /// Forgets the failures of message `id`, once it is settled.
    pub(super) async fn forget(&self, id: &str) {
        let (state, flow, id) = (
            self.services.state.clone(),
            self.flow.clone(),
            id.to_string(),
        );
        let _ = tokio::task::spawn_blocking(move || state.forget(&flow, &id)).await;
    }
}

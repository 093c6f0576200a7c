//! When a flow does not invoke its algorithm: no loaded version matches
//! (none deployed, or still compiling), or the one that does needs more
//! memory to start than the flow allows. Either way the flow waits and its
//! messages stay in the broker; nothing is attempted, retried or
//! dead-lettered, because no attempt could succeed until an operator (or
//! the compiler) changes something.

use std::sync::Arc;
use std::time::Duration;

use super::{FlowState, Next, ReceiveLoop};
use crate::sandbox::Algorithm;

/// How often a flow blocked by its memory limit looks at the limits again:
/// `[[algorithm_limits]]` change without restarting it.
const LIMIT_RECHECK: Duration = Duration::from_secs(1);

/// Why a flow does not invoke its algorithm now.
pub(super) enum Unusable {
    /// No loaded version matches.
    Missing,
    /// The flow's rollout has no version to run yet; the sentence says why
    /// (the version it serves is compiling, or only skipped ones are
    /// loaded).
    Rollout(String),
    /// The matching version's initial memory is over the flow's limit; the
    /// sentence says by how much.
    MemoryShortfall(String),
}

impl ReceiveLoop<'_> {
    /// The version the flow runs now, if it can run it.
    pub(super) fn usable_algorithm(&self) -> Result<Arc<Algorithm>, Unusable> {
        let worker = self.worker;
        let (registry, spec) = (&worker.services.registry, &worker.spec);
        // A flow with a rollout never runs a version it skips, nor hands
        // every message to a new version while the one it serves is still
        // loading (a restart loads them in any order): it waits, as for a
        // missing version.
        let algorithm = match &worker.auto_rollout {
            Some(rollout) => rollout.usable(registry).map_err(Unusable::Rollout)?,
            None => registry.resolve(&spec.algorithm).ok_or(Unusable::Missing)?,
        };
        match worker
            .topology
            .current()
            .memory_shortfall(&worker.spec, &algorithm)
        {
            Some(why) => Err(Unusable::MemoryShortfall(why)),
            None => Ok(algorithm),
        }
    }

    /// While the flow cannot run its algorithm, it waits (logged once per
    /// reason) and its messages stay in the broker. `waiting` holds the
    /// reason last logged: the shortfall's sentence, or an empty one for a
    /// missing version.
    pub(super) async fn wait_for_algorithm(
        &mut self,
        plugin_changes: &mut tokio::sync::watch::Receiver<u64>,
        waiting: &mut Option<String>,
    ) -> Next {
        let (spec, flow, status) = (&self.worker.spec, &self.worker.flow, &self.worker.status);
        let why = match self.usable_algorithm() {
            Ok(_) => {
                if waiting.take().is_some() {
                    tracing::info!(flow = %flow, algorithm = %spec.algorithm, "Algorithm available again; the flow resumes.");
                    status.set_state(FlowState::Running);
                }
                return Next::Proceed;
            }
            Err(why) => why,
        };
        let recheck = match &why {
            Unusable::Missing => {
                if waiting.as_deref() != Some("") {
                    tracing::warn!(
                        flow = %flow,
                        algorithm = %spec.algorithm,
                        "No loaded version of the algorithm matches (yet: versions still compiling load in the background); the flow waits and its messages stay in the broker."
                    );
                }
                *waiting = Some(String::new());
                // Only a registry change can end this wait.
                Duration::from_secs(3600)
            }
            Unusable::Rollout(text) => {
                if waiting.as_deref() != Some(text.as_str()) {
                    tracing::warn!(
                        flow = %flow,
                        algorithm = %spec.algorithm,
                        reason = %text,
                        "The flow's rollout has no version to run yet; the flow waits and its messages stay in the broker."
                    );
                }
                *waiting = Some(text.clone());
                Duration::from_secs(3600)
            }
            Unusable::MemoryShortfall(text) => {
                if waiting.as_deref() != Some(text.as_str()) {
                    tracing::error!(
                        flow = %flow,
                        algorithm = %spec.algorithm,
                        error = %text,
                        "The flow's memory limit is below what the algorithm needs to start; the flow waits and its messages stay in the broker."
                    );
                    status.failed(text);
                }
                *waiting = Some(text.clone());
                LIMIT_RECHECK
            }
        };
        status.set_state(FlowState::WaitingForPlugin);
        tokio::select! {
            _ = self.shutdown.cancelled() => Next::Stop,
            _ = plugin_changes.changed() => Next::Again,
            _ = tokio::time::sleep(recheck) => Next::Again,
        }
    }
}

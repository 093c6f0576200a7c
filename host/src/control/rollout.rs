//! A flow's canary from the operator's side: promote it or roll it back
//! (`eventflow flows promote|rollback FLOW`), and make the decisions the
//! router takes on its own (a failed gate, `promote_after`) durable.
//!
//! Either way the decision takes effect at once in the running flow (see
//! `crate::flow::rollout`) and is then saved as a change of the flow, so a
//! restarted router (and every router sharing the state) keeps it: a
//! canary's rollback removes the canary, its promotion also pins the flow
//! to the canary version; a `rollout`'s rollback adds the version to the
//! flow's `skip_versions`; a shadow stopped by its gate is removed; the
//! version a `rollout` serves is kept in the router's state store.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::{Action, ControlError, ControlPlane, Role};
use crate::api::{RolloutChanged, RolloutState};
use crate::config::{Declarations, FlowSpec};
use crate::flow::rollout::{Decision, DecisionKind};
use crate::state::RolloutServing;

impl ControlPlane {
    /// Promotes a flow's canary: the flow runs the canary version for every
    /// message and its declaration pins it (a `rollout`'s canary: it serves
    /// from now on, and the flow still follows the latest). 409 when it has
    /// no canary.
    pub async fn promote_flow(
        &self,
        role: &Role,
        name: &str,
    ) -> Result<RolloutChanged, ControlError> {
        self.end_canary(role, name, RolloutState::Promoted).await
    }

    /// Rolls a flow's canary back: it gets no more messages and leaves the
    /// flow's declaration (a `rollout`'s canary joins `skip_versions`). 409
    /// when it has no canary.
    pub async fn rollback_flow(
        &self,
        role: &Role,
        name: &str,
    ) -> Result<RolloutChanged, ControlError> {
        self.end_canary(role, name, RolloutState::RolledBack).await
    }

    async fn end_canary(
        &self,
        role: &Role,
        name: &str,
        state: RolloutState,
    ) -> Result<RolloutChanged, ControlError> {
        let flow = self.flow_named(name)?;
        role.authorize(Action::EditFlow(&flow.algorithm.owner))?;
        let why = match state {
            RolloutState::Promoted => "promoted by an operator",
            _ => "rolled back by an operator",
        };
        let Some(canary) = flow.canary else {
            // A `rollout`'s canary: decided in the running flow, which
            // saves it as it saves its own decisions (a rollback joins
            // `skip_versions`, a promotion becomes the serving version).
            if flow.rollout.is_some()
                && let Some(auto) = self.router.services().rollouts.auto(name)
                && let Some(version) = auto.decide(state, why.into())
            {
                return Ok(RolloutChanged {
                    flow: name.to_string(),
                    algorithm: format!("{}/{version}", flow.algorithm.unversioned()),
                    state,
                });
            }
            return Err(ControlError::Conflict(format!(
                "flow {name:?} has no canary"
            )));
        };
        if let Some(running) = self.router.services().rollouts.get(name)
            && *running.version() == canary.version
        {
            running.decide(state, why.into());
        }
        self.save_decision(name, &canary.version, state).await
    }

    /// Saves a decision on the canary `version` of flow `name`; 409 when the
    /// flow's canary is another version by now (an edit came first).
    async fn save_decision(
        &self,
        name: &str,
        version: &semver::Version,
        state: RolloutState,
    ) -> Result<RolloutChanged, ControlError> {
        let (n, v) = (name.to_string(), version.clone());
        let d = self
            .change(move |d| {
                let f = flow_mut(d, &n)?;
                if f.canary.as_ref().map(|c| &c.version) != Some(&v) {
                    return Err(ControlError::Conflict(format!(
                        "flow {n:?} has no canary {v} any more"
                    )));
                }
                f.canary = None;
                if state == RolloutState::Promoted {
                    f.algorithm.version = Some(v);
                }
                Ok(())
            })
            .await?;
        let algorithm = d
            .flows
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.algorithm.to_string())
            .unwrap_or_default();
        Ok(RolloutChanged {
            flow: name.to_string(),
            algorithm,
            state,
        })
    }

    /// Saves the decisions the flows take on their own, one at a time,
    /// until `shutdown`. A decision that cannot be saved still holds in the
    /// running flow; it is logged.
    pub async fn save_rollout_decisions(
        self: Arc<Self>,
        mut decisions: UnboundedReceiver<Decision>,
        shutdown: CancellationToken,
    ) {
        loop {
            let decision = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = decisions.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
            };
            let (flow, version) = (&decision.flow, &decision.version);
            let saved = match decision.kind {
                DecisionKind::Canary(state) => self.save_decision(flow, version, state).await.map(
                    |_| "Canary decision saved: the flow's declaration no longer has the canary.",
                ),
                DecisionKind::Skip => self
                    .save_skip(flow, version)
                    .await
                    .map(|()| "Rollback saved: the flow's skip_versions lists the version."),
                DecisionKind::ShadowStopped => self.save_shadow_stop(flow, version).await.map(
                    |()| "Shadow stop saved: the flow's declaration no longer has the shadow.",
                ),
                DecisionKind::Serving => self.save_serving(flow, version).await,
            };
            match saved {
                Ok(what) => tracing::info!(flow = %flow, version = %version, "{what}"),
                Err(e) => tracing::warn!(
                    flow = %flow,
                    version = %version,
                    error = %e,
                    "Could not save a rollout decision; it holds in the running flow until it restarts."
                ),
            }
        }
    }

    /// Adds `version` to the `skip_versions` of flow `name`, whose `rollout`
    /// rolled it back; 409 when the flow has no rollout any more.
    async fn save_skip(&self, name: &str, version: &semver::Version) -> Result<(), ControlError> {
        let (n, v) = (name.to_string(), version.clone());
        self.change(move |d| {
            let f = flow_mut(d, &n)?;
            if f.rollout.is_none() {
                return Err(ControlError::Conflict(format!(
                    "flow {n:?} has no rollout any more"
                )));
            }
            if !f.skip_versions.contains(&v) {
                f.skip_versions.push(v);
                f.skip_versions.sort();
            }
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Saves `version` as what the `rollout` of flow `name` serves, in the
    /// router's own state (it is not part of the declaration), unless the
    /// flow changed since: it no longer has that rollout, or serves another
    /// version by now (whose own decision follows).
    async fn save_serving(
        &self,
        name: &str,
        version: &semver::Version,
    ) -> Result<&'static str, ControlError> {
        // Serial with changes, so a change that removes the flow or its
        // rollout (and forgets its saved version) is either seen here or
        // comes after this write.
        let _serial = self.lock.lock().await;
        let flow = self.flow_named(name)?;
        let current = flow.rollout.is_some()
            && flow.algorithm.version.is_none()
            && self.router.services().rollouts.auto(name).is_some_and(|r| {
                r.follows_algorithm(&flow.algorithm)
                    && r.serving_version().as_ref() == Some(version)
            });
        if !current {
            return Ok("Rollout's serving version not saved: the flow changed since.");
        }
        let serving = RolloutServing {
            algorithm: flow.algorithm.unversioned(),
            version: version.clone(),
        };
        let name = name.to_string();
        self.with_state(move |s| s.set_rollout_serving(&name, &serving))
            .await?;
        Ok("Rollout's serving version saved: a restarted router serves it again.")
    }

    /// Removes the shadow `version` of flow `name`, which its gate stopped;
    /// 409 when the flow's shadow is another version by now.
    async fn save_shadow_stop(
        &self,
        name: &str,
        version: &semver::Version,
    ) -> Result<(), ControlError> {
        let (n, v) = (name.to_string(), version.clone());
        self.change(move |d| {
            let f = flow_mut(d, &n)?;
            if f.shadow.as_ref().map(|s| &s.version) != Some(&v) {
                return Err(ControlError::Conflict(format!(
                    "flow {n:?} has no shadow {v} any more"
                )));
            }
            f.shadow = None;
            Ok(())
        })
        .await
        .map(drop)
    }
}

/// The flow `name` of the declarations, to change it; 404 without one.
fn flow_mut<'a>(d: &'a mut Declarations, name: &str) -> Result<&'a mut FlowSpec, ControlError> {
    d.flows
        .iter_mut()
        .find(|f| f.name == name)
        .ok_or_else(|| ControlError::NotFound(format!("no flow named {name:?}")))
}

//! A flow's canary: which version handles each message, each version's
//! numbers, and the decision to roll the canary back or promote it.
//!
//! The canary's share is a number the worker reads once per message, so a
//! decision takes effect for the next message: a rolled-back canary gets
//! nothing more at once, a promoted one everything. The decision is then
//! made durable by the control plane (it removes the canary from the flow,
//! or pins the flow to the canary version), which restarts the flow; the
//! flow's status keeps showing the decision.
//!
//! The gate itself is in [`gate`]; a flow's shadow version, which runs
//! every message again with its effects discarded, is in [`shadow`]; the
//! canaries a latest-following flow's `rollout` makes of new versions are
//! in [`auto`].

mod auto;
mod gate;
mod shadow;

pub use auto::AutoRollout;
pub(super) use shadow::start as start_shadow;
pub use shadow::{Shadow, ShadowStats};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::api::{RolloutReport, RolloutState};
use crate::config::{AlgorithmRef, CanarySpec, FlowSpec};
use crate::message::{InboundMessage, KEY_HEADER};
use crate::metrics::{Metrics, RolloutLabels};
use crate::registry::Registry;
use crate::sandbox::{Algorithm, AlgorithmId};
use crate::state::StateStore;

use super::FlowStatus;
use gate::{Side, Verdict, judge};

/// A canary's whole share: the buckets messages are hashed into.
const BUCKETS: u32 = 1_000_000;

/// A decision the router made on its own, for the control plane to make
/// durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The flow.
    pub flow: String,
    /// The version decided on.
    pub version: semver::Version,
    /// What was decided.
    pub kind: DecisionKind,
}

/// What the router decided on its own, and so what the flow's declaration
/// becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecisionKind {
    /// The flow's canary was rolled back or promoted (`RolledBack` or
    /// `Promoted`): the canary leaves the declaration, a promotion pins its
    /// version.
    Canary(RolloutState),
    /// The flow's `rollout` rolled a new version back: the version joins
    /// the flow's `skip_versions`.
    Skip,
    /// The flow's shadow was stopped by its gate: the shadow leaves the
    /// declaration.
    ShadowStopped,
    /// The version the flow's `rollout` serves changed (its first version,
    /// a promotion): saved in the router's state store, not in the
    /// declaration (see [`auto`]).
    Serving,
}

/// The running flows' canaries, and the decisions waiting to be made
/// durable.
pub struct Rollouts {
    live: Mutex<HashMap<String, Arc<Rollout>>>,
    /// The flows' automatic rollouts, kept across the flows' restarts.
    auto: Mutex<HashMap<String, Arc<AutoRollout>>>,
    decisions: UnboundedSender<Decision>,
    receiver: Mutex<Option<UnboundedReceiver<Decision>>>,
}

impl Default for Rollouts {
    fn default() -> Self {
        let (decisions, receiver) = unbounded_channel();
        Self {
            live: Mutex::default(),
            auto: Mutex::default(),
            decisions,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Rollouts {
    /// Where the flows send the decisions they make on their own.
    pub(super) fn decisions(&self) -> UnboundedSender<Decision> {
        self.decisions.clone()
    }

    /// The decisions the flows make on their own, for the one task that
    /// makes them durable; `None` once taken.
    pub fn take_decisions(&self) -> Option<UnboundedReceiver<Decision>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The automatic rollout of flow `flow`, if it has had one since the
    /// router started.
    pub fn auto(&self, flow: &str) -> Option<Arc<AutoRollout>> {
        self.auto
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(flow)
            .cloned()
    }

    /// The canary of the running flow `flow`, if it has one.
    pub fn get(&self, flow: &str) -> Option<Arc<Rollout>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(flow)
            .cloned()
    }

    /// A flow starts: its automatic rollout (if it declares one) goes on
    /// where it was when the flow stopped, unless its policy changed (then
    /// a new one serves the version the old one served), and skips the
    /// versions its declaration lists. A rollout new to this process
    /// (after a restart) serves the version `state` saved for it.
    pub(super) fn start_auto(
        &self,
        spec: &FlowSpec,
        metrics: &Arc<Metrics>,
        status: &FlowStatus,
        state: &StateStore,
    ) -> Option<Arc<AutoRollout>> {
        let Some(policy) = spec
            .rollout
            .as_ref()
            .filter(|_| spec.algorithm.version.is_none())
        else {
            // The saved version is forgotten with the declaration's change
            // (`StateStore::set_desired`).
            self.auto
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&spec.name);
            status.set_auto_rollout(None);
            return None;
        };
        let same_algorithm = |r: &AutoRollout| r.follows_algorithm(&spec.algorithm);
        let known = self.auto(&spec.name).filter(|r| same_algorithm(r));
        let rollout = match known {
            Some(r) if r.follows(policy, &spec.algorithm) => r,
            known => {
                // One small read of the local state, at a flow's start.
                let serving = match known {
                    Some(r) => r.serving_version(),
                    None => {
                        let algorithm = spec.algorithm.unversioned();
                        state
                            .rollout_serving(&spec.name)
                            .unwrap_or_else(|e| {
                                tracing::warn!(flow = %spec.name, error = %format!("{e:#}"), "Cannot read the version the flow's rollout serves; it starts as a new rollout.");
                                None
                            })
                            .filter(|s| s.algorithm == algorithm)
                            .map(|s| s.version)
                    }
                };
                Arc::new(AutoRollout::new(
                    &spec.name,
                    &spec.algorithm,
                    policy.clone(),
                    metrics.clone(),
                    self.decisions.clone(),
                    serving,
                ))
            }
        };
        if let Some(version) = rollout.serving_version() {
            // Saved again (the save is idempotent): a row forgotten while
            // this process kept the rollout in memory (the flow deleted or
            // its rollout removed, then declared again) is written back.
            let _ = self.decisions.send(Decision {
                flow: spec.name.clone(),
                version,
                kind: DecisionKind::Serving,
            });
        }
        let mut auto = self.auto.lock().unwrap_or_else(|p| p.into_inner());
        rollout.skip(&spec.skip_versions);
        auto.insert(spec.name.clone(), rollout.clone());
        status.set_auto_rollout(Some(rollout.clone()));
        Some(rollout)
    }

    /// A flow starts: its canary (if it declares one) starts afresh and its
    /// status shows it. A flow without one keeps showing a decided canary
    /// (the rollback or promotion that restarted it).
    pub(super) fn start(
        &self,
        spec: &FlowSpec,
        metrics: &Arc<Metrics>,
        status: &FlowStatus,
    ) -> Option<Arc<Rollout>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let Some(canary) = &spec.canary else {
            live.remove(&spec.name);
            status.clear_undecided_rollout();
            return None;
        };
        let rollout = Arc::new(Rollout {
            flow: spec.name.clone(),
            canary: AlgorithmRef {
                version: Some(canary.version.clone()),
                ..spec.algorithm.clone()
            },
            share: AtomicU32::new(share_of(canary.percent)),
            spec: canary.clone(),
            inner: Mutex::default(),
            metrics: metrics.clone(),
            decisions: self.decisions.clone(),
            missing_logged: AtomicBool::new(false),
        });
        live.insert(spec.name.clone(), rollout.clone());
        status.set_rollout(rollout.clone());
        tracing::info!(
            flow = %spec.name,
            canary = %rollout.canary,
            percent = canary.percent,
            "Canary started."
        );
        Some(rollout)
    }
}

/// Buckets of [`BUCKETS`] for a percentage.
fn share_of(percent: f64) -> u32 {
    ((percent.clamp(0.0, 100.0) / 100.0) * f64::from(BUCKETS)).round() as u32
}

/// The bucket of a message: a stable hash (FNV-1a, then a 64-bit mix so
/// that the low digits spread) of its key, or of its id without one. The
/// same message lands in the same bucket on every delivery and every router.
fn bucket(message: &InboundMessage) -> u32 {
    let key = message.header(KEY_HEADER).unwrap_or(&message.id);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % u64::from(BUCKETS)) as u32
}

/// One flow's canary while the flow runs.
pub struct Rollout {
    flow: String,
    /// `owner/name/version` of the canary.
    canary: AlgorithmRef,
    spec: CanarySpec,
    /// The buckets (of [`BUCKETS`]) that go to the canary now.
    share: AtomicU32,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    decisions: UnboundedSender<Decision>,
    /// Whether "the canary version is not loaded" was logged.
    missing_logged: AtomicBool,
}

/// What the gate watches, and where it stands.
struct Inner {
    state: RolloutState,
    canary: Side,
    serving: Side,
    decided: Option<(String, String)>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            state: RolloutState::Canary,
            canary: Side::default(),
            serving: Side::default(),
            decided: None,
        }
    }
}

impl Rollout {
    /// The canary version.
    pub fn version(&self) -> &semver::Version {
        &self.spec.version
    }

    /// The version that handles `message`: the canary for the messages in
    /// its share (while it is loaded), else `serving`.
    pub(super) fn choose(
        &self,
        message: &InboundMessage,
        serving: Arc<Algorithm>,
        registry: &Registry,
    ) -> Arc<Algorithm> {
        if bucket(message) >= self.share.load(Ordering::Relaxed) || self.is_canary(&serving.id) {
            return serving;
        }
        match registry.resolve(&self.canary) {
            Some(canary) => canary,
            None => {
                if !self.missing_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        flow = %self.flow,
                        canary = %self.canary,
                        "The canary version is not loaded; its share goes to the serving version meanwhile."
                    );
                }
                serving
            }
        }
    }

    fn is_canary(&self, id: &AlgorithmId) -> bool {
        id.version == self.spec.version
            && id.owner == self.canary.owner
            && id.name == self.canary.name
    }

    /// An attempt by `id` ended (`failed` or not, after `secs` of
    /// invocation): counted for its version; after a canary attempt the
    /// gate is judged.
    pub(super) fn observe(&self, id: &AlgorithmId, failed: bool, secs: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.spec.window_messages as usize;
        if inner.state == RolloutState::RolledBack && self.is_canary(id) {
            // Its attempts in flight at the rollback still end, and count.
            inner.canary.record(failed, secs, window);
        }
        if inner.state != RolloutState::Canary {
            return;
        }
        if !self.is_canary(id) {
            inner.serving.record(failed, secs, window);
            return;
        }
        inner.canary.record(failed, secs, window);
        match judge(&self.spec, &inner.canary, &inner.serving) {
            Verdict::Hold => {}
            Verdict::RollBack(why) => {
                self.decided(&mut inner, RolloutState::RolledBack, why, true);
            }
            Verdict::Promote => {
                let why = format!(
                    "promoted after {} messages with its gate passing",
                    inner.canary.messages()
                );
                self.decided(&mut inner, RolloutState::Promoted, why, true);
            }
        }
    }

    /// An operator rolls the canary back or promotes it: it takes effect
    /// for the next message, logged and counted. False when it was decided
    /// already.
    pub fn decide(&self, state: RolloutState, why: String) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.state != RolloutState::Canary {
            return false;
        }
        self.decided(&mut inner, state, why, false);
        true
    }

    /// Takes a decision: the share changes at once, the decision is logged,
    /// counted and shown, and (when the router made it) sent to be made
    /// durable.
    fn decided(&self, inner: &mut Inner, state: RolloutState, why: String, durable: bool) {
        let (share, decision) = match state {
            RolloutState::Promoted => (BUCKETS, "promoted"),
            _ => (0, "rolled_back"),
        };
        self.share.store(share, Ordering::Relaxed);
        inner.state = state;
        inner.decided = Some((crate::util::rfc3339_now(), why.clone()));
        if state == RolloutState::Promoted {
            tracing::info!(flow = %self.flow, canary = %self.canary, reason = %why, "Canary promoted: the flow runs its version for every message.");
        } else {
            tracing::warn!(flow = %self.flow, canary = %self.canary, reason = %why, "Canary rolled back: it gets no more messages and the flow stays on its version.");
        }
        self.metrics
            .rollout_decisions
            .get_or_create(&RolloutLabels {
                flow: self.flow.clone(),
                version: self.spec.version.to_string(),
                decision: decision.into(),
            })
            .inc();
        if durable {
            // The receiver lives as long as the admin API; without it the
            // decision holds until the flow restarts.
            let _ = self.decisions.send(Decision {
                flow: self.flow.clone(),
                version: self.spec.version.clone(),
                kind: DecisionKind::Canary(state),
            });
        }
    }

    /// Whether the canary still waits for a decision.
    pub(super) fn undecided(&self) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).state == RolloutState::Canary
    }

    /// What the flow's status shows.
    pub fn report(&self) -> RolloutReport {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        RolloutReport {
            canary_version: self.spec.version.to_string(),
            state: inner.state,
            percent: f64::from(self.share.load(Ordering::Relaxed)) * 100.0 / f64::from(BUCKETS),
            canary: inner.canary.report(),
            serving: inner.serving.report(),
            decided: inner.decided.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, key: Option<&str>) -> InboundMessage {
        InboundMessage {
            id: id.to_string(),
            topic: "t".into(),
            payload: Vec::new(),
            headers: key
                .map(|k| vec![(KEY_HEADER.to_string(), k.to_string())])
                .unwrap_or_default(),
            attempt: 1,
            enqueued_at: None,
            undecodable: None,
        }
    }

    #[test]
    fn a_share_takes_its_percentage_of_ids_and_the_same_message_always_the_same_bucket() {
        let share = share_of(10.0);
        let n = 20_000;
        let chosen = (0..n)
            .filter(|i| bucket(&message(&format!("{i:020}"), None)) < share)
            .count();
        let percent = chosen as f64 * 100.0 / n as f64;
        assert!((9.0..=11.0).contains(&percent), "{percent}");
        let (a, b) = (
            message("m-1", Some("order-7")),
            message("m-2", Some("order-7")),
        );
        assert_eq!(bucket(&a), bucket(&b), "the key decides, not the id");
        assert_eq!(bucket(&message("m-1", None)), bucket(&message("m-1", None)));
        assert_eq!((share_of(0.0), share_of(100.0)), (0, BUCKETS));
    }

    /// A rollout new to the process starts from the version saved for its
    /// flow and algorithm; one whose policy changed keeps the version the
    /// old one served.
    #[test]
    fn a_restarted_rollout_serves_the_saved_version_and_a_new_policy_the_one_served() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path(), &Default::default()).unwrap();
        let algorithm = AlgorithmRef {
            owner: "o".into(),
            name: "a".into(),
            version: None,
        };
        let mut spec = FlowSpec::new("f", "local", "in", algorithm);
        spec.rollout = Some(crate::config::RolloutPolicy {
            percent: 10.0,
            promote_after: 1_000,
        });
        let saved = |algorithm: &str, version: &str| crate::state::RolloutServing {
            algorithm: algorithm.into(),
            version: version.parse().unwrap(),
        };
        let start = |rollouts: &Rollouts, spec: &FlowSpec| {
            rollouts
                .start_auto(
                    spec,
                    &Arc::new(Metrics::new()),
                    &FlowStatus::default(),
                    &state,
                )
                .unwrap()
                .serving_version()
                .map(|v| v.to_string())
        };
        state
            .set_rollout_serving("f", &saved("o/other", "0.1.0"))
            .unwrap();
        assert_eq!(
            start(&Rollouts::default(), &spec),
            None,
            "another algorithm"
        );
        state
            .set_rollout_serving("f", &saved("o/a", "0.1.0"))
            .unwrap();
        let rollouts = Rollouts::default();
        let mut decisions = rollouts.take_decisions().unwrap();
        assert_eq!(start(&rollouts, &spec).as_deref(), Some("0.1.0"));
        // Saved again at every start: a row forgotten while the rollout
        // stayed in memory comes back.
        let again = decisions.try_recv().unwrap();
        assert_eq!(
            (again.version.to_string(), again.kind),
            ("0.1.0".to_string(), DecisionKind::Serving)
        );

        // Promoted in memory (its save still queued): a new policy goes on
        // from there, not from the store.
        state
            .set_rollout_serving("f", &saved("o/a", "0.0.9"))
            .unwrap();
        spec.rollout = Some(crate::config::RolloutPolicy {
            percent: 50.0,
            promote_after: 10,
        });
        assert_eq!(start(&rollouts, &spec).as_deref(), Some("0.1.0"));
    }
}

//! A latest-following flow's `rollout = "canary N% then promote after M"`:
//! a version loaded while the flow runs becomes a canary at N % instead of
//! taking every message at once. After M of its attempts with its gate
//! passing it is promoted (it serves every message, as the latest does
//! anyway); when the gate fails it is rolled back: it gets no more
//! messages, and the version that served before keeps serving. Another new
//! version meanwhile starts a new canary.
//!
//! The gate is the canary's ([`super::gate`]): a failure rate at most
//! [`MAX_FAILURE_RATE`] above the serving version's, over the last
//! `min(M, 100)` attempts.
//!
//! A rollback is made durable by the control plane: the version joins the
//! flow's `skip_versions`, and the flow serves the newest loaded version
//! not listed there, on every router sharing the state and after a restart
//! or a `kill -9`.
//!
//! The serving version is durable too, in the router's state store
//! ([`crate::state::RolloutServing`]), saved whenever it changes (the
//! flow's first version, a promotion). After a restart the version that
//! served before serves again and a newer one is a canary again, its
//! window starting afresh; until the serving version has loaded (a restart
//! compiles in the background) the flow waits rather than hand every
//! message to an undecided canary. On a flow's very first start it waits
//! until no version of its algorithm is compiling, so the version that
//! serves is the newest in the plugin directory, whatever the order the
//! versions compile in.
//!
//! The versions the flow skips (its declared `skip_versions` and the
//! rollbacks not saved there yet) are kept here only: [`AutoRollout::usable`]
//! is what the flow resolves its algorithm with.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use crate::api::{RolloutReport, RolloutState};
use crate::config::{AlgorithmRef, CanarySpec, RolloutPolicy};
use crate::message::InboundMessage;
use crate::metrics::{Metrics, RolloutLabels};
use crate::registry::Registry;
use crate::sandbox::{Algorithm, AlgorithmId};

use super::gate::{Side, Verdict, judge};
use super::{BUCKETS, Decision, DecisionKind, bucket, share_of};

/// How much more often than the serving version a new version may fail
/// (0.05: five percentage points) before it is rolled back.
pub const MAX_FAILURE_RATE: f64 = 0.05;

/// The most attempts the gate looks at.
const MAX_WINDOW: u64 = 100;

/// A flow's automatic rollout of new versions.
pub struct AutoRollout {
    flow: String,
    /// `owner/name` of the flow's algorithm.
    algorithm: AlgorithmRef,
    policy: RolloutPolicy,
    metrics: Arc<Metrics>,
    decisions: UnboundedSender<Decision>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The version that serves every message outside a canary's share.
    serving: Option<semver::Version>,
    candidate: Option<Candidate>,
    /// The versions the flow does not run: its declared `skip_versions`
    /// and the rollbacks not saved there yet.
    rolled_back: BTreeSet<semver::Version>,
    /// The versions rolled back here that the declaration does not list
    /// yet (their decisions are being saved).
    unsaved: BTreeSet<semver::Version>,
    /// The latest canary, kept after its decision.
    last: Option<Decided>,
}

/// A canary after its decision: what the status shows until the next one.
struct Decided {
    candidate: Candidate,
    state: RolloutState,
    /// When, and why.
    decided: (String, String),
}

impl Decided {
    /// A version the flow skips because its declaration lists it, shown
    /// when the flow starts (after a restart, or an operator's edit).
    fn declared(version: &semver::Version) -> Self {
        Self {
            candidate: Candidate {
                spec: CanarySpec {
                    version: version.clone(),
                    percent: 0.0,
                    max_failure_rate: None,
                    max_p99_ratio: None,
                    window_messages: 1,
                    promote_after: None,
                },
                canary: Side::default(),
                serving: Side::default(),
            },
            state: RolloutState::RolledBack,
            decided: (
                crate::util::rfc3339_now(),
                "the flow's skip_versions lists it (rolled back before the router restarted, or by an operator); remove it there to roll it out again".into(),
            ),
        }
    }
}

/// A new version being rolled out.
struct Candidate {
    spec: CanarySpec,
    canary: Side,
    serving: Side,
}

impl AutoRollout {
    /// The rollout of `flow`, which follows the latest of `algorithm`.
    pub(super) fn new(
        flow: &str,
        algorithm: &AlgorithmRef,
        policy: RolloutPolicy,
        metrics: Arc<Metrics>,
        decisions: UnboundedSender<Decision>,
        serving: Option<semver::Version>,
    ) -> Self {
        Self {
            flow: flow.to_string(),
            algorithm: AlgorithmRef {
                version: None,
                ..algorithm.clone()
            },
            policy,
            metrics,
            decisions,
            inner: Mutex::new(Inner {
                serving,
                ..Inner::default()
            }),
        }
    }

    /// The version the flow hands its messages to ([`Self::choose`] then
    /// splits off a canary's share): the newest loaded version it does not
    /// skip. `Err(why)` while it must wait: only skipped versions are loaded,
    /// or the version it serves is still compiling (after a restart), when
    /// the newest loaded one may be an undecided canary. A flow with no
    /// serving version yet (its first start) waits until no version of its
    /// algorithm is compiling; the newest then serves from now on.
    pub(in crate::flow) fn usable(&self, registry: &Registry) -> Result<Arc<Algorithm>, String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = self.pending(&inner, registry) {
            return Err(why);
        }
        let newest = if inner.serving.is_none() {
            // `serving` starts the flow on the newest version.
            self.serving(&mut inner, registry)
        } else {
            registry.resolve_latest_where(&self.algorithm, |v| !inner.rolled_back.contains(v))
        };
        newest.ok_or_else(|| self.nothing_to_run(&inner))
    }

    /// Why the flow waits, as its status says it: [`Self::usable`]'s
    /// reasons, without its effects; `None` when it does not.
    pub fn waiting_for(&self, registry: &Registry) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.pending(&inner, registry).or_else(|| {
            registry
                .resolve_latest_where(&self.algorithm, |v| !inner.rolled_back.contains(v))
                .is_none()
                .then(|| self.nothing_to_run(&inner))
        })
    }

    /// Why the flow must wait for a compile, if it must.
    fn pending(&self, inner: &Inner, registry: &Registry) -> Option<String> {
        if !registry.compiling_matches(&self.algorithm) {
            return None;
        }
        let algorithm = self.algorithm.unversioned();
        match inner.serving.as_ref().filter(|v| !inner.rolled_back.contains(v)) {
            // Not loaded: wait while it (or, if its plugin is gone, any
            // version, as on a first start) is compiling.
            Some(v) => registry
                .resolve(&AlgorithmRef {
                    version: Some(v.clone()),
                    ..self.algorithm.clone()
                })
                .is_none()
                .then(|| {
                    format!(
                        "version {v} of {algorithm}, which the flow's rollout serves, is not loaded yet and a version is compiling (a newer one must not take every message meanwhile)"
                    )
                }),
            None => Some(format!(
                "a version of {algorithm} is compiling (a rollout's first start serves the newest version once none is)"
            )),
        }
    }

    fn nothing_to_run(&self, inner: &Inner) -> String {
        let algorithm = self.algorithm.unversioned();
        if inner.rolled_back.is_empty() {
            format!("no version of {algorithm} is loaded")
        } else {
            format!(
                "no version of {algorithm} is loaded that the flow's skip_versions (or an unsaved rollback) does not list"
            )
        }
    }

    /// The flow (re)starts with `declared` as its `skip_versions`: those
    /// versions, and the rollbacks whose saving is still under way, get no
    /// messages. A version an operator removed from the list is rolled out
    /// again.
    pub(super) fn skip(&self, declared: &[semver::Version]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.unsaved.retain(|v| !declared.contains(v));
        let skipped: BTreeSet<_> = declared.iter().chain(&inner.unsaved).cloned().collect();
        if inner
            .candidate
            .as_ref()
            .is_some_and(|c| skipped.contains(&c.spec.version))
        {
            inner.candidate = None;
        }
        inner.rolled_back = skipped;
        // After a restart the status shows the rollback the declaration
        // keeps (the newest version it lists).
        if inner.candidate.is_none()
            && inner.last.is_none()
            && let Some(newest) = declared.iter().max()
        {
            inner.last = Some(Decided::declared(newest));
        }
    }

    /// The version that serves outside a canary's share, once known.
    pub fn serving_version(&self) -> Option<semver::Version> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .serving
            .clone()
    }

    /// Whether it was made for `policy` of `algorithm`.
    pub(super) fn follows(&self, policy: &RolloutPolicy, algorithm: &AlgorithmRef) -> bool {
        self.policy == *policy && self.follows_algorithm(algorithm)
    }

    /// Whether it rolls out versions of `algorithm` (`owner/name`).
    pub fn follows_algorithm(&self, algorithm: &AlgorithmRef) -> bool {
        self.algorithm.owner == algorithm.owner && self.algorithm.name == algorithm.name
    }

    /// The version that handles `message`, given the `latest` version the
    /// flow resolved: the latest when it serves, or for the messages in its
    /// canary share; else the version that served before it.
    pub(in crate::flow) fn choose(
        &self,
        message: &InboundMessage,
        latest: Arc<Algorithm>,
        registry: &Registry,
    ) -> Arc<Algorithm> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.serving.as_ref() == Some(&latest.id.version)
            && !inner.rolled_back.contains(&latest.id.version)
        {
            // The steady state: the latest serves, nothing to roll out.
            return latest;
        }
        let Some(serving) = self.serving(&mut inner, registry) else {
            // Only skipped versions are loaded: the latest serves.
            return latest;
        };
        let version = latest.id.version.clone();
        if version <= serving.id.version {
            return serving;
        }
        if inner.rolled_back.contains(&version) {
            if inner.candidate.is_none() && inner.last.is_none() {
                inner.last = Some(Decided::declared(&version));
            }
            return serving;
        }
        if inner.candidate.as_ref().map(|c| &c.spec.version) != Some(&version) {
            self.start_candidate(&mut inner, version, &serving.id.version);
        }
        if bucket(message) < share_of(self.policy.percent) {
            latest
        } else {
            serving
        }
    }

    /// The version that serves outside a canary's share: the one that
    /// served (or was promoted) while it is loaded and not skipped, else the
    /// newest loaded version not skipped, with no canary (as after a
    /// first start, or when the serving version went away).
    fn serving(&self, inner: &mut Inner, registry: &Registry) -> Option<Arc<Algorithm>> {
        if let Some(v) = inner.serving.clone()
            && !inner.rolled_back.contains(&v)
            && let Some(serving) = registry.resolve(&AlgorithmRef {
                version: Some(v),
                ..self.algorithm.clone()
            })
        {
            return Some(serving);
        }
        let newest =
            registry.resolve_latest_where(&self.algorithm, |v| !inner.rolled_back.contains(v))?;
        self.serve(inner, newest.id.version.clone());
        inner.candidate = None;
        Some(newest)
    }

    /// `version` serves from now on; saved, so a restart serves it again.
    fn serve(&self, inner: &mut Inner, version: semver::Version) {
        if inner.serving.as_ref() == Some(&version) {
            return;
        }
        inner.serving = Some(version.clone());
        // The receiver lives as long as the admin API; without it the
        // serving version is found again after a restart as on a first
        // start.
        let _ = self.decisions.send(Decision {
            flow: self.flow.clone(),
            version,
            kind: DecisionKind::Serving,
        });
    }

    fn start_candidate(
        &self,
        inner: &mut Inner,
        version: semver::Version,
        serving: &semver::Version,
    ) {
        tracing::info!(
            flow = %self.flow,
            canary = %version,
            serving = %serving,
            percent = self.policy.percent,
            promote_after = self.policy.promote_after,
            "A new version is rolled out as a canary."
        );
        inner.candidate = Some(Candidate {
            spec: CanarySpec {
                version,
                percent: self.policy.percent,
                max_failure_rate: Some(MAX_FAILURE_RATE),
                max_p99_ratio: None,
                window_messages: self.policy.promote_after.min(MAX_WINDOW),
                promote_after: Some(self.policy.promote_after),
            },
            canary: Side::default(),
            serving: Side::default(),
        });
        inner.last = None;
    }

    /// An attempt by `id` ended: counted for its version, and after a
    /// canary attempt the gate is judged.
    pub(in crate::flow) fn observe(&self, id: &AlgorithmId, failed: bool, secs: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let serving = inner.serving.clone();
        let Some(c) = inner.candidate.as_mut() else {
            // A rolled-back canary's attempts that were in flight at the
            // decision still end, and count for it.
            if let Some(d) = inner.last.as_mut().filter(|d| {
                d.state == RolloutState::RolledBack && d.candidate.spec.version == id.version
            }) {
                let window = d.candidate.spec.window_messages as usize;
                d.candidate.canary.record(failed, secs, window);
            }
            return;
        };
        let window = c.spec.window_messages as usize;
        if id.version == c.spec.version {
            c.canary.record(failed, secs, window);
        } else {
            if Some(&id.version) == serving.as_ref() {
                c.serving.record(failed, secs, window);
            }
            return;
        }
        let (state, why) = match judge(&c.spec, &c.canary, &c.serving) {
            Verdict::Hold => return,
            Verdict::RollBack(why) => (RolloutState::RolledBack, why),
            Verdict::Promote => (
                RolloutState::Promoted,
                format!(
                    "promoted after {} messages with its gate passing",
                    c.canary.messages()
                ),
            ),
        };
        self.decided(&mut inner, state, why);
    }

    /// An operator's decision on the version being rolled out (`eventflow
    /// flows promote|rollback FLOW`): taken and saved as the router's own
    /// are. Returns that version; `None` when no canary is being rolled
    /// out.
    pub fn decide(&self, state: RolloutState, why: String) -> Option<semver::Version> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let version = inner.candidate.as_ref()?.spec.version.clone();
        self.decided(&mut inner, state, why);
        Some(version)
    }

    fn decided(&self, inner: &mut Inner, state: RolloutState, why: String) {
        let Some(c) = inner.candidate.take() else {
            return;
        };
        let version = c.spec.version.clone();
        let decision = if state == RolloutState::Promoted {
            tracing::info!(flow = %self.flow, canary = %version, reason = %why, "Rollout promoted the new version: it runs every message.");
            self.serve(inner, version.clone());
            "promoted"
        } else {
            tracing::warn!(flow = %self.flow, canary = %version, reason = %why, "Rollout rolled the new version back: it gets no more messages and the previous version keeps serving.");
            inner.rolled_back.insert(version.clone());
            inner.unsaved.insert(version.clone());
            // The receiver lives as long as the admin API; without it the
            // rollback holds until the router restarts.
            let _ = self.decisions.send(Decision {
                flow: self.flow.clone(),
                version: version.clone(),
                kind: DecisionKind::Skip,
            });
            "rolled_back"
        };
        self.metrics
            .rollout_decisions
            .get_or_create(&RolloutLabels {
                flow: self.flow.clone(),
                version: version.to_string(),
                decision: decision.into(),
            })
            .inc();
        inner.last = Some(Decided {
            candidate: c,
            state,
            decided: (crate::util::rfc3339_now(), why),
        });
    }

    /// What the flow's status shows: the canary being rolled out, or the
    /// latest decision; `None` before the first new version.
    pub fn report(&self) -> Option<RolloutReport> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &inner.candidate {
            Some(c) => Some(report_of(c, share_of(self.policy.percent))),
            None => inner.last.as_ref().map(|d| {
                let share = if d.state == RolloutState::Promoted {
                    BUCKETS
                } else {
                    0
                };
                RolloutReport {
                    state: d.state,
                    decided: Some(d.decided.clone()),
                    ..report_of(&d.candidate, share)
                }
            }),
        }
    }
}

fn report_of(c: &Candidate, share: u32) -> RolloutReport {
    RolloutReport {
        canary_version: c.spec.version.to_string(),
        state: RolloutState::Canary,
        percent: f64::from(share) * 100.0 / f64::from(BUCKETS),
        canary: c.canary.report(),
        serving: c.serving.report(),
        decided: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(version: &str) -> AlgorithmId {
        AlgorithmId {
            owner: "o".into(),
            name: "a".into(),
            version: version.parse().unwrap(),
        }
    }

    fn rollout(
        serving: Option<&str>,
    ) -> (AutoRollout, tokio::sync::mpsc::UnboundedReceiver<Decision>) {
        let algorithm = AlgorithmRef {
            owner: "o".into(),
            name: "a".into(),
            version: None,
        };
        let policy = RolloutPolicy {
            percent: 10.0,
            promote_after: 1_000,
        };
        let (decisions, saved) = tokio::sync::mpsc::unbounded_channel();
        let rollout = AutoRollout::new(
            "f",
            &algorithm,
            policy,
            Arc::new(Metrics::new()),
            decisions,
            serving.map(|v| v.parse().unwrap()),
        );
        (rollout, saved)
    }

    fn load(registry: &Registry, version: &str) {
        let native: crate::sandbox::NativeFn = Arc::new(|_| Ok(None));
        registry.insert(
            format!("/p/o/a/{version}.wasm").into(),
            Algorithm::native(id(version), native),
        );
    }

    fn message(i: usize) -> InboundMessage {
        InboundMessage {
            id: format!("m-{i}"),
            topic: "t".into(),
            payload: Vec::new(),
            headers: Vec::new(),
            attempt: 1,
            enqueued_at: None,
            undecodable: None,
        }
    }

    /// After a restart the version that served before may load after the
    /// new one: until it does the flow waits, then the new one is a canary
    /// at its share again, not the version for every message.
    #[test]
    fn a_restarted_flow_waits_for_the_version_it_served_and_the_canary_keeps_its_share() {
        let registry = Arc::new(Registry::new());
        let (rollout, mut saved) = rollout(Some("0.1.0"));
        let compiling = registry.compiling(&id("0.1.0"));
        load(&registry, "0.2.0");
        let why = rollout.usable(&registry).err().unwrap();
        assert!(why.contains("version 0.1.0"), "{why}");
        assert_eq!(rollout.waiting_for(&registry), Some(why));
        load(&registry, "0.1.0");
        drop(compiling);
        let latest = rollout.usable(&registry).unwrap();
        assert_eq!(latest.id.version.to_string(), "0.2.0");
        let canary = (0..2_000)
            .filter(|&i| {
                let chosen = rollout.choose(&message(i), latest.clone(), &registry);
                chosen.id.version == latest.id.version
            })
            .count();
        assert!((100..=300).contains(&canary), "{canary} of 2000");
        assert_eq!(rollout.serving_version().unwrap().to_string(), "0.1.0");
        assert!(saved.try_recv().is_err(), "nothing changed to save");
    }

    /// A flow's first start waits until no version of its algorithm is
    /// compiling, so the newest serves whatever order they load in; that
    /// version is sent to be saved.
    #[test]
    fn a_first_start_serves_the_newest_version_once_none_is_compiling() {
        let registry = Arc::new(Registry::new());
        let (rollout, mut saved) = rollout(None);
        let compiling = registry.compiling(&id("0.2.0"));
        load(&registry, "0.1.0");
        assert!(
            rollout
                .usable(&registry)
                .err()
                .unwrap()
                .contains("compiling")
        );
        load(&registry, "0.2.0");
        drop(compiling);
        let serving = rollout.usable(&registry).unwrap();
        assert_eq!(serving.id.version.to_string(), "0.2.0");
        assert_eq!(rollout.serving_version().unwrap().to_string(), "0.2.0");
        let decision = saved.try_recv().unwrap();
        assert_eq!(
            (decision.version.to_string(), decision.kind),
            ("0.2.0".to_string(), DecisionKind::Serving)
        );
        assert!((0..100).all(|i| {
            rollout
                .choose(&message(i), serving.clone(), &registry)
                .id
                .version
                == serving.id.version
        }));
    }

    #[test]
    fn a_rolled_back_canary_counts_the_attempts_that_were_in_flight_at_the_decision() {
        let (rollout, mut saved) = rollout(None);
        {
            let mut inner = rollout.inner.lock().unwrap();
            inner.serving = Some("0.1.0".parse().unwrap());
            rollout.start_candidate(
                &mut inner,
                "0.2.0".parse().unwrap(),
                &"0.1.0".parse().unwrap(),
            );
        }
        for _ in 0..100 {
            rollout.observe(&id("0.2.0"), true, 0.001);
        }
        let report = rollout.report().unwrap();
        assert_eq!(report.state, RolloutState::RolledBack);
        assert_eq!(report.canary.messages, 100);
        let decision = saved.try_recv().unwrap();
        assert_eq!(
            (decision.version.to_string(), decision.kind),
            ("0.2.0".to_string(), DecisionKind::Skip)
        );
        // Two attempts that were in flight end after the rollback; the
        // serving version's attempts after it are not the canary's.
        rollout.observe(&id("0.2.0"), true, 0.001);
        rollout.observe(&id("0.2.0"), true, 0.001);
        rollout.observe(&id("0.1.0"), false, 0.001);
        let report = rollout.report().unwrap();
        assert_eq!((report.canary.messages, report.canary.failures), (102, 102));
        assert_eq!(report.state, RolloutState::RolledBack);
        assert_eq!(report.percent, 0.0);
        assert!(report.decided.is_some());
    }
}

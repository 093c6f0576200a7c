//! A flow's shadow version: every message the flow invokes is run again by
//! the shadow, after the serving attempt and off its path, and the two are
//! compared; the shadow's effects are discarded.
//!
//! The serving path only offers the message to a bounded queue
//! ([`Shadow::offer`], which never waits): when the queue is full the
//! message is not shadowed and counts as `shadow_skipped`. One task per
//! flow drains the queue, running at most the shadow's `concurrency` at
//! once, each in a fresh instance taken only if the pool has one free
//! ([`crate::sandbox::Sandbox::invoke_shadow`]): data writes stay in the
//! invocation, HTTP requests are refused, publishes and the output are
//! dropped here. The task ends when the flow's worker (which holds the
//! queue's sender) is dropped.
//!
//! A shadow its gate stops runs nothing more at once; the stop is then made
//! durable by the control plane, which removes the shadow from the flow's
//! declaration (as a canary decision removes the canary), so a restarted
//! router does not run it again. The flow's status keeps showing the
//! stopped shadow until the router restarts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Semaphore, mpsc};

use crate::api::{ShadowReport, ShadowState};
use crate::config::{AlgorithmRef, ShadowSpec};
use crate::message::InboundMessage;
use crate::metrics::{Metrics, ShadowLabels, ShadowRunLabels};
use crate::sandbox::Outcome;

use super::super::worker::Worker;
use super::gate::{Agreement, Side, judge_shadow};
use super::{Decision, DecisionKind};

/// What the serving attempt of a shadowed message gave: its output, or
/// that it failed.
type Serving = Result<Option<Vec<u8>>, ()>;

/// One message for the shadow.
struct Job {
    message: InboundMessage,
    serving: Serving,
    /// How long the serving attempt took, for the p99 gate.
    serving_secs: f64,
}

/// A running flow's shadow, held by its worker.
pub struct Shadow {
    queue: mpsc::Sender<Job>,
    stats: Arc<ShadowStats>,
}

/// Starts the shadow of `worker`'s flow, if it declares one, and shows it
/// in the flow's status.
pub(in crate::flow) fn start(worker: &Worker) -> Option<Arc<Shadow>> {
    let Some(spec) = worker.spec.shadow.clone() else {
        worker.status.clear_running_shadow();
        return None;
    };
    if worker.status.shadow_stop_unsaved(&spec.version) {
        // Its gate stopped it and the stop is not saved yet: a flow
        // restarted meanwhile (an edit, another decision) still declares
        // it, and it stays stopped.
        return None;
    }
    let stats = Arc::new(ShadowStats {
        flow: worker.flow.to_string(),
        version: AlgorithmRef {
            version: Some(spec.version.clone()),
            ..worker.spec.algorithm.clone()
        },
        labels: ShadowLabels {
            flow: worker.flow.to_string(),
            version: spec.version.to_string(),
        },
        metrics: worker.services.metrics.clone(),
        decisions: worker.services.rollouts.decisions(),
        stopped: AtomicBool::new(false),
        missing_logged: AtomicBool::new(false),
        left_declaration: AtomicBool::new(false),
        tally: Mutex::default(),
        spec,
    });
    let budget = stats.spec.concurrency as usize;
    let (queue, receiver) = mpsc::channel(budget);
    // The drain task's worker has no shadow: it holds no sender, so the
    // task ends with the flow's worker.
    let ctx = Worker {
        rollout: None,
        auto_rollout: None,
        shadow: None,
        ..worker.clone()
    };
    tokio::spawn(drain(ctx, stats.clone(), receiver, budget));
    worker.status.set_shadow(Some(stats.clone()));
    tracing::info!(flow = %stats.flow, shadow = %stats.version, "Shadow started.");
    Some(Arc::new(Shadow { queue, stats }))
}

impl Shadow {
    /// Offers a message the serving version just ran (with what it gave)
    /// to the shadow. Never waits: a full queue skips the message.
    pub(in crate::flow) fn offer(&self, message: &InboundMessage, serving: &Outcome) {
        if self.stats.stopped.load(Ordering::Relaxed) {
            return;
        }
        match self.queue.try_reserve() {
            Ok(permit) => permit.send(Job {
                message: message.clone(),
                serving: serving.result.as_ref().cloned().map_err(|_| ()),
                serving_secs: serving.duration.as_secs_f64(),
            }),
            Err(_) => self.stats.skipped(),
        }
    }
}

/// Runs the queued messages, at most `budget` at once.
async fn drain(
    ctx: Worker,
    stats: Arc<ShadowStats>,
    mut receiver: mpsc::Receiver<Job>,
    budget: usize,
) {
    let running = Arc::new(Semaphore::new(budget));
    while let Some(job) = receiver.recv().await {
        let Ok(permit) = running.clone().acquire_owned().await else {
            break;
        };
        let (ctx, stats) = (ctx.clone(), stats.clone());
        tokio::spawn(async move {
            if let Some(outcome) = run(&ctx, &stats, job.message).await {
                stats.record(&outcome, &job.serving, job.serving_secs);
            }
            drop(permit);
        });
    }
}

/// Runs the shadow version on `message`; `None` when it did not run
/// (stopped, not loaded, or no free instance slot: counted as skipped).
async fn run(ctx: &Worker, stats: &ShadowStats, mut message: InboundMessage) -> Option<Outcome> {
    if stats.stopped.load(Ordering::Relaxed) {
        return None;
    }
    let Some(algorithm) = ctx.services.registry.resolve(&stats.version) else {
        if !stats.missing_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(flow = %stats.flow, shadow = %stats.version, "The shadow version is not loaded; messages are not shadowed meanwhile.");
        }
        stats.skipped();
        return None;
    };
    // Publishes are checked against the flow's grants as the serving
    // version's are, then dropped with the outcome.
    let (prepared, resolver) = ctx.prepare(&algorithm).await;
    let invocation = prepared.invocation(ctx.flow.clone(), &mut message, resolver);
    let outcome = ctx
        .services
        .sandbox
        .invoke_shadow(&algorithm, invocation)
        .await;
    if outcome.is_none() {
        stats.skipped();
    }
    outcome
}

/// A shadow's numbers and gate, shown in the flow's status.
pub struct ShadowStats {
    flow: String,
    /// `owner/name/version` of the shadow.
    version: AlgorithmRef,
    spec: ShadowSpec,
    labels: ShadowLabels,
    metrics: Arc<Metrics>,
    /// Where the stop goes to be made durable.
    decisions: UnboundedSender<Decision>,
    stopped: AtomicBool,
    /// Whether "the shadow version is not loaded" was logged.
    missing_logged: AtomicBool,
    /// Whether the flow started without it since its gate stopped it: the
    /// stop is saved, and declaring it again starts it afresh.
    left_declaration: AtomicBool,
    tally: Mutex<Tally>,
}

/// Counts since the shadow started.
#[derive(Default)]
struct Tally {
    runs: u64,
    failures: u64,
    reasons: BTreeMap<String, u64>,
    skipped: u64,
    compared: u64,
    agreed: u64,
    shadow: Side,
    serving: Side,
    agreement: Agreement,
    total_secs: f64,
    max_peak_memory: u64,
    stopped: Option<(String, String)>,
}

impl ShadowStats {
    fn skipped(&self) {
        self.metrics
            .shadow
            .skipped
            .get_or_create(&self.labels)
            .inc();
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).skipped += 1;
    }

    /// Counts one shadow run against the serving attempt, then judges the
    /// gate.
    fn record(&self, outcome: &Outcome, serving: &Serving, serving_secs: f64) {
        let secs = outcome.duration.as_secs_f64();
        let verdict = match &outcome.result {
            Ok(_) => "ok".to_string(),
            Err(f) => f.reason.to_string(),
        };
        let agreed = serving
            .as_ref()
            .ok()
            .map(|out| outcome.result.as_ref().ok() == Some(out));
        let output = match agreed {
            Some(true) => "equal",
            Some(false) => "different",
            None => "none",
        };
        let m = &self.metrics.shadow;
        m.runs
            .get_or_create(&ShadowRunLabels {
                flow: self.labels.flow.clone(),
                version: self.labels.version.clone(),
                verdict: verdict.clone(),
                output: output.into(),
            })
            .inc();
        m.seconds.get_or_create(&self.labels).observe(secs);
        m.peak_memory_bytes
            .get_or_create(&self.labels)
            .observe(outcome.peak_memory_bytes as f64);

        let window = self.spec.window_messages as usize;
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        t.runs += 1;
        t.total_secs += secs;
        t.max_peak_memory = t.max_peak_memory.max(outcome.peak_memory_bytes);
        let failed = outcome.result.is_err();
        if failed {
            t.failures += 1;
            *t.reasons.entry(verdict).or_default() += 1;
        }
        t.shadow.record(failed, secs, window);
        t.serving.record(serving.is_err(), serving_secs, window);
        if let Some(agreed) = agreed {
            t.compared += 1;
            t.agreed += u64::from(agreed);
            t.agreement.record(agreed, window);
        }
        if t.stopped.is_none()
            && let Some(why) = judge_shadow(&self.spec, &t.shadow, &t.serving, &t.agreement)
        {
            self.stop(&mut t, why);
        }
    }

    /// Whether its gate stopped it.
    pub(in crate::flow) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The shadow version.
    pub(in crate::flow) fn version(&self) -> &semver::Version {
        &self.spec.version
    }

    /// The flow started without it: its stop is saved.
    pub(in crate::flow) fn left_declaration(&self) {
        self.left_declaration.store(true, Ordering::Relaxed);
    }

    /// Whether the flow started without it since it stopped.
    pub(in crate::flow) fn has_left_declaration(&self) -> bool {
        self.left_declaration.load(Ordering::Relaxed)
    }

    /// The gate failed: the shadow runs nothing more, logged and counted,
    /// and the stop is sent to be made durable.
    fn stop(&self, t: &mut Tally, why: String) {
        self.stopped.store(true, Ordering::Relaxed);
        t.stopped = Some((crate::util::rfc3339_now(), why.clone()));
        self.metrics
            .shadow
            .stopped
            .get_or_create(&self.labels)
            .inc();
        tracing::warn!(flow = %self.flow, shadow = %self.version, reason = %why, "Shadow stopped: its gate failed; it runs no more messages and leaves the flow's declaration.");
        // The receiver lives as long as the admin API; without it the stop
        // holds until the flow restarts.
        let _ = self.decisions.send(Decision {
            flow: self.flow.clone(),
            version: self.spec.version.clone(),
            kind: DecisionKind::ShadowStopped,
        });
    }

    /// What the flow's status shows.
    pub fn report(&self) -> ShadowReport {
        let t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        ShadowReport {
            version: self.spec.version.to_string(),
            state: if t.stopped.is_some() {
                ShadowState::Stopped
            } else {
                ShadowState::Running
            },
            runs: t.runs,
            failures: t.failures,
            failure_reasons: t.reasons.clone(),
            skipped: t.skipped,
            compared: t.compared,
            agreed: t.agreed,
            agreement: (t.compared > 0).then(|| t.agreed as f64 / t.compared as f64),
            window_agreement: t.agreement.ratio(),
            window_failure_rate: t.shadow.failure_rate(),
            serving_window_failure_rate: t.serving.failure_rate(),
            mean_secs: if t.runs == 0 {
                0.0
            } else {
                t.total_secs / t.runs as f64
            },
            max_peak_memory_bytes: t.max_peak_memory,
            stopped: t.stopped.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stats(spec: &str) -> ShadowStats {
        let (decisions, _) = tokio::sync::mpsc::unbounded_channel();
        let spec: ShadowSpec = toml::from_str(spec).unwrap();
        ShadowStats {
            flow: "f".into(),
            version: "o/a/0.2.0".parse().unwrap(),
            labels: ShadowLabels {
                flow: "f".into(),
                version: spec.version.to_string(),
            },
            metrics: Arc::new(Metrics::new()),
            decisions,
            stopped: AtomicBool::new(false),
            missing_logged: AtomicBool::new(false),
            left_declaration: AtomicBool::new(false),
            tally: Mutex::default(),
            spec,
        }
    }

    fn outcome(millis: u64) -> Outcome {
        Outcome {
            result: Ok(Some(b"x".to_vec())),
            published: Vec::new(),
            duration: Duration::from_millis(millis),
            slot_wait: Duration::ZERO,
            peak_memory_bytes: 0,
            fuel_used: None,
        }
    }

    /// The serving attempt's time reaches the gate (it was counted as 0,
    /// so `max_p99_ratio` could never stop a shadow).
    #[test]
    fn a_shadow_five_times_slower_than_the_serving_version_stops_at_max_p99_ratio() {
        let spec = "version = \"0.2.0\"\nmax_p99_ratio = 2\nwindow_messages = 50";
        let serving: Serving = Ok(Some(b"x".to_vec()));
        let slow = stats(spec);
        for _ in 0..50 {
            slow.record(&outcome(10), &serving, 0.002);
        }
        assert!(slow.is_stopped());
        let why = slow.report().stopped.unwrap().1;
        assert!(why.contains("5.0 times"), "{why}");
        let close = stats(spec);
        for _ in 0..50 {
            close.record(&outcome(3), &serving, 0.002);
        }
        assert!(!close.is_stopped());
    }
}

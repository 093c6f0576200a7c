//! What a flow reports about itself: its [`FlowState`], counters, rates and
//! latest error, read by `eventflow status`, the admin API and `/readyz`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rollout::{AutoRollout, Rollout, ShadowStats};
use super::{LAST_ERROR_CHARS, one_line};
use crate::api::status::MAX_PARKED_SHOWN;
use crate::config::FlowSpec;
use crate::connector::Assignment;

/// Counts per flow, for `eventflow status`.
#[derive(Default)]
pub struct FlowStatus {
    state: Mutex<FlowState>,
    last_error: Mutex<Option<(String, String)>>,
    /// The consumer's partition assignment, for sources that have one.
    assignment: Mutex<Option<Arc<dyn Assignment>>>,
    /// Since when and why a broker connection the flow uses is down, from
    /// the router's latest broker check; `None` while they all answer.
    broker_down: Mutex<Option<(String, String)>>,
    received: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    filtered: AtomicU64,
    batches: AtomicU64,
    batched: AtomicU64,
    in_flight: AtomicI64,
    samples: Samples,
    /// The flow's canary, kept after a decision restarted the flow.
    rollout: Mutex<Option<Arc<Rollout>>>,
    /// The flow's automatic rollout (`rollout`), if it has one.
    auto_rollout: Mutex<Option<Arc<AutoRollout>>>,
    /// The flow's shadow, while the flow runs with one.
    shadow: Mutex<Option<Arc<ShadowStats>>>,
    /// The parked keys, as last read from the state store.
    parked: Mutex<Vec<crate::api::ParkedKey>>,
}

/// The counts taken every few seconds for the per-minute rates. The first
/// is taken when the status is created (all zero), so the messages of a
/// flow's first seconds count in its rates.
struct Samples(Mutex<VecDeque<(Instant, [u64; 3])>>);

impl Default for Samples {
    fn default() -> Self {
        Self(Mutex::new(VecDeque::from([(Instant::now(), [0; 3])])))
    }
}

impl std::ops::Deref for Samples {
    type Target = Mutex<VecDeque<(Instant, [u64; 3])>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A snapshot of a flow's status (part of the admin API's contract).
pub use crate::api::{FlowReport, FlowState};

impl FlowStatus {
    /// Sets the flow's state: the one way it changes.
    pub fn set_state(&self, state: FlowState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// The state as set, without what [`FlowStatus::report`] derives from
    /// the partition assignment and the broker check.
    pub fn state(&self) -> FlowState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages being handled now.
    pub(super) fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(super) fn started(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    pub(super) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn filtered(&self) {
        self.filtered.fetch_add(1, Ordering::Relaxed);
    }
    /// A call of `apply-batch` on `messages` messages.
    pub(super) fn batch_invoked(&self, messages: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched.fetch_add(messages as u64, Ordering::Relaxed);
    }

    /// Shows `rollout` as the flow's canary.
    pub(super) fn set_rollout(&self, rollout: Arc<Rollout>) {
        *self.rollout.lock().unwrap_or_else(|p| p.into_inner()) = Some(rollout);
    }

    /// Shows `rollout`'s canaries as the flow's (`None`: it has none).
    pub(super) fn set_auto_rollout(&self, rollout: Option<Arc<AutoRollout>>) {
        *self.auto_rollout.lock().unwrap_or_else(|p| p.into_inner()) = rollout;
    }

    /// Shows `shadow` as the flow's shadow (`None`: it has none).
    pub(super) fn set_shadow(&self, shadow: Option<Arc<ShadowStats>>) {
        *self.shadow.lock().unwrap_or_else(|p| p.into_inner()) = shadow;
    }

    /// The flow started without a shadow: a running one (removed by an
    /// edit) is shown no more; one its gate stopped (which removed it from
    /// the declaration) stays.
    pub(super) fn clear_running_shadow(&self) {
        let mut shadow = self.shadow.lock().unwrap_or_else(|p| p.into_inner());
        match shadow.as_ref() {
            Some(s) if s.is_stopped() => s.left_declaration(),
            Some(_) => *shadow = None,
            None => {}
        }
    }

    /// Whether the shadow shown is `version`, stopped by its gate, and the
    /// flow's declaration still names it (the stop is being saved).
    pub(super) fn shadow_stop_unsaved(&self, version: &semver::Version) -> bool {
        let shadow = self.shadow.lock().unwrap_or_else(|p| p.into_inner());
        shadow
            .as_ref()
            .is_some_and(|s| s.is_stopped() && !s.has_left_declaration() && s.version() == version)
    }

    /// The flow started without a canary: one that was never decided
    /// (removed by an edit) is shown no more; a decided one stays.
    pub(super) fn clear_undecided_rollout(&self) {
        let mut rollout = self.rollout.lock().unwrap_or_else(|p| p.into_inner());
        if rollout.as_ref().is_some_and(|r| r.undecided()) {
            *rollout = None;
        }
    }

    /// Sets the parked keys, as read from the state store.
    pub(super) fn set_parked(&self, keys: Vec<crate::api::ParkedKey>) {
        *self.parked.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// The parked keys (the first [`MAX_PARKED_SHOWN`]), how many there
    /// are and the messages they hold.
    fn parked(&self) -> (Vec<crate::api::ParkedKey>, u64, u64) {
        let keys = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        let messages = keys.iter().map(|k| k.messages).sum();
        let shown = keys.iter().take(MAX_PARKED_SHOWN).cloned().collect();
        (shown, keys.len() as u64, messages)
    }

    /// Records the latest error, on one line and cut to
    /// [`LAST_ERROR_CHARS`].
    pub fn failed(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            crate::util::rfc3339_now(),
            one_line(error, LAST_ERROR_CHARS),
        ));
    }

    /// Records the latest check of the broker connections the flow uses:
    /// `Some(why)` while one of them is down, `None` once they all answer.
    /// The first report of an outage becomes the flow's last error.
    pub fn set_broker_down(&self, why: Option<String>) {
        let mut down = self.broker_down.lock().unwrap_or_else(|p| p.into_inner());
        match why {
            None => *down = None,
            Some(why) => {
                let why = one_line(&why, LAST_ERROR_CHARS);
                if down.as_ref().is_some_and(|(_, old)| *old == why) {
                    return;
                }
                let at = crate::util::rfc3339_now();
                *down = Some((at.clone(), why.clone()));
                drop(down);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, why));
            }
        }
    }

    /// Sets (or clears) where the partition assignment is read from.
    pub(super) fn set_assignment(&self, assignment: Option<Arc<dyn Assignment>>) {
        *self.assignment.lock().unwrap_or_else(|p| p.into_inner()) = assignment;
    }

    /// Partitions held now, and for how long there has been no assignment;
    /// `None` for sources without partitions.
    fn partitions(&self) -> Option<(usize, Option<Duration>)> {
        let assignment = self
            .assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let now = assignment.partitions();
        Some((now.partitions, now.unassigned_since.map(|t| t.elapsed())))
    }

    /// Takes a sample for the per-minute rates; call every few seconds.
    pub fn sample(&self) {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((now, self.counts()));
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(61))
        {
            samples.pop_front();
        }
    }

    fn counts(&self) -> [u64; 3] {
        [
            self.received.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed)
                + self.dead_lettered.load(Ordering::Relaxed)
                + self.dropped.load(Ordering::Relaxed),
        ]
    }

    /// A snapshot.
    pub fn report(&self, spec: &FlowSpec) -> FlowReport {
        let now_counts = self.counts();
        let rates = {
            let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            match samples.front() {
                Some((t, old)) if t.elapsed() > Duration::from_millis(500) => {
                    let secs = t.elapsed().as_secs_f64();
                    [0, 1, 2].map(|i| (now_counts[i] - old[i]) as f64 / secs)
                }
                _ => [0.0; 3],
            }
        };
        let partitions = self.partitions();
        let mut state = self.state();
        if state == FlowState::Running && partitions.is_some_and(|(n, _)| n == 0) {
            state = FlowState::WaitingForPartitions;
        }
        let broker_down = self
            .broker_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(down) = broker_down
            && matches!(state, FlowState::Running | FlowState::WaitingForPartitions)
        {
            state = FlowState::Degraded;
            last_error = Some(down);
        }
        let (parked, parked_keys, parked_messages) = self.parked();
        FlowReport {
            name: spec.name.clone(),
            state,
            algorithm: spec.algorithm.to_string(),
            topic: format!("{}:{}", spec.broker, spec.topic),
            received: now_counts[0],
            succeeded: now_counts[1],
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            batched_messages: self.batched.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            received_per_sec: rates[0],
            succeeded_per_sec: rates[1],
            failed_per_sec: rates[2],
            last_error,
            partitions_assigned: partitions.map(|(n, _)| n),
            unassigned_secs: partitions.and_then(|(_, d)| d).map(|d| d.as_secs_f64()),
            rollout: self
                .rollout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|r| r.report())
                .or_else(|| self.auto_rollout_report()),
            shadow: self
                .shadow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|s| s.report()),
            parked,
            parked_keys,
            parked_messages,
        }
    }

    fn auto_rollout_report(&self) -> Option<crate::api::RolloutReport> {
        self.auto_rollout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()?
            .report()
    }

    /// Why the flow is not ready, if it is not: a running Kafka flow whose
    /// consumer has held no assignment for longer than `grace`.
    pub fn unready(&self, grace: Duration) -> Option<String> {
        if self.state() != FlowState::Running {
            return None;
        }
        let (_, Some(unassigned)) = self.partitions()? else {
            return None;
        };
        (unassigned > grace).then(|| {
            format!(
                "no partitions assigned for {} s (joining the consumer group or rebalancing)",
                unassigned.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message received before the router's first sample of a new flow
    /// still counts in its rate (it showed 0.00/s for a minute).
    #[test]
    fn the_first_messages_of_a_new_flow_count_in_its_rates() {
        let status = FlowStatus::default();
        std::thread::sleep(Duration::from_millis(600));
        status.started();
        status.succeeded();
        status.sample();
        let spec = FlowSpec::new("f", "local", "in", "o/n".parse().unwrap());
        let report = status.report(&spec);
        assert!(report.received_per_sec > 0.0, "{report:?}");
        assert!(report.succeeded_per_sec > 0.0, "{report:?}");
    }

    #[test]
    fn last_errors_are_one_capped_line() {
        let long = "x".repeat(10 << 20);
        let status = FlowStatus::default();
        status.failed(&format!("first\nsecond\n{long}"));
        let (_, error) = status.last_error.lock().unwrap().clone().unwrap();
        assert!(error.starts_with("first second x"), "{error}");
        assert_eq!(error.chars().count(), LAST_ERROR_CHARS);
    }

    #[test]
    fn states_serialize_as_the_words_the_api_always_returned() {
        let words = [
            (FlowState::Starting, "starting"),
            (FlowState::Running, "running"),
            (FlowState::WaitingForPartitions, "waiting_for_partitions"),
            (FlowState::Degraded, "degraded"),
            (FlowState::WaitingForPlugin, "waiting_for_plugin"),
            (FlowState::Disconnected, "disconnected"),
            (FlowState::Stopping, "stopping"),
            (FlowState::Stopped, "stopped"),
            (FlowState::Disabled, "disabled"),
        ];
        for (state, word) in words {
            assert_eq!(serde_json::to_value(state).unwrap(), word);
            assert_eq!(
                serde_json::from_value::<FlowState>(word.into()).unwrap(),
                state
            );
        }
    }
}

//! A canary's or a shadow's gate: each version's numbers over its window,
//! and the verdict they give. Pure arithmetic, no clock and no I/O.

use std::collections::VecDeque;

use crate::api::RolloutSide;
use crate::config::{CanarySpec, ShadowSpec};

/// The fewest attempts of the serving version in its window before the
/// canary's p99 is compared with its p99: fewer say nothing of its tail.
const MIN_SERVING_FOR_P99: usize = 20;

/// One version's attempts: totals since the canary started, and the last
/// `window` of them.
#[derive(Debug, Default)]
pub(super) struct Side {
    messages: u64,
    failures: u64,
    /// (failed, invocation seconds) of the latest attempts, oldest first.
    window: VecDeque<(bool, f64)>,
    window_failures: usize,
}

impl Side {
    /// Records one attempt, keeping at most `window` in the window.
    pub(super) fn record(&mut self, failed: bool, secs: f64, window: usize) {
        self.messages += 1;
        self.failures += u64::from(failed);
        self.window.push_back((failed, secs));
        self.window_failures += usize::from(failed);
        while self.window.len() > window {
            if let Some((old_failed, _)) = self.window.pop_front() {
                self.window_failures -= usize::from(old_failed);
            }
        }
    }

    /// Attempts since the canary started.
    pub(super) fn messages(&self) -> u64 {
        self.messages
    }

    pub(super) fn failure_rate(&self) -> f64 {
        if self.window.is_empty() {
            0.0
        } else {
            self.window_failures as f64 / self.window.len() as f64
        }
    }

    fn p99(&self) -> f64 {
        let mut secs: Vec<f64> = self.window.iter().map(|(_, s)| *s).collect();
        if secs.is_empty() {
            return 0.0;
        }
        secs.sort_by(f64::total_cmp);
        let rank = ((secs.len() as f64) * 0.99).ceil() as usize;
        secs[rank.clamp(1, secs.len()) - 1]
    }

    /// The numbers the status shows.
    pub(super) fn report(&self) -> RolloutSide {
        RolloutSide {
            messages: self.messages,
            failures: self.failures,
            window_failure_rate: self.failure_rate(),
            window_p99_secs: self.p99(),
        }
    }
}

/// What the gate says after an attempt of the canary.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Keep going.
    Hold,
    /// The gate failed, for this reason.
    RollBack(String),
    /// The canary handled `promote_after` attempts with its gate passing.
    Promote,
}

/// Judges the canary against the serving version. Nothing is judged until
/// the canary's window is full.
pub(super) fn judge(spec: &CanarySpec, canary: &Side, serving: &Side) -> Verdict {
    let window = spec.window_messages as usize;
    if canary.window.len() < window {
        return Verdict::Hold;
    }
    if let Some(max) = spec.max_failure_rate {
        let (c, s) = (canary.failure_rate(), serving.failure_rate());
        if c - s > max {
            return Verdict::RollBack(format!(
                "failure rate {:.1}% over its last {window} messages against the serving version's {:.1}% exceeds max_failure_rate {max}",
                c * 100.0,
                s * 100.0
            ));
        }
    }
    if let Some(max) = spec.max_p99_ratio
        && serving.window.len() >= MIN_SERVING_FOR_P99
    {
        let (c, s) = (canary.p99(), serving.p99());
        if s > 0.0 && c / s > max {
            return Verdict::RollBack(format!(
                "p99 invocation time {:.1} ms over its last {window} messages is {:.1} times the serving version's {:.1} ms, more than max_p99_ratio {max}",
                c * 1e3,
                c / s,
                s * 1e3
            ));
        }
    }
    match spec.promote_after {
        Some(n) if canary.messages >= n => Verdict::Promote,
        _ => Verdict::Hold,
    }
}

/// The latest comparisons of a shadow's output with the serving output.
#[derive(Debug, Default)]
pub(super) struct Agreement {
    window: VecDeque<bool>,
    agreed: usize,
}

impl Agreement {
    /// Records one comparison, keeping at most `window`.
    pub(super) fn record(&mut self, agreed: bool, window: usize) {
        self.window.push_back(agreed);
        self.agreed += usize::from(agreed);
        while self.window.len() > window {
            if let Some(old) = self.window.pop_front() {
                self.agreed -= usize::from(old);
            }
        }
    }

    /// The share of agreeing comparisons in the window; `None` when empty.
    pub(super) fn ratio(&self) -> Option<f64> {
        (!self.window.is_empty()).then(|| self.agreed as f64 / self.window.len() as f64)
    }
}

/// Judges a shadow: its failure rate and p99 time against the serving
/// version's on the same messages (the canary's rules), then its agreement
/// with the serving outputs, each once its window is full. `Some(why)`
/// stops it.
pub(super) fn judge_shadow(
    spec: &ShadowSpec,
    shadow: &Side,
    serving: &Side,
    agreement: &Agreement,
) -> Option<String> {
    let as_canary = CanarySpec {
        version: spec.version.clone(),
        percent: 0.0,
        max_failure_rate: spec.max_failure_rate,
        max_p99_ratio: spec.max_p99_ratio,
        window_messages: spec.window_messages,
        promote_after: None,
    };
    if let Verdict::RollBack(why) = judge(&as_canary, shadow, serving) {
        return Some(why);
    }
    let window = spec.window_messages as usize;
    let min = spec.min_output_agreement?;
    let ratio = agreement.ratio()?;
    (agreement.window.len() >= window && ratio < min).then(|| {
        format!(
            "output agreement {:.1}% over its last {window} compared messages is below min_output_agreement {min}",
            ratio * 100.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> CanarySpec {
        toml::from_str(&format!("version = \"0.2.0\"\npercent = 10\n{text}")).unwrap()
    }

    fn side(n: usize, failing_every: usize, secs: f64, window: usize) -> Side {
        let mut s = Side::default();
        for i in 0..n {
            s.record(failing_every > 0 && i % failing_every == 0, secs, window);
        }
        s
    }

    #[test]
    fn a_failing_canary_is_judged_once_its_window_is_full_and_against_the_serving_rate() {
        let gate = spec("max_failure_rate = 0.1\nwindow_messages = 50");
        let serving = side(500, 10, 0.001, 50); // 10 %
        assert_eq!(
            judge(&gate, &side(49, 2, 0.001, 50), &serving),
            Verdict::Hold
        );
        assert!(matches!(
            judge(&gate, &side(50, 2, 0.001, 50), &serving),
            Verdict::RollBack(why) if why.contains("50.0%") && why.contains("10.0%")
        ));
        // 15 % against 10 %: within 0.1 of the serving rate.
        let mut close = side(40, 0, 0.001, 50);
        for i in 0..10 {
            close.record(i < 7, 0.001, 50);
        }
        assert_eq!(judge(&gate, &close, &serving), Verdict::Hold);
    }

    #[test]
    fn a_slow_canary_fails_the_p99_gate_and_a_healthy_one_is_promoted() {
        let gate = spec("max_p99_ratio = 3\nwindow_messages = 100\npromote_after = 200");
        let serving = side(100, 0, 0.002, 100);
        assert!(matches!(
            judge(&gate, &side(100, 0, 0.010, 100), &serving),
            Verdict::RollBack(why) if why.contains("5.0 times")
        ));
        assert_eq!(
            judge(&gate, &side(199, 0, 0.003, 100), &serving),
            Verdict::Hold
        );
        assert_eq!(
            judge(&gate, &side(200, 0, 0.003, 100), &serving),
            Verdict::Promote
        );
        // Too few serving attempts to compare tails with.
        assert_eq!(
            judge(&gate, &side(100, 0, 0.010, 100), &side(5, 0, 0.002, 100)),
            Verdict::Hold
        );
    }

    #[test]
    fn a_shadow_stops_below_its_agreement_once_its_window_is_full() {
        let spec: ShadowSpec =
            toml::from_str("version = \"0.2.0\"\nmin_output_agreement = 0.9\nwindow_messages = 10")
                .unwrap();
        let ok = side(10, 0, 0.001, 10);
        let mut agreement = Agreement::default();
        for i in 0..9 {
            agreement.record(i % 3 != 0, 10);
        }
        assert_eq!(judge_shadow(&spec, &ok, &ok, &agreement), None);
        agreement.record(true, 10);
        let why = judge_shadow(&spec, &ok, &ok, &agreement).unwrap();
        assert!(why.contains("70.0%"), "{why}");
        for _ in 0..10 {
            agreement.record(true, 10);
        }
        assert_eq!(agreement.ratio(), Some(1.0));
        assert_eq!(judge_shadow(&spec, &ok, &ok, &agreement), None);
    }

    #[test]
    fn a_slow_shadow_stops_at_its_p99_ratio() {
        let spec: ShadowSpec =
            toml::from_str("version = \"0.2.0\"\nmax_p99_ratio = 2\nwindow_messages = 100")
                .unwrap();
        let serving = side(100, 0, 0.002, 100);
        let agreement = Agreement::default();
        let why = judge_shadow(&spec, &side(100, 0, 0.010, 100), &serving, &agreement).unwrap();
        assert!(why.contains("5.0 times"), "{why}");
        assert_eq!(
            judge_shadow(&spec, &side(100, 0, 0.003, 100), &serving, &agreement),
            None
        );
    }

    #[test]
    fn the_window_keeps_the_latest_attempts() {
        let mut s = side(100, 1, 0.001, 10); // all failed
        for _ in 0..10 {
            s.record(false, 0.001, 10);
        }
        let r = s.report();
        assert_eq!(
            (r.messages, r.failures, r.window_failure_rate),
            (110, 100, 0.0)
        );
    }
}

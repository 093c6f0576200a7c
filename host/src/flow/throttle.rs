//! Rate-limited logging of repeated errors, so a fault that hits every
//! message (a missing dead-letter queue, a broker refusing acks) gives a few
//! lines an interval instead of one per message.
//!
//! The first error of a kind is logged at once; repeats within the interval
//! are counted and left out. The next line of that kind after the interval
//! carries the count (`suppressed`), and [`LogThrottle::flush`], which the
//! flow calls every second, logs a summary for kinds that went quiet with
//! repeats still uncounted. A kind is the event (its log message) plus the
//! error text with digits blanked, so errors that differ only in an id, an
//! offset or a count are one kind. Metrics still count every occurrence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tracing::Level;

/// How often a kind of repeated error is logged at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How much of the error text tells kinds apart.
const KEY_CHARS: usize = 160;
/// Kinds remembered at most; quiet ones are forgotten first.
const MAX_KINDS: usize = 256;

struct Kind {
    logged_at: Instant,
    suppressed: u64,
    level: Level,
    what: &'static str,
    last_error: String,
}

/// Decides which occurrences of repeated errors are logged.
pub struct LogThrottle {
    interval: Duration,
    kinds: Mutex<HashMap<String, Kind>>,
    suppressed: Counter,
}

impl LogThrottle {
    /// A throttle logging each kind at most once per `interval`; `suppressed`
    /// counts the occurrences left out.
    pub fn new(interval: Duration, suppressed: Counter) -> Self {
        Self {
            interval,
            kinds: Mutex::new(HashMap::new()),
            suppressed,
        }
    }

    /// Whether to log this occurrence of the event `what` with `error`:
    /// `Some(n)`, where `n` occurrences of the kind were left out since its
    /// last line (log it with a `suppressed = n` field), or `None` (leave it
    /// out; it is counted).
    pub fn admit(&self, level: Level, what: &'static str, error: &str) -> Option<u64> {
        let key = key(what, error);
        let now = Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = kinds.get_mut(&key) {
            if now.duration_since(kind.logged_at) < self.interval {
                kind.suppressed += 1;
                kind.last_error = truncated(error);
                self.suppressed.inc();
                return None;
            }
            kind.logged_at = now;
            return Some(std::mem::take(&mut kind.suppressed));
        }
        if kinds.len() >= MAX_KINDS {
            let interval = self.interval;
            kinds.retain(|_, k| k.suppressed > 0 || now.duration_since(k.logged_at) < interval);
            if kinds.len() >= MAX_KINDS {
                // Too many distinct kinds at once: log them all.
                return Some(0);
            }
        }
        kinds.insert(
            key,
            Kind {
                logged_at: now,
                suppressed: 0,
                level,
                what,
                last_error: truncated(error),
            },
        );
        Some(0)
    }

    /// Logs one summary line for each kind whose repeats were left out and
    /// whose interval has passed without another line; forgets kinds that
    /// stayed quiet for an interval.
    pub fn flush(&self, flow: &str) {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let interval = self.interval;
        kinds.retain(|_, kind| {
            let due = now.duration_since(kind.logged_at) >= interval;
            if due && kind.suppressed > 0 {
                log_summary(flow, kind, interval);
                kind.suppressed = 0;
                kind.logged_at = now;
                return true;
            }
            !due
        });
    }
}

fn log_summary(flow: &str, kind: &Kind, interval: Duration) {
    let (what, n, secs) = (kind.what, kind.suppressed, interval.as_secs());
    let error = kind.last_error.as_str();
    if kind.level == Level::ERROR {
        tracing::error!(flow = %flow, suppressed = n, error = %error, "{what} (repeated {n} times in the last {secs} s; logged once per {secs} s).");
    } else {
        tracing::warn!(flow = %flow, suppressed = n, error = %error, "{what} (repeated {n} times in the last {secs} s; logged once per {secs} s).");
    }
}

fn key(what: &str, error: &str) -> String {
    let mut key = String::with_capacity(what.len() + KEY_CHARS + 1);
    key.push_str(what);
    key.push('\u{0}');
    key.extend(
        error
            .chars()
            .take(KEY_CHARS)
            .map(|c| if c.is_ascii_digit() { '#' } else { c }),
    );
    key
}

fn truncated(error: &str) -> String {
    crate::flow::one_line(error, crate::flow::LAST_ERROR_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_interval_are_counted_not_logged() {
        let counter = Counter::default();
        let t = LogThrottle::new(Duration::from_millis(200), counter.clone());
        let what = "Could not publish to the dead-letter topic";
        assert_eq!(
            t.admit(Level::ERROR, what, "queue q does not exist"),
            Some(0)
        );
        for _ in 0..50 {
            assert_eq!(t.admit(Level::ERROR, what, "queue q does not exist"), None);
        }
        // A different error is another kind; one that differs in digits only
        // is the same kind.
        assert_eq!(t.admit(Level::ERROR, what, "access denied"), Some(0));
        assert_eq!(t.admit(Level::ERROR, what, "access denied 42"), Some(0));
        assert_eq!(t.admit(Level::ERROR, what, "access denied 43"), None);
        assert_eq!(counter.get(), 51);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            t.admit(Level::ERROR, what, "queue q does not exist"),
            Some(50),
            "the next line after the interval carries the count"
        );
        assert_eq!(t.admit(Level::ERROR, what, "queue q does not exist"), None);
    }

    #[test]
    fn flush_reports_kinds_that_went_quiet() {
        let t = LogThrottle::new(Duration::from_millis(100), Counter::default());
        let what = "Could not acknowledge a message";
        t.admit(Level::WARN, what, "gone");
        t.admit(Level::WARN, what, "gone");
        std::thread::sleep(Duration::from_millis(150));
        t.flush("f");
        // The summary counted the repeat: the next line carries none.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(t.admit(Level::WARN, what, "gone"), Some(0));
        // A kind quiet for an interval is forgotten.
        std::thread::sleep(Duration::from_millis(150));
        t.flush("f");
        assert!(t.kinds.lock().unwrap().is_empty());
    }
}

//! Delays between attempts.

use std::time::Duration;

use rand::Rng;

use crate::config::{Backoff, RetryPolicy};
use crate::connector::MAX_RETRY_DELAY;

/// The delay before the attempt after `attempt` failed attempts (`attempt`
/// ≥ 1). With jitter, the delay is spread over its upper half.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let base = policy.base_ms;
    let ms = match policy.backoff {
        Backoff::Fixed => base,
        Backoff::Exponential => {
            let shift = attempt.saturating_sub(1).min(40);
            base.saturating_mul(1u64 << shift).min(policy.cap_ms)
        }
    };
    let ms = if policy.jitter && ms > 1 {
        let half = ms / 2;
        half + rand::rng().random_range(0..=ms - half)
    } else {
        ms
    };
    Duration::from_millis(ms).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            backoff,
            base_ms: 100,
            cap_ms: 1000,
            jitter,
        }
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let p = policy(Backoff::Exponential, false);
        let got: Vec<u64> = (1..=6).map(|a| backoff(&p, a).as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn fixed_stays_put_and_jitter_stays_in_the_upper_half() {
        let p = policy(Backoff::Fixed, false);
        assert_eq!(backoff(&p, 7), Duration::from_millis(100));
        let p = policy(Backoff::Exponential, true);
        for _ in 0..100 {
            let d = backoff(&p, 3).as_millis();
            assert!((200..=400).contains(&d), "{d}");
        }
    }
}

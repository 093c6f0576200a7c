//! Why an invocation failed, with the stable reason codes that appear in
//! logs, metrics and dead-letter envelopes.

use std::time::Duration;

use serde::Serialize;
use wasmtime::Trap;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::LimitTrap;
use super::bindings::WitFailure;

/// A failure reason. The codes (`timeout`, `memory_limit`, ...) are stable:
/// operators alert on them and algorithm authors search for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The invocation ran past `timeout_secs`.
    Timeout,
    /// The algorithm tried to grow its memory past `max_memory_mib`.
    MemoryLimit,
    /// The algorithm exhausted the WebAssembly stack.
    StackOverflow,
    /// The algorithm trapped (a panic, `unreachable`, a bad memory access).
    Trap,
    /// The output was larger than `max_output_bytes`.
    OutputTooLarge,
    /// The algorithm made more host calls than `max_host_calls`.
    HostCallLimit,
    /// The algorithm used up `max_fuel`.
    FuelExhausted,
    /// The algorithm asked for a retry.
    GuestRetry,
    /// The algorithm rejected the message.
    GuestReject,
    /// The message could not be handed to the algorithm (undecodable headers,
    /// a payload over `max_input_bytes`).
    InvalidInput,
    /// No loaded version of the algorithm matches the flow.
    PluginMissing,
    /// The algorithm succeeded but its output or published messages could not
    /// be delivered.
    PublishFailed,
    /// The message was delivered more than `max_receives` times before the
    /// router could record a failure (the router died while handling it).
    MaxReceivesExceeded,
}

impl Reason {
    /// Every reason, for metrics that list them all.
    pub const ALL: [Reason; 13] = [
        Reason::Timeout,
        Reason::MemoryLimit,
        Reason::StackOverflow,
        Reason::Trap,
        Reason::OutputTooLarge,
        Reason::HostCallLimit,
        Reason::FuelExhausted,
        Reason::GuestRetry,
        Reason::GuestReject,
        Reason::InvalidInput,
        Reason::PluginMissing,
        Reason::PublishFailed,
        Reason::MaxReceivesExceeded,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::MemoryLimit => "memory_limit",
            Reason::StackOverflow => "stack_overflow",
            Reason::Trap => "trap",
            Reason::OutputTooLarge => "output_too_large",
            Reason::HostCallLimit => "host_call_limit",
            Reason::FuelExhausted => "fuel_exhausted",
            Reason::GuestRetry => "guest_retry",
            Reason::GuestReject => "guest_reject",
            Reason::InvalidInput => "invalid_input",
            Reason::PluginMissing => "plugin_missing",
            Reason::PublishFailed => "publish_failed",
            Reason::MaxReceivesExceeded => "max_receives_exceeded",
        }
    }

    /// Whether another attempt could succeed. Rejections and undecodable
    /// input go to the dead-letter topic at once; everything else, traps and
    /// broken limits included, is retried up to `max_receives`.
    pub fn retryable(self) -> bool {
        !matches!(
            self,
            Reason::GuestReject | Reason::InvalidInput | Reason::MaxReceivesExceeded
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The most bytes of a failure detail the router keeps. Longer details (a
/// reject reason of megabytes, a trap's stderr) are cut where the failure
/// enters the host, in [`Failure::new`], so logs, flow status, the failure
/// journal and dead-letter envelopes all carry the same bounded text.
pub const MAX_DETAIL_BYTES: usize = 4096;

/// `text` cut to at most [`MAX_DETAIL_BYTES`] bytes at a character boundary
/// and marked `… [truncated, N bytes]` (N: its original length) when it was
/// longer.
pub fn cap_detail(text: String) -> String {
    if text.len() <= MAX_DETAIL_BYTES {
        return text;
    }
    let marker = format!("… [truncated, {} bytes]", text.len());
    let mut end = MAX_DETAIL_BYTES - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &text[..end])
}

/// A failed invocation: the reason, a detail for the algorithm's author, and
/// the delay the algorithm asked for, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The stable reason.
    pub reason: Reason,
    /// What happened, in words (the trap message, the limit that was hit).
    pub detail: String,
    /// The delay the algorithm asked for with `retry`.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure without a requested delay; the detail is capped with
    /// [`cap_detail`].
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: cap_detail(detail.into()),
            retry_after: None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The failure an algorithm returned, as the host's.
pub(super) fn guest_failure(failure: WitFailure) -> Failure {
    match failure {
        WitFailure::Retry(r) => Failure {
            retry_after: Some(Duration::from_millis(r.delay_ms)),
            ..Failure::new(Reason::GuestRetry, r.reason)
        },
        WitFailure::Reject(why) => Failure::new(Reason::GuestReject, why),
    }
}

/// Turns a trap or host error into a failure with a reason.
pub(super) fn classify(
    error: wasmtime::Error,
    timeout: Duration,
    stderr: &MemoryOutputPipe,
) -> Failure {
    if let Some(limit) = error.downcast_ref::<LimitTrap>() {
        let reason = match limit {
            LimitTrap::Memory { .. } => Reason::MemoryLimit,
            LimitTrap::HostCalls(_) => Reason::HostCallLimit,
        };
        return Failure::new(reason, limit.to_string());
    }
    let stderr = String::from_utf8_lossy(&stderr.contents())
        .trim()
        .to_string();
    let with_stderr = |detail: String| {
        if stderr.is_empty() {
            detail
        } else {
            format!("{detail}; stderr: {stderr}")
        }
    };
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::new(
            Reason::Timeout,
            format!("did not finish within {timeout:?}"),
        ),
        Some(Trap::StackOverflow) => Failure::new(
            Reason::StackOverflow,
            "exhausted the WebAssembly stack (unbounded recursion?)",
        ),
        Some(Trap::OutOfFuel) => Failure::new(Reason::FuelExhausted, "used up max_fuel"),
        Some(trap) => Failure::new(Reason::Trap, with_stderr(format!("wasm trap: {trap}"))),
        None => Failure::new(Reason::Trap, with_stderr(format!("{error:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_details_are_capped_and_marked() {
        let f = Failure::new(Reason::GuestReject, "é".repeat(5 << 20));
        assert!(f.detail.len() <= MAX_DETAIL_BYTES, "{}", f.detail.len());
        assert!(
            f.detail
                .ends_with(&format!("… [truncated, {} bytes]", 10 << 20)),
            "{}",
            &f.detail[f.detail.len() - 40..]
        );
        let short = Failure::new(Reason::Trap, "x".repeat(MAX_DETAIL_BYTES));
        assert_eq!(short.detail.len(), MAX_DETAIL_BYTES);
    }
}

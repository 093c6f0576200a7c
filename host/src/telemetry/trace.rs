//! W3C trace context: an incoming `traceparent` becomes the parent of the
//! invocation's span, and messages the invocation publishes carry a
//! `traceparent` whose parent is that span. A message without one starts a
//! new trace.

use rand::Rng;

/// The trace position of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 hex digits.
    pub trace_id: String,
    /// The incoming span (16 hex digits), if the message carried one.
    pub parent_id: Option<String>,
    /// This invocation's span (16 hex digits).
    pub span_id: String,
    /// Trace flags (2 hex digits); `01` is sampled.
    pub flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    loop {
        let v: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
        // All-zero ids are invalid in W3C trace context.
        if v.iter().any(|b| *b != 0) {
            return hex::encode(v);
        }
    }
}

impl TraceContext {
    /// The context of an invocation of a message with this `traceparent`.
    pub fn for_message(traceparent: Option<&str>) -> Self {
        let parsed = traceparent.and_then(|tp| {
            let parts: Vec<&str> = tp.trim().split('-').collect();
            match parts.as_slice() {
                [version, trace, parent, flags]
                    if is_hex(version, 2)
                        && *version != "ff"
                        && is_hex(trace, 32)
                        && is_hex(parent, 16)
                        && is_hex(flags, 2)
                        && trace.bytes().any(|b| b != b'0')
                        && parent.bytes().any(|b| b != b'0') =>
                {
                    Some((trace.to_string(), parent.to_string(), flags.to_string()))
                }
                _ => None,
            }
        });
        match parsed {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                parent_id: Some(parent),
                span_id: random_hex(8),
                flags,
            },
            None => Self {
                trace_id: random_hex(16),
                parent_id: None,
                span_id: random_hex(8),
                flags: "01".into(),
            },
        }
    }

    /// The `traceparent` for messages this invocation publishes.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incoming_traceparent_is_the_parent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::for_message(Some(tp));
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(ctx.span_id, "00f067aa0ba902b7");
        let out = ctx.traceparent();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
    }

    #[test]
    fn garbage_starts_a_new_trace() {
        for bad in [
            "nonsense",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let ctx = TraceContext::for_message(Some(bad));
            assert!(ctx.parent_id.is_none(), "{bad}");
            assert_eq!(ctx.trace_id.len(), 32);
        }
    }
}

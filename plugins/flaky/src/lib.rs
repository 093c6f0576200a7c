//! Fails the first N attempts of a message with a retry request, then
//! succeeds and outputs `{"attempt": A, "payload": ...}`. N is the payload's
//! `fail_times` field (2 when absent); `always_fail: true` never succeeds.

use eventflow_sdk::{Failure, Guest, Message, retry};

struct Flaky;

impl Guest for Flaky {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        let fail_times = doc.get("fail_times").and_then(|v| v.as_u64()).unwrap_or(2);
        let always = doc
            .get("always_fail")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if always || u64::from(msg.attempt) <= fail_times {
            return Err(retry(
                0,
                format!("flaky: attempt {} fails on purpose", msg.attempt),
            ));
        }
        let out = serde_json::json!({ "attempt": msg.attempt, "payload": doc });
        Ok(Some(out.to_string().into_bytes()))
    }
}

eventflow_sdk::export_algorithm!(Flaky);

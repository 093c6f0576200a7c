//! The identity algorithm as a component of the 0.2.0 world: `apply-batch`
//! returns each message's payload as its output. A payload that starts
//! with one of these markers asks for something else, for the tests:
//!
//! - `size:` outputs the payload with ` batch=N attempt=A` appended: the
//!   number of messages in its call and its attempt;
//! - `retry-once:` fails its first attempt with a retry (no delay), then
//!   outputs as `size:` does;
//! - `reject:` fails with a reject;
//! - `trap-once:` traps the whole call on its first attempt (every message
//!   of the batch fails), then outputs as `size:` does;
//! - `trap:` traps the whole call on every attempt;
//! - `publish:` publishes the rest of the payload to the topic `side`.

use eventflow_sdk::batch::{self, Outcome};
use eventflow_sdk::{Failure, Message, publish, reject, retry};

struct BatchEcho;

fn annotated(msg: &Message, batch: usize) -> Vec<u8> {
    let mut out = msg.payload.clone();
    out.extend_from_slice(format!(" batch={batch} attempt={}", msg.attempt).as_bytes());
    out
}

fn one(msg: Message, batch: usize) -> Result<Option<Vec<u8>>, Failure> {
    let p = msg.payload.as_slice();
    if p.starts_with(b"reject:") {
        return Err(reject("asked to reject"));
    }
    if p.starts_with(b"retry-once:") && msg.attempt == 1 {
        return Err(retry(0, "asked to retry once"));
    }
    if let Some(rest) = p.strip_prefix(b"publish:") {
        publish::send("side", rest, &[])
            .map_err(|e| retry(0, format!("publish refused: {e:?}")))?;
    }
    if p.starts_with(b"size:") || p.starts_with(b"retry-once:") || p.starts_with(b"trap-once:") {
        return Ok(Some(annotated(&msg, batch)));
    }
    Ok(Some(msg.payload))
}

impl batch::Guest for BatchEcho {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        one(msg, 1)
    }

    fn apply_batch(messages: Vec<Message>) -> Vec<Outcome> {
        if messages.iter().any(|m| {
            m.payload.starts_with(b"trap:")
                || (m.payload.starts_with(b"trap-once:") && m.attempt == 1)
        }) {
            panic!("asked to trap");
        }
        let n = messages.len();
        batch::each(messages, |m| one(m, n))
    }
}

eventflow_sdk::export_batch_algorithm!(BatchEcho);

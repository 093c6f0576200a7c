//! Parses a JSON object and replaces the values of `password`, `ssn` and
//! `card` with `"***"`, at any depth. The CPU-bound load of the benchmarks.
//! A component of the 0.2.0 world: it takes a flow's batches, running each
//! message as `apply` would.

use eventflow_sdk::batch::{self, Outcome};
use eventflow_sdk::{Failure, Message, reject};
use serde_json::Value;

struct Redact;

const SECRET_FIELDS: [&str; 3] = ["password", "ssn", "card"];

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if SECRET_FIELDS.contains(&key.as_str()) {
                    *v = Value::String("***".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

impl batch::Guest for Redact {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let mut doc: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        redact(&mut doc);
        serde_json::to_vec(&doc)
            .map(Some)
            .map_err(|e| reject(e.to_string()))
    }

    fn apply_batch(messages: Vec<Message>) -> Vec<Outcome> {
        batch::each(messages, <Redact as batch::Guest>::apply)
    }
}

eventflow_sdk::export_batch_algorithm!(Redact);

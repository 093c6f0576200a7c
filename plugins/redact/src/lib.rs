//! Parses a JSON object and replaces the values of `password`, `ssn` and
//! `card` with `"***"`, at any depth. The CPU-bound load of the benchmarks.

use eventflow_sdk::{Failure, Guest, Message, reject};
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

impl Guest for Redact {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let mut doc: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        redact(&mut doc);
        serde_json::to_vec(&doc)
            .map(Some)
            .map_err(|e| reject(e.to_string()))
    }
}

eventflow_sdk::export_algorithm!(Redact);

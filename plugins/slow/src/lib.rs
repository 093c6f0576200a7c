//! Sleeps for the payload's `sleep_ms`, then records when it started and
//! ended (nanoseconds since the epoch) in `data://test/intervals/<id>`, where
//! `id` is the payload's `id`. Tests read the intervals to check how many
//! invocations overlapped. Outputs the payload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow_sdk::{Failure, Guest, Message, data, reject};

struct Slow;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Guest for Slow {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        let sleep_ms = doc.get("sleep_ms").and_then(|v| v.as_u64()).unwrap_or(10);
        let id = doc
            .get("id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| msg.id.clone());
        let start = now_ns();
        std::thread::sleep(Duration::from_millis(sleep_ms));
        let end = now_ns();
        let uri = format!("data://test/intervals/{id}");
        data::put(&uri, format!("{start} {end}").as_bytes())
            .map_err(|e| reject(format!("cannot write {uri}: {e:?}")))?;
        Ok(Some(msg.payload))
    }
}

eventflow_sdk::export_algorithm!(Slow);

//! Rejects every message, sending it straight to the dead-letter topic.

use eventflow_sdk::{Failure, Guest, Message, reject};

struct AlwaysReject;

impl Guest for AlwaysReject {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        Err(reject(format!("always_reject refuses message {}", msg.id)))
    }
}

eventflow_sdk::export_algorithm!(AlwaysReject);

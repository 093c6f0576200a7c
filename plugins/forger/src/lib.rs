//! A hostile tenant, for the dead-letter tests. Chooses by the payload:
//!
//! - `FORGE <topic>\n<body>` publishes `<body>` (a fake dead-letter envelope,
//!   say) to `<topic>` and succeeds; a refused publish rejects the message
//!   with `publish to <topic> refused: <error>`.
//! - `REJECT <n>` rejects with a reason of `n` bytes.
//! - anything else is rejected with a short reason.

use eventflow_sdk::publish::{self, PublishError};
use eventflow_sdk::{Failure, Guest, Message, reject};

struct Forger;

impl Guest for Forger {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let text = String::from_utf8_lossy(&msg.payload);
        if let Some(rest) = text.strip_prefix("FORGE ") {
            let (topic, body) = rest.split_once('\n').unwrap_or((rest, ""));
            return match publish::send(topic, body.as_bytes(), &[]) {
                Ok(()) => Ok(None),
                Err(e) => {
                    let why = match e {
                        PublishError::AccessDenied => "access-denied",
                        PublishError::UnknownTopic => "unknown-topic",
                        PublishError::TooLarge => "too-large",
                        PublishError::LimitExceeded => "limit-exceeded",
                    };
                    Err(reject(format!("publish to {topic} refused: {why}")))
                }
            };
        }
        if let Some(n) = text.strip_prefix("REJECT ") {
            let n: usize = n.trim().parse().unwrap_or(0);
            return Err(reject("R".repeat(n)));
        }
        Err(reject(format!("forger: message {} rejected", msg.id)))
    }
}

eventflow_sdk::export_algorithm!(Forger);

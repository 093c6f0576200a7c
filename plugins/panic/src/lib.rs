//! Panics on every message: a trap the router must report with its message.

use eventflow_sdk::{Failure, Guest, Message};

struct Panic;

impl Guest for Panic {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        panic!("panic plugin was given {} bytes", msg.payload.len());
    }
}

eventflow_sdk::export_algorithm!(Panic);

//! Chooses its behaviour by the payload's first bytes: `TRAP` panics, `LOOP`
//! never returns, `REJECT` rejects, anything else is echoed. Used to mix
//! poison messages with good ones in tests and benchmarks.

use eventflow_sdk::{Failure, Guest, Message, reject};

struct Chaos;

impl Guest for Chaos {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let p = &msg.payload;
        if p.starts_with(b"TRAP") {
            panic!("chaos: trap requested by message {}", msg.id);
        }
        if p.starts_with(b"LOOP") {
            let mut n = 1u64;
            loop {
                n = std::hint::black_box(n.wrapping_mul(3).wrapping_add(1));
            }
        }
        if p.starts_with(b"REJECT") {
            return Err(reject(format!(
                "chaos: message {} rejected on request",
                msg.id
            )));
        }
        Ok(Some(msg.payload))
    }
}

eventflow_sdk::export_algorithm!(Chaos);

//! Never returns: the router must stop it at the flow's timeout.

use eventflow_sdk::{Failure, Guest, Message};

struct LoopForever;

impl Guest for LoopForever {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let mut n: u64 = msg.payload.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

eventflow_sdk::export_algorithm!(LoopForever);

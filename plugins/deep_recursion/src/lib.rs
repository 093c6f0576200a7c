//! Recurses without end: the router must report a stack overflow, not crash.

use eventflow_sdk::{Failure, Guest, Message};

struct DeepRecursion;

#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64, pad: [u64; 8]) -> u64 {
    let next = std::hint::black_box([pad[0] + depth; 8]);
    descend(depth + 1, next) + next[7]
}

impl Guest for DeepRecursion {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let depth = descend(msg.payload.len() as u64, [0; 8]);
        Ok(Some(depth.to_string().into_bytes()))
    }
}

eventflow_sdk::export_algorithm!(DeepRecursion);

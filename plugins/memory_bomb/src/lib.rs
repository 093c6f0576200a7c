//! Allocates and touches 16 MiB blocks until it holds 4 GiB: the router's
//! memory limit must stop it.

use eventflow_sdk::{Failure, Guest, Message};

struct MemoryBomb;

impl Guest for MemoryBomb {
    fn apply(_msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        for i in 0..256u32 {
            blocks.push(vec![i as u8; 16 << 20]);
        }
        Ok(Some(
            format!("held {} blocks", std::hint::black_box(blocks).len()).into_bytes(),
        ))
    }
}

eventflow_sdk::export_algorithm!(MemoryBomb);

//! Reports what earlier invocations left behind: the number of earlier calls
//! in this instance and the non-zero bytes of a 512 KiB static area (more
//! than the pool keeps resident, so both ways of resetting a slot's memory
//! are seen), then writes every byte of the area. In a fresh instance per
//! message both numbers are always 0.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use eventflow_sdk::{Failure, Guest, Message};

const AREA: usize = 512 << 10;

static CALLS: AtomicU32 = AtomicU32::new(0);
static DIRT: [AtomicU8; AREA] = [const { AtomicU8::new(0) }; AREA];

struct Residue;

impl Guest for Residue {
    fn apply(_msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed);
        let mut dirty = 0usize;
        for byte in &DIRT {
            if byte.load(Ordering::Relaxed) != 0 {
                dirty += 1;
            }
            byte.store(0xa5, Ordering::Relaxed);
        }
        Ok(Some(format!("calls={calls} dirty={dirty}").into_bytes()))
    }
}

eventflow_sdk::export_algorithm!(Residue);

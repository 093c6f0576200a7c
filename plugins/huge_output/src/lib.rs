//! Returns 100 MiB: the router must refuse the output.

use eventflow_sdk::{Failure, Guest, Message};

struct HugeOutput;

impl Guest for HugeOutput {
    fn apply(_msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        Ok(Some(vec![b'x'; 100 << 20]))
    }
}

eventflow_sdk::export_algorithm!(HugeOutput);

//! Returns its input unchanged: the identity algorithm.

use eventflow_sdk::{Failure, Guest, Message};

struct Echo;

impl Guest for Echo {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        Ok(Some(msg.payload))
    }
}

eventflow_sdk::export_algorithm!(Echo);

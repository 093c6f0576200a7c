//! The quickstart algorithm. Takes `{"filename": "...", "data": "..."}` and
//! writes `data` to `data://ezra/TestingEventFlow/<filename>`.
//!
//! A failed write is classified: what may succeed later (the disk is full or
//! failing, the invocation's write quota is used up) is retried after a
//! delay; what never will (a bad file name, another owner's collection) is
//! rejected, so it goes to the dead-letter topic at once.

use eventflow_sdk::{Failure, Guest, Message, data, reject, retry};

struct StoreFile;

const COLLECTION: &str = "data://ezra/TestingEventFlow";

impl Guest for StoreFile {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        let filename = doc
            .get("filename")
            .and_then(|v| v.as_str())
            .ok_or_else(|| reject("payload has no string field \"filename\""))?;
        let contents = doc
            .get("data")
            .and_then(|v| v.as_str())
            .ok_or_else(|| reject("payload has no string field \"data\""))?;
        let uri = format!("{COLLECTION}/{filename}");
        data::put(&uri, contents.as_bytes()).map_err(|e| write_failure(&uri, e))?;
        eventflow_sdk::info(&format!("stored {} bytes in {uri}", contents.len()));
        Ok(None)
    }
}

/// Retry what is transient, reject what is not.
fn write_failure(uri: &str, e: data::DataError) -> Failure {
    match e {
        // The file system failed (a full disk, say): space may come back.
        data::DataError::Io(why) => retry(5_000, format!("cannot write {uri}: i/o error: {why}")),
        // This invocation's write quota is used up; an operator may raise
        // it, so try again later rather than dead-letter the message.
        data::DataError::QuotaExceeded => retry(
            10_000,
            format!("cannot write {uri}: data write quota exceeded"),
        ),
        // A bad file name or another owner's collection: no retry helps.
        e @ (data::DataError::InvalidUri(_)
        | data::DataError::AccessDenied
        | data::DataError::NotFound) => reject(format!("cannot write {uri}: {e:?}")),
    }
}

eventflow_sdk::export_algorithm!(StoreFile);
